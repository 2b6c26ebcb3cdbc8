"""Generation + export throughput (images/s) of `synthmed generate` for npz, PNG and DICOM at
28 and 64 px, against a plain reference in the same run, and peak memory for a large npz export.

The reference samples the same generator in batches of 256 and writes the files with the
bare libraries (PIL, numpy, pydicom), without manifest, provenance, resume bookkeeping or
atomic writes. Ratio = ours / reference (1.0 = no overhead).

    python benchmarks/export_throughput.py [--n 2000] [--memory-n 100000]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
import torch
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from synthmed.augment.dataset import ImageSet
from synthmed.gan.config import DCGANConfig, TrainConfig
from synthmed.gan.generate import GenerateConfig, generate
from synthmed.gan.run import load_run
from synthmed.gan.run_config import RunConfig
from synthmed.gan.train import train_dcgan


def make_run(folder: Path, size: int) -> Path:
    """A conditional DCGAN run of the given size, trained for one short epoch."""
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (64, 1, size, size)).astype(np.float32)
    data = ImageSet.from_arrays(images, labels=np.arange(64) % 2, intensity_range=(0.0, 4095.0))
    config = RunConfig("dcgan", DCGANConfig(), TrainConfig(epochs=1, batch_size=32))
    train_dcgan(data, folder, config, conditional=True, progress=False)
    return folder


def reference_export(run_dir: Path, out: Path, n: int, format_: str) -> None:
    """Sample in batches of 256 and write with the bare libraries."""
    model = load_run(run_dir).model
    out.mkdir(parents=True)
    rng = torch.Generator().manual_seed(0)
    blocks = []
    for start in range(0, n, 256):
        count = min(256, n - start)
        labels = torch.arange(start, start + count) % 2
        images = model.generate(torch.randn(count, model.config.nz, generator=rng), labels)
        pixels = np.rint((images.numpy()[:, 0] + 1) * 127.5).astype(np.uint8)
        if format_ == "npz":
            blocks.append(pixels)
            continue
        for offset, picture in enumerate(pixels):
            name = out / f"{start + offset:06d}"
            if format_ == "png":
                Image.fromarray(picture).save(name.with_suffix(".png"))
            else:
                _plain_dicom(picture).save_as(name.with_suffix(".dcm"), enforce_file_format=True)
    if format_ == "npz":
        np.savez_compressed(out / "images.npz", train_images=np.concatenate(blocks),
                            train_labels=(np.arange(n) % 2).reshape(-1, 1))


def _plain_dicom(picture: np.ndarray) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.set_pixel_data(picture.astype(np.uint16), "MONOCHROME2", 16)
    return ds


def generate_quietly(run, out: Path, config: GenerateConfig) -> None:
    generate(run, out, config, progress=False)


def timed(function, *args) -> float:
    """Seconds one call takes."""
    started = time.perf_counter()
    function(*args)
    return time.perf_counter() - started


def throughput_table(n: int, work: Path) -> list[str]:
    rows = ["| format | px | synthmed img/s | reference img/s | ratio |", "|---|---|---|---|---|"]
    for size in (28, 64):
        run_dir = make_run(work / f"run{size}", size)
        run = load_run(run_dir)
        for format_ in ("npz", "png", "dicom"):
            config = GenerateConfig(n=n, format=format_)
            ours = timed(generate_quietly, run, work / f"ours-{size}-{format_}", config)
            reference = timed(reference_export, run_dir, work / f"ref-{size}-{format_}", n,
                              format_)
            rows.append(f"| {format_} | {size} | {n / ours:.0f} | {n / reference:.0f} | "
                        f"{reference / ours:.2f} |")
            print(rows[-1], flush=True)
    return rows


def peak_memory(run_dir: Path, out: Path, n: int) -> float:
    """Peak resident memory (MiB) of a fresh process exporting ``n`` images as npz."""
    code = ("import sys, resource; from pathlib import Path;"
            "from synthmed.gan.generate import GenerateConfig, generate;"
            "from synthmed.gan.run import load_run;"
            "generate(load_run(sys.argv[1]), Path(sys.argv[2]), "
            "GenerateConfig(n=int(sys.argv[3]), format='npz'), progress=False);"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    result = subprocess.run([sys.executable, "-c", code, str(run_dir), str(out), str(n)],
                            capture_output=True, text=True, check=True)
    return int(result.stdout.strip().splitlines()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="images per throughput run")
    parser.add_argument("--memory-n", type=int, default=100_000, help="images for peak memory")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, pydicom "
          f"{pydicom.__version__}")
    work = Path(tempfile.mkdtemp(prefix="synthmed-export-bench-"))
    try:
        throughput_table(args.n, work)
        small = max(args.memory_n // 10, 1000)
        peaks = {count: peak_memory(work / "run28", work / f"mem-{count}", count)
                 for count in (small, args.memory_n)}
        print(json.dumps({"peak_rss_mib": {str(k): round(v) for k, v in peaks.items()}}))
        print(f"peak memory, npz 28 px: {peaks[small]:.0f} MiB for {small} images, "
              f"{peaks[args.memory_n]:.0f} MiB for {args.memory_n} images "
              f"(the images alone: {args.memory_n * 28 * 28 / 2**20:.0f} MiB as uint8)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

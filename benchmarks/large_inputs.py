"""Reading large inputs: wall time and peak memory of `synthmed data inspect` on a 2,000-file
DICOM series and a 512x512x300 int16 NIfTI volume, beside the size of the data as float32.

Writes into ``--out`` (and reuses on a later run):

- ``dicom-series/``: ``--slices`` MR slices of ``--side`` px in one series, made from
  pydicom's ``MR_small.dcm`` test file (upsampled, its contrast varying along the series),
  each with its own SOPInstanceUID, InstanceNumber and ImagePositionPatient;
- ``volume.nii.gz``: one int16 volume of ``--volume`` voxels, a noisy ellipsoid in air.

Each is read by a fresh ``python -m synthmed.cli data inspect PATH`` process, whose wall time
and peak resident memory (``ru_maxrss``, from ``wait4``) are printed beside a baseline: the
same command on a tiny phantom, which is what the imports alone take. The numbers go to
``OUT/large_inputs.json``.

    nice -n 19 env OMP_NUM_THREADS=1 python benchmarks/large_inputs.py --out bench-large
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

MIB = 2**20


def write_dicom_series(folder: Path, slices: int, side: int) -> None:
    """``slices`` MR slices of ``side`` px from ``MR_small.dcm``, one series, 1 mm apart."""
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    factor = side // ds.Rows
    base = np.kron(ds.pixel_array, np.ones((factor, factor), np.int16))
    ds.Rows = ds.Columns = side
    ds.SeriesInstanceUID = generate_uid()
    x, y, _ = (float(v) for v in ds.ImagePositionPatient)
    folder.mkdir(parents=True)
    for k in range(slices):
        scale = 0.5 + 0.5 * np.sin(np.pi * (k + 0.5) / slices)  # anatomy grows, then shrinks
        ds.PixelData = (base * scale).astype(np.int16).tobytes()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [x, y, float(k)]
        ds.SliceLocation = float(k)
        ds.save_as(folder / f"IM{k + 1:05d}.dcm", enforce_file_format=True)


def write_volume(path: Path, shape: tuple[int, int, int]) -> None:
    """A noisy int16 ellipsoid (tissue about 1000) in air (0), written slice by slice."""
    rng = np.random.default_rng(0)
    x, y = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape[:2]), indexing="ij")
    volume = np.zeros(shape, np.int16)
    for k, z in enumerate(np.linspace(-1, 1, shape[2])):
        inside = x**2 / 0.8**2 + y**2 / 0.9**2 + z**2 < 1
        noise = rng.normal(1000, 100, shape[:2])
        volume[:, :, k] = np.where(inside, noise, 0).astype(np.int16)
    nib.save(nib.Nifti1Image(volume, np.eye(4)), path)


def inspect(path: str, summary: Path) -> dict[str, float]:
    """Wall time, peak resident memory and image count of a fresh `data inspect PATH`."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "synthmed.cli", "data", "inspect", path, "--json", str(summary)],
        stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        sys.exit(f"synthmed data inspect {path} failed with exit status {process.returncode}")
    images = json.loads(summary.read_text())
    height, width = images["size"]
    return {"seconds": round(seconds, 1), "peak_rss_mib": round(usage.ru_maxrss / 1024),
            "images": images["images"],
            "images_float32_mib": round(images["images"] * height * width * 4 / MIB)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--slices", type=int, default=2000, help="DICOM files in the series")
    parser.add_argument("--side", type=int, default=128, help="DICOM slice side, a multiple of 64")
    parser.add_argument("--volume", default="512,512,300", help="NIfTI shape X,Y,Z")
    args = parser.parse_args()
    shape = tuple(int(n) for n in args.volume.split(","))
    series, volume = args.out / "dicom-series", args.out / "volume.nii.gz"
    if not series.exists():
        write_dicom_series(series, args.slices, args.side)
    if not volume.exists():
        write_volume(volume, shape)
    files = len(list(series.iterdir()))
    results = {
        "baseline": inspect("phantom:t1,n=8,size=32", args.out / "baseline.json"),
        "dicom": {"input": f"{files} DICOM files, {args.side}x{args.side} int16",
                  "data_float32_mib": round(files * args.side**2 * 4 / MIB),
                  **inspect(str(series), args.out / "dicom.json")},
        "nifti": {"input": f"{'x'.join(map(str, shape))} int16 NIfTI (gzipped)",
                  "data_float32_mib": round(np.prod(shape) * 4 / MIB),
                  **inspect(str(volume), args.out / "nifti.json")},
    }
    baseline = results["baseline"]["peak_rss_mib"]
    print(f"baseline (imports, tiny phantom): {results['baseline']['seconds']} s, "
          f"peak RSS {baseline} MiB")
    for name in ("dicom", "nifti"):
        row = results[name]
        row["above_baseline_mib"] = row["peak_rss_mib"] - baseline
        print(f"{name}: {row['input']}: {row['seconds']} s, peak RSS {row['peak_rss_mib']} MiB "
              f"({row['above_baseline_mib']} MiB above the baseline); data as float32 "
              f"{row['data_float32_mib']} MiB, {row['images']} images read "
              f"({row['images_float32_mib']} MiB as float32)")
    (args.out / "large_inputs.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()

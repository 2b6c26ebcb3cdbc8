"""Batch generation and export of a synthetic data set from a trained run.

Images are made in fixed blocks of ``BLOCK`` images. Block ``k`` draws its noise from a
generator seeded with ``(seed, k)``, so an image depends only on the seed and its index:
the output is the same whatever the number of processes and however often the export was
interrupted. Under ``torchrun`` process ``r`` makes the blocks ``k % world == r``.

Files go to a hidden ``.OUT.partial`` folder beside ``OUT``. Each finished block leaves a
manifest part there; re-running the same command skips the finished blocks. When every block
is done, the parts are merged into ``manifest.csv`` and the folder is renamed to ``OUT``, so
``OUT`` only ever appears complete.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from pydicom.uid import generate_uid
from tqdm import tqdm

from synthmed import __version__
from synthmed.augment import medmnist
from synthmed.augment.dataset import ImageSet
from synthmed.augment.export import (
    EXPORT_FORMATS,
    MANIFEST_NAME,
    SUFFIX,
    file_names,
    write_files,
)
from synthmed.errors import InputError
from synthmed.gan import checkpoint, distributed
from synthmed.gan.run import LoadedRun

BLOCK = 256
NPZ_NAME = "images.npz"
MANIFEST_COLUMNS = ("path", "label", "class_name", "seed", "noise_index", "model_fingerprint",
                    "synthmed_version")


@dataclass(frozen=True)
class GenerateConfig:
    """What to generate.

    Args:
        n: number of images (spread evenly over the classes of a conditional model).
        per_class: images per class name (or index as text), instead of ``n``.
        balance: make, per class, as many images as it lacks to match the largest class of
            the training data, instead of ``n``.
        seed: fixes every image.
        format: ``png``, ``npz``, ``dicom`` or ``nifti``.
        bit_depth: 8 or 16 for PNG; ``None`` picks 16 when the training data's original
            units fit 16-bit pictures and were not 8-bit, else 8.
    """

    n: int | None = None
    per_class: dict[str, int] = field(default_factory=dict)
    balance: bool = False
    seed: int = 0
    format: str = "png"
    bit_depth: int | None = None

    def __post_init__(self) -> None:
        if sum(x is not None and x is not False and x != {}
               for x in (self.n, self.per_class, self.balance)) != 1:
            raise InputError("say how many images: exactly one of --n, --per-class or --balance")
        if self.n is not None and self.n < 1:
            raise InputError(f"--n must be at least 1, got {self.n}")
        if any(count < 0 for count in self.per_class.values()):
            raise InputError("--per-class counts must not be negative")
        if self.format not in EXPORT_FORMATS:
            raise InputError(f"unknown format {self.format!r}: use {', '.join(EXPORT_FORMATS)}")


def plan_labels(run: LoadedRun, config: GenerateConfig) -> np.ndarray:
    """The label of every image to make, ``(N,)`` int64; ``-1`` for an unconditional model."""
    names = run.class_names
    conditional = run.model.conditional
    if not conditional:
        if config.n is None:
            raise InputError("--per-class and --balance need a class-conditional model "
                             "(train with --conditional)", run.path)
        return np.full(config.n, -1, np.int64)
    if config.n is not None:
        return np.arange(config.n, dtype=np.int64) % len(names)
    if config.balance:
        counts = run.training_data.get("class_counts", {})
        largest = max(counts.values())
        wanted = {name: largest - counts.get(name, 0) for name in names}
    else:
        wanted = {_class_name(key, names, run.path): count
                  for key, count in config.per_class.items()}
    labels = np.concatenate([np.full(wanted.get(name, 0), k, np.int64)
                             for k, name in enumerate(names)])
    if len(labels) == 0:
        raise InputError("nothing to generate: every requested count is 0", run.path)
    return labels


def generate(
    run: LoadedRun,
    out: Path,
    config: GenerateConfig,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Make and write the images; return the provenance record written beside them."""
    out = Path(out)
    rank, world = distributed.init()
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InputError("already exists and is not empty: choose another --out or pass "
                         "--overwrite", out)
    labels = plan_labels(run, config)
    record = _provenance(run, config, labels)
    work = out.parent / f".{out.name}.partial"
    if rank == 0:
        _prepare_work_dir(work, record)
    distributed.barrier()
    plan = json.loads((work / "plan.json").read_text())
    blocks = range(rank, -(-len(labels) // BLOCK), world)
    # disable=None: tqdm hides the bar when stderr is not a terminal (batch pipelines)
    bar = tqdm(total=len(labels), desc="generate", unit="img",
               disable=True if not progress or rank != 0 else None)
    for block in blocks:
        start, stop = block * BLOCK, min((block + 1) * BLOCK, len(labels))
        if not (work / "parts" / f"{block:06d}.csv").is_file():
            _write_block(run, config, record, plan, labels, block, work)
        bar.update((stop - start) * world)
    bar.close()
    distributed.barrier()
    if rank == 0:
        _finish(work, out, config, record, labels, overwrite)
    distributed.barrier()
    return record


def _write_block(run: LoadedRun, config: GenerateConfig, record: dict, plan: dict,
                 labels: np.ndarray, block: int, work: Path) -> None:
    start = block * BLOCK
    block_labels = labels[start:start + BLOCK]
    rng = torch.Generator().manual_seed(_block_seed(config.seed, block))
    z = torch.randn(BLOCK, run.model.config.nz, generator=rng)[:len(block_labels)]
    images = run.model.generate(z, torch.from_numpy(block_labels) if run.model.conditional
                                else None).numpy()
    chunk = _as_imageset(images, block_labels, run)
    if config.format == "npz":
        np.save(work / "parts" / f"{block:06d}.npy", medmnist.medmnist_pixels(images))
        names = [f"{NPZ_NAME}#{start + offset}" for offset in range(len(block_labels))]
    else:
        names = file_names(chunk, SUFFIX[config.format], first=start, total=len(labels))
        write_files(chunk, work, config.format, names, bit_depth=record["bit_depth"],
                    dicom_series=tuple(plan["dicom_series"]), first_instance=start + 1)
    rows = io.StringIO()
    writer = csv.writer(rows)
    for offset, name in enumerate(names):
        label = int(block_labels[offset])
        writer.writerow([name, label if label >= 0 else "",
                         run.class_names[label] if label >= 0 else "", config.seed,
                         start + offset, record["model_fingerprint"], __version__])
    checkpoint.atomic_write(work / "parts" / f"{block:06d}.csv", rows.getvalue().encode())


def _finish(work: Path, out: Path, config: GenerateConfig, record: dict, labels: np.ndarray,
            overwrite: bool) -> None:
    """Merge the manifest parts, assemble the npz, and move the folder into place."""
    parts = sorted((work / "parts").glob("*.csv"))
    with (work / MANIFEST_NAME).open("w", newline="", encoding="utf-8") as handle:
        handle.write(",".join(MANIFEST_COLUMNS) + "\r\n")
        for part in parts:
            handle.write(part.read_text())
    if config.format == "npz":
        blocks = sorted((work / "parts").glob("*.npy"))
        first = np.load(blocks[0], mmap_mode="r")
        medmnist.write_npz_blocks(work / NPZ_NAME, _load_each(blocks), first.shape[1:],
                                  labels, record["class_names"])
    checkpoint.write_json(work / "provenance.json", record)
    shutil.rmtree(work / "parts")
    (work / "plan.json").unlink()
    if out.exists():
        if not overwrite and any(out.iterdir()):
            raise InputError("appeared while generating: not overwritten", out)
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    work.rename(out)


def _prepare_work_dir(work: Path, record: dict) -> None:
    """Start a partial folder, or keep the one an interrupted run of the same request left."""
    plan_path = work / "plan.json"
    if plan_path.is_file():
        plan = json.loads(plan_path.read_text())
        if plan.get("request") == record:
            return
    if work.exists():
        shutil.rmtree(work)
    (work / "parts").mkdir(parents=True)
    plan = {"request": record, "dicom_series": [generate_uid(), generate_uid()]}
    checkpoint.write_json(plan_path, plan)


def _provenance(run: LoadedRun, config: GenerateConfig, labels: np.ndarray) -> dict:
    """Everything that decides the output bytes, plus where the images come from."""
    counts = {name: int((labels == k).sum()) for k, name in enumerate(run.class_names)}
    intensity = run.training_data.get("intensity", {})
    return {
        "synthmed_version": __version__,
        "generator_run": str(run.path),
        "model_kind": run.model.kind,
        "model_epoch": run.epoch,
        "model_fingerprint": run.fingerprint,
        "training_data_fingerprint": run.training_data.get("fingerprint", ""),
        "images": len(labels),
        "class_names": run.class_names,
        "class_counts": counts if run.model.conditional else {},
        "request": asdict(config),
        "block_size": BLOCK,
        "bit_depth": config.bit_depth or _auto_bit_depth(run),
        "intensity": intensity,
        "labels_sha256": hashlib.sha256(labels.tobytes()).hexdigest(),
    }


def _auto_bit_depth(run: LoadedRun) -> int:
    intensity = run.training_data.get("intensity", {})
    low, high = intensity.get("low", 0.0), intensity.get("high", 255.0)
    wide = 16 in run.training_data.get("bit_depths", []) or intensity.get("unit") != "uint8"
    return 16 if wide and min(low, high) >= 0 and max(low, high) <= 65535 else 8


def _as_imageset(images: np.ndarray, labels: np.ndarray, run: LoadedRun) -> ImageSet:
    intensity = run.training_data.get("intensity", {})
    return ImageSet.from_arrays(
        images,
        labels=labels,
        class_names=run.class_names or None,
        groups=["synthetic"] * len(images),
        synthetic=True,
        intensity_range=(intensity.get("low", -1.0), intensity.get("high", 1.0)),
        unit=intensity.get("unit", "a.u."),
        modality=intensity.get("modality", "") or "OT",
    )


def _load_each(paths: list[Path]) -> Iterator[np.ndarray]:
    for path in paths:
        yield np.load(path)


def _block_seed(seed: int, block: int) -> int:
    return int(np.random.SeedSequence([seed, block]).generate_state(1, np.uint64)[0] >> 1)


def _class_name(key: str, names: list[str], where: Path) -> str:
    if key in names:
        return key
    if key.isdigit() and int(key) < len(names):
        return names[int(key)]
    raise InputError(f"unknown class {key!r}: the model knows {', '.join(names)}", where)

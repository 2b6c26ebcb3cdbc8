"""Batch generation and export of a synthetic data set from a trained run.

Images are made in fixed blocks of ``BLOCK`` images. Block ``k`` draws its noise from a
generator seeded with ``(seed, k)``, so an image depends only on the seed and its index:
the output is the same whatever the number of processes and however often the export was
interrupted. Under ``torchrun`` process ``r`` makes the blocks ``k % world == r``.

With a privacy filter (:mod:`synthmed.gan.near_copy`), an image nearer (Euclidean,
model-space pixels) to a training image than a threshold is a near-copy: it is dropped and
its slot redrawn. Round ``r`` of block ``k`` draws ``BLOCK`` more vectors from the block's
generator, and each slot still holding a near-copy takes its own vector of that round, so a
block's output still depends only on the seed, the block and the training data. The
manifest's ``noise_index`` (the slot) and ``noise_round`` (0 for the first draw) identify the
vector that made each file: vector ``noise_index % BLOCK`` of draw ``noise_round`` (counted
from 0) of ``BLOCK`` vectors from the generator of block ``noise_index // BLOCK``; the rounds
add up to the images dropped. A run trained with differential privacy passes its guarantee
on to ``provenance.json`` and the DICOM headers. With class runs
(:func:`~synthmed.gan.run.load_class_runs`), a class that has one is drawn by it from the
same noise vectors; the manifest names the weights that made each image.

Files go to a hidden ``.OUT.partial`` folder beside ``OUT``. Each finished block leaves a
manifest part there; re-running the same command skips the finished blocks. When every block
is done, the parts are merged into ``manifest.csv`` and the folder replaces ``OUT``, so ``OUT``
only ever appears complete. ``OUT`` follows the rules of :mod:`synthmed.io`: not an input,
replaced only when synthmed wrote it, one writer at a time (a lock beside it).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydicom.uid import generate_uid
from tqdm import tqdm

from synthmed import __version__
from synthmed.augment import medmnist
from synthmed.augment.dataset import ImageSet
from synthmed.augment.export import (
    EXPORT_FORMATS,
    SUFFIX,
    file_names,
    write_files,
)
from synthmed.errors import InputError
from synthmed.gan import distributed
from synthmed.gan.data import recorded_source
from synthmed.gan.near_copy import NearCopyFilter, PrivacyFilterConfig, near_copy_filter
from synthmed.gan.run import LoadedRun, drawing_model, load_class_runs
from synthmed.io import (
    MANIFEST,
    PROVENANCE,
    atomic_write,
    check_out,
    check_replaceable,
    mark_output,
    output_lock,
    replace_folder,
    write_json,
)
from synthmed.limits import MAX_IMAGES, MAX_SEED

BLOCK = 256
NPZ_NAME = "images.npz"
MANIFEST_COLUMNS = ("path", "label", "class_name", "seed", "noise_index", "noise_round",
                    "model_fingerprint", "synthmed_version")


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
        privacy_filter: drop near-copies of training images (``None``: keep every image).
        sampling_steps: a diffusion model's DDIM steps (``None``: its own).
        guidance: a class-conditional diffusion model's classifier-free guidance scale
            (``None``: its own; 0: unconditional, 1: conditional without guidance).
        class_runs: class name (or index as text) -> a run that draws that class's images
            from the same noise, in place of the run (a copy of it fine-tuned on the class,
            ``train --init-from RUN --class NAME``; see :func:`load_class_runs`).
    """

    n: int | None = None
    per_class: dict[str, int] = field(default_factory=dict)
    balance: bool = False
    seed: int = 0
    format: str = "png"
    bit_depth: int | None = None
    privacy_filter: PrivacyFilterConfig | None = None
    sampling_steps: int | None = None
    guidance: float | None = None
    class_runs: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if sum(x is not None and x is not False and x != {}
               for x in (self.n, self.per_class, self.balance)) != 1:
            raise InputError("say how many images: exactly one of --n, --per-class or --balance")
        if self.n is not None and not 1 <= self.n <= MAX_IMAGES:
            raise InputError(f"--n must be in 1..{MAX_IMAGES:,}, got {self.n}")
        if any(count < 0 for count in self.per_class.values()):
            raise InputError("--per-class counts must not be negative")
        if sum(self.per_class.values()) > MAX_IMAGES:
            raise InputError(f"--per-class counts add up to more than {MAX_IMAGES:,} images")
        if not 0 <= self.seed <= MAX_SEED:
            raise InputError(f"--seed must be in 0..{MAX_SEED}, got {self.seed}")
        if self.format not in EXPORT_FORMATS:
            raise InputError(f"unknown format {self.format!r}: use {', '.join(EXPORT_FORMATS)}")
        if self.sampling_steps is not None and self.sampling_steps < 1:
            raise InputError(f"--sampling-steps must be at least 1, got {self.sampling_steps}")
        if self.guidance is not None and not 0 <= self.guidance < float("inf"):
            raise InputError(f"--guidance must be a number of at least 0, got {self.guidance}")


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
        if sum(wanted.values()) > MAX_IMAGES:
            raise InputError(f"balancing would make more than {MAX_IMAGES:,} images", run.path)
    else:
        wanted = {names[run.class_label(key)]: count
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
    rank, _ = distributed.init()
    check_out(out, (run.path, *config.class_runs.values(),
                    config.privacy_filter and config.privacy_filter.train))
    check_replaceable(out, overwrite)
    copies = load_class_runs(run, config.class_runs)
    for each in (run, *copies.values()):
        _set_sampler(each, config)
    model = drawing_model(run, copies)
    labels = plan_labels(run, config)
    near = near_copy_filter(run, config.privacy_filter) if config.privacy_filter else None
    record = _provenance(run, config, labels, near, copies)
    work = out.parent / f".{out.name}.partial"
    if rank == 0:
        out.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(out) if rank == 0 else contextlib.nullcontext():
        if rank == 0:
            _prepare_work_dir(work, record)
        _write_blocks(run, model, config, record, labels, work, near, progress)
        if rank == 0:
            _finish(work, out, config, record, labels, overwrite)
    distributed.barrier()
    return json.loads((out / PROVENANCE).read_text())


def _write_blocks(run: LoadedRun, model: Any, config: GenerateConfig, record: dict,
                  labels: np.ndarray, work: Path, near: NearCopyFilter | None, progress: bool
                  ) -> None:
    """Make this process's blocks that ``work`` does not hold yet, drawn by ``model`` (the
    run's, or its class copies: :func:`drawing_model`)."""
    rank, world = distributed.init()
    distributed.barrier()
    plan = json.loads((work / "plan.json").read_text())
    blocks = range(rank, -(-len(labels) // BLOCK), world)
    # disable=None: tqdm hides the bar when stderr is not a terminal (batch pipelines)
    bar = tqdm(total=len(labels), desc="generate", unit="img",
               disable=True if not progress or rank != 0 else None)
    for block in blocks:
        start, stop = block * BLOCK, min((block + 1) * BLOCK, len(labels))
        if not (work / "parts" / f"{block:06d}.csv").is_file():
            _write_block(run, model, config, record, plan, labels, block, work, near)
        bar.update((stop - start) * world)
    bar.close()
    distributed.barrier()


def _write_block(run: LoadedRun, model: Any, config: GenerateConfig, record: dict, plan: dict,
                 labels: np.ndarray, block: int, work: Path, near: NearCopyFilter | None
                 ) -> None:
    start = block * BLOCK
    block_labels = labels[start:start + BLOCK]
    rng = torch.Generator().manual_seed(_block_seed(config.seed, block))
    images, rounds = _draw_block(run, model, block_labels, rng, near)
    chunk = _as_imageset(images, block_labels, run)
    if config.format == "npz":
        np.save(work / "parts" / f"{block:06d}.npy",
                medmnist.npz_pixels(chunk, record["bit_depth"]))
        names = [f"{NPZ_NAME}#{start + offset}" for offset in range(len(block_labels))]
    else:
        names = file_names(chunk, SUFFIX[config.format], first=start, total=len(labels))
        write_files(chunk, work, config.format, names, bit_depth=record["bit_depth"],
                    dicom_series=tuple(plan["dicom_series"]), first_instance=start + 1,
                    dicom_note=_dicom_note(record))
    rows = io.StringIO()
    writer = csv.writer(rows)
    for offset, name in enumerate(names):
        label = int(block_labels[offset])
        class_name = run.class_names[label] if label >= 0 else ""
        maker = record.get("class_runs", {}).get(class_name, record)  # a class run, or the run
        writer.writerow([name, label if label >= 0 else "", class_name, config.seed,
                         start + offset, rounds[offset], maker["model_fingerprint"],
                         __version__])
    atomic_write(work / "parts" / f"{block:06d}.csv", rows.getvalue().encode())


def _draw_block(run: LoadedRun, model: Any, labels: np.ndarray, rng: torch.Generator,
                near: NearCopyFilter | None) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(n, C, H, W)`` for a block's labels ``(n,)`` and the round of each one's noise.

    Each round draws ``BLOCK`` noise vectors from ``rng``; slot ``i`` takes vector ``i`` of
    round 0, then of each next round while its image is a near-copy.

    Raises:
        InputError: images still near-copies after ``near.max_redraws`` new draws.
    """
    shape = run.model.noise_shape
    images = _generate(model, torch.randn(BLOCK, *shape, generator=rng)[:len(labels)], labels)
    if near is None:
        return images, np.zeros(len(labels), np.int64)

    def draw(redo: np.ndarray) -> np.ndarray:
        return _generate(model, torch.randn(BLOCK, *shape, generator=rng)[redo], labels[redo])

    rounds = near.redraw(images, draw, str(run.path),
                         "raise --max-redraws, lower --filter-percentile")
    return images, rounds


def _generate(model: Any, z: torch.Tensor, labels: np.ndarray) -> np.ndarray:
    """Images ``(n, C, H, W)`` for the noise ``z`` ``(n, *noise_shape)`` and labels ``(n,)``
    (-1: unconditional)."""
    return model.generate(z, torch.from_numpy(labels) if model.conditional else None).numpy()


def _finish(work: Path, out: Path, config: GenerateConfig, record: dict, labels: np.ndarray,
            overwrite: bool) -> None:
    """Merge the manifest parts (counting the dropped near-copies), assemble the npz, and move
    the folder into place."""
    parts = [part.read_text() for part in sorted((work / "parts").glob("*.csv"))]
    with (work / MANIFEST).open("w", newline="", encoding="utf-8") as handle:
        handle.write(",".join(MANIFEST_COLUMNS) + "\r\n")
        handle.writelines(parts)
    if config.format == "npz":
        blocks = sorted((work / "parts").glob("*.npy"))
        first = np.load(blocks[0], mmap_mode="r")
        medmnist.write_npz_blocks(work / NPZ_NAME, _load_each(blocks), first.shape[1:],
                                  labels, record["class_names"], dtype=first.dtype)
    if "privacy_filter" in record:
        column = MANIFEST_COLUMNS.index("noise_round")
        dropped = sum(int(row[column]) for part in parts for row in csv.reader(io.StringIO(part)))
        record = {**record, "privacy_filter": {**record["privacy_filter"], "dropped": dropped}}
    write_json(work / PROVENANCE, record)
    shutil.rmtree(work / "parts")
    (work / "plan.json").unlink()
    mark_output(work, "synthetic")
    check_replaceable(out, overwrite)  # nothing new appeared there meanwhile
    replace_folder(work, out)


def _prepare_work_dir(work: Path, record: dict) -> None:
    """Start a partial folder, or keep the one an interrupted run of the same request left;
    one of another request is replaced only when its ``plan.json`` shows synthmed made it."""
    plan_path = work / "plan.json"
    if plan_path.is_file():
        try:
            plan = json.loads(plan_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            plan = {}
        if plan.get("request") == record:
            return
    elif work.exists() and any(path.is_file() for path in work.rglob("*")):
        raise InputError("is not a partial output synthmed left (no plan.json): move it away",
                         work)
    shutil.rmtree(work, ignore_errors=True)  # another request's, or empty folders
    (work / "parts").mkdir(parents=True)
    plan = {"request": record, "dicom_series": [generate_uid(), generate_uid()]}
    write_json(plan_path, plan)


def _set_sampler(run: LoadedRun, config: GenerateConfig) -> None:
    """Give a diffusion run the DDIM steps and guidance scale ``config`` asks for."""
    for flag, value in (("--sampling-steps", config.sampling_steps),
                        ("--guidance", config.guidance)):
        if value is not None and run.model.kind != "diffusion":
            raise InputError(f"{flag} is for diffusion runs, not a {run.model.kind} run",
                             run.path)
    if config.guidance is not None and not run.model.conditional:
        raise InputError("--guidance is for class-conditional diffusion runs (trained with "
                         "--conditional)", run.path)
    if config.sampling_steps is not None:
        run.model.sampling_steps = config.sampling_steps
    if config.guidance is not None:
        run.model.guidance = config.guidance


def _provenance(run: LoadedRun, config: GenerateConfig, labels: np.ndarray,
                near: NearCopyFilter | None, copies: dict[int, LoadedRun]) -> dict:
    """Everything that decides the output bytes, plus where the images come from: with the
    class runs, the filter's record and the run's differential privacy guarantee when there
    are."""
    counts = {name: int((labels == k).sum()) for k, name in enumerate(run.class_names)}
    intensity = run.training_data.get("intensity", {})
    dp = run.training_data.get("differential_privacy")
    return {
        "synthmed_version": __version__,
        "model_kind": run.model.kind,
        **_run_record(run),
        **({"class_runs": {run.class_names[label]: _run_record(copy)
                           for label, copy in sorted(copies.items())}} if copies else {}),
        "images": len(labels),
        "class_names": run.class_names,
        "class_counts": counts if run.model.conditional else {},
        "request": asdict(config),
        "block_size": BLOCK,
        # npz: MedMNIST's uint8 unless 16 is asked for (its loaders expect uint8)
        "bit_depth": config.bit_depth or (8 if config.format == "npz" else _auto_bit_depth(run)),
        "intensity": intensity,
        "labels_sha256": hashlib.sha256(labels.tobytes()).hexdigest(),
        **({"privacy_filter": near.record} if near else {}),
        **({"differential_privacy": dp} if dp else {}),
    }


def _run_record(run: LoadedRun) -> dict:
    """Which run made images: its path (as recorded), epoch, weights and training data."""
    return {
        "generator_run": recorded_source(str(run.path)),  # its fingerprint identifies it
        "model_epoch": run.epoch,
        "model_fingerprint": run.fingerprint,
        "training_data_fingerprint": run.training_data.get("fingerprint", ""),
    }


def _dicom_note(record: dict) -> str:
    """The DP-SGD guarantee of the generator for the DICOM header ("" without one)."""
    dp = record.get("differential_privacy")
    if not dp:
        return ""
    return f"generator trained with DP-SGD (epsilon={dp['epsilon']:.3g}, delta={dp['delta']:.3g})"


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

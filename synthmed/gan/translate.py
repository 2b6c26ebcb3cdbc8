"""Apply a trained CycleGAN to whole inputs: NIfTI volumes, DICOM series, picture files.

Every input is normalised as the training data was (the run's read options: percentiles of
the volume's foreground for MR, the window for CT), brought to the scale the model was trained
at, translated whole (the generators are fully convolutional), brought back to its own grid
and mapped to the target domain's intensity scale (the median mapping of its training images).

Outputs mirror the inputs: a NIfTI volume comes out with the same shape, affine and header; a
DICOM series as a new de-identified Secondary Capture series (new UIDs, ConversionType SYN);
a picture as a picture. Outputs are numbered in the order of the inputs (``volume_0001.nii.gz``,
``series_0002/00001.dcm``, ``image_0003.png``, ``images_0004/00001.png``), since input names
often name patients; ``manifest.csv`` lists each output with its input's position, and with
``keep_source_names`` the outputs keep the inputs' names and the manifest their paths.
``provenance.json`` holds the run's fingerprint and the mapping. Runs that slice a volume
along different axes can translate it together (multi-planar fusion: the mean of their
outputs, :func:`fused_translation`), and a translation can be blended with a global intensity
map of its input (:class:`MapBlend`). The output folder appears
only when every input is done (:func:`synthmed.io.atomic_output_dir`).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.transforms import Resize
from tqdm import tqdm

from synthmed import __version__
from synthmed.augment.dataset import ImageSet
from synthmed.augment.dicom import write_dicom
from synthmed.augment.export import write_files
from synthmed.augment.intensity import (
    foreground_mask,
    masked_to_model_space,
    match_histogram,
    percentile_range,
    require_finite,
    to_original,
)
from synthmed.augment.items import ReadConfig
from synthmed.augment.nifti import SUFFIXES as NIFTI_SUFFIXES
from synthmed.augment.nifti import display_plane, load_volume
from synthmed.augment.pictures import SUFFIXES as PICTURE_SUFFIXES
from synthmed.augment.readers import read_images
from synthmed.errors import InputError
from synthmed.gan.cyclegan import TRANSLATE_BATCH
from synthmed.gan.data import recorded_source, slice_stacks
from synthmed.gan.run import LoadedRun
from synthmed.io import MANIFEST, PROVENANCE, atomic_output_dir

DIRECTIONS = ("a2b", "b2a")
FORMATS = ("nifti", "dicom", "png")
MAPS = ("matching", "inverted")


@dataclass(frozen=True)
class MapBlend:
    """Mix a global intensity map of the input into the translation, in model space:
    ``(1 - weight)`` x the translator's output + ``weight`` x the map.

    The map is histogram matching of the input's foreground onto the target domain's
    training quantiles (``inverted``: a decreasing map, as for T1 <-> T2), the baseline that
    ``evaluate translation`` scores. It keeps the input's own structure, which a translator
    trained on a few subjects smooths away on a subject from a source it has not seen.
    Choose ``weight`` on validation subjects (``synthmed evaluate blend``).
    """

    map: str
    weight: float

    def __post_init__(self) -> None:
        if self.map not in MAPS:
            raise InputError(f"the blended map must be one of {', '.join(MAPS)}, "
                             f"got {self.map!r}")
        if not 0.0 < self.weight <= 1.0:
            raise InputError(f"the map's blend weight must be in (0, 1], got {self.weight}")

    def apply(self, translated: np.ndarray, source: np.ndarray, quantiles: np.ndarray,
              mask: np.ndarray | None = None) -> np.ndarray:
        """The blend of a model-space translation ``(N, C, H, W)`` with the map of its
        model-space ``source`` (same shape; foreground: ``mask`` ``(N, H, W)``, default the
        pixels above the background) onto the target ``quantiles`` ``(Q,)``."""
        mapped = match_histogram(source, quantiles, invert=self.map == "inverted", mask=mask)
        return self.mix(translated, mapped)

    def mix(self, translated: np.ndarray, mapped: np.ndarray) -> np.ndarray:
        """``(1 - weight)`` x ``translated`` + ``weight`` x ``mapped`` (the map's output, same
        shape), as float32."""
        return ((1.0 - self.weight) * translated + self.weight * mapped).astype(np.float32)


@dataclass(frozen=True)
class TranslateConfig:
    """How to translate.

    Args:
        direction: ``a2b`` or ``b2a``.
        format: output format, ``nifti``, ``dicom`` or ``png``; ``None``: the input's own.
        batch_size: slices per forward pass.
        keep_source_names: name the outputs after the inputs and list the inputs' paths in
            the manifest (both may name patients), instead of numbering them.
        blend: mix a global intensity map of each input into its translation (:class:`MapBlend`).
    """

    direction: str = "a2b"
    format: str | None = None
    batch_size: int = TRANSLATE_BATCH
    keep_source_names: bool = False
    blend: MapBlend | None = None

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise InputError(f"direction must be a2b or b2a, got {self.direction!r}")
        if self.format not in (None, *FORMATS):
            raise InputError(f"format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if self.batch_size < 1:
            raise InputError("batch size must be positive")


def target_domain(run: LoadedRun, direction: str) -> dict[str, Any]:
    """The training record of the domain ``direction`` translates into."""
    return _domain(run, direction[-1])


def _domain(run: LoadedRun, name: str) -> dict[str, Any]:
    domains = run.training_data.get("domains", {})
    if name not in domains:
        raise InputError(f"has no record of domain {name.upper()} (training_data.json)", run.path)
    return domains[name]


def translate_images(run: LoadedRun, images: np.ndarray, direction: str,
                     batch_size: int = TRANSLATE_BATCH,
                     positions: np.ndarray | None = None) -> np.ndarray:
    """Model-space images ``(N, C, H, W)`` of any size -> translated, same shape, in [-1, 1].

    When the run standardised its training subjects, the images (taken as one subject) are
    histogram-standardised onto the source domain's training quantiles first. Images go to
    the scale the model was trained at (the run's ``--size`` and resize mode), through the
    generator, and back to their own size. A 2.5D run sees each image with its neighbours
    along the slice axis (:func:`~synthmed.gan.data.slice_stacks`, the edge slice repeated
    at an edge): ``positions`` ``(N,)`` places the images on that axis (default: consecutive
    slices in the given order).
    """
    if run.model.config.standardize:
        quantiles = _domain(run, direction[0])["foreground_quantiles"]
        images = match_histogram(images, np.asarray(quantiles))
    read = run.config.data.read_config()
    height, width = images.shape[-2:]
    scaled = _training_shape(height, width, read)
    tensor = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    if scaled != (height, width):
        tensor = torch.stack([Resize(scaled, mode="bilinear", anti_aliasing=True)(image)
                              for image in tensor]).as_tensor()
    context = run.model.config.context
    if context:
        places = np.arange(len(images)) if positions is None else np.asarray(positions)
        tensor = torch.from_numpy(slice_stacks(tensor.numpy(), np.zeros(len(images)), places,
                                               context))
    out = run.model.centre(run.model.translate(tensor, direction, batch_size=batch_size))
    if scaled != (height, width):
        out = torch.stack([Resize((height, width), mode="bilinear", anti_aliasing=True)(image)
                           for image in out]).as_tensor()
    return out.clamp(-1, 1).numpy()


def _training_shape(height: int, width: int, read: ReadConfig) -> tuple[int, int]:
    """Where a ``height x width`` image was brought before the model saw it in training:
    ``resize`` stretches to the size, ``fit`` scales its longest side to it, ``pad`` keeps
    the scale (only padding or cropping)."""
    if read.size is None or read.resize_mode == "pad":
        return height, width
    if read.resize_mode == "resize":
        return read.size, read.size
    factor = read.size / max(height, width)
    return max(1, round(height * factor)), max(1, round(width * factor))


def translate_volume(run: LoadedRun, volume: np.ndarray, direction: str,
                     batch_size: int = TRANSLATE_BATCH, fuse: Sequence[LoadedRun] = (),
                     blend: MapBlend | None = None) -> tuple[np.ndarray, int]:
    """A volume ``(X, Y, Z)`` (or a plane ``(X, Y)``) in its original units -> the translated
    volume in the target domain's units (``run``'s mapping), and the number of slices ``run``
    translated. With ``fuse``, a multi-planar fusion (:func:`fused_translation`); with
    ``blend``, mixed with a global map of the volume (:func:`blended_translation`)."""
    translated, slices = blended_translation((run, *fuse), volume, direction, batch_size, blend)
    target = target_domain(run, direction)["intensity"]
    return to_original(translated, target["low"], target["high"]).astype(np.float32), slices


def blended_translation(runs: Sequence[LoadedRun], volume: np.ndarray, direction: str,
                        batch_size: int = TRANSLATE_BATCH, blend: MapBlend | None = None
                        ) -> tuple[np.ndarray, int]:
    """:func:`fused_translation` of ``volume`` (original units) by ``runs``, then, with
    ``blend``, mixed with the global map of the whole volume's foreground (normalised by the
    first run's read options) onto the first run's target quantiles."""
    translated, slices = fused_translation(runs, volume, direction, batch_size)
    if blend is None:
        return translated, slices
    return blend_volume(runs[0], volume, translated, direction, blend), slices


def blend_volume(run: LoadedRun, volume: np.ndarray, translated: np.ndarray, direction: str,
                 blend: MapBlend) -> np.ndarray:
    """``run``'s model-space translation of ``volume`` (original units; both ``(X, Y, Z)`` or
    ``(X, Y)``) mixed with the global map of the volume's foreground, normalised by the run's
    read options, onto the run's target quantiles (:meth:`MapBlend.apply`)."""
    read = run.config.data.read_config()
    mask = foreground_mask(volume)
    low, high = percentile_range(volume, mask, read.percentiles)
    as_image = (1, 1, volume.shape[0], -1)  # one image of every voxel: the map is voxel-wise
    source = masked_to_model_space(volume, mask, low, high).reshape(as_image)
    quantiles = np.asarray(target_domain(run, direction)["foreground_quantiles"])
    blended = blend.apply(translated.reshape(as_image), source, quantiles,
                          mask.reshape(as_image[1:]))
    return blended.reshape(volume.shape)


def fused_translation(runs: Sequence[LoadedRun], volume: np.ndarray, direction: str,
                      batch_size: int = TRANSLATE_BATCH) -> tuple[np.ndarray, int]:
    """The mean of the runs' model-space translations of ``volume`` (same shape, [-1, 1]),
    each made along its run's own slice axis; and the number of slices the first translated.

    Runs that slice one volume along different axes (``--axis`` 0, 1, 2) make a multi-planar
    fusion: each plane's errors differ, so their mean is closer to the truth than any one.

    Raises:
        InputError: several runs and a 2D plane, or runs that do not make the same target
            (channels, intensity unit and modality), or one run given twice.
    """
    first, *others = runs
    if others and volume.ndim != 3:
        raise InputError(f"multi-planar fusion needs 3D volumes, got {volume.ndim}D")
    fingerprints = {first.fingerprint}
    for other in others:
        if other.fingerprint in fingerprints:
            raise InputError("is given twice: fuse distinct runs", other.path)
        fingerprints.add(other.fingerprint)
        _require_same_target(first, other, direction)
    outputs = [_model_space_volume(run, volume, direction, batch_size) for run in runs]
    return np.mean([out for out, _ in outputs], axis=0, dtype=np.float32), outputs[0][1]


def fused_runs_record(runs: Sequence[LoadedRun]) -> list[dict[str, Any]]:
    """What provenance and reports say of each fused run: path, fingerprint, epoch, axis."""
    return [{"run": recorded_source(str(r.path)), "model_fingerprint": r.fingerprint,
             "epoch": r.epoch, "slice_axis": r.config.data.read_config().slice_axis}
            for r in runs]


def _require_same_target(run: LoadedRun, other: LoadedRun, direction: str) -> None:
    """Runs fused together must make one target: channels, intensity unit and modality."""
    mine, theirs = (target_domain(r, direction)["intensity"] for r in (run, other))
    for what, a, b in (("channels", run.model.config.channels, other.model.config.channels),
                       ("target unit", mine["unit"], theirs["unit"]),
                       ("target modality", mine["modality"], theirs["modality"])):
        if a != b:
            raise InputError(f"cannot be fused with {run.path}: {what} {b!r}, not {a!r}",
                             other.path)


def _model_space_volume(run: LoadedRun, volume: np.ndarray, direction: str,
                        batch_size: int) -> tuple[np.ndarray, int]:
    """``run``'s translation of ``volume`` (original units) in model space, same shape, slice
    by slice along the run's slice axis. Slices without foreground (as training skipped them)
    become the target's background, -1. Returns it and the number of translated slices."""
    read = run.config.data.read_config()
    mask = foreground_mask(volume)
    low, high = percentile_range(volume, mask, read.percentiles)
    axis = read.slice_axis if volume.ndim == 3 else 2
    planes = np.moveaxis(volume if volume.ndim == 3 else volume[:, :, None], axis, 0)
    masks = np.moveaxis(mask if volume.ndim == 3 else mask[:, :, None], axis, 0)
    chosen = np.flatnonzero(masks.mean((1, 2)) > read.min_foreground)
    out = np.full(planes.shape, -1.0, np.float32)  # (slices, A, B) model space
    if len(chosen):
        images = np.stack([masked_to_model_space(display_plane(planes[k]),
                                                 display_plane(masks[k]), low, high)[None]
                           for k in chosen])  # (S, 1, B, A)
        translated = translate_images(run, images, direction, batch_size, positions=chosen)
        for k, image in zip(chosen, translated, strict=True):
            out[k] = display_plane(image[0])
    out = np.moveaxis(out, 0, axis)
    return (out if volume.ndim == 3 else out[:, :, 0]), len(chosen)


def translate_inputs(
    run: LoadedRun,
    inputs: Sequence[str | Path],
    out: Path,
    config: TranslateConfig,
    *,
    fuse: Sequence[LoadedRun] = (),
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Translate every input into ``out`` (see the module docstring); return the provenance.

    Args:
        inputs: NIfTI files, DICOM files or folders (one series each), pictures or folders
            of pictures.
        fuse: more runs for a multi-planar fusion (:func:`fused_translation`) of NIfTI
            volumes written as NIfTI; other inputs are refused.

    Raises:
        InputError: a run that is not a CycleGAN, an input that cannot be read or is given
            twice, an output folder that may not be written (:mod:`synthmed.io`).
    """
    if run.config.kind != "cyclegan":
        raise InputError(f"is a {run.config.kind!r} run: translate needs a cyclegan run",
                         run.path)
    paths = [Path(p) for p in inputs]
    seen: dict[Path, Path] = {}
    for path in paths:
        if not path.exists():
            raise InputError("no such file or folder", path)
        if path.resolve() in seen:
            raise InputError(f"is given twice (also as {seen[path.resolve()]}): each input "
                             "once", path)
        seen[path.resolve()] = path
    names = _output_names(paths) if config.keep_source_names else _numbered_names(paths)
    rows: list[dict[str, Any]] = []
    bar = tqdm(paths, unit="input", disable=True if not progress else None, dynamic_ncols=True)
    inputs_kept = (run.path, *(other.path for other in fuse), *paths)
    with atomic_output_dir(out, overwrite, inputs_kept, "translation") as work:
        for number, (path, name) in enumerate(zip(bar, names, strict=True), 1):
            bar.set_postfix_str(f"input {number}")
            source = str(path) if config.keep_source_names else str(number)
            rows.extend(_translate_one(run, path, work, name, source, config, fuse))
        record = _provenance(run, config, rows, fuse)
        (work / PROVENANCE).write_text(json.dumps(record, indent=2) + "\n")
        _write_manifest(work / MANIFEST, rows)
    return record


def _translate_one(run: LoadedRun, path: Path, work: Path, name: str, source: str,
                   config: TranslateConfig, fuse: Sequence[LoadedRun]) -> list[dict[str, Any]]:
    """Translate one input into ``work`` as ``name``; return its manifest rows, naming the
    input as ``source``."""
    kind = _input_kind(path)
    if kind == "nifti" and config.format in (None, "nifti"):
        image = _load_nifti(path)
        volume, slices = translate_volume(run, image.get_fdata(dtype=np.float32),
                                          config.direction, config.batch_size, fuse,
                                          config.blend)
        header = image.header.copy()
        header.set_data_dtype(np.float32)
        header.set_slope_inter(1.0, 0.0)
        output = work / (name if name.endswith(NIFTI_SUFFIXES) else f"{name}.nii.gz")
        output.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(volume, image.affine, header), output)
        return [_row(source, output.relative_to(work).as_posix(), kind, slices, config)]
    if fuse:
        raise InputError("multi-planar fusion translates NIfTI volumes into NIfTI only: "
                         "translate DICOM series and pictures with one run", path)
    imageset = _read_slices(run, path, kind)
    if imageset.channels != run.model.config.channels:
        raise InputError(f"has {imageset.channels} channel(s) but the translator takes "
                         f"{run.model.config.channels}: convert it first", path)
    translated = translate_images(run, imageset.images, config.direction, config.batch_size)
    target = target_domain(run, config.direction)
    if config.blend is not None:
        translated = config.blend.apply(translated, imageset.images,
                                        np.asarray(target["foreground_quantiles"]))
    result = replace(imageset, images=translated,
                     intensity_low=np.full(len(imageset), target["intensity"]["low"]),
                     intensity_high=np.full(len(imageset), target["intensity"]["high"]),
                     unit=target["intensity"]["unit"], modality=target["intensity"]["modality"],
                     synthetic=np.ones(len(imageset), bool))
    format_ = config.format or ("png" if kind == "picture" else kind)
    files = _slice_names(imageset, path, name, format_, kind, config.keep_source_names)
    if format_ == "dicom":
        write_dicom(result, work, files,
                    series_description=f"synthmed {config.direction} translation",
                    deidentification="synthmed translation: new UIDs, no source attribute kept")
    else:
        bit_depth = 16 if max(target.get("bit_depths") or [8]) > 8 else 8
        write_files(result, work, format_, files, bit_depth=bit_depth)
    sources = imageset.sources if config.keep_source_names else [source] * len(files)
    return [_row(input_, file, kind, 1, config)
            for file, input_ in zip(files, sources, strict=True)]


def _input_kind(path: Path) -> str:
    name = path.name.lower()
    if path.is_file() and name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if path.is_file() and name.endswith(PICTURE_SUFFIXES):
        return "picture"
    if path.is_dir():
        files = [p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")]
        if files and all(p.name.lower().endswith(PICTURE_SUFFIXES) for p in files):
            return "picture"
    return "dicom"


def _load_nifti(path: Path) -> nib.Nifti1Image:
    """The image (header and affine) after checking its voxels: 2D or 3D and finite."""
    require_finite(load_volume(path), path)
    return nib.load(path)


def _read_slices(run: LoadedRun, path: Path, kind: str) -> ImageSet:
    """A DICOM series or the pictures of ``path`` at their own size, normalised as in training."""
    read = replace(run.config.data.read_config(), size=None, skip_bad=False,
                   format="image" if kind == "picture" else kind)
    if kind == "picture" and path.is_dir():
        sets = [read_images(p, read) for p in sorted(path.rglob("*"))
                if p.is_file() and not p.name.startswith(".")]
        return ImageSet.concatenate(sets) if len({s.size for s in sets}) == 1 else _mixed(sets)
    return read_images(path, read)


def _mixed(sets: list[ImageSet]) -> ImageSet:
    sizes = sorted({s.size for s in sets})
    raise InputError(f"pictures of {len(sizes)} sizes ({sizes[0]}, {sizes[1]} ...): translate "
                     "each size in its own call", sets[0].sources[0])


def _slice_names(imageset: ImageSet, path: Path, name: str, format_: str, kind: str,
                 keep_source_names: bool) -> list[str]:
    """A picture file is ``name``; a picture keeps its own name (and relative folder) with
    ``keep_source_names``; a series and a numbered folder number their slices."""
    suffix = {"png": ".png", "dicom": ".dcm", "nifti": ".nii.gz"}[format_]
    if kind == "picture" and not path.is_dir() and not keep_source_names:
        return [Path(name).with_suffix(suffix).as_posix()]
    if kind == "picture" and keep_source_names:
        root = path if path.is_dir() else path.parent
        base = Path(name) if path.is_dir() else Path(name).parent
        return [(base / Path(source).relative_to(root)).with_suffix(suffix).as_posix()
                for source in imageset.sources]
    return [f"{name}/{k + 1:05d}{suffix}" for k in range(len(imageset))]


def _numbered_names(paths: list[Path]) -> list[str]:
    """Each input's output name by its position: ``volume_0001`` (NIfTI; ``.nii.gz`` added),
    ``image_0002.png`` (a picture), ``images_0003`` (a folder of pictures), ``series_0004``
    (DICOM)."""
    names = []
    for number, path in enumerate(paths, 1):
        kind = _input_kind(path)
        if kind == "nifti":
            names.append(f"volume_{number:04d}")
        elif kind == "picture":
            names.append(f"images_{number:04d}" if path.is_dir() else f"image_{number:04d}.png")
        else:
            names.append(f"series_{number:04d}")
    return names


def _output_names(paths: list[Path]) -> list[str]:
    """Each input's name below the output: its path relative to the inputs' common folder
    (``A/t1.nii.gz``, ``B/t1.nii.gz``), or its own name when that is unique."""
    resolved = [p.resolve() for p in paths]
    if len({p.name for p in resolved}) == len(resolved):
        return [p.name for p in resolved]
    common = Path(os.path.commonpath([p.parent for p in resolved]))
    return [p.relative_to(common).as_posix() for p in resolved]


def _row(source: str, output: str, kind: str, slices: int, config: TranslateConfig
         ) -> dict[str, Any]:
    return {"input": source, "output": output, "kind": kind, "slices": slices,
            "direction": config.direction}


def _write_manifest(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["input", "output", "kind", "slices",
                                                    "direction"])
        writer.writeheader()
        writer.writerows(rows)


def _provenance(run: LoadedRun, config: TranslateConfig, rows: list[dict[str, Any]],
                fuse: Sequence[LoadedRun]) -> dict[str, Any]:
    target = target_domain(run, config.direction)
    fused = fused_runs_record(fuse)
    return {
        "generator": "synthmed cyclegan translation",
        "synthmed_version": __version__,
        "run": recorded_source(str(run.path)),  # its fingerprint identifies it
        "model_fingerprint": run.fingerprint,
        "epoch": run.epoch,
        **asdict(config),
        "target_intensity": target["intensity"],
        **({"fused_with": fused} if fused else {}),
        "outputs": len(rows),
    }

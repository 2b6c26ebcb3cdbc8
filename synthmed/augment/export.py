"""Write an :class:`ImageSet` to disk: PNG (8/16-bit), MedMNIST npz, DICOM Secondary Capture or
NIfTI, with a ``manifest.csv`` (path, label, class name, split, group, modality) that
:func:`synthmed.augment.readers.read_images` reads back, and an optional ``provenance.json``.

Every export is atomic and safe (:func:`synthmed.io.atomic_output_dir`): files go to a hidden
temporary folder beside the output, which is moved into place only when everything is written,
and only over an earlier folder that synthmed wrote.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

from synthmed.augment import dicom, medmnist, nifti, pictures
from synthmed.augment.dataset import ImageSet
from synthmed.errors import InputError
from synthmed.io import MANIFEST, PROVENANCE, atomic_output_dir

EXPORT_FORMATS = ("png", "npz", "dicom", "nifti")
SUFFIX = {"png": ".png", "dicom": ".dcm", "nifti": ".nii.gz"}
NPZ_NAME = "images.npz"


def export_imageset(
    imageset: ImageSet,
    out: Path,
    format: str,
    *,
    overwrite: bool = False,
    bit_depth: int = 8,
    provenance: dict[str, Any] | None = None,
) -> Path:
    """Atomically write ``imageset`` to the folder ``out`` (see :func:`write_imageset`)."""
    with atomic_output_dir(out, overwrite, kind="export") as work:
        write_imageset(imageset, work, format, bit_depth=bit_depth, provenance=provenance)
    return Path(out)


def write_imageset(
    imageset: ImageSet,
    folder: Path,
    format: str,
    *,
    bit_depth: int = 8,
    provenance: dict[str, Any] | None = None,
) -> None:
    """Write ``imageset`` into an existing, empty ``folder``.

    Args:
        format: ``png``, ``npz``, ``dicom`` or ``nifti``.
        bit_depth: 8 or 16, for PNG and npz (16: uint16 original units).
        provenance: facts about how the images were made, saved as ``provenance.json``.

    File layout: ``[split/][class/]NNNNN.ext`` plus ``manifest.csv``; npz: ``images.npz``.
    """
    if format not in EXPORT_FORMATS:
        raise InputError(f"unknown export format {format!r}: use {', '.join(EXPORT_FORMATS)}")
    if provenance is not None:
        (folder / PROVENANCE).write_text(json.dumps(provenance, indent=2) + "\n")
    if format == "npz":
        medmnist.write_npz(imageset, folder / NPZ_NAME, bit_depth=bit_depth)
        return
    names = file_names(imageset, SUFFIX[format])
    write_files(imageset, folder, format, names, bit_depth=bit_depth)
    write_manifest(imageset, folder / MANIFEST, names)


def write_files(
    imageset: ImageSet,
    folder: Path,
    format: str,
    names: list[str],
    *,
    bit_depth: int = 8,
    dicom_series: tuple[str, str] | None = None,
    first_instance: int = 1,
    dicom_note: str = "",
) -> None:
    """Write item ``i`` to ``folder / names[i]`` as PNG, DICOM or NIfTI (one file per image).

    ``dicom_series`` and ``first_instance`` let an export written in parts share one series;
    ``dicom_note`` states how the images were made beyond synthesis (see
    :func:`~synthmed.augment.dicom.write_dicom`'s ``note``).

    Raises:
        InputError: a name that would land outside ``folder`` (``../x``, ``/x``).
    """
    for name in names:
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise InputError(f"file name {name!r} leads outside the output folder")
    if format == "png":
        pictures.write_pictures(imageset, folder, names, bit_depth=bit_depth)
    elif format == "dicom":
        dicom.write_dicom(imageset, folder, names, series=dicom_series,
                          first_instance=first_instance, note=dicom_note)
    elif format == "nifti":
        nifti.write_nifti(imageset, folder, names)
    else:
        raise InputError(f"{format} is not a one-file-per-image format")


def file_names(imageset: ImageSet, suffix: str, first: int = 0, total: int | None = None
               ) -> list[str]:
    """Relative path of each item: ``[split/][class/]NNNNN{suffix}``, numbered from ``first``
    with as many digits as ``total`` items (default: this set) need. Split and class names
    become safe folder names (see :func:`_safe_folder`)."""
    width = max(5, len(str(total if total is not None else len(imageset))))
    names = []
    for offset in range(len(imageset)):
        parts = [_safe_folder(imageset.splits[offset]) if imageset.splits[offset] else ""]
        if imageset.labels[offset] >= 0:
            parts.append(_safe_folder(imageset.class_names[imageset.labels[offset]]))
        parts.append(f"{first + offset:0{width}d}{suffix}")
        names.append("/".join(part for part in parts if part))
    return names


def write_manifest(imageset: ImageSet, path: Path, names: list[str]) -> None:
    """``manifest.csv``: one row per item, paths relative to the manifest's folder."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "class_name", "split", "group", "modality"])
        for index, name in enumerate(names):
            label = int(imageset.labels[index])
            writer.writerow([
                name,
                label if label >= 0 else "",
                imageset.class_names[label] if label >= 0 else "",
                imageset.splits[index],
                imageset.groups[index],
                imageset.modality,
            ])


def _safe_folder(name: str) -> str:
    """A split or class name as one folder name inside the output: path separators, control
    and reserved characters replaced, leading and trailing dots and spaces dropped (no ``..``),
    ``_`` for what is left empty."""
    cleaned = re.sub(r"[\\/\x00-\x1f:*?\"<>|]", "_", name).strip(" .")
    return cleaned or "_"

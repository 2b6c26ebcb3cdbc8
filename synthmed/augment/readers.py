"""One call from a path to an :class:`ImageSet`: :func:`read_images`.

A path may be a file (``.dcm``, ``.nii``/``.nii.gz``, ``.png``/``.jpg``/``.tif``, ``.npz``,
``.csv`` manifest), a folder, a glob pattern (``brain/*/t1.nii.gz``) or the embedded phantom
(``phantom``, ``phantom:t2``, ``phantom:t1,n=200,size=32,seed=1``).

Folders: a ``manifest.csv`` at the top is read as a manifest; otherwise every file below is
read, except hidden files, JSON sidecars and DICOMDIR indexes. Picture files follow the
ImageFolder layout: ``[split/]class/image.png`` gives the class (and the split when the
first folder is ``train``/``training``, ``val``/``validation``, ``test``/``testing``).
DICOM and NIfTI folders are not labelled by folder names, since their folders usually name
patients and series.
"""

from __future__ import annotations

import csv
import glob
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from synthmed.augment import dicom, medmnist, nifti, phantom, pictures
from synthmed.augment.dataset import ImageSet
from synthmed.augment.items import (
    MAX_CLASSES,
    Item,
    ReadConfig,
    ReadResult,
    assemble,
    split_name,
)
from synthmed.errors import InputError
from synthmed.io import MANIFEST

MANIFEST_COLUMNS = ("path", "label", "split", "group", "modality")
FORMATS = ("auto", "dicom", "nifti", "image", "npz", "csv")


def read_images(path: str | Path, config: ReadConfig | None = None) -> ImageSet:
    """Read a file, folder, glob pattern or phantom spec into an ImageSet.

    Args:
        path: what to read (see the module docstring).
        config: read options; defaults keep sizes and channels and refuse mixed ones.

    Returns:
        ImageSet with images ``(N, C, H, W)`` float32 in ``[-1, 1]``.

    Raises:
        InputError: one line naming the file and the problem.

    Examples:
        >>> s = read_images("phantom:t1,n=8,size=32")
        >>> s.images.shape
        (8, 1, 32, 32)
    """
    config = config or ReadConfig()
    if config.format not in FORMATS:
        raise InputError(f"unknown format {config.format!r}: use one of {', '.join(FORMATS)}")
    text = str(path)
    if phantom.is_phantom_spec(text):
        return phantom.read_phantom_spec(text, config)
    skipped: list[dict[str, str]] = []
    if glob.has_magic(text):
        files = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
        if not files:
            raise InputError("no files match this pattern", text)
        result = _read_files(files, _glob_root(text), config, skipped)
    else:
        root = Path(text)
        if not root.exists():
            raise InputError("no such file or folder", root)
        if root.is_dir() and (root / MANIFEST).is_file() and config.format == "auto":
            root = root / MANIFEST
        if root.is_file():
            result = _read_file(root, config, skipped)
        else:
            result = _read_files(_files_below(root), root, config, skipped)
    if skipped:
        result.metadata["skipped"] = skipped
    return assemble(result, config, origin=text)


def file_format(path: Path, config: ReadConfig) -> str:
    """The reader for one file: the configured format, else by suffix or DICOM magic."""
    if config.format != "auto":
        return config.format
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    if name.endswith(".npz"):
        return "npz"
    if name.endswith(".csv"):
        return "csv"
    if name.endswith(pictures.SUFFIXES):
        return "image"
    if name.endswith((".dcm", ".dicom")) or dicom.has_dicom_magic(path):
        return "dicom"
    return "unknown"


def _read_file(path: Path, config: ReadConfig, skipped: list[dict[str, str]]) -> ReadResult:
    config.require_inside_root(path)
    kind = file_format(path, config)
    if kind == "npz":
        return medmnist.read_npz(path)
    if kind == "csv":
        return _read_manifest(path, config, skipped)
    return _read_files([path], path.parent, config, skipped)


def _read_files(
    files: list[Path], root: Path, config: ReadConfig, skipped: list[dict[str, str]]
) -> ReadResult:
    """Read many files of one kind (DICOM, NIfTI or pictures) found below ``root``."""
    by_kind: dict[str, list[Path]] = {}
    for path in files:
        config.require_inside_root(path)
        by_kind.setdefault(file_format(path, config), []).append(path)
    unknown = by_kind.pop("unknown", [])
    for path in unknown:
        if not config.skip_bad:
            raise InputError(
                "not a supported image file (DICOM, NIfTI, PNG, JPEG, TIFF); "
                "remove it or pass --skip-bad",
                path,
            )
        skipped.append({"path": str(path), "problem": "not a supported image file"})
    if list(by_kind) == ["npz"] and len(by_kind["npz"]) == 1:
        return medmnist.read_npz(by_kind["npz"][0])
    for kind in ("npz", "csv"):
        if kind in by_kind:
            raise InputError(f"read {kind} files one at a time, not inside a folder",
                             by_kind[kind][0])
    if len(by_kind) > 1:
        raise InputError(f"mixes {' and '.join(sorted(by_kind))} files: read one kind at a time",
                         root)
    if not by_kind:
        raise InputError("no image files found", root)
    kind, paths = next(iter(by_kind.items()))
    readers: dict[str, Callable[[], ReadResult]] = {
        "dicom": lambda: dicom.read_dicom(paths, config, skipped),
        "nifti": lambda: nifti.read_nifti(paths, config, skipped),
        "image": lambda: pictures.read_picture_folder(paths, root, config, skipped),
    }
    return readers[kind]()


def _read_manifest(path: Path, config: ReadConfig, skipped: list[dict[str, str]]) -> ReadResult:
    """A CSV with columns ``path,label[,split][,group][,modality][,class_name]``.

    Paths are relative to the CSV's folder; ``file#K`` names the K-th image of a file that
    holds many (an npz, a multi-frame DICOM, a NIfTI volume's kept slices). Labels are
    integers or class names; the optional ``class_name`` column (written by our exporters)
    names integer labels. With ``config.root``, a path outside it is refused (even with
    ``skip_bad``) before it is looked at. Listed files are read by their own format; a listed
    CSV is refused (a manifest lists images, not manifests).
    """
    rows = _manifest_rows(path)
    listed = replace(config, format="auto")
    items: list[Item] = []
    names: dict[int, str] = {}
    kinds: dict[str, str] = {}  # kind of label (none, index, name) -> its first line
    files: dict[Path, list[Item]] = {}
    for line, row in rows:
        relative, _, index = row["path"].partition("#")
        file = (path.parent / relative).resolve() if relative else None
        where = f"{path}:{line}"
        if relative:
            config.require_inside_root(path.parent / relative, where)
        try:
            if file is None or not _is_file(file, where):
                raise InputError(f"file {row['path']!r} not found", where)
            if file_format(file, listed) == "csv":
                raise InputError(f"file {row['path']!r} is a CSV: a manifest lists image files, "
                                 "not other manifests", where)
            if file not in files:
                files[file] = _read_file(file, listed, skipped).items
            read = [replace(item) for item in _select(files[file], index, where)]
        except InputError as error:
            if not config.skip_bad:
                raise
            skipped.append({"path": error.path or where, "problem": error.problem})
            continue
        label = _manifest_label(row.get("label", ""), where)
        kind = "none" if label is None else "index" if label.isdecimal() else "name"
        kinds.setdefault(kind, where)
        if len(kinds) > 1:
            raise InputError(_mixed_labels(label, *next(iter(kinds.items()))), where)
        name = row.get("class_name")
        if kind == "index" and name:
            names.setdefault(int(label), name)
            if names[int(label)] != name or list(names.values()).count(name) > 1:
                raise InputError(f"class_name {name!r} of label {label} disagrees with an "
                                 "earlier line: one name per class index", where)
        for item in read:
            item.label = label
            item.split = split_name(row.get("split") or item.split)
            item.group = row.get("group") or item.group
            item.modality = row.get("modality") or item.modality
            items.append(item)
    class_names = None
    if names:  # every label is a class index: name them all
        top = max([*names, *(int(item.label) for item in items)])
        class_names = tuple(names.get(k, str(k)) for k in range(top + 1))
        for item in items:
            item.label = class_names[int(item.label)]
    return ReadResult(items, class_names)


def _mixed_labels(label: str | None, first: str, at: str) -> str:
    """Why a row's label does not fit the earlier rows, whose labels are ``first`` (``none``,
    ``index`` or ``name``) since line ``at``."""
    if label is None:
        return f"has no label while other rows have one ({at})"
    if first == "none":
        return f"has a label while other rows have none ({at})"
    if first == "index":
        return (f"label {label!r} is a name while other labels are class indices ({at}): use "
                "one or the other")
    return (f"label {label!r} is a class index while other labels are names ({at}): use one "
            "or the other")


def _select(items: list[Item], index: str, where: str) -> list[Item]:
    """All items of a file, or item ``index`` of a multi-image file (``images.npz#17``)."""
    if not index:
        return items
    if not index.isdecimal() or int(index) >= len(items):
        raise InputError(f"no image #{index} in a file of {len(items)} images", where)
    return [items[int(index)]]


def _is_file(path: Path, where: str) -> bool:
    """Whether ``path`` is a file; a path the system refuses (name too long ...) is an
    InputError naming the manifest line ``where``."""
    try:
        return path.is_file()
    except OSError as error:
        raise InputError(f"file {str(path)!r} cannot be opened ({error.strerror})", where) \
            from None


def _manifest_rows(path: Path) -> list[tuple[int, dict[str, str]]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = [c.strip() for c in reader.fieldnames or []]
            missing = [c for c in ("path", "label") if c not in columns]
            if missing:
                raise InputError(
                    f"manifest lacks column(s) {', '.join(missing)}; expected header "
                    f"{','.join(MANIFEST_COLUMNS)} (split, group, modality optional)",
                    path,
                )
            reader.fieldnames = columns
            rows = [
                (line, {k: (v or "").strip() for k, v in row.items() if k is not None})
                for line, row in enumerate(reader, start=2)
            ]
    except UnicodeDecodeError:
        raise InputError("not a UTF-8 text CSV file", path) from None
    except OSError as error:
        raise InputError(f"cannot be read ({error.strerror})", path) from None
    except csv.Error as error:
        raise InputError(f"malformed CSV ({error})", path) from None
    nul = next((line for line, row in rows if "\x00" in row["path"]), None)
    if nul is not None:
        raise InputError("path holds a NUL character", f"{path}:{nul}")
    return rows


def _manifest_label(text: str, where: str) -> str | None:
    """A label cell: an integer, a class name, or empty for unlabelled data."""
    if text == "":
        return None
    try:
        number = float(text)
    except ValueError:
        return text
    if not number.is_integer() or not 0 <= number < MAX_CLASSES:
        raise InputError(f"label {text!r} is neither a class index (0 .. {MAX_CLASSES - 1}) "
                         "nor a name", where)
    return str(int(number))


def _files_below(root: Path) -> list[Path]:
    """Every file below ``root``, sorted; hidden files, JSON sidecars (BIDS, our
    ``provenance.json``) and DICOMDIR indexes are not images and are passed over."""
    return sorted(
        p for p in root.rglob("*")
        if p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
        and p.suffix.lower() != ".json"
        and p.name.upper() != "DICOMDIR"
    )


def _glob_root(pattern: str) -> Path:
    """The folder part of a glob pattern before its first wildcard."""
    parts = Path(pattern).parts
    fixed = [p for p in parts[: next(i for i, p in enumerate(parts) if glob.has_magic(p))]]
    return Path(*fixed) if fixed else Path(".")

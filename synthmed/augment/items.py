"""What every format reader shares: the read options, one read item, and turning items into an
:class:`~synthmed.augment.dataset.ImageSet` (resize / pad, channel handling, label indices).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
from monai.transforms import Resize, ResizeWithPadOrCrop

from synthmed.augment.dataset import ImageSet
from synthmed.augment.intensity import DEFAULT_PERCENTILES, parse_window
from synthmed.errors import InputError

T = TypeVar("T")
ResizeMode = Literal["resize", "pad", "fit"]
# Numeric labels name class indices 0 .. label; beyond this a label is an id or a date, not one
MAX_CLASSES = 10_000


@dataclass(frozen=True)
class ReadConfig:
    """How files become model-ready images.

    Args:
        format: ``auto``, ``dicom``, ``nifti``, ``image`` (PNG/JPEG/TIFF), ``npz``, ``csv``.
        size: target height and width; ``None`` keeps the size and refuses mixed sizes.
        resize_mode: ``resize`` (stretch), ``pad`` (pad or crop around the center) or
            ``fit`` (scale the longest side to ``size``, then pad).
        channels: 1 (grayscale), 3 (RGB), or ``None`` to keep and refuse a mix.
        window: CT window preset (``brain``, ``lung``, ``abdomen``, ``bone``) or
            ``CENTER,WIDTH`` in HU; ``None`` uses the file's own window, else percentiles.
        percentiles: low / high percentiles for MR and other non-CT normalisation.
        slice_axis: NIfTI axis to slice 3D volumes along (2 = axial for RAS volumes).
        min_foreground: NIfTI slices whose foreground fraction is not above this are skipped.
        skip_bad: skip unreadable files (listed in ``metadata["skipped"]``) instead of failing.
        root: confine reading to this folder: every file a path, folder, glob or manifest
            names must resolve (symlinks followed) inside it; ``None`` reads anywhere.
    """

    format: str = "auto"
    size: int | None = None
    resize_mode: ResizeMode = "resize"
    channels: int | None = None
    window: str | None = None
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES
    slice_axis: int = 2
    min_foreground: float = 0.01
    skip_bad: bool = False
    root: str | None = None

    def __post_init__(self) -> None:
        if self.channels not in (None, 1, 3):
            raise InputError(f"channels must be 1 or 3, got {self.channels}")
        if self.size is not None and self.size < 1:
            raise InputError(f"size must be positive, got {self.size}")
        if self.slice_axis not in (0, 1, 2):
            raise InputError(f"slice axis must be 0, 1 or 2, got {self.slice_axis}")
        if self.window is not None:
            parse_window(self.window)
        if self.resize_mode not in ("resize", "pad", "fit"):
            raise InputError(f"resize mode must be resize, pad or fit, got {self.resize_mode!r}")
        if self.root is not None and not Path(self.root).is_dir():
            raise InputError("--root must be an existing folder", self.root)

    def require_inside_root(self, path: Path, where: str | None = None) -> None:
        """Refuse ``path`` unless it resolves (symlinks followed) inside :attr:`root`.

        Args:
            where: what the error names when not the path itself, e.g. ``manifest.csv:3``.
        """
        if self.root is None or Path(path).resolve().is_relative_to(Path(self.root).resolve()):
            return
        problem = f"is outside --root {self.root}"
        raise InputError(problem if where is None else f"{str(path)!r} {problem}", where or path)


@dataclass
class Item:
    """One 2D image as a reader produced it, before the set is made uniform.

    Args:
        pixels: float32 ``(C, H, W)`` in ``[-1, 1]``.
        source: file, plus ``#frame=K`` / ``#slice=K`` where one file holds many images.
        group: patient / subject / volume id.
        low, high: original values at -1 and +1 (see :mod:`synthmed.augment.intensity`).
        label: class name, or ``None`` when unlabelled.
        split: ``train`` / ``val`` / ``test`` when the source says so, else ``""``.
    """

    pixels: np.ndarray
    source: str
    group: str
    low: float
    high: float
    label: str | None = None
    split: str = ""
    unit: str = "a.u."
    modality: str = ""


@dataclass
class ReadResult:
    """Items from one reader, with class names in index order when the format defines them."""

    items: list[Item]
    class_names: tuple[str, ...] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val",
    "test": "test", "testing": "test",
}


def split_name(text: str) -> str:
    """Canonical split name: ``Training`` -> ``train``, ``validation`` -> ``val`` ..."""
    return SPLIT_ALIASES.get(text.strip().lower(), text.strip().lower())


def read_each(
    paths: Iterable[Path],
    read_one: Callable[[Path], list[T]],
    config: ReadConfig,
    skipped: list[dict[str, str]],
) -> list[T]:
    """Read every path (``read_one`` gives a list per file, usually of :class:`Item`); with
    ``config.skip_bad`` an unreadable file is noted in ``skipped`` and left out."""
    items: list[T] = []
    for path in paths:
        try:
            items.extend(read_one(path))
        except InputError as error:
            if not config.skip_bad:
                raise
            skipped.append({"path": str(path), "problem": error.problem})
    return items


def assemble(result: ReadResult, config: ReadConfig, origin: str) -> ImageSet:
    """Make the items uniform (size, channels), index their labels, and build the ImageSet.

    Raises:
        InputError: no items, items of mixed sizes or channels, or only constant images.
    """
    items = result.items
    if not items:
        raise InputError("no images found", origin)
    pixels = [_conform_channels(_conform_size(item, config), item, config) for item in items]
    _require_uniform(pixels, items)
    _require_contrast(pixels, origin)
    class_names, labels = _label_indices(items, result.class_names, origin)
    units = sorted({item.unit for item in items})
    modalities = sorted({item.modality for item in items} - {""})
    return ImageSet.from_arrays(
        np.stack(pixels),
        labels=labels,
        class_names=class_names,
        groups=[item.group for item in items],
        sources=[item.source for item in items],
        splits=[item.split for item in items],
        intensity_range=(
            np.array([item.low for item in items]),
            np.array([item.high for item in items]),
        ),
        unit="+".join(units),
        modality="+".join(modalities),
        metadata={"origin": origin, **result.metadata},
    )


def _conform_size(item: Item, config: ReadConfig) -> np.ndarray:
    if config.size is None or item.pixels.shape[1:] == (config.size, config.size):
        return item.pixels
    size = (config.size, config.size)
    if config.resize_mode == "resize":
        out = Resize(size, mode="bilinear", anti_aliasing=True)(item.pixels)
    elif config.resize_mode == "pad":
        out = ResizeWithPadOrCrop(size, mode="constant", value=-1.0)(item.pixels)
    else:
        scaled = Resize(config.size, size_mode="longest", mode="bilinear", anti_aliasing=True)(
            item.pixels
        )
        out = ResizeWithPadOrCrop(size, mode="constant", value=-1.0)(scaled)
    return np.clip(np.asarray(out, dtype=np.float32), -1.0, 1.0)


def _conform_channels(pixels: np.ndarray, item: Item, config: ReadConfig) -> np.ndarray:
    channels = pixels.shape[0]
    if config.channels is None or channels == config.channels:
        return pixels
    if config.channels == 3 and channels == 1:
        return np.repeat(pixels, 3, axis=0)
    if config.channels == 1 and channels == 3:
        luminance = np.array([0.299, 0.587, 0.114], np.float32)[:, None, None]
        return (pixels * luminance).sum(axis=0, keepdims=True)
    raise InputError(f"cannot convert {channels} channels to {config.channels}", item.source)


def _require_uniform(pixels: Sequence[np.ndarray], items: Sequence[Item]) -> None:
    first = pixels[0].shape
    for image, item in zip(pixels, items, strict=True):
        if image.shape[0] != first[0]:
            raise InputError(
                f"has {image.shape[0]} channel(s), {items[0].source} has {first[0]}: "
                "pass --channels 1 or --channels 3",
                item.source,
            )
        if image.shape != first:
            raise InputError(
                f"is {image.shape[1]}x{image.shape[2]}, {items[0].source} is "
                f"{first[1]}x{first[2]}: pass --size to resize all images to one size",
                item.source,
            )


def _require_contrast(pixels: Sequence[np.ndarray], origin: str) -> None:
    """Refuse a set whose every image is constant: it teaches a model nothing. (One constant
    image among others is kept, like a blank slice in a DICOM series.)"""
    if any(image.min() < image.max() for image in pixels):
        return
    what = "the image is" if len(pixels) == 1 else f"all {len(pixels)} images are"
    raise InputError(f"{what} constant (one value in each, after intensity mapping): a "
                     "constant image teaches nothing", origin)


def _label_indices(
    items: Sequence[Item], class_names: tuple[str, ...] | None, origin: str
) -> tuple[tuple[str, ...], list[int]]:
    names = [item.label for item in items]
    if all(name is None for name in names):
        return class_names or (), [-1] * len(items)
    missing = next((item for item in items if item.label is None), None)
    if missing is not None:
        raise InputError("has no label while other images do", missing.source)
    if class_names is None:
        unique = set(names)
        numeric = {name for name in unique if name.isdecimal()}
        if numeric and numeric != unique:
            example = next(item for item in items if item.label not in numeric)
            raise InputError(
                f"label {example.label!r} is a name while other labels are class indices "
                f"({sorted(numeric)[0]!r}): use one or the other",
                example.source,
            )
        if numeric:
            top = max(numeric, key=int)
            if int(top) >= MAX_CLASSES:
                example = next(item for item in items if item.label == top)
                raise InputError(f"label {top} is not a class index (0 .. {MAX_CLASSES - 1}): "
                                 "number the classes from 0 or name them", example.source)
            class_names = tuple(str(k) for k in range(int(top) + 1))
        else:
            class_names = tuple(sorted(unique))
    repeated = [name for name, count in Counter(class_names).items() if count > 1]
    if repeated:
        raise InputError(f"class name {repeated[0]!r} names more than one class index", origin)
    index = {name: k for k, name in enumerate(class_names)}
    for item in items:
        if item.label not in index:
            raise InputError(
                f"label {item.label!r} is not one of the classes {list(class_names)}", item.source
            )
    return class_names, [index[name] for name in names]

"""PNG / JPEG / TIFF / BMP pictures, 8- or 16-bit, grayscale or RGB: read and write.

8-bit pictures map 0..255 to [-1, 1]. 16-bit and float pictures share one mapping for the
whole set, from its minimum to its maximum, so relative intensities between images survive.
An RGB picture whose three channels are equal is read as grayscale.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from synthmed.augment.dataset import ImageSet
from synthmed.augment.intensity import require_finite, to_model_space, to_uint8, widened
from synthmed.augment.items import Item, ReadConfig, ReadResult, read_each, split_name
from synthmed.errors import InputError

SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def read_picture(path: Path) -> np.ndarray:
    """Pixels of one picture as ``(C, H, W)`` in the file's own dtype (uint8, uint16, float32)."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                pixels = np.asarray(image).astype(np.uint16 if image.mode != "I" else np.int32)
            elif image.mode == "F":
                pixels = np.asarray(image, dtype=np.float32)
            elif image.mode in ("L", "RGB"):
                pixels = np.asarray(image)
            elif image.mode in ("1", "LA", "P") and "transparency" not in image.info:
                pixels = np.asarray(image.convert("L" if image.mode != "P" else "RGB"))
            else:
                pixels = np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError,
            ValueError) as error:
        raise InputError(f"not a readable picture ({error})", path) from None
    if pixels.ndim == 3:
        pixels = np.moveaxis(pixels, -1, 0)
        if (pixels[1:] == pixels[:1]).all():
            pixels = pixels[:1]
    else:
        pixels = pixels[None]
    if pixels.dtype == np.int32:
        pixels = pixels.astype(np.uint16) if pixels.min() >= 0 and pixels.max() < 65536 else (
            pixels.astype(np.float32)
        )
    require_finite(pixels, path)
    return pixels


def read_picture_folder(
    paths: list[Path], root: Path, config: ReadConfig, skipped: list[dict[str, str]]
) -> ReadResult:
    """Pictures below ``root`` in the ImageFolder layout ``[split/]class/picture``."""
    raw = read_each(paths, lambda path: [(path, read_picture(path))], config, skipped)
    wide = [pixels for _, pixels in raw if pixels.dtype != np.uint8]
    low, high = (
        (float(min(p.min() for p in wide)), float(max(p.max() for p in wide))) if wide else (0, 1)
    )
    low, high = widened(low, high)
    items = []
    for path, pixels in raw:
        item_low, item_high = (0.0, 255.0) if pixels.dtype == np.uint8 else (low, high)
        label, split = _label_and_split(path, root)
        items.append(Item(
            pixels=to_model_space(pixels, item_low, item_high),
            source=str(path),
            group=str(path.relative_to(root).with_suffix("")) if path != root else path.stem,
            low=item_low,
            high=item_high,
            label=label,
            split=split,
            unit="uint8" if pixels.dtype == np.uint8 else "a.u.",
        ))
    bit_depths = sorted({8 if p.dtype == np.uint8 else 16 for _, p in raw})
    return ReadResult(items, metadata={"reader": "pictures", "bit_depths": bit_depths})


def _label_and_split(path: Path, root: Path) -> tuple[str | None, str]:
    """Class and split from the folders between ``root`` and the file."""
    folders = path.relative_to(root).parts[:-1] if path.is_relative_to(root) else ()
    split = ""
    if folders and split_name(folders[0]) in ("train", "val", "test"):
        split, folders = split_name(folders[0]), folders[1:]
    return (folders[0] if folders else None), split


def write_pictures(
    imageset: ImageSet, out_dir: Path, names: list[str], bit_depth: int = 8
) -> None:
    """Write item ``i`` to ``out_dir / names[i]`` (PNG, or the suffix's format).

    8-bit pictures hold the model-space view scaled to 0..255. 16-bit pictures hold the
    original values (``ImageSet.to_original_units``), which must lie in 0..65535.
    """
    if bit_depth not in (8, 16):
        raise InputError(f"bit depth must be 8 or 16, got {bit_depth}")
    if bit_depth == 16 and imageset.channels != 1:
        raise InputError("16-bit pictures must be grayscale; write 8-bit for RGB")
    for index, name in enumerate(names):
        if bit_depth == 8:
            pixels = to_uint8(imageset.images[index])
        else:
            pixels = _uint16_original(imageset, index)
        path = out_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        array = pixels[0] if pixels.shape[0] == 1 else np.moveaxis(pixels, 0, -1)
        Image.fromarray(array).save(path)


def _uint16_original(imageset: ImageSet, index: int) -> np.ndarray:
    values = np.rint(imageset.to_original_units([index])[0])
    if values.min() < 0 or values.max() > 65535:
        raise InputError(
            f"original values span {values.min():.0f}..{values.max():.0f} {imageset.unit}, "
            "outside 16-bit PNG's 0..65535: write DICOM or NIfTI instead",
            imageset.sources[index],
        )
    return values.astype(np.uint16)

"""PNG / JPEG / TIFF / BMP pictures, 8- or 16-bit, grayscale or RGB: read and write.

8-bit pictures map 0..255 to [-1, 1]. 16-bit and float pictures share one mapping for the
whole set, from its minimum to its maximum, so relative intensities between images survive.
An RGB picture whose three channels are equal is read as grayscale. 16-bit colour PNGs (RGB,
RGBA, gray + alpha) keep their 16 bits, although Pillow reads them as 8-bit. An alpha channel
(or palette transparency) is dropped when every pixel is opaque; a picture with any
transparent pixel is refused, since what lies under it is undefined.
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
ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")
# Pillow decodes 16-bit colour PNGs to 8 bits, keeping the high byte of each sample. Decoding
# the same data with these raw modes instead gives the high and then the low bytes (gray +
# alpha, 4 bytes a pixel, decodes whole as 8-bit RGBA); the PNG filters are undone right, as
# the bytes per pixel stay those of the file.
PNG16_RAWMODES = {
    "RGB;16B": ("RGB;16B", "RGB;16L"),
    "RGBA;16B": ("RGBA;16B", "RGBA;16L"),
    "LA;16B": ("RGBA",),
}


def read_picture(path: Path) -> np.ndarray:
    """Pixels of one picture as ``(C, H, W)`` in the file's own dtype (uint8, uint16, float32).

    Raises:
        InputError: an unreadable picture, NaN / inf pixels, or a transparent pixel.
    """
    try:
        with Image.open(path) as image:
            rawmode = image.tile[0][3] if image.format == "PNG" and image.tile else None
            image.load()
            alpha = image.mode in ALPHA_MODES or (image.mode == "P"
                                                  and "transparency" in image.info)
            if rawmode in PNG16_RAWMODES:
                pixels = _png16_samples(path, PNG16_RAWMODES[rawmode])
            elif image.mode in ("I;16", "I;16B", "I;16L", "I"):
                pixels = np.asarray(image).astype(np.uint16 if image.mode != "I" else np.int32)
            elif image.mode == "F":
                pixels = np.asarray(image, dtype=np.float32)
            elif image.mode in ("L", "RGB"):
                pixels = np.asarray(image)
            elif alpha:
                pixels = np.asarray(image.convert("RGBA"))
            else:
                pixels = np.asarray(image.convert("L" if image.mode == "1" else "RGB"))
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError,
            ValueError) as error:
        raise InputError(f"not a readable picture ({error})", path) from None
    if alpha:
        pixels = _opaque(pixels, path)
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


def _png16_samples(path: Path, rawmodes: tuple[str, ...]) -> np.ndarray:
    """``(H, W, C)`` uint16 samples of a 16-bit colour PNG, decoded with ``rawmodes`` (see
    :data:`PNG16_RAWMODES`)."""
    decoded = []
    for rawmode in rawmodes:
        with Image.open(path) as image:
            codec, extents, offset, _ = image.tile[0]
            image.tile = [(codec, extents, offset, rawmode)]
            image.load()
            decoded.append(np.asarray(image))
    if len(decoded) == 1:  # (H, W, 4) bytes: gray high, low, alpha high, low
        data = decoded[0].reshape(*decoded[0].shape[:2], 2, 2)
    else:
        data = np.stack(decoded, axis=-1)  # (H, W, C, 2): high and low byte of each sample
    return data.view(">u2")[..., 0].astype(np.uint16)


def _opaque(pixels: np.ndarray, path: Path) -> np.ndarray:
    """``pixels`` ``(H, W, C)`` without their last channel, alpha, when it is all opaque."""
    alpha = pixels[..., -1]
    if (alpha < np.iinfo(pixels.dtype).max).any():
        share = (alpha < np.iinfo(pixels.dtype).max).mean()
        raise InputError(f"{share:.1%} of its pixels are transparent (alpha below opaque): "
                         "flatten it onto a background first", path)
    return pixels[..., :-1]


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
            pixels = imageset.to_uint16([index], format="PNG")[0]
        path = out_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        array = pixels[0] if pixels.shape[0] == 1 else np.moveaxis(pixels, 0, -1)
        Image.fromarray(array).save(path)


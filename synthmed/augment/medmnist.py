"""MedMNIST-style ``.npz`` files: ``{train,val,test}_images`` and ``{train,val,test}_labels``.

Images are ``(N, H, W)`` or ``(N, H, W, 3)`` uint8 (MedMNIST's convention; our 16-bit exports
write uint16 original units, and any integer or float type is read); labels ``(N, 1)`` are
flattened. The file's splits are kept. Class names come from the official MedMNIST label
tables when the file name is a known MedMNIST set, or from a ``class_names`` array (our
exports write one).
"""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from synthmed.augment.dataset import ImageSet
from synthmed.augment.intensity import require_finite, to_model_space, to_uint8, widened
from synthmed.augment.items import Item, ReadResult
from synthmed.errors import InputError

SPLITS = ("train", "val", "test")

# Label tables of the 2D MedMNIST v2 sets with single-label classification.
KNOWN_CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "breastmnist": ("malignant", "normal, benign"),
    "pneumoniamnist": ("normal", "pneumonia"),
    "retinamnist": ("0", "1", "2", "3", "4"),
    "octmnist": ("choroidal neovascularization", "diabetic macular edema", "drusen", "normal"),
    "bloodmnist": (
        "basophil", "eosinophil", "erythroblast",
        "immature granulocytes(myelocytes, metamyelocytes and promyelocytes)",
        "lymphocyte", "monocyte", "neutrophil", "platelet",
    ),
    "dermamnist": (
        "actinic keratoses and intraepithelial carcinoma", "basal cell carcinoma",
        "benign keratosis-like lesions", "dermatofibroma", "melanoma", "melanocytic nevi",
        "vascular lesions",
    ),
}


def read_npz(path: Path) -> ReadResult:
    """Every split of a MedMNIST-style npz as items (group = one per image)."""
    arrays = _load(path)
    present = [s for s in SPLITS if f"{s}_images" in arrays]
    if not present:
        raise InputError(
            f"no train_images / val_images / test_images arrays (has: {', '.join(arrays)})", path
        )
    orphan = next((s for s in SPLITS if f"{s}_labels" in arrays and s not in present), None)
    if orphan:
        raise InputError(f"has {orphan}_labels but no {orphan}_images", path)
    class_names = _class_names(path, arrays)
    images = {split: _images(path, arrays, split) for split in present}
    # uint8 maps 0..255; wider types share one mapping, from their minimum to their maximum
    wide = [a for a in images.values() if a.dtype != np.uint8 and a.size]
    low, high = (0.0, 1.0)
    if wide:
        low, high = widened(float(min(a.min() for a in wide)), float(max(a.max() for a in wide)))
    items: list[Item] = []
    for split in present:
        labels = _labels(path, arrays, split, len(images[split]))
        item_low, item_high = (0.0, 255.0) if images[split].dtype == np.uint8 else (low, high)
        for index, image in enumerate(images[split]):
            items.append(Item(
                pixels=to_model_space(image, item_low, item_high),
                source=f"{path}#{split}={index}",
                group=f"{path.stem}:{split}:{index}",
                low=item_low,
                high=item_high,
                label=None if labels is None else _label_name(labels[index], class_names, path),
                split=split,
                unit="uint8" if image.dtype == np.uint8 else "a.u.",
            ))
    return ReadResult(items, class_names, metadata={"reader": "npz", "file": str(path)})


def write_npz(imageset: ImageSet, path: Path, bit_depth: int = 8) -> None:
    """Write ``imageset`` in the MedMNIST layout (labels ``(N, 1)``, plus ``class_names``).

    Items without a split go to ``train``. Pixels as :func:`npz_pixels` makes them: with
    ``bit_depth`` 8, MedMNIST code reads the result unchanged.
    """
    pixels = npz_pixels(imageset, bit_depth)
    splits = np.where(imageset.splits == "", "train", imageset.splits)
    arrays: dict[str, np.ndarray] = {"class_names": np.asarray(imageset.class_names, dtype=str)}
    for split in SPLITS:
        chosen = splits == split
        if chosen.any() or split == "train":
            arrays[f"{split}_images"] = pixels[chosen]
            arrays[f"{split}_labels"] = imageset.labels[chosen].reshape(-1, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        np.savez_compressed(handle, **arrays)


def npz_pixels(imageset: ImageSet, bit_depth: int = 8) -> np.ndarray:
    """The images in the MedMNIST layout ``(N, H, W)`` or ``(N, H, W, 3)``: uint8 model-space
    view (bit depth 8), or uint16 original units (16, as a 16-bit PNG holds them)."""
    if bit_depth == 8:
        return medmnist_pixels(imageset.images)
    if bit_depth == 16:
        return _layout(imageset.to_uint16(format="npz"))
    raise InputError(f"bit depth must be 8 or 16, got {bit_depth}")


def medmnist_pixels(images: np.ndarray) -> np.ndarray:
    """``(N, C, H, W)`` in [-1, 1] -> MedMNIST layout uint8 ``(N, H, W)`` or ``(N, H, W, 3)``."""
    return _layout(to_uint8(images))


def _layout(pixels: np.ndarray) -> np.ndarray:
    """``(N, C, H, W)`` -> ``(N, H, W)`` (one channel) or ``(N, H, W, C)``."""
    return pixels[:, 0] if pixels.shape[1] == 1 else np.moveaxis(pixels, 1, -1)


def _load(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    # NotImplementedError, RuntimeError: zip features numpy cannot read (e.g. encryption);
    # MemoryError: an array header claiming more than fits in memory
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, zlib.error, NotImplementedError,
            RuntimeError, MemoryError) as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        raise InputError(f"not a readable npz archive ({reason})", path) from None


def _images(path: Path, arrays: dict[str, np.ndarray], split: str) -> np.ndarray:
    """``(N, C, H, W)`` in the file's dtype."""
    images = arrays[f"{split}_images"]
    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim == 4 and images.shape[-1] in (1, 3):
        images = np.moveaxis(images, -1, 1)
    else:
        raise InputError(
            f"{split}_images has shape {images.shape}; expected (N, H, W) or (N, H, W, 3)", path
        )
    if 0 in images.shape[2:]:
        raise InputError(f"{split}_images has shape {arrays[f'{split}_images'].shape}: its "
                         "images have no pixels", path)
    if images.dtype.kind not in "uif":
        raise InputError(f"{split}_images has dtype {images.dtype}, not numbers", path)
    require_finite(images, path)
    return images


def _labels(path: Path, arrays: dict[str, np.ndarray], split: str, n: int) -> np.ndarray | None:
    key = f"{split}_labels"
    if key not in arrays:
        if any(k.endswith("_labels") for k in arrays):
            raise InputError(f"has {split}_images but no {key}", path)
        return None
    labels = arrays[key]
    if labels.ndim == 2 and labels.shape[1] > 1:
        raise InputError(f"{key} has {labels.shape[1]} columns: multi-label sets are not "
                         "supported, one class per image is", path)
    labels = labels.reshape(-1)
    if len(labels) != n:
        raise InputError(f"{key} has {len(labels)} labels for {n} images", path)
    if labels.dtype.kind == "f" and not np.all(np.mod(labels, 1) == 0):
        raise InputError(f"{key} holds non-integer labels", path)
    if labels.dtype.kind not in "uif" or (len(labels) and labels.min() < 0):
        raise InputError(f"{key} must hold class indices 0, 1, ...", path)
    return labels.astype(np.int64)


def _class_names(path: Path, arrays: dict[str, np.ndarray]) -> tuple[str, ...] | None:
    if "class_names" in arrays:
        names = arrays["class_names"]
        if names.ndim != 1:
            raise InputError(f"class_names has shape {names.shape}; expected a list of names",
                             path)
        return tuple(str(name) for name in names)
    return KNOWN_CLASS_NAMES.get(path.stem.lower().split("_")[0])


def _label_name(label: int, class_names: tuple[str, ...] | None, path: Path) -> str:
    if class_names is None:
        return str(label)
    if label >= len(class_names):
        raise InputError(f"label {label} has no class name (classes: {list(class_names)})", path)
    return class_names[label]


def write_npz_blocks(
    path: Path,
    blocks: Iterable[np.ndarray],
    image_shape: tuple[int, ...],
    labels: np.ndarray,
    class_names: Sequence[str],
    dtype: np.dtype | type = np.uint8,
) -> None:
    """Stream image blocks ``(b, H, W[, 3])`` of ``dtype`` (uint8, or uint16 for 16-bit:
    see :func:`npz_pixels`) into a MedMNIST-layout npz.

    Memory stays at one block however many images there are; entries carry a fixed date so
    the same images give the same bytes.
    """
    n = len(labels)
    dtype = np.dtype(dtype)
    with zipfile.ZipFile(path, "w", allowZip64=True) as archive:
        with archive.open(_entry("train_images.npy"), "w", force_zip64=True) as handle:
            header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                      "shape": (n, *image_shape)}
            np.lib.format.write_array_header_1_0(handle, header)
            for block in blocks:
                handle.write(np.ascontiguousarray(block, dtype=dtype).tobytes())
        arrays = {"train_labels": np.asarray(labels, np.int64).reshape(-1, 1),
                  "class_names": np.asarray(class_names, dtype=str)}
        for name, array in arrays.items():
            with archive.open(_entry(f"{name}.npy"), "w") as handle:
                np.lib.format.write_array(handle, array)


def _entry(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    return info

"""NIfTI volumes in and out (nibabel).

Reading cuts every volume into 2D slices along ``ReadConfig.slice_axis`` and normalises each
volume on its own: ``low`` / ``high`` are percentiles of its foreground (see
:mod:`synthmed.augment.intensity`). Slices whose foreground fraction is not above
``ReadConfig.min_foreground`` are skipped (the empty slices above and below a brain). A
constant volume (every voxel the same value) is refused: it teaches nothing.

Orientation follows the voxel axes; the affine is not applied, since the headers of public
data sets are not always right (of the three BraTS-derived subjects in the shared test data,
two claim LPS and one RAS, yet all three store the head the same way). A slice with voxel axes
``(A, B)`` (``(X, Y)`` for the default axial cut) is displayed with ``+B`` up and ``+A`` on the
left: ``image = plane[::-1, ::-1].T``. For an RAS volume that is the radiology display:
anterior up and the patient's right on the image's left (superior up for sagittal and coronal
cuts). The map is its own inverse, and :func:`write_nifti` uses it to store an image, so a
written image reads back as the same picture.
"""

from __future__ import annotations

import zlib
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from synthmed.augment.dataset import ImageSet
from synthmed.augment.intensity import (
    foreground_mask,
    masked_to_model_space,
    percentile_range,
    require_finite,
)
from synthmed.augment.items import Item, ReadConfig, ReadResult, read_each
from synthmed.errors import InputError

SUFFIXES = (".nii.gz", ".nii")
SLICE_MARK = "#slice="  # a slice's source: the volume's path, the mark, the slice index


def slice_index(source: str) -> int | None:
    """The slice index ``k`` of a source ``"{path}#slice={k}"``; ``None`` for other sources."""
    path, mark, index = source.rpartition(SLICE_MARK)
    return int(index) if mark and index.isdigit() else None


def read_nifti(paths: list[Path], config: ReadConfig, skipped: list[dict[str, str]]) -> ReadResult:
    """Read NIfTI files as 2D slices, ``(1, H, W)`` items in ``[-1, 1]``.

    Args:
        paths: ``.nii`` / ``.nii.gz`` files of 3D volumes (a 2D image is one slice; extra
            dimensions of size 1 are dropped).
        config: ``slice_axis``, ``percentiles``, ``min_foreground`` and ``skip_bad`` apply.
        skipped: unreadable files are appended here when ``config.skip_bad`` is set.

    Returns:
        Unlabelled items with sources ``"{path}#slice={k}"`` and, as group, the file's name
        without its suffix, or its folder's name when several files share one name
        (``<subject>/t1.nii.gz``).

    Raises:
        InputError: a file that is not NIfTI, is damaged, 4D or more, holds NaN / inf, or is
            constant.
    """
    names = Counter(path.name for path in paths)
    groups = {path: path.parent.name if names[path.name] > 1 else _stem(path) for path in paths}
    items = read_each(paths, lambda path: _read_slices(path, groups[path], config), config, skipped)
    return ReadResult(items, metadata={"reader": "nifti"})


def display_plane(plane: np.ndarray) -> np.ndarray:
    """Voxel plane ``(A, B)`` <-> display image ``(B, A)``: ``+B`` up, ``+A`` left.

    Both axes reversed, then transposed; the map is its own inverse.
    """
    return np.ascontiguousarray(plane[::-1, ::-1].T)


def write_nifti(imageset: ImageSet, out_dir: Path, names: list[str]) -> None:
    """Write item ``i`` to ``out_dir / names[i]`` as a one-slice NIfTI volume.

    The volume is ``(X, Y, 1)`` float32 in the set's original units, with an identity affine
    (1 mm voxels) and the slice laid out as :func:`read_nifti` expects, so reading it back gives
    the same picture. Only one-channel images: NIfTI has no usual layout for RGB slices.

    Args:
        imageset: images ``(N, 1, H, W)``.
        out_dir: folder to write into.
        names: ``N`` relative paths such as ``lesion/00001.nii.gz``; folders are created.
    """
    if imageset.channels != 1:
        raise InputError(
            f"NIfTI export needs one-channel images, these have {imageset.channels}: "
            "read them with --channels 1"
        )
    if len(names) != len(imageset):
        raise ValueError(f"{len(names)} names for {len(imageset)} images")
    for index, name in enumerate(names):
        path = Path(out_dir) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        image = imageset.to_original_units([index])[0, 0]  # (H, W)
        volume = display_plane(image)[:, :, None].astype(np.float32)  # (X, Y, 1)
        nifti = nib.Nifti1Image(volume, np.eye(4))
        nifti.header.set_xyzt_units("mm")
        nib.save(nifti, path)


def _read_slices(path: Path, group: str, config: ReadConfig) -> list[Item]:
    """The slices of one volume with enough foreground, normalised by the whole volume."""
    volume = load_volume(path)
    require_finite(volume, path)
    if volume.min() == volume.max():
        raise InputError(f"every voxel is {volume.flat[0]:g}: a constant image teaches nothing",
                         path)
    axis = config.slice_axis
    if volume.ndim == 2:
        volume, axis = volume[:, :, None], 2
    mask = foreground_mask(volume)
    low, high = percentile_range(volume, mask, config.percentiles)
    planes, masks = np.moveaxis(volume, axis, 0), np.moveaxis(mask, axis, 0)  # (slices, A, B)
    fraction = masks.mean(axis=(1, 2))
    return [
        Item(
            pixels=masked_to_model_space(display_plane(planes[k]), display_plane(masks[k]),
                                         low, high)[None],
            source=f"{path}{SLICE_MARK}{k}",
            group=group,
            low=low,
            high=high,
        )
        for k in np.flatnonzero(fraction > config.min_foreground)
    ]


def load_volume(path: Path) -> np.ndarray:
    """The voxels of one file as float32 (scaling applied), 2D or 3D."""
    try:
        image = nib.load(path)
    except (ImageFileError, HeaderDataError, OSError, EOFError, ValueError, zlib.error):
        raise InputError("not a NIfTI file, or its header is damaged", path) from None
    if image.get_data_dtype().kind not in "iuf":
        raise InputError(f"voxels of type {image.get_data_dtype()} are not supported: only "
                         "numbers (not RGB or complex)", path)
    shape = image.shape
    if len(shape) > 3 and np.prod(shape[3:]) == 1:
        shape = shape[:3]
    if not 2 <= len(shape) <= 3:
        raise InputError(
            f"is {len(image.shape)}D ({'x'.join(map(str, image.shape))}): only 2D images and "
            "3D volumes can be cut into slices (split a 4D series into 3D volumes first)",
            path,
        )
    if 0 in shape:
        raise InputError(f"has no voxels ({'x'.join(map(str, image.shape))})", path)
    try:
        return image.get_fdata(dtype=np.float32).reshape(shape)
    # OverflowError: negative sizes or offsets; MemoryError: more voxels than fit in memory
    except (OSError, EOFError, ValueError, OverflowError, MemoryError, zlib.error):
        raise InputError("truncated or damaged file: its voxels cannot be read", path) from None


def _stem(path: Path) -> str:
    """The file name without ``.nii`` / ``.nii.gz``."""
    name = path.name
    suffix = next((s for s in SUFFIXES if name.lower().endswith(s)), "")
    return name[: len(name) - len(suffix)]

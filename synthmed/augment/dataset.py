"""ImageSet: the one currency between readers, models, exporters and metrics.

Images are float32 ``(N, C, H, W)`` in ``[-1, 1]``. Every item also carries a label
(``-1`` when unlabelled), a group id (patient / subject / volume, for patient-level splits),
a source id (file and frame or slice), a split name (``""`` when none is known), a
``synthetic`` flag, and the linear intensity mapping back to its original units.

The mapping of item ``i`` is ``original = low[i] + (x + 1) / 2 * (high[i] - low[i])``;
``low > high`` encodes an inverted display (DICOM MONOCHROME1).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from synthmed.errors import InputError


@dataclass(frozen=True, eq=False)
class ImageSet:
    """A labelled set of 2D images with provenance.

    Args:
        images: float32 ``(N, C, H, W)`` in ``[-1, 1]``.
        labels: int64 ``(N,)``; ``-1`` marks an unlabelled item.
        class_names: name of each class index.
        groups: ``(N,)`` str, patient / subject / volume id.
        sources: ``(N,)`` str, where each item came from (``path``, ``path#frame=3``, ...).
        splits: ``(N,)`` str, ``"train"``, ``"val"``, ``"test"`` or ``""``.
        synthetic: ``(N,)`` bool.
        intensity_low, intensity_high: ``(N,)`` float64, original values at ``-1`` and ``+1``.
        unit: unit of the original values (``"HU"``, ``"a.u."``, ``"uint8"`` ...).
        modality: ``"CT"``, ``"MR"``, ``"US"``, ... or ``""``.
        metadata: free-form facts about the source (reader, bit depth, skipped files ...).

    Examples:
        >>> s = ImageSet.from_arrays(np.zeros((4, 1, 8, 8), np.float32), labels=[0, 1, 0, 1])
        >>> s.images.shape, s.class_counts()
        ((4, 1, 8, 8), {0: 2, 1: 2})
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    groups: np.ndarray
    sources: np.ndarray
    splits: np.ndarray
    synthetic: np.ndarray
    intensity_low: np.ndarray
    intensity_high: np.ndarray
    unit: str = "a.u."
    modality: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {self.images.shape}")
        for name in ("labels", "groups", "sources", "splits", "synthetic",
                     "intensity_low", "intensity_high"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} items, images have {n}")

    @classmethod
    def from_arrays(
        cls,
        images: np.ndarray,
        labels: Sequence[int] | np.ndarray | None = None,
        class_names: Sequence[str] | None = None,
        groups: Sequence[str] | None = None,
        sources: Sequence[str] | None = None,
        splits: Sequence[str] | None = None,
        synthetic: bool | Sequence[bool] = False,
        intensity_range: tuple[float, float] | tuple[np.ndarray, np.ndarray] = (-1.0, 1.0),
        unit: str = "a.u.",
        modality: str = "",
        metadata: dict[str, Any] | None = None,
    ) -> ImageSet:
        """Build an ImageSet with defaults for every per-item field not given."""
        images = np.ascontiguousarray(images, dtype=np.float32)
        n = len(images)
        labels_arr = np.full(n, -1, np.int64) if labels is None else np.asarray(labels, np.int64)
        if class_names is None:
            n_classes = int(labels_arr.max()) + 1 if n and labels_arr.max() >= 0 else 0
            class_names = [str(k) for k in range(n_classes)]
        low, high = intensity_range
        return cls(
            images=images,
            labels=labels_arr.reshape(-1),
            class_names=tuple(class_names),
            groups=_str_array(groups, n, lambda i: f"item-{i}"),
            sources=_str_array(sources, n, lambda i: f"array#{i}"),
            splits=_str_array(splits, n, lambda i: ""),
            synthetic=np.broadcast_to(np.asarray(synthetic, bool), (n,)).copy(),
            intensity_low=np.broadcast_to(np.asarray(low, np.float64), (n,)).copy(),
            intensity_high=np.broadcast_to(np.asarray(high, np.float64), (n,)).copy(),
            unit=unit,
            modality=modality,
            metadata=dict(metadata or {}),
        )

    # -- shape and bookkeeping ---------------------------------------------------------

    def __len__(self) -> int:
        return len(self.images)

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)``."""
        return int(self.images.shape[2]), int(self.images.shape[3])

    @property
    def is_labelled(self) -> bool:
        return bool(len(self)) and bool((self.labels >= 0).all())

    def class_counts(self) -> dict[int, int]:
        """Items per class index, unlabelled items left out."""
        values, counts = np.unique(self.labels[self.labels >= 0], return_counts=True)
        return {int(v): int(c) for v, c in zip(values, counts, strict=True)}

    def split_names(self) -> list[str]:
        """Split names present, in train / val / test order, then any others."""
        present = set(self.splits.tolist())
        known = [s for s in ("train", "val", "test", "") if s in present]
        return known + sorted(present - set(known))

    # -- selection and combination ---------------------------------------------------------

    def subset(self, indices: Sequence[int] | np.ndarray) -> ImageSet:
        """The items at ``indices`` (ints or a boolean mask), in that order."""
        idx = np.asarray(indices)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        return replace(
            self,
            images=self.images[idx],
            labels=self.labels[idx],
            groups=self.groups[idx],
            sources=self.sources[idx],
            splits=self.splits[idx],
            synthetic=self.synthetic[idx],
            intensity_low=self.intensity_low[idx],
            intensity_high=self.intensity_high[idx],
            metadata=dict(self.metadata),
        )

    def split(self, name: str) -> ImageSet:
        """The items of one split (``"train"``, ``"val"``, ``"test"``)."""
        return self.subset(self.splits == name)

    def with_splits(self, splits: Sequence[str] | np.ndarray) -> ImageSet:
        """A copy with new split names, e.g. from :func:`synthmed.augment.splits.split_by_group`."""
        return replace(self, splits=_str_array(splits, len(self), lambda i: ""))

    @staticmethod
    def concatenate(sets: Sequence[ImageSet]) -> ImageSet:
        """Join sets with the same image shape and classes (e.g. real + synthetic).

        The per-item ``synthetic`` flags are kept, so the result knows which items are real.
        """
        if not sets:
            raise ValueError("concatenate needs at least one ImageSet")
        first = sets[0]
        for other in sets[1:]:
            if other.images.shape[1:] != first.images.shape[1:]:
                raise InputError(
                    f"cannot join images of shape {other.images.shape[1:]} "
                    f"with {first.images.shape[1:]}"
                )
            if other.class_names != first.class_names:
                raise InputError(
                    f"cannot join class names {list(other.class_names)} "
                    f"with {list(first.class_names)}"
                )

        def cat(name: str) -> np.ndarray:
            return np.concatenate([getattr(s, name) for s in sets])

        return replace(
            first,
            images=cat("images"),
            labels=cat("labels"),
            groups=cat("groups"),
            sources=cat("sources"),
            splits=cat("splits"),
            synthetic=cat("synthetic"),
            intensity_low=cat("intensity_low"),
            intensity_high=cat("intensity_high"),
            metadata=dict(first.metadata),
        )

    # -- intensities --------------------------------------------------------------------

    def to_original_units(self, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Pixels mapped back to their original units, float64 ``(N, C, H, W)``."""
        idx = np.arange(len(self)) if indices is None else np.asarray(indices)
        low = self.intensity_low[idx][:, None, None, None]
        high = self.intensity_high[idx][:, None, None, None]
        return low + (self.images[idx].astype(np.float64) + 1.0) / 2.0 * (high - low)

    def to_uint16(self, indices: Sequence[int] | np.ndarray | None = None, *,
                  format: str) -> np.ndarray:
        """Original units rounded to uint16 ``(N, C, H, W)``, for 16-bit exports.

        Raises:
            InputError: an item whose values leave 0..65535, naming it and ``format``.
        """
        idx = np.arange(len(self)) if indices is None else np.asarray(indices)
        values = np.rint(self.to_original_units(idx))
        outside = (values.min(axis=(1, 2, 3)) < 0) | (values.max(axis=(1, 2, 3)) > 65535)
        if outside.any():
            bad = int(np.argmax(outside))
            raise InputError(
                f"original values span {values[bad].min():.0f}..{values[bad].max():.0f} "
                f"{self.unit}, outside 16-bit {format}'s 0..65535: write DICOM or NIfTI instead",
                self.sources[idx[bad]],
            )
        return values.astype(np.uint16)

    # -- identity -----------------------------------------------------------------------

    def image_hashes(self) -> list[str]:
        """sha256 of each image's float32 pixels and shape: equal images, equal hashes."""
        return [_sha256(image) for image in self.images]

    def fingerprint(self) -> str:
        """sha256 over every image hash and label, in order: a stable id of the content."""
        digest = hashlib.sha256()
        for image_hash, label in zip(self.image_hashes(), self.labels.tolist(), strict=True):
            digest.update(f"{image_hash}:{label};".encode())
        return digest.hexdigest()

    # -- torch --------------------------------------------------------------------------

    def to_torch(self) -> ImageSetDataset:
        """A torch ``Dataset`` of ``(image (C, H, W) float32, label int64)`` pairs."""
        return ImageSetDataset(self)


class ImageSetDataset(Dataset):
    """Torch view of an :class:`ImageSet`; items are ``(image (C, H, W), label)``."""

    def __init__(self, imageset: ImageSet) -> None:
        self.images = torch.from_numpy(imageset.images)
        self.labels = torch.from_numpy(imageset.labels)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]


def _sha256(image: np.ndarray) -> str:
    digest = hashlib.sha256(str(image.shape).encode())
    digest.update(np.ascontiguousarray(image, dtype=np.float32).tobytes())
    return digest.hexdigest()


def _str_array(values: Sequence[str] | np.ndarray | None, n: int, default) -> np.ndarray:
    if values is None:
        values = [default(i) for i in range(n)]
    array = np.asarray([str(v) for v in values], dtype=object)
    if len(array) != n:
        raise ValueError(f"expected {n} values, got {len(array)}")
    return array

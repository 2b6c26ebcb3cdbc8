"""Patient-level splits, duplicate images and group leakage.

Splits never put one group (patient / subject / volume) in two parts and keep the class
ratios of labelled sets (scikit-learn's ``StratifiedGroupKFold``). Unlabelled items all share
the label ``-1``, so for an unlabelled set the same splitter deals shuffled groups into folds
of about equal size, as ``GroupShuffleSplit`` would.

Examples:
    >>> rng = np.random.default_rng(0)
    >>> s = ImageSet.from_arrays(rng.uniform(-1, 1, (40, 1, 8, 8)), labels=[0, 1] * 20)
    >>> s = s.with_splits(split_by_group(s, val_fraction=0.25, test_fraction=0.25))
    >>> [len(s.split(name)) for name in ("train", "val", "test")]
    [20, 10, 10]
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from synthmed.augment.dataset import ImageSet
from synthmed.errors import InputError

SPLIT_ORDER = ("train", "val", "test")


def split_by_group(
    imageset: ImageSet, val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0
) -> np.ndarray:
    """Assign each item to ``"train"``, ``"val"`` or ``"test"``, whole groups at a time.

    The test part is one of ``round(1 / test_fraction)`` stratified group folds of the whole
    set; the val part is one of ``round(len(rest) / (val_fraction * N))`` folds of the rest,
    so each part holds about its fraction of the items: 1/7 = 0.143 for 0.15, more or less
    where groups differ in size since whole groups move. A fraction of 0 leaves that part empty.

    Args:
        imageset: ``N`` items with labels (``-1`` = unlabelled) and group ids.
        val_fraction, test_fraction: wanted shares, each in ``[0, 0.5]``, at most 2/3 together.
        seed: the same seed gives the same split.

    Returns:
        ``(N,)`` array of split names; apply it with ``imageset.with_splits(names)``.

    Raises:
        InputError: an empty set, a fraction out of range, or too few groups for the folds.
    """
    if not len(imageset):
        raise InputError("cannot split an empty image set")
    for name, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= fraction <= 0.5:
            raise InputError(f"{name} must be between 0 and 0.5, got {fraction}")
    if val_fraction + test_fraction > 2 / 3:
        raise InputError(
            f"val_fraction + test_fraction must be at most 2/3, got {val_fraction + test_fraction}"
        )
    names = np.full(len(imageset), "train", dtype=object)
    rest = np.arange(len(imageset))
    for name, fraction in (("test", test_fraction), ("val", val_fraction)):
        if fraction == 0:
            continue
        k = round(len(rest) / (fraction * len(imageset)))
        _, held = _folds(imageset, rest, k, seed)[0]
        names[held] = name
        rest = np.setdiff1d(rest, held)
    return names


def group_kfold(
    imageset: ImageSet, k: int = 5, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` patient-level folds, stratified by label: ``(train_idx, test_idx)`` per fold.

    Every item is in exactly one ``test_idx``; no group is in both parts of a fold.
    """
    return _folds(imageset, np.arange(len(imageset)), k, seed)


def _folds(
    imageset: ImageSet, indices: np.ndarray, k: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified group folds of the items at ``indices``, as indices into the whole set."""
    if k < 2:
        raise InputError(f"need at least 2 folds, got {k}")
    groups = imageset.groups[indices]
    n_groups = len(set(groups.tolist()))
    if n_groups < k:
        raise InputError(
            f"only {n_groups} groups (patients) for {k} patient-level folds: "
            "use fewer folds or larger split fractions"
        )
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    try:
        folds = list(splitter.split(indices, imageset.labels[indices], groups))
    except ValueError as error:  # e.g. every class has fewer items than there are folds
        raise InputError(f"cannot make {k} stratified folds: {error}") from None
    return [(indices[train], indices[test]) for train, test in folds]


@dataclass(frozen=True)
class DuplicateGroup:
    """Items whose images are exactly identical (same pixels and shape).

    Args:
        indices: item indices, ascending (at least two).
        splits: the distinct splits of these items, in train / val / test order.
        labels: the distinct labels of these items, ascending (``-1`` = unlabelled).
    """

    indices: tuple[int, ...]
    splits: tuple[str, ...]
    labels: tuple[int, ...]

    @property
    def crosses_splits(self) -> bool:
        return len(self.splits) > 1

    @property
    def label_conflict(self) -> bool:
        """Two known labels for one image."""
        return sum(label >= 0 for label in self.labels) > 1


def find_duplicates(imageset: ImageSet) -> list[DuplicateGroup]:
    """Groups of exactly identical images, by pixel hash in one pass (O(N))."""
    by_hash: dict[str, list[int]] = {}
    for index, image_hash in enumerate(imageset.image_hashes()):
        by_hash.setdefault(image_hash, []).append(index)
    return [
        DuplicateGroup(
            indices=tuple(indices),
            splits=_ordered(imageset.splits[indices]),
            labels=tuple(sorted(set(imageset.labels[indices].tolist()))),
        )
        for indices in by_hash.values()
        if len(indices) > 1
    ]


def duplicate_summary(imageset: ImageSet) -> dict[str, object]:
    """Counts of :func:`find_duplicates`, e.g. for a data-inspection report.

    Returns:
        ``{"groups": 3, "within_split": {"train": 2}, "across_splits": {"train/test": 1},
        "images": 7, "label_conflicts": 1}``; items without a split count as ``"unsplit"``.
    """
    duplicates = find_duplicates(imageset)
    spans = Counter("/".join(split or "unsplit" for split in d.splits) for d in duplicates)
    return {
        "groups": len(duplicates),
        "within_split": {span: n for span, n in spans.items() if "/" not in span},
        "across_splits": {span: n for span, n in spans.items() if "/" in span},
        "images": sum(len(d.indices) for d in duplicates),
        "label_conflicts": sum(d.label_conflict for d in duplicates),
    }


def find_group_leakage(imageset: ImageSet) -> dict[str, list[str]]:
    """Each group id found in more than one split, with its splits in train / val / test order.

    Items without a split (``""``) are ignored.
    """
    splits_of: dict[str, set[str]] = {}
    for group, split in zip(imageset.groups.tolist(), imageset.splits.tolist(), strict=True):
        if split:
            splits_of.setdefault(group, set()).add(split)
    return {group: list(_ordered(splits)) for group, splits in splits_of.items() if len(splits) > 1}


def _ordered(splits: Iterable[str]) -> tuple[str, ...]:
    """Distinct split names in train / val / test order, then any others sorted."""
    rank = {name: k for k, name in enumerate(SPLIT_ORDER)}
    return tuple(sorted(set(splits), key=lambda s: (rank.get(s, len(rank)), s)))


def hold_out_groups(
    sets: Sequence[ImageSet], spec: str, seed: int = 0
) -> tuple[list[ImageSet], list[str]]:
    """Remove whole subjects (groups) from every set, e.g. for a subject-level validation.

    Args:
        sets: image sets that may share subjects (the two domains of a translation).
        spec: comma-separated group names, or a count ``N``: ``N`` subjects drawn with
            ``seed`` from those present in every set (else from all).
        seed: the same seed holds out the same subjects.

    Returns:
        The sets without the held-out subjects, and the held-out names (sorted).

    Raises:
        InputError: an unknown subject name, a count that leaves no subject for training.
    """
    present = [set(s.groups.tolist()) for s in sets]
    known = set().union(*present)
    if spec.strip().isdigit():
        shared = sorted(set.intersection(*present)) or sorted(known)
        count = int(spec)
        if not 0 < count < len(shared):
            raise InputError(f"cannot hold out {count} of {len(shared)} subject(s): at least "
                             "one must be left for training")
        order = np.random.default_rng(seed).permutation(len(shared))
        held = sorted(shared[k] for k in order[:count])
    else:
        held = sorted({name.strip() for name in spec.split(",") if name.strip()})
        unknown = [name for name in held if name not in known]
        if unknown:
            raise InputError(f"unknown subject(s) {', '.join(unknown)}; the data has "
                             f"{', '.join(sorted(known))}")
    return _without_groups(sets, held), held


def held_out_hashes(sets: Sequence[ImageSet], held: Sequence[str]) -> list[str]:
    """The image hashes of the subjects ``held`` in ``sets``: what a run records to hold out
    the same subjects when resumed, without recording their names (which may name patients)."""
    return sorted({image_hash for group, image_hash in _owners(sets) if group in held})


def hold_out_images(sets: Sequence[ImageSet], hashes: Collection[str]
                    ) -> tuple[list[ImageSet], list[str]]:
    """Remove from every set the subjects that own an image whose hash is in ``hashes`` (see
    :func:`held_out_hashes`); return the sets and the held-out names (sorted)."""
    held = sorted({group for group, image_hash in _owners(sets) if image_hash in hashes})
    return _without_groups(sets, held), held


def _owners(sets: Sequence[ImageSet]) -> list[tuple[str, str]]:
    """``(subject, image hash)`` of every image of ``sets``."""
    return [pair for s in sets
            for pair in zip(s.groups.tolist(), s.image_hashes(), strict=True)]


def _without_groups(sets: Sequence[ImageSet], held: Sequence[str]) -> list[ImageSet]:
    kept = [s.subset(np.flatnonzero(~np.isin(s.groups, held))) for s in sets]
    for s, rest in zip(sets, kept, strict=True):
        if not len(rest):
            raise InputError(f"holding out {', '.join(held)} leaves no training image",
                             s.metadata.get("origin"))
    return kept

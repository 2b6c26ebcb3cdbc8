"""The real images of the utility harness: train / val / test splits with no image shared
between them, and the stratified shares of the training split the grid trains on."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from synthmed.augment.dataset import ImageSet
from synthmed.augment.splits import split_by_group
from synthmed.errors import InputError


@dataclass(frozen=True)
class RealData:
    """The real splits the harness uses, and what was done to make them."""

    train: ImageSet
    val: ImageSet
    test: ImageSet
    notes: list[str]


def prepare_real(real: ImageSet, seed: int = 0) -> RealData:
    """Train / val / test from the data's own splits (a missing val or test split is cut from
    the training images by patient group); validation and test images identical to a training
    image (or test to validation) are dropped, so no test image is also a training image."""
    if not real.is_labelled or len(real.class_names) < 2:
        raise InputError("the utility harness needs labelled data with at least 2 classes",
                         real.metadata.get("origin"))
    notes: list[str] = []
    splits = set(real.splits.tolist())
    if not {"train", "val", "test"} <= splits:
        pool = real.subset(np.flatnonzero(real.splits != "test")) if "test" in splits else real
        names = split_by_group(pool.with_splits([""] * len(pool)), val_fraction=0.15,
                               test_fraction=0.0 if "test" in splits else 0.15, seed=seed)
        cut = pool.with_splits(names)
        real = ImageSet.concatenate([cut, real.split("test")]) if "test" in splits else cut
        notes.append(f"the data had splits {sorted(splits - {''}) or 'none'}: "
                     "missing splits were cut from the training images by patient group")
    train, val, test = (real.split(name) for name in ("train", "val", "test"))
    train_hashes = set(train.image_hashes())
    val, dropped_val = _drop_seen(val, train_hashes)
    test, dropped_test = _drop_seen(test, train_hashes | set(val.image_hashes()))
    if dropped_val or dropped_test:
        notes.append(f"dropped {dropped_val} validation and {dropped_test} test image(s) "
                     "identical to an image of an earlier split")
    for name, part in (("train", train), ("val", val), ("test", test)):
        if len(part.class_counts()) < len(real.class_names):
            raise InputError(f"the {name} split lacks a class (counts {part.class_counts()})",
                             real.metadata.get("origin"))
    return RealData(train, val, test, notes)


def _drop_seen(part: ImageSet, seen: set[str]) -> tuple[ImageSet, int]:
    keep = np.array([h not in seen for h in part.image_hashes()], bool)
    return part.subset(np.flatnonzero(keep)), int((~keep).sum())


def fraction_subset(train: ImageSet, fraction: float, seed: int) -> ImageSet:
    """A stratified share of the training images (at least 2 per class), drawn with ``seed``;
    the whole set for ``fraction == 1``."""
    if fraction >= 1.0:
        return train
    rng = np.random.default_rng([seed, round(fraction * 1e6)])
    chosen = []
    for label in sorted(train.class_counts()):
        members = np.flatnonzero(train.labels == label)
        count = max(2, round(fraction * len(members)))
        chosen.append(rng.choice(members, size=min(count, len(members)), replace=False))
    return train.subset(np.sort(np.concatenate(chosen)))

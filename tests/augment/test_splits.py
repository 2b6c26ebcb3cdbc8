"""Patient-level splits, duplicate detection and group leakage (synthmed.augment.splits)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthmed.augment.dataset import ImageSet
from synthmed.augment.splits import (
    DuplicateGroup,
    duplicate_summary,
    find_duplicates,
    find_group_leakage,
    group_kfold,
    split_by_group,
)
from synthmed.errors import InputError
from tests.conftest import real_file


def random_set(
    groups: Sequence[str],
    labels: Sequence[int] | None = None,
    splits: Sequence[str] | None = None,
    seed: int = 0,
) -> ImageSet:
    """Random ``(N, 1, 8, 8)`` images, one per group entry."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(-1, 1, (len(groups), 1, 8, 8))
    return ImageSet.from_arrays(images, labels=labels, groups=groups, splits=splits)


def patients(n_groups: int, seed: int = 0, labelled: bool = True) -> ImageSet:
    """``n_groups`` patients with 1 to 4 images each and random labels 0 / 1 / 2."""
    rng = np.random.default_rng(seed)
    groups = [f"p{g}" for g in range(n_groups) for _ in range(rng.integers(1, 5))]
    labels = rng.choice(3, size=len(groups), p=[0.6, 0.3, 0.1]) if labelled else None
    return random_set(groups, labels, seed=seed)


def splits_per_group(imageset: ImageSet, names: np.ndarray) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for group, name in zip(imageset.groups, names, strict=True):
        found.setdefault(group, set()).add(name)
    return found


# -- split_by_group ---------------------------------------------------------------------


@pytest.mark.parametrize("labelled", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_split_by_group_keeps_each_group_in_one_split(labelled: bool, seed: int) -> None:
    imageset = patients(80, seed=seed, labelled=labelled)
    names = split_by_group(imageset, seed=seed)
    assert all(len(s) == 1 for s in splits_per_group(imageset, names).values())
    assert set(names) == {"train", "val", "test"}
    assert find_group_leakage(imageset.with_splits(names)) == {}


@pytest.mark.parametrize("labelled", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_split_by_group_honours_fractions(labelled: bool, seed: int) -> None:
    imageset = random_set(
        [f"p{g}" for g in range(100) for _ in range(2)],
        labels=[0, 1] * 100 if labelled else None,
        seed=seed,
    )
    names = split_by_group(imageset, val_fraction=0.15, test_fraction=0.15, seed=seed)
    share = {name: np.mean(names == name) for name in ("train", "val", "test")}
    assert 0.10 <= share["test"] <= 0.20
    assert 0.10 <= share["val"] <= 0.20
    assert 0.60 <= share["train"] <= 0.80


def test_split_by_group_zero_fraction_leaves_the_part_empty() -> None:
    names = split_by_group(patients(40), val_fraction=0.0, test_fraction=0.25)
    assert set(names) == {"train", "test"}


def test_split_by_group_keeps_class_ratios() -> None:
    labels = np.repeat([0, 1, 2], [180, 90, 30])  # 60 / 30 / 10 %
    imageset = random_set([f"p{i}" for i in range(300)], labels=labels)
    names = split_by_group(imageset, val_fraction=0.2, test_fraction=0.2, seed=3)
    for name in ("train", "val", "test"):
        ratios = np.bincount(labels[names == name], minlength=3) / np.sum(names == name)
        np.testing.assert_allclose(ratios, [0.6, 0.3, 0.1], atol=0.02)


def test_split_by_group_is_deterministic_per_seed() -> None:
    imageset = patients(60)
    first = split_by_group(imageset, seed=7)
    np.testing.assert_array_equal(first, split_by_group(imageset, seed=7))
    assert not np.array_equal(first, split_by_group(imageset, seed=8))


def test_split_by_group_refuses_too_few_groups() -> None:
    imageset = random_set(["a", "a", "b", "c", "d", "e"], labels=[0, 1, 0, 1, 0, 1])
    with pytest.raises(InputError, match="only 5 groups"):
        split_by_group(imageset, test_fraction=0.15)  # 7 folds


@pytest.mark.parametrize(
    ("val", "test", "problem"),
    [(-0.1, 0.15, "val_fraction"), (0.15, 0.6, "test_fraction"), (0.4, 0.4, "2/3")],
)
def test_split_by_group_refuses_bad_fractions(val: float, test: float, problem: str) -> None:
    with pytest.raises(InputError, match=problem):
        split_by_group(patients(100), val_fraction=val, test_fraction=test)


# -- group_kfold -------------------------------------------------------------------------


@pytest.mark.parametrize("labelled", [True, False])
def test_group_kfold_tests_each_item_once_and_keeps_groups_whole(labelled: bool) -> None:
    imageset = patients(30, labelled=labelled)
    folds = group_kfold(imageset, k=5, seed=1)
    assert len(folds) == 5
    tested = np.sort(np.concatenate([test for _, test in folds]))
    np.testing.assert_array_equal(tested, np.arange(len(imageset)))
    for train, test in folds:
        np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), tested)
        assert not set(imageset.groups[train]) & set(imageset.groups[test])


@pytest.mark.parametrize(
    ("groups", "labels", "k", "problem"),
    [
        (["a", "b", "c", "c"], None, 4, "only 3 groups"),
        (list("abcdef"), [0, 0, 1, 1, 2, 2], 5, "cannot make 5 stratified folds"),
        (list("abcd"), None, 1, "at least 2 folds"),
    ],
)
def test_group_kfold_refuses_impossible_folds(
    groups: list[str], labels: list[int] | None, k: int, problem: str
) -> None:
    with pytest.raises(InputError, match=problem):
        group_kfold(random_set(groups, labels), k=k)


# -- duplicates and leakage --------------------------------------------------------------


def test_find_duplicates_within_and_across_splits() -> None:
    splits = ["train"] * 6 + ["val"] * 2 + ["test"] * 4
    labels = [0, 1] * 6
    imageset = random_set([f"p{i}" for i in range(12)], labels, splits)
    images = imageset.images.copy()
    images[2] = images[0]  # train + train, same label
    images[11] = images[1]  # train + test, same label
    images[10] = images[1]  # ... and a third copy in test with label 0: a conflict
    images[7] = images[5]  # train + val, same label
    images[4] = images[3]
    images[4, 0, 3, 3] += 1e-3  # one pixel off: not a duplicate
    imageset = ImageSet.from_arrays(images, labels, groups=imageset.groups, splits=splits)

    duplicates = find_duplicates(imageset)
    assert {d.indices for d in duplicates} == {(0, 2), (1, 10, 11), (5, 7)}
    by_first = {d.indices[0]: d for d in duplicates}
    assert by_first[1] == DuplicateGroup((1, 10, 11), ("train", "test"), (0, 1))
    assert by_first[1].crosses_splits and by_first[1].label_conflict
    assert not by_first[0].crosses_splits and not by_first[0].label_conflict
    assert by_first[5].splits == ("train", "val")
    assert duplicate_summary(imageset) == {
        "groups": 3,
        "within_split": {"train": 1},
        "across_splits": {"train/test": 1, "train/val": 1},
        "images": 7,
        "label_conflicts": 1,
    }


def test_near_identical_images_are_not_duplicates() -> None:
    images = np.zeros((2, 1, 8, 8), np.float32)
    images[1, 0, 4, 4] = 1e-3
    imageset = ImageSet.from_arrays(images, splits=["train", "test"])
    assert find_duplicates(imageset) == []
    assert duplicate_summary(imageset)["groups"] == 0


def test_unlabelled_duplicates_are_no_label_conflict() -> None:
    imageset = ImageSet.from_arrays(np.zeros((3, 1, 4, 4)))
    (duplicate,) = find_duplicates(imageset)
    assert duplicate.labels == (-1,) and not duplicate.label_conflict
    assert duplicate_summary(imageset)["within_split"] == {"unsplit": 1}


def test_find_group_leakage() -> None:
    groups = ["a", "a", "b", "b", "c", "c", "d"]
    splits = ["train", "test", "val", "val", "test", "", "test"]
    leaks = find_group_leakage(random_set(groups, splits=splits))
    assert leaks == {"a": ["train", "test"]}  # "c" in test and unsplit is no leak


# -- real data ---------------------------------------------------------------------------


def breastmnist(path: Path) -> ImageSet:
    """BreastMNIST with its own splits (built from the npz directly)."""
    arrays = np.load(path)
    names = ("train", "val", "test")
    images = np.concatenate([arrays[f"{s}_images"] for s in names])  # (N, 28, 28) uint8
    labels = np.concatenate([arrays[f"{s}_labels"].reshape(-1) for s in names])
    splits = np.repeat(names, [len(arrays[f"{s}_images"]) for s in names])
    return ImageSet.from_arrays(images[:, None] / 127.5 - 1, labels, splits=splits)


def test_breastmnist_has_one_image_in_train_and_test(shared_data: Path) -> None:
    imageset = breastmnist(real_file(shared_data, "medmnist/breastmnist.npz"))
    assert len(imageset) == 780
    # The one duplicate pair is labelled malignant in train and benign in test.
    assert duplicate_summary(imageset) == {
        "groups": 1,
        "within_split": {},
        "across_splits": {"train/test": 1},
        "images": 2,
        "label_conflicts": 1,
    }


def brain_tumor_mri(root: Path) -> ImageSet:
    """The Training / Testing JPEGs as 1-channel images (RGB files as L when grey)."""
    paths = sorted(root.glob("*/*/*.jpg"))
    images = np.empty((len(paths), 1, 224, 224), np.float32)
    for index, path in enumerate(paths):
        with Image.open(path) as picture:
            pixels = np.asarray(picture)
        if pixels.ndim == 3:
            grey = (pixels == pixels[..., :1]).all()
            pixels = pixels[..., 0] if grey else np.asarray(Image.fromarray(pixels).convert("L"))
        images[index, 0] = pixels / 127.5 - 1
    classes = sorted({p.parent.name for p in paths})
    return ImageSet.from_arrays(
        images,
        labels=[classes.index(p.parent.name) for p in paths],
        class_names=classes,
        sources=[str(p) for p in paths],
        splits=[{"Training": "train", "Testing": "test"}[p.parent.parent.name] for p in paths],
    )


def test_brain_tumor_mri_duplicates_cross_training_and_testing(shared_data: Path) -> None:
    imageset = brain_tumor_mri(real_file(shared_data, "brain-tumor-mri"))
    assert len(imageset) == 7019  # 5708 + 1311; the stray .ipynb_checkpoints copy is left out
    # Measured: the same 300 groups as byte-identical files (md5); 189 cross the splits.
    assert duplicate_summary(imageset) == {
        "groups": 300,
        "within_split": {"train": 108, "test": 3},
        "across_splits": {"train/test": 189},
        "images": 726,
        "label_conflicts": 0,
    }

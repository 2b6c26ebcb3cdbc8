"""The embedded phantom: determinism, T1/T2 anatomy and contrast, lesions, labels, subjects,
spec parsing and sizes."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from synthmed.augment.items import ReadConfig
from synthmed.augment.phantom import (
    BACKGROUND,
    CSF,
    GREY,
    LESION,
    OEDEMA,
    WHITE,
    PhantomConfig,
    is_phantom_spec,
    make_phantom,
    parse_phantom_spec,
    read_phantom_spec,
    render_phantom,
)
from synthmed.errors import InputError

SMALL = PhantomConfig(n=32, size=64, seed=7)


@pytest.fixture(scope="module")
def slices():
    return render_phantom(SMALL)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * (a & b).sum() / (a.sum() + b.sum())


def test_same_seed_same_bytes_other_seed_differs():
    config = PhantomConfig(n=24, size=32, seed=3)
    first, again = make_phantom(config), make_phantom(config)
    other = make_phantom(PhantomConfig(n=24, size=32, seed=4))
    for k in range(2):
        assert first[k].images.tobytes() == again[k].images.tobytes()
        assert np.array_equal(first[k].labels, again[k].labels)
        assert not np.array_equal(first[k].images, other[k].images)


def test_t1_and_t2_share_anatomy_labels_and_groups(slices):
    t1, t2 = make_phantom(PhantomConfig(n=4, size=32, seed=1))
    assert np.array_equal(t1.labels, t2.labels) and np.array_equal(t1.groups, t2.groups)

    def head(image: np.ndarray) -> np.ndarray:  # everything inside the outline
        return ndimage.binary_fill_holes(image > 0.1 * image.max())

    def edges(image: np.ndarray) -> np.ndarray:
        return np.hypot(*np.gradient(ndimage.gaussian_filter(image, 1.0))).ravel()

    other = np.roll(np.arange(SMALL.n), SMALL.slices_per_subject)  # a slice of another subject
    for i, j in enumerate(other):
        assert dice(head(slices.t1[i]), head(slices.t2[i])) > 0.97
        same = np.corrcoef(edges(slices.t1[i]), edges(slices.t2[i]))[0, 1]
        assert same > 0.7 and same > np.corrcoef(edges(slices.t1[i]), edges(slices.t2[j]))[0, 1]


def test_tissue_contrast_is_t1_like_and_t2_like(slices):
    # inner pixels of each tissue (eroded, so blur at the edges does not count)
    def mean(images: np.ndarray, tissue: int) -> float:
        inner = ndimage.binary_erosion(slices.tissue == tissue, np.ones((1, 3, 3)))
        return float(images[inner].mean())

    assert mean(slices.t1, CSF) < mean(slices.t1, GREY) < mean(slices.t1, WHITE)
    assert mean(slices.t2, CSF) > mean(slices.t2, GREY) > mean(slices.t2, WHITE)
    brain = np.isin(slices.tissue, (CSF, GREY, WHITE))
    assert np.corrcoef(slices.t1[brain], slices.t2[brain])[0, 1] < -0.5


def test_lesion_changes_only_a_compact_region_darker_t1_brighter_t2(slices):
    plain = render_phantom(SMALL, lesions=False)
    lesion = np.isin(slices.tissue, (LESION, OEDEMA))
    assert np.array_equal(lesion.any(axis=(1, 2)), slices.labels == 1)
    for i in range(SMALL.n):
        d1, d2 = slices.t1[i] - plain.t1[i], slices.t2[i] - plain.t2[i]
        if slices.labels[i] == 0:
            assert not d1.any() and not d2.any()
            continue
        near = ndimage.binary_dilation(lesion[i], iterations=3)  # partial-volume blur spreads it
        assert not d1[~near].any() and not d2[~near].any()
        assert d1[lesion[i]].mean() < -100 and d2[lesion[i]].mean() > 100
        rows, cols = np.nonzero(lesion[i])
        assert max(np.ptp(rows), np.ptp(cols)) < SMALL.size // 2  # one compact blob


@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.5, 0.75, 1.0])
def test_class_balance_is_exact_and_shuffled(fraction):
    labels = render_phantom(PhantomConfig(n=50, size=16, lesion_fraction=fraction)).labels
    assert labels.sum() == round(50 * fraction)
    if 0 < fraction < 1:
        assert not np.array_equal(labels, np.sort(labels))
        assert not np.array_equal(labels, np.sort(labels)[::-1])


def test_subjects_are_consecutive_slices_of_one_head(slices):
    t1, _ = make_phantom(PhantomConfig(n=20, size=16, slices_per_subject=8))
    assert list(t1.groups) == ["phantom-s0000"] * 8 + ["phantom-s0001"] * 8 + ["phantom-s0002"] * 4
    # neighbouring slices of one subject agree on most pixels' tissue, slices of two do not
    tissue, per = slices.tissue, SMALL.slices_per_subject
    same = [(tissue[i] == tissue[i + 1]).mean() for i in range(SMALL.n - 1) if (i + 1) % per]
    across = [
        (tissue[i] == tissue[j]).mean()
        for i in range(SMALL.n)
        for j in range(i + per, SMALL.n, per)
    ]
    assert min(same) > 0.8 and np.mean(same) > np.mean(across) + 0.1


def test_phantom_spec_recognition():
    assert is_phantom_spec("phantom") and is_phantom_spec("phantom:t2,n=8")
    assert not is_phantom_spec("phantoms") and not is_phantom_spec("data/phantom")


@pytest.mark.parametrize(
    "text, contrast, config",
    [
        ("phantom", "t1", PhantomConfig()),
        ("phantom:t2", "t2", PhantomConfig()),
        (
            "phantom:t1,n=200,size=32,seed=1,lesion_fraction=0.3",
            "t1",
            PhantomConfig(n=200, size=32, seed=1, lesion_fraction=0.3),
        ),
        ("phantom:n=10, T2 ,slices_per_subject=5", "t2", PhantomConfig(n=10, slices_per_subject=5)),
    ],
)
def test_parse_phantom_spec(text, contrast, config):
    assert parse_phantom_spec(text) == (contrast, config)


@pytest.mark.parametrize(
    "text, problem",
    [
        ("phantom:t3", "unknown phantom option 't3'"),
        ("phantom:colour=red", "unknown phantom option 'colour=red'"),
        ("phantom:n=abc", "n='abc' is not an integer"),
        ("phantom:n=1.5", "n='1.5' is not an integer"),
        ("phantom:lesion_fraction=half", "is not a number"),
        ("phantom:lesion_fraction=2", r"lesion_fraction must be in \[0, 1\]"),
        ("phantom:size=8", "size must be at least 16"),
        ("phantom:n=0", "n must be positive"),
    ],
)
def test_bad_phantom_specs_name_the_problem(text, problem):
    with pytest.raises(InputError, match=problem):
        read_phantom_spec(text, ReadConfig())


def test_read_phantom_spec_gives_the_named_contrast_with_provenance():
    s = read_phantom_spec("phantom:t2,n=10,size=32,seed=3,lesion_fraction=0.3", ReadConfig())
    _, t2 = make_phantom(PhantomConfig(n=10, size=32, seed=3, lesion_fraction=0.3))
    assert s.images.tobytes() == t2.images.tobytes()
    assert s.class_names == ("no lesion", "lesion") and s.class_counts() == {0: 7, 1: 3}
    assert s.sources[4] == "phantom:t2,seed=3#4" and s.groups[9] == "phantom-s0001"
    assert (s.modality, s.unit) == ("MR", "a.u.")
    assert s.metadata["reader"] == "phantom" and s.metadata["contrast"] == "T2"
    assert s.metadata["seed"] == 3
    assert (s.intensity_low == 0).all() and (s.intensity_high == 4095).all()
    original = s.to_original_units()
    assert original.min() >= 0 and original.max() <= 4095
    assert np.allclose(original, np.rint(original), atol=1e-3)  # 12-bit integers


@pytest.mark.parametrize("size", [32, 64, 128])
def test_size_renders_the_same_heads_at_that_resolution(size):
    s = read_phantom_spec(f"phantom:n=8,size={size}", ReadConfig())
    assert s.images.shape == (8, 1, size, size)
    head = render_phantom(PhantomConfig(n=8, size=size)).tissue != BACKGROUND
    reference = render_phantom(PhantomConfig(n=8, size=64)).tissue != BACKGROUND
    assert abs(head.mean() - reference.mean()) < 0.02


def test_read_options_size_and_channels_apply():
    assert read_phantom_spec("phantom:n=4", ReadConfig(size=48)).images.shape == (4, 1, 48, 48)
    s = read_phantom_spec("phantom:n=4,size=32", ReadConfig(size=64, channels=3))
    assert s.images.shape == (4, 3, 64, 64)
    assert np.array_equal(s.images[:, 0], s.images[:, 2])

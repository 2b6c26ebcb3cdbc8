"""ImageSet: construction, selection, concatenation, intensities, hashes, torch view."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synthmed.augment.dataset import ImageSet
from synthmed.augment.intensity import (
    foreground_mask,
    parse_window,
    percentile_range,
    to_model_space,
    to_original,
)
from synthmed.errors import InputError


def make_set(n: int = 6, seed: int = 0, **kwargs) -> ImageSet:
    rng = np.random.default_rng(seed)
    images = rng.uniform(-1, 1, (n, 1, 8, 8)).astype(np.float32)
    return ImageSet.from_arrays(images, labels=np.arange(n) % 2, **kwargs)


def test_from_arrays_fills_per_item_defaults():
    s = make_set(4)
    assert s.images.shape == (4, 1, 8, 8) and s.images.dtype == np.float32
    assert s.class_names == ("0", "1")
    assert s.class_counts() == {0: 2, 1: 2}
    assert list(s.splits) == [""] * 4 and not s.synthetic.any()
    assert len(set(s.groups.tolist())) == 4


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="labels has 3 items"):
        ImageSet.from_arrays(np.zeros((4, 1, 2, 2)), labels=[0, 1, 0])


def test_subset_keeps_every_field_aligned():
    s = make_set(6, groups=list("abcdef"), splits=["train"] * 3 + ["test"] * 3)
    sub = s.subset([5, 0])
    assert np.array_equal(sub.images[0], s.images[5])
    assert list(sub.groups) == ["f", "a"] and list(sub.splits) == ["test", "train"]
    assert list(sub.labels) == [1, 0]
    assert len(s.split("test")) == 3 and set(s.split("test").groups) == {"d", "e", "f"}


def test_concatenate_real_and_synthetic_keeps_flags():
    real = make_set(4)
    fake = make_set(3, seed=1, synthetic=True)
    both = ImageSet.concatenate([real, fake])
    assert len(both) == 7
    assert list(both.synthetic) == [False] * 4 + [True] * 3
    assert np.array_equal(both.images[4:], fake.images)


def test_concatenate_refuses_other_shapes_and_classes():
    with pytest.raises(InputError, match="shape"):
        ImageSet.concatenate([make_set(2), ImageSet.from_arrays(np.zeros((2, 1, 4, 4)))])
    other_classes = make_set(2, class_names=["a", "b"])
    with pytest.raises(InputError, match="class names"):
        ImageSet.concatenate([make_set(2), other_classes])


def test_to_original_units_inverts_the_mapping_per_item():
    values = np.array([[-1000.0, 0.0, 400.0], [0.0, 50.0, 100.0]])
    lows, highs = np.array([-1000.0, 0.0]), np.array([400.0, 100.0])
    images = np.stack([to_model_space(v, lo, hi) for v, lo, hi in zip(values, lows, highs,
                                                                       strict=True)])
    s = ImageSet.from_arrays(images[:, None, None, :], intensity_range=(lows, highs), unit="HU")
    assert np.allclose(s.to_original_units()[:, 0, 0, :], values, atol=1e-3)


def test_inverted_mapping_round_trips():
    image = to_model_space(np.array([0.0, 1000.0]), 1000.0, 0.0)  # MONOCHROME1: low > high
    assert list(image) == [1.0, -1.0]
    assert np.allclose(to_original(image, 1000.0, 0.0), [0.0, 1000.0])


def test_hashes_and_fingerprint_follow_content_and_labels():
    s = make_set(4)
    twin = make_set(4)
    assert s.fingerprint() == twin.fingerprint()
    assert s.image_hashes() == twin.image_hashes()
    relabelled = ImageSet.from_arrays(s.images, labels=[1, 1, 0, 0])
    assert relabelled.fingerprint() != s.fingerprint()
    changed = s.images.copy()
    changed[0, 0, 0, 0] += 1e-3
    assert ImageSet.from_arrays(changed, labels=s.labels).image_hashes()[0] != s.image_hashes()[0]


def test_torch_dataset_yields_images_and_labels():
    s = make_set(5)
    loader = torch.utils.data.DataLoader(s.to_torch(), batch_size=5)
    images, labels = next(iter(loader))
    assert images.shape == (5, 1, 8, 8) and images.dtype == torch.float32
    assert labels.tolist() == s.labels.tolist()


def test_window_presets_and_explicit_windows():
    assert parse_window("brain") == (0.0, 80.0)
    assert parse_window("lung") == (-1350.0, 150.0)
    assert parse_window("40,400") == (-160.0, 240.0)
    with pytest.raises(InputError, match="unknown window"):
        parse_window("liver-ish")


def test_percentile_range_inside_mask_and_constant_images():
    values = np.concatenate([np.zeros(1000), np.linspace(100, 200, 1000)])
    low, high = percentile_range(values, values > 0, (0.0, 100.0))
    assert (low, high) == (100.0, 200.0)
    assert percentile_range(np.full(10, 7.0)) == (7.0, 8.0)


def test_foreground_mask_on_masked_and_unmasked_images():
    masked = np.zeros((20, 20))
    masked[5:15, 5:15] = np.random.default_rng(0).normal(300, 50, (10, 10))
    assert foreground_mask(masked).sum() == 100
    noisy = np.random.default_rng(1).normal(0, 5, (40, 40))
    noisy[10:30, 10:30] += 500
    assert foreground_mask(noisy).sum() == 400

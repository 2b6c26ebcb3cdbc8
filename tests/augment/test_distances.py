"""Nearest-neighbour distances shared by the privacy filter and the audit."""

from __future__ import annotations

import numpy as np
import pytest

from synthmed.augment.distances import flatten_pixels, near_copy_threshold, nearest_distances


def test_flatten_pixels():
    images = np.arange(2 * 3 * 4 * 5, dtype=np.float64).reshape(2, 3, 4, 5)
    flat = flatten_pixels(images)
    assert flat.shape == (2, 60) and flat.dtype == np.float32
    np.testing.assert_array_equal(flat[1], images[1].ravel())


def test_nearest_distances_and_threshold_match_brute_force():
    rng = np.random.default_rng(0)
    queries, references = rng.normal(size=(23, 7)), rng.normal(size=(31, 7))
    pairwise = np.sqrt(((queries[:, None] - references[None]) ** 2).sum(-1))  # (23, 31)
    distances, indices = nearest_distances(queries, references)
    np.testing.assert_allclose(distances, pairwise.min(axis=1), rtol=1e-9)
    np.testing.assert_array_equal(indices, pairwise.argmin(axis=1))
    for percentile in (5.0, 50.0):
        expected = np.percentile(pairwise.min(axis=1), percentile)
        assert near_copy_threshold(references, queries, percentile) == pytest.approx(expected)

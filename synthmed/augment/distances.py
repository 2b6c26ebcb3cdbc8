"""Nearest-neighbour distances between images, shared by the export's privacy filter
(:mod:`synthmed.gan.generate`) and the privacy audit (:mod:`synthmed.eval.privacy_audit`): the
distance to the closest record (DCR) and the near-copy threshold taken from real data.
"""

from __future__ import annotations

import numpy as np
from sklearn.neighbors import NearestNeighbors

#: the near-copy threshold's percentile: unseen real images come that close at this rate (%)
NEAR_COPY_PERCENTILE = 5.0


def flatten_pixels(images: np.ndarray) -> np.ndarray:
    """(N, C, H, W) model-space images in [-1, 1] -> (N, C*H*W) float32 vectors."""
    return np.asarray(images, dtype=np.float32).reshape(len(images), -1)


def nearest_distances(queries: np.ndarray, references: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distance from each query (N, D) to its nearest reference (M, D), and that
    reference's index: ((N,), (N,)). scikit-learn NearestNeighbors."""
    search = NearestNeighbors(n_neighbors=1).fit(np.asarray(references, dtype=np.float64))
    distances, indices = search.kneighbors(np.asarray(queries, dtype=np.float64))
    return distances[:, 0], indices[:, 0]


def near_copy_threshold(train: np.ndarray, holdout: np.ndarray,
                        percentile: float = NEAR_COPY_PERCENTILE) -> float:
    """The `percentile`-th percentile of the distances from each held-out vector (N, D) to its
    nearest training vector (M, D): a synthetic image closer to a training image than this is
    a near-copy."""
    distances, _ = nearest_distances(holdout, train)
    return float(np.percentile(distances, percentile))

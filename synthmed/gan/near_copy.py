"""The export's privacy filter: a synthetic image nearer (Euclidean, model-space pixels) to a
training image than a threshold is a near-copy, dropped by :func:`synthmed.gan.generate.generate`
and drawn again. The threshold is given, or taken from the training data itself: how close
real images of held-aside training subjects come to the other subjects' images.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from synthmed.augment.dataset import ImageSet
from synthmed.augment.distances import (
    NEAR_COPY_PERCENTILE,
    flatten_pixels,
    near_copy_threshold,
    nearest_distances,
)
from synthmed.augment.items import ReadConfig
from synthmed.augment.readers import read_images
from synthmed.errors import InputError
from synthmed.gan.data import recorded_source
from synthmed.gan.run import LoadedRun
from synthmed.settings import from_dict, to_dict

HOLDOUT_SEED = 0


@dataclass(frozen=True)
class PrivacyFilterConfig:
    """Drop synthetic images that are near-copies of training images and draw new ones.

    Args:
        train: the run's training data (anything the readers take). It is read with the
            run's own read options (size: the model's) and split, so pixels compare.
        read: read options replacing the run's own, e.g. ``{"skip_bad": True}``.
        threshold: the pixel distance (Euclidean over ``C*H*W`` model-space values in
            [-1, 1]) below which an image is a near-copy; ``None``: derived from ``train``.
        holdout_fraction, percentile: the derived threshold is the ``percentile``-th
            percentile of the distances from each image of a held-aside ``holdout_fraction``
            of the training subjects (drawn with seed ``HOLDOUT_SEED``; images when there is
            one subject) to its nearest image of the other subjects: closer than all but
            ``percentile`` % of real unseen images.
        max_redraws: new draws per image before giving up on a generator that copies.
    """

    train: str
    read: dict[str, Any] = field(default_factory=dict)
    threshold: float | None = None
    holdout_fraction: float = 0.2
    percentile: float = NEAR_COPY_PERCENTILE
    max_redraws: int = 10

    def __post_init__(self) -> None:
        if not self.train:
            raise InputError("--privacy-filter needs --train DATA (the run's training data)")
        if self.threshold is not None and not 0 < self.threshold < math.inf:
            raise InputError(f"--threshold must be positive and finite, got {self.threshold}")
        if not 0 < self.holdout_fraction <= 0.5:
            raise InputError(f"holdout_fraction must be in (0, 0.5], got {self.holdout_fraction}")
        if not 0 <= self.percentile <= 100:
            raise InputError(f"percentile must be in [0, 100], got {self.percentile}")
        if self.max_redraws < 1:
            raise InputError(f"max_redraws must be at least 1, got {self.max_redraws}")


@dataclass(frozen=True)
class NearCopyFilter:
    """The training images and the distance below which a synthetic image copies one.

    Args:
        train: training images flattened, ``(M, C*H*W)`` float32.
        threshold: a synthetic image nearer than this to a training image is dropped.
        max_redraws: new draws per image before giving up.
        record: how the filter was made, for ``provenance.json``.
    """

    train: np.ndarray
    threshold: float
    max_redraws: int
    record: dict[str, Any]

    def copies(self, images: np.ndarray) -> np.ndarray:
        """``(N, C, H, W)`` -> ``(N,)`` bool: nearer to a training image than the threshold."""
        distances, _ = nearest_distances(flatten_pixels(images), self.train)
        return distances < self.threshold

    def redraw(self, images: np.ndarray, draw: Callable[[np.ndarray], np.ndarray],
               source: str, advice: str) -> np.ndarray:
        """Replace, in place, each near-copy among ``images`` ``(N, C, H, W)`` by a new draw
        until none is left; returns the round ``(N,)`` of each image's draw (0: the first).

        Args:
            draw: the slots ``(n,)`` still holding a near-copy -> one new image for each
                ``(n, C, H, W)``; called once per round.
            source, advice: the generator named in the error, and what its user can change.
        Raises:
            InputError: images still near-copies after ``max_redraws`` new draws each.
        """
        rounds = np.zeros(len(images), np.int64)
        copies = self.copies(images)  # (N,) bool
        for round_ in range(1, self.max_redraws + 1):
            if not copies.any():
                break
            redo = np.flatnonzero(copies)
            images[redo] = draw(redo)
            rounds[redo] = round_
            copies[redo] = self.copies(images[redo])
        if copies.any():
            raise InputError(f"{copies.sum()} image(s) were still near-copies of training "
                             f"images after {self.max_redraws} new draws each: the generator "
                             "reproduces its training data, or the threshold "
                             f"({self.threshold:.4g}) is too strict for it ({advice})", source)
        return rounds


def near_copy_filter(run: LoadedRun, config: PrivacyFilterConfig) -> NearCopyFilter:
    """Read the training data as the run did and fix the near-copy threshold.

    Raises:
        InputError: unreadable data, images of another shape than the generator's, too few
            images to derive a threshold.
    """
    train = read_training_images(run, config)
    shape = (run.model.config.channels, run.model.config.size, run.model.config.size)
    if train.images.shape[1:] != shape:
        raise InputError(f"images are {'x'.join(map(str, train.images.shape[1:]))} but the "
                         f"generator makes {'x'.join(map(str, shape))}: read them as the run "
                         "did", config.train)
    pixels = flatten_pixels(train.images)  # (M, C*H*W)
    if config.threshold is None:
        threshold = _derived_threshold(train, pixels, config.percentile,
                                       config.holdout_fraction, config.train)
        rule = (f"percentile {config.percentile:g} of the distances from the images of "
                f"{config.holdout_fraction:.0%} of the training subjects (seed {HOLDOUT_SEED}; "
                "images if there is one subject) to their nearest image of the other subjects")
    else:
        threshold, rule = config.threshold, "given (--threshold)"
    fingerprint = train.fingerprint()
    record = {
        "space": "pixels: Euclidean distance over C*H*W model-space values in [-1, 1]",
        "threshold": threshold,
        "threshold_rule": rule,
        "training_data": recorded_source(config.train),
        "training_data_fingerprint": fingerprint,
        "training_images": len(train),
        "matches_run_training_data": fingerprint == run.training_data.get("fingerprint"),
        "max_redraws": config.max_redraws,
    }
    return NearCopyFilter(pixels, threshold, config.max_redraws, record)


def read_training_images(run: LoadedRun, config: PrivacyFilterConfig) -> ImageSet:
    """``config.train`` read with the run's read options (size: the model's; ``config.read``
    replacing some), and only its train split when the run trained on that."""
    saved = replace(run.config.data.read_config(), size=run.model.config.size)
    try:
        read = from_dict(ReadConfig, {**to_dict(saved), **config.read}, "--train-read")
    except TypeError as error:  # e.g. size=abc
        raise InputError(f"a value of the wrong type ({error})", "--train-read") from None
    data = read_images(config.train, read)
    trained_on_train_split = run.config.data.split == "train"
    return data.split("train") if trained_on_train_split and "train" in data.splits else data


def subset_filter(train: ImageSet, percentile: float, max_redraws: int) -> NearCopyFilter:
    """The filter of a generator trained on exactly ``train`` (the utility harness's, per
    subset): its threshold derived from ``train`` by :class:`PrivacyFilterConfig`'s rule
    (holding aside 20 % of its subjects) at ``percentile``."""
    pixels = flatten_pixels(train.images)  # (M, C*H*W)
    holdout = PrivacyFilterConfig.holdout_fraction
    threshold = _derived_threshold(train, pixels, percentile, holdout, "the generator's subset")
    return NearCopyFilter(pixels, threshold, max_redraws, record={})  # no provenance.json


def _derived_threshold(train: ImageSet, pixels: np.ndarray, percentile: float,
                       holdout_fraction: float, source: str) -> float:
    """The threshold rule of :class:`PrivacyFilterConfig` applied to ``train`` (its images
    flattened: ``pixels`` ``(M, C*H*W)``), named ``source`` in errors."""
    single = len(set(train.groups.tolist())) < 2
    units = np.arange(len(train)).astype(str) if single else train.groups.astype(str)
    names = np.unique(units)
    if len(names) < 2:
        raise InputError("one training image cannot give a near-copy threshold: pass "
                         "--threshold", source)
    count = max(1, round(holdout_fraction * len(names)))
    aside = np.isin(units, np.random.default_rng(HOLDOUT_SEED).permutation(names)[:count])
    threshold = near_copy_threshold(pixels[~aside], pixels[aside], percentile)
    if threshold == 0:
        raise InputError(f"{percentile:g} % of the held-aside training images or more have "
                         "exact duplicates in the rest, so the threshold would be 0: pass "
                         "--threshold", source)
    return threshold

"""Privacy audit of synthetic images: distance to closest record and membership inference.

Members are the generator's training images; non-members are real images it never saw (the
held-out set, from the same source). Everything is measured in pixel space (the images as
vectors in [-1, 1]) and, when a feature extractor is given, in its feature space too.

- Distance to closest record (DCR): for every synthetic image, the Euclidean distance to its
  nearest training image and to its nearest held-out image. A *near-copy* is a synthetic image
  closer to a training image than the ``percentile``-th percentile of the held-out-to-training
  nearest distances: by construction, unseen real images are that close at that rate (5 %).
  The *closer-to-train share* compares the two distances with the larger reference set
  subsampled (seeded) to the size of the smaller one, so neither side wins by size; 0.5 is
  ideal, ties count half.
- Membership inference: an attacker scores a real image (higher = "it was in the training
  set"); the ROC AUC of member vs non-member scores, 0.5 = chance. Black-box: minus the
  distance to the nearest synthetic image. White-box (with the run): a DCGAN's discriminator
  logit; a diffusion model's minus denoising error at low noise levels (Carlini et al. 2023).
  The held-out set is split into seeded halves A and B: the attack is training images vs B,
  the *control* A vs B (both sides non-members: chance up to noise); the *advantage* is AUC
  minus control AUC. Members, A and B have the same size.

The statistics are in :mod:`synthmed.eval.membership`, the report and its plots in
:mod:`synthmed.eval.privacy_report`; this module checks the inputs and runs the audit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from synthmed.augment.dataset import ImageSet
from synthmed.augment.distances import NEAR_COPY_PERCENTILE, flatten_pixels, nearest_distances
from synthmed.errors import InputError, require
from synthmed.eval.fidelity import FeatureFn, checked_features
from synthmed.eval.membership import (
    Distances,
    attack_indices,
    distance_to_closest_record,
    membership_attack,
    white_box_scores,
)
from synthmed.eval.privacy_report import PrivacyReport
from synthmed.eval.stats import N_BOOT
from synthmed.gan.run import LoadedRun
from synthmed.limits import MAX_SEED
from synthmed.settings import check_fields

Scores = tuple[np.ndarray, np.ndarray, np.ndarray]  # members, control, non-members: (n,) each


@dataclass(frozen=True)
class PrivacyConfig:
    """Settings of the audit.

    Args:
        percentile: near-copy threshold, as a percentile of held-out-to-training distances.
        n_boot: bootstrap resamples of each interval.
        confidence: coverage of the intervals.
        pairs: closest synthetic / training pairs in the gallery.
        batch_size: images per network call of the white-box attack.
        seed: the subsampling, the held-out halves and the bootstrap.
    """

    percentile: float = NEAR_COPY_PERCENTILE
    n_boot: int = N_BOOT
    confidence: float = 0.95
    pairs: int = 16
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        check_fields(self)  # types; NaN and inf refused
        checks = [
            (0.0 <= self.percentile <= 100.0,
             f"percentile must be in [0, 100], got {self.percentile}"),
            (self.n_boot >= 1, f"n_boot must be at least 1, got {self.n_boot}"),
            (0.0 < self.confidence < 1.0, f"confidence must be in (0, 1), got {self.confidence}"),
            (self.pairs >= 0, f"pairs must not be negative, got {self.pairs}"),
            (self.batch_size >= 1, f"batch_size must be at least 1, got {self.batch_size}"),
            (0 <= self.seed <= MAX_SEED, f"seed must be between 0 and {MAX_SEED}, got {self.seed}"),
        ]
        require(checks)


def evaluate_privacy(
    synthetic: ImageSet,
    train: ImageSet,
    holdout: ImageSet,
    *,
    features: FeatureFn | None = None,
    extractor: str = "",
    features_fit_on_train: bool = False,
    run: LoadedRun | None = None,
    config: PrivacyConfig | None = None,
) -> PrivacyReport:
    """Audit ``synthetic`` against the generator's ``train`` images and unseen ``holdout`` ones.

    Args:
        features: images ``(N, C, H, W)`` -> features ``(N, D)``; ``None``: pixel space only.
        extractor: the name of the feature space, stated in the report.
        features_fit_on_train: the feature space was learnt from ``train`` (the default
            extractor is): it pulls any image towards the training images, and the report
            says so beside an excess closer to them in that space.
        run: the DCGAN or diffusion run that made ``synthetic``: adds the white-box attack
            and refuses a held-out image its training record lists.
        config: see :class:`PrivacyConfig`.

    Raises:
        InputError: too few images, different image shapes, a held-out image the run trained
            on, unlabelled images for a conditional run.
    """
    config = config or PrivacyConfig()
    holdout, copies = without_training_copies(holdout, train)
    check_inputs(synthetic, train, holdout, run)
    vectors = _vectors(synthetic, train, holdout, features)
    distances = {space: distance_to_closest_record(*v, config.percentile, config.seed)
                 for space, v in vectors.items()}
    scores = _attack_scores(vectors, train, holdout, run, config)
    attacks = {name: membership_attack(*s, config.n_boot, config.confidence, config.seed)
               for name, s in scores.items()}
    pairs = _closest_pairs(synthetic, train, distances["pixels"], config.pairs)
    settings = _settings(synthetic, train, holdout, copies, run, config,
                         extractor=extractor if features is not None else "",
                         features_fit_on_train=features is not None and features_fit_on_train)
    return PrivacyReport(settings, distances, attacks, scores, pairs)


def _vectors(synthetic: ImageSet, train: ImageSet, holdout: ImageSet,
             features: FeatureFn | None) -> dict[str, list[np.ndarray]]:
    """Per space, the synthetic, training and held-out vectors ``(N, D)``: the pixels, and the
    features when there is an extractor."""
    vectors = {"pixels": [flatten_pixels(s.images) for s in (synthetic, train, holdout)]}
    if features is not None:
        vectors["features"] = [checked_features(features, s.images, what) for s, what in
                               ((synthetic, "synthetic"), (train, "training"),
                                (holdout, "held-out"))]
    return vectors


def _attack_scores(vectors: dict[str, list[np.ndarray]], train: ImageSet, holdout: ImageSet,
                   run: LoadedRun | None, config: PrivacyConfig) -> dict[str, Scores]:
    """Per attack, the scores of members, control and non-members: minus the distance to the
    nearest synthetic vector in each space, and with a run its white-box score."""
    members, control, non_members = attack_indices(len(train), len(holdout), config.seed)
    scores = {space: tuple(-nearest_distances(queries, fake)[0] for queries in
                           (real[members], held[control], held[non_members]))
              for space, (fake, real, held) in vectors.items()}
    if run is not None:
        parts = ((train, members), (holdout, control), (holdout, non_members))
        labels = (np.concatenate([s.labels[index] for s, index in parts])
                  if run.model.conditional else None)
        white = white_box_scores(run, np.concatenate([s.images[index] for s, index in parts]),
                                 labels, config.batch_size, config.seed)
        scores[run.model.white_box_attack] = tuple(np.split(white, [len(members),
                                                                    2 * len(members)]))
    return scores


def _closest_pairs(synthetic: ImageSet, train: ImageSet, pixels: Distances, count: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``count`` synthetic images closest to a training image in pixel space, those
    training images and the distances."""
    closest = np.argsort(pixels.to_train, kind="stable")[:count]
    return (synthetic.images[closest], train.images[pixels.nearest_train[closest]],
            pixels.to_train[closest])


def _settings(synthetic: ImageSet, train: ImageSet, holdout: ImageSet, copies: int,
              run: LoadedRun | None, config: PrivacyConfig, *, extractor: str,
              features_fit_on_train: bool) -> dict[str, Any]:
    """What was audited against what, and how, as plain values."""
    seen = set(run.training_data.get("image_hashes", [])) if run is not None else set()
    return {
        "n_synthetic": len(synthetic), "n_train": len(train), "n_holdout": len(holdout),
        "holdout_training_copies_dropped": copies,
        "synthetic_source": str(synthetic.metadata.get("origin", "")),
        "train_source": str(train.metadata.get("origin", "")),
        "holdout_source": str(holdout.metadata.get("origin", "")),
        "run": None if run is None else {"path": str(run.path), "fingerprint": run.fingerprint,
                                         "epoch": run.epoch},
        "train_seen_by_run": (sum(h in seen for h in train.image_hashes()) if seen else None),
        "extractor": extractor,
        "features_fit_on_train": features_fit_on_train,
        "config": asdict(config),
    }


STANDARD_SPLITS = ("train", "val", "test")


def choose_split(images: ImageSet, split: str, option: str, where: str | Path) -> ImageSet:
    """Split ``split`` of ``images`` (read from ``where``), as ``option`` asked for it.

    ``all`` is every image. Data without splits has no split to choose: a standard name
    (train, val, test) then means every image. Data with splits must have the one asked for:
    a misspelt or missing split is an error listing the splits it has, never every image.
    """
    if split == "all":
        return images
    named = [name for name in images.split_names() if name]
    if split in named:
        return images.split(split)
    if named:
        raise InputError(f"has no split {split!r} ({option}): its splits are "
                         f"{', '.join(named)}; pass one of them, or all", where)
    if split not in STANDARD_SPLITS:
        raise InputError(f"{option} {split!r} is not a split name: the data has no splits, "
                         f"so use {', '.join(STANDARD_SPLITS)} or all (every image)", where)
    return images


def without_training_copies(holdout: ImageSet, train: ImageSet) -> tuple[ImageSet, int]:
    """``holdout`` less its exact copies of training images, and how many there were.

    A copy of a member is a member, not a non-member. Public sets have such copies across
    their splits (BreastMNIST repeats one image in its train and test splits).
    """
    seen = set(train.image_hashes())
    unseen = np.array([h not in seen for h in holdout.image_hashes()], dtype=bool)
    return holdout.subset(unseen), int((~unseen).sum())


def check_inputs(synthetic: ImageSet, train: ImageSet, holdout: ImageSet,
                 run: LoadedRun | None = None) -> None:
    """At least 1 synthetic, 2 training and 4 held-out images (two halves of 2), one image
    shape, no held-out image in ``run``'s training record (pass the held-out set
    :func:`without_training_copies`), and for a class-conditional run real images labelled
    with its classes.

    Raises:
        InputError: naming the set and the problem.
    """
    for imageset, what, least in ((synthetic, "synthetic", 1), (train, "training", 2),
                                  (holdout, "held-out", 4)):
        if len(imageset) < least:
            raise InputError(f"the privacy audit needs at least {least} {what} images, got "
                             f"{len(imageset)}", imageset.metadata.get("origin"))
    shape = train.images.shape[1:]
    for imageset, what in ((synthetic, "synthetic"), (holdout, "held-out")):
        if imageset.images.shape[1:] != shape:
            raise InputError(f"{what} images are {_shape(imageset)} but training images "
                             f"{_shape(train)}: pass --size / --channels so they match",
                             imageset.metadata.get("origin"))
    if run is None:
        return
    leaked = set(run.training_data.get("image_hashes", [])) & set(holdout.image_hashes())
    if leaked:
        raise InputError(f"the run was trained on {len(leaked)} of the held-out images: "
                         "non-members must be images the generator never saw", run.path)
    for imageset in (train, holdout) if run.model.conditional else ():
        if not imageset.is_labelled or list(imageset.class_names) != run.class_names:
            raise InputError(f"the run is class-conditional with classes {run.class_names}: the "
                             "white-box attack needs real images with the same labels, got "
                             f"{list(imageset.class_names) if imageset.is_labelled else 'none'}",
                             imageset.metadata.get("origin"))



def _shape(imageset: ImageSet) -> str:
    return f"{imageset.size[0]}x{imageset.size[1]} with {imageset.channels} channel(s)"

"""The statistics of the privacy audit (:mod:`synthmed.eval.privacy_audit` describes the
method): the distance to closest record of synthetic images, and the membership-inference
attack scores with their AUC, control and bootstrap intervals."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata

from synthmed.augment.distances import (
    NEAR_COPY_PERCENTILE,
    near_copy_threshold,
    nearest_distances,
)
from synthmed.eval.stats import N_BOOT, bootstrap_ci
from synthmed.gan.run import LoadedRun

# -- distances ---------------------------------------------------------------------------------


@dataclass
class Distances:
    """DCR of M synthetic vectors in one space.

    Args:
        to_train: ``(M,)`` distance to the nearest training vector (of all of them).
        nearest_train: ``(M,)`` index of that training vector.
        threshold: the near-copy threshold.
        fair_train: ``(M,)`` distance to the nearest of ``reference_size`` training vectors.
        fair_holdout: ``(M,)`` distance to the nearest of ``reference_size`` held-out vectors.
        reference_size: the size of the smaller reference set (the larger one is subsampled
            to it, so the two fair distances can be compared).
    """

    to_train: np.ndarray
    nearest_train: np.ndarray
    threshold: float
    fair_train: np.ndarray
    fair_holdout: np.ndarray
    reference_size: int

    def summary(self) -> dict[str, float]:
        """Medians and the closer-to-train share (ties count half) from the fair distances;
        near-copies against all training vectors."""
        near = int((self.to_train < self.threshold).sum())
        closer = np.mean(self.fair_train < self.fair_holdout) + 0.5 * np.mean(
            self.fair_train == self.fair_holdout)
        return {"median_to_train": float(np.median(self.fair_train)),
                "median_to_holdout": float(np.median(self.fair_holdout)),
                "closer_to_train_share": float(closer),
                "reference_size": self.reference_size,
                "near_copy_threshold": self.threshold,
                "near_copies": near,
                "near_copy_share": near / len(self.to_train)}


def distance_to_closest_record(synthetic: np.ndarray, train: np.ndarray, holdout: np.ndarray,
                               percentile: float = NEAR_COPY_PERCENTILE, seed: int = 0
                               ) -> Distances:
    """DCR of ``synthetic (M, D)`` against ``train (N_t, D)`` and ``holdout (N_h, D)``."""
    to_train, nearest = nearest_distances(synthetic, train)
    size = min(len(train), len(holdout))
    rng = np.random.default_rng(seed)
    fair_train, fair_holdout = (
        nearest_distances(synthetic, reference if len(reference) == size else
                          reference[rng.choice(len(reference), size, replace=False)])[0]
        for reference in (train, holdout))
    return Distances(to_train, nearest, near_copy_threshold(train, holdout, percentile),
                     fair_train, fair_holdout, size)



def closer_to_train(distances: Distances) -> tuple[int, int]:
    """Synthetic images strictly closer to training than to held-out data (equal-size
    references), and those not tied."""
    closer = int((distances.fair_train < distances.fair_holdout).sum())
    return closer, closer + int((distances.fair_train > distances.fair_holdout).sum())


# -- membership inference ----------------------------------------------------------------------


def attack_indices(n_train: int, n_holdout: int, seed: int = 0
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Equal-size index sets ``(n,)``: members (of the training set), control members (held-out
    half A) and non-members (held-out half B), ``n = min(n_train, n_holdout // 2)``."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(n_holdout)
    n = min(n_train, n_holdout // 2)
    members = np.sort(rng.choice(n_train, n, replace=False))
    return members, np.sort(order[:n]), np.sort(order[n_holdout // 2:][:n])


def membership_auc(members: np.ndarray, non_members: np.ndarray) -> float:
    """ROC AUC of attack scores, members ``(N,)`` vs non-members ``(M,)``; higher = member.

    The Mann-Whitney U over ``N M`` (ties count half): the value of sklearn's
    ``roc_auc_score``, without its input checks that cost some 3 ms a call, thousands of
    calls in a bootstrap.

    Examples:
        >>> membership_auc(np.array([3.0, 4.0]), np.array([1.0, 2.0]))
        1.0
    """
    ranks = rankdata(np.concatenate([members, non_members]))  # ties get their mean rank
    n = len(members)
    return float((ranks[:n].sum() - n * (n + 1) / 2) / (n * len(non_members)))


def membership_attack(members: np.ndarray, control: np.ndarray, non_members: np.ndarray,
                      n_boot: int = N_BOOT, confidence: float = 0.95, seed: int = 0
                      ) -> dict[str, Any]:
    """The attack (members vs non-members) and its control (held-out half A vs non-members),
    scores ``(n,)`` each, with bootstrap intervals of the AUC and of the advantage.

    The advantage's resamples draw members and control scores with the same indices (they are
    independent samples, so each is a plain resample) and non-members once for both AUCs.
    """
    def advantage(pairs: np.ndarray, others: np.ndarray) -> float:  # pairs (n, 2)
        return membership_auc(pairs[:, 0], others) - membership_auc(pairs[:, 1], others)

    auc, control_auc = membership_auc(members, non_members), membership_auc(control, non_members)
    auc_ci = bootstrap_ci(members, non_members, membership_auc, n_boot, confidence,
                          rng=np.random.default_rng(seed))
    advantage_ci = bootstrap_ci(np.column_stack([members, control]), non_members, advantage,
                                n_boot, confidence, rng=np.random.default_rng(seed))
    return {"auc": auc, "auc_ci": list(auc_ci), "control_auc": control_auc,
            "advantage": auc - control_auc, "advantage_ci": list(advantage_ci),
            "n_members": len(members), "n_non_members": len(non_members)}


def white_box_scores(run: LoadedRun, images: np.ndarray, labels: np.ndarray | None,
                     batch_size: int = 64, seed: int = 0) -> np.ndarray:
    """``(N,)`` the run's own membership scores (higher = more like a training image) for
    images ``(N, C, H, W)`` with labels ``(N,)`` (run's class indices; ``None`` for an
    unconditional run): a DCGAN's discriminator logit, a diffusion model's minus denoising
    error (:meth:`~synthmed.gan.model.GenerativeModel.membership_scores`).

    Batches are drawn in a seeded random order, so a minibatch-std discriminator sees members
    and non-members mixed as in training rather than one group at a time; the diffusion
    model's noise comes from the same seed.
    """
    model = run.model
    order = np.random.default_rng(seed).permutation(len(images))
    rng = torch.Generator().manual_seed(seed)
    scores = np.empty(len(images))
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            index = order[start:start + batch_size]
            batch = torch.from_numpy(np.ascontiguousarray(images[index], np.float32))
            classes = None if labels is None else torch.from_numpy(labels[index].astype(np.int64))
            scores[index] = model.membership_scores(batch, classes, rng).numpy()  # (B,)
    return scores

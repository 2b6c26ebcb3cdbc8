"""Classification metrics of the utility evaluation (does synthetic data help a classifier?).

- :func:`choose_threshold` picks the decision threshold of a binary classifier on the
  validation set (Youden's J); the test set is then scored with that threshold.
- :func:`classification_metrics` scores one test set: AUROC, balanced accuracy, macro F1 and
  accuracy for every task, plus sensitivity and specificity for binary tasks.

A class missing from the labels leaves its recall and the AUROC undefined: they are ``nan``
rather than an error, so one unlucky split does not stop a run of many seeds.

Examples:
    >>> labels = np.array([0, 0, 1, 1])
    >>> probabilities = np.array([[0.9, 0.1], [0.6, 0.4], [0.65, 0.35], [0.2, 0.8]])
    >>> threshold = choose_threshold(labels, probabilities[:, 1])
    >>> float(threshold), classification_metrics(labels, probabilities, threshold)["accuracy"]
    (0.35, 0.75)
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    roc_auc_score,
    roc_curve,
)

METRICS = ("auroc", "balanced_accuracy", "macro_f1", "accuracy")
BINARY_METRICS = ("sensitivity", "specificity")
MINORITY_METRIC = "minority_sensitivity"


def choose_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The threshold on the positive-class score with the highest balanced accuracy.

    Balanced accuracy is ``(sensitivity + specificity) / 2``, so this maximises Youden's
    ``J = TPR - FPR`` over the thresholds of ``sklearn.metrics.roc_curve`` (every distinct
    score). A sample is positive when ``score >= threshold``. Among equally good thresholds
    the one closest to 0.5 wins.

    Args:
        labels: ``(N,)`` binary labels, 0 and 1 both present (the validation labels).
        scores: ``(N,)`` positive-class probabilities (or any score, higher = more positive).

    Returns:
        The threshold, one of the scores.

    Raises:
        ValueError: lengths differ, labels other than 0 / 1, or only one class present.
    """
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    if labels.ndim != 1 or scores.shape != labels.shape:
        raise ValueError(
            f"labels and scores must be 1-D of the same length, got shapes {labels.shape} "
            f"and {scores.shape}"
        )
    if not np.isin(labels, (0, 1)).all() or np.unique(labels).size != 2:
        raise ValueError("choosing a threshold needs binary labels with both 0 and 1 present")
    fpr, tpr, thresholds = roc_curve(labels, scores, drop_intermediate=False)
    finite = np.isfinite(thresholds)  # the first threshold is inf: nothing positive, J = 0
    j, thresholds = (tpr - fpr)[finite], thresholds[finite]
    best = thresholds[j >= j.max() - 1e-12]
    return float(best[np.argmin(np.abs(best - 0.5))])


def classification_metrics(
    labels: np.ndarray, probabilities: np.ndarray, threshold: float | None = None,
    minority: int | None = None,
) -> dict[str, float]:
    """Score predicted class probabilities against the true labels.

    Decisions: binary (``K == 2``) -> class 1 when ``probabilities[:, 1] >= threshold``
    (``None`` -> 0.5); ``K > 2`` -> the argmax (``threshold`` is ignored).

    - ``auroc``: binary, ``roc_auc_score`` of ``probabilities[:, 1]``; ``K > 2``, the macro
      one-vs-rest AUROC over all ``K`` classes. ``nan`` when a class is missing from ``labels``.
    - ``balanced_accuracy``: the mean recall over the classes present in ``labels`` (as
      ``sklearn.metrics.balanced_accuracy_score``).
    - ``macro_f1``: the mean F1 over the classes in ``labels`` or the decisions (as
      ``f1_score(average="macro")``; a class never predicted scores 0).
    - ``accuracy``: the share of correct decisions.
    - binary only: ``sensitivity`` (recall of class 1) and ``specificity`` (recall of class 0),
      ``nan`` when that class is missing from ``labels``.
    - with ``minority``: ``minority_sensitivity``, the recall of that class (the rarest in
      training, where gains from synthetic images tend to show first).

    Args:
        labels: ``(N,)`` integer labels in ``0 .. K-1``.
        probabilities: ``(N, K)`` class probabilities, rows summing to 1.
        threshold: the binary decision threshold, e.g. from :func:`choose_threshold`.
        minority: a class index in ``0 .. K-1``.

    Returns:
        ``metric -> value``: the keys of ``METRICS``, plus ``BINARY_METRICS`` when ``K == 2``
        and ``minority_sensitivity`` with ``minority``.

    Raises:
        ValueError: an empty set, ``K < 2``, lengths that differ, labels out of range, or
            rows that are not finite or do not sum to 1.
    """
    labels, probabilities = np.asarray(labels), np.asarray(probabilities, dtype=np.float64)
    _check(labels, probabilities)
    k = probabilities.shape[1]
    if k == 2:
        decisions = (probabilities[:, 1] >= (0.5 if threshold is None else threshold)).astype(int)
    else:
        decisions = probabilities.argmax(axis=1)
    counts = confusion_matrix(labels, decisions, labels=np.arange(k))  # (K, K), rows = truth
    support = counts.sum(axis=1)
    recall = np.full(k, np.nan)
    np.divide(np.diag(counts), support, out=recall, where=support > 0)
    if (support == 0).any():
        auroc = np.nan
    elif k == 2:
        auroc = roc_auc_score(labels, probabilities[:, 1])
    else:
        auroc = roc_auc_score(
            labels, probabilities, multi_class="ovr", average="macro", labels=np.arange(k)
        )
    result = {
        "auroc": float(auroc),
        "balanced_accuracy": float(np.nanmean(recall)),
        "macro_f1": float(f1_score(labels, decisions, average="macro", zero_division=0)),
        "accuracy": float(accuracy_score(labels, decisions)),
    }
    if k == 2:
        result.update(sensitivity=float(recall[1]), specificity=float(recall[0]))
    if minority is not None:
        if not 0 <= minority < k:
            raise ValueError(f"minority must be a class in 0..{k - 1}, got {minority}")
        result[MINORITY_METRIC] = float(recall[minority])
    return result


def _check(labels: np.ndarray, probabilities: np.ndarray) -> None:
    """Raise ``ValueError`` unless ``labels`` (N,) and ``probabilities`` (N, K >= 2) fit."""
    if probabilities.ndim != 2 or probabilities.shape[1] < 2:
        raise ValueError(
            f"probabilities must be (N, K) with K >= 2 classes, got shape {probabilities.shape}"
        )
    if labels.ndim != 1 or len(labels) != len(probabilities):
        raise ValueError(
            f"labels must be (N,) with one label per row of probabilities, got shape "
            f"{labels.shape} for probabilities of shape {probabilities.shape}"
        )
    if not len(labels):
        raise ValueError("cannot score an empty set")
    k = probabilities.shape[1]
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= k:
        raise ValueError(f"labels must be integers in 0..{k - 1}, got {np.unique(labels)}")
    if not np.isfinite(probabilities).all() or not np.allclose(probabilities.sum(axis=1), 1):
        raise ValueError("probabilities must be finite and each row must sum to 1")

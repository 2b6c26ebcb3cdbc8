"""Classification metrics and threshold choice, checked against scikit-learn and by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    f1_score,
    recall_score,
    roc_auc_score,
)

from synthmed.eval.metrics import (
    BINARY_METRICS,
    METRICS,
    choose_threshold,
    classification_metrics,
)


def softmax_rows(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(n,)`` labels with every class present and ``(n, k)`` probabilities leaning to them."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % k
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[labels]
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return labels, probabilities


def sklearn_scores(labels: np.ndarray, decisions: np.ndarray) -> dict[str, float]:
    return {
        "balanced_accuracy": balanced_accuracy_score(labels, decisions),
        "macro_f1": f1_score(labels, decisions, average="macro"),
        "accuracy": accuracy_score(labels, decisions),
    }


@pytest.mark.parametrize("threshold", [None, 0.3, 0.7])
def test_binary_matches_sklearn(threshold: float | None) -> None:
    labels, probabilities = softmax_rows(30, 2, seed=0)
    result = classification_metrics(labels, probabilities, threshold)
    decisions = (probabilities[:, 1] >= (0.5 if threshold is None else threshold)).astype(int)
    expected = sklearn_scores(labels, decisions)
    expected["auroc"] = roc_auc_score(labels, probabilities[:, 1])
    expected["sensitivity"] = recall_score(labels, decisions, pos_label=1)
    expected["specificity"] = recall_score(labels, decisions, pos_label=0)
    assert set(result) == set(METRICS + BINARY_METRICS)
    assert result == pytest.approx(expected)


def test_multiclass_matches_sklearn_and_ignores_threshold() -> None:
    labels, probabilities = softmax_rows(30, 3, seed=1)
    result = classification_metrics(labels, probabilities, threshold=0.9)
    expected = sklearn_scores(labels, probabilities.argmax(axis=1))
    expected["auroc"] = roc_auc_score(labels, probabilities, multi_class="ovr", average="macro")
    assert set(result) == set(METRICS)
    assert result == pytest.approx(expected)


def test_sensitivity_specificity_by_hand() -> None:
    # 4 positives: 3 found (TP 3, FN 1); 6 negatives: 4 right (TN 4, FP 2)
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    p1 = np.array([0.9, 0.8, 0.6, 0.2, 0.1, 0.3, 0.4, 0.45, 0.7, 0.55])
    result = classification_metrics(labels, np.stack([1 - p1, p1], axis=1))
    assert result["sensitivity"] == pytest.approx(3 / 4)
    assert result["specificity"] == pytest.approx(4 / 6)
    assert result["balanced_accuracy"] == pytest.approx((3 / 4 + 4 / 6) / 2)
    assert result["accuracy"] == pytest.approx(7 / 10)


def test_minority_sensitivity_is_the_recall_of_the_named_class() -> None:
    labels, probabilities = softmax_rows(30, 3, seed=1)
    decisions = probabilities.argmax(axis=1)
    for minority in range(3):
        result = classification_metrics(labels, probabilities, minority=minority)
        expected = (decisions[labels == minority] == minority).mean()
        assert result["minority_sensitivity"] == pytest.approx(expected)
    assert "minority_sensitivity" not in classification_metrics(labels, probabilities)
    with pytest.raises(ValueError, match="minority must be a class in 0..2"):
        classification_metrics(labels, probabilities, minority=3)


def test_threshold_separable_gives_perfect_balanced_accuracy() -> None:
    labels = np.array([0, 0, 0, 1, 1, 1, 0, 1])
    p1 = np.array([0.05, 0.2, 0.55, 0.6, 0.8, 0.95, 0.25, 0.7])
    threshold = choose_threshold(labels, p1)
    assert threshold == pytest.approx(0.6)  # the only score between the classes
    metrics = classification_metrics(labels, np.stack([1 - p1, p1], axis=1), threshold)
    assert metrics["balanced_accuracy"] == 1.0
    assert classification_metrics(labels, np.stack([1 - p1, p1], axis=1))["accuracy"] < 1.0


def test_threshold_known_cases() -> None:
    labels = np.array([0, 0, 1, 1])
    # J = 0.5 at 0.8 and at 0.35: the tie goes to 0.35, closer to 0.5
    assert choose_threshold(labels, np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.35)
    # the unique best (J = 1) is 0.15 even though 0.5 is far from it
    assert choose_threshold(labels, np.array([0.01, 0.1, 0.15, 0.2])) == pytest.approx(0.15)


def test_missing_class_auroc_is_nan() -> None:
    p1 = np.array([0.2, 0.7, 0.4])
    result = classification_metrics(np.zeros(3, dtype=int), np.stack([1 - p1, p1], axis=1))
    assert math.isnan(result["auroc"]) and math.isnan(result["sensitivity"])
    assert result["specificity"] == pytest.approx(2 / 3)
    labels, probabilities = softmax_rows(12, 3, seed=2)
    keep = (labels != 2) & (probabilities.argmax(axis=1) != 2)
    result = classification_metrics(labels[keep], probabilities[keep])
    assert math.isnan(result["auroc"])
    decisions = probabilities[keep].argmax(axis=1)
    assert result["balanced_accuracy"] == pytest.approx(
        balanced_accuracy_score(labels[keep], decisions)
    )


@pytest.mark.parametrize(
    ("labels", "probabilities", "message"),
    [
        ([0, 1], [0.3, 0.7], r"\(N, K\)"),
        ([0, 0], [[1.0], [1.0]], "K >= 2"),
        ([0, 1, 1], [[0.5, 0.5], [0.2, 0.8]], "one label per row"),
        ([0, 2], [[0.5, 0.5], [0.2, 0.8]], r"0\.\.1"),
        ([0.0, 1.0], [[0.5, 0.5], [0.2, 0.8]], "integers"),
        ([0, 1], [[0.5, 0.6], [0.2, 0.8]], "sum to 1"),
        (np.zeros(0, dtype=int), np.zeros((0, 2)), "empty"),
    ],
)
def test_shape_errors(labels, probabilities, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        classification_metrics(np.asarray(labels), np.asarray(probabilities))


@pytest.mark.parametrize(
    ("labels", "scores"), [([0, 1, 1], [0.2, 0.8]), ([1, 1], [0.2, 0.8]), ([0, 2], [0.2, 0.8])]
)
def test_threshold_errors(labels, scores) -> None:
    with pytest.raises(ValueError):
        choose_threshold(np.asarray(labels), np.asarray(scores))

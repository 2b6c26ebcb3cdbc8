"""Statistics over seeds: t intervals, paired tests, Holm, resolvable effect and bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from synthmed.eval.stats import (
    bootstrap_ci,
    holm,
    paired_comparison,
    resolvable_difference,
    summarize,
)


def test_summarize_known_sample() -> None:
    result = summarize([1, 2, 3, 4, 5])
    assert result["n"] == 5
    assert result["mean"] == pytest.approx(3.0)
    assert result["sd"] == pytest.approx(1.5811, abs=1e-4)
    assert result["ci_low"] == pytest.approx(1.0368, abs=1e-4)
    assert result["ci_high"] == pytest.approx(4.9632, abs=1e-4)
    wider = summarize([1, 2, 3, 4, 5], confidence=0.99)
    assert wider["ci_low"] < result["ci_low"] and wider["ci_high"] > result["ci_high"]


def test_summarize_single_value_and_nan() -> None:
    single = summarize([0.7])
    assert single["mean"] == 0.7 and single["n"] == 1
    assert all(math.isnan(single[key]) for key in ("sd", "ci_low", "ci_high"))
    assert summarize([1, float("nan"), 2, 3, 4, 5]) == pytest.approx(summarize([1, 2, 3, 4, 5]))
    assert summarize([float("nan")])["n"] == 0 and math.isnan(summarize([])["mean"])


def test_paired_comparison_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    control = rng.normal(0.80, 0.02, 8)
    treatment = control + rng.normal(0.01, 0.01, 8)
    result = paired_comparison(treatment, control)
    gains = treatment - control
    half = stats.t.ppf(0.975, 7) * gains.std(ddof=1) / math.sqrt(8)
    assert result["n"] == 8
    assert result["gain_mean"] == pytest.approx(gains.mean())
    assert result["gain_sd"] == pytest.approx(gains.std(ddof=1))
    assert result["gain_ci_low"] == pytest.approx(gains.mean() - half)
    assert result["gain_ci_high"] == pytest.approx(gains.mean() + half)
    assert result["t_p"] == pytest.approx(stats.ttest_rel(treatment, control).pvalue)
    assert result["wilcoxon_p"] == pytest.approx(stats.wilcoxon(treatment, control).pvalue)


def test_paired_comparison_identical_inputs() -> None:
    values = [0.8, 0.82, 0.79, 0.81]
    result = paired_comparison(values, values)
    assert result["gain_mean"] == 0 and result["gain_sd"] == 0 and result["n"] == 4
    assert math.isnan(result["wilcoxon_p"]) and math.isnan(result["t_p"])


def test_paired_comparison_known_shift_and_nan_pairs() -> None:
    control = np.array([0.70, 0.75, 0.72, 0.80, 0.78, 0.74, 0.71, 0.77])
    noise = np.array([0.002, -0.001, 0.001, -0.002, 0.0, 0.001, -0.001, 0.002])
    result = paired_comparison(control + 0.05 + noise, control)
    assert result["gain_mean"] == pytest.approx(0.05 + noise.mean())
    assert 0 < result["gain_ci_low"] < 0.05 < result["gain_ci_high"]
    assert result["t_p"] < 1e-6 and result["wilcoxon_p"] < 0.01
    with_nan = paired_comparison([1.0, np.nan, 3.0, 4.75], [0.5, 1.0, np.nan, 4.0])
    assert with_nan["n"] == 2 and with_nan["gain_mean"] == pytest.approx(0.625)
    assert paired_comparison([1.0], [0.0])["n"] == 1
    assert math.isnan(paired_comparison([1.0], [0.0])["t_p"])
    with pytest.raises(ValueError, match="same length"):
        paired_comparison([1.0, 2.0], [1.0])


def test_holm_by_hand() -> None:
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    adjusted = holm([0.01, float("nan"), 0.04, 0.03])  # nan is not a test: m = 3
    assert math.isnan(adjusted[1])
    assert [adjusted[i] for i in (0, 2, 3)] == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.6]) == [1.0, 1.0]
    assert holm([0.04]) == [0.04] and holm([]) == []
    with pytest.raises(ValueError):
        holm([0.5, 1.5])


def test_resolvable_difference() -> None:
    assert resolvable_difference(1.0, 10) == pytest.approx(0.99471, abs=1e-5)
    by_n = [resolvable_difference(0.02, n) for n in range(2, 12)]
    assert all(a > b for a, b in zip(by_n, by_n[1:], strict=False))
    assert resolvable_difference(0.04, 5) == pytest.approx(2 * resolvable_difference(0.02, 5))
    assert resolvable_difference(0.02, 5, power=0.9) > resolvable_difference(0.02, 5)
    assert math.isnan(resolvable_difference(0.02, 1))


def auc(a: np.ndarray, b: np.ndarray) -> float:
    """Probability that a value of ``a`` exceeds one of ``b`` (ties count half)."""
    return float((a[:, None] > b[None]).mean() + 0.5 * (a[:, None] == b[None]).mean())


def test_bootstrap_ci() -> None:
    rng = np.random.default_rng(0)
    small, large = rng.normal(1.0, 1.0, 20), rng.normal(1.0, 1.0, 500)
    first = bootstrap_ci(small, None, np.mean, 200, rng=np.random.default_rng(1))
    assert first == bootstrap_ci(small, None, np.mean, 200, rng=np.random.default_rng(1))
    assert first != bootstrap_ci(small, None, np.mean, 200, rng=np.random.default_rng(2))
    assert first[0] < small.mean() < first[1]
    wide = bootstrap_ci(large, None, np.mean, 200, rng=np.random.default_rng(1))
    assert wide[1] - wide[0] < first[1] - first[0]
    members, others = rng.normal(0.0, 1.0, 30), rng.normal(1.0, 1.0, 40)
    low, high = bootstrap_ci(others, members, auc, 200, rng=np.random.default_rng(1))
    assert low < auc(others, members) < high and low > 0.5
    with pytest.raises(ValueError, match="empty"):
        bootstrap_ci(small, np.zeros(0), auc)

"""Statistics over seeds: confidence intervals, paired tests, multiple testing, bootstrap.

A utility run trains each regime once per seed; the seeds pair the regimes (the same seed
gives the same split and initialisation), so a regime is compared with the real-only
baseline by the per-seed differences. ``nan`` marks a value that is missing or undefined
(e.g. an AUROC without both classes): it is dropped, never counted.

Examples:
    >>> summary = summarize([1, 2, 3, 4, 5])
    >>> round(summary["ci_low"], 4), round(summary["ci_high"], 4)
    (1.0368, 4.9632)
    >>> holm([0.01, 0.04, 0.03])
    [0.03, 0.06, 0.06]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats

#: bootstrap resamples of an interval, unless told otherwise
N_BOOT = 1000


def summarize(values: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
    """Mean, sample sd and Student-t confidence interval of the non-nan values.

    The interval is ``mean ± t_{(1 + confidence) / 2, n - 1} * sd / sqrt(n)``.

    Args:
        values: one value per seed; ``nan`` values are dropped.
        confidence: the interval's coverage, in ``(0, 1)``.

    Returns:
        ``mean``, ``sd`` (``ddof=1``), ``n`` (the values kept), ``ci_low`` and ``ci_high``;
        ``sd`` and the interval are ``nan`` when ``n < 2``, everything but ``n`` when ``n == 0``.
    """
    _check_fraction("confidence", confidence)
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    x = x[~np.isnan(x)]
    n = len(x)
    mean = float(x.mean()) if n else np.nan
    if n < 2:
        return {"mean": mean, "sd": np.nan, "n": n, "ci_low": np.nan, "ci_high": np.nan}
    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1) * sd / np.sqrt(n))
    return {"mean": mean, "sd": sd, "n": n, "ci_low": mean - half, "ci_high": mean + half}


def paired_comparison(
    treatment: Sequence[float], control: Sequence[float], confidence: float = 0.95
) -> dict[str, float]:
    """Compare two regimes run on the same seeds through ``gain = treatment - control``.

    Args:
        treatment, control: one value per seed, paired by index; a pair with ``nan`` on
            either side is dropped.
        confidence: the coverage of the gain's t interval, in ``(0, 1)``.

    Returns:
        ``gain_mean``, ``gain_sd``, ``gain_ci_low``, ``gain_ci_high`` (as :func:`summarize`
        of the gains), ``t_p`` (two-sided ``scipy.stats.ttest_rel``), ``wilcoxon_p``
        (two-sided ``scipy.stats.wilcoxon`` signed-rank test, zero gains dropped) and ``n``
        (pairs kept). Both p-values are ``nan`` when ``n < 2`` or every gain is 0.

    Raises:
        ValueError: the two sequences differ in length.
    """
    t = np.asarray(treatment, dtype=np.float64).reshape(-1)
    c = np.asarray(control, dtype=np.float64).reshape(-1)
    if t.shape != c.shape:
        raise ValueError(f"paired values must have the same length, got {len(t)} and {len(c)}")
    keep = ~(np.isnan(t) | np.isnan(c))
    t, c = t[keep], c[keep]
    gain = summarize(t - c, confidence)
    t_p = wilcoxon_p = np.nan
    if len(t) >= 2 and (t != c).any():
        t_p = float(stats.ttest_rel(t, c).pvalue)
        try:
            wilcoxon_p = float(stats.wilcoxon(t - c).pvalue)
        except ValueError:  # too few non-zero gains in some scipy versions
            wilcoxon_p = np.nan
    return {
        "gain_mean": gain["mean"],
        "gain_sd": gain["sd"],
        "gain_ci_low": gain["ci_low"],
        "gain_ci_high": gain["ci_high"],
        "t_p": t_p,
        "wilcoxon_p": wilcoxon_p,
        "n": gain["n"],
    }


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the order given.

    With ``m`` non-nan p-values sorted ascending, the ``i``-th (from 0) becomes
    ``max_{j <= i} (m - j) * p_(j)``, capped at 1. ``nan`` stays ``nan`` and does not count in
    ``m``. Reject at level ``alpha`` where the adjusted value is ``<= alpha``.

    Raises:
        ValueError: a p-value outside ``[0, 1]``.
    """
    p = np.asarray(p_values, dtype=np.float64).reshape(-1)
    valid = ~np.isnan(p)
    if ((p[valid] < 0) | (p[valid] > 1)).any():
        raise ValueError(f"p-values must be in [0, 1], got {p[valid].tolist()}")
    order = np.flatnonzero(valid)[np.argsort(p[valid], kind="stable")]
    m = len(order)
    adjusted = p.copy()
    adjusted[order] = np.minimum(np.maximum.accumulate((m - np.arange(m)) * p[order]), 1.0)
    return adjusted.tolist()


def resolvable_difference(
    sd_of_differences: float, n: int, alpha: float = 0.05, power: float = 0.8
) -> float:
    """The smallest mean paired difference that ``n`` seeds detect with the given power.

    For a two-sided paired t-test at level ``alpha``, approximately
    ``(t_{1 - alpha/2, n-1} + t_{power, n-1}) * sd / sqrt(n)``: smaller gains are within
    the noise of the seeds.

    Args:
        sd_of_differences: the sd of the per-seed differences (e.g. ``gain_sd``).
        n: number of seeds (pairs).
        alpha: the test's level, in ``(0, 1)``.
        power: the wanted power, in ``(0, 1)``.

    Returns:
        The difference, in the metric's units; ``nan`` when ``n < 2``.
    """
    _check_fraction("alpha", alpha)
    _check_fraction("power", power)
    if n < 2:
        return np.nan
    quantiles = stats.t.ppf(1 - alpha / 2, n - 1) + stats.t.ppf(power, n - 1)
    return float(quantiles * sd_of_differences / np.sqrt(n))


def bootstrap_ci(
    values_a: np.ndarray,
    values_b: np.ndarray | None,
    statistic: Callable[..., float],
    n_boot: int = N_BOOT,
    confidence: float = 0.95,
    rng: np.random.Generator | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(a)`` or ``statistic(a, b)``.

    Each of the ``n_boot`` resamples draws ``len(a)`` rows of ``a`` with replacement (and,
    when ``b`` is given, independently ``len(b)`` rows of ``b``), e.g. for the AUC between
    member and non-member distances.

    Args:
        values_a: ``(N_a, ...)`` the first sample, resampled along axis 0.
        values_b: ``(N_b, ...)`` an independent second sample, or ``None``.
        statistic: ``f(a) -> float`` or ``f(a, b) -> float``.
        n_boot: number of resamples, at least 1.
        confidence: the interval's coverage, in ``(0, 1)``.
        rng: the source of randomness; the same generator state gives the same interval.
            ``None`` uses ``np.random.default_rng(0)``.

    Returns:
        ``(low, high)``: the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles
        of the resampled statistic.

    Raises:
        ValueError: an empty sample or ``n_boot < 1``.
    """
    _check_fraction("confidence", confidence)
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    a = np.asarray(values_a)
    b = None if values_b is None else np.asarray(values_b)
    if not len(a) or (b is not None and not len(b)):
        raise ValueError("cannot bootstrap an empty sample")
    rng = np.random.default_rng(0) if rng is None else rng
    draws = np.empty(n_boot)
    for i in range(n_boot):
        resample_a = a[rng.integers(0, len(a), len(a))]
        if b is None:
            draws[i] = statistic(resample_a)
        else:
            draws[i] = statistic(resample_a, b[rng.integers(0, len(b), len(b))])
    low, high = np.quantile(draws, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(low), float(high)


def _check_fraction(name: str, value: float) -> None:
    """Raise ``ValueError`` unless ``0 < value < 1``."""
    if not 0 < value < 1:
        raise ValueError(f"{name} must be between 0 and 1 (exclusive), got {value}")

"""Intensity mappings between original units (HU, scanner units, uint8) and model space [-1, 1].

A mapping is a pair ``(low, high)``: ``low`` goes to -1, ``high`` to +1, values outside are
clipped. ``low > high`` is an inverted mapping (DICOM MONOCHROME1).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from synthmed.errors import InputError

# CT windows as (center, width) in HU; the usual radiology presets.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "brain": (40.0, 80.0),
    "lung": (-600.0, 1500.0),
    "abdomen": (40.0, 400.0),
    "bone": (400.0, 1800.0),
}

DEFAULT_PERCENTILES = (0.5, 99.5)
# Model-space pixels at or below this are background (readers clip the background of scans
# to -1).
FOREGROUND_FLOOR = -1.0 + 1e-3
# Foreground of a masked scan darker than its low percentile is clipped to this, not to -1,
# so it stays foreground (CSF on a brain T1, which is the brightest tissue on T2).
TISSUE_FLOOR = -1.0 + 2e-3


def window_range(center: float, width: float) -> tuple[float, float]:
    """``(low, high)`` of a window given by center and width: finite, ``low < high``."""
    if not width > 0:
        raise InputError(f"window width must be positive, got {width}")
    low, high = center - width / 2.0, center + width / 2.0
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise InputError(f"window {center:g},{width:g} is unusable: its ends are infinite or "
                         "equal in floating point")
    return low, high


def parse_window(spec: str) -> tuple[float, float]:
    """A preset name (``brain``, ``lung``, ``abdomen``, ``bone``) or ``CENTER,WIDTH`` -> range."""
    if spec.lower() in CT_WINDOWS:
        return window_range(*CT_WINDOWS[spec.lower()])
    try:
        center, width = (float(part) for part in spec.split(","))
    except ValueError:
        raise InputError(
            f"unknown window {spec!r}: use one of {', '.join(CT_WINDOWS)} or CENTER,WIDTH"
        ) from None
    return window_range(center, width)


def percentile_range(
    values: np.ndarray,
    mask: np.ndarray | None = None,
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
) -> tuple[float, float]:
    """``(low, high)`` at the given percentiles of ``values`` (inside ``mask`` when given).

    A constant input gets a range as :func:`widened` makes it.
    """
    selected = values[mask] if mask is not None and mask.any() else values.reshape(-1)
    low, high = np.percentile(selected, percentiles)
    return widened(float(low), float(high))


def widened(low: float, high: float) -> tuple[float, float]:
    """``(low, high)``, a unit wide when ``high <= low`` (a constant input), so the mapping
    stays invertible; at least one float step wide, for values so large that 1 is lost."""
    if high <= low:
        high = max(low + 1.0, float(np.nextafter(low, np.inf)))
    return low, high


def to_model_space(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map original values to float32 in ``[-1, 1]`` (clipped)."""
    scaled = (values.astype(np.float64) - low) / (high - low) * 2.0 - 1.0
    return np.clip(scaled, -1.0, 1.0).astype(np.float32)


def masked_to_model_space(values: np.ndarray, mask: np.ndarray, low: float,
                          high: float) -> np.ndarray:
    """:func:`to_model_space` of an image whose foreground is ``mask`` (same shape): pixels
    outside it become -1 and pixels inside it stay at or above :data:`TISSUE_FLOOR`, so
    tissue darker than ``low`` is not mistaken for background."""
    scaled = to_model_space(values, low, high)
    return np.where(mask, np.maximum(scaled, TISSUE_FLOOR), -1.0).astype(np.float32)


def to_original(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Inverse of :func:`to_model_space` for values in ``[-1, 1]``."""
    return low + (values.astype(np.float64) + 1.0) / 2.0 * (high - low)


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Model-space values in [-1, 1] as display pixels 0..255 (clipped, rounded)."""
    return np.rint((np.clip(images, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def require_finite(values: np.ndarray, path: str | Path) -> None:
    """Raise an :class:`InputError` naming ``path`` when ``values`` holds NaN or inf."""
    if not np.isfinite(values).all():
        bad = int((~np.isfinite(values)).sum())
        raise InputError(f"{bad} pixel(s) are NaN or infinite", path)


def foreground_mask(volume: np.ndarray) -> np.ndarray:
    """Boolean mask of the body / brain in an image or volume.

    When one value fills at least 10 % of the voxels (the background of a skull-stripped or
    masked scan), the foreground is everything else; otherwise it is everything above an
    Otsu threshold (air around a CT or an unmasked MR).
    """
    values, counts = np.unique(volume, return_counts=True)
    if len(values) == 1:  # a constant volume is all foreground (no histogram to cut at 1e30)
        return np.ones(volume.shape, bool)
    most_common = values[np.argmax(counts)]
    if counts.max() >= 0.1 * volume.size:
        return volume != most_common
    return volume > otsu_threshold(volume)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold: the cut that maximises the between-class variance of a histogram."""
    hist, edges = np.histogram(values, bins=bins)
    centers = (edges[:-1] + edges[1:]) / 2.0
    weight_below = np.cumsum(hist)
    weight_above = weight_below[-1] - weight_below
    mass_below = np.cumsum(hist * centers)
    mean_below = mass_below / np.maximum(weight_below, 1)
    mean_above = (mass_below[-1] - mass_below) / np.maximum(weight_above, 1)
    between = weight_below * weight_above * (mean_below - mean_above) ** 2
    return float(centers[np.argmax(between)])


def foreground_quantiles(images: np.ndarray, levels: int = 101) -> np.ndarray:
    """Quantiles ``(levels,)`` at ``linspace(0, 1, levels)`` of the model-space pixels of
    ``images`` above :data:`FOREGROUND_FLOOR` (float64, non-decreasing): a domain's intensity
    distribution, for histogram matching."""
    values = np.asarray(images)
    values = values[values > FOREGROUND_FLOOR]
    if values.size == 0:
        raise InputError("no foreground pixels: every pixel is at the background value -1")
    return np.quantile(values, np.linspace(0.0, 1.0, levels))


def match_histogram(
    images: np.ndarray,
    quantiles: np.ndarray,
    invert: bool = False,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Map the foreground of model-space ``images`` ``(N, C, H, W)`` so its quantiles become
    ``quantiles`` (or, with ``invert``, those of ``-images``: a decreasing map); pixels
    outside ``mask`` ``(N, H, W)`` (default: any channel above :data:`FOREGROUND_FLOOR`),
    and all pixels of images without foreground, become -1.

    The images' own quantiles are taken over all their foreground pixels together (the rule
    of :func:`foreground_quantiles`); levels where they repeat a value map to the mean of the
    target quantiles at those levels.
    """
    matched = np.full(images.shape, -1.0, np.float32)
    foreground = images > FOREGROUND_FLOOR
    if not foreground.any():
        return matched
    quantiles = np.asarray(quantiles, np.float64)
    levels = np.linspace(0.0, 1.0, len(quantiles))
    signed = -images if invert else images
    own, tied = np.unique(np.quantile(signed[foreground], levels), return_inverse=True)
    onto = np.bincount(tied, weights=quantiles) / np.bincount(tied)
    inside = np.broadcast_to((foreground.any(1) if mask is None else mask)[:, None],
                             images.shape)
    matched[inside] = np.interp(signed[inside], own, onto)
    return matched


def standardize_groups(images: np.ndarray, groups: np.ndarray,
                       quantiles: np.ndarray) -> np.ndarray:
    """Histogram standardisation (Nyúl & Udupa 2000): each group's images (one subject's
    slices) get the foreground quantiles ``quantiles`` of their domain, so scanners and
    protocols that spread the same tissues differently over [-1, 1] look alike.

    Args:
        images: ``(N, C, H, W)`` model space.
        groups: ``(N,)`` the subject of each image.
        quantiles: ``(Q,)`` at levels ``linspace(0, 1, Q)`` (:func:`foreground_quantiles`).
    """
    standardized = np.empty(images.shape, np.float32)
    for group in np.unique(groups):
        members = groups == group
        standardized[members] = match_histogram(images[members], quantiles)
    return standardized

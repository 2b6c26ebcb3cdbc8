"""Fidelity of synthetic images against real ones, in a feature space given as a callable.

No pretrained weights are downloaded: the feature space is whatever :data:`FeatureFn` the
caller supplies (the harness: a classifier trained on the real training split; a user: their
own TorchScript model through :func:`torchscript_features`), and every report names it.

- FID: Fréchet distance between Gaussians fitted to the two feature sets (MONAI's
  ``FIDMetric``, float64). It is biased upward for small N, so every report also gives the
  real-vs-real *floor*: the same metrics between two seeded halves of the real set.
- KID: unbiased MMD^2 with the kernel ``k(x, y) = (x.y / D + 1)^3``, mean and std over
  random subsets; it can be slightly negative.
- Precision / recall (Kynkäänniemi et al. 2019), density / coverage (Naeem et al. 2020) with
  k nearest neighbours (Euclidean). A ball holds the points *strictly* closer than its radius,
  as in Naeem's reference code, so identical sets give density 1. Distances are exact
  (differences, not the ``|x|^2 + |y|^2 - 2 x.y`` shortcut): the ball-tree search and scipy's
  ``cdist`` give the same bits for the same pair, so a synthetic image that copies a real one
  meets the ball boundaries exactly as that real image does.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.linalg
import torch
from monai.metrics import FIDMetric
from scipy.spatial.distance import cdist
from sklearn.neighbors import NearestNeighbors

from synthmed.augment.dataset import ImageSet
from synthmed.augment.preview import image_grid
from synthmed.errors import InputError
from synthmed.io import atomic_write, json_safe

FeatureFn = Callable[[np.ndarray], np.ndarray]  # images (N, C, H, W) in [-1, 1] -> (N, D) float

METRICS = {"fid": "FID", "kid": "KID (± std)", "precision": "precision", "recall": "recall",
           "density": "density", "coverage": "coverage", "n_real": "N real",
           "n_fake": "N synthetic"}


# -- metrics on feature sets -------------------------------------------------------------------


def fid(real: np.ndarray, fake: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to features ``(N, D)`` and ``(M, D)``.

    MONAI's :class:`~monai.metrics.FIDMetric` on float64 tensors; rounding below zero (e.g.
    for identical sets) is clipped to 0, since FID is a squared distance.

    Examples:
        >>> x = np.random.default_rng(0).normal(size=(50, 4))
        >>> round(fid(x, x + [1.0, 0, 0, 0]), 6)
        1.0
    """
    real, fake = _check_pair(real, fake)
    if real.shape[1] < 2:
        raise InputError(f"FID needs at least 2 feature dimensions, got {real.shape[1]}")
    with warnings.catch_warnings():  # a singular covariance (N <= D) is FID's small-N bias
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        value = FIDMetric()(torch.from_numpy(fake), torch.from_numpy(real))
    return max(float(value), 0.0)


def kid(
    real: np.ndarray,
    fake: np.ndarray,
    subsets: int = 100,
    subset_size: int = 1000,
    rng: np.random.Generator | None = None,
) -> tuple[float, float]:
    """Kernel Inception Distance between features ``(N, D)`` and ``(M, D)``.

    The unbiased MMD^2 with ``k(x, y) = (x.y / D + 1)^3`` on ``subsets`` pairs of random
    subsets of ``m = min(subset_size, N // 2, M // 2)`` points each, drawn without
    replacement: at most half of each set, so the subsets differ and their spread is real.

    Args:
        rng: source of the subsets; ``np.random.default_rng(0)`` when ``None``.

    Returns:
        ``(mean, std)`` over the subsets (population std).
    """
    real, fake = _check_pair(real, fake)
    rng = np.random.default_rng(0) if rng is None else rng
    m = min(subset_size, len(real) // 2, len(fake) // 2)
    if m < 2 or subsets < 1:
        raise InputError(f"KID needs subsets of at least 2 points and at least 1 subset, got "
                         f"{m} points ({len(real)} real, {len(fake)} synthetic), {subsets} subsets")
    dim = real.shape[1]
    values = np.empty(subsets)
    for index in range(len(values)):
        x = real[rng.choice(len(real), m, replace=False)]  # (m, D)
        y = fake[rng.choice(len(fake), m, replace=False)]  # (m, D)
        k_xx = (x @ x.T / dim + 1) ** 3  # (m, m)
        k_yy = (y @ y.T / dim + 1) ** 3
        k_xy = (x @ y.T / dim + 1) ** 3
        within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
        values[index] = within - 2 * k_xy.sum() / (m * m)
    return float(values.mean()), float(values.std())


def prdc(real: np.ndarray, fake: np.ndarray, k: int = 5) -> dict[str, float]:
    """Precision, recall, density and coverage of features ``fake (M, D)`` against ``real (N, D)``.

    The ball of a real point has as radius the distance to its k-th nearest other real point
    (for recall, fake balls likewise among fakes); a ball holds the points strictly closer.

    Returns:
        ``precision``: share of fakes inside some real ball; ``recall``: share of reals inside
        some fake ball; ``density``: ``sum over fakes of (real balls holding it) / (k M)``;
        ``coverage``: share of reals whose nearest fake is inside their own ball.
    """
    real, fake = _check_pair(real, fake)
    _check_counts(len(real), len(fake), k)
    real_radii = _kth_neighbour_distance(real, k)  # (N,)
    fake_radii = _kth_neighbour_distance(fake, k)  # (M,)
    in_real_balls = _ball_counts(real, real_radii, fake)  # (M,)
    in_fake_balls = _ball_counts(fake, fake_radii, real)  # (N,)
    nearest_fake = _neighbours(fake, 1).kneighbors(real)[0][:, 0]  # (N,)
    return {
        "precision": float((in_real_balls > 0).mean()),
        "recall": float((in_fake_balls > 0).mean()),
        "density": float(in_real_balls.sum() / (k * len(fake))),
        "coverage": float((nearest_fake < real_radii).mean()),
    }


def fidelity_metrics(
    real: np.ndarray, fake: np.ndarray, k: int = 5, rng: np.random.Generator | None = None
) -> dict[str, float]:
    """FID, KID, precision, recall, density and coverage of features ``(M, D)`` vs ``(N, D)``.

    Args:
        k: nearest neighbours for precision / recall / density / coverage; both sides need at
            least ``k + 1`` points.
        rng: for the KID subsets (``np.random.default_rng(0)`` when ``None``).

    Returns:
        ``{fid, kid, kid_std, precision, recall, density, coverage, n_real, n_fake}``.
    """
    real, fake = _check_pair(real, fake)
    _check_counts(len(real), len(fake), k)
    kid_mean, kid_std = kid(real, fake, rng=rng)
    return {"fid": fid(real, fake), "kid": kid_mean, "kid_std": kid_std, **prdc(real, fake, k),
            "n_real": len(real), "n_fake": len(fake)}


def _check_pair(real: np.ndarray, fake: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both feature sets as float64 ``(N, D)``, ``(M, D)`` with the same finite D."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise InputError(f"features must be (N, D) and (M, D), got {real.shape} and {fake.shape}")
    if not (np.isfinite(real).all() and np.isfinite(fake).all()):
        raise InputError("features contain NaN or inf")
    return real, fake


def _check_counts(n_real: int, n_fake: int, k: int) -> None:
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}")
    if min(n_real, n_fake) < k + 1:
        raise InputError(f"fidelity metrics with k = {k} need at least {k + 1} images on each "
                         f"side, got {n_real} real and {n_fake} synthetic")


def _kth_neighbour_distance(points: np.ndarray, k: int) -> np.ndarray:
    """``(N,)`` distance of each point to its k-th nearest *other* point."""
    distances, _ = _neighbours(points, k).kneighbors()  # (N, k), the point itself left out
    return distances[:, k - 1]


def _neighbours(points: np.ndarray, k: int) -> NearestNeighbors:
    """A k-nearest-neighbour search over ``points (N, D)`` with exact Euclidean distances."""
    return NearestNeighbors(n_neighbors=k, algorithm="ball_tree").fit(points)


def _ball_counts(centres: np.ndarray, radii: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``(P,)`` how many balls ``(centres (N, D), radii (N,))`` strictly hold each point."""
    rows = max(1, 2**23 // len(centres))  # distance chunks of at most 64 MiB
    return np.concatenate([
        (cdist(points[start:start + rows], centres) < radii[None, :]).sum(axis=1)  # (rows,)
        for start in range(0, len(points), rows)
    ])


# -- images -----------------------------------------------------------------------------------


@dataclass
class FidelityReport:
    """Fidelity of a synthetic set against a real one, in one named feature space.

    Args:
        extractor: the name of the feature space.
        overall: :func:`fidelity_metrics` of synthetic vs real.
        floor: the same between two seeded halves of the real set (stratified by class when
            labelled): what a perfect generator scores at this N.
        per_class: ``class name -> {"synthetic": metrics, "floor": metrics}`` for classes with
            enough images on both sides (only when both sets are labelled).
        skipped_classes: classes of either set left out of ``per_class`` (too few images).
    """

    extractor: str
    overall: dict[str, float]
    floor: dict[str, float]
    per_class: dict[str, dict[str, dict[str, float]]]
    skipped_classes: list[str]

    def to_json(self) -> dict[str, Any]:
        """The report as JSON values; non-finite numbers become ``None``."""
        return json_safe({
            "extractor": self.extractor,
            "overall": self.overall,
            "floor": self.floor,
            "per_class": self.per_class,
            "skipped_classes": self.skipped_classes,
            "notes": {
                "floor": "real vs real: two seeded halves of the real set; FID is biased for "
                         "small N, so compare with the floor, not with 0",
                "floor_n": "n_real and n_fake of a floor are the sizes of the two real halves",
                "kid": "unbiased MMD^2 estimate: can be slightly negative",
            },
        })

    def to_markdown(self) -> str:
        """A table: overall, floor and per-class rows; columns FID, KID, P, R, D, C and N."""
        rows = [("synthetic vs real", self.overall), ("real vs real (floor)", self.floor)]
        for name, entry in self.per_class.items():
            rows += [(f"{name}: synthetic vs real", entry["synthetic"]),
                     (f"{name}: real vs real (floor)", entry["floor"])]
        lines = [
            "# Fidelity",
            "",
            f"Feature space: **{self.extractor}**. FID is biased upward for small N: compare the "
            "synthetic-vs-real rows with the real-vs-real floor (two seeded halves of the real "
            "set, stratified by class), not with 0. The floor's halves hold half the real "
            "images, which raises it a little; its N columns are the sizes of the two halves. "
            "KID is unbiased and can be slightly negative.",
            "",
            "| | " + " | ".join(METRICS.values()) + " |",
            "|---" * (len(METRICS) + 1) + "|",
        ]
        lines += [f"| {label} | " + " | ".join(_cells(metrics)) + " |" for label, metrics in rows]
        if self.skipped_classes:
            lines += ["", "Classes without a per-class row (too few images on one side): "
                      + ", ".join(self.skipped_classes) + "."]
        return "\n".join(lines) + "\n"


def evaluate_fidelity(
    real: ImageSet,
    synthetic: ImageSet,
    features: FeatureFn,
    extractor: str,
    *,
    k: int = 5,
    seed: int = 0,
) -> FidelityReport:
    """Fidelity of ``synthetic`` against ``real`` in the feature space of ``features``.

    Features of each set are computed once, by one call of ``features`` (which batches).
    Per-class rows match classes by *name* (the two sets may order ``class_names``
    differently) and need at least ``2 (k + 1)`` real images (for the floor) and ``k + 1``
    synthetic ones.

    Args:
        features: images ``(N, C, H, W)`` in [-1, 1] -> features ``(N, D)``.
        extractor: the name of the feature space, stated in the report.
        k: nearest neighbours for precision / recall / density / coverage.
        seed: the real-vs-real split and the KID subsets.
    """
    if len(real) < 2 * (k + 1) or len(synthetic) < k + 1:
        raise InputError(f"fidelity with k = {k} needs at least {2 * (k + 1)} real images (two "
                         f"halves for the real-vs-real floor) and {k + 1} synthetic ones, got "
                         f"{len(real)} real and {len(synthetic)} synthetic")
    real_features = checked_features(features, real.images, "real")
    fake_features = checked_features(features, synthetic.images, "synthetic")
    if real_features.shape[1] != fake_features.shape[1]:
        raise InputError(f"the feature extractor gave {real_features.shape[1]} features per real "
                         f"image but {fake_features.shape[1]} per synthetic image")

    def metrics(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
        return fidelity_metrics(a, b, k, rng=np.random.default_rng(seed))

    overall = metrics(real_features, fake_features)
    first, second = _halves(real.labels, seed)  # unlabelled items (-1) form one stratum
    floor = metrics(real_features[first], real_features[second])
    per_class: dict[str, dict[str, dict[str, float]]] = {}
    skipped: list[str] = []
    if real.is_labelled and synthetic.is_labelled:
        names = list(real.class_names)
        names += [name for name in synthetic.class_names if name not in names]
        for name in names:
            in_real = _class_mask(real, name)
            in_fake = _class_mask(synthetic, name)
            if in_real.sum() < 2 * (k + 1) or in_fake.sum() < k + 1:
                skipped.append(name)
                continue
            class_real = real_features[in_real]
            first, second = _halves(np.zeros(len(class_real), np.int64), seed)
            per_class[name] = {"synthetic": metrics(class_real, fake_features[in_fake]),
                               "floor": metrics(class_real[first], class_real[second])}
    return FidelityReport(extractor, overall, floor, per_class, skipped)


def checked_features(features: FeatureFn, images: np.ndarray, what: str) -> np.ndarray:
    """``features(images)`` checked: float64 ``(N, D)``, finite."""
    values = np.asarray(features(images), np.float64)
    if values.ndim != 2 or len(values) != len(images):
        raise InputError(f"the feature extractor returned shape {values.shape} for "
                         f"{len(images)} {what} images; expected ({len(images)}, D)")
    if not np.isfinite(values).all():
        raise InputError(f"the feature extractor returned NaN or inf for {what} images")
    return values


def _halves(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint index sets of ``labels (N,)``, stratified by label, sizes differing by <= 1.

    Each class's indices are shuffled with ``seed``, the classes joined, and the positions
    dealt alternately to the two halves.
    """
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(np.flatnonzero(labels == label))
                            for label in np.unique(labels)])
    return order[0::2], order[1::2]


def _class_mask(imageset: ImageSet, name: str) -> np.ndarray:
    """``(N,)`` bool: the items of the class called ``name`` (none when the set lacks it)."""
    if name not in imageset.class_names:
        return np.zeros(len(imageset), bool)
    return imageset.labels == imageset.class_names.index(name)


def _cells(metrics: dict[str, float]) -> list[str]:
    kid_text = _number(metrics["kid"], ".3g")
    if math.isfinite(metrics["kid_std"]):
        kid_text += f" ± {metrics['kid_std']:.2g}"
    return [_number(metrics["fid"], ".4g"), kid_text,
            *(_number(metrics[name], ".3f") for name in ("precision", "recall", "density",
                                                         "coverage")),
            str(metrics["n_real"]), str(metrics["n_fake"])]


def _number(value: float, spec: str) -> str:
    return format(value, spec) if math.isfinite(value) else "n/a"


# -- gallery ----------------------------------------------------------------------------------


def save_gallery(
    real: ImageSet, synthetic: ImageSet, path: Path, per_class: int = 8, seed: int = 0
) -> None:
    """A PNG of real and synthetic images side by side, written atomically.

    For each class (matched by name; once when either set is unlabelled) a row of up to
    ``per_class`` random real images, then a row of synthetic ones, each with a title.
    """
    rng = np.random.default_rng(seed)
    if real.is_labelled and synthetic.is_labelled:
        names = list(real.class_names)
        names += [name for name in synthetic.class_names if name not in names]
        groups = [(name, _class_mask(real, name), _class_mask(synthetic, name)) for name in names]
    else:
        groups = [("all", np.ones(len(real), bool), np.ones(len(synthetic), bool))]
    rows = []
    for name, in_real, in_fake in groups:
        for kind, imageset, mask in (("real", real, in_real), ("synthetic", synthetic, in_fake)):
            indices = np.flatnonzero(mask)
            chosen = np.sort(rng.choice(indices, min(per_class, len(indices)), replace=False))
            if len(chosen):
                images = imageset.images[chosen]  # (n, C, H, W), padded with black tiles:
                images = np.concatenate(  # every row as wide as a full one
                    [images, np.full((per_class - len(chosen), *images.shape[1:]), -1.0)]
                )
                rows.append((f"{name}: {kind} ({len(chosen)} of {len(indices)})", images))
    if not rows:
        raise InputError("nothing to show: both image sets are empty")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(rows), 1, figsize=(per_class * 1.1, 1.3 * len(rows) + 0.2),
                                squeeze=False)
    for axis, (title, images) in zip(axes[:, 0], rows, strict=True):
        grid = image_grid(images, columns=per_class)
        axis.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=255)
        axis.set_title(title, fontsize=9, loc="left")
        axis.axis("off")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    atomic_write(Path(path), buffer.getvalue())


# -- a user's own feature extractor -------------------------------------------------------------


def torchscript_features(path: Path, batch_size: int = 256) -> FeatureFn:
    """A :data:`FeatureFn` from a TorchScript file, e.g. Inception weights exported locally.

    The module takes ``(B, C, H, W)`` float32 in [-1, 1] and returns ``(B, D)`` or
    ``(B, D, 1, 1)`` (flattened); it runs on the CPU in eval mode, ``batch_size`` images a
    call. Loading and running it executes the file author's code: only use files you trust.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("no such TorchScript file", path)
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as error:  # torch raises RuntimeError, ValueError ... for non-TorchScript
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error)
        raise InputError(f"is not a TorchScript file ({first_line})", path) from None
    module.eval()

    def features(images: np.ndarray) -> np.ndarray:
        outputs = []
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                batch = torch.from_numpy(
                    np.ascontiguousarray(images[start:start + batch_size], np.float32)
                )  # (B, C, H, W)
                output = module(batch)
                if not isinstance(output, torch.Tensor) or not (
                    output.ndim == 2 or (output.ndim == 4 and output.shape[2:] == (1, 1))
                ) or len(output) != len(batch):
                    shape = (tuple(output.shape) if isinstance(output, torch.Tensor)
                             else type(output).__name__)
                    raise InputError(f"returned {shape} for a batch of shape "
                                     f"{tuple(batch.shape)}; expected (B, D) or (B, D, 1, 1)",
                                     path)
                outputs.append(output.reshape(len(batch), -1).double().numpy())  # (B, D)
        return np.concatenate(outputs)

    return features

"""Paired evaluation of a contrast translator (e.g. MR T1 -> T2) against the true target.

Each :class:`VolumePair` holds a source and its truth on the same voxel grid. Both are
normalised as the readers do (own foreground percentiles, then ``[-1, 1]``), cut into
display-oriented slices, and every method's model-space output is put back on the *truth's*
original scale with the truth's own ``(low, high)`` (the same mapping for every method) and
compared with the truth's original values.

- Masks: :func:`~synthmed.augment.intensity.foreground_mask` of each volume; the evaluation
  mask is source mask | truth mask. Slices whose evaluation-mask fraction is above
  ``min_foreground`` are evaluated.
- Methods: ``synthmed`` (the translator), ``identity`` (the normalised source),
  ``histogram matching`` and ``inverted histogram matching`` (source foreground quantiles
  mapped onto the target domain's training quantiles, the second after negating the source),
  and ``best global intensity map``: a copy of the histogram-matching row with the higher mean
  PSNR over subjects.
- Metrics (MONAI): MAE and PSNR over the evaluation-mask voxels, PSNR peak = the truth's
  ``high - low``; SSIM (11 px Gaussian window, data range ``high - low``) on the whole slice
  and on the evaluation mask's bounding box, padded to at least 11 px per side (no slice is
  skipped). For SSIM, pixels outside the mask take the truth's values, so only the mask is
  scored; the identical background is what inflates whole-slice SSIM.
- Identical images give an infinite PSNR (MONAI's value for a zero MSE). It stays ``inf`` in
  the report and becomes ``null`` in :meth:`TranslationReport.to_json`, since JSON has no inf.
"""

from __future__ import annotations

import glob
import io
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.metrics import MAEMetric, PSNRMetric, SSIMMetric
from PIL import Image

from synthmed.augment.dataset import ImageSet
from synthmed.augment.intensity import (
    FOREGROUND_FLOOR,
    foreground_mask,
    masked_to_model_space,
    match_histogram,
    percentile_range,
    require_finite,
    to_model_space,
    to_original,
)
from synthmed.augment.items import ReadConfig
from synthmed.augment.nifti import display_plane, load_volume
from synthmed.augment.preview import image_grid
from synthmed.augment.readers import read_images
from synthmed.augment.splits import split_by_group
from synthmed.errors import InputError
from synthmed.eval.classifier import ClassifierConfig, train_classifier
from synthmed.eval.fidelity import FidelityReport, evaluate_fidelity
from synthmed.gan.data import group_hash
from synthmed.gan.run import LoadedRun
from synthmed.gan.translate import read_config_of, target_domain, translate_images
from synthmed.io import atomic_write, json_safe, write_json

Translator = Callable[[np.ndarray], np.ndarray]  # (S, 1, H, W) in [-1, 1] -> same shape

SYNTHMED = "synthmed"
IDENTITY = "identity"
MATCHING = "histogram matching"
INVERTED = "inverted histogram matching"
BEST_GLOBAL = "best global intensity map"
METHODS = [SYNTHMED, IDENTITY, MATCHING, INVERTED, BEST_GLOBAL]
METRICS = {"mae": "MAE", "psnr": "PSNR (dB)", "ssim_slice": "SSIM slice", "ssim_bbox": "SSIM bbox"}
SSIM_WINDOW = 11
ERROR_WHITE = 0.25  # panel error maps: an error of this share of high - low or more is white
PANEL_COLUMNS = ("source", "translated", "truth", "|error|")


@dataclass(frozen=True)
class VolumePair:
    """One subject's source and truth volumes on the same voxel grid.

    Args:
        subject: a name for the subject, e.g. its folder name.
        source: ``(X, Y, Z)`` float32 in original units (e.g. T1 scanner units).
        target: ``(X, Y, Z)`` float32 in original units, the truth (e.g. T2).
    """

    subject: str
    source: np.ndarray
    target: np.ndarray


@dataclass
class TranslationReport:
    """Scores of every method, per slice, per subject and over subjects.

    Args:
        methods: method names, the rows of every table.
        per_subject: ``subject -> method -> metric -> value``; MAE and PSNR pooled over the
            masked voxels of the subject's evaluated slices, SSIM the mean over its slices.
        per_slice: one dict per (subject, slice, method): ``subject``, ``slice`` (voxel index
            along the slice axis), ``method`` and the metrics.
        summary: ``method -> metric -> {"mean", "std", "n"}`` over subjects (sample sd; NaN
            when n < 2 or a value is infinite).
        best_global_map: the histogram-matching method copied to ``best global intensity map``.
        panels: ``subject -> (R * 4, 1, H, W)`` float32 in [-1, 1]: for each of R slices, the
            columns source, translated, truth and |translated - truth| in truth units inside
            the evaluation mask (black = 0, white >= ``ERROR_WHITE * (high - low)``); tile it
            with ``image_grid(panel, columns=4)``.
        settings: the evaluation settings and the rules used, as plain values.
        intensity: ``subject -> {"source_low", "source_high", "truth_low", "truth_high"}``.
    """

    methods: list[str]
    per_subject: dict[str, dict[str, dict[str, float]]]
    per_slice: list[dict[str, Any]]
    summary: dict[str, dict[str, dict[str, float]]]
    best_global_map: str
    panels: dict[str, np.ndarray]
    settings: dict[str, Any]
    intensity: dict[str, dict[str, float]]

    def beats_best_global_map(self) -> dict[str, bool]:
        """Per metric, whether the translator's mean over subjects beats the best global map."""
        ours, theirs = self.summary[SYNTHMED], self.summary[BEST_GLOBAL]
        return {
            metric: bool(
                ours[metric]["mean"] < theirs[metric]["mean"]
                if metric == "mae"
                else ours[metric]["mean"] > theirs[metric]["mean"]
            )
            for metric in METRICS
        }

    def to_json(self) -> dict[str, Any]:
        """Everything but the panels as JSON values; non-finite numbers become ``None``."""
        return json_safe({
            "methods": self.methods,
            "best_global_map": self.best_global_map,
            "beats_best_global_map": self.beats_best_global_map(),
            "settings": self.settings,
            "notes": {
                "psnr": "null means infinite: the images are identical inside the mask",
                "summary": "mean and sample sd over subjects; n = number of subjects",
            },
            "intensity": self.intensity,
            "summary": self.summary,
            "per_subject": self.per_subject,
            "per_slice": self.per_slice,
        })

    def to_markdown(self) -> str:
        """A table of the methods (mean ± sd over subjects) and the rules behind it."""
        slices = {m: sum(row["method"] == m for row in self.per_slice) for m in self.methods}
        header = ["method", *METRICS.values(), "N subjects", "N slices"]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for method in self.methods:
            cells = [_format(self.summary[method][metric], metric) for metric in METRICS]
            n = self.summary[method]["mae"]["n"]
            lines.append(f"| {' | '.join([method, *cells, str(n), str(slices[method])])} |")
        settings = self.settings
        low, high = settings["percentiles"]
        wins = self.beats_best_global_map()
        verdict = "; ".join(f"{METRICS[m]}: {'yes' if wins[m] else 'no'}" for m in METRICS)
        text = (
            f"Slices along axis {settings['slice_axis']} whose evaluation mask (source "
            f"foreground | truth foreground) covers more than {settings['min_foreground']:.1%} "
            "of the slice. Every method's model-space output is put on the truth's original "
            f"intensity scale with the truth's own mapping (its {low}-{high} percentiles inside "
            "its foreground); MAE and PSNR use the evaluation-mask voxels, PSNR's peak is that "
            "range, SSIM (MONAI, 11 px Gaussian window) is taken on the whole slice and on the "
            "mask's bounding box padded to at least 11 px, with the background set to the "
            "truth's. Mean ± sample sd over subjects; PSNR inf means identical images.\n\n"
            f"Best global intensity map: {self.best_global_map} (higher mean PSNR). "
            f"Does {SYNTHMED} beat it on the mean over subjects? {verdict}."
        )
        return "# Translation evaluation\n\n" + "\n".join(lines) + "\n\n" + text + "\n"


def evaluate_pairs(
    pairs: list[VolumePair],
    translator: Translator,
    target_quantiles: np.ndarray,
    *,
    slice_axis: int = 2,
    percentiles: tuple[float, float] = (0.5, 99.5),
    min_foreground: float = 0.01,
    panel_slices: int = 3,
) -> TranslationReport:
    """Score a translator and the global-intensity baselines against paired truths.

    Args:
        pairs: subjects with a source and a truth volume on the same grid.
        translator: ``(S, 1, H, W)`` model-space source slices -> the same shape in [-1, 1];
            called once per subject with all its evaluated slices (outputs are clipped to
            [-1, 1]).
        target_quantiles: ``(Q,)`` increasing quantiles at levels ``linspace(0, 1, Q)`` of the
            target domain's training foreground in model space (:func:`foreground_quantiles`).
        slice_axis: voxel axis the volumes are cut along.
        percentiles: foreground percentiles that map each volume to [-1, 1].
        min_foreground: a slice is evaluated when its evaluation-mask fraction is above this.
        panel_slices: evaluated slices shown in each subject's panel, evenly spaced and
            away from the ends (3: the quarter points), fewer when there are fewer slices.

    Raises:
        InputError: mismatched shapes, NaN / inf, a volume that is not 3D or slices under
            11 px, or a subject without an evaluable slice; the subject is named.
        ValueError: bad settings, or a translator output of the wrong shape.
    """
    quantiles = _checked_quantiles(target_quantiles)
    if not pairs:
        raise InputError("no volume pairs to evaluate")
    subjects = [pair.subject for pair in pairs]
    if len(set(subjects)) != len(subjects):
        raise InputError("subject names must be unique: " + ", ".join(subjects))
    if slice_axis not in (0, 1, 2) or not 0 <= min_foreground < 1 or panel_slices < 1:
        raise ValueError("need slice_axis in 0..2, 0 <= min_foreground < 1, panel_slices >= 1")
    per_subject: dict[str, dict[str, dict[str, float]]] = {}
    per_slice: list[dict[str, Any]] = []
    panels: dict[str, np.ndarray] = {}
    intensity: dict[str, dict[str, float]] = {}
    for pair in pairs:
        slices = _prepare(pair, slice_axis, percentiles, min_foreground)
        outputs = _outputs(slices, translator, quantiles)
        per_subject[pair.subject], rows = _score(slices, outputs)
        per_slice.extend(rows)
        panels[pair.subject] = _panel(slices, outputs[SYNTHMED], panel_slices)
        intensity[pair.subject] = {
            "source_low": slices.source_low, "source_high": slices.source_high,
            "truth_low": slices.low, "truth_high": slices.high,
        }
    psnr = {m: np.mean([s[m]["psnr"] for s in per_subject.values()]) for m in (MATCHING, INVERTED)}
    best = INVERTED if psnr[INVERTED] > psnr[MATCHING] else MATCHING
    for scores in per_subject.values():
        scores[BEST_GLOBAL] = dict(scores[best])
    per_slice.extend([{**row, "method": BEST_GLOBAL} for row in per_slice if row["method"] == best])
    summary = {
        method: {m: _stats([s[method][m] for s in per_subject.values()]) for m in METRICS}
        for method in METHODS
    }
    settings = {
        "slice_axis": slice_axis,
        "percentiles": list(percentiles),
        "min_foreground": min_foreground,
        "quantile_levels": len(quantiles),
        "panel_slices": panel_slices,
        "masks": "foreground_mask(source) | foreground_mask(truth)",
        "intensity_scale": "truth original units; model space mapped back with the truth's "
                           "own (low, high)",
        "ssim": {"window": SSIM_WINDOW, "kernel": "gaussian", "sigma": 1.5,
                 "bbox": f"evaluation-mask bounding box padded to >= {SSIM_WINDOW} px",
                 "background": "pixels outside the evaluation mask set to the truth's"},
        "panel_columns": list(PANEL_COLUMNS),
        "panel_error_white": f"{ERROR_WHITE} * (truth_high - truth_low)",
    }
    return TranslationReport(
        METHODS.copy(), per_subject, per_slice, summary, best, panels, settings, intensity
    )


def save_report(report: TranslationReport, out: Path) -> list[Path]:
    """Write ``translation.json``, ``translation.md`` and ``panel_<subject>.png`` into ``out``.

    Panels are grayscale PNGs, one row per slice and the columns of ``PANEL_COLUMNS``;
    characters other than letters, digits, ``.``, ``_`` and ``-`` in a subject name become
    ``_`` in its file name. Every file is written atomically.

    Returns:
        The written paths.
    """
    out = Path(out)
    if not out.is_dir():
        raise InputError("no such folder", out)
    written = [out / "translation.json", out / "translation.md"]
    write_json(written[0], report.to_json())
    atomic_write(written[1], report.to_markdown().encode())
    for subject, panel in report.panels.items():
        path = out / f"panel_{re.sub(r'[^A-Za-z0-9._-]', '_', subject)}.png"
        buffer = io.BytesIO()
        Image.fromarray(image_grid(panel, columns=len(PANEL_COLUMNS))[..., 0]).save(buffer, "PNG")
        atomic_write(path, buffer.getvalue())
        written.append(path)
    return written


@dataclass(frozen=True)
class _Slices:
    """One subject's evaluated slices, display-oriented (``H, W`` = the display axes)."""

    subject: str
    indices: np.ndarray  # (S,) voxel indices along the slice axis
    source: np.ndarray  # (S, 1, H, W) float32 model space
    source_mask: np.ndarray  # (S, H, W) bool
    mask: np.ndarray  # (S, H, W) bool, the evaluation mask
    truth: np.ndarray  # (S, H, W) float64 original units
    low: float  # the truth's mapping
    high: float
    source_low: float
    source_high: float


def _prepare(
    pair: VolumePair, axis: int, percentiles: tuple[float, float], min_foreground: float
) -> _Slices:
    """Check a pair, build its masks and mappings and cut its evaluated slices."""
    source, target = np.asarray(pair.source), np.asarray(pair.target)
    if source.shape != target.shape:
        a, b = "x".join(map(str, source.shape)), "x".join(map(str, target.shape))
        raise InputError(
            f"source is {a} but the truth is {b}: paired evaluation needs the same voxel grid",
            pair.subject,
        )
    if source.ndim != 3:
        raise InputError(f"volumes are {source.ndim}D: paired evaluation needs 3D", pair.subject)
    require_finite(source, f"{pair.subject} (source)")
    require_finite(target, f"{pair.subject} (truth)")
    source_mask, target_mask = foreground_mask(source), foreground_mask(target)
    mask = source_mask | target_mask
    keep = np.flatnonzero(np.moveaxis(mask, axis, 0).mean(axis=(1, 2)) > min_foreground)
    if keep.size == 0:
        raise InputError(
            f"no slice along axis {axis} has more than {min_foreground:.1%} foreground",
            pair.subject,
        )

    def cut(volume: np.ndarray) -> np.ndarray:  # (X, Y, Z) -> (S, H, W)
        return np.stack([display_plane(p) for p in np.moveaxis(volume, axis, 0)[keep]])

    source_low, source_high = percentile_range(source, source_mask, percentiles)
    low, high = percentile_range(target, target_mask, percentiles)
    slices = _Slices(
        subject=pair.subject,
        indices=keep,
        source=masked_to_model_space(cut(source), cut(source_mask), source_low,
                                     source_high)[:, None],
        source_mask=cut(source_mask),
        mask=cut(mask),
        truth=cut(target).astype(np.float64),
        low=low,
        high=high,
        source_low=source_low,
        source_high=source_high,
    )
    if min(slices.truth.shape[1:]) < SSIM_WINDOW:
        raise InputError(
            f"slices are {'x'.join(map(str, slices.truth.shape[1:]))}: SSIM needs at least "
            f"{SSIM_WINDOW}x{SSIM_WINDOW} pixels",
            pair.subject,
        )
    if _foreground_values(slices.source).size == 0 or source.min() == source.max():
        raise InputError("the source has no foreground in the evaluated slices", pair.subject)
    return slices


def _outputs(
    slices: _Slices, translator: Translator, quantiles: np.ndarray
) -> dict[str, np.ndarray]:
    """Every computed method's model-space slices ``(S, 1, H, W)``."""
    translated = np.asarray(translator(slices.source))
    if translated.shape != slices.source.shape:
        raise ValueError(
            f"the translator returned shape {translated.shape} for {slices.source.shape}"
        )
    require_finite(translated, f"{slices.subject} (translated)")
    return {
        SYNTHMED: np.clip(translated, -1.0, 1.0).astype(np.float32),
        IDENTITY: slices.source,
        MATCHING: match_histogram(slices.source, quantiles, mask=slices.source_mask),
        INVERTED: match_histogram(slices.source, quantiles, invert=True,
                                  mask=slices.source_mask),
    }


def _score(
    slices: _Slices, outputs: dict[str, np.ndarray]
) -> tuple[dict[str, dict[str, float]], list[dict[str, Any]]]:
    """Per-method subject scores and per-slice rows, on the truth's original scale."""
    peak = slices.high - slices.low
    mask, truth = slices.mask, slices.truth
    boxes = [_bbox(m) for m in mask]
    scores: dict[str, dict[str, float]] = {}
    rows: list[dict[str, Any]] = []
    for method, images in outputs.items():
        original = to_original(images[:, 0], slices.low, slices.high)  # (S, H, W)
        scored = np.where(mask, original, truth)  # SSIM scores the mask, not the background
        mae = [_mae(original[k][mask[k]], truth[k][mask[k]]) for k in range(len(mask))]
        psnr = [_psnr(original[k][mask[k]], truth[k][mask[k]], peak) for k in range(len(mask))]
        whole = _ssim(scored, truth, peak)
        boxed = [_ssim(scored[k][box][None], truth[k][box][None], peak)[0]
                 for k, box in enumerate(boxes)]
        scores[method] = {
            "mae": _mae(original[mask], truth[mask]),
            "psnr": _psnr(original[mask], truth[mask], peak),
            "ssim_slice": float(np.mean(whole)),
            "ssim_bbox": float(np.mean(boxed)),
        }
        rows.extend(
            {"subject": slices.subject, "slice": int(index), "method": method, "mae": mae[k],
             "psnr": psnr[k], "ssim_slice": float(whole[k]), "ssim_bbox": float(boxed[k])}
            for k, index in enumerate(slices.indices)
        )
    return scores, rows


def _mae(predicted: np.ndarray, truth: np.ndarray) -> float:
    """MONAI MAE of two equal-length 1-D arrays (one batch item of ``(1, 1, n)``)."""
    return float(MAEMetric(reduction="none")(_pixels(predicted), _pixels(truth)))


def _psnr(predicted: np.ndarray, truth: np.ndarray, peak: float) -> float:
    """MONAI PSNR of two equal-length 1-D arrays; ``inf`` when they are identical."""
    return float(PSNRMetric(max_val=peak, reduction="none")(_pixels(predicted), _pixels(truth)))


def _pixels(values: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(values, np.float64)).reshape(1, 1, -1)


def _ssim(predicted: np.ndarray, truth: np.ndarray, peak: float) -> np.ndarray:
    """MONAI SSIM of ``(S, h, w)`` images, one value per image ``(S,)``."""
    metric = SSIMMetric(spatial_dims=2, data_range=peak, win_size=SSIM_WINDOW, reduction="none")
    values = metric(torch.from_numpy(predicted[:, None].astype(np.float32)),
                    torch.from_numpy(truth[:, None].astype(np.float32)))
    return values.reshape(-1).numpy().astype(np.float64)


def _bbox(mask: np.ndarray) -> tuple[slice, slice]:
    """The bounding box of a non-empty ``(H, W)`` mask, grown to at least ``SSIM_WINDOW``."""
    box = []
    for axis, length in enumerate(mask.shape):
        hits = np.flatnonzero(mask.any(axis=1 - axis))
        start, stop = int(hits[0]), int(hits[-1]) + 1
        start = max(0, min(start - max(0, SSIM_WINDOW - (stop - start)) // 2,
                           length - SSIM_WINDOW))
        box.append(slice(start, max(stop, start + SSIM_WINDOW)))
    return box[0], box[1]


def _panel(slices: _Slices, translated: np.ndarray, count: int) -> np.ndarray:
    """``(R * 4, 1, H, W)`` rows of source, translated, truth and |error| for R slices."""
    spaced = np.linspace(0, len(slices.indices) - 1, count + 2)[1:-1]  # inner points
    picks = np.unique(spaced.round().astype(int))
    peak = slices.high - slices.low
    error = np.abs(to_original(translated[:, 0], slices.low, slices.high) - slices.truth)
    error = np.clip(error * slices.mask / (ERROR_WHITE * peak), 0.0, 1.0) * 2.0 - 1.0
    truth = to_model_space(slices.truth, slices.low, slices.high)
    columns = [slices.source[:, 0], translated[:, 0], truth, error]  # each (S, H, W)
    panel = np.stack([column[picks] for column in columns], axis=1)  # (R, 4, H, W)
    return panel.reshape(-1, 1, *panel.shape[2:]).astype(np.float32)


def _checked_quantiles(quantiles: np.ndarray) -> np.ndarray:
    """``quantiles`` as float64 ``(Q,)``, Q >= 2, finite and non-decreasing."""
    values = np.asarray(quantiles, np.float64)
    if values.ndim != 1 or len(values) < 2 or not np.isfinite(values).all() \
            or (np.diff(values) < 0).any():
        raise InputError("target quantiles must be a finite, non-decreasing 1-D array of >= 2")
    return values


def _foreground_values(images: np.ndarray) -> np.ndarray:
    """Model-space pixels above ``FOREGROUND_FLOOR``, flattened."""
    images = np.asarray(images)
    return images[images > FOREGROUND_FLOOR]


def _stats(values: list[float]) -> dict[str, float]:
    """Mean, sample sd (NaN when n < 2 or a value is infinite) and n."""
    array = np.asarray(values, np.float64)
    std = float(array.std(ddof=1)) if len(array) > 1 and np.isfinite(array).all() else math.nan
    return {"mean": float(array.mean()), "std": std, "n": len(array)}


def _format(stats: dict[str, float], metric: str) -> str:
    """``mean ± sd`` with a precision that suits the metric."""
    mean, sd = {"mae": (".4g", ".2g"), "psnr": (".2f", ".2f")}.get(metric, (".3f", ".3f"))
    text = "inf" if math.isinf(stats["mean"]) else format(stats["mean"], mean)
    return text if math.isnan(stats["std"]) else f"{text} ± {format(stats['std'], sd)}"


# -- a trained run ---------------------------------------------------------------------------


def evaluate_run(run: LoadedRun, source: str, target: str, direction: str = "a2b",
                 batch_size: int = 8) -> TranslationReport:
    """Evaluate a CycleGAN run on paired NIfTI volumes, with the run's own read options and
    the target domain's training quantiles for the histogram-matching baselines.

    Args:
        source, target: a NIfTI file or a glob each; volumes pair by their folder name
            (``<subject>/t1.nii.gz`` with ``<subject>/t2.nii.gz``); one file each pairs as is.
        direction: ``a2b`` (source is domain A) or ``b2a``.

    Raises:
        InputError: unpaired subjects, or a subject whose images the run was trained on.
    """
    read = read_config_of(run)
    source_files, target_files = _nifti_files(source), _nifti_files(target)
    pairs = _pair_by_subject(source_files, target_files)
    for files in (source_files, target_files):
        for path in files:
            _refuse_training_images(run, path, read)
    volumes = [VolumePair(subject, load_volume(s), load_volume(t)) for subject, s, t in pairs]
    quantiles = np.asarray(target_domain(run, direction)["foreground_quantiles"])
    return evaluate_pairs(
        volumes, lambda slices: translate_images(run, slices, direction, batch_size), quantiles,
        slice_axis=read.slice_axis, percentiles=read.percentiles,
        min_foreground=read.min_foreground)


def _nifti_files(pattern: str) -> list[Path]:
    files = sorted(Path(p) for p in glob.glob(pattern)) if glob.has_magic(pattern) \
        else [Path(pattern)]
    if not files or not all(f.is_file() for f in files):
        missing = next((f for f in files if not f.is_file()), pattern)
        raise InputError("no such NIfTI file", missing)
    return files


def _pair_by_subject(sources: list[Path], targets: list[Path]) -> list[tuple[str, Path, Path]]:
    """``(subject, source, target)`` by folder name; one file each pairs directly."""
    if len(sources) == len(targets) == 1:
        return [(sources[0].parent.name or sources[0].name, sources[0], targets[0])]
    by_subject = {t.parent.name: t for t in targets}
    unpaired = [s for s in sources if s.parent.name not in by_subject]
    if unpaired or len(by_subject) != len(targets) or len(sources) != len(targets):
        raise InputError("source and truth volumes must pair one to one by subject folder "
                         f"({len(sources)} source(s), {len(targets)} truth volume(s))",
                         unpaired[0] if unpaired else None)
    return [(s.parent.name, s, by_subject[s.parent.name]) for s in sources]


def _refuse_training_images(run: LoadedRun, path: Path, read: ReadConfig) -> None:
    """A volume whose subject (its folder) or slices the run trained on."""
    _refuse_seen(run, read_images(path, read), {path.parent.name}, path)


def _refuse_seen(run: LoadedRun, images: ImageSet, subjects: set[str], where: Any) -> None:
    """Images or subjects the run trained on cannot measure how it generalises."""
    hashes = set(images.image_hashes())
    for name, domain in run.training_data.get("domains", {}).items():
        seen = hashes & set(domain.get("image_hashes", []))
        known = {group_hash(s) for s in subjects} & set(domain.get("group_hashes", []))
        if seen or known:
            raise InputError(
                f"{len(seen)} image(s) and {len(known)} subject(s) of it were in the run's "
                f"training domain {name.upper()}: evaluate on held-out subjects (train with "
                "--val-subjects)", where)


# -- without paired truth ---------------------------------------------------------------------


def evaluate_unpaired(run: LoadedRun, source: str, reference: str, direction: str = "a2b",
                      batch_size: int = 8, steps: int = 300) -> dict[str, FidelityReport]:
    """Distribution distance between translated source images and real target-domain images
    when no paired truth exists: the fidelity metrics (FID, KID, precision / recall / density
    / coverage, with the real-vs-real floor) in a learned feature space, for the translator
    and for the untranslated source (the gap a translator has to close).

    The feature space is a domain classifier (source domain vs target domain) trained on the
    source and reference images, with a validation split of slices for model selection;
    translated images are never shown to it.

    Returns:
        ``{"synthmed": report, "identity": report}``.
    """
    read = read_config_of(run)
    source_set, target_set = read_images(source, read), read_images(reference, read)
    for images, where in ((source_set, source), (target_set, reference)):
        _refuse_seen(run, images, set(images.groups.tolist()), where)
    if source_set.size != target_set.size:
        raise InputError(f"source images are {source_set.size} and reference images "
                         f"{target_set.size}: pass --size to the run's training size", reference)
    translated = replace(source_set, images=translate_images(run, source_set.images, direction,
                                                             batch_size))
    domains = ImageSet.concatenate([_labelled(source_set, 0), _labelled(target_set, 1)])
    # a slice-level validation split: it only selects the feature extractor's weights
    by_slice = replace(domains, groups=domains.sources)
    domains = domains.with_splits(split_by_group(by_slice, val_fraction=0.2, test_fraction=0.0))
    train, val = domains.split("train"), domains.split("val")
    classifier = train_classifier(train.images, train.labels, val.images, val.labels, 2,
                                  ClassifierConfig(steps=steps), seed=0)
    name = (f"domain classifier (source vs target domain, small-cnn, {steps} steps) trained on "
            f"the {len(source_set)} source and {len(target_set)} reference images")
    return {method: evaluate_fidelity(_labelled(target_set, -1), _labelled(images, -1),
                                      classifier.features, name)
            for method, images in (("synthmed", translated), ("identity", source_set))}


def _labelled(images: ImageSet, label: int) -> ImageSet:
    """Every image with one label (``-1``: unlabelled) of the classes source / target."""
    return replace(images, labels=np.full(len(images), label, np.int64),
                   class_names=("source", "target") if label >= 0 else ())

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
  the report and becomes ``null`` in
  :meth:`~synthmed.eval.translation_report.TranslationReport.to_json`, since JSON has no inf.
"""

from __future__ import annotations

import glob
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from synthmed.augment.dataset import ImageSet
from synthmed.augment.intensity import (
    DEFAULT_PERCENTILES,
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
from synthmed.augment.readers import read_images
from synthmed.errors import InputError
from synthmed.eval.translation_metrics import (
    METRICS,
    SSIM_WINDOW,
    bounding_box,
    mean_absolute_error,
    peak_snr,
    structural_similarity,
)
from synthmed.eval.translation_report import (
    BEST_GLOBAL,
    IDENTITY,
    INVERTED,
    MATCHING,
    METHODS,
    PANEL_COLUMNS,
    SYNTHMED,
    TranslationReport,
)
from synthmed.gan.cyclegan import TRANSLATE_BATCH
from synthmed.gan.data import group_hash
from synthmed.gan.run import LoadedRun
from synthmed.gan.translate import (
    MapBlend,
    blended_translation,
    fused_runs_record,
    target_domain,
    translate_images,
)

Translator = Callable[[np.ndarray], np.ndarray]  # (S, 1, H, W) in [-1, 1] -> same shape
ERROR_WHITE = 0.25  # panel error maps: an error of this share of high - low or more is white


@dataclass(frozen=True)
class VolumePair:
    """One subject's source and truth volumes on the same voxel grid.

    Args:
        subject: a name for the subject, e.g. its folder name.
        source: ``(X, Y, Z)`` float32 in original units (e.g. T1 scanner units).
        target: ``(X, Y, Z)`` float32 in original units, the truth (e.g. T2).
        translated: ``(X, Y, Z)`` in [-1, 1], the source's model-space translation made
            beforehand (e.g. a multi-planar fusion); scored instead of calling the translator.
    """

    subject: str
    source: np.ndarray
    target: np.ndarray
    translated: np.ndarray | None = None


def evaluate_pairs(
    pairs: list[VolumePair],
    translator: Translator | None,
    target_quantiles: np.ndarray,
    *,
    slice_axis: int = ReadConfig.slice_axis,
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
    min_foreground: float = ReadConfig.min_foreground,
    panel_slices: int = 3,
) -> TranslationReport:
    """Score a translator and the global-intensity baselines against paired truths.

    Args:
        pairs: subjects with a source and a truth volume on the same grid.
        translator: ``(S, 1, H, W)`` model-space source slices -> the same shape in [-1, 1];
            called once per subject without a ``translated`` volume, with all its evaluated
            slices (outputs are clipped to [-1, 1]); ``None`` when every pair has one.
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
    if translator is None and any(pair.translated is None for pair in pairs):
        raise ValueError("without a translator every pair needs its translated volume")
    per_subject: dict[str, dict[str, dict[str, float]]] = {}
    per_slice: list[dict[str, Any]] = []
    panels: dict[str, np.ndarray] = {}
    intensity: dict[str, dict[str, float]] = {}
    for pair in pairs:
        slices = prepare_slices(pair, slice_axis, percentiles, min_foreground)
        outputs = _outputs(slices, translator, quantiles, pair.translated)
        per_subject[pair.subject], rows = score_methods(slices, outputs)
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
    settings = _settings(slice_axis, percentiles, min_foreground, len(quantiles), panel_slices)
    return TranslationReport(
        METHODS.copy(), per_subject, per_slice, summary, best, panels, settings, intensity
    )


def _settings(slice_axis: int, percentiles: tuple[float, float], min_foreground: float,
              quantile_levels: int, panel_slices: int) -> dict[str, Any]:
    """The evaluation settings and the rules used, as plain values."""
    return {
        "slice_axis": slice_axis,
        "percentiles": list(percentiles),
        "min_foreground": min_foreground,
        "quantile_levels": quantile_levels,
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


@dataclass(frozen=True)
class EvaluatedSlices:
    """One subject's evaluated slices, display-oriented (``H, W`` = the display axes)."""

    subject: str
    axis: int  # the slice axis
    indices: np.ndarray  # (S,) voxel indices along the slice axis
    source: np.ndarray  # (S, 1, H, W) float32 model space
    source_mask: np.ndarray  # (S, H, W) bool
    mask: np.ndarray  # (S, H, W) bool, the evaluation mask
    truth: np.ndarray  # (S, H, W) float64 original units
    low: float  # the truth's mapping
    high: float
    source_low: float
    source_high: float


def prepare_slices(
    pair: VolumePair, axis: int, percentiles: tuple[float, float], min_foreground: float
) -> EvaluatedSlices:
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
    if pair.translated is not None and pair.translated.shape != source.shape:
        raise ValueError(f"the translated volume of {pair.subject} is "
                         f"{pair.translated.shape}, not {source.shape}")
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
        return cut_slices(volume, axis, keep)

    source_low, source_high = percentile_range(source, source_mask, percentiles)
    low, high = percentile_range(target, target_mask, percentiles)
    slices = EvaluatedSlices(
        subject=pair.subject,
        axis=axis,
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


def cut_slices(volume: np.ndarray, axis: int, indices: np.ndarray) -> np.ndarray:
    """The display-oriented slices ``(S, H, W)`` of ``volume`` at ``indices`` along ``axis``."""
    return np.stack([display_plane(p) for p in np.moveaxis(volume, axis, 0)[indices]])


def _outputs(
    slices: EvaluatedSlices, translator: Translator | None, quantiles: np.ndarray,
    volume: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Every computed method's model-space slices ``(S, 1, H, W)``; synthmed's cut from the
    translated ``volume`` when there is one."""
    translated = np.asarray(translator(slices.source) if volume is None
                            else cut_slices(volume, slices.axis, slices.indices)[:, None])
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


def score_methods(
    slices: EvaluatedSlices, outputs: dict[str, np.ndarray]
) -> tuple[dict[str, dict[str, float]], list[dict[str, Any]]]:
    """Per-method subject scores and per-slice rows, on the truth's original scale."""
    peak = slices.high - slices.low
    mask, truth = slices.mask, slices.truth
    boxes = [bounding_box(m) for m in mask]
    scores: dict[str, dict[str, float]] = {}
    rows: list[dict[str, Any]] = []
    for method, images in outputs.items():
        original = to_original(images[:, 0], slices.low, slices.high)  # (S, H, W)
        scored = np.where(mask, original, truth)  # SSIM scores the mask, not the background
        mae = [mean_absolute_error(original[k][mask[k]], truth[k][mask[k]])
               for k in range(len(mask))]
        psnr = [peak_snr(original[k][mask[k]], truth[k][mask[k]], peak) for k in range(len(mask))]
        whole = structural_similarity(scored, truth, peak)
        boxed = [structural_similarity(scored[k][box][None], truth[k][box][None], peak)[0]
                 for k, box in enumerate(boxes)]
        scores[method] = {
            "mae": mean_absolute_error(original[mask], truth[mask]),
            "psnr": peak_snr(original[mask], truth[mask], peak),
            "ssim_slice": float(np.mean(whole)),
            "ssim_bbox": float(np.mean(boxed)),
        }
        rows.extend(
            {"subject": slices.subject, "slice": int(index), "method": method, "mae": mae[k],
             "psnr": psnr[k], "ssim_slice": float(whole[k]), "ssim_bbox": float(boxed[k])}
            for k, index in enumerate(slices.indices)
        )
    return scores, rows


def _panel(slices: EvaluatedSlices, translated: np.ndarray, count: int) -> np.ndarray:
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


# -- a trained run ---------------------------------------------------------------------------


def evaluate_run(run: LoadedRun, source: str, target: str, direction: str = "a2b",
                 batch_size: int = TRANSLATE_BATCH, fuse: Sequence[LoadedRun] = (),
                 blend: MapBlend | None = None) -> TranslationReport:
    """Evaluate a CycleGAN run on paired NIfTI volumes, with the run's own read options and
    the target domain's training quantiles for the histogram-matching baselines.

    Args:
        source, target: a NIfTI file or a glob each; volumes pair by their folder name
            (``<subject>/t1.nii.gz`` with ``<subject>/t2.nii.gz``); one file each pairs as is.
        direction: ``a2b`` (source is domain A) or ``b2a``.
        fuse: more runs: score the multi-planar fusion of all the runs
            (:func:`~synthmed.gan.translate.fused_translation`), on ``run``'s slice axis.
        blend: score the translation mixed with a global map of each source volume
            (:class:`~synthmed.gan.translate.MapBlend`).

    Raises:
        InputError: unpaired subjects, or a subject whose images any of the runs trained on.
    """
    read = run.config.data.read_config()
    volumes = paired_volumes((run, *fuse), source, target)
    if fuse or blend:
        volumes = [replace(v, translated=blended_translation(
            (run, *fuse), v.source, direction, batch_size, blend)[0]) for v in volumes]
    quantiles = np.asarray(target_domain(run, direction)["foreground_quantiles"])
    report = evaluate_pairs(
        volumes, lambda slices: translate_images(run, slices, direction, batch_size), quantiles,
        slice_axis=read.slice_axis, percentiles=read.percentiles,
        min_foreground=read.min_foreground)
    if fuse:
        report.settings["fused_with"] = fused_runs_record(fuse)
    if blend:
        report.settings["blend"] = asdict(blend)
    return report


def paired_volumes(runs: Sequence[LoadedRun], source: str, target: str) -> list[VolumePair]:
    """The source and truth volumes of ``source`` and ``target`` (a NIfTI file or a glob each,
    paired by subject folder), refused when any of ``runs`` trained on one of them.

    Raises:
        InputError: a missing file, unpaired subjects, or a subject a run trained on.
    """
    source_files, target_files = _nifti_files(source), _nifti_files(target)
    pairs = _pair_by_subject(source_files, target_files)
    for run in runs:
        for path in (*source_files, *target_files):
            _refuse_training_images(run, path, run.config.data.read_config())
    return [VolumePair(subject, load_volume(s), load_volume(t)) for subject, s, t in pairs]


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
    refuse_seen(run, read_images(path, read), {path.parent.name}, path)


def refuse_seen(run: LoadedRun, images: ImageSet, subjects: set[str], where: Any) -> None:
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

"""The report of the paired translation evaluation: the scores of every method per slice,
per subject and over subjects, as ``translation.json``, a ``translation.md`` table and a panel
image per subject."""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from synthmed.augment.preview import image_grid
from synthmed.errors import InputError
from synthmed.eval.translation_metrics import METRICS
from synthmed.io import atomic_write, json_safe, write_json

SYNTHMED = "synthmed"
IDENTITY = "identity"
MATCHING = "histogram matching"
INVERTED = "inverted histogram matching"
BEST_GLOBAL = "best global intensity map"
METHODS = [SYNTHMED, IDENTITY, MATCHING, INVERTED, BEST_GLOBAL]
PANEL_COLUMNS = ("source", "translated", "truth", "|error|")


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
        fused = settings.get("fused_with", [])
        if fused:
            text += (f"\n\n{SYNTHMED} is a multi-planar fusion: the mean of this run's "
                     f"translation and those of {len(fused)} more (slice axes "
                     f"{', '.join(str(r['slice_axis']) for r in fused)}).")
        blend = settings.get("blend")
        if blend:
            text += (f"\n\n{SYNTHMED} is blended with the {blend['map']} global map of each "
                     f"source volume: {1 - blend['weight']:g} x the translation + "
                     f"{blend['weight']:g} x the map.")
        return "# Translation evaluation\n\n" + "\n".join(lines) + "\n\n" + text + "\n"



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



def _format(stats: dict[str, float], metric: str) -> str:
    """``mean ± sd`` with a precision that suits the metric."""
    mean, sd = {"mae": (".4g", ".2g"), "psnr": (".2f", ".2f")}.get(metric, (".3f", ".3f"))
    text = "inf" if math.isinf(stats["mean"]) else format(stats["mean"], mean)
    return text if math.isnan(stats["std"]) else f"{text} ± {format(stats['std'], sd)}"


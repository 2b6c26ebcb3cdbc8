"""Choose the weight of a map blend (:class:`~synthmed.gan.translate.MapBlend`) on validation
subjects: the translation of each subject is blended with the global map at every weight of
a grid and scored as ``evaluate translation`` scores it; the weight with the best mean PSNR
over the subjects is the one to pass to ``translate --blend-weight``.

The subjects must be ones the runs did not train on (refused otherwise), and they choose
the weight, so their scores at that weight are a validation result, not a test one: score
the chosen weight on other subjects.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from synthmed.errors import InputError
from synthmed.eval.translation import (
    cut_slices,
    paired_volumes,
    prepare_slices,
    score_methods,
)
from synthmed.eval.translation_metrics import METRICS
from synthmed.eval.translation_report import SYNTHMED
from synthmed.gan.cyclegan import TRANSLATE_BATCH
from synthmed.gan.run import LoadedRun
from synthmed.gan.translate import MapBlend, blend_volume, fused_runs_record, fused_translation
from synthmed.io import atomic_write, write_json

#: the map's share of the blend, 0 (the translation alone) to 1 (the map alone)
BLEND_WEIGHTS = tuple(k / 10 for k in range(11))


@dataclass
class BlendSweep:
    """Scores of a translation blended with a global map at each weight.

    Args:
        blend_map: the map (``matching`` or ``inverted``).
        weights: ``(W,)`` increasing weights in [0, 1].
        per_subject: ``subject -> metric -> (W,)`` values, one per weight (MAE and PSNR pooled
            over the subject's masked voxels, SSIM the mean over its slices).
        runs: the translating runs (fingerprint, epoch, slice axis), fused when several.
    """

    blend_map: str
    weights: list[float]
    per_subject: dict[str, dict[str, list[float]]]
    runs: list[dict[str, Any]]

    def mean(self, metric: str) -> list[float]:
        """``(W,)`` the metric's mean over subjects at each weight."""
        return np.mean([s[metric] for s in self.per_subject.values()], axis=0).tolist()

    @property
    def best_weight(self) -> float:
        """The weight with the highest mean PSNR (the smallest of tied ones)."""
        return best_weight(self.weights, self.mean("psnr"))

    def to_json(self) -> dict[str, Any]:
        return {"blend_map": self.blend_map, "weights": self.weights,
                "best_weight": self.best_weight, "chosen_by": "mean PSNR over the subjects",
                "runs": self.runs, "mean": {m: self.mean(m) for m in METRICS},
                "per_subject": self.per_subject}

    def to_markdown(self) -> str:
        subjects = list(self.per_subject)
        lines = [
            f"# Blend weight of the {self.blend_map} map", "",
            f"{len(self.runs)} run(s), fused when several. Each subject's translation is "
            f"mixed as (1 - w) x the translation + w x the {self.blend_map} histogram-matching "
            f"map of its source and scored against its truth. Best mean PSNR over "
            f"{len(subjects)} subject(s): **w = {self.best_weight:g}**. "
            "These subjects chose it: score it on others.", "",
            "| w | mean PSNR (dB) | mean SSIM bbox | mean MAE | "
            + " | ".join(f"{s} PSNR" for s in subjects) + " |",
            "|---" * (4 + len(subjects)) + "|",
        ]
        psnr, ssim, mae = self.mean("psnr"), self.mean("ssim_bbox"), self.mean("mae")
        for k, weight in enumerate(self.weights):
            cells = [f"{weight:g}", f"{psnr[k]:.2f}", f"{ssim[k]:.3f}", f"{mae[k]:.4g}"]
            cells += [f"{self.per_subject[s]['psnr'][k]:.2f}" for s in subjects]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def save(self, out: Path) -> list[Path]:
        """Write ``blend.json`` and ``blend.md`` into the folder ``out``."""
        written = [out / "blend.json", out / "blend.md"]
        write_json(written[0], self.to_json())
        atomic_write(written[1], self.to_markdown().encode())
        return written


def best_weight(weights: Sequence[float], psnr: Sequence[float]) -> float:
    """The weight of the highest PSNR, the smallest of tied ones (less of the map)."""
    return float(weights[int(np.argmax(psnr))])


def checked_weights(weights: Sequence[float]) -> list[float]:
    """At least two distinct weights in [0, 1], sorted.

    Raises:
        InputError: fewer than two distinct weights, or one outside [0, 1] or not finite.
    """
    values = sorted({float(w) for w in weights})
    if len(values) < 2 or not all(0.0 <= w <= 1.0 for w in values):
        raise InputError(f"blend weights must be at least two distinct values in [0, 1], "
                         f"got {', '.join(map(str, weights))}")
    return values


def sweep_blend(run: LoadedRun, source: str, target: str, blend_map: str,
                weights: Sequence[float] = BLEND_WEIGHTS, direction: str = "a2b",
                batch_size: int = TRANSLATE_BATCH, fuse: Sequence[LoadedRun] = ()
                ) -> BlendSweep:
    """Score ``run``'s translation (fused with ``fuse``) of each source volume blended with
    ``blend_map`` at each weight, against its truth, with ``run``'s read options.

    Args:
        source, target: a NIfTI file or a glob each, paired by subject folder
            (:func:`~synthmed.eval.translation.paired_volumes`).

    Raises:
        InputError: bad weights or map, unpaired subjects, or a subject a run trained on.
    """
    weights = checked_weights(weights)
    blends = {w: MapBlend(blend_map, w) for w in weights if w > 0}  # checks the map
    runs = (run, *fuse)
    read = run.config.data.read_config()
    per_subject = {}
    for pair in paired_volumes(runs, source, target):
        translated, _ = fused_translation(runs, pair.source, direction, batch_size)
        mapped = blend_volume(run, pair.source, translated, direction, MapBlend(blend_map, 1.0))
        slices = prepare_slices(pair, read.slice_axis, read.percentiles, read.min_foreground)
        scores: dict[str, list[float]] = {metric: [] for metric in METRICS}
        for weight in weights:
            volume = blends[weight].mix(translated, mapped) if weight > 0 else translated
            cut = cut_slices(np.clip(volume, -1.0, 1.0), slices.axis, slices.indices)[:, None]
            scored, _ = score_methods(slices, {SYNTHMED: cut.astype(np.float32)})
            for metric in METRICS:
                scores[metric].append(scored[SYNTHMED][metric])
        per_subject[pair.subject] = scores
    return BlendSweep(blend_map, weights, per_subject, fused_runs_record(runs))


"""The answer first: the verdict panel at the top of ``synthmed report``.

From the evaluations below a folder it collects, as Markdown bullets, what a reader came for:

- utility (``summary.json``): per fraction, the best synthetic regime against the best regime
  without synthetic images, the gain with its paired 95 % interval, and synthetic only
  against real only;
- fidelity (``fidelity.json``): FID, recall and coverage next to the real-vs-real floor;
- privacy (``privacy.json``): the near-copy share, the closer-to-train share and each
  membership attack's advantage with its interval.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from synthmed.eval.utility_report import BASELINE, headline_verdict

SYNTHETIC_ONLY = "synthetic only"


def verdict_lines(evaluations: list[tuple[str, Path]]) -> list[str]:
    """The verdict as Markdown (a heading and bullets) for ``(name, folder)`` evaluations, or
    no lines when none of them holds a utility, fidelity or privacy result."""
    bullets = []
    for name, folder in evaluations:
        if (folder / "summary.json").is_file():
            bullets += _utility(name, json.loads((folder / "summary.json").read_text()))
        if (folder / "fidelity.json").is_file():
            bullets.append(_fidelity(name, json.loads((folder / "fidelity.json").read_text())))
        if (folder / "privacy.json").is_file():
            bullets.append(_privacy(name, json.loads((folder / "privacy.json").read_text())))
    return ["## Verdict", "", *bullets, ""] if bullets else []


def _utility(name: str, summary: dict[str, Any]) -> list[str]:
    bullets = []
    for fraction, part in summary.items():
        head = part["headline"]
        if not head:
            continue
        metric = head["metric"]
        bullets.append(
            f"- **Does synthetic data help?** `{name}`, real-data fraction {fraction}: the best "
            f"synthetic regime `{head['best_synthetic']}` against the best without synthetic "
            f"images `{head['best_without']}` (both picked on validation): {metric} gain "
            f"{head['gain_mean']:+.3f} "
            f"[{head['gain_ci_low']:+.3f}, {head['gain_ci_high']:+.3f}] over {head['n']:g} "
            f"seeds: synthetic data {headline_verdict(head)}.")
        regimes = part["regimes"]
        if SYNTHETIC_ONLY in regimes:
            alone, real = regimes[SYNTHETIC_ONLY][metric], regimes[BASELINE][metric]
            bullets.append(
                f"- **Synthetic images alone** (fraction {fraction}): {metric} "
                f"{alone['mean']:.3f} [{alone['ci_low']:.3f}, {alone['ci_high']:.3f}] against "
                f"{real['mean']:.3f} with the real images ({alone['mean'] / real['mean']:.2f}x).")
    return bullets


def _fidelity(name: str, report: dict[str, Any]) -> str:
    synthetic, floor = report["overall"], report["floor"]
    return (f"- **Fidelity** `{name}`: FID {synthetic['fid']:.1f} (real-vs-real floor "
            f"{floor['fid']:.1f}), recall {synthetic['recall']:.2f} (floor {floor['recall']:.2f}), "
            f"coverage {synthetic['coverage']:.2f} (floor {floor['coverage']:.2f}).")


def _privacy(name: str, report: dict[str, Any]) -> str:
    pixels = report["dcr"]["pixels"]
    attacks = "; ".join(
        f"{attack} {result['advantage']:+.2f} [{result['advantage_ci'][0]:+.2f}, "
        f"{result['advantage_ci'][1]:+.2f}]" for attack, result in report["membership"].items())
    return (f"- **Privacy** `{name}`: near-copies of training images "
            f"{pixels['near_copy_share']:.1%} of the synthetic ones; closer to a training than "
            f"to a held-out image {pixels['closer_to_train_share']:.2f} (0.5 is ideal); "
            f"membership advantage over the control (95 % CI): {attacks}.")

"""What is in a data set: counts, sizes, intensities, groups, duplicates and leakage."""

from __future__ import annotations

from typing import Any

import numpy as np

from synthmed.augment.dataset import ImageSet
from synthmed.augment.intensity import to_original
from synthmed.augment.splits import duplicate_summary, find_group_leakage


def summarize(imageset: ImageSet) -> dict[str, Any]:
    """A JSON-ready summary of ``imageset`` (see :func:`format_summary` for the text form)."""
    counts = {
        split or "(none)": {
            name: int(np.sum((imageset.splits == split) & (imageset.labels == k)))
            for k, name in enumerate(imageset.class_names)
        } | ({"(unlabelled)": int(np.sum((imageset.splits == split) & (imageset.labels < 0)))}
             if (imageset.labels < 0).any() else {})
        for split in imageset.split_names()
    }
    leakage = find_group_leakage(imageset)
    return {
        "origin": imageset.metadata.get("origin", ""),
        "images": len(imageset),
        "channels": imageset.channels,
        "size": list(imageset.size),
        "modality": imageset.modality,
        "unit": imageset.unit,
        "classes": list(imageset.class_names),
        "counts": counts,
        "groups": int(len(set(imageset.groups.tolist()))),
        "intensity": _intensity_stats(imageset),
        "duplicates": duplicate_summary(imageset),
        "group_leakage": {"groups": len(leakage), "examples": dict(list(leakage.items())[:5])},
        "skipped": imageset.metadata.get("skipped", []),
    }


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as lines of text for a terminal."""
    height, width = summary["size"]
    lines = [
        f"{summary['origin']}: {summary['images']} images, {summary['channels']} channel(s), "
        f"{height}x{width}, modality {summary['modality'] or '?'}, {summary['groups']} groups",
    ]
    classes = summary["classes"] or ["(unlabelled)"]
    lines.append("split      " + "  ".join(f"{name[:18]:>18}" for name in classes) + "   total")
    for split, per_class in summary["counts"].items():
        cells = "  ".join(f"{n:>18}" for n in per_class.values())
        lines.append(f"{split:<10} {cells}   {sum(per_class.values()):>5}")
    model, original = summary["intensity"]["model"], summary["intensity"]["original"]
    lines.append(
        f"intensity: model space mean {model['mean']:.3f} std {model['std']:.3f} "
        f"[{model['min']:.2f}, {model['max']:.2f}]; original units "
        f"[{original['min']:.1f}, {original['max']:.1f}] {summary['unit']}"
    )
    duplicates = summary["duplicates"]
    lines.append(
        f"exact duplicates: {duplicates['groups']} group(s) of identical images "
        f"({duplicates['images']} images); within a split: {duplicates['within_split']}; "
        f"across splits: {duplicates['across_splits']}; label conflicts: "
        f"{duplicates['label_conflicts']}"
    )
    leakage = summary["group_leakage"]
    lines.append(f"group leakage: {leakage['groups']} group(s) in more than one split"
                 + (f", e.g. {leakage['examples']}" if leakage["groups"] else ""))
    if summary["skipped"]:
        lines.append(f"skipped {len(summary['skipped'])} unreadable file(s):")
        lines.extend(f"  {entry['path']}: {entry['problem']}" for entry in summary["skipped"])
    return "\n".join(lines)


def _intensity_stats(imageset: ImageSet) -> dict[str, dict[str, float]]:
    """Model-space mean, std, min and max; the original units' range from each image's own
    extremes (its map back is linear), so no copy of the images is made in float64."""
    images = imageset.images
    flat = images.reshape(len(images), -1)
    extremes = np.stack([flat.min(axis=1), flat.max(axis=1)], axis=1)  # (N, 2)
    original = to_original(extremes, imageset.intensity_low[:, None],
                           imageset.intensity_high[:, None])
    return {
        "model": {"mean": float(images.mean()), "std": float(images.std()),
                  "min": float(images.min()), "max": float(images.max())},
        "original": {"min": float(original.min()), "max": float(original.max())},
    }

"""The markdown table of :mod:`generator_quality`: a row per recipe of one set."""

from __future__ import annotations

import numpy as np

REAL_ONLY = "real only"  # the classifier trained on the real subset
UNSEEN_REAL = "unseen real images"  # a perfect generator: real images outside the subset
HELD_OUT_REAL = "test images (fidelity)"  # a perfect generator's fidelity: test-split images
REFERENCE_ROWS = (REAL_ONLY, UNSEEN_REAL, HELD_OUT_REAL)  # the rows that measure no generator


def print_table(name: str, n: int, rows: dict) -> None:
    """One markdown table per set: a row per recipe, the reference rows first. A row
    measured on several samples shows the means over them, recall and coverage with their
    sd, the black-box attacks with their mean 95 % bootstrap interval."""
    real_test = rows[REAL_ONLY]["auroc"]["test"]["mean"]
    print(f"\n### {name} ({n} real training images)\n")
    print("| recipe | train min | FID (floor) | KID (floor) | precision | recall (floor) | "
          "coverage (floor) | val AUROC | test AUROC [95 % CI] | x real | near-copy | "
          "closer to train | membership adv. |")
    print("|---" * 13 + "|")
    for recipe, row in rows.items():
        kept = f" (keeps {row['filter']['kept_share']:.0%} of draws)" if "filter" in row else ""
        cells = [recipe + kept]
        if row["fidelity_floor"] is None:
            cells += ["-"] * 6
        else:
            fid, floor = row["fidelity"], row["fidelity_floor"]
            sd = {k: f" ± {v:.2f}" for k, v in row.get("fidelity_sd", {}).items()
                  if np.isfinite(v)}
            cells += [f"{row['train_seconds'] / 60:.1f}" if "train_seconds" in row else "-",
                      f"{fid['fid']:.2f} ({floor['fid']:.2f})",
                      f"{fid['kid']:.3f} ({floor['kid']:.3f})", f"{fid['precision']:.2f}",
                      f"{fid['recall']:.2f}{sd.get('recall', '')} ({floor['recall']:.2f})",
                      f"{fid['coverage']:.2f}{sd.get('coverage', '')} ({floor['coverage']:.2f})"]
        if "auroc" in row:
            test = row["auroc"]["test"]
            cells += [f"{row['auroc']['val']['mean']:.3f}",
                      f"{test['mean']:.3f} [{test['ci_low']:.3f}, {test['ci_high']:.3f}]",
                      f"{test['mean'] / real_test:.3f}"]
        else:
            cells += ["-"] * 3
        if "near_copy_share" in row:
            attacks = ", ".join(f"{k} {a['advantage']:+.3f}" + interval(a)
                                for k, a in row["membership"].items())
            cells += [f"{row['near_copy_share']:.3f}", f"{row['closer_to_train_share']:.2f}",
                      attacks]
        else:
            cells += ["-"] * 3
        print("| " + " | ".join(cells) + " |")


def interval(attack: dict) -> str:
    """`` [low, high]`` for an attack measured over several samples, else nothing."""
    if attack.get("samples", 1) < 2:
        return ""
    low, high = attack["advantage_ci"]
    return f" [{low:+.3f}, {high:+.3f}]"

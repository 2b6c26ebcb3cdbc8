"""What differential privacy costs on BreastMNIST: a non-private conditional DCGAN against
DP-SGD at epsilon 10 and 1.

Every generator has the same architecture (a discriminator without batch norm, as DP-SGD
needs, no R1) and the same number of epochs, trained on the train split (546 images). For
each one:

- training time;
- ``evaluate fidelity``: FID and KID against the real training split;
- ``evaluate privacy``: the near-copy share and membership-inference AUC (members: the
  training images; non-members: the test split) with the advantage over the control;
- ``evaluate utility --generator RUN``: the gain of real + synthetic over the best regime
  without synthetic images, on a reduced grid (fraction 1.0, ``--seeds`` seeds).

Prints one table row per setting and writes ``OUT/privacy.json``.

    SYNTHMED_TEST_DATA=../shared/data python benchmarks/privacy_breastmnist.py --out bench-privacy
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common import add_data_options, synthmed

SETTINGS = {"non-private": [], "epsilon 10": ["--dp-epsilon", "10"],
            "epsilon 1": ["--dp-epsilon", "1"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_data_options(parser)
    parser.add_argument("--epochs", default="120")
    parser.add_argument("--size", default="28", help="image size (BreastMNIST's own: 28)")
    parser.add_argument("--seeds", default="3", help="seeds of the utility grid")
    parser.add_argument("--settings", default=",".join(SETTINGS))
    args = parser.parse_args()
    data = args.data / "medmnist" / "breastmnist.npz"
    if not data.exists():
        sys.exit(f"{data}: not found (set SYNTHMED_TEST_DATA)")
    rows = {}
    for name in args.settings.split(","):
        out = args.out / name.replace(" ", "-")
        run = out / "run"
        steps = {
            "train": ["train", "dcgan", str(data), "--out", str(run), "--conditional",
                      "--d-norm", "none", "--epochs", args.epochs, "--size", args.size,
                      "--precision", "bf16", "--no-progress", *SETTINGS[name]],
            "fidelity": ["evaluate", "fidelity", "--real", str(data), "--synthetic", str(run),
                         "--out", str(out / "fidelity")],
            "privacy": ["evaluate", "privacy", "--synthetic", str(run), "--train", str(data),
                        "--holdout", str(data), "--out", str(out / "privacy")],
            "utility": ["evaluate", "utility", "--real", str(data), "--generator", str(run),
                        "--fractions", "1.0", "--seeds", args.seeds, "--out",
                        str(out / "utility"), "--no-progress"],
        }
        rows[name] = _row(out, _run_steps(out, steps))
        print(_format(name, rows[name]), flush=True)
    (args.out / "privacy.json").write_text(json.dumps(rows, indent=1) + "\n")


def _run_steps(out: Path, steps: dict[str, list[str]]) -> dict[str, float]:
    """Run each command not yet done (a rerun after a kill skips the finished ones; a killed
    training resumes) and return their wall-clock seconds, kept in ``out/seconds.json``."""
    record = out / "seconds.json"
    seconds = json.loads(record.read_text()) if record.is_file() else {}
    for key, args in steps.items():
        if key not in seconds:
            resume = ["--resume"] if key == "train" and (out / "run").exists() else []
            seconds[key] = synthmed(*args, *resume)
            record.write_text(json.dumps(seconds, indent=1) + "\n")
    return seconds


def _row(out, seconds: dict[str, float]) -> dict:
    """The numbers of one setting, read back from the commands' JSON outputs."""
    training = json.loads((out / "run" / "training_data.json").read_text())
    fidelity = json.loads((out / "fidelity" / "fidelity.json").read_text())
    privacy = json.loads((out / "privacy" / "privacy.json").read_text())
    utility = json.loads((out / "utility" / "summary.json").read_text())
    return {
        "dp": training.get("differential_privacy"),
        "fid": fidelity["overall"]["fid"],
        "fid_floor": fidelity["floor"]["fid"],
        "kid": fidelity["overall"]["kid"],
        "near_copy_share": privacy["dcr"]["pixels"]["near_copy_share"],
        "membership": privacy["membership"],
        "utility": next(iter(utility.values()))["headline"],
        "seconds": seconds,
    }


def _format(name: str, row: dict) -> str:
    black_box = row["membership"]["features"] or row["membership"]["pixels"]
    head = row["utility"]
    epsilon = f"eps {row['dp']['epsilon']:.2f}" if row["dp"] else "eps inf"
    return (f"{name:12s} {epsilon:9s} FID {row['fid']:.1f} (floor {row['fid_floor']:.1f})  "
            f"near-copies "
            f"{row['near_copy_share']:.1%}  MIA AUC {black_box['auc']:.3f} (advantage "
            f"{black_box['advantage']:+.3f})  utility {head['metric']} gain "
            f"{head['gain_mean']:+.3f} [{head['gain_ci_low']:+.3f}, {head['gain_ci_high']:+.3f}]"
            f"  train {row['seconds']['train'] / 60:.1f} min")


if __name__ == "__main__":
    main()

"""The utility harness on real data: does a conditional DCGAN's synthetic data help?

Runs ``synthmed evaluate utility --train-generator dcgan-conditional`` (a generator trained on
exactly each fraction's real subset), with synthetic images at ratio 1 and in balance mode
(filling the minority classes), on:

- BreastMNIST (28 px, 2 classes): fractions 0.25 and 1.0, 5 seeds;
- the brain tumour MRI set (4 classes, 32 px gray; cross-split duplicates are dropped by the
  harness): fractions 0.1 and 1.0, 5 seeds. 32 px keeps the grid to about two hours on 2
  CPU cores; a 64 px generator costs about five times as much;
- RetinaMNIST (28 px RGB, 5 classes): fraction 1.0, 3 seeds, once, for the multi-class and
  colour paths.

Prints each headline and the wall time; the tables are in ``OUT/<set>/report.md``.

    SYNTHMED_TEST_DATA=../shared/data python benchmarks/utility_harness.py --out bench-utility
    python benchmarks/utility_harness.py --out b --sets breastmnist --seeds 2   # a quick look
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common import add_data_options, synthmed

SETS = {
    "breastmnist": ("medmnist/breastmnist.npz", [], "0.25,1.0", 5),
    "brain-tumor-mri": ("brain-tumor-mri", ["--size", "32", "--channels", "1"], "0.1,1.0", 5),
    "retinamnist": ("medmnist/retinamnist.npz", [], "1.0", 3),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_data_options(parser)
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--seeds", type=int, help="override the seeds of every set")
    parser.add_argument("--generator-steps", default="2000")
    args = parser.parse_args()
    for name in args.sets.split(","):
        path, read, fractions, seeds = SETS[name]
        data = args.data / path
        if not data.exists():
            sys.exit(f"{data}: not found (set SYNTHMED_TEST_DATA)")
        out = args.out / name
        fresh = not (out / "results.json").is_file()
        seconds = synthmed(
            "evaluate", "utility", "--real", str(data), *read, "--train-generator",
            "dcgan-conditional", "--generator-steps", args.generator_steps, "--fractions",
            fractions, "--seeds", str(args.seeds or seeds), "--ratios", "1", "--balance",
            "--out", str(out), "--no-progress")
        summary = json.loads((out / "summary.json").read_text())
        for fraction, part in summary.items():
            head = part["headline"]
            print(f"{name} fraction {fraction}: {head['best_synthetic']} vs "
                  f"{head['best_without']}: {head['metric']} gain {head['gain_mean']:+.3f} "
                  f"[{head['gain_ci_low']:+.3f}, {head['gain_ci_high']:+.3f}]")
        calls = record_timing(args.out / "timings.json", name, seconds, fresh)
        print(f"{name}: {sum(calls) / 60:.1f} min of wall time over {len(calls)} call(s)")


def record_timing(path: Path, name: str, seconds: float, fresh: bool) -> list[float]:
    """Add this call's wall time to the set's earlier calls (a resumed grid costs all of
    them; a fresh grid starts a new list) and return the set's calls."""
    timings = json.loads(path.read_text()) if path.is_file() else {}
    timings[name] = ([] if fresh else timings.get(name, [])) + [seconds]
    path.write_text(json.dumps(timings, indent=1) + "\n")
    return timings[name]


if __name__ == "__main__":
    main()

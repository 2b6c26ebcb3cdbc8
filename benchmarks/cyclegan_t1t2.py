"""CycleGAN on the shared brain MRI: step times, T1 -> T2 quality against baselines, and
translation throughput.

1. Seconds per training step (batch 1, the reference's widths: ngf = ndf = 64; 6 ResNet blocks
   at 128 px, 9 at 256 px), fp32 against bf16 autocast, interleaved step by step; prints the
   bf16 speed-up.
2. Quality, leave one subject out: for each subject of ``$SYNTHMED_TEST_DATA/brain-t1t2``,
   ``synthmed train cyclegan`` T1 -> T2 on the other two (``--val-subjects``), then
   ``synthmed evaluate translation`` on the held-out one: MAE / PSNR / SSIM of the
   translator against identity and the best global intensity map (histogram matching, plain
   or inverted), computed in the same run. Prints each fold and the mean over folds. A
   finished fold (``OUT/<subject>/fold.json``) is read back, so a killed benchmark continues
   (with ``--resume`` for the fold it was training); ``--held-out`` picks folds.
3. Translation throughput: slices per second for the first held-out volume through
   ``synthmed translate`` (the whole command: read, normalise, translate, write).

    SYNTHMED_TEST_DATA=../shared/data python benchmarks/cyclegan_t1t2.py --out bench-cyclegan
    python benchmarks/cyclegan_t1t2.py --out b --skip-steps --epochs 2 --held-out TCGA-DU-7294

The default recipe trains on random 112 px crops of the native 240 px slices (the cost of a
112 px model; the translator then sees the whole slice at its own resolution, so nothing is
lost to resizing), ngf = ndf = 32, resize upsampling, the inverted intensity prior without an
identity loss, bf16, 12 epochs, the last half decaying: about 20 minutes per fold on one core.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from common import add_data_options, synthmed

from synthmed.gan.config import CycleGANConfig
from synthmed.gan.cyclegan import CycleGAN


def step_times(sizes: tuple[int, ...], steps: int) -> dict[str, float]:
    """Median seconds per train_step for each size x precision, interleaved step by step."""
    times: dict[str, list[float]] = {}
    setups = {}
    for size in sizes:
        torch.manual_seed(0)
        model = CycleGAN(CycleGANConfig(crop=size))  # reference widths and block counts
        a, b = (torch.rand(1, 1, size, size) * 2 - 1 for _ in range(2))
        setups[size] = (model, model.make_optimizers(), (a, b))
    for repeat in range(steps + 1):
        for size, (model, optimizers, batch) in setups.items():
            for precision in ("fp32", "bf16"):
                autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16"
                            else contextlib.nullcontext())
                started = time.perf_counter()
                model.train_step(batch, optimizers, torch.Generator().manual_seed(repeat),
                                 autocast)
                if repeat:  # the first round is warm-up
                    times.setdefault(f"{size}px {precision}", []).append(
                        time.perf_counter() - started)
    return {key: statistics.median(values) for key, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_data_options(parser)
    parser.add_argument("--size", type=int, default=0,
                        help="resize slices to SIZE (0: keep the native 240 px)")
    parser.add_argument("--crop", type=int, default=112)
    parser.add_argument("--width", type=int, default=32, help="ngf and ndf")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--lambda-identity", default="0",
                        help="identity loss weight as a share of the cycle weight")
    parser.add_argument("--lambda-structure", default="0",
                        help="weight of the sign-blind structure loss (squared local NCC)")
    parser.add_argument("--intensity-prior", default="inverted",
                        help="none, matching or inverted: generators correct that global map")
    parser.add_argument("--upsample", default="resize", help="or convtranspose")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--step-repeats", type=int, default=3)
    parser.add_argument("--skip-steps", action="store_true")
    parser.add_argument("--held-out", default="all",
                        help="subjects held out, one fold each (comma list; all: every subject)")
    parser.add_argument("--skip-training", action="store_true",
                        help="evaluate the folds' existing runs")
    parser.add_argument("--resume", action="store_true",
                        help="continue the folds' interrupted runs from their last checkpoints")
    args = parser.parse_args()
    brain = args.data / "brain-t1t2"
    if not brain.is_dir():
        sys.exit(f"{brain}: not found (set SYNTHMED_TEST_DATA)")
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {"threads": torch.get_num_threads()}

    if not args.skip_steps:
        times = step_times((128, 256), args.step_repeats)
        results["seconds_per_step"] = times
        print("seconds per step (batch 1, ngf = ndf = 64):")
        for size in (128, 256):
            fp32, bf16 = times[f"{size}px fp32"], times[f"{size}px bf16"]
            print(f"  {size} px: fp32 {fp32:.2f} s, bf16 {bf16:.2f} s, "
                  f"bf16 speed-up {fp32 / bf16:.2f}x")

    subjects = sorted(path.parent.name for path in brain.glob("*/t1.nii.gz"))
    held_out = subjects if args.held_out == "all" else args.held_out.split(",")
    unknown = sorted(set(held_out) - set(subjects))
    if unknown:
        sys.exit(f"unknown subject(s) {unknown}: {brain} has {', '.join(subjects)}")
    results["folds"] = {subject: fold(args, brain, subject) for subject in held_out}
    print_summary(results["folds"])

    source = brain / held_out[0] / "t1.nii.gz"
    translated = args.out / "translated"
    seconds = synthmed("translate", str(args.out / held_out[0] / "run"), str(source),
                       "--direction", "a2b", "--out", str(translated), "--overwrite",
                       "--no-progress")
    slices = sum(int(row.split(",")[3]) for row in
                 (translated / "manifest.csv").read_text().splitlines()[1:])
    results["translate"] = {"seconds": seconds, "slices": slices,
                            "slices_per_s": slices / seconds}
    print(f"translate: {slices} slices in {seconds:.1f} s = {slices / seconds:.1f} slices/s "
          "(the whole command, start-up included)")
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")


def fold(args: argparse.Namespace, brain: Path, held_out: str) -> dict:
    """Train on every subject but ``held_out`` in ``OUT/<held_out>/run`` and evaluate on it;
    a finished fold (``OUT/<held_out>/fold.json``) is read back instead of run again."""
    out = args.out / held_out
    record_path = out / "fold.json"
    if record_path.is_file():
        print(f"fold {held_out}: finished earlier, read from {record_path}")
        return json.loads(record_path.read_text())
    run, record = out / "run", {}
    if not args.skip_training:
        record["train_seconds"] = synthmed(
            "train", "cyclegan", "--domain-a", f"{brain}/*/t1.nii.gz",
            "--domain-b", f"{brain}/*/t2.nii.gz", "--val-subjects", held_out,
            *(["--size", str(args.size)] if args.size else []),
            "--crop", str(args.crop), "--ngf", str(args.width),
            "--ndf", str(args.width), "--epochs", str(args.epochs), "--lambda-identity",
            args.lambda_identity, "--lambda-structure", args.lambda_structure,
            "--intensity-prior", args.intensity_prior, "--upsample", args.upsample,
            "--precision", args.precision, "--checkpoint-every", "1", "--out", str(run),
            "--no-progress", *(["--resume"] if args.resume else []))
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        record["seconds_per_step_median"] = statistics.median(
            1 / line["images_per_s"] for line in lines)
        print(f"fold {held_out}: training {record['train_seconds'] / 60:.1f} min in this call; "
              f"median {record['seconds_per_step_median']:.3f} s per step over {len(lines)} "
              "epochs")
    subject = brain / held_out
    record["evaluate_seconds"] = synthmed(
        "evaluate", "translation", str(run), "--source", str(subject / "t1.nii.gz"),
        "--target", str(subject / "t2.nii.gz"), "--out", str(out / "evaluation"), "--overwrite")
    record["evaluation"] = json.loads((out / "evaluation" / "translation.json").read_text())
    record_path.write_text(json.dumps(record, indent=1) + "\n")
    return record


def print_summary(folds: dict[str, dict]) -> None:
    """The translator against the best global intensity map, per held-out subject and as the
    mean over them."""
    metrics = ("mae", "psnr", "ssim_slice", "ssim_bbox")
    print("held-out subject | method | MAE | PSNR | SSIM slice | SSIM bbox")
    rows: dict[str, list[list[float]]] = {}
    for subject, record in folds.items():
        evaluation = record["evaluation"]
        for method in ("synthmed", evaluation["best_global_map"]):
            values = [evaluation["per_subject"][subject][method][m] for m in metrics]
            label = "synthmed" if method == "synthmed" else "best global map"
            rows.setdefault(label, []).append(values)
            print(f"{subject} | {method} | " + " | ".join(f"{v:.3f}" for v in values))
    for label, values in rows.items():
        means = [statistics.mean(column) for column in zip(*values, strict=True)]
        print(f"mean of {len(values)} | {label} | " + " | ".join(f"{v:.3f}" for v in means))
    wins = [sum(ours[k] < theirs[k] if k == 0 else ours[k] > theirs[k]
                for ours, theirs in zip(rows["synthmed"], rows["best global map"], strict=True))
            for k in range(len(metrics))]
    print("folds where synthmed beats the best global map: " + ", ".join(
        f"{m} {w}/{len(folds)}" for m, w in zip(metrics, wins, strict=True)))


if __name__ == "__main__":
    main()

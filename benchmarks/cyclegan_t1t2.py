"""CycleGAN on the shared brain MRI: step times, T1 -> T2 quality against baselines, and
translation throughput.

1. Seconds per training step (batch 1, the reference's widths: ngf = ndf = 64; 6 ResNet blocks
   at 128 px, 9 at 256 px), fp32 against bf16 autocast, interleaved step by step; prints the
   bf16 speed-up.
2. Quality: ``synthmed train cyclegan`` T1 -> T2 on two subjects of
   ``$SYNTHMED_TEST_DATA/brain-t1t2`` with the third held out (``--val-subjects``), then
   ``synthmed evaluate translation`` on the held-out subject: MAE / PSNR / SSIM of the
   translator against identity and the best global intensity map (histogram matching, plain
   or inverted), computed in the same run.
3. Translation throughput: slices per second for the held-out volume through
   ``synthmed translate`` (the whole command: read, normalise, translate, write).

    SYNTHMED_TEST_DATA=../shared/data python benchmarks/cyclegan_t1t2.py --out bench-cyclegan
    python benchmarks/cyclegan_t1t2.py --out b --skip-steps --epochs 2   # a quick look

The default recipe trains on random 112 px crops of the native 240 px slices (the cost of a
112 px model; the translator then sees the whole slice at its own resolution, so nothing is
lost to resizing), ngf = ndf = 32, bf16, 30 epochs, the last half decaying: about 50
minutes on 2 idle cores.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time

import torch
from common import add_data_options, synthmed

from synthmed.gan.config import CycleGANConfig
from synthmed.gan.cyclegan import CycleGAN

HELD_OUT = "TCGA-DU-7294"


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
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lambda-identity", default="0.5",
                        help="identity loss weight as a share of the cycle weight")
    parser.add_argument("--lambda-structure", default="0",
                        help="weight of the sign-blind structure loss (squared local NCC)")
    parser.add_argument("--upsample", default="convtranspose", help="or resize")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--step-repeats", type=int, default=3)
    parser.add_argument("--skip-steps", action="store_true")
    parser.add_argument("--skip-training", action="store_true", help="reuse OUT/run")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted OUT/run from its last checkpoint")
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

    run = args.out / "run"
    if not args.skip_training:
        results["train_seconds"] = synthmed(
            "train", "cyclegan", "--domain-a", f"{brain}/*/t1.nii.gz",
            "--domain-b", f"{brain}/*/t2.nii.gz", "--val-subjects", HELD_OUT,
            *(["--size", str(args.size)] if args.size else []),
            "--crop", str(args.crop), "--ngf", str(args.width),
            "--ndf", str(args.width), "--epochs", str(args.epochs), "--lambda-identity",
            args.lambda_identity, "--lambda-structure", args.lambda_structure, "--upsample",
            args.upsample, "--precision", args.precision, "--checkpoint-every", "1", "--out",
            str(run), "--no-progress",
            *(["--resume"] if args.resume else []))
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        results["seconds_per_step_median"] = statistics.median(
            1 / line["images_per_s"] for line in lines)
        print(f"training: {results['train_seconds'] / 60:.1f} min in this call; median "
              f"{results['seconds_per_step_median']:.3f} s per step over {len(lines)} epochs")

    source, truth = brain / HELD_OUT / "t1.nii.gz", brain / HELD_OUT / "t2.nii.gz"
    results["evaluate_seconds"] = synthmed(
        "evaluate", "translation", str(run), "--source", str(source), "--target", str(truth),
        "--out", str(args.out / "evaluation"), "--overwrite")
    seconds = synthmed("translate", str(run), str(source), "--direction", "a2b",
                       "--out", str(args.out / "translated"), "--overwrite", "--no-progress")
    slices = sum(int(row.split(",")[3]) for row in
                 (args.out / "translated" / "manifest.csv").read_text().splitlines()[1:])
    results["translate"] = {"seconds": seconds, "slices": slices,
                            "slices_per_s": slices / seconds}
    print(f"translate: {slices} slices in {seconds:.1f} s = {slices / seconds:.1f} slices/s "
          "(the whole command, start-up included)")
    results["evaluation"] = json.loads((args.out / "evaluation" / "translation.json").read_text())
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()

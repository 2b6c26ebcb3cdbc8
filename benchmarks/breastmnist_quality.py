"""Quality of the conditional DCGAN on BreastMNIST (28x28 breast ultrasound, 2 classes).

Trains through the CLI (``synthmed train dcgan DATA --out RUN --conditional --size 28 ...``,
called in-process) on the train split only, for a fixed budget (default: preset dcgan,
width 32, DiffAugment color/translation/cutout, EMA 0.999, spectral norm, no norm in D,
hinge loss, bf16, batch 64, 300 epochs = 2,700 steps, about 7 minutes on 2 idle cores),
then checks fidelity with no extra dependencies, for the EMA generator (what sampling
uses) and the raw generator:

* per-class mean image: MSE between the mean of synthetic and of real train images, next
  to the same MSE for the real val images (the sampling noise of a small real set) and for
  the wrong class (how far apart the two classes' means are);
* diversity: mean pairwise RMS distance of synthetic images per class vs real train images
  of that class (a collapsed class has a much smaller value);
* memorisation: mean nearest-neighbour RMS pixel distance to the train set of synthetic
  images vs of real val and test images (synthetic images far closer than real unseen
  images would mean copies of training images). BreastMNIST's own val and test splits
  hold near-copies of train images (16 of 78 val, 30 of 156 test within 0.02), so their
  mean is pulled down; compare medians.

Distances are RMS per pixel on the [0, 1] intensity scale.

    python benchmarks/breastmnist_quality.py                    # about 7 minutes on 2 cores
    python benchmarks/breastmnist_quality.py --epochs 20 --out /tmp/breast-quick
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from synthmed.augment.items import ReadConfig
from synthmed.augment.preview import save_grid
from synthmed.augment.readers import read_images
from synthmed.cli import cli
from synthmed.gan.run import load_run

COPY = 0.02  # RMS distance on the [0, 1] scale below which an image counts as a copy


def default_data() -> str:
    root = os.environ.get("SYNTHMED_TEST_DATA", "../shared/data")
    return str(Path(root) / "medmnist" / "breastmnist.npz")


def rms_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(len(a), len(b))`` RMS per-pixel distances on the [0, 1] scale ([-1, 1] inputs)."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    return torch.cdist(a, b) / math.sqrt(a.shape[1]) / 2.0


def mean_pairwise(x: torch.Tensor) -> float:
    d = rms_distances(x, x)
    n = len(x)
    return float(d.sum() / (n * (n - 1)))


def nearest(x: torch.Tensor, train: torch.Tensor) -> torch.Tensor:
    return rms_distances(x, train).min(dim=1).values


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=default_data(), help="breastmnist.npz")
    parser.add_argument("--out", type=Path, default=None,
                        help="run directory, continued when it exists (default "
                             "/tmp/synthmed-breastmnist-TIME)")
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--synthetic", type=int, default=200,
                        help="synthetic images for the nearest-neighbour check (default 200)")
    parser.add_argument("--skip-train", action="store_true",
                        help="only evaluate the existing run in --out")
    args = parser.parse_args(argv)
    out = args.out or Path(f"/tmp/synthmed-breastmnist-{time.strftime('%Y%m%d-%H%M%S')}")

    command = ["train", "dcgan", args.data, "--out", str(out), "--conditional", "--size", "28",
               "--preset", "dcgan", "--width", str(args.width),
               "--diffaugment", "color,translation,cutout", "--ema", "0.999",
               "--spectral-norm", "--d-norm", "none", "--loss", "hinge",
               "--precision", args.precision, "--epochs", str(args.epochs),
               "--batch-size", str(args.batch_size), "--seed", str(args.seed),
               "--checkpoint-every", "25", "--no-progress",
               *(["--resume"] if out.exists() else [])]  # a killed benchmark continues
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("command: synthmed " + " ".join(command))
    if not args.skip_train:
        started = time.perf_counter()
        cli.main(args=command, prog_name="synthmed", standalone_mode=False)
        wall = time.perf_counter() - started
        print(f"wall time {wall:.0f} s ({wall / args.epochs:.2f} s/epoch)")

    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    every = max(1, len(lines) // 10)
    print(f"\nmetrics (every {every} epochs):")
    keys = [k for k in lines[-1] if k != "epoch" and not k.startswith("lr_")]
    print("epoch " + " ".join(f"{k:>12s}" for k in keys))
    shown = list(range(every - 1, len(lines), every))
    if shown[-1] != len(lines) - 1:
        shown.append(len(lines) - 1)
    for line in (lines[i] for i in shown):
        print(f"{line['epoch']:5d} " + " ".join(f"{line[k]:12.4g}" for k in keys))
    print("final metrics line: " + json.dumps(lines[-1]))

    # -- fidelity ----------------------------------------------------------------------------
    data = read_images(args.data, ReadConfig(size=28))
    splits = {name: data.split(name) for name in ("train", "val", "test")}
    real = {name: torch.from_numpy(s.images) for name, s in splits.items()}
    labels = {name: torch.from_numpy(s.labels) for name, s in splits.items()}
    names = list(data.class_names)
    run = load_run(out)
    generator = torch.Generator().manual_seed(12345)

    per_class = 500
    def draw(k: int, n: int, use_ema: bool = True) -> torch.Tensor:
        return run.model.sample(n, labels=torch.full((n,), k, dtype=torch.long),
                                generator=generator, use_ema=use_ema)

    synth = {k: draw(k, per_class) for k in range(len(names))}
    has_ema = getattr(run.model, "ema", None) is not None
    raw = {k: draw(k, per_class, use_ema=False) for k in range(len(names))} if has_ema else synth

    def mse(x: torch.Tensor, y: torch.Tensor) -> float:
        return float((((x.mean(0) - y.mean(0)) / 2.0) ** 2).mean())

    def duplicates(x: torch.Tensor) -> float:
        """Share of pairs closer than COPY: near-identical samples (collapse)."""
        d = rms_distances(x, x)
        n = len(x)
        return float(((d < COPY).sum() - n) / (n * (n - 1)))

    print(f"\nper-class check ({per_class} synthetic per class; MSE of the class mean image "
          "on the [0, 1] scale; div = mean pairwise RMS distance; dup = share of pairs closer "
          f"than {COPY}; 'EMA' is what sampling uses, 'raw G' the trained generator itself)")
    print(f"{'class':>14s} {'train n':>7s} {'MSE EMA':>8s} {'MSE raw':>8s} {'MSE val':>8s} "
          f"{'MSE othr':>8s} {'div EMA':>8s} {'div raw':>8s} {'div trn':>8s} {'dup EMA':>8s}")
    for k, name in enumerate(names):
        train_k = real["train"][labels["train"] == k]
        val_k = real["val"][labels["val"] == k]
        other = real["train"][labels["train"] != k]
        print(f"{name[:14]:>14s} {len(train_k):7d} {mse(synth[k], train_k):8.5f} "
              f"{mse(raw[k], train_k):8.5f} {mse(val_k, train_k):8.5f} "
              f"{mse(other, train_k):8.5f} {mean_pairwise(synth[k][:300]):8.4f} "
              f"{mean_pairwise(raw[k][:300]):8.4f} {mean_pairwise(train_k):8.4f} "
              f"{duplicates(synth[k][:300]) * 100:7.2f}%")
    print("  (MSE val: real val vs real train, the noise floor of a small real sample; "
          "MSE othr: the other class's train mean, how far apart the classes are)")

    # Synthetic images in the train set's class proportions.
    counts = np.bincount(splits["train"].labels, minlength=len(names))
    shares = np.round(counts / counts.sum() * args.synthetic).astype(int)
    shares[-1] = args.synthetic - shares[:-1].sum()
    mixed = torch.cat([synth[k][:n] if n <= per_class else draw(k, int(n))
                       for k, n in enumerate(shares)])
    nn_synth = nearest(mixed, real["train"])
    nn_val = nearest(real["val"], real["train"])
    nn_test = nearest(real["test"], real["train"])
    print(f"\nnearest-neighbour RMS distance to the {len(real['train'])} train images "
          f"(memorisation check; 'copies' = closer than {COPY:.2f}, about "
          f"{COPY * 255:.0f} grey levels RMS):")
    print(f"{'':>16s} {'mean':>7s} {'median':>7s} {'5 %':>7s} {'min':>7s} {'copies':>7s}")
    for label, values in ((f"{len(mixed)} synthetic", nn_synth),
                          (f"{len(nn_val)} real val", nn_val),
                          (f"{len(nn_test)} real test", nn_test)):
        values = values.float()
        print(f"{label:>16s} {float(values.mean()):7.4f} {float(values.median()):7.4f} "
              f"{float(torch.quantile(values, 0.05)):7.4f} {float(values.min()):7.4f} "
              f"{int((values < COPY).sum()):7d}")

    # -- pictures ----------------------------------------------------------------------------
    rows = 4
    grid_path = out / "quality_grid.png"
    rng = np.random.default_rng(0)
    blocks = []
    for k in range(len(names)):
        train_k = splits["train"].images[splits["train"].labels == k]
        blocks.append(synth[k][:rows * 8].numpy())
        blocks.append(train_k[rng.choice(len(train_k), rows * 8, replace=False)])
    save_grid(np.concatenate(blocks), grid_path, columns=8)
    if has_ema:
        save_grid(np.concatenate([raw[k][:rows * 8].numpy() for k in range(len(names))]),
                  out / "quality_grid_raw_g.png", columns=8)
    final = sorted((out / "samples").glob("epoch_*.png"))[-1]
    print("\nfiles:")
    print(f"  final fixed-noise sample grid: {final}  (rows of classes {names})")
    print(f"  synthetic vs real grid: {grid_path}  (blocks of {rows} rows: "
          + ", ".join(f"{n} synthetic, {n} real" for n in names) + ")")
    if has_ema:
        print(f"  raw G (no EMA) grid: {out / 'quality_grid_raw_g.png'}  (blocks of {rows} "
              f"rows per class)")
    for name in ("progress.gif", "losses.png", "metrics.jsonl", "config.yaml"):
        print(f"  {name}: {out / name}")


if __name__ == "__main__":
    main()

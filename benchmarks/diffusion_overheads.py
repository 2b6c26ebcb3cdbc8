"""What a diffusion run spends besides its training steps: sample grids and the EMA update.

1. Sample grids: training with a grid every epoch against one every ``--epochs`` (the
   harness trains its generators with ten grids per run). A grid is 16 images sampled in
   50 guided DDIM steps, two U-Net passes each: about 3 s on 2 CPU cores, as much as 7
   training steps of batch 64, where the harness's generator epoch is 50 steps. Both runs
   train the harness's conditional diffusion model (widths 32, 64, 64) on the same random
   28x28 labelled images through ``train_diffusion``, alternately first, and must end with
   the same weights (a grid draws from its own fixed noise).
2. The EMA update of that U-Net after each step: ours (:func:`synthmed.gan.model.
   moving_average`, decay ramped in, one fused lerp per dtype) against torch's own EMA
   (``get_ema_multi_avg_fn``, fixed decay, fused) and torch's per-tensor EMA
   (``get_ema_avg_fn``), round-robin. On a GPU a per-tensor update waits for the device
   once per tensor.

    python benchmarks/diffusion_overheads.py              # about 10 minutes on 2 idle cores
    python benchmarks/diffusion_overheads.py --epochs 2 --repeats 1 --updates 20
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_avg_fn, get_ema_multi_avg_fn

from synthmed.augment.dataset import ImageSet
from synthmed.gan.config import DiffusionConfig, TrainConfig
from synthmed.gan.diffusion import DiffusionModel
from synthmed.gan.model import moving_average
from synthmed.gan.run import load_run
from synthmed.gan.run_config import DataConfig, RunConfig
from synthmed.gan.train import train_diffusion

IMAGES, BATCH, STEPS_PER_EPOCH = 128, 64, 50
HARNESS_MODEL = DiffusionConfig(size=28, widths=(32, 64, 64))


def timed_run(data: ImageSet, epochs: int, preview_every: int, folder: Path
              ) -> tuple[float, dict[str, torch.Tensor]]:
    """Seconds per epoch of one run (model build and run directory included) and its
    weights."""
    train = TrainConfig(epochs=epochs, batch_size=BATCH, checkpoint_every=epochs,
                        preview_every=preview_every, decay_epochs=0)
    config = RunConfig("diffusion", HARNESS_MODEL, train, DataConfig(split="all"))
    repeats = STEPS_PER_EPOCH * BATCH // IMAGES
    started = time.perf_counter()
    train_diffusion(data, folder, config, conditional=True, repeats=repeats, progress=False)
    seconds = (time.perf_counter() - started) / epochs
    return seconds, load_run(folder).model.state_dict()


def ema_update_seconds(updates: int) -> dict[str, float]:
    """Median seconds of one EMA update of the harness's U-Net, per implementation."""
    unet = DiffusionModel(HARNESS_MODEL).unet
    averages = {"ours": moving_average(unet, 0.999),
                "torch fused": AveragedModel(unet, multi_avg_fn=get_ema_multi_avg_fn(0.999),
                                             use_buffers=True),
                "torch per tensor": AveragedModel(unet, avg_fn=get_ema_avg_fn(0.999),
                                                  use_buffers=True)}
    seconds: dict[str, list[float]] = {name: [] for name in averages}
    with torch.no_grad():
        for _ in range(updates):
            for parameter in unet.parameters():  # a training step's change
                parameter.add_(torch.randn_like(parameter), alpha=1e-3)
            for name, average in averages.items():
                started = time.perf_counter()
                average.update_parameters(unet)
                seconds[name].append(time.perf_counter() - started)
    return {name: float(np.median(values[1:])) for name, values in seconds.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run (default 4)")
    parser.add_argument("--repeats", type=int, default=2, help="pairs of runs (default 2)")
    parser.add_argument("--updates", type=int, default=200,
                        help="EMA updates per implementation (default 200)")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    data = ImageSet.from_arrays(rng.uniform(-1, 1, (IMAGES, 1, 28, 28)).astype(np.float32),
                                labels=np.arange(IMAGES) % 2, class_names=["a", "b"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {IMAGES} images, "
          f"{STEPS_PER_EPOCH} steps of {BATCH} per epoch, {args.epochs} epochs per run")
    seconds: dict[int, list[float]] = {1: [], args.epochs: []}
    with tempfile.TemporaryDirectory(prefix="synthmed-bench-") as tmp:
        for repeat in range(args.repeats):
            order = [1, args.epochs] if repeat % 2 == 0 else [args.epochs, 1]
            weights = []
            for position, every in enumerate(order):
                took, state = timed_run(data, args.epochs, every,
                                        Path(tmp) / f"{repeat}-{position}")
                seconds[every].append(took)
                weights.append(state)
                print(f"  repeat {repeat + 1}: a grid every {every} epochs: {took:.1f} s/epoch",
                      flush=True)
            same = all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
            print(f"  same weights: {same}")
    every_epoch, sparse = min(seconds[1]), min(seconds[args.epochs])
    print(f"1. best s/epoch: a grid every epoch {every_epoch:.1f}, every {args.epochs} epochs "
          f"{sparse:.1f}: {every_epoch / sparse:.2f}x faster")
    seconds_per_update = ema_update_seconds(args.updates)
    ours = seconds_per_update.pop("ours")
    print(f"2. EMA update, median of {args.updates}: ours {ours * 1e3:.2f} ms; " + ", ".join(
        f"{name} {value * 1e3:.2f} ms (ratio ours / it {ours / value:.2f})"
        for name, value in seconds_per_update.items()))


if __name__ == "__main__":
    main()

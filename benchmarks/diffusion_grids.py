"""What a diffusion model's sample grids cost: training with a grid every epoch against one
every ``--epochs`` (the harness trains its generators with ten grids per run).

A grid is 16 images sampled in 50 guided DDIM steps, two U-Net passes each: about 3 s on
2 CPU cores, as much as 7 training steps of batch 64, where the harness's generator epoch
is 50 steps (a grid every epoch: 1.14x slower, measured on 2 cores on 2026-12-04).
Both runs train the harness's conditional diffusion model (widths 32, 64, 64) on the same
random 28x28 labelled images through ``train_diffusion``, alternately first, and must end
with the same weights (a grid draws from its own fixed noise).

    python benchmarks/diffusion_grids.py              # about 6 minutes on 2 idle cores
    python benchmarks/diffusion_grids.py --epochs 2 --repeats 1
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from synthmed.augment.dataset import ImageSet
from synthmed.gan.config import DiffusionConfig, TrainConfig
from synthmed.gan.run import load_run
from synthmed.gan.run_config import DataConfig, RunConfig
from synthmed.gan.train import train_diffusion

IMAGES, BATCH, STEPS_PER_EPOCH = 128, 64, 50


def timed_run(data: ImageSet, epochs: int, preview_every: int, folder: Path
              ) -> tuple[float, dict[str, torch.Tensor]]:
    """Seconds per epoch of one run (model build and run directory included) and its
    weights."""
    train = TrainConfig(epochs=epochs, batch_size=BATCH, checkpoint_every=epochs,
                        preview_every=preview_every, decay_epochs=0)
    config = RunConfig("diffusion", DiffusionConfig(widths=(32, 64, 64)), train,
                       DataConfig(split="all"))
    repeats = STEPS_PER_EPOCH * BATCH // IMAGES
    started = time.perf_counter()
    train_diffusion(data, folder, config, conditional=True, repeats=repeats, progress=False)
    seconds = (time.perf_counter() - started) / epochs
    return seconds, load_run(folder).model.state_dict()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run (default 4)")
    parser.add_argument("--repeats", type=int, default=2, help="pairs of runs (default 2)")
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
            for every in order:
                took, state = timed_run(data, args.epochs, every, Path(tmp) / f"{repeat}-{every}")
                seconds[every].append(took)
                weights.append(state)
                print(f"  repeat {repeat + 1}: a grid every {every} epochs: {took:.1f} s/epoch",
                      flush=True)
            same = all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
            print(f"  same weights: {same}")
    every_epoch, sparse = min(seconds[1]), min(seconds[args.epochs])
    print(f"best s/epoch: a grid every epoch {every_epoch:.1f}, every {args.epochs} epochs "
          f"{sparse:.1f}: {every_epoch / sparse:.2f}x faster")


if __name__ == "__main__":
    main()

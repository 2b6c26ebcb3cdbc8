"""Training throughput of the tutorial DCGAN: our engine against a plain PyTorch loop.

Ours goes through the real fit loop (``synthmed.gan.trainer.fit`` with
``DCGAN(DCGANConfig.tutorial())``, ``progress=False``) into a temporary run directory; its
images/s are read from the run's ``metrics.jsonl``: the epoch's training steps plus the
model's end-of-epoch work (``finish_epoch``, when the model has one), without the preview,
metrics line and checkpoint. The reference is the same network, loss, optimiser and
D-then-G step written out in plain PyTorch below, with no bookkeeping at all.

Both see the same in-memory random 28x28 images in [-1, 1], batch 256. Four parts:

1. whole runs, ours and reference interleaved (alternating which goes first) so that
   background load hits both alike; the first epoch of every run is warm-up;
2. single steps, round-robin over ours / reference x fp32 / bf16 (and ``finish_epoch``)
   step by step: robust against other processes on the machine;
3. the cost ``fit`` itself adds per step (a stub model whose step does nothing);
4. end-to-end ``fit`` time per epoch with everything it writes, broken down.

    python benchmarks/train_throughput.py                 # about 3 minutes on 2 idle cores
    python benchmarks/train_throughput.py --repeats 5 --epochs 3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from synthmed.augment.dataset import ImageSet
from synthmed.gan import trainer
from synthmed.gan.config import DCGANConfig, TrainConfig
from synthmed.gan.dcgan import DCGAN
from synthmed.gan.model import GenerativeModel
from synthmed.gan.run_config import RunConfig

BATCH = 256
NZ = 100
MNIST_BATCHES = 60_000 // BATCH  # the tutorial's epoch: MNIST's 60,000 images

# The fit loop's helpers that run outside the training steps; each is timed per run.
HELPERS = ("_start_run", "_save_preview", "_log", "_save_checkpoint", "_save_progress_gif",
           "_save_loss_plot")


def autocast_for(precision: str) -> contextlib.AbstractContextManager:
    return (torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16"
            else contextlib.nullcontext())


# -- the plain reference --------------------------------------------------------------------


class RefGenerator(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(NZ, 7 * 7 * 256, bias=False)
        self.bn0 = nn.BatchNorm1d(7 * 7 * 256)
        self.net = nn.Sequential(
            nn.ConvTranspose2d(256, 128, 5, 1, 2, bias=False),
            nn.BatchNorm2d(128), nn.LeakyReLU(0.3),
            nn.ConvTranspose2d(128, 64, 5, 2, 2, output_padding=1, bias=False),
            nn.BatchNorm2d(64), nn.LeakyReLU(0.3),
            nn.ConvTranspose2d(64, 1, 5, 2, 2, output_padding=1, bias=False),
            nn.Tanh(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.bn0(self.fc(z)), 0.3)
        return self.net(h.view(-1, 256, 7, 7))


def ref_discriminator() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 64, 5, 2, 2), nn.LeakyReLU(0.3), nn.Dropout(0.3),
        nn.Conv2d(64, 128, 5, 2, 2), nn.LeakyReLU(0.3), nn.Dropout(0.3),
        nn.Flatten(), nn.Linear(128 * 7 * 7, 1),
    )


class Reference:
    """The plain loop's state: networks, optimisers, autocast; ``step`` is one D-then-G step."""

    def __init__(self, precision: str, seed: int) -> None:
        torch.manual_seed(seed)
        self.g, self.d = RefGenerator(), ref_discriminator()
        self.opt_g = torch.optim.Adam(self.g.parameters(), 1e-4)
        self.opt_d = torch.optim.Adam(self.d.parameters(), 1e-4)
        self.autocast = autocast_for(precision)
        self.ones, self.zeros = torch.ones(BATCH), torch.zeros(BATCH)

    def step(self, real: torch.Tensor) -> None:
        g, d = self.g, self.d
        z = torch.randn(len(real), NZ)
        with self.autocast:
            fake = g(z)
            d_real = d(real).float().squeeze(1)
            d_fake = d(fake.detach()).float().squeeze(1)
        loss_d = (F.binary_cross_entropy_with_logits(d_real, self.ones)
                  + F.binary_cross_entropy_with_logits(d_fake, self.zeros))
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()
        with self.autocast:
            d_fake_g = d(fake).float().squeeze(1)
        loss_g = F.binary_cross_entropy_with_logits(d_fake_g, self.ones)
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()


def reference_run(images: torch.Tensor, epochs: int, precision: str, seed: int) -> list[float]:
    """Train the plain reference; return the images/s of every epoch."""
    reference = Reference(precision, seed)
    per_epoch = []
    for _ in range(epochs):
        started = time.perf_counter()
        order = torch.randperm(len(images))
        for start in range(0, len(images) - BATCH + 1, BATCH):
            reference.step(images[order[start:start + BATCH]])
        per_epoch.append(len(images) // BATCH * BATCH / (time.perf_counter() - started))
    return per_epoch


# -- our engine -----------------------------------------------------------------------------


@contextlib.contextmanager
def timed_helpers(model: nn.Module):
    """Wrap the fit loop's helpers (those that exist) and ``model.finish_epoch`` (if any);
    yield a dict that collects each one's list of call durations in seconds."""
    seconds: dict[str, list[float]] = {}
    originals = {name: getattr(trainer, name) for name in HELPERS if hasattr(trainer, name)}

    def wrap(name: str, function: Callable) -> Callable:
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                seconds.setdefault(name, []).append(time.perf_counter() - started)
        return timed

    try:
        for name, function in originals.items():
            setattr(trainer, name, wrap(name, function))
        if hasattr(model, "finish_epoch"):
            model.finish_epoch = wrap("finish_epoch", model.finish_epoch)
        yield seconds
    finally:
        for name, function in originals.items():
            setattr(trainer, name, function)
        model.__dict__.pop("finish_epoch", None)


def ours_run(data: ImageSet, epochs: int, precision: str, seed: int) -> dict:
    """Train through ``fit``. Returns ``logged`` (images/s of every epoch from
    metrics.jsonl), ``steps_only`` (the same without ``finish_epoch``), ``wall`` (the whole
    ``fit`` call, model build included) and ``helpers`` (seconds per helper, summed)."""
    train = TrainConfig(epochs=epochs, batch_size=BATCH, seed=seed, precision=precision,
                        checkpoint_every=15, preview=16)
    config = DCGANConfig.tutorial()
    images = len(data) // BATCH * BATCH
    with tempfile.TemporaryDirectory(prefix="synthmed-bench-") as tmp:
        run_dir = Path(tmp) / "run"
        started = time.perf_counter()
        torch.manual_seed(seed)
        model = DCGAN(config)
        with timed_helpers(model) as helpers:
            trainer.fit(model, data, RunConfig("dcgan", config, train), run_dir,
                        progress=False)
        wall = time.perf_counter() - started
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    logged = [json.loads(line)["images_per_s"] for line in lines]
    finish = helpers.get("finish_epoch", [0.0] * len(logged))
    steps_only = [images / (images / s - f) for s, f in zip(logged, finish, strict=True)]
    return {"logged": logged, "steps_only": steps_only, "wall": wall,
            "helpers": {name: sum(values) for name, values in helpers.items()}}


def steps_interleaved(images: torch.Tensor, precisions: list[str],
                      steps: int) -> dict[tuple[str, str], list[float]]:
    """Seconds per call of ``DCGAN.train_step`` (our model without the fit loop), of the
    reference step, per precision, and of ``DCGAN.finish_epoch`` (if it exists), round-robin
    one call each (the order rotating every round) so that background load hits all alike;
    two warm-up rounds are not counted."""
    real = images[:BATCH]
    labels = torch.zeros(BATCH, dtype=torch.long)
    run: dict[tuple[str, str], Callable[[], object]] = {}
    for precision in precisions:
        model = DCGAN(DCGANConfig.tutorial())
        optimizers = model.make_optimizers()
        rng = torch.Generator().manual_seed(0)
        autocast = autocast_for(precision)
        reference = Reference(precision, 0)
        run[("ours", precision)] = (lambda m=model, o=optimizers, r=rng, a=autocast:
                                    m.train_step((real, labels), o, r, a))
        run[("ref", precision)] = lambda ref=reference: ref.step(real)
        if hasattr(model, "finish_epoch") and ("finish_epoch", "") not in run:
            run[("finish_epoch", "")] = lambda m=model: m.finish_epoch(seed=0)
    keys = list(run)
    seconds: dict[tuple[str, str], list[float]] = {key: [] for key in keys}
    for i in range(steps + 2):
        for key in keys[i % len(keys):] + keys[:i % len(keys)]:
            started = time.perf_counter()
            run[key]()
            if i >= 2:
                seconds[key].append(time.perf_counter() - started)
    return seconds


class StubModel(GenerativeModel):
    """A model whose step does nothing: ``fit`` around it costs only its own bookkeeping."""

    kind = "dcgan"
    min_batch = 1

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"generator": torch.optim.Adam([self.weight])}

    def train_step(self, batch, optimizers, rng, autocast=None) -> dict[str, float]:
        return {"loss_d": 1.0, "loss_g": 1.0, "d_real": 0.5, "d_fake": 0.5, "d_accuracy": 0.5}

    def preview(self, n: int, seed: int) -> torch.Tensor:
        return torch.zeros(n, 1, 28, 28)


def fit_loop_overhead(data: ImageSet, epochs: int = 3) -> float:
    """Seconds per step that ``fit``'s own loop adds (batch indexing, NaN check, sums,
    disabled progress bar), from a run of the stub model."""
    train = TrainConfig(epochs=epochs, batch_size=BATCH, checkpoint_every=15)
    with tempfile.TemporaryDirectory(prefix="synthmed-bench-") as tmp, \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the stub's optimiser never steps
        run_dir = Path(tmp) / "run"
        config = RunConfig("dcgan", DCGANConfig.tutorial(), train)  # what config.yaml holds
        trainer.fit(StubModel(), data, config, run_dir, progress=False)
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    speeds = [json.loads(line)["images_per_s"] for line in lines][1:]
    return BATCH / statistics.median(speeds)


# -- driver ---------------------------------------------------------------------------------


def print_ratio_table(title: str, speed: dict[tuple[str, str], float],
                      precisions: list[str], ours_key: str = "ours") -> None:
    print(title)
    print(f"{'':24s}{'ours':>8s}{'reference':>11s}{'ratio':>8s}  goal")
    if "fp32" in precisions:
        ours, ref = speed[(ours_key, "fp32")], speed[("ref", "fp32")]
        print(f"{'fp32':24s}{ours:8.0f}{ref:11.0f}{ours / ref:8.2f}  >= 0.95")
    if "bf16" in precisions:
        ours, ref = speed[(ours_key, "bf16")], speed[("ref", "bf16")]
        print(f"{'bf16':24s}{ours:8.0f}{ref:11.0f}{ours / ref:8.2f}")
        if "fp32" in precisions:
            ratio = ours / speed[("ref", "fp32")]
            print(f"{'ours bf16 / ref fp32':24s}{'':19s}{ratio:8.2f}  >= 1.5")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2560,
                        help="images per epoch (a multiple of 256; default 2560 = 10 batches)")
    parser.add_argument("--epochs", type=int, default=2,
                        help="epochs per run; the first is warm-up (default 2)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="interleaved whole-run repeats (default 3)")
    parser.add_argument("--steps", type=int, default=6,
                        help="round-robin single steps per side and precision (default 6; "
                             "0 skips parts 2 and 3)")
    parser.add_argument("--precisions", default="fp32,bf16", help="comma list (fp32,bf16)")
    args = parser.parse_args(argv)
    if args.images % BATCH or args.images < BATCH:
        parser.error(f"--images must be a positive multiple of {BATCH}")
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (the first epoch is warm-up)")
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    if not precisions or set(precisions) - {"fp32", "bf16"}:
        parser.error("--precisions takes fp32 and/or bf16")
    batches = args.images // BATCH

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.images} images/epoch = {batches} batches of {BATCH}, {args.epochs} "
          f"epochs/run (the first is warm-up), {args.repeats} repeats")
    rng = np.random.default_rng(0)
    array = rng.uniform(-1, 1, (args.images, 1, 28, 28)).astype(np.float32)
    data = ImageSet.from_arrays(array)
    images = torch.from_numpy(array)

    # 1. whole runs, interleaved.
    print("\n1. whole runs (images/s per epoch; ours as logged / without finish_epoch)")
    runs: dict[tuple[str, str], list[float]] = {}
    ours_runs: dict[str, list[dict]] = {p: [] for p in precisions}
    for repeat in range(args.repeats):
        for precision in precisions:
            for who in ("ours", "ref") if repeat % 2 == 0 else ("ref", "ours"):
                if who == "ours":
                    result = ours_run(data, args.epochs, precision, repeat)
                    ours_runs[precision].append(result)
                    runs.setdefault(("ours", precision), []).extend(result["logged"][1:])
                    runs.setdefault(("ours steps", precision), []).extend(
                        result["steps_only"][1:])
                    shown = " ".join(f"{a:.0f}/{b:.0f}" for a, b in
                                     zip(result["logged"], result["steps_only"], strict=True))
                else:
                    per_epoch = reference_run(images, args.epochs, precision, repeat)
                    runs.setdefault(("ref", precision), []).extend(per_epoch[1:])
                    shown = " ".join(f"{s:.0f}" for s in per_epoch)
                print(f"  repeat {repeat + 1}/{args.repeats} {precision} {who:4s}: {shown}",
                      flush=True)
    for label, pick in (("medians", statistics.median), ("best (least disturbed)", max)):
        speed = {key: pick(values) for key, values in runs.items()}
        print_ratio_table(f"\nimages/s, {label} of the epochs after the first, ours as logged "
                          "by fit (steps + finish_epoch)", speed, precisions)
        print_ratio_table(f"images/s, {label}, ours without finish_epoch (training steps "
                          "only)", speed, precisions, "ours steps")

    # 2. and 3. single steps, round-robin; fit's own per-step cost.
    if args.steps:
        seconds = steps_interleaved(images, precisions, args.steps)
        median = {key: statistics.median(values) for key, values in seconds.items()}
        speed = {key: BATCH / value for key, value in median.items()}
        print_ratio_table(f"\n2. single steps, round-robin over ours/reference x precisions"
                          f"{' and finish_epoch' if ('finish_epoch', '') in median else ''}, "
                          f"{args.steps} each; images/s from the median step time (ours = "
                          "DCGAN.train_step without fit)", speed, precisions)
        loop = fit_loop_overhead(data)
        finish = median.get(("finish_epoch", ""), 0.0)
        print(f"   finish_epoch (every epoch, fp32 even in bf16 runs): {finish:.3f} s = "
              + ", ".join(f"{finish / median[('ours', p)]:.2f} {p} steps" for p in precisions))
        print(f"3. fit's own per-step cost (stub model): {loop * 1e3:.2f} ms/step")
        print("   predicted fit/reference ratio from 2. and 3. (the per-epoch finish_epoch "
              "spread over the epoch's steps):")
        for n in sorted({batches, 10, MNIST_BATCHES}):
            parts = []
            for p in precisions:
                ours = median[("ours", p)] + loop + finish / n
                parts.append(f"{p} {median[('ref', p)] / ours:.2f}")
                if p == "bf16" and "fp32" in precisions:
                    parts.append(f"ours bf16 / ref fp32 {median[('ref', 'fp32')] / ours:.2f}")
            print(f"     {n:4d} batches/epoch: " + ", ".join(parts))

    # 4. end to end.
    print(f"\n4. our end-to-end fit() per epoch ({args.epochs} epochs; model build, run "
          "directory, previews, checkpoint, GIF and loss plot included), medians over repeats")
    for precision in precisions:
        results = ours_runs[precision]
        wall = statistics.median(r["wall"] for r in results)
        loop = statistics.median(sum(args.images / s for s in r["logged"]) for r in results)
        print(f"  {precision}: {wall / args.epochs:6.2f} s/epoch ="
              f" {args.images * args.epochs / wall:4.0f} images/s end to end; outside the"
              f" logged epoch time {(wall - loop) / args.epochs:5.2f} s/epoch"
              f" ({100 * (wall - loop) / wall:.0f} %)")
        names = sorted({name for r in results for name in r["helpers"]})
        helpers = {name.lstrip("_"): statistics.median(r["helpers"].get(name, 0.0)
                                                       for r in results) for name in names}
        outside = sum(v for k, v in helpers.items() if k != "finish_epoch")
        parts = ", ".join(f"{name} {value:.2f}" for name, value in helpers.items())
        print(f"        seconds per run: {parts}; rest (model build, fit setup) "
              f"{wall - loop - outside:.2f}")


if __name__ == "__main__":
    main()

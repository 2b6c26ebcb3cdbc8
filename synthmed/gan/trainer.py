"""One fit loop for every GAN: progress, metrics, sample grids, atomic checkpoints, exact
resume, bf16 autocast, and data-parallel training under ``torchrun``.

The model supplies ``make_optimizers()``, ``train_step(batch, optimizers, rng, autocast)``,
``preview(...)``, ``state_dict()``, ``min_batch`` (the smallest batch it can train on)
and optionally ``finish_epoch(seed)`` and ``make_private(private)``; the data
(:mod:`synthmed.gan.data`: labelled images or two unpaired domains) supplies the batches and
the preview's inputs. The loop knows nothing else about either.

Randomness: the order of the images comes from a generator seeded with ``seed`` (the same
on every process); noise and augmentation from one seeded with ``seed`` and the process
rank; dropout from torch's global generator, seeded the same way. All three are saved in
every checkpoint, so a resumed run repeats an uninterrupted one exactly.

Under ``torchrun`` each process trains on its own share of every batch order; gradients
are averaged across processes (all-reduce, gloo on CPU, NCCL on GPUs) before each
optimiser step and normalisation statistics at each epoch's end, so all copies of the
model stay identical.

With ``privacy`` (a DCGAN on one process) the discriminator trains with DP-SGD
(:mod:`synthmed.gan.dp`): batches are Poisson samples drawn from the order generator,
the accountant's state is saved with every checkpoint, the spend is logged each epoch and
kept in ``training_data.json``, and training stops early, with a checkpoint, when another
epoch would spend more than the target epsilon.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from synthmed.augment.dataset import ImageSet
from synthmed.augment.preview import save_grid
from synthmed.errors import InputError, SynthmedError
from synthmed.gan import checkpoint, distributed
from synthmed.gan.config import DPConfig, TrainConfig
from synthmed.gan.data import LabelledImages, UnpairedImages
from synthmed.gan.run import read_training_data
from synthmed.io import atomic_write, write_json

if TYPE_CHECKING:
    from synthmed.gan.dp import PrivateDiscriminator

TrainingData = LabelledImages | UnpairedImages


class TrainingDiverged(SynthmedError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass(frozen=True)
class FitResult:
    """What a finished fit left: the run directory, epochs done, the last epoch's metrics and
    why it stopped before the planned epochs (or ``""``)."""

    run_dir: Path
    epochs: int
    metrics: dict[str, float]
    note: str = ""


def fit(
    model: nn.Module,
    data: ImageSet | TrainingData,
    train: TrainConfig,
    run_dir: Path,
    *,
    run_config: dict[str, Any],
    resume: bool = False,
    progress: bool = True,
    privacy: DPConfig | None = None,
) -> FitResult:
    """Train ``model`` on ``data`` into ``run_dir``; with ``resume``, continue from its checkpoint
    (or start again when a kill came before the first one).

    Args:
        data: an image set (labelled images) or a :mod:`synthmed.gan.data` object.
        run_config: the resolved configuration, written to ``config.yaml``.
        progress: show a progress bar (on the first process only).
        privacy: train the discriminator with differential privacy (DCGAN only).

    Raises:
        InputError: the run directory is in use (without ``resume``) or belongs to other data
            or other privacy settings; privacy asked of a model or setting without it.
        TrainingDiverged: a loss became NaN or infinite.
    """
    run_dir = Path(run_dir)
    data = LabelledImages(data) if isinstance(data, ImageSet) else data
    rank, world = distributed.init()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) \
        if torch.cuda.is_available() else torch.device("cpu")
    model.to(device)
    order_rng = torch.Generator().manual_seed(train.seed)
    step_rng = torch.Generator(device=device).manual_seed(train.seed * 1_000 + rank)
    torch.manual_seed(train.seed * 1_000 + rank)
    restart = resume and checkpoint.is_unstarted(run_dir)  # killed before its first checkpoint
    state = checkpoint.load_state(run_dir) if resume and not restart else None
    if state is not None:
        _require_same_data(run_dir, data)
        if (privacy is None) != ("privacy" not in state):
            raise InputError("was trained with other differential privacy settings: resume "
                             "with the same options", run_dir)
    private = None
    if privacy is not None:
        private = _make_private(model, data, train, privacy, world, step_rng,
                                state["privacy"] if state is not None else None)
    optimizers = model.make_optimizers()
    schedulers = {name: torch.optim.lr_scheduler.LambdaLR(opt, _lr_factor(train))
                  for name, opt in optimizers.items()}
    start_epoch = 0
    if state is not None:
        model.load_state_dict(state["model"])
        for name, opt in optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
            schedulers[name].load_state_dict(state["schedulers"][name])
        order_rng.set_state(state["rng"]["order"])
        step_rng.set_state(state["rng"]["step"][rank])
        torch.set_rng_state(state["rng"]["torch"][rank])
        if "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"][rank])
        start_epoch = int(state["epoch"])
        if rank == 0:
            _truncate_metrics(run_dir, start_epoch)
            checkpoint.remove_temporaries(run_dir)
    else:
        problem = None
        if rank == 0:
            try:
                _start_run(run_dir, run_config, data, private, restart)
            except InputError as error:
                problem = error
        if not distributed.all_succeeded(problem is None):
            raise problem or SynthmedError("process 0 could not start the run")
    last_checkpoint = start_epoch
    if world > 1:
        _broadcast_state(model)
        for opt in optimizers.values():
            opt.register_step_pre_hook(_average_gradients_hook(world))
        dist.barrier()

    data.to(device)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16)
                if train.precision == "bf16" else contextlib.nullcontext())
    epoch_metrics: dict[str, float] = {}
    steps_per_epoch = (private.steps_per_epoch if private is not None else
                       len(_batches(torch.arange(len(data)), train.batch_size, rank, world,
                                    model.min_batch)))
    # disable=None: tqdm hides the bar when stderr is not a terminal (batch pipelines)
    bar = tqdm(total=(train.epochs - start_epoch) * steps_per_epoch, unit="step",
               disable=True if not progress or rank != 0 else None, dynamic_ncols=True)
    epochs_done = start_epoch
    budget_left = private is None or private.affords(steps_per_epoch)
    for epoch in range(start_epoch, train.epochs):
        if not budget_left:
            break
        batches = (private.batches(order_rng) if private is not None else
                   _batches(torch.randperm(len(data), generator=order_rng), train.batch_size,
                            rank, world, model.min_batch))
        started = time.perf_counter()
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        seen = 0
        learning_rates = {f"lr_{name}": s.get_last_lr()[0] for name, s in schedulers.items()}
        bar.set_description(f"epoch {epoch + 1}/{train.epochs}")
        for step, index in enumerate(batches):
            index = index.to(device)
            stats = model.train_step(data.batch(index, step_rng), optimizers, step_rng,
                                     autocast)
            if not all(math.isfinite(v) for v in stats.values()):
                raise TrainingDiverged(
                    _divergence_message(run_dir, epoch, step, stats, last_checkpoint))
            for key, value in stats.items():
                sums[key] = sums.get(key, 0.0) + value
                counts[key] = counts.get(key, 0) + 1
            seen += len(index) * world
            bar.set_postfix(_postfix(stats, seen / (time.perf_counter() - started)))
            bar.update()
        images_per_s = seen / (time.perf_counter() - started)
        for scheduler in schedulers.values():
            scheduler.step()
        if hasattr(model, "finish_epoch"):
            with autocast:
                model.finish_epoch(seed=train.seed + epoch)
        if world > 1:
            _average_buffers(model, world)
        epoch_metrics = {key: value / counts[key] for key, value in sums.items()}
        epoch_metrics["images_per_s"] = images_per_s
        if private is not None:
            epoch_metrics.update(private.metrics())
            budget_left = private.affords(steps_per_epoch)
        if rank == 0:
            epoch_metrics.update(_save_preview(model, data, train, run_dir, epoch + 1))
            _log(run_dir, epoch + 1, {**epoch_metrics, **learning_rates}, progress, train.epochs)
        if (epoch + 1 == train.epochs or (epoch + 1) % train.checkpoint_every == 0
                or not budget_left):
            rng_states = {"order": order_rng.get_state(),
                          "step": _gather(step_rng.get_state(), world, device),
                          "torch": _gather(torch.get_rng_state(), world, device)}
            if device.type == "cuda":
                rng_states["cuda"] = _gather(torch.cuda.get_rng_state(), world, device)
            if rank == 0:
                _save_checkpoint(run_dir, model, optimizers, schedulers, epoch + 1, rng_states,
                                 private)
            last_checkpoint = epoch + 1
        if world > 1:
            dist.barrier()
        epochs_done = epoch + 1
    bar.close()
    if rank == 0:
        _save_progress_gif(run_dir)
        _save_loss_plot(run_dir)
    note = ""
    if private is not None and epochs_done < train.epochs:
        note = (f"privacy budget spent: epsilon {private.epsilon():.3g} of {privacy.epsilon:g} "
                f"after {epochs_done} of {train.epochs} epochs (another would exceed it); "
                f"training stopped, the checkpoint of epoch {epochs_done} is kept")
    return FitResult(run_dir, epochs_done, epoch_metrics, note)


# -- run directory -----------------------------------------------------------------------


def _make_private(model: nn.Module, data: TrainingData, train: TrainConfig, privacy: DPConfig,
                  world: int, noise: torch.Generator,
                  state: dict[str, Any] | None) -> PrivateDiscriminator:
    """Make ``model``'s discriminator private (before its optimisers are made)."""
    from synthmed.gan.dp import PrivateDiscriminator  # Opacus takes seconds to import

    if not hasattr(model, "make_private"):
        raise InputError(f"differential privacy is available for DCGAN training only, not "
                         f"{model.kind}")
    if world > 1:
        raise InputError("differential privacy does not run under torchrun yet: train on one "
                         "process")
    if data.repeats != 1:
        raise InputError("differential privacy needs every image once per epoch (repeats 1)")
    private = PrivateDiscriminator(privacy, len(data), train.batch_size, train.epochs, noise,
                                   state)
    model.make_private(private)
    return private


def _start_run(run_dir: Path, run_config: dict[str, Any], data: TrainingData,
               private: PrivateDiscriminator | None, restart: bool) -> None:
    """Write the run's config and data record; ``restart`` replaces what a run killed before
    its first checkpoint left in ``run_dir``."""
    if restart:
        checkpoint.discard_unstarted(run_dir)
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise InputError("already holds files: pass --resume to continue that run, or choose "
                         "another --out", run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint.write_config(run_dir, run_config)  # first: it marks the folder as a run's
    (run_dir / checkpoint.SAMPLES).mkdir(exist_ok=True)
    record = data.record()
    if private is not None:
        record["differential_privacy"] = private.record()
    write_json(run_dir / checkpoint.TRAINING_DATA, record)


def _require_same_data(run_dir: Path, data: TrainingData) -> None:
    if read_training_data(run_dir).get("fingerprint") != data.fingerprint():
        raise InputError("was trained on other data (fingerprints differ): resume with the "
                         "same data and options", run_dir)


def _save_checkpoint(run_dir: Path, model: nn.Module, optimizers: dict, schedulers: dict,
                     epoch: int, rng_states: dict[str, Any],
                     private: PrivateDiscriminator | None) -> None:
    state = {
        "epoch": epoch,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
        "schedulers": {name: s.state_dict() for name, s in schedulers.items()},
        "rng": rng_states,
    }
    if private is not None:  # the record first: a kill in between overstates the spend
        path = run_dir / checkpoint.TRAINING_DATA
        record = json.loads(path.read_text())
        write_json(path, {**record, "differential_privacy": private.record()})
        state["privacy"] = private.state_dict()
    checkpoint.save_state(run_dir, state)
    checkpoint.save_weights(run_dir, state["model"], model.kind, epoch)


def _log(run_dir: Path, epoch: int, metrics: dict[str, float], progress: bool,
         epochs: int) -> None:
    """Append the epoch's metrics (and the learning rates it trained with) to metrics.jsonl."""
    line = {"epoch": epoch, **{k: float(f"{v:.6g}") for k, v in metrics.items()}}
    with (run_dir / checkpoint.METRICS).open("a") as handle:
        handle.write(json.dumps(line) + "\n")
    if progress:
        shown = "  ".join(f"{k} {v:.3g}" for k, v in metrics.items())
        tqdm.write(f"epoch {epoch}/{epochs}  {shown}")


def _truncate_metrics(run_dir: Path, epoch: int) -> None:
    """Drop the metric lines (one per epoch, the last perhaps torn by a kill) that a killed
    run wrote after its last checkpoint."""
    path = run_dir / checkpoint.METRICS
    if path.is_file():
        kept = path.read_text().splitlines()[:epoch]
        atomic_write(path, "".join(f"{line}\n" for line in kept).encode())


def _save_preview(model: nn.Module, data: TrainingData, train: TrainConfig, run_dir: Path,
                  epoch: int) -> dict[str, float]:
    """Save the epoch's sample grid from fixed inputs.

    A generator's samples ``(N, C, H, W)`` are laid out in a square and their diversity (mean
    pairwise RMS distance, a mode-collapse signal) is returned; a translator's rows
    ``(R, K, C, H, W)`` (e.g. A, A->B, A->B->A, ...) are laid out row by row.
    """
    images = model.preview(**data.preview_inputs(train.preview, train.seed + 1)).cpu()
    path = run_dir / checkpoint.SAMPLES / f"epoch_{epoch:04d}.png"
    if images.ndim == 5:
        save_grid(images.flatten(0, 1).numpy(), path, columns=images.shape[1])
        return {}
    save_grid(images.numpy(), path, columns=int(math.ceil(math.sqrt(len(images)))))
    flat = images.flatten(1)
    distances = torch.cdist(flat, flat) / math.sqrt(flat.shape[1])
    n = len(flat)
    return {"diversity": float(distances.sum() / max(n * (n - 1), 1))}


def _save_progress_gif(run_dir: Path) -> None:
    from PIL import Image

    frames = [Image.open(p) for p in sorted((run_dir / checkpoint.SAMPLES).glob("epoch_*.png"))]
    if frames:
        buffer = io.BytesIO()
        frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:],
                       duration=300, loop=0)
        atomic_write(run_dir / "progress.gif", buffer.getvalue())


def _save_loss_plot(run_dir: Path) -> None:
    import matplotlib.pyplot as plt

    lines = [json.loads(line) for line in (run_dir / checkpoint.METRICS).read_text().splitlines()]
    if not lines:
        return
    epochs = [line["epoch"] for line in lines]
    figure, (losses, scores) = plt.subplots(1, 2, figsize=(10, 3.5))
    for key in (k for k in lines[0] if k.startswith("loss")):
        losses.plot(epochs, [line[key] for line in lines], label=key)
    for key in ("d_real", "d_fake", "d_accuracy", "diversity"):
        if key in lines[0]:
            scores.plot(epochs, [line[key] for line in lines], label=key)
    for axis, title in ((losses, "losses"), (scores, "D scores, accuracy, sample diversity")):
        axis.set_xlabel("epoch")
        axis.set_title(title)
        axis.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    atomic_write(run_dir / "losses.png", buffer.getvalue())


# -- steps ------------------------------------------------------------------------------


def _batches(order: torch.Tensor, batch_size: int, rank: int, world: int,
             minimum: int = 2) -> list[torch.Tensor]:
    """This process's share of each global batch; a last batch too small for the model (fewer
    than ``minimum`` images on some process: BatchNorm needs 2) is dropped on every process,
    so that all take the same number of steps (an extra step's all-reduce would wait forever)."""
    global_size = batch_size * world
    batches = []
    for start in range(0, len(order), global_size):
        chunk = order[start:start + global_size]
        if len(chunk) >= minimum * world:  # the smallest share has len(chunk) // world images
            batches.append(chunk[rank::world])
    if not batches:
        raise SynthmedError(f"{len(order)} images are too few for training on {world} "
                            f"process(es): need at least {minimum} per process")
    return batches


def _lr_factor(train: TrainConfig):
    """Learning-rate factor per epoch: 1, then a linear fall to 0 from ``lr_decay_start``."""
    start = train.lr_decay_start

    def factor(epoch: int) -> float:
        if start is None or epoch < start:
            return 1.0
        return max(0.0, 1.0 - (epoch - start + 1) / (train.epochs - start + 1))

    return factor


def _postfix(stats: dict[str, float], images_per_s: float) -> dict[str, str]:
    shown = {k: f"{v:.3f}" for k, v in stats.items()}
    shown["img/s"] = f"{images_per_s:.0f}"
    return shown


def _divergence_message(run_dir: Path, epoch: int, step: int, stats: dict[str, float],
                        last_checkpoint: int) -> str:
    bad = ", ".join(f"{k} = {v}" for k, v in stats.items() if not math.isfinite(v))
    kept = (f"the last good checkpoint (epoch {last_checkpoint}) is kept in {run_dir}"
            if last_checkpoint else "no checkpoint had been written yet")
    return (f"training diverged at epoch {epoch + 1}, step {step + 1} ({bad}); {kept}; "
            "try a lower learning rate, --loss hinge or spectral norm")


# -- distributed ------------------------------------------------------------------------


def _broadcast_state(model: nn.Module) -> None:
    for tensor in model.state_dict().values():
        dist.broadcast(tensor, src=0)


def _average_gradients_hook(world: int):
    def hook(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        for group in optimizer.param_groups:
            for parameter in group["params"]:
                if parameter.grad is not None:
                    dist.all_reduce(parameter.grad)
                    parameter.grad /= world

    return hook


def _average_buffers(model: nn.Module, world: int) -> None:
    """Average the normalisation statistics (``running_mean`` / ``running_var``) over the
    processes; other buffers (a CycleGAN's pool of past fakes) stay each process's own."""
    for name, buffer in model.named_buffers():
        if buffer.is_floating_point() and "running_" in name.rsplit(".", 1)[-1]:
            dist.all_reduce(buffer)
            buffer /= world


def _gather(state: torch.Tensor, world: int, device: torch.device) -> list[torch.Tensor]:
    """Every process's copy of an RNG state (CPU tensors), in rank order; the collective
    runs on ``device`` because NCCL only moves GPU tensors."""
    if world == 1:
        return [state.cpu()]
    local = state.to(device)
    gathered = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(gathered, local)
    return [tensor.cpu() for tensor in gathered]

"""One fit loop for every GAN: progress, metrics, sample grids, atomic checkpoints, exact
resume, bf16 autocast, and data-parallel training under ``torchrun``.

The model is a :class:`~synthmed.gan.model.GenerativeModel` (optimisers, a train step, a
preview, its state); the data (:mod:`synthmed.gan.data`: labelled images or two unpaired
domains) supplies the batches and the preview's inputs. The loop knows nothing else about
either. :mod:`synthmed.gan.train` builds both from a user's files and options.

Randomness: the order of the images comes from a generator seeded with ``seed`` (the same
on every process); noise and augmentation from one seeded with ``seed`` and the process
rank; dropout from torch's global generator, seeded the same way. All three are saved in
every checkpoint, so a resumed run repeats an uninterrupted one exactly.

Under ``torchrun`` each process trains on its own share of every batch order
(:mod:`synthmed.gan.distributed` keeps the copies of the model identical).

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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm import tqdm

from synthmed.augment.dataset import ImageSet
from synthmed.augment.preview import save_grid
from synthmed.errors import InputError, SynthmedError
from synthmed.gan import checkpoint, distributed
from synthmed.gan.config import TrainConfig
from synthmed.gan.data import LabelledImages, PairedImages, UnpairedImages
from synthmed.gan.model import GenerativeModel
from synthmed.gan.run_config import RunConfig, write_run_config
from synthmed.gan.training_record import read_training_data
from synthmed.io import atomic_write, write_json

if TYPE_CHECKING:
    from synthmed.gan.dp import PrivateDiscriminator

TrainingData = LabelledImages | UnpairedImages | PairedImages


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


@dataclass
class _Session:
    """What a fit carries from epoch to epoch: the process, its random generators, the
    optimisers and their schedules, the private discriminator (or ``None``) and the epoch of
    the last checkpoint."""

    rank: int
    world: int
    device: torch.device
    order_rng: torch.Generator
    step_rng: torch.Generator
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler]
    private: PrivateDiscriminator | None
    epoch: int = 0
    last_checkpoint: int = 0


def fit(
    model: GenerativeModel,
    data: ImageSet | TrainingData,
    config: RunConfig,
    run_dir: Path,
    *,
    resume: bool = False,
    progress: bool = True,
) -> FitResult:
    """Train ``model`` on ``data`` into ``run_dir`` as ``config`` says (its ``train`` and
    ``privacy`` sections; ``config`` is written to ``config.yaml``); with ``resume``, continue
    from the run's checkpoint (or start again when a kill came before the first one).

    Args:
        data: an image set (labelled images) or a :mod:`synthmed.gan.data` object.
        progress: show a progress bar (on the first process only).

    Raises:
        InputError: the run directory is in use (without ``resume``) or belongs to other data
            or other privacy settings; privacy asked of a model or setting without it.
        TrainingDiverged: a loss became NaN or infinite.
    """
    run_dir = Path(run_dir)
    data = LabelledImages(data) if isinstance(data, ImageSet) else data
    session = _set_up(model, data, config, run_dir, resume)
    data.to(session.device)
    train = config.train
    steps_per_epoch = (session.private.steps_per_epoch if session.private is not None else
                       len(_batches(torch.arange(len(data)), train.batch_size, session.rank,
                                    session.world, model.min_batch)))
    # disable=None: tqdm hides the bar when stderr is not a terminal (batch pipelines)
    bar = tqdm(total=(train.epochs - session.epoch) * steps_per_epoch, unit="step",
               disable=True if not progress or session.rank != 0 else None, dynamic_ncols=True)
    metrics: dict[str, float] = {}
    while session.epoch < train.epochs and _affords(session, steps_per_epoch):
        bar.set_description(f"epoch {session.epoch + 1}/{train.epochs}")
        metrics = _train_epoch(model, data, train, run_dir, session, bar)
        _end_epoch(model, data, train, run_dir, session, metrics, progress,
                   last=not _affords(session, steps_per_epoch))
    bar.close()
    if session.rank == 0:
        _save_progress_gif(run_dir)
        _save_loss_plot(run_dir)
    note = ""
    if session.private is not None and session.epoch < train.epochs:
        note = (f"privacy budget spent: epsilon {session.private.epsilon():.3g} of "
                f"{config.privacy.epsilon:g} after {session.epoch} of {train.epochs} epochs "
                f"(another would exceed it); training stopped, the checkpoint of epoch "
                f"{session.epoch} is kept")
    return FitResult(run_dir, session.epoch, metrics, note)


def _set_up(model: GenerativeModel, data: TrainingData, config: RunConfig, run_dir: Path,
            resume: bool) -> _Session:
    """The process, the model on its device, seeded generators, optimisers and schedules:
    restored from the run's checkpoint, or with the run's files started."""
    rank, world = distributed.init()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) \
        if torch.cuda.is_available() else torch.device("cpu")
    model.to(device)
    train = config.train
    order_rng = torch.Generator().manual_seed(train.seed)
    step_rng = torch.Generator(device=device).manual_seed(train.seed * 1_000 + rank)
    torch.manual_seed(train.seed * 1_000 + rank)
    restart = resume and checkpoint.is_unstarted(run_dir)  # killed before its first checkpoint
    state = checkpoint.load_state(run_dir) if resume and not restart else None
    if state is not None:
        _require_same_run(run_dir, data, config, state)
    private = None
    if config.privacy is not None:
        private = _make_private(model, data, config, world, step_rng,
                                state["privacy"] if state is not None else None)
    optimizers = model.make_optimizers()
    schedulers = {name: torch.optim.lr_scheduler.LambdaLR(opt, _lr_factor(train))
                  for name, opt in optimizers.items()}
    session = _Session(rank, world, device, order_rng, step_rng, optimizers, schedulers,
                       private)
    if state is not None:
        _restore(model, session, state, run_dir)
    else:
        problem = None
        if rank == 0:
            try:
                _start_run(run_dir, config, data, private, restart)
            except InputError as error:
                problem = error
        if not distributed.all_succeeded(problem is None):
            raise problem or SynthmedError("process 0 could not start the run")
    if world > 1:
        distributed.share_model(model, optimizers, world)
    return session


def _restore(model: GenerativeModel, session: _Session, state: dict[str, Any],
             run_dir: Path) -> None:
    """The model, optimisers, schedules and random generators of the last checkpoint; the
    metric lines and temporary files a kill left after it are dropped."""
    model.load_state_dict(state["model"])
    for name, optimizer in session.optimizers.items():
        optimizer.load_state_dict(state["optimizers"][name])
        session.schedulers[name].load_state_dict(state["schedulers"][name])
    rank = session.rank
    session.order_rng.set_state(state["rng"]["order"])
    session.step_rng.set_state(state["rng"]["step"][rank])
    torch.set_rng_state(state["rng"]["torch"][rank])
    if "cuda" in state["rng"]:
        torch.cuda.set_rng_state(state["rng"]["cuda"][rank])
    session.epoch = session.last_checkpoint = int(state["epoch"])
    if rank == 0:
        _truncate_metrics(run_dir, session.epoch)
        checkpoint.remove_temporaries(run_dir)


def _affords(session: _Session, steps: int) -> bool:
    """Whether the privacy budget allows another epoch of ``steps`` (always without DP)."""
    return session.private is None or session.private.affords(steps)


def _train_epoch(model: GenerativeModel, data: TrainingData, train: TrainConfig,
                 run_dir: Path, session: _Session, bar: tqdm) -> dict[str, float]:
    """One epoch's steps; returns the mean of each step statistic and the throughput."""
    s = session
    batches = (s.private.batches(s.order_rng) if s.private is not None else
               _batches(torch.randperm(len(data), generator=s.order_rng), train.batch_size,
                        s.rank, s.world, model.min_batch))
    autocast = (torch.autocast(s.device.type, dtype=torch.bfloat16)
                if train.precision == "bf16" else contextlib.nullcontext())
    started = time.perf_counter()
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    seen = 0
    for step, index in enumerate(batches):
        index = index.to(s.device)
        stats = model.train_step(data.batch(index, s.step_rng), s.optimizers, s.step_rng,
                                 autocast)
        if not all(math.isfinite(v) for v in stats.values()):
            raise TrainingDiverged(
                _divergence_message(run_dir, s.epoch, step, stats, s.last_checkpoint))
        for key, value in stats.items():
            sums[key] = sums.get(key, 0.0) + value
            counts[key] = counts.get(key, 0) + 1
        seen += len(index) * s.world
        bar.set_postfix(_postfix(stats, seen / (time.perf_counter() - started)))
        bar.update()
    images_per_s = seen / (time.perf_counter() - started)
    with autocast:
        model.finish_epoch(seed=train.seed + s.epoch)
    return {**{key: value / counts[key] for key, value in sums.items()},
            "images_per_s": images_per_s}


def _end_epoch(model: GenerativeModel, data: TrainingData, train: TrainConfig, run_dir: Path,
               session: _Session, metrics: dict[str, float], progress: bool,
               last: bool) -> None:
    """Step the schedules, share statistics, log the epoch with its learning rates and, when
    due, its preview (the metrics gain the preview's diversity and the privacy spent), and
    save a checkpoint when one is due: the preview every ``preview_every`` epochs and the
    checkpoint every ``checkpoint_every``, both at the end or when ``last`` because the
    privacy budget is spent."""
    s = session
    learning_rates = {f"lr_{name}": sch.get_last_lr()[0] for name, sch in s.schedulers.items()}
    for scheduler in s.schedulers.values():
        scheduler.step()
    if s.world > 1:
        distributed.average_buffers(model, s.world)
    if s.private is not None:
        metrics.update(s.private.metrics())
    s.epoch += 1
    if s.rank == 0:
        if _due(s.epoch, train.preview_every, train.epochs, last):
            metrics.update(_save_preview(model, data, train, run_dir, s.epoch))
        _log(run_dir, s.epoch, {**metrics, **learning_rates}, progress, train.epochs)
    if _due(s.epoch, train.checkpoint_every, train.epochs, last):
        rng_states = {"order": s.order_rng.get_state(),
                      "step": distributed.gather(s.step_rng.get_state(), s.world, s.device),
                      "torch": distributed.gather(torch.get_rng_state(), s.world, s.device)}
        if s.device.type == "cuda":
            rng_states["cuda"] = distributed.gather(torch.cuda.get_rng_state(), s.world,
                                                    s.device)
        if s.rank == 0:
            _save_checkpoint(run_dir, model, s, rng_states)
        s.last_checkpoint = s.epoch
    distributed.barrier()


def _due(epoch: int, every: int, epochs: int, last: bool) -> bool:
    """Whether a periodic save falls on ``epoch``: every ``every`` epochs and at the end."""
    return epoch % every == 0 or epoch == epochs or last


# -- run directory -----------------------------------------------------------------------


def _make_private(model: GenerativeModel, data: TrainingData, config: RunConfig, world: int,
                  noise: torch.Generator, state: dict[str, Any] | None) -> PrivateDiscriminator:
    """Make ``model``'s discriminator private (before its optimisers are made)."""
    from synthmed.gan.dp import PrivateDiscriminator  # Opacus takes seconds to import

    if world > 1:
        raise InputError("differential privacy does not run under torchrun yet: train on one "
                         "process")
    if data.repeats != 1:
        raise InputError("differential privacy needs every image once per epoch (repeats 1)")
    train = config.train
    private = PrivateDiscriminator(config.privacy, len(data), train.batch_size, train.epochs,
                                   noise, state)
    model.make_private(private)
    return private


def _start_run(run_dir: Path, config: RunConfig, data: TrainingData,
               private: PrivateDiscriminator | None, restart: bool) -> None:
    """Write the run's config and data record; ``restart`` replaces what a run killed before
    its first checkpoint left in ``run_dir``."""
    if restart:
        checkpoint.discard_unstarted(run_dir)
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise InputError("already holds files: pass --resume to continue that run, or choose "
                         "another --out", run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_run_config(run_dir, config)  # first: it marks the folder as a run's
    (run_dir / checkpoint.SAMPLES).mkdir(exist_ok=True)
    record = data.record()
    if private is not None:
        record["differential_privacy"] = private.record()
    write_json(run_dir / checkpoint.TRAINING_DATA, record)


def _require_same_run(run_dir: Path, data: TrainingData, config: RunConfig,
                      state: dict[str, Any]) -> None:
    """Refuse to resume a checkpoint with other data or other privacy settings."""
    if read_training_data(run_dir).get("fingerprint") != data.fingerprint():
        raise InputError("was trained on other data (fingerprints differ): resume with the "
                         "same data and options", run_dir)
    if (config.privacy is None) != ("privacy" not in state):
        raise InputError("was trained with other differential privacy settings: resume "
                         "with the same options", run_dir)


def _save_checkpoint(run_dir: Path, model: GenerativeModel, session: _Session,
                     rng_states: dict[str, Any]) -> None:
    state = {
        "epoch": session.epoch,
        "model": model.state(),
        "optimizers": {name: opt.state_dict() for name, opt in session.optimizers.items()},
        "schedulers": {name: s.state_dict() for name, s in session.schedulers.items()},
        "rng": rng_states,
    }
    if session.private is not None:  # the record first: a kill in between overstates the spend
        path = run_dir / checkpoint.TRAINING_DATA
        record = json.loads(path.read_text())
        write_json(path, {**record, "differential_privacy": session.private.record()})
        state["privacy"] = session.private.state_dict()
    checkpoint.save_state(run_dir, state)
    checkpoint.save_weights(run_dir, state["model"], model.kind, session.epoch)


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


def _save_preview(model: GenerativeModel, data: TrainingData, train: TrainConfig, run_dir: Path,
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
    for key in ("d_real", "d_fake", "d_accuracy", "diversity"):  # diversity: grid epochs
        logged = [(line["epoch"], line[key]) for line in lines if key in line]
        if logged:
            scores.plot(*zip(*logged, strict=True), label=key)
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


def _lr_factor(train: TrainConfig) -> Callable[[int], float]:
    """Learning-rate factor per epoch: 1, then a linear fall to 0 over the last
    ``decay_epochs``."""
    decay = train.decay_epochs or 0
    start = train.epochs - decay

    def factor(epoch: int) -> float:
        if not decay or epoch < start:
            return 1.0
        return max(0.0, 1.0 - (epoch - start + 1) / (decay + 1))

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

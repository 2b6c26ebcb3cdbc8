"""Build a model from a run's configuration, and load a trained run for sampling."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from synthmed.errors import InputError
from synthmed.gan import checkpoint
from synthmed.gan.cyclegan import CycleGAN
from synthmed.gan.dcgan import DCGAN
from synthmed.gan.diffusion import DiffusionModel
from synthmed.gan.model import GenerativeModel
from synthmed.gan.run_config import RunConfig, read_run_config
from synthmed.gan.training_record import read_training_data

MODELS: dict[str, type[GenerativeModel]] = {"dcgan": DCGAN, "cyclegan": CycleGAN,
                                             "diffusion": DiffusionModel}


def build_model(config: RunConfig, seed: int = 0) -> GenerativeModel:
    """The model ``config`` describes, initialised from ``seed``."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return MODELS[config.kind](config.model)


@dataclass
class LoadedRun:
    """A trained run: the model in eval mode, its configuration, its training data record,
    the epoch of its weights and their sha256 (the model fingerprint)."""

    path: Path
    model: Any
    config: RunConfig
    training_data: dict[str, Any]
    epoch: int
    fingerprint: str

    @property
    def class_names(self) -> list[str]:
        return list(self.training_data.get("class_names", []))

    def sample(self, n: int, labels=None, generator=None):
        """``n`` images ``(n, C, H, W)`` in [-1, 1] (see the model's ``sample``)."""
        return self.model.sample(n, labels=labels, generator=generator)


def load_run(path: str | Path, kind: str | tuple[str, ...] | None = None) -> LoadedRun:
    """Load ``RUN`` for sampling: config, checked weights, training data record.

    Raises:
        InputError: unknown or incomplete run directory, a run of another kind than ``kind``,
            a config or training data record with a missing, mistyped or out-of-range value
            (naming the file and the field), weights of another model kind, weights that fail
            their checksum or hold NaN / inf, an unreadable training data record. Nothing is
            unpickled: weights come from safetensors, the rest from YAML and JSON.
    """
    path = Path(path)
    config = read_run_config(path, kind)
    model = build_model(config)
    tensors, metadata = checkpoint.load_weights(path, model.kind)
    _require_finite(tensors, path / checkpoint.WEIGHTS)
    try:
        missing, unexpected = model.load_state_dict(tensors, strict=False)
    except RuntimeError:  # a tensor of another shape (strict=False only skips names)
        raise InputError("weights do not fit the configured model (tensor shapes differ)",
                         path / checkpoint.WEIGHTS) from None
    if missing or unexpected:
        raise InputError(f"weights do not fit the configured model (missing {len(missing)}, "
                         f"unexpected {len(unexpected)} tensors)", path / checkpoint.WEIGHTS)
    model.eval()
    record = read_training_data(path, model.config)
    try:
        epoch = int(metadata.get("epoch", 0))
    except ValueError:
        raise InputError(f"epoch {metadata.get('epoch')!r} in the metadata is not a whole "
                         "number", path / checkpoint.WEIGHTS) from None
    return LoadedRun(path, model, config, record, epoch, metadata["tensors_sha256"])


def _require_finite(tensors: dict[str, torch.Tensor], where: Path) -> None:
    """Refuse weights holding NaN or inf: they would make black or noise images, silently."""
    bad = sorted(name for name, tensor in tensors.items()
                 if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()))
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise InputError(f"weights hold NaN or infinite values ({shown}): the training "
                         "diverged or the file was damaged; load an earlier checkpoint or "
                         "train again", where)



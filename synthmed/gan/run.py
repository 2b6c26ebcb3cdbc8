"""Build a model from a resolved configuration, and load a trained run for sampling."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synthmed.errors import InputError
from synthmed.gan import checkpoint
from synthmed.gan.config import DCGANConfig, TrainConfig, from_dict, to_dict
from synthmed.gan.dcgan import DCGAN

MODELS = {"dcgan": (DCGAN, DCGANConfig)}


def run_config(kind: str, model: Any, train: TrainConfig) -> dict[str, Any]:
    """The ``config.yaml`` document of a run (less the versions ``write_config`` adds)."""
    return {"kind": kind, "model": to_dict(model), "train": to_dict(train)}


def build_model(config: dict[str, Any], where: str = "config"):
    """The model a resolved configuration describes, freshly initialised."""
    kind = config.get("kind")
    if kind not in MODELS:
        raise InputError(f"unknown model kind {kind!r}: known kinds are {', '.join(MODELS)}",
                         where)
    model_class, config_class = MODELS[kind]
    return model_class(from_dict(config_class, config.get("model", {}), where))


@dataclass
class LoadedRun:
    """A trained run: the model in eval mode, its configuration and its training data record."""

    path: Path
    model: Any
    config: dict[str, Any]
    training_data: dict[str, Any]
    epoch: int

    @property
    def class_names(self) -> list[str]:
        return list(self.training_data.get("class_names", []))

    def sample(self, n: int, labels=None, generator=None):
        """``n`` images ``(n, C, H, W)`` in [-1, 1] (see the model's ``sample``)."""
        return self.model.sample(n, labels=labels, generator=generator)


def load_run(path: str | Path, kind: str | None = None) -> LoadedRun:
    """Load ``RUN`` for sampling: config, checked weights, training data record.

    Raises:
        InputError: unknown or incomplete run directory, weights of another model kind,
            weights that fail their checksum.
    """
    path = Path(path)
    config = checkpoint.read_config(path)
    if kind is not None and config.get("kind") != kind:
        raise InputError(f"is a {config.get('kind')!r} run, not {kind!r}", path)
    model = build_model(config, str(path / checkpoint.CONFIG))
    tensors, metadata = checkpoint.load_weights(path, model.kind)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise InputError(f"weights do not fit the configured model (missing {len(missing)}, "
                         f"unexpected {len(unexpected)} tensors)", path / checkpoint.WEIGHTS)
    model.eval()
    record_path = path / checkpoint.TRAINING_DATA
    training_data = json.loads(record_path.read_text()) if record_path.is_file() else {}
    return LoadedRun(path, model, config, training_data, int(metadata.get("epoch", 0)))

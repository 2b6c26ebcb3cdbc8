"""Build a model from a resolved configuration, and load a trained run for sampling."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from synthmed.augment.dataset import ImageSet
from synthmed.errors import InputError
from synthmed.gan import checkpoint
from synthmed.gan.config import (
    CycleGANConfig,
    DCGANConfig,
    DPConfig,
    TrainConfig,
    from_dict,
    load_yaml,
    to_dict,
    with_overrides,
)
from synthmed.gan.cyclegan import CycleGAN
from synthmed.gan.dcgan import DCGAN

MODELS = {"dcgan": (DCGAN, DCGANConfig), "cyclegan": (CycleGAN, CycleGANConfig)}


def run_config(kind: str, model: Any, train: TrainConfig,
               privacy: DPConfig | None = None) -> dict[str, Any]:
    """The ``config.yaml`` document of a run (less the versions ``write_config`` adds); a
    differentially private run has a ``privacy`` section."""
    config = {"kind": kind, "model": to_dict(model), "train": to_dict(train)}
    return config if privacy is None else {**config, "privacy": to_dict(privacy)}


def build_model(config: dict[str, Any], where: str = "config", seed: int = 0):
    """The model a resolved configuration describes, initialised from ``seed``."""
    kind = config.get("kind")
    if kind not in MODELS:
        raise InputError(f"unknown model kind {kind!r}: known kinds are {', '.join(MODELS)}",
                         where)
    model_class, config_class = MODELS[kind]
    model_config = from_dict(config_class, config.get("model", {}), where)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return model_class(model_config)


@dataclass
class LoadedRun:
    """A trained run: the model in eval mode, its configuration, its training data record,
    the epoch of its weights and their sha256 (the model fingerprint)."""

    path: Path
    model: Any
    config: dict[str, Any]
    training_data: dict[str, Any]
    epoch: int
    fingerprint: str

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
            weights that fail their checksum, an unreadable training data record. Nothing
            is unpickled: weights come from safetensors, the rest from YAML and JSON.
    """
    path = Path(path)
    config = checkpoint.read_config(path)
    if kind is not None and config.get("kind") != kind:
        raise InputError(f"is a {config.get('kind')!r} run, not {kind!r}", path)
    model = build_model(config, str(path / checkpoint.CONFIG))
    tensors, metadata = checkpoint.load_weights(path, model.kind)
    try:
        missing, unexpected = model.load_state_dict(tensors, strict=False)
    except RuntimeError:  # a tensor of another shape (strict=False only skips names)
        raise InputError("weights do not fit the configured model (tensor shapes differ)",
                         path / checkpoint.WEIGHTS) from None
    if missing or unexpected:
        raise InputError(f"weights do not fit the configured model (missing {len(missing)}, "
                         f"unexpected {len(unexpected)} tensors)", path / checkpoint.WEIGHTS)
    model.eval()
    return LoadedRun(path, model, config, _training_data(path), int(metadata.get("epoch", 0)),
                     metadata["tensors_sha256"])


def _training_data(run_dir: Path) -> dict[str, Any]:
    """The run's ``training_data.json`` record; ``{}`` when it has none."""
    path = run_dir / checkpoint.TRAINING_DATA
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InputError("is not valid JSON (corrupt or tampered)", path) from None
    if not isinstance(record, dict):
        raise InputError("is not a training data record (a JSON object)", path)
    return record


def resolve_dcgan_config(
    preset: str = "dcgan",
    config_file: Path | None = None,
    model_overrides: dict[str, Any] | None = None,
    train_overrides: dict[str, Any] | None = None,
    private: bool = False,
) -> tuple[DCGANConfig, TrainConfig]:
    """Preset defaults, then the YAML file's ``model:`` / ``train:`` sections, then single
    overrides (``None`` values are ignored). A ``private`` D defaults to no normalisation
    (BatchNorm mixes the images of a batch)."""
    values = load_yaml(config_file) if config_file else {}
    where = str(config_file or "config")
    if preset == "tutorial":
        model = DCGANConfig.tutorial()
        train = TrainConfig(batch_size=256, checkpoint_every=15)
    else:
        model, train = DCGANConfig(), TrainConfig()
    if private:
        model = with_overrides(model, d_norm="none")
    model = from_dict(DCGANConfig, {**to_dict(model), **values.get("model", {})}, where)
    train = from_dict(TrainConfig, {**to_dict(train), **values.get("train", {})}, where)
    return (with_overrides(model, **(model_overrides or {})),
            with_overrides(train, **(train_overrides or {})))


def resolve_privacy(epsilon: float | None, delta: float | None = None,
                    max_grad_norm: float | None = None) -> DPConfig | None:
    """The differential privacy the ``--dp-*`` options ask for; ``None`` without an epsilon."""
    if epsilon is None:
        if delta is not None or max_grad_norm is not None:
            raise InputError("--dp-delta and --dp-max-grad-norm need --dp-epsilon")
        return None
    return with_overrides(DPConfig(epsilon), delta=delta, max_grad_norm=max_grad_norm)


def fit_model_to_data(model: DCGANConfig, data: ImageSet, conditional: bool) -> DCGANConfig:
    """Channels and classes from the data; its image size must be the model's."""
    origin = data.metadata.get("origin")
    if conditional and not data.is_labelled:
        raise InputError("--conditional needs labelled data (class folders, a label column or "
                         "npz labels)", origin)
    if data.size != (model.size, model.size):
        raise InputError(f"images are {data.size[0]}x{data.size[1]} but the model makes "
                         f"{model.size}x{model.size}: pass --size {model.size}", origin)
    return with_overrides(model, channels=data.channels,
                          num_classes=len(data.class_names) if conditional else 0)


def resolve_cyclegan_config(
    config_file: Path | None = None,
    model_overrides: dict[str, Any] | None = None,
    train_overrides: dict[str, Any] | None = None,
    decay_epochs: int | None = None,
) -> tuple[CycleGANConfig, TrainConfig]:
    """The reference CycleGAN's defaults (batch 1; 200 epochs, the last half with the learning
    rate falling linearly to 0), then the YAML file's sections, then single overrides.

    Args:
        decay_epochs: the last epochs with a decaying learning rate; ``None``: half of them.
    """
    values = load_yaml(config_file) if config_file else {}
    where = str(config_file or "config")
    train = TrainConfig(epochs=200, batch_size=1, lr_decay_start=100, preview=16)
    model = from_dict(CycleGANConfig, {**to_dict(CycleGANConfig()), **values.get("model", {})},
                      where)
    train = from_dict(TrainConfig, {**to_dict(train), **values.get("train", {})}, where)
    train = with_overrides(train, **(train_overrides or {}))
    decay = train.epochs // 2 if decay_epochs is None else decay_epochs
    if not 0 <= decay <= train.epochs:
        raise InputError(f"--decay-epochs must be between 0 and the {train.epochs} epochs, "
                         f"got {decay}")
    train = with_overrides(train, lr_decay_start=train.epochs - decay if decay else None)
    return with_overrides(model, **(model_overrides or {})), train


def fit_cyclegan_to_data(model: CycleGANConfig, domains: list[ImageSet],
                         crop: int | None) -> CycleGANConfig:
    """Channels from the data; the training crop (``None``: 7/8 of the smaller image side, a
    multiple of 4, like the reference's 256 of 286; 0: whole images) and the generators'
    block count for it."""
    side = min(min(domain.size) for domain in domains)
    if crop is None:
        crop = model.crop or max(model.min_size, side * 7 // 8 // 4 * 4)
    if crop > side:
        raise InputError(f"the training crop {crop} is larger than the images ({side} px): "
                         "pass a smaller --crop", domains[0].metadata.get("origin"))
    return with_overrides(model, channels=domains[0].channels, crop=crop,
                          n_blocks=model.blocks(crop or side))


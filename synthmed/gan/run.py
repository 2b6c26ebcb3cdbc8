"""Build a model from a resolved configuration, and load a trained run for sampling."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from synthmed.augment.dataset import ImageSet
from synthmed.augment.items import ReadConfig
from synthmed.errors import InputError
from synthmed.gan import checkpoint
from synthmed.gan.config import (
    CycleGANConfig,
    DCGANConfig,
    DPConfig,
    TrainConfig,
    from_dict,
    load_yaml,
    shown,
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


def build_model(config: dict[str, Any], where: str | Path = "config", seed: int = 0):
    """The model a resolved configuration describes, initialised from ``seed``."""
    kind = config.get("kind")
    if kind not in MODELS:
        raise InputError(f"unknown model kind {kind!r}: known kinds are {', '.join(MODELS)}",
                         where)
    model_class, config_class = MODELS[kind]
    model_config = from_dict(config_class, config.get("model", {}), where, "model")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return model_class(model_config)


#: What each kind of run is for, when a command is handed the other kind.
_USE = {"dcgan": "a DCGAN generates images: use it with synthmed generate",
        "cyclegan": "a CycleGAN translates images: use it with synthmed translate"}
_SPLITS = ("train", "all")


def read_run_config(run_dir: str | Path, kind: str | None = None) -> dict[str, Any]:
    """``RUN/config.yaml``, every section checked (:func:`check_run_config`); with ``kind``,
    a run of another kind is refused (saying what that kind is for).

    Use this, not :func:`checkpoint.read_config`, wherever a run's settings are used.
    """
    run_dir = Path(run_dir)
    config = checkpoint.read_config(run_dir)
    if kind is not None and config.get("kind") != kind and config.get("kind") in MODELS:
        raise InputError(f"is a {config.get('kind')!r} run, not {kind!r}: "
                         f"{_USE[config['kind']]}", run_dir)
    return check_run_config(config, run_dir / checkpoint.CONFIG)


def check_run_config(config: dict[str, Any], where: str | Path) -> dict[str, Any]:
    """A run's config document with every section checked against its dataclass and the
    data record's types; ``where`` (the file) is named in every error. Returns the document
    with the checked sections normalised (lists as in YAML, ints of float fields as floats).

    Raises:
        InputError: ``where: section: field must be ...``.
    """
    kind = config.get("kind")
    if kind not in MODELS:
        raise InputError(f"unknown model kind {kind!r}: known kinds are {', '.join(MODELS)}",
                         where)
    checked = dict(config)
    for section in ("model", "train"):
        if section not in config:
            raise InputError(f"has no {section}: section", where)
    model = from_dict(MODELS[kind][1], config["model"], where, "model")
    checked["model"] = to_dict(model)
    checked["train"] = to_dict(from_dict(TrainConfig, config["train"], where, "train"))
    if config.get("privacy") is not None:
        if kind != "dcgan":
            raise InputError("privacy: differentially private training is a DCGAN option, "
                             f"not for a {kind} run", where)
        checked["privacy"] = to_dict(from_dict(DPConfig, config["privacy"], where, "privacy"))
    if "data" in config:
        checked["data"] = _check_data_section(config["data"], where)
    return checked


def _check_data_section(data: Any, where: str | Path) -> dict[str, Any]:
    """The ``data:`` section of a run's config: where the training images came from."""
    if not isinstance(data, dict):
        raise InputError(f"data: must be a mapping (source, split, read ...), got "
                         f"{shown(data)}", where)
    for name in ("source", "domain_a", "domain_b"):
        if name in data and not isinstance(data[name], str):
            raise InputError(f"data: {name} must be a string, got {shown(data[name])}", where)
    if "split" in data and data["split"] not in _SPLITS:
        raise InputError(f"data: split must be one of {', '.join(_SPLITS)}, got "
                         f"{shown(data['split'])}", where)
    for name in ("val_subjects", "val_image_hashes"):
        values = data.get(name, [])
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise InputError(f"data: {name} must be a list of strings, got {shown(values)}",
                             where)
    checked = dict(data)
    if "read" in data:
        read = data["read"]
        if not isinstance(read, dict):
            raise InputError(f"data: read: must be a mapping of read options, got "
                             f"{shown(read)}", where)
        root = read.get("root")
        if root is not None and not isinstance(root, str):
            raise InputError(f"data: read: root must be a string or null, got {shown(root)}",
                             where)
        # root is each command's own choice (--root) and need not exist here: not checked
        options = from_dict(ReadConfig, {k: v for k, v in read.items() if k != "root"}, where,
                            "data: read")
        checked["read"] = {**to_dict(options), "root": root}
    return checked


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
        InputError: unknown or incomplete run directory, a run of another kind than ``kind``,
            a config or training data record with a missing, mistyped or out-of-range value
            (naming the file and the field), weights of another model kind, weights that fail
            their checksum or hold NaN / inf, an unreadable training data record. Nothing is
            unpickled: weights come from safetensors, the rest from YAML and JSON.
    """
    path = Path(path)
    config = read_run_config(path, kind)
    model = build_model(config, path / checkpoint.CONFIG)
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


def read_training_data(run_dir: str | Path, model: Any = None) -> dict[str, Any]:
    """The run's ``training_data.json`` record (``{}`` when it has none), checked by
    :func:`check_training_data` against the model config ``model`` when given."""
    run_dir = Path(run_dir)
    record = _training_data(run_dir)
    check_training_data(record, run_dir / checkpoint.TRAINING_DATA, model)
    return record


def check_training_data(record: dict[str, Any], where: str | Path, model: Any = None) -> None:
    """Check a run's training data record (``training_data.json``) against its model config
    ``model``: the types of every value the commands use, finite intensity mappings, and, for
    a class-conditional DCGAN, one class name per class of the model.

    Raises:
        InputError: ``where: field must be ..., got ...``.
    """
    def fail(problem: str) -> None:
        raise InputError(problem, where)

    _check_imageset_record(record, "", fail)
    dp = record.get("differential_privacy")
    if dp is not None:
        if not isinstance(dp, dict):
            fail(f"differential_privacy must be a mapping, got {shown(dp)}")
        for name in ("target_epsilon", "epsilon", "delta", "noise_multiplier", "max_grad_norm",
                     "sample_rate"):
            if name in dp or name in ("epsilon", "delta"):
                _number(dp.get(name), f"differential_privacy.{name}", fail, minimum=0.0)
        if "steps" in dp:
            _count(dp["steps"], "differential_privacy.steps", fail)
    domains = record.get("domains")
    if domains is not None:
        if not isinstance(domains, dict) or not set(domains) <= {"a", "b"}:
            fail(f"domains must be a mapping with domains a and b, got {shown(domains)}")
        for name, domain in domains.items():
            if not isinstance(domain, dict):
                fail(f"domains.{name} must be a mapping, got {shown(domain)}")
            _check_imageset_record(domain, f"domains.{name}.", fail)
            quantiles = domain.get("foreground_quantiles")
            if quantiles is not None or getattr(model, "standardize", False):
                field_name = f"domains.{name}.foreground_quantiles"
                if not isinstance(quantiles, list) or len(quantiles) < 2:
                    fail(f"{field_name} must be a list of at least 2 finite numbers, "
                         f"got {shown(quantiles)}")
                for k, q in enumerate(quantiles):
                    _number(q, f"{field_name}[{k}]", fail)
                if any(b < a for a, b in zip(quantiles, quantiles[1:], strict=False)):
                    fail(f"{field_name} must not decrease, got {shown(quantiles)}")
    classes = getattr(model, "num_classes", 0)
    if classes:
        names = record.get("class_names")
        if not isinstance(names, list) or len(names) != classes:
            count = len(names) if isinstance(names, list) else "no"
            fail(f"class_names lists {count} class name(s) but the model has {classes} "
                 "classes: the record does not belong to these weights")
        counts = record.get("class_counts", {})
        if not counts or not set(counts) <= set(names):
            fail(f"class_counts must count images of the classes {', '.join(names)}, got "
                 f"{shown(counts)}")


def _check_imageset_record(record: dict[str, Any], prefix: str, fail: Any) -> None:
    """The fields :func:`synthmed.gan.data.imageset_record` writes (each optional)."""
    for name in ("origin", "fingerprint"):
        if name in record and not isinstance(record[name], str):
            fail(f"{prefix}{name} must be a string, got {shown(record[name])}")
    for name in ("images", "channels", "subjects"):
        if name in record:
            _count(record[name], prefix + name, fail)
    for name in ("splits", "class_names", "group_hashes", "image_hashes"):
        value = record.get(name, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            fail(f"{prefix}{name} must be a list of strings, got {shown(value)}")
    if "size" in record:
        size = record["size"]
        if not isinstance(size, list) or len(size) != 2:
            fail(f"{prefix}size must be a list of 2 whole numbers, got {shown(size)}")
        for k, side in enumerate(size):
            _count(side, f"{prefix}size[{k}]", fail)
    bit_depths = record.get("bit_depths", [])
    if not isinstance(bit_depths, list):
        fail(f"{prefix}bit_depths must be a list of whole numbers, got {shown(bit_depths)}")
    for k, depth in enumerate(bit_depths):
        _count(depth, f"{prefix}bit_depths[{k}]", fail)
    counts = record.get("class_counts", {})
    if not isinstance(counts, dict):
        fail(f"{prefix}class_counts must be a mapping of class names to image counts, "
             f"got {shown(counts)}")
    for name, count in counts.items():
        _count(count, f"{prefix}class_counts.{name}", fail)
    intensity = record.get("intensity", {})
    if not isinstance(intensity, dict):
        fail(f"{prefix}intensity must be a mapping (unit, modality, low, high), "
             f"got {shown(intensity)}")
    for name in ("unit", "modality"):
        if name in intensity and not isinstance(intensity[name], str):
            fail(f"{prefix}intensity.{name} must be a string, got {shown(intensity[name])}")
    for name in ("low", "high"):
        if name in intensity:
            _number(intensity[name], f"{prefix}intensity.{name}", fail)
    if "distinct_mappings" in intensity:
        _count(intensity["distinct_mappings"], f"{prefix}intensity.distinct_mappings", fail)


def _number(value: Any, name: str, fail: Any, minimum: float | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        fail(f"{name} must be a finite number, got {shown(value)}")
    if minimum is not None and value < minimum:
        fail(f"{name} must be at least {minimum:g}, got {shown(value)}")


def _count(value: Any, name: str, fail: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        fail(f"{name} must be a whole number >= 0, got {shown(value)}")


def _section(values: dict[str, Any], name: str, where: str | Path) -> dict[str, Any]:
    """Section ``name`` of a ``--config`` YAML file, or ``{}`` when absent."""
    section = values.get(name, {})
    if not isinstance(section, dict):
        raise InputError(f"{name}: must be a mapping of settings (name: value), got "
                         f"{shown(section)}", where)
    return section


def _check_sections(values: dict[str, Any], where: str | Path) -> None:
    """A ``--config`` file holds ``model:`` and ``train:``; a run's own config.yaml (its other
    sections are ignored) is a fine ``--config`` too."""
    known = ("model", "train", "kind", "data", "privacy", "synthmed_version", "format_version")
    unknown = sorted(str(key) for key in values if key not in known)
    if unknown:
        raise InputError(f"unknown section(s) {', '.join(unknown)}; a config file holds "
                         "model: and train:", where)


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
    _check_sections(values, where)
    if "privacy" in values and not private:  # never train openly when the file asks for DP
        raise InputError("privacy: the file asks for differential privacy, which comes from "
                         "--dp-epsilon (and --dp-delta, --dp-max-grad-norm): pass them to train "
                         "privately", where)
    if preset == "tutorial":
        model = DCGANConfig.tutorial()
        train = TrainConfig(batch_size=256, checkpoint_every=15)
    else:
        model, train = DCGANConfig(), TrainConfig()
    if private:
        model = with_overrides(model, d_norm="none")
    model = from_dict(DCGANConfig, {**to_dict(model), **_section(values, "model", where)},
                      where)
    train = from_dict(TrainConfig, {**to_dict(train), **_section(values, "train", where)},
                      where)
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
    _check_sections(values, where)
    train = TrainConfig(epochs=200, batch_size=1, lr_decay_start=100, preview=16)
    model = from_dict(CycleGANConfig,
                      {**to_dict(CycleGANConfig()), **_section(values, "model", where)}, where)
    train = from_dict(TrainConfig, {**to_dict(train), **_section(values, "train", where)},
                      where)
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


"""A run's ``config.yaml``: the typed, versioned :class:`RunConfig`, written and read only
here, and how a new run's configuration is resolved (preset, then a ``--config`` file, then
single options).

```
synthmed_version: 0.x      the version that wrote it
format_version: 2          this schema; version 1 (before decay_epochs) still loads
kind: dcgan | cyclegan | diffusion   which model section follows
model: {...}               DCGANConfig, CycleGANConfig or DiffusionConfig
train: {...}               TrainConfig
privacy: {...}             DPConfig, only for a differentially private DCGAN
data: {...}                DataConfig: where the training images came from
```
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from synthmed import __version__
from synthmed.augment.items import ReadConfig
from synthmed.errors import InputError, require
from synthmed.gan.checkpoint import CONFIG
from synthmed.gan.config import (
    CycleGANConfig,
    DCGANConfig,
    DiffusionConfig,
    DPConfig,
    TrainConfig,
)
from synthmed.io import atomic_write
from synthmed.settings import check_fields, from_dict, load_yaml, shown, to_dict, with_overrides

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
MODEL_CONFIGS: dict[str, type] = {"dcgan": DCGANConfig, "cyclegan": CycleGANConfig,
                                   "diffusion": DiffusionConfig}
GENERATORS = ("dcgan", "diffusion")  # the kinds that make new images
SPLITS = ("train", "all")
#: What each kind of run is for, when a command is handed the other kind.
USES = {"dcgan": "a DCGAN generates images: use it with synthmed generate",
        "cyclegan": "a CycleGAN translates images: use it with synthmed translate",
        "diffusion": "a diffusion model generates images: use it with synthmed generate"}
_SECTIONS = ("synthmed_version", "format_version", "kind", "model", "train", "privacy", "data")


@dataclass(frozen=True)
class DataConfig:
    """Where a run's training images came from.

    Args:
        source: a DCGAN's data, as :func:`synthmed.gan.data.recorded_source` records it.
        domain_a, domain_b: a CycleGAN's two domains, likewise.
        split: ``train`` (the data's train split when it has one) or ``all``.
        classes: train on these classes' images only (empty: every class); a conditional
            model still has every class of the data, so that a copy fine-tuned on one class
            can draw it in place of the model it started from (``generate --class-run``).
        val_image_hashes: sha256 of the images of the subjects held out for evaluation.
        val_subjects: held-out subjects by name, as runs before ``val_image_hashes`` kept them.
        read: the read options (:class:`~synthmed.augment.items.ReadConfig` fields).
        init_from: the run whose weights a generator started from (transfer: fine-tuning a
            model trained on other images); ``init_fingerprint``: those weights' sha256.
        mirror: a generator sees each training image flipped left-right at random (StyleGAN2-
            ADA's ``--mirror``: twice the images, for data whose left and right are alike).
    """

    section: ClassVar[str] = "data"

    source: str | None = None
    domain_a: str | None = None
    domain_b: str | None = None
    split: str = "train"
    classes: tuple[str, ...] = ()
    val_image_hashes: tuple[str, ...] = ()
    val_subjects: tuple[str, ...] = ()
    read: dict[str, Any] = field(default_factory=dict)
    init_from: str | None = None
    init_fingerprint: str | None = None
    mirror: bool = False

    def __post_init__(self) -> None:
        check_fields(self)
        require([(self.split in SPLITS, f"split must be one of {', '.join(SPLITS)}, got "
                                        f"{shown(self.split)}")])
        if not isinstance(self.read, dict):
            raise InputError(f"read: must be a mapping of read options, got {shown(self.read)}")
        root = self.read.get("root")
        if root is not None and not isinstance(root, str):
            raise InputError(f"read: root must be a string or null, got {shown(root)}")
        object.__setattr__(self, "read", {**to_dict(self.read_config()), "root": root})

    def read_config(self) -> ReadConfig:
        """The read options, less ``root``: confining reads is each command's own choice
        (``--root``), not a property of the run (and that folder need not exist here)."""
        values = {k: v for k, v in self.read.items() if k != "root"}
        return from_dict(ReadConfig, values, None, "read")


@dataclass(frozen=True)
class RunConfig:
    """Everything a run was trained with, as ``RUN/config.yaml`` holds it."""

    kind: str
    model: DCGANConfig | CycleGANConfig | DiffusionConfig
    train: TrainConfig
    data: DataConfig = field(default_factory=DataConfig)
    privacy: DPConfig | None = None

    def __post_init__(self) -> None:
        require([
            (self.kind in MODEL_CONFIGS, f"unknown model kind {shown(self.kind)}: known kinds "
                                         f"are {', '.join(MODEL_CONFIGS)}"),
            (self.privacy is None or self.kind == "dcgan",
             f"privacy: differentially private training is a DCGAN option, not for a "
             f"{self.kind} run"),
        ])
        require([(isinstance(self.model, MODEL_CONFIGS[self.kind]),
                  f"model: a {self.kind} run needs a {MODEL_CONFIGS[self.kind].__name__}")])

    def to_document(self) -> dict[str, Any]:
        """The YAML document, with the synthmed and format versions."""
        document = {"synthmed_version": __version__, "format_version": FORMAT_VERSION,
                    "kind": self.kind, "model": to_dict(self.model), "train": to_dict(self.train)}
        if self.privacy is not None:
            document["privacy"] = to_dict(self.privacy)
        return {**document, "data": to_dict(self.data)}

    @classmethod
    def from_document(cls, document: Any, where: str | Path) -> RunConfig:
        """A run config from its YAML document (either format version), every field checked.

        Raises:
            InputError: ``where: section: field must be ...``.
        """
        if not isinstance(document, dict) or document.get("format_version") \
                not in READABLE_VERSIONS:
            raise InputError(f"unknown run format (expected format_version {FORMAT_VERSION})",
                             where)
        unknown = sorted(str(key) for key in document if key not in _SECTIONS)
        if unknown:
            raise InputError(f"unknown section(s) {', '.join(unknown)}", where)
        kind = document.get("kind")
        if kind not in MODEL_CONFIGS:
            raise InputError(f"unknown model kind {shown(kind)}: known kinds are "
                             f"{', '.join(MODEL_CONFIGS)}", where)
        for section in ("model", "train"):
            if section not in document:
                raise InputError(f"has no {section}: section", where)
        train = document["train"]
        if document["format_version"] == 1 and isinstance(train, dict):
            train = _train_from_version_1(train, where)
        privacy = document.get("privacy")
        try:
            config = cls(kind, from_dict(MODEL_CONFIGS[kind], document["model"], where),
                         from_dict(TrainConfig, train, where),
                         from_dict(DataConfig, document.get("data", {}), where),
                         None if privacy is None else from_dict(DPConfig, privacy, where))
        except InputError as error:
            if error.path is not None:
                raise
            raise InputError(error.problem, where) from None
        if kind in GENERATORS and config.model.size is None:  # a run's size is always fixed
            raise InputError("model: size must be a whole number, got null", where)
        return config


def _train_from_version_1(train: dict[str, Any], where: str | Path) -> dict[str, Any]:
    """Format 1 kept the epoch the decay started (``lr_decay_start``, null: none)."""
    values = dict(train)
    start = values.pop("lr_decay_start", None)
    epochs = values.get("epochs", TrainConfig.epochs)
    if isinstance(start, int) and isinstance(epochs, int) and 0 <= start <= epochs:
        values["decay_epochs"] = epochs - start
    elif start is None:
        values["decay_epochs"] = 0
    else:
        raise InputError(f"train: lr_decay_start must be null or between 0 and the epochs, "
                         f"got {shown(start)}", where)
    return values


def write_run_config(run_dir: Path, config: RunConfig) -> None:
    """``RUN/config.yaml`` (atomic)."""
    text = yaml.safe_dump(config.to_document(), sort_keys=False)
    atomic_write(Path(run_dir) / CONFIG, text.encode())


def read_run_config(run_dir: str | Path, kind: str | tuple[str, ...] | None = None
                    ) -> RunConfig:
    """``RUN/config.yaml``, every field checked; with ``kind`` (one or several), a run of
    another kind is refused, saying what that kind is for.

    Raises:
        InputError: no such run, no config, invalid YAML or a bad value (naming the field).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError("no such run directory", run_dir)
    path = run_dir / CONFIG
    if not path.is_file():
        raise InputError(f"not a synthmed run: {CONFIG} is missing", run_dir)
    try:
        document = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError):  # safe_load builds no Python objects
        raise InputError("is not valid YAML", path) from None
    kinds = (kind,) if isinstance(kind, str) else kind
    if kinds is not None and isinstance(document, dict) and document.get("kind") not in kinds \
            and document.get("kind") in USES:
        wanted = " or ".join(repr(k) for k in kinds)
        raise InputError(f"is a {document['kind']!r} run, not {wanted}: "
                         f"{USES[document['kind']]}", run_dir)
    return RunConfig.from_document(document, path)


# -- a new run's configuration ----------------------------------------------------------


def resolve_dcgan_config(
    preset: str = "dcgan",
    config_file: Path | None = None,
    model_overrides: dict[str, Any] | None = None,
    train_overrides: dict[str, Any] | None = None,
    privacy: DPConfig | None = None,
    data: DataConfig | None = None,
) -> RunConfig:
    """The preset's defaults, then the YAML file's ``model:`` / ``train:`` sections, then
    single overrides (``None`` values are ignored). A private D defaults to no
    normalisation (BatchNorm mixes the images of a batch)."""
    values, where = _config_file(config_file)
    if "privacy" in values and privacy is None:  # never train openly when the file asks for DP
        raise InputError("privacy: the file asks for differential privacy, which comes from "
                         "--dp-epsilon (and --dp-delta, --dp-max-grad-norm): pass them to train "
                         "privately", where)
    tutorial = preset == "tutorial"
    model = DCGANConfig.tutorial() if tutorial else DCGANConfig()
    train = TrainConfig.tutorial() if tutorial else TrainConfig()
    if privacy is not None:
        model = with_overrides(model, d_norm="none")
    model, train = _with_file(model, train, values, where)
    train = with_overrides(train, **(train_overrides or {}))
    return RunConfig("dcgan", with_overrides(model, **(model_overrides or {})), train,
                     data or DataConfig(), privacy)


def resolve_cyclegan_config(
    config_file: Path | None = None,
    model_overrides: dict[str, Any] | None = None,
    train_overrides: dict[str, Any] | None = None,
    data: DataConfig | None = None,
) -> RunConfig:
    """The reference CycleGAN's defaults (batch 1; 200 epochs, the last half with the learning
    rate falling linearly to 0), then the YAML file's sections, then single overrides."""
    return _resolved("cyclegan", CycleGANConfig(), TrainConfig.cyclegan(), config_file,
                     model_overrides, train_overrides, data)


def resolve_diffusion_config(
    config_file: Path | None = None,
    model_overrides: dict[str, Any] | None = None,
    train_overrides: dict[str, Any] | None = None,
    data: DataConfig | None = None,
) -> RunConfig:
    """The diffusion model's defaults, then the YAML file's sections, then single overrides."""
    return _resolved("diffusion", DiffusionConfig(), TrainConfig(), config_file,
                     model_overrides, train_overrides, data)


def _resolved(kind: str, model: Any, train: TrainConfig, config_file: Path | None,
              model_overrides: dict[str, Any] | None, train_overrides: dict[str, Any] | None,
              data: DataConfig | None) -> RunConfig:
    """``model`` and ``train`` with a config file's sections, then the single overrides."""
    values, where = _config_file(config_file)
    model, train = _with_file(model, train, values, where)
    return RunConfig(kind, with_overrides(model, **(model_overrides or {})),
                     with_overrides(train, **(train_overrides or {})), data or DataConfig())


def resolve_privacy(epsilon: float | None, delta: float | None = None,
                    max_grad_norm: float | None = None) -> DPConfig | None:
    """The differential privacy the ``--dp-*`` options ask for; ``None`` without an epsilon."""
    if epsilon is None:
        if delta is not None or max_grad_norm is not None:
            raise InputError("--dp-delta and --dp-max-grad-norm need --dp-epsilon")
        return None
    return with_overrides(DPConfig(epsilon), delta=delta, max_grad_norm=max_grad_norm)


def _config_file(path: Path | None) -> tuple[dict[str, Any], str]:
    """A ``--config`` file's sections (``{}`` without one) and the name its errors give.
    It holds ``model:`` and ``train:``; a run's own config.yaml (its other sections are
    ignored) is a fine ``--config`` too."""
    values = load_yaml(path) if path else {}
    where = str(path or "config")
    unknown = sorted(str(key) for key in values if key not in _SECTIONS)
    if unknown:
        raise InputError(f"unknown section(s) {', '.join(unknown)}; a config file holds "
                         "model: and train:", where)
    if values.get("format_version") == 1 and isinstance(values.get("train"), dict):
        values = {**values, "train": _train_from_version_1(values["train"], where)}
    return values, where


def _with_file(model: Any, train: TrainConfig, values: dict[str, Any],
               where: str) -> tuple[Any, TrainConfig]:
    """``model`` and ``train`` with the settings of a config file's sections."""
    def section(name: str) -> dict[str, Any]:
        part = values.get(name, {})
        if not isinstance(part, dict):
            raise InputError(f"{name}: must be a mapping of settings (name: value), got "
                             f"{shown(part)}", where)
        return part

    return (from_dict(type(model), {**to_dict(model), **section("model")}, where),
            from_dict(TrainConfig, {**to_dict(train), **section("train")}, where))

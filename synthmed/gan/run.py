"""Build a model from a run's configuration, load a trained run for sampling, and compose a
run with the copies of it that draw some of its classes."""

from __future__ import annotations

from collections.abc import Callable
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

    def class_label(self, key: str) -> int:
        """The label of the class named ``key`` (or with the index ``key`` as text)."""
        names = self.class_names
        if key in names:
            return names.index(key)
        if key.isdigit() and int(key) < len(names):
            return int(key)
        raise InputError(f"unknown class {key!r}: the model knows {', '.join(names)}", self.path)

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


class ClassCopies:
    """A class-conditional model whose classes with a copy (a model fine-tuned on that class
    alone) are drawn by the copy: ``generate`` and ``sample`` as the models', class by class
    in label order, each image from the noise it would have had without copies."""

    conditional = True

    def __init__(self, shared: Any, copies: dict[int, Any]) -> None:
        self.shared, self.copies = shared, copies

    def generate(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Images ``(n, C, H, W)`` for the noise ``z`` ``(n, *noise_shape)`` and ``labels``."""
        return self._by_class(labels, lambda model, mask: model.generate(z[mask], labels[mask]))

    def sample(self, n: int, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``n`` images ``(n, C, H, W)`` for ``labels`` ``(n,)``, the noise of each class drawn
        from ``generator`` in turn."""
        return self._by_class(labels, lambda model, mask: model.sample(
            int(mask.sum()), labels=labels[mask], generator=generator))

    def _by_class(self, labels: torch.Tensor,
                  draw: Callable[[Any, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        images: torch.Tensor | None = None
        for label in labels.unique():
            mask = labels == label
            part = draw(self.copies.get(int(label), self.shared), mask)
            if images is None:
                images = part.new_empty((len(labels), *part.shape[1:]))
            images[mask] = part
        return images


def load_class_runs(run: LoadedRun, class_runs: dict[str, str | Path]
                    ) -> dict[int, LoadedRun]:
    """The runs that draw some classes of ``run`` in its place, by label, from ``class_runs``
    (class name or index as text -> run directory; one run per class). Each is checked to
    stand in for ``run``: a class-conditional run of the same kind, classes, images, noise
    and intensity units, trained on no image that ``run`` was not (so that the privacy
    filter and the provenance of ``run``'s training data cover it), and neither of them
    with differential privacy (two trainings' guarantees add up: generate from each alone).

    Raises:
        InputError: naming the class run and what does not fit.
    """
    if class_runs and not run.model.conditional:
        raise InputError("class runs need a class-conditional run (train with --conditional)",
                         run.path)
    copies = {}
    seen = set(run.training_data.get("image_hashes", []))
    for key, path in class_runs.items():
        label = run.class_label(key)
        if label in copies:
            raise InputError(f"two class runs for class {run.class_names[label]!r}", run.path)
        copy = load_run(path, kind=run.config.kind)
        shape = (copy.model.config.channels, copy.model.config.size, copy.model.noise_shape)
        unseen = set(copy.training_data.get("image_hashes", [])) - seen
        problems = [
            (copy.class_names != run.class_names or not copy.model.conditional,
             f"is not a class-conditional run of the classes {run.class_names}"),
            (shape != (run.model.config.channels, run.model.config.size, run.model.noise_shape),
             f"makes other images or takes other noise than {run.path}"),
            (_units(copy) != _units(run), f"was trained on images in other units than {run.path}"),
            (bool(unseen), f"was trained on {len(unseen)} image(s) that {run.path} was not"),
            (any("differential_privacy" in each.training_data for each in (run, copy)),
             "differential privacy guarantees of two trainings add up: generate from each "
             "run alone"),
        ]
        problem = next((text for failed, text in problems if failed), None)
        if problem:
            raise InputError(problem, copy.path)
        copies[label] = copy
    return copies


def drawing_model(run: LoadedRun, copies: dict[int, LoadedRun]) -> Any:
    """What draws ``run``'s images: its model, or with class runs (label -> run, from
    :func:`load_class_runs`) a :class:`ClassCopies` of them."""
    if not copies:
        return run.model
    return ClassCopies(run.model, {label: copy.model for label, copy in copies.items()})


def _units(run: LoadedRun) -> tuple[str, str]:
    """The unit and modality of a run's training images (its images map back into them)."""
    intensity = run.training_data.get("intensity", {})
    return intensity.get("unit", ""), intensity.get("modality", "")

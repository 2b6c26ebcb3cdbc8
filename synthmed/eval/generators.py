"""The generators of the utility harness: a trained run checked for leakage against the
validation and test splits, or a class-conditional DCGAN trained on each real subset; the
labels of the synthetic images a regime mixes in, and the best-of-K choice among candidates."""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synthmed.augment.dataset import ImageSet
from synthmed.errors import InputError
from synthmed.eval.classifier import TrainedClassifier
from synthmed.eval.real_data import RealData
from synthmed.gan import checkpoint
from synthmed.gan.config import (
    PRECISIONS,
    DCGANConfig,
    DiffusionConfig,
    TrainConfig,
    resolve_precision,
)
from synthmed.gan.near_copy import subset_filter
from synthmed.gan.run import LoadedRun, drawing_model, load_class_runs, load_run
from synthmed.gan.run_config import GENERATORS, DataConfig, RunConfig, read_run_config
from synthmed.gan.train import train_dcgan, train_diffusion

#: The generator families the harness trains per subset, and how its report names them.
FAMILIES = {"dcgan": "conditional DCGAN", "diffusion": "conditional diffusion model"}
STEPS_PER_EPOCH = 50  # a generator's epoch spans repeats of a small subset (one grid each)
FILTER_REDRAWS = 100  # new draws per image before the filter gives up (at 75 it keeps 15-19 %)
CLASS_COPIES = ("all", "smallest")  # which classes get a fine-tuned copy of the generator


@dataclass(frozen=True)
class GeneratorRecipe:
    """The class-conditional DCGAN trained on each real subset (``--train-generator``).

    The budget is in optimiser steps, so a small subset gets as many updates as a large one
    (in epochs, 10 % of a data set would get a tenth of the training). ``diffaugment``,
    ``ada_target``, ``transition_steps`` and ``ema_decay`` are the small-data remedies of
    :class:`DCGANConfig`; ``upsample`` its generator's upsampling (``resize``: nearest x2 and
    a convolution, no checkerboard artefacts). ``precision`` ``auto`` is bf16 where the
    device computes it natively (:func:`resolve_precision`), fixed when
    :class:`SubsetGenerators` takes the recipe.
    ``init_from``: a run of the same model whose weights each generator starts from
    (transfer from a larger set; ``synthmed train --init-from``). ``filter_percentile``: the
    export's privacy filter on each generator's images (``synthmed generate --privacy-filter
    --filter-percentile``, the generator's own training images as its data), near-copies
    redrawn. ``class_steps``: after training, a copy of the generator fine-tunes for that many
    steps on each class's images alone (``class_copies`` ``all``) or on the class with the
    fewest images (``smallest``), conditional throughout, and draws that class's images: the
    copies spread their images over their class as the shared generator does not for a class
    of a few dozen images (coverage; ``benchmarks/RESULTS.md``). ``mirror``: each generator
    (and copy) sees its images flipped left-right at random (``synthmed train --mirror``).
    """

    steps: int = 2000
    width: int = 32
    batch_size: int = 64
    r1_gamma: float = 1.0
    diffaugment: tuple[str, ...] = ()
    ada_target: float = 0.0
    transition_steps: tuple[int, int] = (0, 0)
    ema_decay: float = 0.0
    upsample: str = "convtranspose"
    precision: str = "auto"
    init_from: str | None = None
    filter_percentile: float | None = None
    class_steps: int = 0
    class_copies: str = "all"
    mirror: bool = False

    def __post_init__(self) -> None:  # bad options fail here, not at the first generator
        if self.precision not in (*PRECISIONS, "auto"):
            raise InputError(f"generator precision must be fp32, bf16 or auto, got "
                             f"{self.precision!r}")
        if self.filter_percentile is not None and not 0 <= self.filter_percentile <= 100:
            raise InputError(f"the filter percentile must be in [0, 100], got "
                             f"{self.filter_percentile}")
        if self.class_steps < 0 or self.class_copies not in CLASS_COPIES:
            raise InputError(f"class copies need steps >= 0 and one of {', '.join(CLASS_COPIES)}"
                             f", got {self.class_steps} and {self.class_copies!r}")
        self.dcgan_config()

    def dcgan_config(self) -> DCGANConfig:
        """The DCGAN of the recipe, before it is fitted to a subset's images."""
        return DCGANConfig(width=self.width, r1_gamma=self.r1_gamma,
                           diffaugment=self.diffaugment, ada_target=self.ada_target,
                           transition_steps=self.transition_steps, ema_decay=self.ema_decay,
                           upsample=self.upsample)


class TrainedRun:
    """Synthetic images from one trained run, checked for leakage against val and test; with
    ``class_runs`` (class name or index as text -> run), some classes drawn by their copies
    (:func:`~synthmed.gan.run.load_class_runs`: trained on none but the run's images)."""

    def __init__(self, run: LoadedRun, real: RealData,
                 class_runs: dict[str, str] | None = None) -> None:
        record = run.training_data
        seen = set(record.get("image_hashes", []))
        for name, part in (("validation", real.val), ("test", real.test)):
            leaked = seen & set(part.image_hashes())
            if leaked:
                raise InputError(f"the generator was trained on {len(leaked)} {name} image(s): "
                                 "train it on the training split only (train dcgan --split "
                                 "train), or use --train-generator", run.path)
        if list(record.get("class_names", [])) != list(real.train.class_names):
            raise InputError(f"the generator's classes {record.get('class_names')} are not the "
                             f"data's {list(real.train.class_names)}", run.path)
        self.run = run
        self.images_seen = int(record.get("images", 0))
        self.copies = load_class_runs(run, class_runs or {})
        self.model = drawing_model(run, self.copies)

    def describe(self) -> dict[str, Any]:
        copies = {self.run.class_names[label]: copy.fingerprint  # no path: runs may move
                  for label, copy in sorted(self.copies.items())}
        return {"kind": "run", "path": str(self.run.path), "fingerprint": self.run.fingerprint,
                "epoch": self.run.epoch, "images_seen": self.images_seen,
                **({"class_runs": copies} if copies else {})}

    def sample(self, subset: ImageSet, labels: np.ndarray, seed: int) -> np.ndarray:
        if self.images_seen > len(subset):
            warnings.warn(f"the generator saw {self.images_seen} real training images, more "
                          f"than the {len(subset)} of this fraction: its synthetic images carry "
                          "information the classifier's real subset does not", stacklevel=2)
        return _sample(self.model, labels, torch.Generator().manual_seed(seed))


class SubsetGenerators:
    """A generator trained on each set of real images it is given, cached under ``folder`` by
    the set's fingerprint (so a rerun, a shard or a fraction of 1 reuses it): class-conditional
    on each real subset, or with ``conditional`` False, unconditional (for an unlabelled pool;
    its samples' labels are then ignored).

    ``family`` ``dcgan`` follows the whole recipe; ``diffusion`` takes its steps, batch size,
    precision and width (the U-Net's levels: width, 2 x width, 2 x width) and the model's own
    defaults for the rest (:class:`DiffusionConfig`).
    """

    def __init__(self, recipe: GeneratorRecipe, folder: Path, family: str = "dcgan",
                 conditional: bool = True) -> None:
        if family not in FAMILIES:
            raise InputError(f"generator family must be one of {', '.join(FAMILIES)}, got "
                             f"{family!r}")
        if not conditional and recipe.transition_steps != (0, 0):
            raise InputError("transitional conditioning needs a conditional generator; the "
                             "generator of an unlabelled pool is unconditional")
        if not conditional and recipe.class_steps:
            raise InputError("class copies need a conditional generator; the generator of an "
                             "unlabelled pool is unconditional")
        self.recipe = replace(recipe, precision=resolve_precision(recipe.precision))
        self.folder, self.family, self.conditional = Path(folder), family, conditional

    def describe(self) -> dict[str, Any]:
        kind = ({"kind": "trained per subset"} if self.conditional else
                {"kind": "trained on the pool", "conditional": False})
        if self.family == "diffusion":
            r = self.recipe
            return {**kind, "model": FAMILIES[self.family], "steps": r.steps,
                    "batch_size": r.batch_size, "precision": r.precision, "width": r.width,
                    "init_from": r.init_from, **({"mirror": True} if r.mirror else {}),
                    # the filter only when set, as in older results
                    **({} if r.filter_percentile is None else
                       {"filter_percentile": r.filter_percentile}),
                    **({} if not r.class_steps else
                       {"class_steps": r.class_steps, "class_copies": r.class_copies})}
        return {**kind, "model": FAMILIES[self.family], **asdict(self.recipe)}

    def sample(self, subset: ImageSet, labels: np.ndarray, seed: int) -> np.ndarray:
        """Images ``(len(labels), C, H, W)`` of the generator of ``subset``, through the
        privacy filter when the recipe has one (a near-copy's slot redrawn from the same
        seeded noise stream, so a seed still gives the same images)."""
        run_dir = self.train(subset)
        model, rng = self._model(subset, run_dir), torch.Generator().manual_seed(seed)
        images = _sample(model, labels, rng)
        if self.recipe.filter_percentile is not None:
            near = subset_filter(subset, self.recipe.filter_percentile, FILTER_REDRAWS)
            near.redraw(images, lambda redo: _sample(model, labels[redo], rng), str(run_dir),
                        "lower --generator-filter-percentile")
        return images

    def sample_like(self, subset: ImageSet, n: int, seed: int) -> ImageSet:
        """``n`` images of the generator of ``subset`` in its class mix (labelled, seeded)."""
        labels = class_mix_labels(subset, n, seed)
        return ImageSet.from_arrays(self.sample(subset, labels, seed), labels=labels,
                                    class_names=subset.class_names, synthetic=True)

    def train(self, subset: ImageSet, progress: bool = False) -> Path:
        """The run directory of the generator of ``subset``, trained (or finished) if needed,
        with its class copies (:meth:`class_runs`) when the recipe has them."""
        prefix = "" if self.family == "dcgan" else f"{self.family}-"  # dcgan: as before
        prefix += "" if self.conditional else "pool-"
        run_dir = self.folder / f"{prefix}{subset.fingerprint()[:16]}"
        self._train(subset, run_dir, self.recipe, progress)
        if self.recipe.class_steps:
            copy = replace(self.recipe, steps=self.recipe.class_steps, transition_steps=(0, 0),
                           init_from=str(run_dir))
            for label, copy_dir in self.class_runs(subset, run_dir).items():
                self._train(subset.subset(np.flatnonzero(subset.labels == label)), copy_dir,
                            copy, progress)
        return run_dir

    def class_runs(self, subset: ImageSet, run_dir: Path) -> dict[int, Path]:
        """The class copies of the generator ``run_dir`` of ``subset``: label -> run
        directory (none without ``class_steps``)."""
        if not self.recipe.class_steps:
            return {}
        counts = subset.class_counts()
        labels = (sorted(counts) if self.recipe.class_copies == "all" else
                  [min(counts, key=lambda label: (counts[label], label))])
        return {label: run_dir.with_name(f"{run_dir.name}-class{label}") for label in labels}

    def _model(self, subset: ImageSet, run_dir: Path) -> Any:
        """The model that draws the images of ``subset``'s generator: the run's, or with class
        copies, one that draws each class from its copy."""
        run = load_run(run_dir)
        copies = load_class_runs(run, {str(label): path for label, path
                                       in self.class_runs(subset, run_dir).items()})
        return drawing_model(run, copies)

    def _train(self, subset: ImageSet, run_dir: Path, recipe: GeneratorRecipe,
               progress: bool) -> None:
        """Train (or finish) ``recipe``'s generator of ``subset`` into ``run_dir``."""
        if (run_dir / checkpoint.WEIGHTS).is_file() and _finished(run_dir):
            return
        batch = min(recipe.batch_size, len(subset))
        repeats = math.ceil(min(STEPS_PER_EPOCH, recipe.steps) * batch / len(subset))
        epochs = math.ceil(recipe.steps / (len(subset) * repeats // batch))
        train = TrainConfig(epochs=epochs, batch_size=batch, precision=recipe.precision,
                            checkpoint_every=max(1, epochs // 10),
                            preview_every=max(1, epochs // 10), decay_epochs=0)
        data = DataConfig(split="all", init_from=recipe.init_from, mirror=recipe.mirror)
        if self.family == "diffusion":
            widths = (recipe.width, 2 * recipe.width, 2 * recipe.width)
            config = RunConfig("diffusion", DiffusionConfig(widths=widths), train, data)
            trainer = train_diffusion
        else:
            config = RunConfig("dcgan", recipe.dcgan_config(), train, data)
            trainer = train_dcgan
        trainer(subset, run_dir, config, conditional=self.conditional, repeats=repeats,
                resume=run_dir.exists(), progress=progress)


def _finished(run_dir: Path) -> bool:
    config = read_run_config(run_dir, kind=GENERATORS)
    return int(checkpoint.load_state(run_dir)["epoch"]) >= config.train.epochs


def _sample(model: Any, labels: np.ndarray, rng: torch.Generator, block: int = 256
            ) -> np.ndarray:
    """Images ``(len(labels), C, H, W)`` for the labels, from noise drawn from ``rng``."""
    parts = [model.sample(len(chunk), labels=torch.from_numpy(chunk), generator=rng).numpy()
             for chunk in np.array_split(labels, max(1, -(-len(labels) // block)))]
    return np.concatenate(parts).astype(np.float32)


def sample_run(path: Path, like: ImageSet, n: int, seed: int = 0) -> ImageSet:
    """``n`` images from a trained DCGAN run, in the class mix of ``like`` when the run is
    class-conditional (then labelled with ``like``'s class names), else unlabelled."""
    run = load_run(path, kind=GENERATORS)
    labels = class_mix_labels(like, n, seed) if run.model.conditional else np.zeros(n, np.int64)
    images = _sample(run.model, labels.astype(np.int64), torch.Generator().manual_seed(seed))
    return ImageSet.from_arrays(
        images, labels=labels if run.model.conditional else None,
        class_names=like.class_names if run.model.conditional else None, synthetic=True,
        metadata={"origin": str(path)})


def class_mix_labels(like: ImageSet, n: int, seed: int) -> np.ndarray:
    """``(n,)`` class indices drawn (seeded) in the class mix of ``like``."""
    counts = like.class_counts()
    share = np.array([counts.get(k, 0) for k in range(len(like.class_names))], float)
    return np.random.default_rng(seed).choice(len(share), size=n, p=share / share.sum())


def synthetic_labels(subset: ImageSet, mix: float | str, rng: np.random.Generator
                     ) -> np.ndarray:
    """Labels of the synthetic images for a subset: ``ratio x`` its count in its class mix
    (rounded per class), or for ``balance`` enough to bring every class up to the largest."""
    counts = subset.class_counts()
    if mix == "balance":
        top = max(counts.values())
        wanted = {label: top - n for label, n in counts.items()}
    else:
        wanted = {label: round(float(mix) * n) for label, n in counts.items()}
    labels = np.concatenate([np.full(n, label, np.int64) for label, n in wanted.items()])
    return rng.permutation(labels)


def pseudo_labels(images: np.ndarray, judge: TrainedClassifier) -> np.ndarray:
    """The judge's decisions ``(N,)`` on images ``(N, C, H, W)``: binary, the positive class
    at its validation threshold; otherwise the most probable class."""
    probabilities = judge.predict_proba(images)  # (N, K)
    if judge.threshold is not None:
        return (probabilities[:, 1] >= judge.threshold).astype(np.int64)
    return probabilities.argmax(axis=1).astype(np.int64)


def best_of(candidates: np.ndarray, labels: np.ndarray, judge: TrainedClassifier
            ) -> np.ndarray:
    """Per label, the candidate the judge gives the highest probability of that label.

    Args:
        candidates: ``(N * K, C, H, W)``, K consecutive candidates per label.
        labels: ``(N,)``.
    Returns:
        ``(N, C, H, W)``.
    """
    n = len(labels)
    k = len(candidates) // n
    probability = judge.predict_proba(candidates)[np.arange(n * k), np.repeat(labels, k)]
    chosen = probability.reshape(n, k).argmax(axis=1)
    return candidates.reshape(n, k, *candidates.shape[1:])[np.arange(n), chosen]

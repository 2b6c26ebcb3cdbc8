"""Train a generator (DCGAN, diffusion) or a translator (CycleGAN) from a user's data: the
one recipe the CLI, the demo, the harness, the tests and the benchmarks all call.

Each function reads the data (a path any reader takes, or an :class:`ImageSet`), fits the
configuration to it (image size, channels, classes, crop), builds the model, holds the run
directory's lock and runs the fit loop (:func:`synthmed.gan.trainer.fit`).

Examples:
    >>> config = resolve_dcgan_config(train_overrides={"epochs": 1})
    >>> train_dcgan("phantom:n=64,size=32", Path("runs/phantom"), config)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from synthmed.augment.dataset import ImageSet
from synthmed.augment.items import ReadConfig
from synthmed.augment.readers import read_images
from synthmed.augment.splits import held_out_hashes, hold_out_groups, hold_out_images
from synthmed.errors import InputError
from synthmed.gan import checkpoint
from synthmed.gan.config import CycleGANConfig, DCGANConfig, DiffusionConfig
from synthmed.gan.data import LabelledImages, PairedImages, UnpairedImages, recorded_source
from synthmed.gan.model import GenerativeModel
from synthmed.gan.nets import SIZES
from synthmed.gan.run import build_model, load_run
from synthmed.gan.run_config import RunConfig, read_run_config
from synthmed.gan.trainer import FitResult, fit
from synthmed.io import check_out, output_lock
from synthmed.settings import to_dict, with_overrides


@dataclass(frozen=True)
class TrainResult:
    """A finished training: the fit's result, the configuration it ran with, the training
    images (per domain for a translator) and the subjects held out for evaluation."""

    fit: FitResult
    config: RunConfig
    images: tuple[int, ...]
    held_out: tuple[str, ...] = ()


def train_dcgan(data: str | ImageSet, out: Path, config: RunConfig, *,
                read: ReadConfig | None = None, conditional: bool = False, repeats: int = 1,
                resume: bool = False, progress: bool = True) -> TrainResult:
    """Train a DCGAN on ``data`` into the run directory ``out``.

    Args:
        config: the resolved configuration (:func:`~synthmed.gan.run_config.
            resolve_dcgan_config`, or the run's own for ``resume``); a model size of
            ``None`` follows the data, and channels and classes always do; the learning
            rate is constant unless ``train.decay_epochs`` says otherwise.
        read: how to read a path (default: the config's ``data.read``); its image size is
            the model's when that is set.
        conditional: make G and D class-conditional (labelled data; also when the config
            already has classes).
        repeats: passes over the images per epoch (a small set gets fewer, longer epochs).
        resume: continue the run in ``out`` from its last checkpoint.

    Raises:
        InputError: bad data or settings, an ``out`` that is an input, a busy run directory.
    """
    return _train_generator(data, out, config, fit_dcgan_to_data, read=read,
                            conditional=conditional, repeats=repeats, resume=resume,
                            progress=progress)


def train_diffusion(data: str | ImageSet, out: Path, config: RunConfig, *,
                    read: ReadConfig | None = None, conditional: bool = False,
                    repeats: int = 1, resume: bool = False, progress: bool = True
                    ) -> TrainResult:
    """Train a diffusion model on ``data`` into the run directory ``out``; the arguments are
    :func:`train_dcgan`'s (the image size must suit the U-Net's levels)."""
    return _train_generator(data, out, config, fit_diffusion_to_data, read=read,
                            conditional=conditional, repeats=repeats, resume=resume,
                            progress=progress)


def _train_generator(data: str | ImageSet, out: Path, config: RunConfig,
                     fit_to_data: Callable[[Any, ImageSet, bool], Any], *,
                     read: ReadConfig | None, conditional: bool, repeats: int, resume: bool,
                     progress: bool) -> TrainResult:
    """Read, fit the model config to the images, train: the recipe of every generator."""
    out = Path(out)
    check_out(out, (config.data.init_from,))  # before the images are read
    read = read or config.data.read_config()
    images = _chosen_split(_read(data, out, read, config.model.size), config.data.split)
    images = _only_classes(images, config.data.classes)
    model = fit_to_data(config.model, images, conditional)
    recorded = replace(config.data, source=_source(data),
                       read=to_dict(replace(read, size=model.size)))  # the options it used
    config = replace(config, model=model, data=recorded,
                     train=config.train.with_decay(0.0))  # a constant learning rate
    with training_into(out, resume):
        built = build_model(config, seed=config.train.seed)
        if config.data.init_from is not None and not (out / checkpoint.STATE).is_file():
            config = _start_from(built, config)
        batches = LabelledImages(images, repeats, config.data.mirror)
        result = fit(built, batches, config, out, resume=resume, progress=progress)
    return TrainResult(result, config, (len(images),))


def _start_from(model: GenerativeModel, config: RunConfig) -> RunConfig:
    """Copy the weights of the run ``config.data.init_from`` into ``model`` (transfer); the
    config with their fingerprint, which a restart after an early kill must find again."""
    source = load_run(config.data.init_from, kind=config.kind)
    if config.data.init_fingerprint not in (None, source.fingerprint):
        raise InputError("holds other weights than when this run started from it: resume "
                         "needs the same run", source.path)
    model.start_from(source.model, source.path)
    return replace(config, data=replace(config.data, init_fingerprint=source.fingerprint))


def train_cyclegan(domain_a: str | ImageSet, domain_b: str | ImageSet, out: Path,
                   config: RunConfig, *, read: ReadConfig | None = None,
                   val_subjects: str | None = None, resume: bool = False,
                   progress: bool = True) -> TrainResult:
    """Train a CycleGAN between two unpaired domains (``config.model.paired``: pix2pix on
    co-registered pairs) into the run directory ``out``.

    Args:
        config: the resolved configuration (:func:`~synthmed.gan.run_config.
            resolve_cyclegan_config`, or the run's own for ``resume``, whose held-out
            subjects are held out again); the crop and block count follow the data; the
            learning rate decays over the last half of the epochs unless
            ``train.decay_epochs`` says otherwise.
        val_subjects: subjects kept out of training: comma-separated names, or a count
            drawn with the training seed; recorded by their images' hashes only.
    """
    out = Path(out)
    read = read or config.data.read_config()
    domains = [_chosen_split(_read(domain, out, read), config.data.split)
               for domain in (domain_a, domain_b)]
    domains, held, hashes = _hold_out(domains, config, val_subjects)
    model = fit_cyclegan_to_data(config.model, domains)
    pairing = PairedImages if model.paired else UnpairedImages
    data = pairing(*domains, crop=model.crop, flip=model.flip, standardize=model.standardize,
                   context=model.context, intensity_augment=model.intensity_augment,
                   spatial_augment=model.spatial_augment)
    recorded = replace(config.data, val_image_hashes=tuple(hashes), read=to_dict(read),
                       domain_a=_source(domain_a), domain_b=_source(domain_b))
    config = replace(config, model=model, data=recorded,
                     train=config.train.with_decay(0.5))  # the reference's last half
    built = build_model(config, seed=config.train.seed)
    built.set_intensity_prior(*data.quantiles)
    with training_into(out, resume):
        result = fit(built, data, config, out, resume=resume, progress=progress)
    return TrainResult(result, config, tuple(len(d) for d in domains), tuple(held))


def fit_dcgan_to_data(model: DCGANConfig, data: ImageSet, conditional: bool) -> DCGANConfig:
    """The size (when unset: the images', if the DCGAN makes it), channels and classes of
    ``data``; a set size must be the images'."""
    origin = data.metadata.get("origin")
    conditional = _conditional(conditional, model.num_classes, data)
    height, width = data.size
    size = model.size
    if size is None and (height != width or height not in SIZES):
        raise InputError(f"images are {height}x{width}, a size the DCGAN does not make: pass "
                         f"--size with one of {', '.join(map(str, SIZES))}", origin)
    if size is not None and data.size != (size, size):
        raise InputError(f"images are {height}x{width} but the model makes {size}x{size}: "
                         f"pass --size {size}", origin)
    if model.transition_steps[1] > 0 and not conditional:
        raise InputError("--transition-steps ramps in the class conditioning: train with "
                         "--conditional or leave it out", origin)
    return with_overrides(model, size=height, channels=data.channels,
                          num_classes=len(data.class_names) if conditional else 0)


def fit_diffusion_to_data(model: DiffusionConfig, data: ImageSet,
                          conditional: bool) -> DiffusionConfig:
    """The size (when unset: the images', if square and a multiple of the U-Net's
    ``multiple``), channels and classes of ``data``; a set size must be the images'."""
    origin = data.metadata.get("origin")
    conditional = _conditional(conditional, model.num_classes, data)
    height, width = data.size
    if model.size is None and (height != width or height % model.multiple):
        raise InputError(f"images are {height}x{width}, a size the diffusion U-Net does not "
                         f"make: pass --size with a multiple of {model.multiple}", origin)
    if model.size is not None and data.size != (model.size, model.size):
        raise InputError(f"images are {height}x{width} but the model makes "
                         f"{model.size}x{model.size}: pass --size {model.size}", origin)
    return with_overrides(model, size=height, channels=data.channels,
                          num_classes=len(data.class_names) if conditional else 0)


def _conditional(asked: bool, classes: int, data: ImageSet) -> bool:
    """Whether the model is class-conditional (asked, or its config has classes); refused
    for unlabelled data."""
    conditional = asked or classes > 0
    if conditional and not data.is_labelled:
        raise InputError("--conditional needs labelled data (class folders, a label column or "
                         "npz labels)", data.metadata.get("origin"))
    return conditional


def fit_cyclegan_to_data(model: CycleGANConfig, domains: list[ImageSet]) -> CycleGANConfig:
    """Channels from the data; the training crop (unset: 7/8 of the smaller image side, a
    multiple of 4, like the reference's 256 of 286) and the generators' block count for it."""
    side = min(min(domain.size) for domain in domains)
    crop = model.crop
    if crop is None:
        crop = max(model.min_size, side * 7 // 8 // 4 * 4)
    if crop > side:
        raise InputError(f"the training crop {crop} is larger than the images ({side} px): "
                         "pass a smaller --crop", domains[0].metadata.get("origin"))
    return with_overrides(model, channels=domains[0].channels, crop=crop,
                          n_blocks=model.blocks(crop or side))


def resumes_saved_config(out: Path, resume: bool) -> bool:
    """Whether ``--resume`` takes every setting from the run's config.yaml: not when a kill
    came before the run saved it (it then starts again from the options)."""
    killed_early = checkpoint.is_unstarted(out) and not (out / checkpoint.CONFIG).exists()
    return resume and not killed_early


def saved_config(out: Path, kind: str, epochs: int | None = None) -> RunConfig:
    """The config a run saved, for ``--resume``; ``epochs`` may extend the training."""
    config = read_run_config(out, kind)
    return replace(config, train=with_overrides(config.train, epochs=epochs))


@contextlib.contextmanager
def training_into(out: Path, resume: bool) -> Iterator[None]:
    """Hold the lock on the run directory ``out`` (one writer at a time), and when training
    fails before its first checkpoint, remove the run directory it made: nothing in it could
    be resumed, and it would block a new start."""
    new = not resume and not out.exists()
    out.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(out):
        try:
            yield
        except BaseException:
            if new and not (out / checkpoint.STATE).is_file():
                shutil.rmtree(out, ignore_errors=True)
            raise


def _read(data: str | ImageSet, out: Path, read: ReadConfig,
          size: int | None = None) -> ImageSet:
    """``data`` itself, or the images a path names (at ``size`` when set), after checking
    that writing ``out`` cannot cost them."""
    if isinstance(data, ImageSet):
        return data
    check_out(out, (data,))
    return read_images(data, read if size is None else replace(read, size=size))


def _source(data: str | ImageSet) -> str | None:
    return recorded_source(data) if isinstance(data, str) else None


def _chosen_split(images: ImageSet, split: str) -> ImageSet:
    """The images' train split for ``split`` ``train`` when they have one, else all."""
    return images.split("train") if split == "train" and "train" in images.splits else images


def _only_classes(images: ImageSet, classes: tuple[str, ...]) -> ImageSet:
    """The images of ``classes`` (every image when empty), with the data's class list."""
    if not classes:
        return images
    origin = images.metadata.get("origin")
    if not images.is_labelled:
        raise InputError("--class needs labelled data (class folders, a label column or npz "
                         "labels)", origin)
    unknown = [name for name in classes if name not in images.class_names]
    if unknown:
        raise InputError(f"unknown class {unknown[0]!r}: the data has "
                         f"{', '.join(map(repr, images.class_names))}", origin)
    wanted = [images.class_names.index(name) for name in classes]
    chosen = np.flatnonzero(np.isin(images.labels, wanted))
    if len(chosen) == 0:
        raise InputError(f"no image of class {', '.join(map(repr, classes))} to train on",
                         origin)
    return images.subset(chosen)


def _hold_out(domains: list[ImageSet], config: RunConfig, val_subjects: str | None
              ) -> tuple[list[ImageSet], list[str], list[str]]:
    """The domains without the held-out subjects, their names and their images' hashes: the
    run's own when it recorded some (a resumed run), else ``val_subjects``."""
    recorded = config.data
    if recorded.val_image_hashes:
        kept, held = hold_out_images(domains, set(recorded.val_image_hashes))
        return kept, held, list(recorded.val_image_hashes)
    spec = ",".join(recorded.val_subjects) or val_subjects  # older runs recorded names
    if not spec:
        return domains, [], []
    kept, held = hold_out_groups(domains, spec, seed=config.train.seed)
    return kept, held, held_out_hashes(domains, held)

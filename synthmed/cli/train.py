"""``synthmed train``: a DCGAN, a diffusion model or a CycleGAN, each run a directory.

Every model and loop option defaults to ``None``: unset, a ``--config`` file's value or the
family's own default (:mod:`synthmed.gan.config`, shown in ``--help``) stands.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from synthmed.cli import types
from synthmed.cli.base import Group, comma_names, config_option, read_options, stacked
from synthmed.gan.config import (
    PAIRED_LOSSES,
    TRANSLATOR_GENERATORS,
    CycleGANConfig,
    DCGANConfig,
    DiffusionConfig,
    DPConfig,
    TrainConfig,
    resolve_precision,
)
from synthmed.gan.nets import UPSAMPLES
from synthmed.gan.run_config import DataConfig

_TRAIN_OPTIONS = ("epochs", "batch_size", "precision", "seed", "checkpoint_every",
                  "preview_every")


def _loop_options(loop: TrainConfig, epochs: str, decay: bool,
                  batch_default: bool) -> Callable[[Any], Any]:
    """The fit loop's options (:data:`_TRAIN_OPTIONS`, ``--decay-epochs`` with ``decay``),
    unset ``None``; the help shows ``loop``'s defaults (the batch size's only with
    ``batch_default``: a DCGAN's depends on the preset)."""
    decay_epochs = [click.option("--decay-epochs", type=click.IntRange(0),
                                 help="The last epochs, with the learning rate falling linearly "
                                      "to 0 (default half of --epochs).")] if decay else []
    batch = "Images per step and process"
    batch_size = (config_option("--batch-size", type=click.IntRange(1), config=loop,
                                field="batch_size", help=batch) if batch_default
                  else click.option("--batch-size", type=click.IntRange(1), help=f"{batch}."))
    return stacked(
        config_option("--epochs", type=click.IntRange(1), config=loop, field="epochs",
                      help=epochs),
        *decay_epochs,
        batch_size,
        click.option("--precision", type=click.Choice(["fp32", "bf16", "auto"]),
                     callback=lambda _ctx, _param, value: value and resolve_precision(value),
                     help="bf16: autocast; auto: bf16 where the device computes it natively."),
        config_option("--seed", type=types.SEED, config=loop, field="seed",
                      help="Seeds every random draw"),
        click.option("--checkpoint-every", type=click.IntRange(1),
                     help="Epochs between checkpoints."),
        click.option("--preview-every", type=click.IntRange(1),
                     help="Epochs between sample grids in samples/ (default 1)."))


#: DATA, --out, the read options and --config of a generator's training.
_generator_inputs = stacked(
    click.argument("data"),
    click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
                 help="Run directory."),
    read_options,
    click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
                 help="YAML with model: and train: sections; options below override it."),
    click.option("--init-from", type=click.Path(file_okay=False),
                 help="Start from the weights of this run of the same model (transfer: e.g. "
                      "one trained on a larger set); class embeddings of another class count "
                      "start afresh."),
    click.option("--class", "classes", multiple=True,
                 help="Train on this class's images only (repeatable); the model keeps every "
                      "class of the data, so a copy fine-tuned on a class (--init-from RUN) "
                      "can draw it for RUN: generate RUN --class-run CLASS=COPY."),
    click.option("--mirror", is_flag=True,
                 help="Flip each training image left-right at random (twice the images, for "
                      "data whose left and right are alike, as StyleGAN2-ADA's --mirror)."))


#: --resume and --progress of every training.
_resume_and_progress = stacked(
    click.option("--resume", is_flag=True, help="Continue the run in --out from its last "
                 "checkpoint (one killed before its first checkpoint starts again)."),
    click.option("--progress/--no-progress", default=True, help="Show the progress bar."))


def _metrics_line(metrics: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:.3g}" for k, v in metrics.items())


@click.group(cls=Group)
def train() -> None:
    """Train a generator; each run is a directory (config, weights, samples, metrics)."""


@train.command("dcgan")
@_generator_inputs
@config_option("--preset", type=click.Choice(["dcgan", "tutorial"]), config=DCGANConfig,
               field="preset", override=False,
               help="tutorial: the classic 28x28 DCGAN tutorial network.")
@click.option("--conditional", is_flag=True, help="Class-conditional G and D (labelled data).")
@config_option("--split", type=click.Choice(["train", "all"]), config=DataConfig, field="split",
               override=False, help="Train on the data's train split only, or on all of it.")
@_loop_options(TrainConfig(), "Epochs", decay=False, batch_default=False)
@config_option("--width", type=types.WIDTH, config=DCGANConfig, field="width",
               help="Channel width of G and D")
@click.option("--loss", type=click.Choice(["bce", "hinge", "lsgan"]))
@click.option("--spectral-norm/--no-spectral-norm", default=None, help="Spectral norm in D.")
@click.option("--d-norm", type=click.Choice(["batch", "none"]), help="Normalisation in D.")
@click.option("--minibatch-std/--no-minibatch-std", default=None,
              help="Minibatch standard deviation feature in D (against mode collapse).")
@click.option("--upsample", type=click.Choice(UPSAMPLES), help="G's upsampling.")
@click.option("--diffaugment", help="Comma list of color,translation,cutout.")
@config_option("--ada-target", type=types.FiniteFloat(0, 1, max_open=True), config=DCGANConfig,
               field="ada_target", help="Adaptive augmentation: apply the --diffaugment ops with "
               "a probability that rises while E[sign D(real)] is above this target (0.6 in "
               "Karras et al. 2020); 0: always")
@config_option("--ada-images", type=click.IntRange(1), config=DCGANConfig, field="ada_images",
               help="Real images over which that probability moves by at most 1")
@config_option("--transition-steps", type=types.STEP_RANGE, config=DCGANConfig,
               field="transition_steps", help="With --conditional: train unconditionally until "
               "step START, then ramp the class conditioning in until END (0,0: from the start)")
@click.option("--ema", "ema_decay", type=types.DECAY,
              help="EMA decay of G for sampling, e.g. 0.999.")
@click.option("--r1", "r1_gamma", type=types.NON_NEGATIVE,
              help="R1 penalty weight on D's real gradients.")
@click.option("--lr-g", type=types.POSITIVE, help="Generator learning rate.")
@click.option("--lr-d", type=types.POSITIVE, help="Discriminator learning rate.")
@click.option("--dp-epsilon", type=types.POSITIVE,
              help="Differential privacy: train D with DP-SGD (Opacus) to spend this epsilon "
                   "by the last epoch; D then has no BatchNorm.")
@click.option("--dp-delta", type=types.FiniteFloat(0, 1, min_open=True, max_open=True),
              help="Its delta (default min(1e-5, 1/(10 N)) for N training images).")
@config_option("--dp-max-grad-norm", type=types.POSITIVE, config=DPConfig,
               field="max_grad_norm", help="Its per-image gradient clipping norm")
@_resume_and_progress
def train_dcgan_command(data: str, out: Path, read_config: Any, config_file: Path | None,
                        init_from: str | None, classes: tuple[str, ...], mirror: bool,
                        preset: str, conditional: bool, split: str, resume: bool,
                        progress: bool, **options: Any) -> None:
    """Train a DCGAN on DATA (npz, image folder, DICOM, NIfTI, CSV or `phantom`).

    Example: synthmed train dcgan breastmnist.npz --out runs/breast --conditional --epochs 100
    """
    from synthmed.gan.run_config import resolve_dcgan_config, resolve_privacy
    from synthmed.gan.train import resumes_saved_config, saved_config, train_dcgan
    from synthmed.io import check_out

    check_out(out, (data, config_file, init_from))
    train_overrides = {k: options.pop(k) for k in _TRAIN_OPTIONS}
    privacy = resolve_privacy(options.pop("dp_epsilon"), options.pop("dp_delta"),
                              options.pop("dp_max_grad_norm"))
    if options["diffaugment"] is not None:
        options["diffaugment"] = comma_names(options["diffaugment"])
    resumed = resumes_saved_config(out, resume)
    if resumed:
        config = saved_config(out, "dcgan", epochs=train_overrides["epochs"])
    else:
        config = resolve_dcgan_config(preset, config_file, {**options, "size": read_config.size},
                                      train_overrides, privacy,
                                      DataConfig(split=split, classes=classes,
                                                 init_from=init_from, mirror=mirror))
    result = train_dcgan(data, out, config, read=read_config,
                         conditional=conditional and not resumed, resume=resume,
                         progress=progress)
    click.echo(f"trained {result.config.model.preset} DCGAN on {result.images[0]} images "
               f"for {result.fit.epochs} epochs -> {out}\n{_metrics_line(result.fit.metrics)}")
    if result.fit.note:
        click.echo(result.fit.note)


@train.command("diffusion")
@_generator_inputs
@click.option("--conditional", is_flag=True,
              help="Class-conditional, with classifier-free guidance (labelled data).")
@config_option("--split", type=click.Choice(["train", "all"]), config=DataConfig, field="split",
               override=False, help="Train on the data's train split only, or on all of it.")
@_loop_options(TrainConfig(), "Epochs", decay=False, batch_default=True)
@click.option("--widths", help=f"Comma list of the U-Net's level widths (default "
                               f"{','.join(map(str, DiffusionConfig.widths))}); with "
                               "--attention, one entry per level.")
@click.option("--attention", help="Comma list of true/false: self-attention per level.")
@config_option("--label-dropout", type=types.FiniteFloat(0, 1, max_open=True),
               config=DiffusionConfig, field="label_dropout",
               help="Share of images shown unlabelled (classifier-free guidance)")
@config_option("--guidance", type=types.NON_NEGATIVE, config=DiffusionConfig, field="guidance",
               help="Guidance scale when sampling (1: none)")
@config_option("--sampling-steps", type=click.IntRange(1), config=DiffusionConfig,
               field="sampling_steps", help="DDIM steps per sample")
@config_option("--lr", type=types.POSITIVE, config=DiffusionConfig, field="lr",
               help="AdamW learning rate")
@config_option("--ema", "ema_decay", type=types.DECAY, config=DiffusionConfig,
               field="ema_decay", help="EMA decay of the network for sampling")
@_resume_and_progress
def train_diffusion_command(data: str, out: Path, read_config: Any, config_file: Path | None,
                            init_from: str | None, classes: tuple[str, ...], mirror: bool,
                            conditional: bool, split: str, resume: bool, progress: bool,
                            **options: Any) -> None:
    """Train a denoising diffusion model (MONAI U-Net, DDIM sampling) on DATA.

    Example: synthmed train diffusion breastmnist.npz --out runs/breast-ddpm --conditional
    --epochs 100 --precision bf16
    """
    from synthmed.gan.run_config import resolve_diffusion_config
    from synthmed.gan.train import resumes_saved_config, saved_config, train_diffusion
    from synthmed.io import check_out

    check_out(out, (data, config_file, init_from))
    train_overrides = {k: options.pop(k) for k in _TRAIN_OPTIONS}
    for name, parse in (("widths", _whole_numbers), ("attention", _flags)):
        if options[name] is not None:
            options[name] = parse(options[name], f"--{name}")
    resumed = resumes_saved_config(out, resume)
    if resumed:
        config = saved_config(out, "diffusion", epochs=train_overrides["epochs"])
    else:
        config = resolve_diffusion_config(config_file, {**options, "size": read_config.size},
                                          train_overrides,
                                          DataConfig(split=split, classes=classes,
                                                     init_from=init_from, mirror=mirror))
    result = train_diffusion(data, out, config, read=read_config,
                             conditional=conditional and not resumed, resume=resume,
                             progress=progress)
    click.echo(f"trained diffusion model on {result.images[0]} images for {result.fit.epochs} "
               f"epochs -> {out}\n{_metrics_line(result.fit.metrics)}")


def _whole_numbers(text: str, option: str) -> tuple[int, ...]:
    """``"32,64,64"`` -> ``(32, 64, 64)``."""
    parts = comma_names(text)
    if not parts or not all(part.isdigit() for part in parts):
        raise click.BadParameter(f"{text!r} is not a comma list of whole numbers",
                                 param_hint=option)
    return tuple(int(part) for part in parts)


def _flags(text: str, option: str) -> tuple[bool, ...]:
    """``"false,true"`` -> ``(False, True)``."""
    words = {"true": True, "false": False}
    parts = [part.lower() for part in comma_names(text)]
    if not parts or not all(part in words for part in parts):
        raise click.BadParameter(f"{text!r} is not a comma list of true / false",
                                 param_hint=option)
    return tuple(words[part] for part in parts)


@train.command("cyclegan")
@click.option("--domain-a", required=True, help="Images of domain A (e.g. T1 volumes).")
@click.option("--domain-b", required=True, help="Images of domain B (e.g. T2 volumes).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Run directory.")
@read_options
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              help="YAML with model: and train: sections; options below override it.")
@click.option("--val-subjects",
              help="Subjects kept out of training for evaluation: comma-separated names "
                   "(folder / patient ids) or a count drawn with --seed.")
@config_option("--split", type=click.Choice(["train", "all"]), config=DataConfig, field="split",
               override=False, help="Train on the data's train split only, or on all of it.")
@click.option("--crop", type=click.IntRange(0), default=None,
              help="Random training crop side, a multiple of 4 (default 7/8 of the image, "
                   "like the reference's 256 of 286; 0: whole images).")
@_loop_options(TrainConfig.cyclegan(), "Epochs in all", decay=True, batch_default=True)
@config_option("--generator", type=click.Choice(TRANSLATOR_GENERATORS), config=CycleGANConfig,
               field="generator",
               help="Generator: resnet (the CycleGAN reference's) or unet (pix2pix's, MONAI's "
                    "UNet: skip connections at every scale)")
@config_option("--ngf", type=types.WIDTH, config=CycleGANConfig, field="ngf",
               help="Generator width")
@config_option("--ndf", type=types.WIDTH, config=CycleGANConfig, field="ndf",
               help="Discriminator width")
@click.option("--blocks", "n_blocks", type=click.IntRange(1),
              help="ResNet blocks per generator (default 6 up to 128 px crops, else 9).")
@click.option("--upsample", type=click.Choice(UPSAMPLES),
              help="Generator upsampling: convtranspose (reference) or resize + conv.")
@config_option("--standardize/--no-standardize", config=CycleGANConfig, field="standardize",
               help="Match each subject's histogram to its domain's")
@config_option("--lambda-cycle", type=types.NON_NEGATIVE, config=CycleGANConfig,
               field="lambda_cycle", help="Cycle-consistency weight")
@config_option("--lambda-identity", type=types.NON_NEGATIVE, config=CycleGANConfig,
               field="lambda_identity", help="Identity weight as a share of --lambda-cycle")
@config_option("--lambda-structure", type=types.NON_NEGATIVE, config=CycleGANConfig,
               field="lambda_structure",
               help="Weight of a contrast-sign-blind structure loss (squared local NCC of "
                    "each generator's input and output) against invented texture; the "
                    "reference has none")
@config_option("--intensity-prior", type=click.Choice(["none", "matching", "inverted"]),
               config=CycleGANConfig, field="intensity_prior",
               help="Generators correct a histogram-matching map between the domains instead "
                    "of drawing whole images (inverted: a decreasing map, e.g. T1 <-> T2 "
                    "brain MR; use with --lambda-identity 0); the reference has none")
@config_option("--pool-size", type=click.IntRange(0), config=CycleGANConfig, field="pool_size",
               help="Past fakes shown to D")
@config_option("--paired/--unpaired", config=CycleGANConfig, field="paired",
               help="paired: pix2pix on co-registered pairs (each subject in both domains on "
                    "one grid; L1 to the subject's own slice and a conditional PatchGAN; no "
                    "cycle), refused when the data are not paired")
@config_option("--lambda-l1", type=types.NON_NEGATIVE, config=CycleGANConfig, field="lambda_l1",
               help="Paired pixel-loss weight")
@config_option("--paired-loss", type=click.Choice(PAIRED_LOSSES), config=CycleGANConfig,
               field="paired_loss",
               help="Paired pixel loss: l1 (pix2pix; the conditional median) or mse (the "
                    "conditional mean)")
@config_option("--lambda-gan", type=types.NON_NEGATIVE, config=CycleGANConfig,
               field="lambda_gan",
               help="Adversarial weight; 0 (paired only): a supervised regression translator "
                    "without discriminators")
@config_option("--context", type=click.IntRange(0), config=CycleGANConfig, field="context",
               help="2.5D: neighbouring slices on each side given with each slice (the "
                    "translator makes the centre one)")
@config_option("--intensity-augment/--no-intensity-augment", config=CycleGANConfig,
               field="intensity_augment",
               help="Bias field, gamma, noise and ringing on the generators' inputs, so "
                    "another scanner's intensities do not break the translator")
@config_option("--spatial-augment/--no-spatial-augment", config=CycleGANConfig,
               field="spatial_augment",
               help="A random rotation, scale and shift of each training slice (the same for "
                    "both contrasts of a pair), so a few subjects stand for more")
@config_option("--lr", type=types.POSITIVE, config=CycleGANConfig, field="lr",
               help="Adam learning rate")
@_resume_and_progress
def train_cyclegan_command(domain_a: str, domain_b: str, out: Path, read_config: Any,
                           config_file: Path | None, val_subjects: str | None, split: str,
                           resume: bool, progress: bool, **options: Any) -> None:
    """Train a CycleGAN translating between two unpaired domains (e.g. MR T1 <-> T2), or
    with --paired a pix2pix translator on co-registered pairs.

    Each domain is anything the readers take; NIfTI volumes are cut into 2D slices. Unpaired,
    each step shows the model a random image of each domain; paired, one subject's slice in
    both (matched by subject folder and slice).

    Example: synthmed train cyclegan --domain-a "brain/*/t1.nii.gz" --domain-b
    "brain/*/t2.nii.gz" --val-subjects 1 --size 128 --out runs/t1t2 --precision bf16
    """
    from synthmed.gan.run_config import resolve_cyclegan_config
    from synthmed.gan.train import resumes_saved_config, saved_config, train_cyclegan
    from synthmed.io import check_out

    check_out(out, (domain_a, domain_b, config_file))
    train_overrides = {k: options.pop(k) for k in (*_TRAIN_OPTIONS, "decay_epochs")}
    if resumes_saved_config(out, resume):
        config = saved_config(out, "cyclegan", epochs=train_overrides["epochs"])
    else:
        config = resolve_cyclegan_config(config_file, options, train_overrides,
                                         DataConfig(split=split))
    result = train_cyclegan(domain_a, domain_b, out, config, read=read_config,
                            val_subjects=val_subjects, resume=resume, progress=progress)
    images_a, images_b = result.images
    name = "pix2pix (paired)" if result.config.model.paired else "CycleGAN"
    click.echo(f"trained {name} on {images_a} A and {images_b} B images (held out: "
               f"{', '.join(result.held_out) or 'none'}) for {result.fit.epochs} epochs -> "
               f"{out}\n{_metrics_line(result.fit.metrics)}")

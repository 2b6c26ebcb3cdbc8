"""The ``synthmed`` command line. Each command parses, calls the Python API and prints a summary.

Errors a user can cause end in one line on stderr and exit status 1; ``--verbose`` adds the
traceback.
"""

from __future__ import annotations

import functools
import json
import traceback
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import click

from synthmed import __version__, cli_types
from synthmed.errors import InputError, SynthmedError


class _Command(click.Command):
    """A command whose OS errors that name no file (a full disk: ``write`` failing with
    ENOSPC) name its ``--out`` folder."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except OSError as error:
            out = ctx.params.get("out")
            if error.filename or out is None:
                raise
            raise InputError(f"cannot be written ({error.strerror or error})", out) from error


class _Group(click.Group):
    """A click group that turns user errors into one clear line; its groups and commands
    inherit that."""

    command_class = _Command
    group_class = type

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (SynthmedError, OSError) as error:
            if (ctx.obj or {}).get("verbose"):
                traceback.print_exc()
            message = str(error) if isinstance(error, SynthmedError) else _os_message(error)
            # one line even when a file name or a file's own text holds a line break
            raise click.ClickException("\\n".join(message.splitlines())) from None


def _os_message(error: OSError) -> str:
    where = f"{error.filename}: " if error.filename else ""
    return f"{where}{error.strerror or error}"


def _check_out(out: Path, overwrite: bool, *inputs: str | Path | None) -> None:
    """Refuse, before any work, an ``--out`` that writing could cost an input or a user's
    files (:mod:`synthmed.io`); the writer checks again when it writes."""
    from synthmed.io import check_out, check_replaceable

    check_out(out, inputs)
    check_replaceable(out, overwrite)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--verbose", is_flag=True,
              help="Show warnings about input files, and the full traceback when something "
                   "fails.")
@click.version_option(__version__, prog_name="synthmed")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """Synthetic medical images: read, train, generate, translate, evaluate.

    Data can be a DICOM file or folder, a NIfTI volume, a folder of PNG/JPEG/TIFF pictures
    (one sub-folder per class), a MedMNIST .npz, a CSV manifest, a glob pattern, or the
    embedded phantom (`phantom`, `phantom:t2,n=500,size=64`).
    """
    from synthmed.errors import show_warnings

    ctx.ensure_object(dict)["verbose"] = verbose
    show_warnings(verbose)  # warnings about input files (pydicom's ...) only with --verbose


def read_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add the options of :class:`~synthmed.augment.items.ReadConfig`; pass ``read_config``."""
    from synthmed.augment.intensity import CT_WINDOWS
    from synthmed.augment.items import ReadConfig
    from synthmed.augment.readers import FORMATS

    options = [
        click.option("--format", "format_", type=click.Choice(FORMATS), default="auto",
                     show_default=True, help="Reader to use; auto picks by file name."),
        click.option("--size", type=click.IntRange(1), default=None,
                     help="Resize every image to SIZE x SIZE (needed for mixed sizes)."),
        click.option("--resize-mode", type=click.Choice(["resize", "pad", "fit"]),
                     default="resize", show_default=True,
                     help="resize: stretch; pad: pad/crop around the center; "
                          "fit: scale the longest side, then pad."),
        click.option("--channels", type=click.Choice(["1", "3"]), default=None,
                     help="Convert to 1 (grayscale) or 3 (RGB) channels."),
        click.option("--window", default=None,
                     help=f"CT window: {', '.join(CT_WINDOWS)} or CENTER,WIDTH in HU."),
        click.option("--axis", "slice_axis", type=click.IntRange(0, 2), default=2,
                     show_default=True, help="NIfTI axis to slice along."),
        click.option("--min-foreground", type=cli_types.FINITE, default=0.01, show_default=True,
                     help="NIfTI: skip slices whose foreground fraction is not above this."),
        click.option("--skip-bad", is_flag=True,
                     help="Skip unreadable files and list them instead of stopping."),
        click.option("--root", type=click.Path(exists=True, file_okay=False, resolve_path=True),
                     default=None,
                     help="Confine reading to this folder: every file the data, a manifest, "
                          "folder or glob names must resolve (symlinks followed) inside it."),
    ]

    @functools.wraps(command)
    def wrapper(*args: Any, format_: str, size: int | None, resize_mode: str,
                channels: str | None, window: str | None, slice_axis: int,
                min_foreground: float, skip_bad: bool, root: str | None,
                **kwargs: Any) -> Any:
        config = ReadConfig(format=format_, size=size, resize_mode=resize_mode,
                            channels=None if channels is None else int(channels), window=window,
                            slice_axis=slice_axis, min_foreground=min_foreground,
                            skip_bad=skip_bad, root=root)
        return command(*args, read_config=config, **kwargs)

    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


@cli.group()
def data() -> None:
    """Inspect data sets and write the embedded phantom data set."""


@data.command("inspect")
@click.argument("path")
@read_options
@click.option("--preview", type=click.Path(dir_okay=False, path_type=Path),
              help="Save a preview grid PNG (one row per class).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Save the summary as JSON.")
def inspect_command(path: str, read_config: Any, preview: Path | None,
                    json_path: Path | None) -> None:
    """Counts per split and class, sizes, intensities, groups, duplicates and leakage.

    Example: synthmed data inspect ../shared/data/medmnist/breastmnist.npz --preview p.png
    """
    from synthmed.augment.inspect import format_summary, summarize
    from synthmed.augment.preview import save_preview
    from synthmed.augment.readers import read_images
    from synthmed.io import check_out

    for written in (preview, json_path):
        if written is not None:
            check_out(written, (path,))
    imageset = read_images(path, read_config)
    summary = summarize(imageset)
    click.echo(format_summary(summary))
    if preview:
        save_preview(imageset, preview)
        click.echo(f"preview: {preview}")
    if json_path:
        json_path.write_text(json.dumps(summary, indent=2) + "\n")
        click.echo(f"summary: {json_path}")


@data.command("phantom")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Output folder (must not exist or be empty, unless --overwrite).")
@click.option("--n", type=click.IntRange(1), default=2000, show_default=True,
              help="Number of slices.")
@click.option("--size", type=click.IntRange(16), default=64, show_default=True,
              help="Height and width in pixels.")
@click.option("--format", "format_", type=click.Choice(["png", "npz", "nifti", "dicom"]),
              default="png", show_default=True)
@click.option("--contrast", type=click.Choice(["both", "t1", "t2"]), default="both",
              show_default=True, help="both: OUT/t1 and OUT/t2 of the same anatomy.")
@click.option("--seed", type=cli_types.SEED, default=0, show_default=True)
@click.option("--lesion-fraction", type=cli_types.FRACTION, default=0.5,
              show_default=True, help="Share of slices with a lesion (label 1).")
@click.option("--bit-depth", type=click.Choice(["8", "16"]), default="8", show_default=True,
              help="PNG and npz bit depth; 16-bit keeps the 12-bit scanner units (npz 16: "
                   "uint16 original units).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
def phantom_command(out: Path, n: int, size: int, format_: str, contrast: str, seed: int,
                    lesion_fraction: float, bit_depth: str, overwrite: bool) -> None:
    """Write the embedded phantom: brain-like MR slices, T1 and T2, lesion labels.

    Example: synthmed data phantom --out phantom --n 500 --format dicom
    """
    from synthmed.augment.export import write_imageset
    from synthmed.augment.phantom import PhantomConfig, make_phantom
    from synthmed.io import atomic_output_dir

    config = PhantomConfig(n=n, size=size, seed=seed, lesion_fraction=lesion_fraction)
    t1, t2 = make_phantom(config)
    both = {"t1": t1, "t2": t2}
    chosen = both if contrast == "both" else {contrast: both[contrast]}
    with atomic_output_dir(out, overwrite, kind="export") as work:
        for name, imageset in chosen.items():
            folder = work / name if contrast == "both" else work
            folder.mkdir(exist_ok=True)
            write_imageset(imageset, folder, format_, bit_depth=int(bit_depth),
                           provenance={"generator": "synthmed.augment.phantom",
                                       "contrast": name, **asdict(config)})
    lesions = int(t1.labels.sum())
    click.echo(f"wrote {n} phantom slice(s) x {len(chosen)} contrast(s) ({lesions} with a "
               f"lesion), {size}x{size}, as {format_} to {out}")


_TRAIN_OPTIONS = ("epochs", "batch_size", "precision", "seed", "checkpoint_every")


def _shown(metrics: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:.3g}" for k, v in metrics.items())


@cli.group()
def train() -> None:
    """Train a generator; each run is a directory (config, weights, samples, metrics)."""


@train.command("dcgan")
@click.argument("data")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Run directory.")
@read_options
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              help="YAML with model: and train: sections; options below override it.")
@click.option("--preset", type=click.Choice(["dcgan", "tutorial"]), default="dcgan",
              show_default=True, help="tutorial: the classic 28x28 DCGAN tutorial network.")
@click.option("--conditional", is_flag=True, help="Class-conditional G and D (labelled data).")
@click.option("--split", type=click.Choice(["train", "all"]), default="train",
              show_default=True, help="Train on the data's train split only, or on all of it.")
@click.option("--epochs", type=click.IntRange(1), help="Epochs (default 50).")
@click.option("--batch-size", type=click.IntRange(1), help="Images per step and process.")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), help="bf16: autocast.")
@click.option("--seed", type=cli_types.SEED, help="Seeds every random draw (default 0).")
@click.option("--checkpoint-every", type=click.IntRange(1), help="Epochs between checkpoints.")
@click.option("--width", type=cli_types.WIDTH, help="Channel width of G and D.")
@click.option("--loss", type=click.Choice(["bce", "hinge", "lsgan"]))
@click.option("--spectral-norm/--no-spectral-norm", default=None, help="Spectral norm in D.")
@click.option("--d-norm", type=click.Choice(["batch", "none"]), help="Normalisation in D.")
@click.option("--minibatch-std/--no-minibatch-std", default=None,
              help="Minibatch standard deviation feature in D (against mode collapse).")
@click.option("--upsample", type=click.Choice(["convtranspose", "resize"]), help="G's upsampling.")
@click.option("--diffaugment", help="Comma list of color,translation,cutout.")
@click.option("--ema", "ema_decay", type=cli_types.DECAY,
              help="EMA decay of G for sampling, e.g. 0.999.")
@click.option("--r1", "r1_gamma", type=cli_types.NON_NEGATIVE,
              help="R1 penalty weight on D's real gradients.")
@click.option("--lr-g", type=cli_types.POSITIVE, help="Generator learning rate.")
@click.option("--lr-d", type=cli_types.POSITIVE, help="Discriminator learning rate.")
@click.option("--dp-epsilon", type=cli_types.POSITIVE,
              help="Differential privacy: train D with DP-SGD (Opacus) to spend this epsilon "
                   "by the last epoch; D then has no BatchNorm.")
@click.option("--dp-delta", type=cli_types.FiniteFloat(0, 1, min_open=True, max_open=True),
              help="Its delta (default min(1e-5, 1/(10 N)) for N training images).")
@click.option("--dp-max-grad-norm", type=cli_types.POSITIVE,
              help="Its per-image gradient clipping norm (default 1).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint "
              "(one killed before its first checkpoint starts again).")
@click.option("--progress/--no-progress", default=True, help="Show the progress bar.")
def train_dcgan_command(data: str, out: Path, read_config: Any, config_file: Path | None,
                        preset: str, conditional: bool, split: str, resume: bool,
                        progress: bool, **options: Any) -> None:
    """Train a DCGAN on DATA (npz, image folder, DICOM, NIfTI, CSV or `phantom`).

    Example: synthmed train dcgan breastmnist.npz --out runs/breast --conditional --epochs 100
    """
    from synthmed.gan.run_config import DataConfig, resolve_dcgan_config, resolve_privacy
    from synthmed.gan.train import resumes_saved_config, saved_config, train_dcgan
    from synthmed.io import check_out

    check_out(out, (data, config_file))
    train_overrides = {k: options.pop(k) for k in _TRAIN_OPTIONS}
    privacy = resolve_privacy(options.pop("dp_epsilon"), options.pop("dp_delta"),
                              options.pop("dp_max_grad_norm"))
    if options["diffaugment"] is not None:
        options["diffaugment"] = _names(options["diffaugment"])
    resumed = resumes_saved_config(out, resume)
    if resumed:
        config = saved_config(out, "dcgan", epochs=train_overrides["epochs"])
    else:
        config = resolve_dcgan_config(preset, config_file, {**options, "size": read_config.size},
                                      train_overrides, privacy, DataConfig(split=split))
    result = train_dcgan(data, out, config, read=read_config,
                         conditional=conditional and not resumed, resume=resume,
                         progress=progress)
    click.echo(f"trained {result.config.model.preset} DCGAN on {result.images[0]} images "
               f"for {result.fit.epochs} epochs -> {out}\n{_shown(result.fit.metrics)}")
    if result.fit.note:
        click.echo(result.fit.note)


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
@click.option("--split", type=click.Choice(["train", "all"]), default="train",
              show_default=True, help="Train on the data's train split only, or on all of it.")
@click.option("--crop", type=click.IntRange(0), default=None,
              help="Random training crop side, a multiple of 4 (default 7/8 of the image, "
                   "like the reference's 256 of 286; 0: whole images).")
@click.option("--epochs", type=click.IntRange(1), help="Epochs in all (default 200).")
@click.option("--decay-epochs", type=click.IntRange(0),
              help="The last epochs, with the learning rate falling linearly to 0 "
                   "(default half of --epochs).")
@click.option("--batch-size", type=click.IntRange(1), help="Images per step and process "
                                                           "(default 1).")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), help="bf16: autocast.")
@click.option("--seed", type=cli_types.SEED, help="Seeds every random draw (default 0).")
@click.option("--checkpoint-every", type=click.IntRange(1), help="Epochs between checkpoints.")
@click.option("--ngf", type=cli_types.WIDTH, help="Generator width (default 64).")
@click.option("--ndf", type=cli_types.WIDTH, help="Discriminator width (default 64).")
@click.option("--blocks", "n_blocks", type=click.IntRange(1),
              help="ResNet blocks per generator (default 6 up to 128 px crops, else 9).")
@click.option("--upsample", type=click.Choice(["convtranspose", "resize"]),
              help="Generator upsampling: convtranspose (reference) or resize + conv.")
@click.option("--standardize/--no-standardize", default=None,
              help="Match each subject's histogram to its domain's (default: on).")
@click.option("--lambda-cycle", type=cli_types.NON_NEGATIVE,
              help="Cycle-consistency weight (default 10).")
@click.option("--lambda-identity", type=cli_types.NON_NEGATIVE,
              help="Identity weight as a share of --lambda-cycle (default 0.5).")
@click.option("--lambda-structure", type=cli_types.NON_NEGATIVE,
              help="Weight of a contrast-sign-blind structure loss (squared local NCC of "
                   "each generator's input and output) against invented texture; default 0, "
                   "as the reference.")
@click.option("--intensity-prior", type=click.Choice(["none", "matching", "inverted"]),
              help="Generators correct a histogram-matching map between the domains instead "
                   "of drawing whole images (inverted: a decreasing map, e.g. T1 <-> T2 "
                   "brain MR; use with --lambda-identity 0); default none, as the reference.")
@click.option("--pool-size", type=click.IntRange(0), help="Past fakes shown to D (default 50).")
@click.option("--lr", type=cli_types.POSITIVE, help="Adam learning rate (default 2e-4).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint "
              "(one killed before its first checkpoint starts again).")
@click.option("--progress/--no-progress", default=True, help="Show the progress bar.")
def train_cyclegan_command(domain_a: str, domain_b: str, out: Path, read_config: Any,
                           config_file: Path | None, val_subjects: str | None, split: str,
                           resume: bool, progress: bool, **options: Any) -> None:
    """Train a CycleGAN translating between two unpaired domains (e.g. MR T1 <-> T2).

    Each domain is anything the readers take; NIfTI volumes are cut into 2D slices. The two
    domains are never paired: each step shows the model a random image of each.

    Example: synthmed train cyclegan --domain-a "brain/*/t1.nii.gz" --domain-b
    "brain/*/t2.nii.gz" --val-subjects 1 --size 128 --out runs/t1t2 --precision bf16
    """
    from synthmed.gan.run_config import DataConfig, resolve_cyclegan_config
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
    click.echo(f"trained CycleGAN on {images_a} A and {images_b} B images (held out: "
               f"{', '.join(result.held_out) or 'none'}) for {result.fit.epochs} epochs -> "
               f"{out}\n{_shown(result.fit.metrics)}")


@cli.command("generate")
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Output folder (must not exist or be empty, unless --overwrite).")
@click.option("--n", type=cli_types.IMAGES,
              help="Number of images (spread evenly over the classes; at most 10,000,000).")
@click.option("--per-class", help="Images per class, e.g. malignant=500,1=200.")
@click.option("--balance", is_flag=True,
              help="Fill every class up to the largest class of the training data.")
@click.option("--seed", type=cli_types.SEED, default=0, show_default=True,
              help="Same seed, same images (byte for byte for png, npz and nifti).")
@click.option("--format", "format_", type=click.Choice(["png", "npz", "dicom", "nifti"]),
              default="png", show_default=True)
@click.option("--bit-depth", type=click.Choice(["8", "16"]), default=None,
              help="PNG and npz bit depth (npz 16: uint16 original units); PNG default 16 "
                   "when the training data was wider than 8 bits, npz default 8.")
@click.option("--privacy-filter", is_flag=True,
              help="Drop images nearer to a training image than --threshold (pixel distance) "
                   "and draw new ones; needs --train.")
@click.option("--train", "train_data",
              help="The run's training data, for --privacy-filter; read with the run's own "
                   "read options and split, so pixels compare.")
@click.option("--train-read", multiple=True, metavar="KEY=VALUE",
              help="A read option replacing the run's own for --train, e.g. skip_bad=true "
                   "(repeatable).")
@click.option("--threshold", type=cli_types.POSITIVE,
              help="Near-copy pixel distance (default: the 5th percentile of the distances "
                   "from 20 % of the training subjects to the others).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
@click.option("--progress/--no-progress", default=True, help="Show the progress bar.")
def generate_command(run: Path, out: Path, n: int | None, per_class: str | None, balance: bool,
                     seed: int, format_: str, bit_depth: str | None, privacy_filter: bool,
                     train_data: str | None, train_read: tuple[str, ...],
                     threshold: float | None, overwrite: bool, progress: bool) -> None:
    """Generate a synthetic data set from a trained RUN, with manifest.csv and provenance.json.

    Interrupted? Run the same command again: finished blocks are kept.

    Example: synthmed generate runs/breast --per-class malignant=1000 --format dicom --out syn
    --privacy-filter --train breastmnist.npz
    """
    from synthmed.gan.generate import GenerateConfig, generate
    from synthmed.gan.near_copy import PrivacyFilterConfig
    from synthmed.gan.run import load_run

    if not privacy_filter and (train_data or train_read or threshold is not None):
        raise InputError("--train, --train-read and --threshold need --privacy-filter")
    privacy = PrivacyFilterConfig(train=train_data or "", read=_parse_settings(train_read),
                                  threshold=threshold) if privacy_filter else None
    config = GenerateConfig(n=n, per_class=_parse_counts(per_class), balance=balance, seed=seed,
                            format=format_, bit_depth=None if bit_depth is None else int(bit_depth),
                            privacy_filter=privacy)
    record = generate(load_run(run, kind="dcgan"), out, config, overwrite=overwrite,
                      progress=progress)
    counts = ", ".join(f"{k} {v}" for k, v in record["class_counts"].items())
    click.echo(f"wrote {record['images']} synthetic image(s) as {format_} to {out}"
               + (f" ({counts})" if counts else ""))
    if privacy:
        near = record["privacy_filter"]
        click.echo(f"privacy filter: dropped and redrew {near['dropped']} near-copies, nearer "
                   f"than {near['threshold']:.4g} to one of {near['training_images']} training "
                   f"images (threshold: {near['threshold_rule']}); training data "
                   f"{near['training_data_fingerprint'][:16]}"
                   + ("" if near["matches_run_training_data"] else ", not the run's own"))
    if "differential_privacy" in record:
        dp = record["differential_privacy"]
        click.echo(f"generator trained with DP-SGD: epsilon {dp['epsilon']:.3g}, delta "
                   f"{dp['delta']:.3g} (recorded in provenance.json"
                   + (" and every DICOM header)" if format_ == "dicom" else ")"))


@cli.command("translate")
@click.argument("run", type=click.Path(path_type=Path))
@click.argument("inputs", nargs=-1, required=True)
@click.option("--direction", type=click.Choice(["a2b", "b2a"]), required=True,
              help="a2b: domain A (--domain-a of training) to B; b2a: back.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Output folder (must not exist or be empty, unless --overwrite).")
@click.option("--format", "format_", type=click.Choice(["nifti", "dicom", "png"]),
              default=None, help="Output format (default: the input's own).")
@click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True,
              help="Slices per forward pass.")
@click.option("--keep-source-names", is_flag=True,
              help="Name the outputs after the inputs and list the inputs' paths in "
                   "manifest.csv (they may name patients); default: numbered.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
@click.option("--progress/--no-progress", default=True, help="Show the progress bar.")
def translate_command(run: Path, inputs: tuple[str, ...], direction: str, out: Path,
                      format_: str | None, batch_size: int, keep_source_names: bool,
                      overwrite: bool, progress: bool) -> None:
    """Translate INPUTS (NIfTI volumes, DICOM series folders, pictures) with a CycleGAN RUN.

    A NIfTI volume comes out with the same shape, affine and header, in the target domain's
    intensities; a DICOM series as a new de-identified series; a picture file for file.
    Outputs are numbered in the order of INPUTS (volume_0001.nii.gz, series_0002/ ...).

    Example: synthmed translate runs/t1t2 subj3/t1.nii.gz --direction a2b --out t2-synthetic
    """
    from synthmed.gan.run import load_run
    from synthmed.gan.translate import TranslateConfig, translate_inputs

    _check_out(out, overwrite, run, *inputs)
    config = TranslateConfig(direction=direction, format=format_, batch_size=batch_size,
                             keep_source_names=keep_source_names)
    record = translate_inputs(load_run(run, kind="cyclegan"), inputs, out, config,
                              overwrite=overwrite, progress=progress)
    click.echo(f"translated {len(inputs)} input(s) {direction} into {record['outputs']} "
               f"output file(s) in {out}")


@cli.group()
def evaluate() -> None:
    """Measure what synthetic data is worth: utility, fidelity, privacy, translation
    quality."""


def _names(text: str) -> tuple[str, ...]:
    """``"color, cutout"`` -> ``("color", "cutout")``; empty parts are dropped."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _floats(text: str, name: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of numbers",
                                 param_hint=name) from None


def _shard(text: str) -> tuple[int, int]:
    k, _, n = text.partition("/")
    if not (k.isdigit() and n.isdigit()):
        raise click.BadParameter(f"{text!r} is not K/N", param_hint="--shard")
    return int(k), int(n)


@evaluate.command("utility")
@click.option("--real", "real_path", required=True,
              help="Labelled real data with train/val/test splits (missing ones are cut from "
                   "the training images by patient).")
@read_options
@click.option("--generator", "generator_run", type=click.Path(path_type=Path),
              help="A trained conditional DCGAN run (refused if it saw a val or test image).")
@click.option("--train-generator", type=click.Choice(["dcgan-conditional"]),
              help="Train a conditional DCGAN on exactly each fraction's real subset.")
@click.option("--generator-steps", type=click.IntRange(1), default=2000, show_default=True,
              help="Optimiser steps of each trained generator (the same for every fraction).")
@click.option("--generator-diffaugment", default="", show_default=True,
              help="DiffAugment policy of each trained generator: comma list of "
                   "color,translation,cutout.")
@click.option("--generator-ema", type=cli_types.DECAY, default=0.0,
              show_default=True, help="EMA decay of each trained generator, e.g. 0.999.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Output folder; rerunning the same command skips finished models, "
                   "also with more --seeds or --fractions.")
@click.option("--fractions", default="0.1,0.25,1.0", show_default=True,
              help="Shares of the real training split.")
@click.option("--seeds", type=click.IntRange(1), default=5, show_default=True)
@click.option("--ratios", default="1", show_default=True,
              help="Synthetic images per real image in the mixed regimes.")
@click.option("--balance", is_flag=True, help="Add regimes that fill the minority classes.")
@click.option("--best-of", type=click.IntRange(1), default=1, show_default=True,
              help="Draw K candidates per synthetic image and keep the one a classifier "
                   "trained on the fraction's real images finds most typical of its class.")
@click.option("--classifier", "arch", type=click.Choice(["small-cnn", "resnet18", "densenet121"]),
              default="small-cnn", show_default=True)
@click.option("--steps", type=click.IntRange(1), default=600, show_default=True,
              help="Optimiser steps of every classifier (the same in every regime).")
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True)
@click.option("--metric", type=click.Choice(["auroc", "balanced_accuracy", "macro_f1"]),
              default="auroc", show_default=True, help="The headline metric.")
@click.option("--shard", default="1/1", show_default=True,
              help="Run part K of N of the grid (merge the parts with `evaluate merge`).")
@click.option("--progress/--no-progress", default=True, help="Show the progress bar.")
def evaluate_utility_command(real_path: str, read_config: Any, generator_run: Path | None,
                             train_generator: str | None, generator_steps: int,
                             generator_diffaugment: str, generator_ema: float, out: Path,
                             fractions: str, seeds: int, ratios: str, balance: bool,
                             best_of: int, arch: str, steps: int, batch_size: int, metric: str,
                             shard: str, progress: bool) -> None:
    """Classifier gain from synthetic data: the same classifier and steps under every regime.

    Example: synthmed evaluate utility --real breastmnist.npz --train-generator
    dcgan-conditional --fractions 0.25,1 --seeds 5 --out utility-breast
    """
    from synthmed.augment.readers import read_images
    from synthmed.eval.classifier import ClassifierConfig
    from synthmed.eval.generators import GeneratorRecipe, SubsetGenerators, TrainedRun
    from synthmed.eval.real_data import prepare_real
    from synthmed.eval.utility import UtilityConfig, run_grid
    from synthmed.eval.utility_report import write_report
    from synthmed.gan.run import load_run
    from synthmed.io import check_out, resumable_output_dir

    if (generator_run is None) == (train_generator is None):
        raise click.UsageError("pass exactly one of --generator RUN and --train-generator")
    check_out(out, (real_path, generator_run))
    config = UtilityConfig(fractions=_floats(fractions, "--fractions"), seeds=seeds,
                           ratios=_floats(ratios, "--ratios"), balance=balance,
                           best_of=best_of, metric=metric,
                           classifier=ClassifierConfig(arch=arch, steps=steps,
                                                       batch_size=batch_size))
    part = _shard(shard)
    real = prepare_real(read_images(real_path, read_config))
    generator = (TrainedRun(load_run(generator_run, kind="dcgan"), real) if generator_run
                 else SubsetGenerators(GeneratorRecipe(steps=generator_steps,
                                                       diffaugment=_names(generator_diffaugment),
                                                       ema_decay=generator_ema),
                                       out / "generators"))
    with resumable_output_dir(out, (real_path, generator_run), "utility"):
        results = run_grid(real, generator, config, out, shard=part, progress=progress)
        if part == (1, 1):
            write_report(results, out)
    if part == (1, 1):
        click.echo(f"{len(results['cells'])} models trained and tested; report: "
                   f"{out / 'report.md'}")
    else:
        click.echo(f"shard {shard}: {len(results['cells'])} models in {out / 'results.json'}; "
                   "join the shards with `synthmed evaluate merge`")


@evaluate.command("merge")
@click.argument("parts", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for the merged results.json, report.md and plots.")
def evaluate_merge_command(parts: tuple[Path, ...], out: Path) -> None:
    """Join the shards of one utility grid into one results.json and report.

    PARTS are the --out folders of `evaluate utility ... --shard K/N` for K = 1..N, run with
    the same options; every shard must be there.

    Example: synthmed evaluate merge shard-1 shard-2 shard-3 --out utility
    """
    from synthmed.eval.utility import merge
    from synthmed.eval.utility_report import write_report
    from synthmed.io import resumable_output_dir

    with resumable_output_dir(out, parts, "utility"):
        results = merge(list(parts), out)
        write_report(results, out)
    click.echo(f"merged {len(parts)} shard(s), {len(results['cells'])} models; report: "
               f"{out / 'report.md'}")


@evaluate.command("fidelity")
@click.option("--real", "real_path", required=True, help="Labelled real data (with splits).")
@click.option("--synthetic", required=True,
              help="Synthetic images (a folder, npz, manifest ...) or a trained DCGAN run.")
@read_options
@click.option("--n", "n_samples", type=cli_types.IMAGES,
              help="Images to sample from a run (default: as many as real training images).")
@click.option("--extractor", type=click.Path(dir_okay=False, path_type=Path),
              help="Your own TorchScript feature extractor (default: a classifier trained "
                   "on the real training split, cached).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
def evaluate_fidelity_command(real_path: str, synthetic: str, read_config: Any,
                              n_samples: int | None, extractor: Path | None, out: Path,
                              overwrite: bool) -> None:
    """FID, KID, precision / recall / density / coverage against the real training split,
    with the real-vs-real floor, per class, and a gallery.

    Example: synthmed evaluate fidelity --real breastmnist.npz --synthetic runs/breast --out fid
    """
    from synthmed.augment.readers import read_images
    from synthmed.eval.features import default_extractor
    from synthmed.eval.fidelity import (
        evaluate_fidelity,
        save_gallery,
        torchscript_features,
    )
    from synthmed.eval.generators import sample_run
    from synthmed.eval.real_data import prepare_real
    from synthmed.io import atomic_output_dir

    _check_out(out, overwrite, real_path, synthetic, extractor)
    real = prepare_real(read_images(real_path, read_config))
    if (Path(synthetic) / "config.yaml").is_file():
        fake = sample_run(Path(synthetic), real.train, n_samples or len(real.train))
    else:
        fake = read_images(synthetic, replace(read_config, size=real.train.size[0]))
    if extractor:
        features, name = torchscript_features(extractor), f"TorchScript model {extractor}"
    else:
        default = default_extractor(real)
        features, name = default, default.name
    report = evaluate_fidelity(real.train, fake, features, name)
    with atomic_output_dir(out, overwrite, (real_path, synthetic, extractor), "fidelity") as work:
        (work / "fidelity.json").write_text(json.dumps(report.to_json(), indent=1) + "\n")
        (work / "fidelity.md").write_text(report.to_markdown())
        save_gallery(real.train, fake, work / "gallery.png")
    click.echo(report.to_markdown())
    click.echo(f"report: {out / 'fidelity.md'}")


@evaluate.command("privacy")
@click.option("--synthetic", required=True,
              help="Synthetic images (a folder, npz, manifest ...) or a trained DCGAN run "
                   "(adds the white-box attack).")
@click.option("--train", "train_path", required=True,
              help="The real images the generator was trained on (members).")
@click.option("--holdout", "holdout_path", required=True,
              help="Real images from the same source that it never saw (non-members).")
@read_options
@click.option("--train-split", default="train", show_default=True,
              help="Use only this split of --train when it has one ('all': every image).")
@click.option("--holdout-split", default="test", show_default=True,
              help="Use only this split of --holdout when it has one ('all': every image).")
@click.option("--n", "n_samples", type=cli_types.IMAGES,
              help="Images to sample from a run (default: as many as training images).")
@click.option("--extractor", type=click.Path(dir_okay=False, path_type=Path),
              help="Your own TorchScript feature extractor (default: a classifier trained on "
                   "the training images, cached; none for unlabelled data).")
@click.option("--bootstrap", "n_boot", type=click.IntRange(1), default=1000, show_default=True,
              help="Bootstrap resamples of each interval.")
@click.option("--seed", type=cli_types.SEED, default=0, show_default=True,
              help="Run sampling, subsampling, held-out halves and bootstrap.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
def evaluate_privacy_command(synthetic: str, train_path: str, holdout_path: str,
                             read_config: Any, train_split: str, holdout_split: str,
                             n_samples: int | None, extractor: Path | None, n_boot: int,
                             seed: int, out: Path, overwrite: bool) -> None:
    """Privacy audit: distance of each synthetic image to the closest training vs held-out
    image (pixels and features), near-copies, and membership inference with a control.

    Example: synthmed evaluate privacy --synthetic runs/breast --train breastmnist.npz
    --holdout breastmnist.npz --out privacy-breast
    """
    from synthmed.augment.readers import read_images
    from synthmed.eval.features import default_extractor
    from synthmed.eval.fidelity import torchscript_features
    from synthmed.eval.generators import sample_run
    from synthmed.eval.privacy_audit import (
        PrivacyConfig,
        check_inputs,
        choose_split,
        evaluate_privacy,
        without_training_copies,
    )
    from synthmed.eval.real_data import RealData
    from synthmed.gan.run import load_run
    from synthmed.io import atomic_output_dir

    def read(path: str, split: str, option: str) -> Any:
        return choose_split(read_images(path, read_config), split, option, path)

    _check_out(out, overwrite, synthetic, train_path, holdout_path, extractor)
    train = read(train_path, train_split, "--train-split")
    holdout = read(holdout_path, holdout_split, "--holdout-split")
    run = None
    if (Path(synthetic) / "config.yaml").is_file():
        run = load_run(synthetic, kind="dcgan")
        fake = sample_run(Path(synthetic), train, n_samples or len(train), seed)
    else:
        fake = read_images(synthetic, read_config)
    # before an extractor is trained; evaluate_privacy drops and counts the copies again
    check_inputs(fake, train, without_training_copies(holdout, train)[0], run)
    features, name = None, ""
    if extractor:
        features, name = torchscript_features(extractor), f"TorchScript model {extractor}"
    elif (train.is_labelled and len(train.class_names) >= 2
          and list(holdout.class_names) == list(train.class_names)):
        default = default_extractor(RealData(train, holdout, holdout, []))  # uses train, val
        features = default
        name = f"{default.name}; checkpoint selected on the held-out images"
    report = evaluate_privacy(fake, train, holdout, features=features, extractor=name,
                              features_fit_on_train=not extractor, run=run,
                              config=PrivacyConfig(n_boot=n_boot, seed=seed))
    with atomic_output_dir(out, overwrite, (synthetic, train_path, holdout_path, extractor),
                           "privacy") as work:
        report.save(work)
    click.echo(report.to_markdown())
    click.echo(f"report: {out / 'privacy.md'}")


@evaluate.command("translation")
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--source", required=True,
              help="NIfTI volume(s) to translate: a file or a glob, e.g. 'brain/*/t1.nii.gz'.")
@click.option("--target",
              help="The true target volumes on the same grids, paired by subject folder.")
@click.option("--reference",
              help="Without paired truth: real target-domain images (any reader input) to "
                   "compare the translated distribution with.")
@click.option("--direction", type=click.Choice(["a2b", "b2a"]), default="a2b",
              show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for translation.json, translation.md and panels.")
@click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
def evaluate_translation_command(run: Path, source: str, target: str | None,
                                 reference: str | None, direction: str, out: Path,
                                 batch_size: int, overwrite: bool) -> None:
    """Translation quality of a CycleGAN RUN, with baselines; subjects it trained on are
    refused.

    With --target (paired truth): MAE, PSNR and SSIM against the truth, beside identity,
    histogram matching to the target domain and the same with inverted contrast. With
    --reference (no paired truth): FID, KID, precision / recall / density / coverage of the
    translated images against real target-domain images, beside the untranslated source.

    Example: synthmed evaluate translation runs/t1t2 --source "brain/S3/t1.nii.gz"
    --target "brain/S3/t2.nii.gz" --out eval-t1t2
    """
    from synthmed.eval.translation import evaluate_run
    from synthmed.eval.translation_report import save_report
    from synthmed.eval.translation_unpaired import evaluate_unpaired
    from synthmed.gan.run import load_run
    from synthmed.io import atomic_output_dir

    if (target is None) == (reference is None):
        raise click.UsageError("pass exactly one of --target (paired truth) and --reference")
    inputs = (run, source, target, reference)
    _check_out(out, overwrite, *inputs)
    loaded = load_run(run, kind="cyclegan")
    if target is not None:
        report = evaluate_run(loaded, source, target, direction, batch_size)
        with atomic_output_dir(out, overwrite, inputs, "translation") as work:
            save_report(report, work)
        text = report.to_markdown()
    else:
        reports = evaluate_unpaired(loaded, source, reference, direction, batch_size)
        text = "\n".join(
            f"# Translation without paired truth: {title}\n\n"
            + reports[key].to_markdown().replace("# Fidelity", "## Fidelity", 1)
            for key, title in (("synthmed", "translated source (synthmed)"),
                               ("identity", "untranslated source (identity)")))
        with atomic_output_dir(out, overwrite, inputs, "translation") as work:
            (work / "fidelity.md").write_text(text)
            (work / "unpaired.json").write_text(json.dumps(
                {key: r.to_json() for key, r in reports.items()}, indent=1) + "\n")
    click.echo(text)
    click.echo(f"report in {out}")


@cli.command("demo")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default="demo-out",
              show_default=True, help="Output folder (must not exist or be empty).")
@click.option("--quick", is_flag=True, help="A smaller demo, under 2 minutes.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
@click.option("--progress/--no-progress", default=True, help="Show progress bars.")
def demo_command(out: Path, quick: bool, overwrite: bool, progress: bool) -> None:
    """The whole story on the embedded phantom: train, export, utility, fidelity, translation,
    one HTML report.

    Example: synthmed demo --out demo-out --quick
    """
    from synthmed.eval.demo import DemoConfig, run_demo

    page = run_demo(out, DemoConfig.quick() if quick else DemoConfig(), overwrite=overwrite,
                    progress=progress, echo=click.echo)
    click.echo(f"demo finished; open {page}")


@cli.command("report")
@click.argument("folder", type=click.Path(path_type=Path))
def report_command(folder: Path) -> None:
    """One self-contained HTML page (and Markdown) for a run or evaluation FOLDER, or a
    folder of them.

    Example: synthmed report demo-out && open demo-out/synthmed-report.html
    """
    from synthmed.eval.report import build_report

    page, markdown = build_report(folder)
    click.echo(f"report: {page}\nmarkdown: {markdown}")


def _parse_counts(text: str | None) -> dict[str, int]:
    """``malignant=500,1=200`` -> ``{"malignant": 500, "1": 200}``."""
    counts: dict[str, int] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        name, _, count = part.rpartition("=")
        if not name.strip() or not count.strip().isdigit():
            raise click.BadParameter(f"{part!r} is not CLASS=COUNT", param_hint="--per-class")
        counts[name.strip()] = int(count)
    return counts


def _parse_settings(texts: tuple[str, ...]) -> dict[str, Any]:
    """``("window=brain", "skip_bad=true")`` -> ``{"window": "brain", "skip_bad": True}``:
    values read as YAML scalars."""
    import yaml

    settings: dict[str, Any] = {}
    for text in texts:
        key, has_value, value = text.partition("=")
        if not key.strip() or not has_value:
            raise click.BadParameter(f"{text!r} is not KEY=VALUE", param_hint="--train-read")
        try:
            settings[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise click.BadParameter(f"{value!r} is not a YAML value",
                                     param_hint="--train-read") from None
    return settings


def main() -> None:
    """Console entry point."""
    cli(prog_name="synthmed")


if __name__ == "__main__":
    main()

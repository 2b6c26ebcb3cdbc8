"""``synthmed generate`` (a synthetic data set from a DCGAN or diffusion run) and
``synthmed translate``
(inputs through a CycleGAN run)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from synthmed.augment.distances import NEAR_COPY_PERCENTILE
from synthmed.cli import types
from synthmed.cli.base import (
    Command,
    blend_options,
    check_out_folder,
    class_runs_by_name,
    config_option,
)
from synthmed.errors import InputError
from synthmed.gan.generate import GenerateConfig
from synthmed.gan.near_copy import PrivacyFilterConfig
from synthmed.gan.translate import MapBlend, TranslateConfig
from synthmed.limits import MAX_IMAGES

_HOLDOUT_SHARE = PrivacyFilterConfig.holdout_fraction * 100


@click.command("generate", cls=Command)
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Output folder (must not exist or be empty, unless --overwrite).")
@click.option("--n", type=types.IMAGES,
              help="Number of images (spread evenly over the classes; at most "
                   f"{MAX_IMAGES:,}).")
@click.option("--per-class", help="Images per class, e.g. malignant=500,1=200.")
@click.option("--balance", is_flag=True,
              help="Fill every class up to the largest class of the training data.")
@config_option("--seed", type=types.SEED, config=GenerateConfig, field="seed", override=False,
               help="Same seed, same images (byte for byte for png, npz and nifti).")
@config_option("--format", "format_", type=click.Choice(["png", "npz", "dicom", "nifti"]),
               config=GenerateConfig, field="format", override=False)
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
@click.option("--threshold", type=types.POSITIVE,
              help=f"Near-copy pixel distance (default: the {NEAR_COPY_PERCENTILE:g}th "
                   f"percentile of the distances from {_HOLDOUT_SHARE:g} % of the training "
                   "subjects to the others).")
@click.option("--filter-percentile", type=types.PERCENTILE,
              help=f"The derived threshold's percentile (default {NEAR_COPY_PERCENTILE:g}): a "
                   "higher one also drops images merely close to a training image, trading "
                   "draws for a weaker membership signal (README: the privacy filter).")
@click.option("--max-redraws", type=click.IntRange(1),
              help=f"New draws per dropped image before giving up on a generator that copies "
                   f"(default {PrivacyFilterConfig.max_redraws}); raise it with a high "
                   "--filter-percentile.")
@click.option("--class-run", "class_runs", multiple=True, metavar="CLASS=RUN",
              help="Draw CLASS (name or index) from RUN, with the noise its images would have "
                   "had: a copy fine-tuned on that class alone (train ... --init-from RUN "
                   "--class CLASS); repeatable.")
@click.option("--sampling-steps", type=click.IntRange(1),
              help="A diffusion run's DDIM steps per image (default: the run's own).")
@click.option("--guidance", type=types.NON_NEGATIVE,
              help="A class-conditional diffusion run's guidance scale (default: the run's "
                   "own; 0: unconditional, 1: no guidance; higher: more typical of the class, "
                   "less varied).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
@click.option("--progress/--no-progress", default=True, help="Show the progress bar.")
def generate_command(run: Path, out: Path, n: int | None, per_class: str | None, balance: bool,
                     seed: int, format_: str, bit_depth: str | None, privacy_filter: bool,
                     train_data: str | None, train_read: tuple[str, ...],
                     threshold: float | None, filter_percentile: float | None,
                     max_redraws: int | None, class_runs: tuple[str, ...],
                     sampling_steps: int | None,
                     guidance: float | None, overwrite: bool, progress: bool) -> None:
    """Generate a synthetic data set from a trained RUN, with manifest.csv and provenance.json.

    Interrupted? Run the same command again: finished blocks are kept.

    Example: synthmed generate runs/breast --per-class malignant=1000 --format dicom --out syn
    --privacy-filter --train breastmnist.npz
    """
    from synthmed.gan.generate import generate
    from synthmed.gan.run import load_run
    from synthmed.gan.run_config import GENERATORS

    filter_options = (threshold, filter_percentile, max_redraws)
    if not privacy_filter and (train_data or train_read or filter_options != (None,) * 3):
        raise InputError("--train, --train-read, --threshold, --filter-percentile and "
                         "--max-redraws need --privacy-filter")
    if threshold is not None and filter_percentile is not None:
        raise InputError("--threshold is the near-copy distance itself: give it or "
                         "--filter-percentile, not both")
    privacy = PrivacyFilterConfig(
        train=train_data or "", read=_parse_settings(train_read), threshold=threshold,
        percentile=NEAR_COPY_PERCENTILE if filter_percentile is None else filter_percentile,
        max_redraws=max_redraws or PrivacyFilterConfig.max_redraws) if privacy_filter else None
    config = GenerateConfig(n=n, per_class=_parse_counts(per_class), balance=balance, seed=seed,
                            format=format_, bit_depth=None if bit_depth is None else int(bit_depth),
                            privacy_filter=privacy, sampling_steps=sampling_steps,
                            guidance=guidance,
                            class_runs=class_runs_by_name(class_runs, "--class-run"))
    record = generate(load_run(run, kind=GENERATORS), out, config, overwrite=overwrite,
                      progress=progress)
    counts = ", ".join(f"{k} {v}" for k, v in record["class_counts"].items())
    click.echo(f"wrote {record['images']} synthetic image(s) as {format_} to {out}"
               + (f" ({counts})" if counts else ""))
    if config.class_runs:
        click.echo("drawn by their class runs: " + ", ".join(
            f"{name} ({path})" for name, path in config.class_runs.items()))
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


FUSE_HELP = ("Another run to fuse with RUN (repeatable): each translates a NIfTI volume "
             "along its own slice axis (train them with --axis 0, 1, 2) and the outputs are "
             "averaged (multi-planar fusion).")


@click.command("translate", cls=Command)
@click.argument("run", type=click.Path(path_type=Path))
@click.argument("inputs", nargs=-1, required=True)
@click.option("--direction", type=click.Choice(["a2b", "b2a"]), required=True,
              help="a2b: domain A (--domain-a of training) to B; b2a: back.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Output folder (must not exist or be empty, unless --overwrite).")
@click.option("--format", "format_", type=click.Choice(["nifti", "dicom", "png"]),
              default=None, help="Output format (default: the input's own).")
@config_option("--batch-size", type=click.IntRange(1), config=TranslateConfig,
               field="batch_size", override=False, help="Slices per forward pass.")
@click.option("--keep-source-names", is_flag=True,
              help="Name the outputs after the inputs and list the inputs' paths in "
                   "manifest.csv (they may name patients); default: numbered.")
@click.option("--fuse", multiple=True, type=click.Path(path_type=Path), help=FUSE_HELP)
@blend_options
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
@click.option("--progress/--no-progress", default=True, help="Show the progress bar.")
def translate_command(run: Path, inputs: tuple[str, ...], direction: str, out: Path,
                      format_: str | None, batch_size: int, keep_source_names: bool,
                      fuse: tuple[Path, ...], blend: MapBlend | None, overwrite: bool,
                      progress: bool) -> None:
    """Translate INPUTS (NIfTI volumes, DICOM series folders, pictures) with a CycleGAN RUN.

    A NIfTI volume comes out with the same shape, affine and header, in the target domain's
    intensities; a DICOM series as a new de-identified series; a picture file for file.
    Outputs are numbered in the order of INPUTS (volume_0001.nii.gz, series_0002/ ...).

    Example: synthmed translate runs/t1t2 subj3/t1.nii.gz --direction a2b --out t2-synthetic
    """
    from synthmed.gan.run import load_run
    from synthmed.gan.translate import translate_inputs

    check_out_folder(out, overwrite, run, *fuse, *inputs)
    config = TranslateConfig(direction=direction, format=format_, batch_size=batch_size,
                             keep_source_names=keep_source_names, blend=blend)
    record = translate_inputs(load_run(run, kind="cyclegan"), inputs, out, config,
                              fuse=[load_run(r, kind="cyclegan") for r in fuse],
                              overwrite=overwrite, progress=progress)
    click.echo(f"translated {len(inputs)} input(s) {direction} into {record['outputs']} "
               f"output file(s) in {out}")


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

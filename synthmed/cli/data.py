"""``synthmed data``: inspect a data set, write the embedded phantom."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from synthmed.augment.phantom import PhantomConfig
from synthmed.cli import types
from synthmed.cli.base import Group, config_option, read_options


@click.group(cls=Group)
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
@config_option("--n", type=click.IntRange(1), config=PhantomConfig, field="n", override=False,
               help="Number of slices.")
@config_option("--size", type=click.IntRange(16), config=PhantomConfig, field="size",
               override=False, help="Height and width in pixels.")
@click.option("--format", "format_", type=click.Choice(["png", "npz", "nifti", "dicom"]),
              default="png", show_default=True)
@click.option("--contrast", type=click.Choice(["both", "t1", "t2"]), default="both",
              show_default=True, help="both: OUT/t1 and OUT/t2 of the same anatomy.")
@config_option("--seed", type=types.SEED, config=PhantomConfig, field="seed", override=False)
@config_option("--lesion-fraction", type=types.FRACTION, config=PhantomConfig,
               field="lesion_fraction", override=False,
               help="Share of slices with a lesion (label 1).")
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
    from synthmed.augment.phantom import make_phantom
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

"""``synthmed evaluate translation`` and ``evaluate blend``: how well a CycleGAN translates,
and the blend weight of a global intensity map chosen on validation subjects."""

from __future__ import annotations

import json
from pathlib import Path

import click

from synthmed.cli.base import (
    Command,
    blend_options,
    check_out_folder,
    comma_floats,
    config_option,
)
from synthmed.eval.translation_blend import BLEND_WEIGHTS
from synthmed.gan.translate import MAPS, MapBlend, TranslateConfig

direction_option = config_option("--direction", type=click.Choice(["a2b", "b2a"]),
                                 config=TranslateConfig, field="direction", override=False)
batch_size_option = config_option("--batch-size", type=click.IntRange(1),
                                  config=TranslateConfig, field="batch_size", override=False)
fuse_option = click.option(
    "--fuse", multiple=True, type=click.Path(path_type=Path),
    help="With --target: another run to fuse with RUN (repeatable; see synthmed translate "
         "--help); the fusion is scored.")


@click.command("translation", cls=Command)
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--source", required=True,
              help="NIfTI volume(s) to translate: a file or a glob, e.g. 'brain/*/t1.nii.gz'.")
@click.option("--target",
              help="The true target volumes on the same grids, paired by subject folder.")
@click.option("--reference",
              help="Without paired truth: real target-domain images (any reader input) to "
                   "compare the translated distribution with.")
@direction_option
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for translation.json, translation.md and panels.")
@batch_size_option
@click.option("--domain-steps", type=click.IntRange(1), default=300, show_default=True,
              help="With --reference: training steps of the domain classifier whose features "
                   "the distribution metrics use.")
@fuse_option
@blend_options
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
def evaluate_translation_command(run: Path, source: str, target: str | None,
                                 reference: str | None, direction: str, out: Path,
                                 batch_size: int, domain_steps: int, fuse: tuple[Path, ...],
                                 blend: MapBlend | None, overwrite: bool) -> None:
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
    if (fuse or blend) and target is None:
        raise click.UsageError("--fuse and --blend-map need --target (paired truth)")
    inputs = (run, source, target, reference, *fuse)
    check_out_folder(out, overwrite, *inputs)
    loaded = load_run(run, kind="cyclegan")
    if target is not None:
        report = evaluate_run(loaded, source, target, direction, batch_size,
                              [load_run(r, kind="cyclegan") for r in fuse], blend)
        with atomic_output_dir(out, overwrite, inputs, "translation") as work:
            save_report(report, work)
        text = report.to_markdown()
    else:
        reports = evaluate_unpaired(loaded, source, reference, direction, batch_size,
                                    domain_steps)
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


@click.command("blend", cls=Command)
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--source", required=True,
              help="Validation NIfTI volume(s): a file or a glob, e.g. 'val/*/t1.nii.gz'.")
@click.option("--target", required=True,
              help="Their true target volumes on the same grids, paired by subject folder.")
@click.option("--blend-map", type=click.Choice(MAPS), required=True,
              help="The global intensity map to blend in (inverted: a decreasing map, as "
                   "T1 <-> T2).")
@click.option("--weights", default=",".join(f"{w:g}" for w in BLEND_WEIGHTS),
              show_default=True, help="The map's shares to score, comma-separated, in [0, 1].")
@direction_option
@batch_size_option
@fuse_option
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for blend.json and blend.md.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
def evaluate_blend_command(run: Path, source: str, target: str, blend_map: str, weights: str,
                           direction: str, batch_size: int, fuse: tuple[Path, ...], out: Path,
                           overwrite: bool) -> None:
    """Choose --blend-weight on validation subjects: score a CycleGAN RUN's translation
    blended with a global map at each weight; the best mean PSNR names the weight. Subjects
    the runs trained on are refused; score the chosen weight on other subjects.

    Example: synthmed evaluate blend runs/t1t2 --source "val/*/t1.nii.gz"
    --target "val/*/t2.nii.gz" --blend-map inverted --out blend-t1t2
    """
    from synthmed.eval.translation_blend import sweep_blend
    from synthmed.gan.run import load_run
    from synthmed.io import atomic_output_dir

    values = comma_floats(weights, "--weights")
    inputs = (run, source, target, *fuse)
    check_out_folder(out, overwrite, *inputs)
    sweep = sweep_blend(load_run(run, kind="cyclegan"), source, target, blend_map, values,
                        direction, batch_size, [load_run(r, kind="cyclegan") for r in fuse])
    with atomic_output_dir(out, overwrite, inputs, "blend") as work:
        sweep.save(work)
    click.echo(sweep.to_markdown())
    best = sweep.best_weight
    click.echo(f"translate with --blend-map {blend_map} --blend-weight {best:g}" if best else
               "the translation alone scores best here: translate without --blend-map")
    click.echo(f"report in {out}")

"""``synthmed evaluate``: what synthetic data is worth (utility, fidelity, privacy); how well a
CycleGAN translates is in :mod:`synthmed.cli.evaluate_translation`."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from synthmed.cli import types
from synthmed.cli.base import (
    Group,
    check_out_folder,
    class_runs_by_name,
    comma_floats,
    comma_names,
    config_option,
    read_options,
)
from synthmed.eval.classifier import ClassifierConfig
from synthmed.eval.generators import CLASS_COPIES, GeneratorRecipe
from synthmed.eval.privacy_audit import PrivacyConfig
from synthmed.eval.utility import MAX_DOUBLINGS, UtilityConfig
from synthmed.gan.nets import UPSAMPLES
from synthmed.io import RUN_CONFIG


@click.group(cls=Group)
def evaluate() -> None:
    """Measure what synthetic data is worth: utility, fidelity, privacy, translation
    quality."""


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
              help="A trained conditional DCGAN or diffusion run (refused if it saw a val or "
                   "test image).")
@click.option("--generator-class-run", "class_runs", multiple=True, metavar="CLASS=RUN",
              help="With --generator: draw CLASS from RUN (generate --class-run; repeatable).")
@click.option("--train-generator",
              type=click.Choice(["dcgan-conditional", "diffusion-conditional"]),
              help="Train a conditional DCGAN or diffusion model on exactly each "
                   "fraction's real subset.")
@config_option("--generator-steps", type=click.IntRange(1), config=GeneratorRecipe,
               field="steps", override=False,
               help="Optimiser steps of each trained generator (the same for every fraction).")
@config_option("--generator-diffaugment", config=GeneratorRecipe, field="diffaugment",
               override=False,
               help="DiffAugment policy of each trained generator: comma list of "
                    "color,translation,cutout.")
@config_option("--generator-ada-target", type=types.FiniteFloat(0, 1, max_open=True),
               config=GeneratorRecipe, field="ada_target", override=False,
               help="Adaptive augmentation target of each trained DCGAN (0.6 in Karras et al. "
                    "2020; needs --generator-diffaugment); 0: the ops always apply.")
@config_option("--generator-transition-steps", type=types.STEP_RANGE, config=GeneratorRecipe,
               field="transition_steps", override=False,
               help="Each trained DCGAN learns unconditionally until step START, then ramps its "
                    "class conditioning in until END.")
@config_option("--generator-ema", type=types.DECAY, config=GeneratorRecipe, field="ema_decay",
               override=False, help="EMA decay of each trained generator, e.g. 0.999.")
@config_option("--generator-upsample", type=click.Choice(UPSAMPLES),
               config=GeneratorRecipe, field="upsample", override=False,
               help="Upsampling in each trained DCGAN's generator (resize: nearest x2 and a "
                    "convolution, no checkerboard artefacts).")
@config_option("--generator-init", type=click.Path(file_okay=False),
               config=GeneratorRecipe, field="init_from", override=False,
               help="A run of the same generator model that each trained generator starts "
                    "from (transfer from a larger set).")
@config_option("--generator-filter-percentile", type=types.PERCENTILE, config=GeneratorRecipe,
               field="filter_percentile", override=False,
               help="Pass each trained generator's images through the export's privacy filter "
                    "at this percentile (generate --privacy-filter --filter-percentile, the "
                    "generator's own training images as its data); default: no filter.")
@config_option("--generator-class-steps", type=click.IntRange(0), config=GeneratorRecipe,
               field="class_steps", override=False,
               help="Then fine-tune a copy of each trained generator on one class's images for "
                    "this many steps; the copy draws that class (0: no copies).")
@config_option("--generator-class-copies", type=click.Choice(CLASS_COPIES),
               config=GeneratorRecipe, field="class_copies", override=False,
               help="Which classes get a copy: all, or the one with the fewest images.")
@click.option("--generator-mirror", is_flag=True,
              help="Each trained generator sees its images flipped left-right at random "
                   "(train --mirror).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Output folder; rerunning the same command skips finished models, "
                   "also with more --seeds or --fractions.")
@config_option("--fractions", config=UtilityConfig, field="fractions", override=False,
               help="Shares of the real training split.")
@config_option("--seeds", type=click.IntRange(1), config=UtilityConfig, field="seeds",
               override=False)
@config_option("--ratios", config=UtilityConfig, field="ratios", override=False,
               help="Synthetic images per real image in the mixed regimes (and, other than "
                    "1, in synthetic only).")
@click.option("--balance", is_flag=True, help="Add regimes that fill the minority classes.")
@config_option("--best-of", type=click.IntRange(1), config=UtilityConfig, field="best_of",
               override=False,
               help="Draw K candidates per synthetic image and keep the one a classifier "
                    "trained on the fraction's real images finds most typical of its class.")
@config_option("--classifier", "arch", type=click.Choice(["small-cnn", "resnet18", "densenet121"]),
               config=ClassifierConfig, field="arch", override=False)
@config_option("--steps", type=click.IntRange(2), config=ClassifierConfig, field="steps",
               override=False,
               help="Optimiser steps of every classifier (the same in every regime of a "
                    "fraction), before the pilot.")
@config_option("--generator-pool", type=click.Choice(["subset", "train"]), config=UtilityConfig,
               field="generator_pool", override=False,
               help="subset: each trained generator sees exactly its fraction's labelled "
                    "images; train: one unconditional generator sees the whole training split "
                    "(an unlabelled pool), its images labelled by the real-only classifier, "
                    "beside the pool's real images labelled the same way (self-training).")
@config_option("--pilot-doublings", type=click.IntRange(0, MAX_DOUBLINGS), config=UtilityConfig,
               field="pilot_doublings", override=False,
               help="Per fraction, double --steps at most this often while the `real` regime "
                    "(seed 0) has its best validation pass among its last three; 0: no pilot.")
@config_option("--batch-size", type=click.IntRange(1), config=ClassifierConfig,
               field="batch_size", override=False)
@config_option("--metric", type=click.Choice(["auroc", "balanced_accuracy", "macro_f1"]),
               config=UtilityConfig, field="metric", override=False, help="The headline metric.")
@click.option("--shard", default="1/1", show_default=True,
              help="Run part K of N of the grid (merge the parts with `evaluate merge`).")
@click.option("--progress/--no-progress", default=True, help="Show the progress bar.")
def evaluate_utility_command(real_path: str, read_config: Any, generator_run: Path | None,
                             class_runs: tuple[str, ...],
                             train_generator: str | None, generator_steps: int,
                             generator_diffaugment: str, generator_ada_target: float,
                             generator_transition_steps: tuple[int, int],
                             generator_ema: float, generator_upsample: str,
                             generator_init: str | None,
                             generator_filter_percentile: float | None,
                             generator_class_steps: int, generator_class_copies: str,
                             generator_mirror: bool, out: Path,
                             fractions: str, seeds: int, ratios: str, balance: bool,
                             best_of: int, arch: str, steps: int, generator_pool: str,
                             pilot_doublings: int,
                             batch_size: int, metric: str, shard: str, progress: bool) -> None:
    """Classifier gain from synthetic data: the same classifier and steps under every regime.

    Example: synthmed evaluate utility --real breastmnist.npz --train-generator
    dcgan-conditional --fractions 0.25,1 --seeds 5 --out utility-breast
    """
    from synthmed.augment.readers import read_images
    from synthmed.eval.generators import SubsetGenerators, TrainedRun
    from synthmed.eval.real_data import prepare_real
    from synthmed.eval.utility import run_grid
    from synthmed.eval.utility_report import write_report
    from synthmed.gan.run import load_run
    from synthmed.gan.run_config import GENERATORS
    from synthmed.io import check_out, resumable_output_dir

    if (generator_run is None) == (train_generator is None):
        raise click.UsageError("pass exactly one of --generator RUN and --train-generator")
    if class_runs and generator_run is None:
        raise click.UsageError("--generator-class-run draws classes of --generator RUN")
    copies = class_runs_by_name(class_runs, "--generator-class-run")
    if generator_pool == "train" and generator_run is not None:
        raise click.UsageError("--generator-pool train trains its generator: pass "
                               "--train-generator, not --generator")
    for name, value in (("--generator-init", generator_init),
                        ("--generator-filter-percentile", generator_filter_percentile),
                        ("--generator-class-steps", generator_class_steps or None),
                        ("--generator-mirror", generator_mirror or None)):
        if value is not None and train_generator is None:
            raise click.UsageError(f"{name} is an option of the generators the harness "
                                   "trains: pass --train-generator with it")
    check_out(out, (real_path, generator_run, generator_init, *copies.values()))
    if generator_init is not None:  # a bad source fails now, not at the first generator
        load_run(generator_init, kind=train_generator.split("-")[0])
    config = UtilityConfig(fractions=comma_floats(fractions, "--fractions"), seeds=seeds,
                           ratios=comma_floats(ratios, "--ratios"), balance=balance,
                           best_of=best_of, metric=metric, generator_pool=generator_pool,
                           pilot_doublings=pilot_doublings,
                           classifier=ClassifierConfig(arch=arch, steps=steps,
                                                       batch_size=batch_size))
    part = _shard(shard)
    real = prepare_real(read_images(real_path, read_config))
    generator = (TrainedRun(load_run(generator_run, kind=GENERATORS), real, copies)
                 if generator_run
                 else SubsetGenerators(GeneratorRecipe(
                     steps=generator_steps, diffaugment=comma_names(generator_diffaugment),
                     ada_target=generator_ada_target,
                     transition_steps=generator_transition_steps,
                     ema_decay=generator_ema, upsample=generator_upsample,
                     init_from=generator_init,
                     filter_percentile=generator_filter_percentile,
                     class_steps=generator_class_steps, class_copies=generator_class_copies,
                     mirror=generator_mirror),
                     out / "generators",
                     family=train_generator.split("-")[0],
                     conditional=generator_pool == "subset"))
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
@click.option("--n", "n_samples", type=types.IMAGES,
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

    check_out_folder(out, overwrite, real_path, synthetic, extractor)
    real = prepare_real(read_images(real_path, read_config))
    if (Path(synthetic) / RUN_CONFIG).is_file():
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
              help="Synthetic images (a folder, npz, manifest ...) or a trained DCGAN or "
                   "diffusion run (adds the white-box attack).")
@click.option("--train", "train_path", required=True,
              help="The real images the generator was trained on (members).")
@click.option("--holdout", "holdout_path", required=True,
              help="Real images from the same source that it never saw (non-members).")
@read_options
@click.option("--train-split", default="train", show_default=True,
              help="Use only this split of --train when it has one ('all': every image).")
@click.option("--holdout-split", default="test", show_default=True,
              help="Use only this split of --holdout when it has one ('all': every image).")
@click.option("--n", "n_samples", type=types.IMAGES,
              help="Images to sample from a run (default: as many as training images).")
@click.option("--extractor", type=click.Path(dir_okay=False, path_type=Path),
              help="Your own TorchScript feature extractor (default: a classifier trained on "
                   "the training images, cached; none for unlabelled data).")
@config_option("--bootstrap", "n_boot", type=click.IntRange(1), config=PrivacyConfig,
               field="n_boot", override=False, help="Bootstrap resamples of each interval.")
@config_option("--seed", type=types.SEED, config=PrivacyConfig, field="seed", override=False,
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
        check_inputs,
        choose_split,
        evaluate_privacy,
        without_training_copies,
    )
    from synthmed.eval.real_data import RealData
    from synthmed.gan.run import load_run
    from synthmed.gan.run_config import GENERATORS
    from synthmed.io import atomic_output_dir

    def read(path: str, split: str, option: str) -> Any:
        return choose_split(read_images(path, read_config), split, option, path)

    check_out_folder(out, overwrite, synthetic, train_path, holdout_path, extractor)
    train = read(train_path, train_split, "--train-split")
    holdout = read(holdout_path, holdout_split, "--holdout-split")
    run = None
    if (Path(synthetic) / RUN_CONFIG).is_file():
        run = load_run(synthetic, kind=GENERATORS)
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

"""Generator quality per family and recipe on real sets: do the synthetic images carry what
the real ones teach a classifier?

For each set and real-data fraction (the harness's stratified subset of the training split,
seed 0) and each recipe, one class-conditional generator is trained on exactly that subset
(as ``evaluate utility --train-generator`` trains it; cached under ``OUT/<set>/<recipe>``),
then measured:

- train time (wall, this machine) and the time to sample the subset's size;
- fidelity in the default feature space (:mod:`synthmed.eval.features`): FID, KID,
  precision, recall and coverage of synthetic vs the subset, next to the real-vs-real floor
  (two halves of the subset);
- synthetic only: a classifier trained on as many synthetic images as the subset holds (its
  class mix), selected on the real validation split, scored on the real test split, over
  ``--seeds`` seeds, next to the same classifier trained on the real subset; with
  ``--synthetic-scales 4`` also on 4 x as many (rows ``RECIPE, 4x images``: the same
  classifier steps, more distinct images; a generator's images cost only sampling);
- privacy (:func:`synthmed.eval.privacy_audit.evaluate_privacy`, held-out = validation +
  test): near-copy share, closer-to-train share (0.5 is ideal) and the membership
  advantage over the control of the black-box attacks (pixels, features) and the white-box
  one (the discriminator, or a diffusion model's denoising error).

Fidelity and the black-box numbers are means over the ``--seeds`` samples the synthetic-only
classifiers train on (one sample of a small subset's size is noisy), with the sd of recall
and coverage and the attacks' mean 95 % bootstrap interval; each sample's audit draws its own
split of the held-out images into control and non-members. The white-box attack concerns the
weights and is measured once. Rows measured before Dec 5 2026 show one sample's numbers
(no sd, no interval); rows measured before Dec 6 2026 used one split for every sample.

The row ``unseen real images`` is a perfect generator: samples of the training split's images
outside the subset, measured as a recipe's. Its synthetic-only AUROC is the ceiling of a
generator's images, its attacks the floor of the audit (a set used whole has no such row).
The row ``test images (fidelity)`` is a perfect generator's fidelity: samples of the test
split, images the feature extractor never saw, as it never saw a generator's. The
real-vs-real floor's halves are the extractor's own training images, which it maps close
together, so the floor is optimistic (BreastMNIST 0.25: test images reach FID 9.1, precision
0.72 and coverage 0.91 against the floor's 2.8, 0.97 and 0.97). No AUROC or attacks: these
images are the classifiers' test set and the audit's non-members.

With ``--filter-percentile P`` each recipe is measured again on the images the export's
privacy filter keeps (rows ``RECIPE, filtered at P``): ``synthmed generate --privacy-filter
--filter-percentile P`` with the subset as the training data, in the subset's class mix (a
recipe with class copies: ``--class-run`` for each).

The best recipe of a set is the one with the highest mean *validation* AUROC of its
synthetic-only classifiers; test numbers never choose. ``--headline`` then runs the utility
harness with it (``evaluate utility``, ratio 1 and balance, ``--seeds`` seeds) and prints its
headline: the best synthetic regime against the best regime without synthetic images,
real-repeated included, with the paired 95 % interval. With ``--filter-percentile P`` the
choice is among the filtered rows, and the harness filters its generators' images the same
way (``--generator-filter-percentile P``).

    SYNTHMED_TEST_DATA=../shared/data python benchmarks/generator_quality.py --out bench-quality
    python benchmarks/generator_quality.py --out q --sets breastmnist-0.25 \\
        --recipes dcgan@1000,dcgan@4000          # RECIPE@STEPS: the budget study of a recipe
    python benchmarks/generator_quality.py --out q --sets breastmnist-0.25 \\
        --recipes dcgan-ada-transition@2000 --init-from PRETRAINED_RUN   # transfer
    python benchmarks/generator_quality.py --out q --sets breastmnist-0.25 \\
        --recipes dcgan-ada-transition@4000 --filter-percentile 50   # a stronger filter
    python benchmarks/generator_quality.py --out q --sets breastmnist-0.25 \\
        --recipes dcgan-ada-resize-classes@2000+1000   # class copies, 1,000 steps each
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np
from common import add_data_options, synthmed
from quality_recipes import RECIPES, best_recipe, chosen_recipe, harness_options
from quality_table import HELD_OUT_REAL, REAL_ONLY, REFERENCE_ROWS, UNSEEN_REAL, print_table

from synthmed.augment.dataset import ImageSet
from synthmed.augment.items import ReadConfig
from synthmed.augment.medmnist import write_npz
from synthmed.augment.readers import read_images
from synthmed.eval.classifier import ClassifierConfig, train_classifier
from synthmed.eval.features import default_extractor
from synthmed.eval.fidelity import FidelityReport, evaluate_fidelity
from synthmed.eval.generators import (
    FILTER_REDRAWS,
    GeneratorRecipe,
    SubsetGenerators,
    class_mix_labels,
)
from synthmed.eval.metrics import classification_metrics
from synthmed.eval.privacy_audit import PrivacyConfig, evaluate_privacy
from synthmed.eval.real_data import RealData, fraction_subset, prepare_real
from synthmed.eval.stats import summarize
from synthmed.gan.generate import NPZ_NAME, GenerateConfig, generate
from synthmed.gan.near_copy import PrivacyFilterConfig
from synthmed.gan.run import load_run

#: name -> (path under the data folder, read options, fraction of the training split)
SETS = {
    "breastmnist-0.25": ("medmnist/breastmnist.npz", {}, 0.25),
    "breastmnist-1.0": ("medmnist/breastmnist.npz", {}, 1.0),
    "brain-tumor-0.1": ("brain-tumor-mri", {"size": 32, "channels": 1}, 0.1),
    "retinamnist-1.0": ("medmnist/retinamnist.npz", {}, 1.0),
}
FIDELITY = ("fid", "kid", "precision", "recall", "coverage")
BLACK_BOX = ("pixels", "features")  # the attacks that see the images, not the weights


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_data_options(parser)
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--recipes", default=",".join(RECIPES),
                        help="comma list of RECIPE or RECIPE@STEPS (another budget), "
                             "RECIPE@STEPS+CLASS_STEPS for the class copies' budget")
    parser.add_argument("--seeds", type=int, default=3, help="classifier seeds per cell")
    parser.add_argument("--synthetic-scales", default=[], type=scales,
                        help="comma list of K: also train synthetic only on K x the subset")
    parser.add_argument("--init-from", type=Path,
                        help="a run every generator starts from (transfer; rows 'RECIPE from "
                             "RUN-NAME')")
    parser.add_argument("--filter-percentile", type=float,
                        help="also measure each recipe through the export's privacy filter at "
                             "this percentile (rows 'RECIPE, filtered at P')")
    parser.add_argument("--headline", action="store_true",
                        help="run the utility harness with each set's best recipe")
    args = parser.parse_args(argv)
    for name in args.sets.split(","):
        path, read, fraction = SETS[name]
        if not (args.data / path).exists():
            sys.exit(f"{args.data / path}: not found (set SYNTHMED_TEST_DATA)")
        real = prepare_real(read_images(args.data / path, ReadConfig(**read)))
        subset = fraction_subset(real.train, fraction, seed=0)
        rows_file = args.out / name / "rows.json"
        # rows of recipes measured by an earlier run stay in the table, after the references
        earlier = json.loads(rows_file.read_text()) if rows_file.is_file() else {}
        rows = {REAL_ONLY: real_only(subset, real, args.seeds)}
        if (perfect := unseen_real(subset, real, args.seeds)) is not None:
            rows[UNSEEN_REAL] = perfect
        if (reference := held_out_real(subset, real, args.seeds)) is not None:
            rows[HELD_OUT_REAL] = reference
        rows.update((row, cells) for row, cells in earlier.items() if row not in REFERENCE_ROWS)
        for recipe_name in args.recipes.split(","):
            row_name = recipe_name + (f" from {args.init_from.name}" if args.init_from else "")
            family, recipe = chosen_recipe(row_name, args.init_from)
            run_dir, train_seconds = trained_run(family, recipe, subset,
                                                 args.out / name / row_name)
            rows[row_name] = measure(family, recipe, run_dir, train_seconds, subset, real,
                                     args.seeds)
            if args.filter_percentile is not None:
                copies = class_copies(family, recipe, run_dir, subset)
                sampler = FilteredSampler(run_dir, subset, args.filter_percentile,
                                          {str(k): str(path) for k, path in copies.items()})
                rows[f"{row_name}, filtered at {args.filter_percentile:g}"] = {
                    **measure(family, recipe, run_dir, train_seconds, subset, real,
                              args.seeds, sample=sampler),
                    "filter": {"percentile": args.filter_percentile,
                               "kept_share": sampler.kept / sampler.drawn}}
            for scale in args.synthetic_scales:
                rows[f"{row_name}, {scale}x images"] = synthetic_only_at_scale(
                    recipe_sampler(family, recipe, run_dir, subset), subset, real, args.seeds,
                    scale)
            rows_file.write_text(json.dumps(rows, indent=1))
        print_table(name, len(subset), rows)
        if args.headline:
            headline(name, rows, args, fraction)


def scales(text: str) -> list[int]:
    """``--synthetic-scales``: ``K[,K...]``, each a whole number of at least 2."""
    values = [int(k) for k in text.split(",")]
    if min(values) < 2:
        raise ValueError(text)
    return values


def real_only(subset: ImageSet, real: RealData, seeds: int) -> dict:
    """The classifier trained on the real subset: validation and test AUROC over seeds."""
    return {"auroc": classifier_auroc(subset, real, seeds), "fidelity_floor": None}


def trained_run(family: str, recipe: GeneratorRecipe, subset: ImageSet,
                folder: Path) -> tuple[Path, float]:
    """One recipe's generator on ``subset`` (trained now, or found in ``folder``) and the
    seconds its training took (a rerun keeps the first call's time)."""
    timing = folder / "train_seconds.json"
    started = time.perf_counter()
    run_dir = SubsetGenerators(recipe, folder, family).train(subset)
    if not timing.is_file():
        timing.write_text(json.dumps(time.perf_counter() - started))
    return run_dir, json.loads(timing.read_text())


def measure(family: str, recipe: GeneratorRecipe, run_dir: Path, train_seconds: float,
            subset: ImageSet, real: RealData, seeds: int,
            sample: Callable[..., ImageSet] | None = None) -> dict:
    """A recipe's trained generator (``run_dir``) on ``subset``: its times, fidelity,
    synthetic-only AUROC and privacy numbers. ``sample(n=, seed=)``: its images (default:
    :func:`recipe_sampler`, the subset's class mix).

    The classifiers of seed ``s`` train on sample ``s``; fidelity and the black-box attacks
    are measured on each of those samples too and reported as their mean (and sd; for the
    attacks, the mean of the samples' bootstrap intervals): one sample of a small subset's
    size is noisy (coverage's sd over samples of 137 images is 0.04-0.10). The floor is
    averaged over as many splits of the subset into halves. The white-box attack depends
    on the weights, not the sample: measured once; for a generator with class copies also for
    each copy (``discriminator (CLASS copy)``).
    """
    sample = sample or recipe_sampler(family, recipe, run_dir, subset)
    started = time.perf_counter()
    samples = [sample(n=len(subset), seed=0)]
    sample_seconds = time.perf_counter() - started
    samples += [sample(n=len(subset), seed=s) for s in range(1, seeds)]

    extractor = default_extractor(real)
    holdout = ImageSet.concatenate([real.val, real.test])
    fidelity = [evaluate_fidelity(subset, synthetic, extractor, extractor.name, seed=seed)
                for seed, synthetic in enumerate(samples)]
    privacy = audits(samples, subset, holdout, extractor, run_dir)
    privacy[0]["membership"].update(class_copy_attacks(family, recipe, run_dir, samples[0],
                                                       subset, holdout, extractor))
    return {
        "recipe": {"family": family, **asdict(recipe)},
        "train_seconds": train_seconds,
        "sample_seconds": sample_seconds,
        "samples": len(samples),
        **fidelity_columns(fidelity),
        "auroc": classifier_auroc(samples, real, seeds),
        **privacy_columns(privacy),
    }


def fidelity_columns(fidelity: list[FidelityReport]) -> dict:
    """A row's fidelity over its samples: the means, their sd, and the floor's means."""
    return {"fidelity": {k: float(np.mean([f.overall[k] for f in fidelity])) for k in FIDELITY},
            "fidelity_sd": {k: summarize([f.overall[k] for f in fidelity])["sd"]
                            for k in FIDELITY},
            "fidelity_floor": {k: float(np.mean([f.floor[k] for f in fidelity]))
                               for k in FIDELITY}}


def audits(samples: list[ImageSet], subset: ImageSet, holdout: ImageSet, extractor: Callable,
           run_dir: Path | None = None) -> list[dict]:
    """The privacy audit of each sample (the subset its members, ``holdout`` the unseen
    images), sample ``s`` with seed ``s``: each draws its own members and split of the control
    (one fixed split's chance offset would enter every sample alike: +0.04 in the pixel attack
    on BreastMNIST 0.25, ``benchmarks/RESULTS.md``). Sample 0's audit also runs the white-box
    attack of the run ``run_dir``."""
    return [evaluate_privacy(synthetic, subset, holdout, features=extractor,
                             extractor=extractor.name, features_fit_on_train=True,
                             run=load_run(run_dir) if seed == 0 and run_dir else None,
                             config=PrivacyConfig(seed=seed)).to_json()
            for seed, synthetic in enumerate(samples)]


def privacy_columns(privacy: list[dict]) -> dict:
    """A row's privacy numbers from its samples' audits: the mean near-copy and closer-to-train
    shares, the black-box attacks over the samples, the white-box ones of sample 0."""
    return {
        "near_copy_share": float(np.mean([p["dcr"]["pixels"]["near_copy_share"]
                                          for p in privacy])),
        "closer_to_train_share": float(np.mean([p["dcr"]["pixels"]["closer_to_train_share"]
                                                for p in privacy])),
        "membership": {name: over_samples([p["membership"][name] for p in privacy])
                       if name in BLACK_BOX else
                       {k: attack[k] for k in ("auc", "advantage", "advantage_ci")}
                       for name, attack in privacy[0]["membership"].items()},
    }


def unseen_real(subset: ImageSet, real: RealData, seeds: int) -> dict | None:
    """The row of a perfect generator: ``seeds`` samples of the subset's size and class mix
    drawn from the training split's images outside the subset (real images no generator of
    the subset saw), each measured as a recipe's. Its synthetic-only AUROC is what a
    generator's images could reach; its attacks are the audit's floor (the features attack
    sits above 0: the extractor trained on the whole split). No fidelity: the extractor
    trained on these images (:func:`held_out_real` is the fidelity a perfect generator
    reaches). ``None`` when too few images lie outside the subset."""
    members = set(subset.image_hashes())
    outside = real.train.subset(np.array([i for i, image in enumerate(real.train.image_hashes())
                                          if image not in members], dtype=np.int64))
    if (samples := class_mix_draws(outside, subset, seeds)) is None:
        return None
    holdout = ImageSet.concatenate([real.val, real.test])
    return {"auroc": classifier_auroc(samples, real, seeds), "fidelity_floor": None,
            **privacy_columns(audits(samples, subset, holdout, default_extractor(real)))}


def held_out_real(subset: ImageSet, real: RealData, seeds: int) -> dict | None:
    """The fidelity a perfect generator reaches: ``seeds`` samples of the subset's size and
    class mix drawn from the test split: real images new to the feature extractor, as a
    generator's images are (the floor's halves are its training images).
    Fidelity only: these images are the classifiers' test set and the audit's non-members.
    ``None`` when the test split has too few images of a class."""
    if (samples := class_mix_draws(real.test, subset, seeds)) is None:
        return None
    extractor = default_extractor(real)
    return fidelity_columns([evaluate_fidelity(subset, drawn, extractor, extractor.name,
                                               seed=seed) for seed, drawn in enumerate(samples)])


def class_mix_draws(pool: ImageSet, subset: ImageSet, seeds: int) -> list[ImageSet] | None:
    """``seeds`` samples of ``pool`` with the subset's class counts (sample ``s`` drawn
    without replacement with seed ``s``); ``None`` when ``pool`` has too few of a class."""
    counts, available = subset.class_counts(), pool.class_counts()
    if any(available.get(label, 0) < count for label, count in counts.items()):
        return None
    samples = []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        chosen = [rng.choice(np.flatnonzero(pool.labels == label), count, replace=False)
                  for label, count in sorted(counts.items())]
        samples.append(pool.subset(np.sort(np.concatenate(chosen))))
    return samples


def recipe_sampler(family: str, recipe: GeneratorRecipe, run_dir: Path, subset: ImageSet
                   ) -> Callable[..., ImageSet]:
    """``(n=, seed=)`` -> ``n`` images of the recipe's trained generator ``run_dir`` (and its
    class copies) in the subset's class mix, as the harness draws them."""
    return partial(SubsetGenerators(recipe, run_dir.parent, family).sample_like, subset)


def class_copies(family: str, recipe: GeneratorRecipe, run_dir: Path, subset: ImageSet
                 ) -> dict[int, Path]:
    """The class copies of the recipe's trained generator ``run_dir``: label -> run
    directory (none for a recipe without them)."""
    return SubsetGenerators(recipe, run_dir.parent, family).class_runs(subset, run_dir)


def class_copy_attacks(family: str, recipe: GeneratorRecipe, run_dir: Path,
                       synthetic: ImageSet, subset: ImageSet, holdout: ImageSet,
                       extractor: Callable) -> dict:
    """The white-box attack with each class copy's weights, as the audit reports it (none
    without copies)."""
    attacks = {}
    for label, copy_dir in class_copies(family, recipe, run_dir, subset).items():
        audit = evaluate_privacy(synthetic, subset, holdout, features=extractor,
                                 extractor=extractor.name, features_fit_on_train=True,
                                 run=load_run(copy_dir)).to_json()["membership"]
        attacks.update({f"{name} ({subset.class_names[label]} copy)": attack
                        for name, attack in audit.items() if name not in BLACK_BOX})
    return attacks


def over_samples(attacks: list[dict]) -> dict:
    """One black-box attack on several samples of a generator: the mean AUC and advantage,
    the advantage's sd over the samples and the mean of their bootstrap intervals (every
    sample faces the same members and non-members, so averaging over samples does not
    narrow the uncertainty that the choice of those images leaves)."""
    lows, highs = zip(*(a["advantage_ci"] for a in attacks), strict=True)
    return {"auc": float(np.mean([a["auc"] for a in attacks])),
            "advantage": float(np.mean([a["advantage"] for a in attacks])),
            "advantage_sd": summarize([a["advantage"] for a in attacks])["sd"],
            "advantage_ci": [float(np.mean(lows)), float(np.mean(highs))],
            "samples": len(attacks)}


@dataclass
class FilteredSampler:
    """``(n=, seed=)`` -> the ``n`` images ``synthmed generate --privacy-filter
    --filter-percentile P [--class-run CLASS=COPY ...]`` keeps from the run, the subset being
    its training data, in the subset's class mix; counts the images kept and drawn."""

    run_dir: Path
    subset: ImageSet
    percentile: float
    class_runs: dict[str, str] = field(default_factory=dict)
    kept: int = 0
    drawn: int = 0

    def __call__(self, n: int, seed: int) -> ImageSet:
        labels = class_mix_labels(self.subset, n, seed)
        per_class = {name: int((labels == k).sum())
                     for k, name in enumerate(self.subset.class_names)}
        with tempfile.TemporaryDirectory() as folder:
            train, out = Path(folder) / "subset.npz", Path(folder) / "synthetic"
            write_npz(self.subset, train)
            privacy = PrivacyFilterConfig(train=str(train), percentile=self.percentile,
                                          max_redraws=FILTER_REDRAWS)
            record = generate(load_run(self.run_dir), out,
                              GenerateConfig(per_class=per_class, seed=seed, format="npz",
                                             privacy_filter=privacy,
                                             class_runs=self.class_runs), progress=False)
            kept = read_images(out / NPZ_NAME, ReadConfig())
        self.kept += n
        self.drawn += n + record["privacy_filter"]["dropped"]
        return ImageSet.from_arrays(kept.images, labels=kept.labels,
                                    class_names=kept.class_names, synthetic=True)


def synthetic_only_at_scale(sample: Callable[..., ImageSet], subset: ImageSet, real: RealData,
                            seeds: int, scale: int) -> dict:
    """The synthetic-only classifier of a trained generator on ``scale`` x the subset's size
    of its images (``sample(n=, seed=)``, one sample per seed); its fidelity and privacy are
    the recipe's row."""
    samples = [sample(n=scale * len(subset), seed=s) for s in range(seeds)]
    return {"auroc": classifier_auroc(samples, real, seeds), "fidelity_floor": None,
            "synthetic_scale": scale}


def classifier_auroc(train: ImageSet | list[ImageSet], real: RealData, seeds: int) -> dict:
    """Validation and test AUROC (mean and 95 % interval over seeds) of the harness's
    classifier trained on ``train`` (one set, or one per seed)."""
    sets = train if isinstance(train, list) else [train] * seeds
    config, classes = ClassifierConfig(), len(real.train.class_names)
    scores: dict[str, list[float]] = {"val": [], "test": []}
    for seed, images in enumerate(sets):
        model = train_classifier(images.images, images.labels, real.val.images, real.val.labels,
                                 classes, config, seed=seed)
        for split, part in (("val", real.val), ("test", real.test)):
            metrics = classification_metrics(part.labels, model.predict_proba(part.images))
            scores[split].append(metrics["auroc"])
    return {split: summarize(values) for split, values in scores.items()}


def headline(name: str, rows: dict, args: argparse.Namespace, fraction: float) -> None:
    """The utility harness with the recipe of the best mean validation AUROC (through the
    privacy filter with ``--filter-percentile``)."""
    best = best_recipe(rows, args.filter_percentile)
    family, recipe = chosen_recipe(best.partition(", filtered at ")[0], args.init_from)
    recipe = replace(recipe, filter_percentile=args.filter_percentile)
    path, read, _ = SETS[name]
    read_args = [f"--{k}={v}" for k, v in read.items()]
    out = args.out / name / f"harness-{best}"
    seconds = synthmed("evaluate", "utility", "--real", str(args.data / path), *read_args,
                       "--train-generator", f"{family}-conditional",
                       *harness_options(family, recipe),
                       "--fractions", str(fraction), "--seeds", str(args.seeds), "--ratios",
                       "1", "--balance", "--out", str(out), "--no-progress")
    (head,) = (part["headline"] for part in json.loads((out / "summary.json").read_text()).values())
    print(f"\n{name}: harness with {best} ({seconds / 60:.0f} min): {head['best_synthetic']} vs "
          f"{head['best_without']}: {head['metric']} gain {head['gain_mean']:+.3f} "
          f"[{head['gain_ci_low']:+.3f}, {head['gain_ci_high']:+.3f}]"
          + ("" if head.get("converged", 1) == 1 else
             f" (unconverged in {1 - head['converged']:.0%} of the seeds)"))


if __name__ == "__main__":
    main()

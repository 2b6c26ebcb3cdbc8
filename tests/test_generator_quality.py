"""``benchmarks/generator_quality.py``: its recipes, rows, reference rows and headline."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import benchmark_module


def test_the_harness_headline_trains_every_remedy_of_the_recipe_validation_picked():
    module = benchmark_module("generator_quality")
    family, recipe = module.chosen_recipe("dcgan-ema@4000")
    assert module.harness_options(family, recipe) == [
        "--generator-steps", "4000", "--generator-ema", "0.999"]
    assert module.harness_options(*module.chosen_recipe("dcgan-ada-transition")) == [
        "--generator-steps", "2000", "--generator-diffaugment", "color,translation,cutout",
        "--generator-ada-target", "0.6", "--generator-transition-steps", "500,1000",
        "--generator-ema", "0.999"]
    assert module.harness_options(*module.chosen_recipe("dcgan-ada-resize@4000")) == [
        "--generator-steps", "4000", "--generator-diffaugment", "color,translation,cutout",
        "--generator-ada-target", "0.6", "--generator-transition-steps", "500,1000",
        "--generator-ema", "0.999", "--generator-upsample", "resize"]
    assert module.harness_options(*module.chosen_recipe("dcgan-resize@4000")) == [
        "--generator-steps", "4000", "--generator-upsample", "resize"]
    assert module.harness_options(*module.chosen_recipe("diffusion@8000")) == [
        "--generator-steps", "8000"]
    assert module.chosen_recipe("dcgan-ada-resize-classes@3000+1000")[1].class_steps == 1000
    with pytest.raises(SystemExit, match="dcgan-ada-resize has no class copies"):
        module.chosen_recipe("dcgan-ada-resize@3000+1000")
    assert module.harness_options(*module.chosen_recipe("dcgan-ada-resize-smallest")) == [
        "--generator-steps", "2000", "--generator-class-steps", "500",
        "--generator-class-copies", "smallest", "--generator-diffaugment",
        "color,translation,cutout", "--generator-ada-target", "0.6",
        "--generator-transition-steps", "500,1000", "--generator-ema", "0.999",
        "--generator-upsample", "resize"]
    mirrored = module.harness_options(*module.chosen_recipe(
        "dcgan-ada-resize-classes-mirror@2000+1000"))
    assert mirrored[:6] == ["--generator-steps", "2000", "--generator-class-steps", "1000",
                            "--generator-class-copies", "all"]
    assert mirrored[6] == "--generator-mirror" and "--generator-mirror" not in \
        module.harness_options(*module.chosen_recipe("dcgan-ada-resize-classes@2000+1000"))
    low_target = module.harness_options(*module.chosen_recipe(
        "dcgan-ada0.3-resize-classes-mirror@2000+1000"))
    assert low_target == [*mirrored[:10], "0.3", *mirrored[11:]]  # only ADA's target differs
    assert mirrored[9:11] == ["--generator-ada-target", "0.6"]
    family, recipe = module.chosen_recipe("dcgan@3000 from brain28", Path("runs/brain28"))
    assert (recipe.steps, recipe.init_from) == (3000, str(Path("runs/brain28")))
    assert module.harness_options(family, recipe) == [
        "--generator-steps", "3000", "--generator-init", str(Path("runs/brain28"))]
    assert module.chosen_recipe("dcgan", Path("runs/brain28"))[1].init_from is None
    with pytest.raises(SystemExit, match="no option for the recipe's width"):
        module.harness_options("dcgan", module.GeneratorRecipe(width=64))
    val = {"auroc": {"val": {"mean": 0.8}}}
    rows = {"real only": {"auroc": {"val": {"mean": 0.9}}}, "dcgan": val,
            "dcgan, 4x images": {**val, "auroc": {"val": {"mean": 0.85}}, "synthetic_scale": 4}}
    assert module.best_recipe(rows) == "dcgan"  # the harness trains on 1x: so does its choice
    assert module.scales("4,10") == [4, 10]
    with pytest.raises(ValueError):
        module.scales("1")  # that is the recipe's own row


def test_the_filtered_rows_sample_what_the_export_keeps(tmp_path, monkeypatch):
    from synthmed.augment.distances import flatten_pixels, nearest_distances
    from synthmed.augment.phantom import PhantomConfig, make_phantom
    from synthmed.eval.generators import GeneratorRecipe, SubsetGenerators
    from synthmed.gan.near_copy import subset_filter
    from synthmed.gan.run import load_run
    from tests.gan.test_privacy_filter import plant_copies

    module = benchmark_module("generator_quality")
    subset = make_phantom(PhantomConfig(n=24, size=28))[0]
    run_dir = SubsetGenerators(GeneratorRecipe(steps=2, width=8, batch_size=8,
                                               precision="fp32"), tmp_path).train(subset)
    run = load_run(run_dir)
    planted = plant_copies(monkeypatch, run, subset.images)  # a generator that copies
    monkeypatch.setattr(module, "load_run", lambda path: run)
    sampler = module.FilteredSampler(run_dir, subset, 50.0)
    images = sampler(n=12, seed=3)
    assert images.images.shape == (12, 1, 28, 28) and images.class_names == subset.class_names
    assert sorted(images.labels) == sorted(module.class_mix_labels(subset, 12, 3))
    pixels = flatten_pixels(subset.images)
    threshold = subset_filter(subset, 50.0, max_redraws=1).threshold  # the export's rule
    # every kept image at least the threshold away (less the 8-bit export's rounding)
    assert nearest_distances(flatten_pixels(images.images), pixels)[0].min() > threshold - 0.15
    assert sampler.kept == 12 and sampler.drawn == 12 + sum(planted) > 12
    assert np.array_equal(sampler(n=12, seed=3).images, images.images)
    row = {"auroc": {"val": {"mean": 0.7}}, "filter": {"percentile": 50.0, "kept_share": 0.4}}
    rows = {"real only": {}, "dcgan": {"auroc": {"val": {"mean": 0.8}}},
            "dcgan@4000, filtered at 50": row,
            "dcgan@4000, filtered at 75": {**row, "auroc": {"val": {"mean": 0.9}},
                                           "filter": {"percentile": 75.0}}}
    assert module.best_recipe(rows) == "dcgan"  # unfiltered rows for the unfiltered harness
    assert module.best_recipe(rows, 50.0) == "dcgan@4000, filtered at 50"
    ran = []
    monkeypatch.setattr(module, "synthmed", lambda *args: ran.append(args) or 0.0)
    harness = tmp_path / "breastmnist-0.25" / "harness-dcgan@4000, filtered at 50"
    harness.mkdir(parents=True)
    (harness / "summary.json").write_text(json.dumps({"0.25": {"headline": {
        "best_synthetic": "s", "best_without": "w", "metric": "auroc", "gain_mean": 0.0,
        "gain_ci_low": 0.0, "gain_ci_high": 0.0}}}))
    args = argparse.Namespace(filter_percentile=50.0, init_from=None, data=tmp_path, seeds=2,
                              out=tmp_path)
    module.headline("breastmnist-0.25", rows, args, 0.25)
    (command,) = ran  # the harness trains the chosen recipe and filters at the same percentile
    assert command[command.index("--generator-steps") + 1] == "4000"
    assert command[command.index("--generator-filter-percentile") + 1] == "50"


def test_the_filtered_rows_of_a_recipe_with_class_copies_draw_through_the_copies(tmp_path):
    from synthmed.augment.phantom import PhantomConfig, make_phantom
    from synthmed.eval.generators import GeneratorRecipe, SubsetGenerators

    module = benchmark_module("generator_quality")
    subset = make_phantom(PhantomConfig(n=24, size=28, lesion_fraction=0.5))[0]
    recipe = GeneratorRecipe(steps=2, width=8, batch_size=8, precision="fp32", class_steps=2,
                             class_copies="smallest")
    generators = SubsetGenerators(recipe, tmp_path)
    run_dir = generators.train(subset)
    (label, copy), = generators.class_runs(subset, run_dir).items()
    plain = module.FilteredSampler(run_dir, subset, 0.0)(n=12, seed=3)
    copied = module.FilteredSampler(run_dir, subset, 0.0, {str(label): str(copy)})(n=12, seed=3)
    assert np.array_equal(copied.labels, plain.labels)
    own = copied.labels == label
    assert own.any() and (~own).any()
    assert np.array_equal(copied.images[~own], plain.images[~own])
    assert not np.array_equal(copied.images[own], plain.images[own])  # the copy drew them


def stub_features_and_classifiers(module, monkeypatch) -> tuple[Callable, list, dict]:
    """The benchmark's feature extractor replaced by 16 of the pixels, its classifiers by a
    record of the image sets they would train on: (extractor, those sets, their AUROC)."""
    def extractor(batch: np.ndarray) -> np.ndarray:
        return batch.reshape(len(batch), -1)[:, ::49]
    extractor.name = "every 49th pixel"
    monkeypatch.setattr(module, "default_extractor", lambda real: extractor)
    trained_on = []
    auroc = {"mean": 0.7, "ci_low": 0.6, "ci_high": 0.8}
    monkeypatch.setattr(module, "classifier_auroc", lambda sets, real, seeds: trained_on.extend(
        sets) or {"val": auroc, "test": auroc})
    return extractor, trained_on, auroc


def test_a_row_averages_fidelity_and_the_image_attacks_over_the_classifiers_samples(
        tmp_path, monkeypatch, capsys):
    from synthmed.augment.dataset import ImageSet
    from synthmed.augment.phantom import PhantomConfig, make_phantom
    from synthmed.eval.fidelity import evaluate_fidelity
    from synthmed.eval.generators import GeneratorRecipe, SubsetGenerators
    from synthmed.eval.privacy_audit import PrivacyConfig, evaluate_privacy
    from synthmed.eval.real_data import RealData

    module = benchmark_module("generator_quality")
    images = make_phantom(PhantomConfig(n=96, size=28))[0]
    subset, val, test, pool = (images.subset(np.arange(k, k + 24)) for k in (0, 24, 48, 72))
    real = RealData(subset, val, test, notes=[])
    recipe = GeneratorRecipe(steps=2, width=8, batch_size=8, precision="fp32")
    run_dir = SubsetGenerators(recipe, tmp_path).train(subset)  # for the white-box attack

    def sample(n: int, seed: int) -> ImageSet:  # unseen phantoms, noisier with the seed
        rng = np.random.default_rng(seed)
        chosen = rng.choice(len(pool), n)
        noisy = pool.images[chosen] + 0.05 * seed * rng.standard_normal(pool.images[:n].shape)
        return ImageSet.from_arrays(noisy.astype(np.float32), labels=pool.labels[chosen],
                                    class_names=pool.class_names, synthetic=True)

    extractor, trained_on, auroc = stub_features_and_classifiers(module, monkeypatch)
    row = module.measure("dcgan", recipe, run_dir, 60.0, subset, real, seeds=3, sample=sample)

    samples = [sample(24, seed) for seed in range(3)]
    assert all(np.array_equal(a.images, b.images) for a, b in zip(trained_on, samples, strict=True))
    coverage = [evaluate_fidelity(subset, sample, extractor, extractor.name, seed=seed)
                .overall["coverage"] for seed, sample in enumerate(samples)]
    assert row["samples"] == 3 and len(set(coverage)) > 1  # the samples differ
    assert row["fidelity"]["coverage"] == pytest.approx(np.mean(coverage))
    assert row["fidelity_sd"]["coverage"] == pytest.approx(np.std(coverage, ddof=1))
    holdout = ImageSet.concatenate([val, test])
    pixels = [evaluate_privacy(sample, subset, holdout, config=PrivacyConfig(seed=seed))
              .to_json()["membership"]["pixels"] for seed, sample in enumerate(samples)]
    attack = row["membership"]["pixels"]
    assert attack["advantage"] == pytest.approx(np.mean([a["advantage"] for a in pixels]))
    assert attack["advantage_ci"] == pytest.approx(np.mean([a["advantage_ci"] for a in pixels],
                                                           axis=0))
    assert attack["samples"] == 3 and len({a["advantage"] for a in pixels}) > 1
    assert "samples" not in row["membership"]["discriminator"]  # the weights': measured once

    one_sample = {**row, "fidelity_sd": {}, "membership": {"pixels": {"advantage": 0.1}}}
    module.print_table("phantom", 24, {"real only": {"auroc": {"val": auroc, "test": auroc},
                                                     "fidelity_floor": None},
                                       "averaged": row, "one sample": one_sample})
    lines = {line.split(" | ")[0]: line for line in capsys.readouterr().out.splitlines()}
    cov, sd = row["fidelity"]["coverage"], row["fidelity_sd"]["coverage"]
    assert f"{cov:.2f} ± {sd:.2f} (" in lines["| averaged"]
    low, high = attack["advantage_ci"]
    assert f"pixels {attack['advantage']:+.3f} [{low:+.3f}, {high:+.3f}]" in lines["| averaged"]
    assert "±" not in lines["| one sample"] and "pixels +0.100 |" in lines["| one sample"]


def phantom_splits(test_size: int):
    """Phantom splits of 64 training, 16 validation and ``test_size`` test images, and the
    subset of every third training image: ``(subset, RealData)``."""
    from synthmed.augment.phantom import PhantomConfig, make_phantom
    from synthmed.eval.real_data import RealData

    images = make_phantom(PhantomConfig(n=80 + test_size, size=28, lesion_fraction=0.5))[0]
    train, val, test = (images.subset(np.arange(k, k + n))
                        for k, n in ((0, 64), (64, 16), (80, test_size)))
    return train.subset(np.arange(0, 64, 3)), RealData(train, val, test, notes=[])


def test_the_unseen_real_row_draws_training_images_outside_the_subset_as_a_perfect_generator(
        monkeypatch, capsys):
    from synthmed.augment.dataset import ImageSet
    from synthmed.eval.privacy_audit import PrivacyConfig, evaluate_privacy

    module = benchmark_module("generator_quality")
    subset, real = phantom_splits(test_size=16)
    train, val, test = real.train, real.val, real.test

    _, trained_on, auroc = stub_features_and_classifiers(module, monkeypatch)
    row = module.unseen_real(subset, real, seeds=3)

    members = set(subset.image_hashes())
    assert len(trained_on) == 3 and all(drawn.class_counts() == subset.class_counts() and
                                        not members & set(drawn.image_hashes())
                                        for drawn in trained_on)
    assert set(train.image_hashes()) >= set(trained_on[2].image_hashes())
    assert trained_on[0].fingerprint() != trained_on[1].fingerprint()  # a sample per seed
    holdout = ImageSet.concatenate([val, test])
    pixels = [evaluate_privacy(drawn, subset, holdout, config=PrivacyConfig(seed=seed))
              .to_json()["membership"]["pixels"]["advantage"]
              for seed, drawn in enumerate(trained_on)]
    assert row["membership"]["pixels"]["advantage"] == pytest.approx(np.mean(pixels))
    assert row["fidelity_floor"] is None and set(row["membership"]) == {"pixels", "features"}
    rows = {"real only": {"auroc": {"val": auroc, "test": auroc}, "fidelity_floor": None},
            "unseen real images": {**row, "auroc": {"val": {**auroc, "mean": 0.99},
                                                     "test": auroc}},
            "dcgan": {"auroc": {"val": auroc, "test": auroc}}}
    assert module.best_recipe(rows) == "dcgan"  # a reference, never the chosen recipe
    module.print_table("phantom", len(subset), {k: rows[k] for k in list(rows)[:2]})
    assert "| unseen real images | - | - |" in capsys.readouterr().out
    assert module.unseen_real(train, real, seeds=1) is None  # the whole split: none outside


def test_a_recipe_with_class_copies_is_sampled_and_attacked_through_each_copy(tmp_path):
    from synthmed.augment.phantom import PhantomConfig, make_phantom
    from synthmed.eval.generators import GeneratorRecipe, SubsetGenerators

    module = benchmark_module("generator_quality")
    images = make_phantom(PhantomConfig(n=72, size=28))[0]
    subset, holdout = images.subset(np.arange(48)), images.subset(np.arange(48, 72))
    recipe = GeneratorRecipe(steps=2, width=8, batch_size=8, precision="fp32", class_steps=2)
    generators = SubsetGenerators(recipe, tmp_path)
    run_dir = generators.train(subset)
    drawn = module.recipe_sampler("dcgan", recipe, run_dir, subset)(n=6, seed=2)
    assert np.array_equal(drawn.images, generators.sample_like(subset, 6, 2).images)
    assert drawn.class_names == subset.class_names and len(drawn) == 6

    def extractor(batch: np.ndarray) -> np.ndarray:
        return batch.reshape(len(batch), -1)[:, ::49]
    extractor.name = "every 49th pixel"
    attacks = module.class_copy_attacks("dcgan", recipe, run_dir, drawn, subset, holdout,
                                        extractor)
    assert sorted(attacks) == [f"discriminator ({name} copy)" for name in
                               sorted(subset.class_names)]
    assert all(-1 <= a["advantage"] <= 1 and len(a["advantage_ci"]) == 2
               for a in attacks.values())
    plain = replace(recipe, class_steps=0)
    assert module.class_copy_attacks("dcgan", plain, run_dir, drawn, subset, holdout,
                                     extractor) == {}


def test_the_test_images_row_is_the_fidelity_of_real_images_the_extractor_never_saw(
        monkeypatch, capsys):
    from synthmed.eval.fidelity import evaluate_fidelity

    module = benchmark_module("generator_quality")
    subset, real = phantom_splits(test_size=48)
    train, test = real.train, real.test

    extractor, trained_on, auroc = stub_features_and_classifiers(module, monkeypatch)
    row = module.held_out_real(subset, real, seeds=3)

    draws = module.class_mix_draws(test, subset, 3)
    assert all(drawn.class_counts() == subset.class_counts() and
               set(drawn.image_hashes()) <= set(test.image_hashes()) for drawn in draws)
    coverage = [evaluate_fidelity(subset, drawn, extractor, extractor.name, seed=seed)
                .overall["coverage"] for seed, drawn in enumerate(draws)]
    assert row["fidelity"]["coverage"] == pytest.approx(np.mean(coverage))
    assert row["fidelity_sd"]["coverage"] == pytest.approx(np.std(coverage, ddof=1))
    assert trained_on == [] and "auroc" not in row and "membership" not in row  # fidelity only
    rows = {"real only": {"auroc": {"val": auroc, "test": auroc}, "fidelity_floor": None},
            "test images (fidelity)": row, "dcgan": {"auroc": {"val": auroc, "test": auroc}}}
    assert module.best_recipe(rows) == "dcgan"
    module.print_table("phantom", len(subset), {k: rows[k] for k in list(rows)[:2]})
    line = capsys.readouterr().out.splitlines()[-1]
    cov, floor = row["fidelity"]["coverage"], row["fidelity_floor"]["coverage"]
    assert line.startswith("| test images (fidelity) | - | ") and line.endswith(
        "| - | - | - | - | - | - |")
    assert f"{cov:.2f} ± {row['fidelity_sd']['coverage']:.2f} ({floor:.2f})" in line
    assert module.held_out_real(train, real, seeds=1) is None  # more images than the test split

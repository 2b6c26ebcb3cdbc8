"""``make bench``'s runner: each benchmark's output, command and status end up in RESULTS.md."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import real_file

RUNNER = Path(__file__).resolve().parents[1] / "benchmarks" / "run_all.py"


def benchmark_module(name: str):
    """The script ``benchmarks/NAME.py`` imported as module ``NAME`` (its folder on the path,
    for its ``common`` import)."""
    sys.path.insert(0, str(RUNNER.parent))
    spec = importlib.util.spec_from_file_location(name, RUNNER.parent / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def run_all(monkeypatch, tmp_path):
    spec = importlib.util.spec_from_file_location("run_all", RUNNER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    script = tmp_path / "fake_benchmark.py"
    script.write_text("import sys\nprint('ratio 1.50x', '/ok' in sys.argv[-1])\n"
                      "sys.exit(0 if '/ok' in sys.argv[-1] else 3)\n")
    monkeypatch.setattr(module, "BENCHMARKS", {
        "ok": ("a benchmark that works", [str(script), "--out", f"{module.OUT}/run"]),
        "broken": ("a benchmark that fails", [str(script), "--out", module.OUT]),
        "never": ("a benchmark not run", [str(script)]),
    })
    return module


def test_results_hold_each_benchmark_output_status_and_command(run_all, tmp_path, monkeypatch):
    results = tmp_path / "RESULTS.md"
    monkeypatch.setattr(sys, "argv", ["run_all.py", "--out", str(tmp_path / "bench"), "--only",
                                      "ok,broken", "--results", str(results)])
    run_all.main()
    text = results.read_text()
    ok, broken = text.split("## broken")
    assert "ratio 1.50x True" in ok and "failed" not in ok
    assert "ratio 1.50x False" in broken and "**failed (exit 3)**" in broken
    assert "bench/ok/run" in ok
    assert "a benchmark not run: not run yet." in text

    # rerunning one keeps the other's last result
    monkeypatch.setattr(sys, "argv", ["run_all.py", "--out", str(tmp_path / "bench"), "--only",
                                      "ok", "--results", str(results)])
    run_all.main()
    assert "**failed (exit 3)**" in results.read_text()

    # on another machine (a fresh OUT) the sections of the committed RESULTS.md are kept
    before = results.read_text().split("## ok")[1]
    monkeypatch.setattr(sys, "argv", ["run_all.py", "--out", str(tmp_path / "elsewhere"),
                                      "--only", "never", "--results", str(results)])
    run_all.main()
    text = results.read_text()
    assert text.split("## ok")[1].split("## never")[0] == before.split("## never")[0]
    assert "a benchmark not run: not run yet." not in text


def test_unknown_benchmark_is_refused(run_all, monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "argv", ["run_all.py", "--out", str(tmp_path), "--only", "nope"])
    with pytest.raises(SystemExit, match="unknown benchmark"):
        run_all.main()


@pytest.mark.slow
def test_train_throughput_runs_end_to_end(capsys):
    """The throughput benchmark drives fit with a stub model and the real DCGAN: it breaks
    when the model protocol grows, which only a run shows."""
    path = RUNNER.parent / "train_throughput.py"
    spec = importlib.util.spec_from_file_location("train_throughput", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--images", "256", "--epochs", "2", "--repeats", "1", "--steps", "1",
                 "--precisions", "fp32"])
    printed = capsys.readouterr().out
    assert "3. fit's own per-step cost (stub model)" in printed
    assert "4. our end-to-end fit() per epoch" in printed and "fp32:" in printed


def test_translation_benchmark_keeps_a_copied_subject_out_of_every_fold(tmp_path, capsys):
    """A subject stored twice under two names would put the held-out subject's own images
    into its fold's training set: the second name is left out, and listed to be held out."""
    path = RUNNER.parent / "cyclegan_t1t2.py"
    sys.path.insert(0, str(RUNNER.parent))
    spec = importlib.util.spec_from_file_location("cyclegan_t1t2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    folders = []
    for name, content in (("a", b"one"), ("b", b"two"), ("c", b"one")):
        folder = tmp_path / name
        folder.mkdir()
        for contrast in ("t1", "t2"):
            (folder / f"{contrast}.nii.gz").write_bytes(content + contrast.encode())
        folders.append(folder)
    kept, copies = module.distinct_subjects(folders)
    assert list(kept) == ["a", "b"] and copies == ["c"]
    assert "c: left out, its volumes are byte-identical to a's" in capsys.readouterr().out


def test_translation_benchmark_chooses_the_blend_weight_without_the_held_out_subject(
        tmp_path, monkeypatch):
    """The map-blend weight of a fold comes from inner runs on its training subjects alone,
    each scored on the other training subject: the held-out subject is never trained on or
    scored before the fold's own evaluation, which uses the chosen weight."""
    sys.path.insert(0, str(RUNNER.parent))
    spec = importlib.util.spec_from_file_location("cyclegan_t1t2",
                                                  RUNNER.parent / "cyclegan_t1t2.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    volumes = {name: tmp_path / "data" / name for name in ("a", "b", "c")}
    peaks = {("a", "b"): 0.3, ("b", "a"): 0.5}  # (trained on, scored on): best weight
    trained, scored, evaluated = [], [], []

    def train(args, mode, kept_out, run, axis, label):
        trained.append(sorted(kept_out))
        run.mkdir(parents=True)
        return {"train_seconds": 1.0}

    def curve(run, subject, blend_map):
        scored.append((run.parent.name, subject.name))
        peak = peaks.get((run.parent.name, subject.name), 0.0)
        return [-(w - peak) ** 2 for w in module.BLEND_WEIGHTS]  # PSNR peaks at ``peak``

    def evaluate(*cli):
        evaluated.append(cli)
        out = Path(cli[cli.index("--out") + 1])
        out.mkdir(parents=True)
        (out / "translation.json").write_text('{"blended": true}')
        return 2.0

    monkeypatch.setattr(module, "train_fold_run", train)
    monkeypatch.setattr(module, "inner_curve", curve)
    monkeypatch.setattr(module, "synthmed", evaluate)
    args = argparse.Namespace(out=tmp_path / "out", blend_map="inverted", skip_training=False,
                              planes=True)
    for held_out in ("a", "c"):  # where the folds' own runs and fold.json are
        (args.out / "paired" / held_out).mkdir(parents=True)
    record = module.blend_fold(args, "paired", volumes, ["copy"], "c")
    assert trained == [["b", "c", "copy"], ["a", "c", "copy"]]  # each on one subject alone
    assert sorted(scored) == [("a", "b"), ("b", "a")]  # never the held-out c
    assert record["blend"]["weight"] == 0.4 and record["evaluation"] == {"blended": True}
    assert record["train_seconds_inner"] == 2.0  # both inner runs count in the fold's budget
    (cli,) = evaluated
    assert cli[cli.index("--blend-weight") + 1] == "0.4" and "--fuse" in cli
    assert str(volumes["c"] / "t1.nii.gz") in cli
    assert module.blend_fold(args, "paired", volumes, ["copy"], "c") == record  # read back
    assert len(scored) == 2 and len(trained) == 2  # inner runs and curves not redone
    unblended = module.blend_fold(args, "paired", volumes, ["copy"], "a")  # b and c: peak 0
    assert unblended["blend"]["weight"] == 0.0 and "evaluation" not in unblended
    assert trained[-1] == ["a", "b", "copy"] and len(evaluated) == 1  # c's run; no evaluation


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


def test_the_unseen_real_row_draws_training_images_outside_the_subset_as_a_perfect_generator(
        monkeypatch, capsys):
    from synthmed.augment.dataset import ImageSet
    from synthmed.augment.phantom import PhantomConfig, make_phantom
    from synthmed.eval.privacy_audit import PrivacyConfig, evaluate_privacy
    from synthmed.eval.real_data import RealData

    module = benchmark_module("generator_quality")
    images = make_phantom(PhantomConfig(n=96, size=28, lesion_fraction=0.5))[0]
    train, val, test = (images.subset(np.arange(k, k + n)) for k, n in ((0, 64), (64, 16),
                                                                          (80, 16)))
    subset = train.subset(np.arange(0, 64, 3))
    real = RealData(train, val, test, notes=[])

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


@pytest.mark.slow
def test_generators_trained_elsewhere_are_measured_here_untrained(shared_data, tmp_path,
                                                                 monkeypatch):
    """Exported subsets train into packed runs that ``place`` puts where the benchmark and
    its harness find them finished: nothing is trained again, and they sample."""
    real_file(shared_data, "medmnist/breastmnist.npz")
    sys.path.insert(0, str(RUNNER.parent))
    spec = importlib.util.spec_from_file_location("remote_generators",
                                                  RUNNER.parent / "remote_generators.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["export", "--data", str(shared_data), "--out", str(tmp_path / "pack"),
                 "breastmnist-0.25:0,1"])
    module.main(["train", str(tmp_path / "pack"), "--recipe", "dcgan@4",
                 "--out", str(tmp_path / "runs")])
    module.main(["place", str(tmp_path / "runs"), "--quality", str(tmp_path / "q")])

    from synthmed.errors import InputError
    from synthmed.eval import generators
    from synthmed.io import resumable_output_dir

    monkeypatch.setattr(generators, "train_dcgan", lambda *a, **k: pytest.fail("retrained"))
    family, recipe = module.chosen_recipe("dcgan@4")
    subsets = [module.load_subset(tmp_path / "pack" / f"breastmnist-0.25-s{s}.npz")
               for s in (0, 1)]
    benchmark = tmp_path / "q" / "breastmnist-0.25" / "dcgan@4"
    harness = tmp_path / "q" / "breastmnist-0.25" / "harness-dcgan@4"
    placed_seconds = json.loads((benchmark / "train_seconds.json").read_text())
    quality = sys.modules["generator_quality"]
    run, train_seconds = quality.trained_run(family, recipe, subsets[0], benchmark)
    assert train_seconds == placed_seconds  # found, not trained again: the remote time stays
    assert generators.sample_run(run, like=subsets[0], n=3).images.shape == (3, 1, 28, 28)
    harness_runs = [generators.SubsetGenerators(recipe, harness / "generators", family)
                    .train(subset) for subset in subsets]
    assert len(set(harness_runs)) == 2
    with resumable_output_dir(harness, (), "utility"):  # the harness may write there
        pass

    # nothing replaces a placed run or writes into a folder synthmed did not write
    with pytest.raises(SystemExit, match="already holds a run"):
        module.main(["place", str(tmp_path / "runs"), "--quality", str(tmp_path / "q")])
    mine = tmp_path / "mine"
    (mine / "breastmnist-0.25" / "harness-dcgan@4").mkdir(parents=True)
    (mine / "breastmnist-0.25" / "harness-dcgan@4" / "notes.txt").write_text("keep")
    with pytest.raises(InputError, match="synthmed did not write"):
        module.main(["place", str(tmp_path / "runs"), "--quality", str(mine)])
    assert sorted(p.name for p in mine.rglob("*")) == ["breastmnist-0.25", "harness-dcgan@4",
                                                        "notes.txt"]
    with pytest.raises(InputError, match="synthmed did not write"):
        module.main(["export", "--data", str(shared_data), "--out", str(mine / "breastmnist-0.25"
                     / "harness-dcgan@4"), "breastmnist-0.25:0"])

    rates = module.probe([tmp_path / "pack" / "breastmnist-0.25-s1.npz"], "dcgan",
                         tmp_path / "probe", steps=(2, 4))
    assert len(rates) == 1 and rates[0] > 0
    assert module.budget_steps(10.0, 900) == 8000 and module.budget_steps(0.1, 900) == 2000

    # a deadline stops what is still training and packs nothing of it
    with pytest.raises(SystemExit, match="2 run"):
        module.main(["train", str(tmp_path / "pack"), "--recipe", "dcgan@4000", "--out",
                     str(tmp_path / "late"), "--deadline", "0"])
    assert not list((tmp_path / "late").glob("*.tar"))
    assert module.reached(benchmark) == "epoch 1 of 1"

    # synthetic only on 2 x the subset's size
    monkeypatch.setattr(quality, "classifier_auroc",
                        lambda sets, real, seeds: [len(s) for s in sets])
    row = quality.synthetic_only_at_scale(quality.recipe_sampler(family, recipe, run, subsets[0]),
                                          subsets[0], None, seeds=2, scale=2)
    assert row["auroc"] == [2 * len(subsets[0])] * 2 and row["synthetic_scale"] == 2
    assert module.reached(tmp_path / "late") == "before its first epoch"

    exported = dict(np.load(tmp_path / "pack" / "breastmnist-0.25-s1.npz"))
    exported["images"][0] += 0.5
    np.savez(tmp_path / "changed.npz", **exported)
    with pytest.raises(SystemExit, match="fingerprint differs"):
        module.load_subset(tmp_path / "changed.npz")

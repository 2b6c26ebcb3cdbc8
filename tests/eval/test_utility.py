"""The utility harness: regimes, real-data preparation, subsets, leakage refusal, the grid with
its outputs, exact resume, sharding + merge, and the ``evaluate utility`` command."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from synthmed.augment.dataset import ImageSet
from synthmed.augment.phantom import PhantomConfig, make_phantom
from synthmed.augment.splits import split_by_group
from synthmed.cli import cli
from synthmed.errors import InputError
from synthmed.eval import generators as generators_module
from synthmed.eval import utility
from synthmed.eval.classifier import ClassifierConfig, train_classifier
from synthmed.eval.generators import (
    GeneratorRecipe,
    SubsetGenerators,
    TrainedRun,
    best_of,
    synthetic_labels,
)
from synthmed.eval.real_data import fraction_subset, prepare_real
from synthmed.eval.regimes import make_regimes
from synthmed.eval.utility import UtilityConfig, merge, run_grid
from synthmed.eval.utility_report import _describe_generator, summarize_results, write_report
from synthmed.gan.config import DCGANConfig, TrainConfig, resolve_precision
from synthmed.gan.near_copy import subset_filter
from synthmed.gan.run import load_run
from synthmed.gan.run_config import DataConfig, RunConfig, read_run_config
from synthmed.gan.train import train_dcgan

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = UtilityConfig(fractions=(0.5,), seeds=2, ratios=(1.0,), pilot_doublings=0,
                     classifier=ClassifierConfig(steps=6, eval_every=3, batch_size=16, width=4))
# a generator trained on exactly the images it is given (split all), for a TrainedRun
TINY_RUN = RunConfig("dcgan", DCGANConfig(width=4), TrainConfig(epochs=1, batch_size=32),
                     DataConfig(split="all"))
RECIPE = GeneratorRecipe(steps=2, width=8, batch_size=16, precision="fp32")


@pytest.fixture(scope="module")
def phantom() -> ImageSet:
    """160 labelled 32 px slices of 20 subjects, split by subject."""
    t1, _ = make_phantom(PhantomConfig(n=160, size=32))
    return t1.with_splits(split_by_group(t1, 0.2, 0.2, seed=0))


@pytest.fixture(scope="module")
def real(phantom):
    return prepare_real(phantom)


@pytest.fixture(scope="module")
def grid_run(real, tmp_path_factory):
    out = tmp_path_factory.mktemp("utility")
    generators = SubsetGenerators(RECIPE, out / "generators")
    results = run_grid(real, generators, TINY, out, progress=False)
    return out, results, generators


def test_regimes_include_the_controls_and_every_mix():
    names = [r.name for r in make_regimes((0.5, 2.0), balance=True)]
    assert names[:4] == ["real", "real+classic", "real+classic-mri", "real-repeated"]
    assert {"real+synthetic x0.5", "real+classic+synthetic x2", "real+synthetic balance",
            "real+classic+synthetic balance (loss x0.5)", "synthetic, then real+classic x2",
            "synthetic only"} <= set(names)
    alone = [r for r in make_regimes((0.5, 1.0, 2.0), balance=True) if not r.real]
    assert [(r.name, r.synthetic) for r in alone] == [
        ("synthetic only", 1.0), ("synthetic only x0.5", 0.5), ("synthetic only x2", 2.0)]
    repeated = make_regimes((0.5, 2.0), balance=False)[3]
    assert repeated.repeat_to == 3.0 and repeated.classic and not repeated.uses_synthetic


def test_prepare_real_cuts_missing_splits_by_patient_and_drops_seen_images(phantom):
    unsplit = phantom.with_splits([""] * len(phantom))
    cut = prepare_real(unsplit)
    assert len(cut.train) + len(cut.val) + len(cut.test) == len(phantom)
    assert not set(cut.train.groups) & (set(cut.val.groups) | set(cut.test.groups))
    # a test image that is also a training image is dropped, and said so
    train_index = np.flatnonzero(phantom.splits == "train")[0]
    copy = phantom.subset([train_index]).with_splits(["test"])
    leaky = prepare_real(ImageSet.concatenate([phantom, copy]))
    assert len(leaky.test) == len(prepare_real(phantom).test)
    assert any("dropped 0 validation and 1 test" in note for note in leaky.notes)


def test_prepare_real_needs_labels(phantom):
    unlabelled = ImageSet.from_arrays(phantom.images)
    with pytest.raises(InputError, match="labelled data"):
        prepare_real(unlabelled)


def test_fraction_subsets_are_stratified_and_seeded(real):
    subset = fraction_subset(real.train, 0.25, seed=1)
    counts, full = subset.class_counts(), real.train.class_counts()
    assert all(counts[k] == max(2, round(0.25 * full[k])) for k in full)
    assert fraction_subset(real.train, 0.25, seed=1).fingerprint() == subset.fingerprint()
    assert fraction_subset(real.train, 0.25, seed=2).fingerprint() != subset.fingerprint()
    assert fraction_subset(real.train, 1.0, seed=3) is real.train


@pytest.mark.parametrize("fraction", [0.01, 0.05])
def test_small_fractions_keep_every_class(real, fraction):
    subset = fraction_subset(real.train, fraction, seed=0)
    assert subset.class_counts() == {0: 2, 1: 2}  # at least two per class, where there are
    lonely = ImageSet.concatenate([real.train.subset(np.flatnonzero(real.train.labels == 0)),
                                   real.train.subset([np.flatnonzero(real.train.labels == 1)[0]])])
    assert fraction_subset(lonely, fraction, seed=0).class_counts() == {0: 2, 1: 1}


def test_a_split_without_some_class_is_a_clear_error(phantom):
    no_lesion_in_train = phantom.subset(np.flatnonzero((phantom.splits != "train")
                                                       | (phantom.labels == 0)))
    with pytest.raises(InputError, match=r"the train split lacks a class \(counts \{0: "):
        prepare_real(no_lesion_in_train)


def test_synthetic_labels_follow_the_mix(real):
    rng = np.random.default_rng(0)
    subset = ImageSet.from_arrays(np.zeros((10, 1, 4, 4), np.float32), labels=[0] * 7 + [1] * 3)
    assert np.bincount(synthetic_labels(subset, 2.0, rng)).tolist() == [14, 6]
    assert np.bincount(synthetic_labels(subset, "balance", rng), minlength=2).tolist() == [0, 4]


def test_a_generator_that_saw_test_images_is_refused(real, tmp_path):
    leaked = ImageSet.concatenate([real.train, real.test])
    train_dcgan(leaked, tmp_path / "run", TINY_RUN, conditional=True, progress=False)
    with pytest.raises(InputError, match=rf"trained on {len(real.test)} test image"):
        TrainedRun(load_run(tmp_path / "run"), real)


def test_a_generator_trained_on_more_images_than_the_fraction_warns(real, tmp_path):
    train_dcgan(real.train, tmp_path / "run", TINY_RUN, conditional=True, progress=False)
    generator = TrainedRun(load_run(tmp_path / "run"), real)
    subset = fraction_subset(real.train, 0.25, seed=0)
    with pytest.warns(UserWarning, match="more than the"):
        images = generator.sample(subset, np.array([0, 1, 1]), seed=0)
    assert images.shape == (3, 1, 32, 32)


def test_a_trained_run_draws_a_class_from_its_class_run(real, tmp_path):
    train_dcgan(real.train, tmp_path / "run", TINY_RUN, conditional=True, progress=False)
    copy_config = replace(TINY_RUN, data=replace(TINY_RUN.data, classes=("lesion",),
                                                 init_from=str(tmp_path / "run")))
    train_dcgan(real.train, tmp_path / "copy", copy_config, conditional=True, progress=False)
    shared, copy = (TrainedRun(load_run(tmp_path / name), real) for name in ("run", "copy"))
    both = TrainedRun(load_run(tmp_path / "run"), real, {"lesion": str(tmp_path / "copy")})
    for labels, drawn_by in (([1, 1, 1], copy), ([0, 0], shared)):
        np.testing.assert_array_equal(both.sample(real.train, np.array(labels), seed=4),
                                      drawn_by.sample(real.train, np.array(labels), seed=4))
    assert both.describe()["class_runs"] == {"lesion": copy.run.fingerprint}
    assert "class `lesion` drawn by its class run" in _describe_generator(both.describe())
    with pytest.raises(InputError, match="two class runs"):
        TrainedRun(load_run(tmp_path / "run"), real, {"lesion": str(tmp_path / "copy"),
                                                      "1": str(tmp_path / "copy")})


class BrightIsClassOne:
    """A judge whose probability of class 1 is an image's mean brightness in [0, 1]."""

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        bright = (images.mean(axis=(1, 2, 3)) + 1) / 2
        return np.stack([1 - bright, bright], axis=1)


def test_best_of_keeps_the_candidate_most_typical_of_each_label():
    levels = np.array([-0.8, 0.6, -0.2, 0.9, 0.1, -0.9])  # 3 candidates for each of 2 labels
    candidates = np.ones((6, 1, 4, 4), np.float32) * levels[:, None, None, None]
    chosen = best_of(candidates, np.array([1, 0]), BrightIsClassOne())
    assert chosen.shape == (2, 1, 4, 4)
    assert chosen[:, 0, 0, 0].tolist() == pytest.approx([0.6, -0.9])  # brightest, darkest
    with pytest.raises(InputError, match="best_of"):
        UtilityConfig(best_of=0)


def test_results_of_an_older_version_keep_their_cells_and_gain_the_new_regimes(
        grid_run, real, tmp_path, monkeypatch):
    out, results, generators = grid_run
    new_regimes = {"real+classic-mri", "real+classic+synthetic x1 (loss x0.5)",
                   "synthetic, then real+classic x1"}
    older = json.loads((out / "results.json").read_text())
    for option in ("best_of", "pilot_doublings"):  # options added later
        del older["config"][option]
    for option in ("ada_target", "transition_steps"):  # recipe options added later
        del older["generator"][option]
    del older["budgets"]
    older["regimes"] = [r for r in older["regimes"] if r["name"] not in new_regimes]
    older["cells"] = [c for c in older["cells"] if c["regime"] not in new_regimes]
    (tmp_path / "results.json").write_text(json.dumps(older))
    trained = []
    real_train = utility.train_classifier
    monkeypatch.setattr(utility, "train_classifier",
                        lambda *a, **k: trained.append(1) or real_train(*a, **k))
    again = run_grid(real, generators, TINY, tmp_path, progress=False)
    assert len(trained) == 2 * len(new_regimes)  # only the new regimes' cells, each seed
    assert again["cells"] == results["cells"] and again["budgets"] == {"0.5": 6}


def test_grid_trains_every_cell_on_its_own_subset(grid_run, real):
    out, results, generators = grid_run
    regimes = [r.name for r in TINY.regimes]
    assert [(c["seed"], c["regime"]) for c in results["cells"]] == [
        (s, r) for s in range(2) for r in regimes]
    for cell in results["cells"]:
        assert set(cell["test"]) >= {"auroc", "balanced_accuracy", "macro_f1", "sensitivity",
                                     "minority_sensitivity"}
        # the phantom's rarer class in training is class 1 (lesion)
        assert cell["test"]["minority_sensitivity"] == cell["test"]["sensitivity"]
        assert cell["curve"] and cell["best_step"] in [p["step"] for p in cell["curve"]]
    by_regime = {c["regime"]: c for c in results["cells"] if c["seed"] == 0}
    subset_size = len(fraction_subset(real.train, 0.5, seed=0))
    assert by_regime["real"]["n_real"] == subset_size and by_regime["real"]["n_synthetic"] == 0
    assert by_regime["real+synthetic x1"]["n_synthetic"] == subset_size
    assert by_regime["real-repeated"]["n_real"] == 2 * subset_size
    assert by_regime["synthetic only"]["n_real"] == 0
    # one generator per (fraction, seed), each trained on exactly its subset
    runs = sorted(p for p in generators.folder.iterdir())
    assert len(runs) == 2
    for seed in range(2):
        subset = fraction_subset(real.train, 0.5, seed)
        record = json.loads((generators.folder / subset.fingerprint()[:16] /
                             "training_data.json").read_text())
        assert record["fingerprint"] == subset.fingerprint()
        assert set(record["image_hashes"]).isdisjoint(real.test.image_hashes())


def test_the_recipe_small_data_remedies_reach_each_generator(real, tmp_path):
    with pytest.raises(InputError, match="diffaugment takes"):
        GeneratorRecipe(diffaugment=("blur",))
    recipe = replace(RECIPE, diffaugment=("translation", "cutout"), ada_target=0.6,
                     transition_steps=(1, 3), ema_decay=0.9)
    run_dir = SubsetGenerators(recipe, tmp_path).train(fraction_subset(real.train, 0.5, 0))
    model = read_run_config(run_dir).model
    assert (model.diffaugment, model.ada_target, model.transition_steps, model.ema_decay) == (
        ("translation", "cutout"), 0.6, (1, 3), 0.9)
    trained = load_run(run_dir).model
    assert trained.ema is not None and trained.conditioning_strength == 1.0
    described = _describe_generator(SubsetGenerators(recipe, tmp_path).describe())
    assert ("DiffAugment translation/cutout (adaptive, target 0.6), conditioning ramped in over "
            "steps 1-3, EMA 0.9") in described


def test_the_harness_privacy_filter_redraws_its_generators_near_copies(real, tmp_path,
                                                                      monkeypatch):
    subset = fraction_subset(real.train, 0.5, 0)
    labels = subset.labels[:6]
    drawn = []

    def copying_first(model, wanted, rng, block=256):  # the first draw: the subset's images
        images = (subset.images[:6].copy() if not drawn else
                  np.asarray(torch.randn((len(wanted), *subset.images.shape[1:]),
                                         generator=rng)).clip(-1, 1))
        drawn.append(len(wanted))
        return images

    monkeypatch.setattr(generators_module, "_sample", copying_first)
    filtered = SubsetGenerators(replace(RECIPE, filter_percentile=50), tmp_path)
    images = filtered.sample(subset, labels, seed=3)
    assert drawn[0] == 6 and sum(drawn[1:]) >= 6  # every copy drawn again
    near = subset_filter(subset, 50, max_redraws=1)
    assert not near.copies(images).any() and near.copies(subset.images[:6]).all()
    drawn.clear()
    assert np.array_equal(images, filtered.sample(subset, labels, seed=3))  # seeded
    drawn.clear()
    unfiltered = SubsetGenerators(RECIPE, tmp_path).sample(subset, labels, seed=3)
    assert drawn == [6] and np.array_equal(unfiltered, subset.images[:6])
    for family in ("dcgan", "diffusion"):
        described = SubsetGenerators(replace(RECIPE, filter_percentile=50), tmp_path, family)
        assert _describe_generator(described.describe()).endswith(
            "; its images through the privacy filter at percentile 50, near-copies of its "
            "training images redrawn)")
    # unfiltered: described as before the filter existed, so older results stay reusable
    assert "filter_percentile" not in SubsetGenerators(RECIPE, tmp_path, "diffusion").describe()

    monkeypatch.setattr(generators_module, "_sample",
                        lambda model, wanted, rng, block=256: subset.images[:len(wanted)].copy())
    with pytest.raises(InputError, match=r"6 image.s. were still near-copies .* after 100 new "
                                         r"draws .*lower --generator-filter-percentile"):
        filtered.sample(subset, labels, seed=3)
    with pytest.raises(InputError, match=r"filter percentile must be in \[0, 100\]"):
        GeneratorRecipe(filter_percentile=101)


def test_class_copies_fine_tune_from_the_subset_generator_and_draw_their_class(real, tmp_path):
    subset = fraction_subset(real.train, 0.5, 0)
    generators = SubsetGenerators(replace(RECIPE, class_steps=2), tmp_path)
    run_dir = generators.train(subset)
    copies = generators.class_runs(subset, run_dir)
    assert sorted(copies) == sorted(subset.class_counts()) == [0, 1]
    for label, copy_dir in copies.items():
        config = read_run_config(copy_dir)
        assert config.data.init_from == str(run_dir) and config.model.transition_steps == (0, 0)
        own = subset.subset(np.flatnonzero(subset.labels == label))
        assert load_run(copy_dir).training_data["image_hashes"] == own.image_hashes()
    labels = np.array([1, 0, 0, 1])
    images = generators.sample(subset, labels, seed=3)
    rng = torch.Generator().manual_seed(3)  # one noise stream, class by class
    for label in (0, 1):
        drawn = load_run(copies[label]).model.sample(2, labels=torch.tensor([label] * 2),
                                                     generator=rng)
        assert np.array_equal(images[labels == label], drawn.numpy())
    shared = SubsetGenerators(RECIPE, tmp_path)  # the same subset generator, without copies
    assert shared.train(subset) == run_dir and not shared.class_runs(subset, run_dir)
    assert not np.array_equal(images, shared.sample(subset, labels, seed=3))
    assert "; each class's images from a copy fine-tuned on that class alone for 2 steps)" in \
        _describe_generator(generators.describe())

    smallest = SubsetGenerators(replace(RECIPE, class_steps=2, class_copies="smallest"), tmp_path)
    counts = subset.class_counts()
    assert list(smallest.class_runs(subset, run_dir)) == [min(counts, key=counts.get)]
    with pytest.raises(InputError, match="class copies need steps >= 0 and one of all, smallest"):
        GeneratorRecipe(class_copies="largest")
    with pytest.raises(InputError, match="class copies need a conditional generator"):
        SubsetGenerators(replace(RECIPE, class_steps=2), tmp_path, conditional=False)


def test_the_recipe_precision_auto_is_fixed_before_the_first_generator(tmp_path):
    with pytest.raises(InputError, match="generator precision must be fp32, bf16 or auto"):
        GeneratorRecipe(precision="fp16")
    generators = SubsetGenerators(GeneratorRecipe(), tmp_path)
    assert GeneratorRecipe().precision == "auto"
    assert generators.describe()["precision"] == resolve_precision("auto") in ("fp32", "bf16")


def test_a_diffusion_model_can_be_the_generator_of_each_subset(real, tmp_path):
    generators = SubsetGenerators(RECIPE, tmp_path, family="diffusion")
    subset = fraction_subset(real.train, 0.5, 0)
    run_dir = generators.train(subset)
    assert run_dir.name.startswith("diffusion-") and generators.train(subset) == run_dir
    config = read_run_config(run_dir)
    assert config.kind == "diffusion" and config.model.num_classes == len(subset.class_names)
    labels = np.array([0, 1, 1])
    images = generators.sample(subset, labels, seed=0)
    assert images.shape == (3, *subset.images.shape[1:]) and np.isfinite(images).all()
    assert np.array_equal(images, generators.sample(subset, labels, seed=0))
    assert _describe_generator(generators.describe()).startswith(
        f"a conditional diffusion model trained on exactly each fraction's real subset "
        f"({RECIPE.steps} steps of batch {RECIPE.batch_size}, widths 8/16/16)")
    with pytest.raises(InputError, match="generator family must be one of dcgan, diffusion"):
        SubsetGenerators(RECIPE, tmp_path, family="vae")


def test_each_regime_trains_on_its_own_set_for_the_same_steps(real, tmp_path, monkeypatch):
    calls = []

    def recording(images, labels, val_images, val_labels, classes, config, seed, **options):
        pretraining = options["pretraining"]
        calls.append({"n": len(images), "steps": config.steps, "augment": options["augment"],
                      "weights": options["weights"],
                      "first": None if pretraining is None else (len(pretraining.images),
                                                                 pretraining.steps)})
        return train_classifier(images, labels, val_images, val_labels, classes, config, seed,
                                **options)

    monkeypatch.setattr(utility, "train_classifier", recording)
    config = replace(TINY, seeds=1)
    run_grid(real, SubsetGenerators(RECIPE, tmp_path / "generators"), config, tmp_path,
             progress=False)
    by_regime = dict(zip((r.name for r in config.regimes), calls, strict=True))
    n = len(fraction_subset(real.train, 0.5, seed=0))
    expected = {  # images, augmentations, pretraining (images, steps)
        "real": (n, (), None),
        "real+classic": (n, ("classic",), None),
        "real+classic-mri": (n, ("classic", "mri"), None),
        "real-repeated": (2 * n, ("classic",), None),
        "real+synthetic x1": (2 * n, (), None),
        "real+classic+synthetic x1": (2 * n, ("classic",), None),
        "real+classic+synthetic x1 (loss x0.5)": (2 * n, ("classic",), None),
        "synthetic, then real+classic x1": (n, ("classic",), (n, 3)),
        "synthetic only": (n, (), None),
    }
    assert {name: (c["n"], c["augment"], c["first"]) for name, c in by_regime.items()} == expected
    assert {c["steps"] for c in calls} == {6}
    weights = by_regime["real+classic+synthetic x1 (loss x0.5)"]["weights"]
    assert weights.tolist() == [1.0] * n + [0.5] * n
    assert all(c["weights"] is None for name, c in by_regime.items() if "loss" not in name)


def test_an_unlabelled_pool_has_one_unconditional_generator_and_a_self_training_control(
        real, tmp_path, monkeypatch):
    seen = {}

    def recording(images, labels, *args, **options):
        seen[len(seen)] = (images, labels)
        return train_classifier(images, labels, *args, **options)

    monkeypatch.setattr(utility, "train_classifier", recording)
    config = replace(TINY, seeds=1, generator_pool="train")
    generators = SubsetGenerators(RECIPE, tmp_path / "generators", conditional=False)
    results = run_grid(real, generators, config, tmp_path, progress=False)
    (run_dir,) = (tmp_path / "generators").iterdir()  # one generator, on the whole pool
    assert run_dir.name.startswith("pool-")
    record = json.loads((run_dir / "training_data.json").read_text())
    assert record["fingerprint"] == real.train.fingerprint()
    assert read_run_config(run_dir).model.num_classes == 0  # unconditional
    subset = fraction_subset(real.train, 0.5, seed=0)
    n = len(subset)
    cells = {c["regime"]: c for c in results["cells"]}
    control = cells["real+classic+pool pseudo-labelled x1"]
    assert (control["n_real"], control["n_unlabelled"], control["n_synthetic"]) == (n, n, 0)
    assert cells["real+synthetic x1"]["n_synthetic"] == n
    # the control's added images are real training images outside the labelled subset
    order = [r.name for r in config.regimes]
    images, labels = seen[1 + order.index("real+classic+pool pseudo-labelled x1")]  # 0: judge
    added = ImageSet.from_arrays(images[n:]).image_hashes()
    assert set(added) <= set(real.train.image_hashes()) - set(subset.image_hashes())
    assert set(labels[n:].tolist()) <= {0, 1}
    write_report(results, tmp_path)
    assert "an unconditional DCGAN trained on the whole training split" in (
        tmp_path / "report.md").read_text()
    for bad in ({"balance": True}, {"best_of": 2}, {"fractions": (1.0,)}):
        with pytest.raises(InputError, match="an unlabelled pool"):
            replace(config, **bad)
    with pytest.raises(InputError, match="transitional conditioning needs a conditional"):
        SubsetGenerators(replace(RECIPE, transition_steps=(1, 2)), tmp_path, conditional=False)


def test_report_files(grid_run):
    out, results, _ = grid_run
    paths = write_report(results, out)
    assert {p.name for p in paths} == {"summary.json", "report.md", "gain.png", "fractions.png"}
    report = (out / "report.md").read_text()
    for regime in TINY.regimes:
        assert f"| {regime.name} |" in report
    assert "Headline" in report and "real-repeated" in report
    assert "| macro F1 | `lesion` sens. |" in report  # the class with fewer training images
    summary = json.loads((out / "summary.json").read_text())
    gain = summary["0.5"]["regimes"]["real+classic"]["auroc"]["gain"]
    assert {"gain_mean", "gain_ci_low", "t_p_holm", "wilcoxon_p_holm", "resolvable"} <= set(gain)


def test_the_headline_picks_its_regimes_on_validation_not_on_test(grid_run):
    """The regime best on the test split but worst on validation is not the headline's."""
    _, results, _ = grid_run
    rigged = json.loads(json.dumps(results))
    score = {"real": (0.9, 0.5), "real+classic": (0.6, 0.99), "real+synthetic x1": (0.9, 0.5),
             "real+classic+synthetic x1": (0.6, 0.99)}  # (validation AUROC, test AUROC)
    for cell in rigged["cells"]:
        validation, test = score.get(cell["regime"], (0.1, 0.1 + 0.01 * cell["seed"]))
        for point in cell["curve"]:
            point["val_auroc"] = validation if point["step"] == cell["best_step"] else 0.0
        cell["test"]["auroc"] = test + 0.01 * cell["seed"]
    head = summarize_results(rigged)["0.5"]["headline"]
    assert (head["best_synthetic"], head["best_without"]) == ("real+synthetic x1", "real")
    assert head["chosen_on"] == "validation" and head["gain_mean"] == pytest.approx(0.0)


def test_a_rerun_skips_finished_cells(grid_run, real, monkeypatch):
    out, results, generators = grid_run
    monkeypatch.setattr(utility, "train_classifier",
                        lambda *a, **k: pytest.fail("a finished cell was trained again"))
    again = run_grid(real, generators, TINY, out, progress=False)
    assert again == results


def test_a_run_killed_inside_a_seed_keeps_its_finished_models(grid_run, real, tmp_path,
                                                              monkeypatch):
    out, results, _ = grid_run
    shutil.copytree(out / "generators", tmp_path / "generators")
    generators = SubsetGenerators(RECIPE, tmp_path / "generators")
    real_train, calls = utility.train_classifier, []

    def killed_after_three(*args, **kwargs):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(1)
        return real_train(*args, **kwargs)

    monkeypatch.setattr(utility, "train_classifier", killed_after_three)
    with pytest.raises(KeyboardInterrupt):
        run_grid(real, generators, TINY, tmp_path, progress=False)
    kept = json.loads((tmp_path / "results.json").read_text())["cells"]
    assert kept == results["cells"][:3]  # seed 0's first three models, as uninterrupted
    monkeypatch.setattr(utility, "train_classifier", real_train)
    assert run_grid(real, generators, TINY, tmp_path, progress=False) == results


def test_a_larger_grid_keeps_the_finished_cells_and_runs_only_the_new(grid_run, real, tmp_path,
                                                                      monkeypatch):
    out, results, _ = grid_run
    shutil.copytree(out, tmp_path / "grown")
    generators = SubsetGenerators(RECIPE, tmp_path / "grown" / "generators")
    trained = []
    real_train = utility.train_classifier
    monkeypatch.setattr(utility, "train_classifier",
                        lambda *a, **k: trained.append(1) or real_train(*a, **k))
    grown = run_grid(real, generators, replace(TINY, seeds=3), tmp_path / "grown", progress=False)
    assert len(trained) == len(TINY.regimes)
    assert grown["cells"][:len(results["cells"])] == results["cells"]
    assert {c["seed"] for c in grown["cells"]} == {0, 1, 2}


def test_a_rerun_with_another_grid_is_refused(grid_run, real):
    out, _, generators = grid_run
    before = (out / "results.json").read_text()
    other_classifier = replace(TINY, classifier=replace(TINY.classifier, steps=7))
    with pytest.raises(InputError, match="another grid"):
        run_grid(real, generators, other_classifier, out, progress=False)
    with pytest.raises(InputError, match="outside this grid"):
        run_grid(real, generators, replace(TINY, seeds=1), out, progress=False)
    assert (out / "results.json").read_text() == before


def test_a_moved_generator_run_keeps_the_finished_cells(real, tmp_path, monkeypatch):
    train_dcgan(real.train, tmp_path / "run", TINY_RUN, conditional=True, progress=False)
    one_seed = replace(TINY, seeds=1)
    with pytest.warns(UserWarning, match="more than the"):
        results = run_grid(real, TrainedRun(load_run(tmp_path / "run"), real), one_seed,
                           tmp_path / "grid", progress=False)
    shutil.move(tmp_path / "run", tmp_path / "moved")
    monkeypatch.setattr(utility, "train_classifier",
                        lambda *a, **k: pytest.fail("a finished cell was trained again"))
    again = run_grid(real, TrainedRun(load_run(tmp_path / "moved"), real), one_seed,
                     tmp_path / "grid", progress=False)
    assert again["cells"] == results["cells"]
    assert again["generator"]["path"] == str(tmp_path / "moved")


def test_the_pilot_doubles_the_budget_until_real_converges(real, tmp_path, monkeypatch):
    pilot_steps = []

    def converging_at_24(subset, real_data, config, seed):
        pilot_steps.append(config.classifier.steps)
        return SimpleNamespace(converged=config.classifier.steps >= 24)

    monkeypatch.setattr(utility, "_real_only_classifier", converging_at_24)
    config = replace(TINY, seeds=1, pilot_doublings=3)
    generators = SubsetGenerators(RECIPE, tmp_path / "generators")
    results = run_grid(real, generators, config, tmp_path, progress=False)
    assert pilot_steps == [6, 12, 24]
    assert results["budgets"] == {"0.5": 24} and {c["steps"] for c in results["cells"]} == {24}
    assert run_grid(real, generators, config, tmp_path, progress=False) == results
    assert pilot_steps == [6, 12, 24]  # a rerun reads the budget back
    capped = run_grid(real, generators, replace(config, pilot_doublings=1), tmp_path / "capped",
                      progress=False)
    assert capped["budgets"] == {"0.5": 12}  # at most one doubling, converged or not
    with pytest.raises(InputError, match="pilot_doublings must be between 0 and 6"):
        replace(TINY, pilot_doublings=7)


def test_shards_merge_into_the_single_process_results(grid_run, real, tmp_path):
    out, results, generators = grid_run
    for k in (1, 2):
        run_grid(real, generators, TINY, tmp_path / f"shard{k}", shard=(k, 2), progress=False)
    shard_cells = [json.loads((tmp_path / f"shard{k}" / "results.json").read_text())["cells"]
                   for k in (1, 2)]
    assert shard_cells[0] and shard_cells[1]
    assert {c["seed"] for c in shard_cells[0]}.isdisjoint({c["seed"] for c in shard_cells[1]})
    merged = merge([tmp_path / "shard1", tmp_path / "shard2"], tmp_path / "merged")
    assert merged == results
    assert (tmp_path / "merged" / "results.json").read_text() == \
        (out / "results.json").read_text()
    with pytest.raises(InputError, match="missing"):
        merge([tmp_path / "shard1"], tmp_path / "half")
    other = json.loads((tmp_path / "shard2" / "results.json").read_text())
    other["budgets"] = {"0.5": 12}
    (tmp_path / "shard2" / "results.json").write_text(json.dumps(other))
    with pytest.raises(InputError, match="budget of 12 steps, another shard 6"):
        merge([tmp_path / "shard1", tmp_path / "shard2"], tmp_path / "mismatch")


def test_evaluate_utility_command(tmp_path, phantom):
    from synthmed.augment.medmnist import write_npz

    data = tmp_path / "phantom.npz"
    write_npz(phantom, data)
    out = tmp_path / "utility"
    args = ["evaluate", "utility", "--real", str(data), "--out", str(out), "--fractions", "0.5",
            "--seeds", "2", "--steps", "4", "--pilot-doublings", "1", "--batch-size", "16",
            "--generator-steps", "2", "--no-progress"]
    both = CliRunner().invoke(cli, [*args, "--train-generator", "dcgan-conditional",
                                    "--generator", str(tmp_path)])
    assert both.exit_code == 2 and "exactly one" in both.output
    given = CliRunner().invoke(cli, [*args, "--generator", str(tmp_path),
                                     "--generator-filter-percentile", "50"])
    assert given.exit_code == 2 and "--generator-filter-percentile is an option of the " \
        "generators the harness trains" in given.output and not out.exists()
    given = CliRunner().invoke(cli, [*args, "--generator", str(tmp_path),
                                     "--generator-class-steps", "2"])
    assert given.exit_code == 2 and "--generator-class-steps is an option" in given.output
    given = CliRunner().invoke(cli, [*args, "--generator", str(tmp_path), "--generator-mirror"])
    assert given.exit_code == 2 and "--generator-mirror is an option" in given.output
    given = CliRunner().invoke(cli, [*args, "--train-generator", "dcgan-conditional",
                                     "--generator-class-run", f"lesion={tmp_path}"])
    assert given.exit_code == 2 and "draws classes of --generator RUN" in given.output
    result = CliRunner().invoke(cli, [*args, "--train-generator", "dcgan-conditional",
                                      "--generator-diffaugment", "translation",
                                      "--generator-ema", "0.9", "--best-of", "2",
                                      "--generator-upsample", "resize",
                                      "--generator-filter-percentile", "50",
                                      "--generator-class-steps", "2",
                                      "--generator-class-copies", "smallest",
                                      "--generator-mirror"])
    assert result.exit_code == 0, result.output
    report = (out / "report.md").read_text()
    assert "each image flipped left-right at random (mirror) (2 steps" in report
    assert "DiffAugment translation, EMA 0.9, resize upsampling; the smallest class's images " \
        "from a copy fine-tuned on that class alone for 2 steps; its images through the " \
        "privacy filter at percentile 50" in report and "the best of 2 candidates" in report
    assert len(list((out / "generators").glob("*-class*"))) == 2  # one copy per seed's subset
    written = json.loads((out / "results.json").read_text())
    assert written["config"]["best_of"] == 2 and written["generator"]["upsample"] == "resize"
    trained = [read_run_config(run) for run in (out / "generators").iterdir()]
    assert trained and {(run.model.upsample, run.data.mirror) for run in trained} == {
        ("resize", True)}
    # one pass per run cannot converge, so the pilot doubled the 4 steps once
    assert written["budgets"] == {"0.5": 8} and {c["steps"] for c in written["cells"]} == {8}
    assert "optimiser steps 8 at fraction 0.5 (a pilot on `real`" in report
    assert "but UNCONVERGED" in report
    assert {"results.json", "report.md", "gain.png", "fractions.png"} <= {
        p.name for p in out.iterdir()}

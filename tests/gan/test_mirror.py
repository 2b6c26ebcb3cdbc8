"""``--mirror``: a generator sees its training images flipped left-right at random."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synthmed.augment.phantom import PhantomConfig, make_phantom
from synthmed.eval.generators import GeneratorRecipe, SubsetGenerators
from synthmed.gan import train as train_module
from synthmed.gan.data import LabelledImages
from synthmed.gan.run_config import read_run_config

from ..conftest import invoke

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_mirrored_batch_flips_about_half_its_images_with_the_loops_draws():
    images = make_phantom(PhantomConfig(n=64, size=28, lesion_fraction=0.5))[0]
    index = torch.arange(64)
    plain, labels = LabelledImages(images).batch(index, torch.Generator().manual_seed(0))
    mirrored, mirrored_labels = LabelledImages(images, mirror=True).batch(
        index, torch.Generator().manual_seed(0))
    flipped = np.array([torch.equal(m, p.flip(-1)) and not torch.equal(m, p)
                        for m, p in zip(mirrored, plain, strict=True)])
    kept = np.array([torch.equal(m, p) for m, p in zip(mirrored, plain, strict=True)])
    assert (flipped | kept).all() and 16 < flipped.sum() < 48
    assert torch.equal(mirrored_labels, labels)
    again = LabelledImages(images, mirror=True).batch(index, torch.Generator().manual_seed(0))
    assert torch.equal(again[0], mirrored)  # drawn from the loop's generator: a resume repeats


def test_train_mirror_reaches_the_fit_loop_is_recorded_and_kept_on_resume(tmp_path,
                                                                          monkeypatch):
    mirrored = []
    fit = train_module.fit
    monkeypatch.setattr(train_module, "fit", lambda model, data, *args, **kwargs: (
        mirrored.append(data.mirror) or fit(model, data, *args, **kwargs)))
    tiny = ("--epochs", "1", "--batch-size", "8", "--no-progress")
    for run, flags in (("dcgan", ["--mirror"]), ("plain", [])):
        trained = invoke("train", "dcgan", "phantom:n=16,size=28", "--out", tmp_path / run,
                         "--width", "4", *tiny, *flags)
        assert trained.exit_code == 0, trained.output
    trained = invoke("train", "diffusion", "phantom:n=16,size=16", "--out", tmp_path / "ddim",
                     "--widths", "8,8", "--attention", "false,false", "--sampling-steps", "2",
                     "--mirror", *tiny)
    assert trained.exit_code == 0, trained.output
    assert mirrored == [True, False, True]
    assert [read_run_config(tmp_path / run).data.mirror
            for run in ("dcgan", "plain", "ddim")] == [True, False, True]
    resumed = invoke("train", "dcgan", "phantom:n=16,size=28", "--out", tmp_path / "dcgan",
                     "--resume", "--epochs", "2", "--no-progress")
    assert resumed.exit_code == 0, resumed.output
    assert mirrored[-1] is True  # the run's own setting, from its config.yaml


def test_the_harness_recipe_mirrors_every_generator_and_class_copy(tmp_path):
    subset = make_phantom(PhantomConfig(n=24, size=28, lesion_fraction=0.5))[0]
    recipe = GeneratorRecipe(steps=2, width=8, batch_size=8, precision="fp32", class_steps=2,
                             mirror=True)
    generators = SubsetGenerators(recipe, tmp_path)
    run_dir = generators.train(subset)
    runs = [run_dir, *generators.class_runs(subset, run_dir).values()]
    assert len(runs) == 3 and all(read_run_config(run).data.mirror for run in runs)
    assert generators.describe()["mirror"] is True

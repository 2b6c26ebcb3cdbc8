"""Class copies outside the harness: a run fine-tuned on one class (``train --class``) that
draws that class in place of the run it started from (``generate --class-run``)."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
import yaml

from synthmed.augment.phantom import PhantomConfig, make_phantom
from synthmed.errors import InputError
from synthmed.gan.config import DCGANConfig, TrainConfig
from synthmed.gan.generate import GenerateConfig, generate
from synthmed.gan.run import load_run
from synthmed.gan.run_config import DataConfig, RunConfig
from synthmed.gan.train import train_dcgan

from ..conftest import invoke, one_line_error

pytestmark = pytest.mark.usefixtures("one_thread")

PHANTOM = PhantomConfig(n=48, size=28, lesion_fraction=0.25)  # 36 without, 12 with a lesion


def train_tiny(run_dir, data=PHANTOM, conditional=True, epochs=1, **data_options):
    images, _ = make_phantom(data)
    config = RunConfig("dcgan", DCGANConfig(width=4, lr_g=2e-3),
                       TrainConfig(epochs=epochs, batch_size=8), DataConfig(**data_options))
    train_dcgan(images, run_dir, config, conditional=conditional, progress=False)
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A conditional run and a copy of it fine-tuned on its lesion images alone."""
    folder = tmp_path_factory.mktemp("runs")
    base = train_tiny(folder / "base")
    return base, train_tiny(folder / "lesion", epochs=4, classes=("lesion",),
                            init_from=str(base))


def test_a_run_trained_on_one_class_keeps_every_class(runs):
    _, lesion = runs
    copy = load_run(lesion)
    assert copy.class_names == ["no lesion", "lesion"] and copy.model.config.num_classes == 2
    assert copy.training_data["class_counts"] == {"lesion": 12}
    assert copy.training_data["images"] == 12
    assert yaml.safe_load((lesion / "config.yaml").read_text())["data"]["classes"] == ["lesion"]


def test_a_class_run_draws_its_class_from_the_same_noise(runs, tmp_path):
    base, lesion = runs
    request = dict(per_class={"no lesion": 5, "lesion": 7}, format="npz", bit_depth=16, seed=3)
    for name, run, class_runs in (("base", base, {}), ("copy", lesion, {}),
                                  ("both", base, {"lesion": str(lesion)})):
        generate(load_run(run), tmp_path / name,
                 GenerateConfig(**request, class_runs=class_runs), progress=False)
    pixels = {name: np.load(tmp_path / name / "images.npz")["train_images"].astype(np.int64)
              for name in ("base", "copy", "both")}
    labels = np.load(tmp_path / "both" / "images.npz")["train_labels"][:, 0]
    np.testing.assert_array_equal(pixels["both"][labels == 0], pixels["base"][labels == 0])
    np.testing.assert_allclose(pixels["both"][labels == 1], pixels["copy"][labels == 1], atol=2)
    assert np.abs(pixels["base"][labels == 1] - pixels["copy"][labels == 1]).mean() > 50

    provenance = json.loads((tmp_path / "both" / "provenance.json").read_text())
    copy = load_run(lesion)
    assert provenance["class_runs"]["lesion"]["model_fingerprint"] == copy.fingerprint
    assert provenance["request"]["class_runs"] == {"lesion": str(lesion)}
    with (tmp_path / "both" / "manifest.csv").open() as handle:
        makers = {(row["class_name"], row["model_fingerprint"]) for row in csv.DictReader(handle)}
    assert makers == {("no lesion", provenance["model_fingerprint"]), ("lesion", copy.fingerprint)}


def test_class_runs_that_cannot_stand_in_are_refused(runs, tmp_path):
    base, lesion = runs
    other = train_tiny(tmp_path / "other", PhantomConfig(n=48, size=28, lesion_fraction=0.25,
                                                         seed=1), classes=("lesion",))
    plain = train_tiny(tmp_path / "plain", conditional=False)
    for run, class_runs, problem in [
        (base, {"lesion": other}, "was trained on 12 image(s) that"),
        (base, {"lesion": plain}, "is not a class-conditional run of the classes"),
        (base, {"cyst": lesion}, "unknown class 'cyst'"),
        (base, {"lesion": lesion, "1": lesion}, "two class runs for class 'lesion'"),
        (plain, {"0": lesion}, "need a class-conditional run"),
    ]:
        with pytest.raises(InputError, match=re.escape(problem)):
            generate(load_run(run), tmp_path / "syn", GenerateConfig(
                n=4, class_runs={key: str(path) for key, path in class_runs.items()}),
                progress=False)
    assert not (tmp_path / "syn").exists()


def test_cli_trains_a_class_copy_and_generates_with_it(runs, tmp_path):
    base, _ = runs
    copy = tmp_path / "copy"
    trained = invoke("train", "dcgan", "phantom:n=48,size=28,lesion_fraction=0.25", "--out", copy,
                     "--conditional", "--class", "lesion", "--init-from", base, "--width", "4",
                     "--epochs", "1", "--batch-size", "8", "--no-progress")
    assert trained.exit_code == 0, trained.output
    assert "on 12 images" in trained.output
    made = invoke("generate", base, "--per-class", "lesion=3", "--class-run", f"lesion={copy}",
                  "--out", tmp_path / "syn", "--no-progress")
    assert made.exit_code == 0, made.output
    assert f"drawn by their class runs: lesion ({copy})" in made.output
    one_line_error(invoke("train", "dcgan", "phantom:n=16,size=28", "--out", tmp_path / "bad",
                          "--conditional", "--class", "cyst", "--no-progress"),
                   "unknown class 'cyst'", "'no lesion', 'lesion'")
    assert not (tmp_path / "bad").exists()
    usage = invoke("generate", base, "--n", "2", "--class-run", "lesion", "--out", tmp_path / "x")
    assert usage.exit_code == 2 and "is not CLASS=RUN" in usage.output

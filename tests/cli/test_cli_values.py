"""Values no one checked, at the command line: a ``--config`` YAML, option values (NaN, inf,
negative, out-of-range seeds and counts), a hand-edited or corrupt run, a run of the other kind,
and split names. Each is one line on stderr naming the file or the option, never a traceback
or a wrong success."""

from __future__ import annotations

import json
import math

import click
import numpy as np
import pytest
import yaml
from PIL import Image
from safetensors.torch import load_file

from synthmed.cli import cli
from synthmed.cli import types as cli_types
from synthmed.gan import checkpoint
from synthmed.limits import MAX_IMAGES, MAX_SEED

from ..conftest import copied_run, edit_config, invoke, one_line_error

pytestmark = pytest.mark.usefixtures("one_thread")

DATA = "phantom:t1,n=16,size=32"
TINY_DCGAN = ["--size", "32", "--width", "4", "--epochs", "1", "--batch-size", "8",
              "--no-progress"]


def usage_error(result, option: str, text: str) -> None:
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option}'" in result.output and text in result.output, \
        result.output
    assert "Traceback" not in result.output


@pytest.fixture(scope="module")
def dcgan_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "dcgan"
    result = invoke("train", "dcgan", DATA, "--conditional", "--out", out, *TINY_DCGAN)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def cyclegan_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "cyclegan"
    result = invoke("train", "cyclegan", "--domain-a", "phantom:t1,n=8,size=32",
                    "--domain-b", "phantom:t2,n=8,size=32", "--out", out, "--epochs", 1,
                    "--crop", 24, "--ngf", 4, "--ndf", 4, "--blocks", 1, "--pool-size", 2,
                    "--no-progress")
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def copied(tmp_path, dcgan_run):
    return copied_run(tmp_path, dcgan_run)


# -- --config files --------------------------------------------------------------------------


@pytest.mark.parametrize("text, message", [
    ("model: [1, 2, 3]\n", "model: must be a mapping of settings (name: value), got [1, 2, 3]"),
    ("model:\n  ngf: 1e7\n", "model: ngf must be between 1 and 1024"),
    ("model:\n  lr: abc\n", "model: lr must be a finite number, got 'abc'"),
    ("train:\n  seed: -1\n", "train: seed must be between 0 and 4294967295, got -1"),
])
def test_train_cyclegan_refuses_a_bad_config_file(tmp_path, text, message):
    config = tmp_path / "cfg.yaml"
    config.write_text(text)
    out = tmp_path / "run"
    result = invoke("train", "cyclegan", "--domain-a", "phantom:t1,n=8,size=32", "--domain-b",
                    "phantom:t2,n=8,size=32", "--config", config, "--out", out, "--epochs", 1,
                    "--no-progress")
    one_line_error(result, f"{config}: {message}")
    assert not out.exists()


# -- option values -----------------------------------------------------------------------------


TRAIN_DCGAN = ["train", "dcgan", DATA, "--out", "{out}"]
TRAIN_CYCLEGAN = ["train", "cyclegan", "--domain-a", DATA, "--domain-b", DATA, "--out", "{out}"]


@pytest.mark.parametrize("command, option, value, text", [
    (TRAIN_DCGAN, "--lr-g", "nan", "'nan' is not a finite number"),
    (TRAIN_DCGAN, "--lr-g", "-1", "is not in the range x>0"),
    (TRAIN_DCGAN, "--lr-d", "inf", "'inf' is not a finite number"),
    (TRAIN_DCGAN, "--lr-d", "0", "is not in the range x>0"),
    (TRAIN_DCGAN, "--seed", "-1", f"-1 is not in the range 0<=x<={MAX_SEED}"),
    (TRAIN_DCGAN, "--seed", str(2**70), f"is not in the range 0<=x<={MAX_SEED}"),
    (TRAIN_DCGAN, "--width", "5000", "is not in the range 1<=x<=1024"),
    (TRAIN_DCGAN, "--ema", "nan", "'nan' is not a finite number"),
    (TRAIN_DCGAN, "--ema", "1", "is not in the range 0<=x<1"),
    (TRAIN_DCGAN, "--r1", "-1", "is not in the range x>=0"),
    (TRAIN_DCGAN, "--dp-epsilon", "nan", "'nan' is not a finite number"),
    (TRAIN_DCGAN, "--dp-epsilon", "inf", "'inf' is not a finite number"),
    (TRAIN_DCGAN, "--min-foreground", "nan", "'nan' is not a finite number"),
    (TRAIN_CYCLEGAN, "--lr", "nan", "'nan' is not a finite number"),
    (TRAIN_CYCLEGAN, "--lr", "-1", "is not in the range x>0"),
    (TRAIN_CYCLEGAN, "--lambda-cycle", "-1", "is not in the range x>=0"),
    (TRAIN_CYCLEGAN, "--lambda-identity", "nan", "'nan' is not a finite number"),
    (TRAIN_CYCLEGAN, "--lambda-structure", "inf", "'inf' is not a finite number"),
    (TRAIN_CYCLEGAN, "--seed", "-1", "is not in the range 0<="),
    (TRAIN_CYCLEGAN, "--ngf", "0", "is not in the range 1<=x<=1024"),
    (["generate", "{run}", "--out", "{out}"], "--n", str(10**12),
     f"is not in the range 1<=x<={MAX_IMAGES}"),
    (["generate", "{run}", "--out", "{out}", "--n", "2"], "--seed", "-1", "is not in the range"),
    (["generate", "{run}", "--out", "{out}", "--n", "2", "--privacy-filter", "--train", DATA],
     "--threshold", "nan", "'nan' is not a finite number"),
    (["generate", "{run}", "--out", "{out}", "--n", "2", "--privacy-filter", "--train", DATA],
     "--threshold", "-1", "is not in the range x>0"),
    (["generate", "{run}", "--out", "{out}", "--n", "2", "--privacy-filter", "--train", DATA],
     "--filter-percentile", "101", "is not in the range 0<=x<=100"),
    (["generate", "{run}", "--out", "{out}", "--n", "2", "--privacy-filter", "--train", DATA],
     "--max-redraws", "0", "is not in the range x>=1"),
    (["data", "phantom", "--out", "{out}"], "--seed", str(2**70), "is not in the range"),
    (["data", "phantom", "--out", "{out}"], "--lesion-fraction", "nan", "not a finite number"),
    (["evaluate", "utility", "--real", DATA, "--train-generator", "dcgan-conditional",
      "--out", "{out}"], "--generator-ema", "nan", "'nan' is not a finite number"),
    (["evaluate", "privacy", "--synthetic", DATA, "--train", DATA, "--holdout", DATA,
      "--out", "{out}"], "--seed", "-1", "is not in the range"),
    (["evaluate", "privacy", "--synthetic", "{run}", "--train", DATA, "--holdout", DATA,
      "--out", "{out}"], "--n", str(10**12), "is not in the range"),
])
def test_option_values_are_checked_before_any_work(tmp_path, command, option, value, text):
    out = tmp_path / "out"
    args = [arg.format(out=out, run=tmp_path / "run") for arg in command]
    usage_error(invoke(*args, option, value), option, text)
    assert not out.exists()


def _options(command: click.Command, path: str = "synthmed"):
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from _options(sub, f"{path} {name}")
    else:
        for param in command.params:
            yield path, param


def test_every_seed_and_float_option_uses_the_shared_checked_types():
    seeds, floats = [], []
    for path, param in _options(cli):
        if param.name == "seed":
            seeds.append(path)
            assert param.type is cli_types.SEED, f"{path} --seed: use cli.types.SEED"
        if isinstance(param.type, click.types.FloatParamType):
            floats.append(path)
            assert isinstance(param.type, cli_types.FiniteFloat), \
                f"{path} {param.opts}: a float option must refuse NaN (cli.types.FiniteFloat)"
    assert {"synthmed train dcgan", "synthmed train cyclegan", "synthmed generate",
            "synthmed data phantom", "synthmed evaluate privacy"} <= set(seeds)
    assert floats


# -- a run's own files, at the command line ------------------------------------------------------


@pytest.mark.parametrize("section, key, value, message", [
    (None, "model", None, "model: must be a mapping of settings (name: value), got null"),
    ("model", "width", "abc", "model: width must be a whole number, got 'abc'"),
    ("model", "nz", 0, "model: nz must be between 1 and 4096, got 0"),
    ("train", "seed", -1, "train: seed must be between 0 and 4294967295, got -1"),
])
def test_generate_refuses_a_corrupt_run_config(copied, tmp_path, section, key, value, message):
    edit_config(copied, section, key, value)
    result = invoke("generate", copied, "--n", 2, "--out", tmp_path / "syn", "--no-progress")
    one_line_error(result, f"{copied / 'config.yaml'}: {message}")
    assert not (tmp_path / "syn").exists()


@pytest.mark.parametrize("section, key, value, message", [
    ("model", "width", "abc", "model: width must be a whole number, got 'abc'"),
    ("model", "betas", [5, 7, 9], "model: betas must be a list of 2 finite numbers"),
])
def test_resume_refuses_a_corrupt_run_config(copied, section, key, value, message):
    edit_config(copied, section, key, value)
    result = invoke("train", "dcgan", DATA, "--out", copied, "--resume", "--epochs", 2,
                    "--no-progress")
    one_line_error(result, message)


def test_resume_refuses_a_run_config_without_a_section(copied):
    path = copied / "config.yaml"
    config = yaml.safe_load(path.read_text())
    del config["model"]
    path.write_text(yaml.safe_dump(config))
    result = invoke("train", "dcgan", DATA, "--out", copied, "--resume", "--epochs", 2,
                    "--no-progress")
    one_line_error(result, "config.yaml: has no model: section")


@pytest.mark.parametrize("change, message", [
    (lambda r: r.update(class_names=["no lesion"]),
     "class_names lists 1 class name(s) but the model has 2 classes"),
    (lambda r: r["intensity"].update(low=math.nan), "intensity.low must be a finite number"),
    (lambda r: r["intensity"].update(high=-math.inf), "intensity.high must be a finite number"),
    (lambda r: r["intensity"].update(low="abc"), "intensity.low must be a finite number, "
                                                 "got 'abc'"),
])
def test_generate_refuses_a_bad_training_data_record(copied, tmp_path, change, message):
    path = copied / "training_data.json"
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))
    result = invoke("generate", copied, "--n", 2, "--out", tmp_path / "syn", "--no-progress")
    one_line_error(result, f"{path}: {message}")


def test_generate_refuses_weights_holding_nan(copied, tmp_path):
    tensors = load_file(copied / "model.safetensors")
    tensors = {k: v.clone() for k, v in tensors.items()}
    for name, tensor in tensors.items():
        if name.startswith("generator") and tensor.is_floating_point():
            tensor.fill_(math.nan)
    checkpoint.save_weights(copied, tensors, "dcgan", 1)
    result = invoke("generate", copied, "--n", 2, "--out", tmp_path / "syn", "--no-progress")
    one_line_error(result, "model.safetensors: weights hold NaN or infinite values")
    assert not (tmp_path / "syn").exists()


def test_translate_with_a_dcgan_run_says_to_use_generate(dcgan_run, tmp_path):
    result = invoke("translate", dcgan_run, "x.nii.gz", "--direction", "a2b",
                    "--out", tmp_path / "t")
    one_line_error(result, "is a 'dcgan' run, not 'cyclegan': a DCGAN generates images: use it "
                           "with synthmed generate")


def test_generate_with_a_cyclegan_run_says_to_use_translate(cyclegan_run, tmp_path):
    result = invoke("generate", cyclegan_run, "--n", 2, "--out", tmp_path / "syn",
                    "--no-progress")
    one_line_error(result, "is a 'cyclegan' run, not 'dcgan' or 'diffusion': a CycleGAN "
                           "translates images: use it with synthmed translate")


def test_runs_trained_by_the_current_commands_load(dcgan_run, cyclegan_run):
    from synthmed.gan.run import load_run

    assert load_run(dcgan_run, kind="dcgan").class_names == ["no lesion", "lesion"]
    assert load_run(cyclegan_run, kind="cyclegan").training_data["domains"].keys() == {"a", "b"}


# -- split names -------------------------------------------------------------------------------


@pytest.fixture
def split_data(tmp_path):
    """A MedMNIST-style npz with train and test splits, and a folder of pictures (no splits)."""
    rng = np.random.default_rng(0)
    arrays = {f"{split}_{kind}": (rng.integers(0, 255, (6, 16, 16), dtype=np.uint8)
                                  if kind == "images" else rng.integers(0, 2, (6, 1)))
              for split in ("train", "test") for kind in ("images", "labels")}
    npz = tmp_path / "split.npz"
    np.savez(npz, **arrays)
    folder = tmp_path / "pictures"
    folder.mkdir()
    for k in range(6):
        Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(folder / f"{k}.png")
    return npz, folder


@pytest.mark.parametrize("option, value, where, message", [
    ("--holdout-split", "tset", "npz", "has no split 'tset' (--holdout-split): its splits are "
                                       "train, test; pass one of them, or all"),
    ("--train-split", "val", "npz", "has no split 'val' (--train-split): its splits are "
                                    "train, test"),
    ("--holdout-split", "tset", "folder", "--holdout-split 'tset' is not a split name: the data "
                                          "has no splits, so use train, val, test or all"),
])
def test_evaluate_privacy_refuses_an_unknown_split(tmp_path, split_data, option, value, where,
                                                   message):
    npz, folder = split_data
    data = npz if where == "npz" else folder
    out = tmp_path / "out"
    result = invoke("evaluate", "privacy", "--synthetic", folder, "--train", data,
                    "--holdout", data, option, value, "--out", out)
    one_line_error(result, f"{data}: {message}")
    assert not out.exists()


def test_choose_split():
    from synthmed.augment.dataset import ImageSet
    from synthmed.eval.privacy_audit import choose_split

    images = ImageSet.from_arrays(np.zeros((4, 1, 8, 8), np.float32)).with_splits(
        ["train", "train", "test", "val"])
    assert len(choose_split(images, "train", "--x", "d")) == 2
    assert len(choose_split(images, "all", "--x", "d")) == 4
    unsplit = ImageSet.from_arrays(np.zeros((3, 1, 8, 8), np.float32))
    assert len(choose_split(unsplit, "test", "--x", "d")) == 3  # no splits: every image
    assert len(choose_split(unsplit, "all", "--x", "d")) == 3

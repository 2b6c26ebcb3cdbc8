"""Configuration values no one else checks: the type of every field of a ``--config`` YAML or a
run's ``config.yaml``, the ranges of each dataclass, a run's ``training_data.json`` and its
weights. Each bad value is one ``InputError`` naming the file, the field and what it takes."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from synthmed.augment.items import ReadConfig
from synthmed.errors import InputError
from synthmed.gan import checkpoint
from synthmed.gan.config import MAX_NZ, CycleGANConfig, DCGANConfig, DPConfig, TrainConfig
from synthmed.gan.generate import GenerateConfig, generate
from synthmed.gan.run import load_run
from synthmed.gan.run_config import (
    FORMAT_VERSION,
    RunConfig,
    read_run_config,
    resolve_cyclegan_config,
    resolve_dcgan_config,
)
from synthmed.gan.train import train_dcgan
from synthmed.gan.translate import translate_volume
from synthmed.limits import MAX_SEED, MAX_WIDTH
from synthmed.settings import from_dict, to_dict, with_overrides

from ..conftest import copied_run, edit_config

pytestmark = pytest.mark.usefixtures("one_thread")


# -- from_dict: types ---------------------------------------------------------------------------


@pytest.mark.parametrize("values, message", [
    ({"width": "abc"}, "model: width must be a whole number, got 'abc'"),
    ({"width": True}, "model: width must be a whole number, got true"),  # bool is not an int
    ({"width": 2.5}, "model: width must be a whole number, got 2.5"),
    ({"width": None}, "model: width must be a whole number, got null"),
    ({"ema_decay": "abc"}, "model: ema_decay must be a finite number, got 'abc'"),
    ({"lr_g": math.nan}, "model: lr_g must be a finite number, got nan"),
    ({"lr_g": math.inf}, "model: lr_g must be a finite number, got inf"),
    ({"spectral_norm": 1}, "model: spectral_norm must be true or false, got 1"),
    ({"loss": 3}, "model: loss must be a string, got 3"),
    ({"betas": [5, 7, 9]}, "model: betas must be a list of 2 finite numbers, got [5, 7, 9]"),
    ({"betas": 0.5}, "model: betas must be a list of 2 finite numbers, got 0.5"),
    ({"betas": [0.5, "x"]}, "model: betas[1] must be a finite number, got 'x'"),
    ({"diffaugment": "color"}, "model: diffaugment must be a list of strings, got 'color'"),
    ({"diffaugment": [1]}, "model: diffaugment[0] must be a string, got 1"),
])
def test_from_dict_checks_each_value_against_its_annotation(values, message):
    with pytest.raises(InputError) as error:
        from_dict(DCGANConfig, values, "cfg.yaml")
    assert str(error.value) == f"cfg.yaml: {message}"
    assert error.value.path == "cfg.yaml"


@pytest.mark.parametrize("values", [None, 5, [1, 2, 3], "width: 3"])
def test_a_section_that_is_not_a_mapping_is_an_error(values):
    with pytest.raises(InputError, match=r"^cfg.yaml: train: must be a mapping of settings"):
        from_dict(TrainConfig, values, "cfg.yaml")


def test_from_dict_converts_what_yaml_and_json_give():
    model = from_dict(DCGANConfig, {"lr_g": 1, "betas": [0, 0.9], "diffaugment": ["color"],
                                    "width": 8.0}, "cfg.yaml")
    assert model.lr_g == 1.0 and type(model.lr_g) is float  # an int is fine for a float
    assert model.betas == (0.0, 0.9) and model.diffaugment == ("color",)  # lists -> tuples
    assert model.width == 8 and type(model.width) is int  # a whole float is fine for an int
    # PyYAML (YAML 1.1) reads an exponent without a dot as a string: taken as the number
    values = yaml.safe_load("lr_g: 2e-4\nlr_d: 1.0e-3\nnz: 1e2\n")
    assert values["lr_g"] == "2e-4"
    model = from_dict(DCGANConfig, values)
    assert (model.lr_g, model.lr_d, model.nz) == (2e-4, 1e-3, 100)
    # ... but other strings are not numbers
    with pytest.raises(InputError, match="nz must be a whole number, got '100'"):
        from_dict(DCGANConfig, {"nz": "100"})


def test_optional_literal_and_nested_fields():
    assert from_dict(TrainConfig, {"decay_epochs": None}).decay_epochs is None
    with pytest.raises(InputError, match="decay_epochs must be a whole number or null, got 'x'"):
        from_dict(TrainConfig, {"decay_epochs": "x"})
    assert from_dict(DPConfig, {"epsilon": 2, "delta": None}).epsilon == 2.0
    with pytest.raises(InputError, match="cfg: privacy: missing setting.s. epsilon"):
        from_dict(DPConfig, {}, "cfg")
    with pytest.raises(InputError, match="size must be a whole number or null, got 'abc'"):
        from_dict(ReadConfig, {"size": "abc"}, "--train-read")
    with pytest.raises(InputError, match="resize_mode must be one of resize, pad, fit"):
        from_dict(ReadConfig, {"resize_mode": "crop"}, "--train-read")
    def document(**sections):
        return {"format_version": FORMAT_VERSION, "kind": "dcgan",
                "model": {"size": 28, **sections.pop("model", {})}, "train": {}, **sections}

    run = RunConfig.from_document(document(model={"width": 8}, privacy={"epsilon": 1}), "f")
    assert run.model.width == 8 and run.privacy == DPConfig(1.0)
    assert RunConfig.from_document(run.to_document(), "f") == run
    with pytest.raises(InputError, match="^f: privacy: epsilon must be a finite number, got 'x'"):
        RunConfig.from_document(document(privacy={"epsilon": "x"}), "f")
    with pytest.raises(InputError, match="^f: model: nz must be between 1"):
        RunConfig.from_document(document(model={"nz": 0}), "f")
    with pytest.raises(InputError, match="^f: model: size must be a whole number, got null"):
        RunConfig.from_document(document(model={"size": None}), "f")  # a run's size is fixed


def test_unknown_settings_are_listed_even_when_keys_are_not_strings():
    with pytest.raises(InputError, match="model: unknown setting.s. 1, depth; known: "):
        from_dict(DCGANConfig, {"depth": 3, 1: 2}, "cfg.yaml")


# -- ranges (each dataclass's own checks; the file is named when read from one) ---------------


@pytest.mark.parametrize("cls, values, message", [
    (DCGANConfig, {"nz": 0}, f"nz must be between 1 and {MAX_NZ}, got 0"),
    (DCGANConfig, {"nz": 10**6}, f"nz must be between 1 and {MAX_NZ}"),
    (DCGANConfig, {"width": -3}, "width must be between 1 and 1024 (wider networks do not "
                                 "fit in memory), got -3"),
    (DCGANConfig, {"width": 10**7}, "width must be between 1 and 1024 (wider networks do not "
                                    "fit in memory), got 10000000"),
    (DCGANConfig, {"num_classes": -1}, "num_classes must be between 0"),
    (DCGANConfig, {"lr_g": -1}, "lr_g must be positive, got -1.0"),
    (DCGANConfig, {"lr_d": 0}, "lr_d must be positive, got 0.0"),
    (DCGANConfig, {"betas": [5, 7]}, "betas must be two numbers in [0, 1), got [5.0, 7.0]"),
    (DCGANConfig, {"adam_eps": 0}, "adam_eps must be positive"),
    (DCGANConfig, {"d_norm": "layer"}, "d_norm must be batch or none, got 'layer'"),
    (DCGANConfig, {"upsample": "bicubic"}, "upsample must be convtranspose or resize"),
    (TrainConfig, {"epochs": 0}, "epochs must be at least 1, got 0"),
    (TrainConfig, {"batch_size": -2}, "batch_size must be at least 1, got -2"),
    (TrainConfig, {"seed": -1}, f"seed must be between 0 and {MAX_SEED}, got -1"),
    (TrainConfig, {"seed": 2**70}, f"seed must be between 0 and {MAX_SEED}"),
    (TrainConfig, {"preview": 0}, "preview must be between 1"),
    (TrainConfig, {"decay_epochs": -1}, "decay_epochs must be between 0 and the 50 epochs"),
    (TrainConfig, {"decay_epochs": 51}, "decay_epochs must be between 0 and the 50 epochs"),
    (CycleGANConfig, {"ngf": 5000}, f"ngf must be between 1 and {MAX_WIDTH}"),
    (CycleGANConfig, {"d_layers": 10**9}, "d_layers must be between 1 and 8"),
    (CycleGANConfig, {"lambda_cycle": math.nan}, "lambda_cycle must be a finite number"),
    (CycleGANConfig, {"lr": math.inf}, "lr must be a finite number, got inf"),
])
def test_ranges_are_checked_and_name_the_file(cls, values, message):
    with pytest.raises(InputError) as error:
        from_dict(cls, values, "cfg.yaml")
    assert message in str(error.value) and str(error.value).startswith("cfg.yaml: ")
    with pytest.raises(InputError, match="^" + message.split(" must")[0]):  # no file: no path
        cls(**values)


def test_options_overriding_a_config_are_checked_too():
    with pytest.raises(InputError, match="lr_g must be a finite number, got nan"):
        with_overrides(DCGANConfig(), lr_g=math.nan)
    with pytest.raises(InputError, match="lr_g must be positive"):
        with_overrides(DCGANConfig(), lr_g=-1.0)
    with pytest.raises(InputError, match="seed must be between 0 and 4294967295"):
        with_overrides(TrainConfig(), seed=2**32)
    assert with_overrides(TrainConfig(), seed=MAX_SEED).seed == MAX_SEED


# -- --config YAML files (train dcgan / train cyclegan) -----------------------------------------


RESOLVERS = {"dcgan": lambda path: resolve_dcgan_config("dcgan", path),
             "cyclegan": resolve_cyclegan_config}


@pytest.mark.parametrize("kind, text, message", [
    ("dcgan", "model: null\n", "model: must be a mapping of settings (name: value), got null"),
    ("dcgan", "model: 5\n", "model: must be a mapping of settings (name: value), got 5"),
    ("dcgan", "model: [1, 2, 3]\n",
     "model: must be a mapping of settings (name: value), got [1, 2, 3]"),
    ("dcgan", "train: abc\n", "train: must be a mapping of settings (name: value), got 'abc'"),
    ("dcgan", "model:\n  width: -3\n", "model: width must be between 1 and 1024"),
    ("dcgan", "model:\n  width: abc\n", "model: width must be a whole number, got 'abc'"),
    ("dcgan", "model:\n  width: 1e7\n",
     "model: width must be between 1 and 1024 (wider networks do not fit in memory), got 10000000"),
    ("dcgan", "model:\n  ema_decay: abc\n", "model: ema_decay must be a finite number, got 'abc'"),
    ("dcgan", "model:\n  betas: [5, 7, 9]\n", "model: betas must be a list of 2 finite numbers"),
    ("dcgan", "model:\n  nz: 0\n", "model: nz must be between 1 and 4096, got 0"),
    ("dcgan", "model:\n  lr_g: .nan\n", "model: lr_g must be a finite number, got nan"),
    ("dcgan", "train:\n  epochs: abc\n", "train: epochs must be a whole number, got 'abc'"),
    ("dcgan", "train:\n  seed: -1\n", "train: seed must be between 0 and 4294967295, got -1"),
    ("dcgan", "modle:\n  width: 8\n",
     "unknown section(s) modle; a config file holds model: and train:"),
    ("cyclegan", "model: null\n", "model: must be a mapping of settings"),
    ("cyclegan", "model:\n  ngf: abc\n", "model: ngf must be a whole number, got 'abc'"),
    ("cyclegan", "model:\n  lambda_cycle: -1\n", "must not be negative"),
    ("cyclegan", "model:\n  betas: [5, 7, 9]\n", "model: betas must be a list of 2 finite numbers"),
    ("cyclegan", "train:\n  epochs: abc\n", "train: epochs must be a whole number, got 'abc'"),
])
def test_bad_config_files(tmp_path, kind, text, message):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as error:
        RESOLVERS[kind](path)
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value)


def test_a_runs_own_config_yaml_is_a_fine_config_file(trained):
    config = resolve_dcgan_config("dcgan", trained / "config.yaml")
    model, train = config.model, config.train
    assert model.width == 4 and model.num_classes == 2 and train.epochs == 1


def test_a_config_asking_for_privacy_never_trains_openly(tmp_path):
    path = tmp_path / "private.yaml"
    path.write_text("privacy: {epsilon: 1.0}\nmodel: {width: 8}\n")
    with pytest.raises(InputError, match="asks for differential privacy.*--dp-epsilon"):
        resolve_dcgan_config("dcgan", path)
    model = resolve_dcgan_config("dcgan", path, privacy=DPConfig(1.0)).model  # --dp-epsilon
    assert model.width == 8 and model.d_norm == "none"


def _escape(text: str) -> str:
    return re.escape(text)


# -- a run's own files: config.yaml, training_data.json, weights ----------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run trained by the current code: a conditional DCGAN with EMA, one epoch."""
    run = tmp_path_factory.mktemp("trained") / "run"
    config = RunConfig("dcgan", DCGANConfig(width=4, ema_decay=0.5),
                       TrainConfig(epochs=1, batch_size=8, preview=4))
    train_dcgan("phantom:t1,n=16,size=28", run, config, conditional=True, progress=False)
    return run


@pytest.fixture
def copied(tmp_path, trained):
    return copied_run(tmp_path, trained)


def test_a_run_trained_by_the_current_code_loads(trained):
    loaded = load_run(trained)
    assert loaded.class_names == ["no lesion", "lesion"] and loaded.epoch == 1
    saved = yaml.safe_load((trained / "config.yaml").read_text())
    assert to_dict(loaded.config.model) == saved["model"] and saved["model"]["size"] == 28
    assert saved["format_version"] == FORMAT_VERSION and saved["train"]["decay_epochs"] == 0
    assert saved["data"]["source"] == "phantom:t1,n=16,size=28"
    assert read_run_config(trained, kind="dcgan").train.epochs == 1
    assert torch.isfinite(loaded.sample(2, torch.tensor([0, 1]))).all()


@pytest.mark.parametrize("section, key, value, message", [
    (None, "model", None, "model: must be a mapping of settings (name: value), got null"),
    (None, "model", 5, "model: must be a mapping of settings (name: value), got 5"),
    (None, "train", [1, 2, 3], "train: must be a mapping of settings (name: value), got [1, 2, 3]"),
    ("model", "width", "abc", "model: width must be a whole number, got 'abc'"),
    ("model", "width", -3, "model: width must be between 1 and 1024"),
    ("model", "nz", 0, "model: nz must be between 1 and 4096, got 0"),
    ("model", "ema_decay", "abc", "model: ema_decay must be a finite number, got 'abc'"),
    ("model", "betas", [5, 7, 9], "model: betas must be a list of 2 finite numbers"),
    ("model", "lr_g", float("nan"), "model: lr_g must be a finite number, got nan"),
    ("train", "epochs", "abc", "train: epochs must be a whole number, got 'abc'"),
    ("train", "seed", -1, "train: seed must be between 0 and 4294967295, got -1"),
    (None, "privacy", {"epsilon": "x"}, "privacy: epsilon must be a finite number, got 'x'"),
    (None, "data", "x", "data: must be a mapping"),
    ("data", "split", "tset", "data: split must be one of train, all, got 'tset'"),
    ("data", "read", {"slice_axis": "abc"}, "data: read: slice_axis must be a whole number"),
])
def test_a_corrupt_run_config_fails_at_load_with_file_and_field(copied, section, key, value,
                                                                message):
    edit_config(copied, section, key, value)
    with pytest.raises(InputError) as error:
        load_run(copied)
    assert str(error.value).startswith(f"{copied / 'config.yaml'}: "), str(error.value)
    assert message in str(error.value)
    with pytest.raises(InputError, match=_escape(message)):
        read_run_config(copied)


def test_a_run_config_without_a_section(copied):
    path = copied / "config.yaml"
    config = yaml.safe_load(path.read_text())
    del config["train"]
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(InputError, match="config.yaml: has no train: section"):
        load_run(copied)


def test_a_run_of_the_other_kind_says_what_it_is_for(copied):
    with pytest.raises(InputError, match="is a 'dcgan' run, not 'cyclegan': a DCGAN generates "
                                         "images: use it with synthmed generate"):
        load_run(copied, kind="cyclegan")
    edit_config(copied, None, "kind", "cyclegan")
    with pytest.raises(InputError, match="is a 'cyclegan' run, not 'dcgan': a CycleGAN "
                                         "translates images: use it with synthmed translate"):
        read_run_config(copied, kind="dcgan")


def edit_record(run, change) -> None:
    path = run / "training_data.json"
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))  # allow_nan: writes NaN / Infinity as Python does


@pytest.mark.parametrize("change, message", [
    (lambda r: r.update(class_names=["no lesion"]),
     "class_names lists 1 class name(s) but the model has 2 classes"),
    (lambda r: r.pop("class_names"), "class_names lists no class name(s) but the model has 2"),
    (lambda r: r.update(class_names=["a", 3]), "class_names must be a list of strings"),
    (lambda r: r["intensity"].update(low=math.nan),
     "intensity.low must be a finite number, got nan"),
    (lambda r: r["intensity"].update(high=math.inf), "intensity.high must be a finite number, "
                                                     "got inf"),
    (lambda r: r["intensity"].update(high="abc"), "intensity.high must be a finite number, "
                                                  "got 'abc'"),
    (lambda r: r["intensity"].update(low=None), "intensity.low must be a finite number, got null"),
    (lambda r: r.update(intensity=[0, 1]), "intensity must be a mapping"),
    (lambda r: r["class_counts"].update(lesion="many"), "class_counts.lesion must be a whole "
                                                        "number >= 0, got 'many'"),
    (lambda r: r.update(class_counts={}), "class_counts must count images of the classes"),
    (lambda r: r.update(images="abc"), "images must be a whole number >= 0, got 'abc'"),
    (lambda r: r.update(image_hashes="abc"), "image_hashes must be a list of strings"),
    (lambda r: r.update(bit_depths=["8"]), "bit_depths[0] must be a whole number >= 0"),
    (lambda r: r.update(differential_privacy={"epsilon": "x", "delta": 1e-5}),
     "differential_privacy.epsilon must be a finite number, got 'x'"),
])
def test_a_bad_training_data_record_fails_at_load(copied, change, message):
    edit_record(copied, change)
    with pytest.raises(InputError) as error:
        load_run(copied)
    assert str(error.value).startswith(f"{copied / 'training_data.json'}: "), str(error.value)
    assert message in str(error.value)


def test_weights_holding_nan_or_inf_are_refused(copied):
    tensors = load_file(copied / "model.safetensors")
    name = next(k for k in sorted(tensors) if k.startswith("generator") and "weight" in k)
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] = math.nan
    checkpoint.save_weights(copied, tensors, "dcgan", 1)  # a valid checksum: only NaN is wrong
    with pytest.raises(InputError, match=f"model.safetensors: weights hold NaN or infinite "
                                         f"values \\({_escape(name)}\\)"):
        load_run(copied)
    tensors[name].view(-1)[0] = math.inf
    checkpoint.save_weights(copied, tensors, "dcgan", 1)
    with pytest.raises(InputError, match="weights hold NaN or infinite values"):
        load_run(copied)


def test_evaluation_configs_refuse_nan_inf_and_out_of_range_seeds():
    from synthmed.eval.privacy_audit import PrivacyConfig
    from synthmed.eval.utility import UtilityConfig

    with pytest.raises(InputError, match=f"seed must be between 0 and {MAX_SEED}, got -1"):
        PrivacyConfig(seed=-1)
    with pytest.raises(InputError, match="percentile must be a finite number, got nan"):
        PrivacyConfig(percentile=math.nan)
    with pytest.raises(InputError, match="ratios must be positive finite numbers"):
        UtilityConfig(ratios=(math.inf,))
    with pytest.raises(InputError, match="fractions must be in"):
        UtilityConfig(fractions=(math.nan,))


def test_read_training_data_checks_the_record_without_a_model(copied):
    from synthmed.gan.training_record import read_training_data

    assert read_training_data(copied)["class_names"] == ["no lesion", "lesion"]
    edit_record(copied, lambda r: r.update(fingerprint=5))
    with pytest.raises(InputError, match="training_data.json: fingerprint must be a string, got 5"):
        read_training_data(copied)


# -- run directories written by earlier versions ---------------------------------------------------

FORMAT_1 = Path(__file__).parents[1] / "data" / "format_v1"  # written by synthmed at f3c2a00


def test_a_format_1_dcgan_run_still_loads_and_generates(tmp_path):
    run = load_run(FORMAT_1 / "dcgan", kind="dcgan")
    assert yaml.safe_load((FORMAT_1 / "dcgan" / "config.yaml").read_text())["format_version"] == 1
    assert run.config.train.decay_epochs == 0  # lr_decay_start: null, a constant rate
    assert (run.config.model.size, run.config.model.num_classes) == (28, 2)
    generate(run, tmp_path / "syn", GenerateConfig(n=4, format="npz"), progress=False)
    with np.load(tmp_path / "syn" / "images.npz") as archive:
        assert archive["train_images"].shape == (4, 28, 28)


def test_a_format_1_cyclegan_run_still_loads_and_translates():
    run = load_run(FORMAT_1 / "cyclegan", kind="cyclegan")
    assert run.config.train.decay_epochs == 1  # 2 epochs, lr_decay_start 1: the last one decays
    assert len(run.config.data.val_image_hashes) == 16 and run.config.data.split == "train"
    volume = np.random.default_rng(0).uniform(0, 1000, (32, 32, 8)).astype(np.float32)
    translated, slices = translate_volume(run, volume, "a2b")
    assert translated.shape == volume.shape and slices > 0 and np.isfinite(translated).all()


def test_a_format_1_lr_decay_start_out_of_range_is_named(tmp_path):
    shutil.copytree(FORMAT_1 / "cyclegan", tmp_path / "run")
    edit_config(tmp_path / "run", "train", "lr_decay_start", 7)
    with pytest.raises(InputError, match="config.yaml: train: lr_decay_start must be null or "
                                         "between 0 and the epochs, got 7"):
        load_run(tmp_path / "run")

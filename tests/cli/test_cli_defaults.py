"""One home per default: the command line shows the config dataclasses' defaults (through
``synthmed.cli.base.config_option``) and the library's functions take theirs from the same
constants, so a default changed in one place changes everywhere."""

from __future__ import annotations

import inspect

import click
import pytest

from synthmed.augment.distances import NEAR_COPY_PERCENTILE, near_copy_threshold
from synthmed.augment.phantom import PhantomConfig
from synthmed.cli import cli
from synthmed.cli.base import config_option, shown
from synthmed.eval.classifier import ClassifierConfig
from synthmed.eval.generators import GeneratorRecipe
from synthmed.eval.membership import distance_to_closest_record, membership_attack
from synthmed.eval.privacy_audit import PrivacyConfig
from synthmed.eval.stats import N_BOOT, bootstrap_ci
from synthmed.eval.translation import evaluate_run
from synthmed.eval.translation_unpaired import evaluate_unpaired
from synthmed.eval.utility import UtilityConfig
from synthmed.gan.config import CycleGANConfig, DPConfig, TrainConfig
from synthmed.gan.cyclegan import TRANSLATE_BATCH, CycleGAN
from synthmed.gan.near_copy import PrivacyFilterConfig
from synthmed.gan.translate import TranslateConfig, translate_images, translate_volume

from ..conftest import invoke


def _param(path: str, name: str) -> click.Parameter:
    command = cli
    for part in path.split():
        command = command.commands[part]
    return next(p for p in command.params if p.name == name)


def _default(function, name: str):
    return inspect.signature(function).parameters[name].default


@pytest.mark.parametrize("value, text", [
    (2e-4, "2e-4"), (1e-5, "1e-5"), (10.0, "10"), (0.5, "0.5"), (1.0, "1"), (64, "64"),
    (True, "on"), (False, "off"), ((0.1, 0.25, 1.0), "0.1,0.25,1"), ((), ""), ("png", "png"),
])
def test_shown_writes_a_default_as_the_command_line_does(value, text):
    assert shown(value) == text


def test_config_option_takes_its_default_from_the_dataclass():
    @click.command()
    @config_option("--lr", config=CycleGANConfig, field="lr", help="Adam learning rate")
    @config_option("--seeds", config=UtilityConfig, field="seeds", override=False)
    @config_option("--fractions", config=UtilityConfig, field="fractions", override=False)
    def command(lr, seeds, fractions):
        click.echo(f"{lr} {seeds} {fractions}")

    lr, seeds, fractions = command.params
    assert lr.default is None and lr.help == "Adam learning rate (default 2e-4)."
    assert (seeds.default, seeds.show_default) == (UtilityConfig.seeds, True)
    assert fractions.default == "0.1,0.25,1"  # the text the option parses


@pytest.mark.parametrize("path, name, config, field", [
    ("data phantom", "n", PhantomConfig, "n"),
    ("evaluate utility", "steps", ClassifierConfig, "steps"),
    ("evaluate utility", "batch_size", ClassifierConfig, "batch_size"),
    ("evaluate utility", "generator_steps", GeneratorRecipe, "steps"),
    ("evaluate utility", "seeds", UtilityConfig, "seeds"),
    ("evaluate privacy", "n_boot", PrivacyConfig, "n_boot"),
    ("evaluate translation", "batch_size", TranslateConfig, "batch_size"),
    ("translate", "batch_size", TranslateConfig, "batch_size"),
])
def test_option_defaults_are_the_dataclass_defaults(path, name, config, field):
    assert _param(path, name).default == getattr(config, field)


def test_train_help_shows_each_familys_defaults():
    cyclegan = invoke("train", "cyclegan", "--help").output
    loop, model = TrainConfig.cyclegan(), CycleGANConfig()
    for text in (f"Epochs in all (default {loop.epochs})", f"(default {loop.batch_size})",
                 f"Generator width (default {model.ngf})", f"(default {model.pool_size})"):
        assert text in " ".join(cyclegan.split()), text
    dcgan = " ".join(invoke("train", "dcgan", "--help").output.split())
    assert f"Epochs (default {TrainConfig.epochs})" in dcgan
    assert f"clipping norm (default {DPConfig.max_grad_norm:g})" in dcgan
    assert _param("train dcgan", "epochs").default is None  # a --config file's value stands


def test_the_library_takes_its_defaults_from_one_constant():
    for function in (translate_images, translate_volume, CycleGAN.translate, evaluate_run,
                     evaluate_unpaired):
        assert _default(function, "batch_size") == TRANSLATE_BATCH, function
    assert TranslateConfig().batch_size == TRANSLATE_BATCH
    assert PrivacyConfig().percentile == PrivacyFilterConfig("x").percentile \
        == _default(near_copy_threshold, "percentile") \
        == _default(distance_to_closest_record, "percentile") == NEAR_COPY_PERCENTILE
    assert PrivacyConfig().n_boot == _default(bootstrap_ci, "n_boot") \
        == _default(membership_attack, "n_boot") == N_BOOT

"""Starting a generator from another run's weights (``--init-from``, transfer): what is
copied, what starts afresh, what is refused, and what the run records."""

from __future__ import annotations

import pytest
import torch
import yaml

from synthmed.augment.phantom import PhantomConfig, make_phantom
from synthmed.errors import InputError
from synthmed.gan.config import DCGANConfig, DiffusionConfig
from synthmed.gan.dcgan import DCGAN
from synthmed.gan.diffusion import DiffusionModel
from synthmed.gan.run import load_run
from synthmed.gan.run_config import DataConfig, resolve_dcgan_config
from synthmed.gan.train import train_dcgan

from ..conftest import invoke, one_line_error

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL_DATA = dict(size=28, width=4, diffaugment=("cutout",), ada_target=0.6,
                  transition_steps=(1, 2))


def seeded_dcgan(seed: int, **options) -> DCGAN:
    torch.manual_seed(seed)
    return DCGAN(DCGANConfig(**{**SMALL_DATA, "num_classes": 2, **options}))


def test_the_weights_are_copied_and_the_run_progress_starts_afresh(tmp_path):
    source, target = seeded_dcgan(0), seeded_dcgan(1)
    source.steps_done.fill_(7)
    source.augment_probability.fill_(0.3)
    target.start_from(source, tmp_path)
    for name, tensor in target.state_dict().items():
        if name in DCGAN.progress_buffers:
            assert tensor.item() == 0, name
        else:
            torch.testing.assert_close(tensor, source.state_dict()[name], msg=name)
    assert target.conditioning_strength == 0.0  # the transition runs again from step 0


def test_another_class_count_keeps_only_the_class_embeddings_fresh(tmp_path):
    source, target = seeded_dcgan(0, num_classes=4), seeded_dcgan(1)
    fresh = {name: tensor.clone() for name, tensor in target.state_dict().items()}
    target.start_from(source, tmp_path)
    for name, tensor in target.state_dict().items():
        expected = (fresh if "embedding" in name or name in DCGAN.progress_buffers
                    else source.state_dict())[name]
        torch.testing.assert_close(tensor, expected, msg=name)
    assert any("embedding" in name for name in fresh)


def test_a_conditional_model_takes_the_noise_weights_of_an_unconditional_one(tmp_path):
    source = seeded_dcgan(0, num_classes=0, transition_steps=(0, 0), ema_decay=0.9)
    target = seeded_dcgan(1, ema_decay=0.9)
    fresh = {name: tensor.clone() for name, tensor in target.state_dict().items()}
    target.start_from(source, tmp_path)
    mine, theirs = target.state_dict(), source.state_dict()
    nz = source.config.nz
    for first in ("generator.project.0.weight", "ema.module.project.0.weight"):
        # (out, noise + label): the label columns are new
        torch.testing.assert_close(mine[first][:, :nz], theirs[first])
        torch.testing.assert_close(mine[first][:, nz:], fresh[first][:, nz:])
        assert mine[first].shape[1] > nz
    for name in set(mine) - set(theirs) - set(DCGAN.progress_buffers):
        assert "embedding" in name
        torch.testing.assert_close(mine[name], fresh[name])
    # at strength 0 (the transition's start) it generates what the source generates
    z = torch.randn(4, nz, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(target.generate(z, torch.tensor([0, 1, 0, 1])),
                               source.generate(z))


@pytest.mark.parametrize("source, target, name", [
    (lambda: seeded_dcgan(0, num_classes=4), lambda: seeded_dcgan(1, num_classes=0),
     "generator."),
    (lambda: seeded_dcgan(0, width=8), lambda: seeded_dcgan(1), "generator."),
    (lambda: seeded_dcgan(0), lambda: seeded_dcgan(1, channels=3), "generator."),
    (lambda: DiffusionModel(DiffusionConfig(size=32, widths=(8, 8), attention=(False, False),
                                            norm_groups=4)),
     lambda: DiffusionModel(DiffusionConfig(size=32, widths=(8, 16), attention=(False, False),
                                            norm_groups=4)), "unet."),
])
def test_weights_of_another_shape_are_refused_by_name(tmp_path, source, target, name):
    with pytest.raises(InputError, match=f"its weights do not fit this model: {name}") as error:
        target().start_from(source(), tmp_path / "source-run")
    assert str(tmp_path / "source-run") in str(error.value)


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(PhantomConfig(n=16, size=28))[0]


def train(data, out, epochs=1, lr=2e-4, **data_options):
    config = resolve_dcgan_config(model_overrides={**SMALL_DATA, "lr_g": lr, "lr_d": lr},
                                  train_overrides={"epochs": epochs, "batch_size": 8,
                                                   "preview": 4},
                                  data=DataConfig(split="all", **data_options))
    return train_dcgan(data, out, config, conditional=True, progress=False)


@pytest.fixture(scope="module")
def source_run(tmp_path_factory, phantom):
    out = tmp_path_factory.mktemp("transfer") / "source"
    train(phantom, out, epochs=2)
    return out


def test_a_run_starts_from_the_source_and_records_it(tmp_path, phantom, source_run):
    out = tmp_path / "tuned"
    train(phantom, out, lr=1e-12, init_from=str(source_run))  # learns nothing: stays there
    source, tuned = load_run(source_run), load_run(out)
    for name, tensor in tuned.model.generator.named_parameters():
        torch.testing.assert_close(tensor, dict(source.model.generator.named_parameters())[name],
                                   atol=1e-6, rtol=0, msg=name)
    data = yaml.safe_load((out / "config.yaml").read_text())["data"]
    assert data["init_from"] == str(source_run)
    assert data["init_fingerprint"] == source.fingerprint
    scratch = tmp_path / "scratch"  # the same seed from scratch: far from the source
    train(phantom, scratch, lr=1e-12)
    assert not torch.allclose(next(load_run(scratch).model.generator.parameters()),
                              next(source.model.generator.parameters()), atol=1e-4)


def test_a_restart_refuses_a_source_whose_weights_changed(tmp_path, phantom, source_run):
    out = tmp_path / "tuned"
    config = resolve_dcgan_config(model_overrides=SMALL_DATA,
                                  train_overrides={"epochs": 1, "batch_size": 8},
                                  data=DataConfig(split="all", init_from=str(source_run),
                                                  init_fingerprint="0" * 64))
    with pytest.raises(InputError, match="holds other weights than when this run started"):
        train_dcgan(phantom, out, config, conditional=True, progress=False)
    assert not out.exists()
    weights = (source_run / "model.safetensors").read_bytes()
    with pytest.raises(InputError, match="is the input"):  # the API never trains into it
        train(phantom, source_run, init_from=str(source_run))
    assert (source_run / "model.safetensors").read_bytes() == weights


def test_the_cli_trains_from_a_run_and_refuses_bad_sources(tmp_path, source_run):
    data = "phantom:n=16,size=28"
    common = ("--conditional", "--width", "4", "--epochs", "1", "--batch-size", "8",
              "--no-progress")
    result = invoke("train", "dcgan", data, "--out", tmp_path / "tuned", "--init-from",
                    source_run, *common)
    assert result.exit_code == 0, result.output
    recorded = yaml.safe_load((tmp_path / "tuned" / "config.yaml").read_text())["data"]
    assert recorded["init_from"] == str(source_run)

    missing = tmp_path / "no-such-run"
    result = invoke("train", "dcgan", data, "--out", tmp_path / "a", "--init-from", missing,
                    *common)
    one_line_error(result, str(missing))
    result = invoke("train", "dcgan", data, "--out", tmp_path / "b", "--init-from", source_run,
                    *common[:2], "8", *common[3:])
    one_line_error(result, str(source_run), "its weights do not fit this model")
    result = invoke("train", "dcgan", data, "--out", source_run, "--init-from", source_run,
                    *common)
    one_line_error(result, str(source_run))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert load_run(source_run).epoch == 2  # the source run is untouched


def test_the_harness_recipe_passes_its_source_to_every_generator(tmp_path, phantom, source_run):
    from synthmed.eval.generators import GeneratorRecipe, SubsetGenerators
    from synthmed.eval.utility_report import _describe_generator

    recipe = GeneratorRecipe(steps=2, width=4, batch_size=8, diffaugment=("cutout",),
                             ada_target=0.6, transition_steps=(1, 2), precision="fp32",
                             init_from=str(source_run))
    generators = SubsetGenerators(recipe, tmp_path)
    run_dir = generators.train(phantom)
    assert load_run(run_dir).config.data.init_from == str(source_run)
    for family in ("dcgan", "diffusion"):  # the report names the source
        described = _describe_generator(SubsetGenerators(recipe, tmp_path, family).describe())
        assert f"starting from the weights of the run `{source_run}`" in described


def test_the_harness_checks_its_generator_source_before_any_work(tmp_path, source_run):
    missing, out = tmp_path / "no-such-run", tmp_path / "utility"
    base = ("evaluate", "utility", "--real", "phantom:n=16,size=28", "--out", out)
    result = invoke(*base, "--train-generator", "dcgan-conditional", "--generator-init", missing)
    one_line_error(result, str(missing))
    result = invoke(*base, "--train-generator", "diffusion-conditional", "--generator-init",
                    source_run)
    one_line_error(result, str(source_run))  # a DCGAN run cannot start a diffusion model
    result = invoke(*base, "--generator", source_run, "--generator-init", source_run)
    assert result.exit_code == 2 and "--generator-init" in result.output
    assert not out.exists()

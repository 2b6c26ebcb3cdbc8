"""Security: loading a run directory never unpickles code, ``--root`` confines the files a
manifest, folder or glob names, and exports never write outside their folder."""

from __future__ import annotations

import os
import pathlib
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import Result
from PIL import Image

from synthmed.augment.dataset import ImageSet
from synthmed.augment.export import EXPORT_FORMATS, export_imageset
from synthmed.augment.items import ReadConfig
from synthmed.augment.readers import read_images
from synthmed.errors import InputError
from synthmed.gan.run import load_run

from ..conftest import invoke, one_line_error

pytestmark = pytest.mark.usefixtures("one_thread")

DATA = "phantom:t1,n=16"


# -- run directories never unpickle code -----------------------------------------------------


class _Touch:
    """A pickle that creates ``marker`` when an unsafe loader unpickles it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def plant(path: Path, marker: Path, writer: str) -> None:
    """Replace ``path`` with a malicious pickle written by plain ``pickle`` or ``torch.save``."""
    path.unlink()
    if writer == "pickle":
        path.write_bytes(pickle.dumps(_Touch(marker)))
    else:
        torch.save({"model": _Touch(marker)}, path)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A real run directory of the tiniest DCGAN (28 px, width 4), trained by the CLI."""
    run = tmp_path_factory.mktemp("security") / "run"
    result = invoke("train", "dcgan", DATA, "--size", 28, "--width", 4, "--batch-size", 8,
                    "--epochs", 1, "--out", run, "--no-progress")
    assert result.exit_code == 0, result.output
    return run


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_run, tmp_path / "run"))


def resume(run: Path) -> Result:
    return invoke("train", "dcgan", DATA, "--out", run, "--resume", "--epochs", 2,
                  "--no-progress")


def generate(run: Path, out: Path) -> Result:
    return invoke("generate", run, "--out", out, "--n", 2, "--no-progress")


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_the_planted_pickle_is_live(tmp_path, writer):
    """An unsafe loader runs the payload: the tests below would notice one."""
    marker, path = tmp_path / "ran", tmp_path / "payload"
    path.touch()
    plant(path, marker, writer)
    if writer == "pickle":
        pickle.loads(path.read_bytes())
    else:
        torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_pickled_weights_are_refused_without_running(run_copy, tmp_path, writer):
    marker = tmp_path / "ran"
    plant(run_copy / "model.safetensors", marker, writer)
    with pytest.raises(InputError, match="model.safetensors: is not a readable safetensors"):
        load_run(run_copy)
    one_line_error(generate(run_copy, tmp_path / "out"), "is not a readable safetensors file")
    assert not (tmp_path / "out").exists()
    # resuming needs only the trainer state; it writes fresh weights over the planted ones
    assert resume(run_copy).exit_code == 0
    assert load_run(run_copy).epoch == 2
    assert not marker.exists()


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_pickled_trainer_state_is_refused_without_running(run_copy, tmp_path, writer):
    marker = tmp_path / "ran"
    plant(run_copy / "trainer_state.pt", marker, writer)
    one_line_error(resume(run_copy), "trainer_state.pt: cannot be loaded safely")
    # sampling needs only the weights: the planted state is never opened
    assert load_run(run_copy).epoch == 1
    assert generate(run_copy, tmp_path / "out").exit_code == 0
    assert not marker.exists()


def test_a_python_tag_in_config_yaml_is_refused_without_running(run_copy, tmp_path):
    tag = "!!python/object/apply:os.mkdir [{}]"
    control = tmp_path / "control"
    yaml.unsafe_load(tag.format(control))
    assert control.exists()  # the payload is live
    marker = tmp_path / "ran"
    config = run_copy / "config.yaml"
    config.write_text(config.read_text().replace("kind: dcgan", "kind: " + tag.format(marker)))
    with pytest.raises(InputError, match="config.yaml: is not valid YAML"):
        load_run(run_copy)
    one_line_error(generate(run_copy, tmp_path / "out"), "config.yaml: is not valid YAML")
    one_line_error(resume(run_copy), "config.yaml: is not valid YAML")
    assert not marker.exists()


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", "\udcff"])
def test_an_unreadable_training_data_record_is_one_line(run_copy, tmp_path, text):
    (run_copy / "training_data.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    one_line_error(generate(run_copy, tmp_path / "out"), "training_data.json: is not")


@pytest.mark.parametrize("planted, writer, command, message", [
    ("model.safetensors", "torch.save", ["generate", "{run}", "--out", "{out}", "--n", "2"],
     "model.safetensors: is not a readable safetensors file"),
    ("trainer_state.pt", "pickle", ["train", "dcgan", DATA, "--out", "{run}", "--resume"],
     "trainer_state.pt: cannot be loaded safely"),
])
def test_the_installed_command_refuses_a_pickle_in_one_line(run_copy, tmp_path, planted,
                                                            writer, command, message):
    """The real entry point, in a fresh process: exit status 1, one line, no traceback."""
    marker = tmp_path / "ran"
    plant(run_copy / planted, marker, writer)
    args = [arg.format(run=run_copy, out=tmp_path / "out") for arg in command]
    process = subprocess.run([sys.executable, "-m", "synthmed.cli", *args, "--no-progress"],
                             capture_output=True, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert process.returncode == 1
    assert process.stdout == "" and len(process.stderr.strip().splitlines()) == 1
    assert message in process.stderr and "\x1b" not in process.stderr  # no terminal codes
    assert "Traceback" not in process.stderr and not marker.exists()


# -- --root confines what a manifest, folder or glob names -----------------------------------


def write_png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.arange(0, 160, 10, np.uint8).reshape(4, 4)).save(path)


@pytest.fixture
def tree(tmp_path) -> Path:
    """``root/data/{inside.png, link-in.png -> inside.png, link-out.png -> ../../outside}``
    and ``outside/secret.png``."""
    write_png(tmp_path / "root" / "data" / "inside.png")
    write_png(tmp_path / "outside" / "secret.png")
    data = tmp_path / "root" / "data"
    (data / "link-in.png").symlink_to(data / "inside.png")
    (data / "link-out.png").symlink_to(tmp_path / "outside" / "secret.png")
    return tmp_path


def manifest(tree: Path, entry: str) -> Path:
    path = tree / "root" / "data" / "manifest.csv"
    path.write_text(f"path,label\n{entry.format(tree=tree)},0\n")
    return path


OUTSIDE_ENTRIES = ["../../outside/secret.png", "{tree}/outside/secret.png", "link-out.png",
                   "../data/../../outside/secret.png"]


@pytest.mark.parametrize("entry", OUTSIDE_ENTRIES)
def test_manifest_entries_outside_the_root_are_refused(tree, entry):
    path = manifest(tree, entry)
    assert len(read_images(path)) == 1  # no --root: read as before
    with pytest.raises(InputError, match=r"manifest.csv:2: .* is outside --root") as error:
        read_images(path, ReadConfig(root=str(tree / "root")))
    assert entry.format(tree=tree) in str(error.value)


@pytest.mark.parametrize("entry", OUTSIDE_ENTRIES)
def test_outside_entries_are_refused_even_when_missing(tree, entry):
    """Confinement comes first: a refused path does not reveal whether it exists."""
    (tree / "outside" / "secret.png").unlink()
    with pytest.raises(InputError, match="is outside --root"):
        read_images(manifest(tree, entry), ReadConfig(root=str(tree / "root")))


@pytest.mark.parametrize("entry", ["inside.png", "link-in.png", "{tree}/root/data/inside.png",
                                   "../data/inside.png"])
def test_manifest_entries_inside_the_root_load(tree, entry):
    assert len(read_images(manifest(tree, entry), ReadConfig(root=str(tree / "root")))) == 1


def test_skip_bad_does_not_skip_over_an_outside_entry(tree):
    path = tree / "root" / "data" / "manifest.csv"
    path.write_text("path,label\ninside.png,0\nlink-out.png,1\n")
    assert len(read_images(path, ReadConfig(skip_bad=True))) == 2
    with pytest.raises(InputError, match="manifest.csv:3: .*link-out.png' is outside --root"):
        read_images(path, ReadConfig(root=str(tree / "root"), skip_bad=True))


def test_folders_and_globs_are_confined(tree):
    config = ReadConfig(root=str(tree / "root"))
    data = tree / "root" / "data"
    assert len(read_images(data)) == 3
    with pytest.raises(InputError, match="link-out.png: is outside --root"):
        read_images(data, config)
    (data / "link-out.png").unlink()
    assert len(read_images(data, config)) == 2
    assert len(read_images(str(data / "*.png"), config)) == 2
    with pytest.raises(InputError, match="secret.png: is outside --root"):
        read_images(str(data / ".." / ".." / "outside" / "*.png"), config)
    with pytest.raises(InputError, match="secret.png: is outside --root"):
        read_images(tree / "outside" / "secret.png", config)


def test_cli_root_option(tree):
    path = manifest(tree, "../../outside/secret.png")
    assert invoke("data", "inspect", path).exit_code == 0
    one_line_error(invoke("data", "inspect", path, "--root", tree / "root"), "is outside --root")
    missing = invoke("data", "inspect", path, "--root", tree / "none")
    assert missing.exit_code == 2 and "'--root': Directory" in missing.output  # a usage error
    inside = manifest(tree, "inside.png")
    assert invoke("data", "inspect", inside, "--root", tree / "root").exit_code == 0


def test_a_run_does_not_impose_its_root_on_later_reads(run_copy, tmp_path):
    """``--root`` confines one command; a run trained with it (the folder since gone) does not
    confine, or break, the commands that reuse its read options."""
    path = run_copy / "config.yaml"
    config = yaml.safe_load(path.read_text())
    config["data"]["read"]["root"] = str(tmp_path / "gone")
    path.write_text(yaml.safe_dump(config))
    assert load_run(run_copy).config.data.read_config().root is None


# -- exports never write outside their folder ------------------------------------------------


HOSTILE_NAMES = ["../../evil", "{tmp}/abs/evil", "..", ".", "a/../../b", "..\\..\\evil", "/",
                 "..."]


@pytest.mark.parametrize("format_", EXPORT_FORMATS)
def test_hostile_class_and_split_names_stay_inside_the_output(tmp_path, format_):
    names = [name.format(tmp=tmp_path) for name in HOSTILE_NAMES]
    n = len(names)
    pixels = np.random.default_rng(0).uniform(-1, 1, (n, 1, 8, 8)).astype(np.float32)
    images = ImageSet.from_arrays(
        pixels, labels=np.arange(n), class_names=names,
        splits=[*names[1:], names[0]], intensity_range=(0.0, 255.0))
    out = tmp_path / "box" / "out"
    export_imageset(images, out, format_)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written and all(p.resolve().is_relative_to(out.resolve()) for p in written)
    if format_ != "npz":
        assert len(read_images(out, ReadConfig(min_foreground=-1.0))) == n

"""The adversarial battery: bad or odd inputs across every command, each a command line over
one prepared folder (:func:`world`) and the text its error must hold.

For every case: exit status 1 with one line (or click's usage error, status 2, for a value
click itself rejects), no Python traceback, and every file and folder the world held before is
still there, byte for byte, with nothing added: no data lost, no partial output left behind.
The destructive cases (``--out`` over an input, the current folder, a user's folder) are here
as well as in ``test_output_safety.py``, which also covers locks and atomic replacement.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
import yaml
from click.testing import CliRunner
from PIL import Image

from synthmed.augment.phantom import PhantomConfig, write_phantom_volumes
from synthmed.cli import cli
from synthmed.gan import checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_DCGAN = ["--size", "28", "--width", "4", "--epochs", "1", "--batch-size", "8",
              "--no-progress"]
HELD, SEEN = "volumes/phantom-s0002", "volumes/phantom-s0000"  # held out / trained on
TINY_CYCLEGAN = ["--ngf", "4", "--ndf", "4", "--blocks", "1", "--pool-size", "4", "--crop",
                 "24", "--epochs", "1", "--no-progress"]
RUN_EDITS = {  # run variants: (file, dotted field, value)
    "model-null": ("config.yaml", "model", None),
    "width-abc": ("config.yaml", "model.width", "abc"),
    "nz-zero": ("config.yaml", "model.nz", 0),
    "epochs-abc": ("config.yaml", "train.epochs", "abc"),
    "few-class-names": ("training_data.json", "class_names", ["lesion"]),
    "nan-intensity": ("training_data.json", "intensity.low", float("nan")),
    "inf-intensity": ("training_data.json", "intensity.high", float("inf")),
    "text-intensity": ("training_data.json", "intensity.high", "bright"),
}
CONFIGS = {  # --config YAML files for train dcgan
    "model-null": "model: null\n",
    "model-5": "model: 5\n",
    "model-list": "model: [1, 2, 3]\n",
    "width-negative": "model: {width: -3}\n",
    "width-abc": "model: {width: abc}\n",
    "width-huge": "model: {width: 1e7}\n",
    "ema-abc": "model: {ema_decay: abc}\n",
    "epochs-abc": "train: {epochs: abc}\n",
    "betas-three": "model: {betas: [5, 7, 9]}\n",
    "nz-zero": "model: {nz: 0}\n",
    "unknown-key": "model: {widht: 8}\n",
    "not-yaml": "model: [unclosed\n",
    "privacy-without-dp-options": "privacy: {epsilon: 1.0}\n",
}


@dataclass(frozen=True)
class Case:
    """One bad input: ``args`` builds the command line from the world's root; ``expect`` is
    text the error names; ``cwd`` a folder of the world to run in."""

    name: str
    args: Callable[[Path], list[object]]
    expect: str
    cwd: str = ""


def out_of(root: Path) -> Path:
    return root / "new-output"


CASES = [
    # -- lost data: --out over an input, the current folder or a user's folder ------------------
    Case("generate --out . --overwrite", lambda r: [
        "generate", r / "runs/dcgan", "--n", "4", "--out", ".", "--overwrite"],
        "current folder", cwd="mine"),
    Case("generate --out .. (holds the current folder)", lambda r: [
        "generate", r / "runs/dcgan", "--n", "4", "--out", "..", "--overwrite"],
        "current folder", cwd="mine/samples"),
    Case("generate --out RUN", lambda r: [
        "generate", r / "runs/dcgan", "--n", "4", "--out", r / "runs/dcgan", "--overwrite"],
        "is the input"),
    Case("generate --out holding the run", lambda r: [
        "generate", r / "runs/dcgan", "--n", "4", "--out", r / "runs", "--overwrite"],
        "holds the input"),
    Case("generate --out inside the run", lambda r: [
        "generate", r / "runs/dcgan", "--n", "4", "--out", r / "runs/dcgan/samples"],
        "lies inside the input"),
    Case("generate --overwrite a user's folder", lambda r: [
        "generate", r / "runs/dcgan", "--n", "4", "--out", r / "mine", "--overwrite"],
        "synthmed did not write"),
    Case("generate over a partial folder synthmed did not make", lambda r: [
        "generate", r / "runs/dcgan", "--n", "4", "--out", r / "pending"],
        "not a partial output synthmed left"),
    Case("generate --privacy-filter --out over the training data", lambda r: [
        "generate", r / "runs/dcgan", "--n", "4", "--privacy-filter", "--train",
        r / "data/pngs", "--out", r / "data", "--overwrite"], "holds the input"),
    Case("translate --out holding its input", lambda r: [
        "translate", r / "runs/cyclegan", r / HELD / "t1.nii.gz", "--direction", "a2b",
        "--out", r / "volumes", "--overwrite"], "holds the input"),
    Case("translate --out RUN", lambda r: [
        "translate", r / "runs/cyclegan", r / HELD / "t1.nii.gz", "--direction", "a2b",
        "--out", r / "runs/cyclegan", "--overwrite"], "is the input"),
    Case("evaluate fidelity --out its synthetic input", lambda r: [
        "evaluate", "fidelity", "--real", r / "data/t1.npz", "--synthetic", r / "data/pngs",
        "--out", r / "data/pngs", "--overwrite"], "is the input"),
    Case("evaluate privacy --out holding its training data", lambda r: [
        "evaluate", "privacy", "--synthetic", r / "data/pngs", "--train", r / "data/t1.npz",
        "--holdout", r / "data/t1.npz", "--out", r / "data", "--overwrite"], "holds the input"),
    Case("evaluate translation --out its source", lambda r: [
        "evaluate", "translation", r / "runs/cyclegan", "--source", r / HELD / "t1.nii.gz",
        "--target", r / HELD / "t2.nii.gz", "--out", r / HELD, "--overwrite"],
        "holds the input"),
    Case("evaluate blend --out its source", lambda r: [
        "evaluate", "blend", r / "runs/cyclegan", "--source", r / HELD / "t1.nii.gz",
        "--target", r / HELD / "t2.nii.gz", "--blend-map", "inverted", "--out", r / HELD,
        "--overwrite"], "holds the input"),
    Case("evaluate utility --out a user's folder", lambda r: [
        "evaluate", "utility", "--real", r / "data/t1.npz", "--generator", r / "runs/dcgan",
        "--out", r / "mine"], "synthmed did not write"),
    Case("evaluate utility --out inside its data", lambda r: [
        "evaluate", "utility", "--real", r / "data/pngs", "--generator", r / "runs/dcgan",
        "--out", r / "data/pngs/utility"], "lies inside the input"),
    Case("evaluate merge --out one of its parts", lambda r: [
        "evaluate", "merge", r / "mine", "--out", r / "mine"], "is the input"),
    Case("data phantom --overwrite a user's folder", lambda r: [
        "data", "phantom", "--n", "4", "--out", r / "mine", "--overwrite"],
        "synthmed did not write"),
    Case("data inspect --json over its input", lambda r: [
        "data", "inspect", r / "data/t1.npz", "--json", r / "data/t1.npz"], "is the input"),
    Case("train dcgan --resume on a user's folder of samples/", lambda r: [
        "train", "dcgan", "phantom:n=16,size=28", "--out", r / "album", "--resume",
        *TINY_DCGAN], "not a synthmed run"),
    Case("train dcgan --out inside its data", lambda r: [
        "train", "dcgan", r / "data/pngs", "--out", r / "data/pngs/run", *TINY_DCGAN],
        "lies inside the input"),
    Case("train cyclegan --out holding its data", lambda r: [
        "train", "cyclegan", "--domain-a", f"{r}/volumes/*/t1.nii.gz", "--domain-b",
        f"{r}/volumes/*/t2.nii.gz", "--out", r / "volumes", *TINY_CYCLEGAN], "holds the input"),
    # -- --config values -------------------------------------------------------------------------
    *(Case(f"train dcgan --config {name}", lambda r, name=name: [
        "train", "dcgan", "phantom:n=16,size=28", "--config", r / f"configs/{name}.yaml",
        "--out", out_of(r), "--no-progress"], expect)
      for name, expect in [("model-null", "model"), ("model-5", "model"),
                           ("model-list", "model"), ("width-negative", "width"),
                           ("width-abc", "width"), ("width-huge", "width"),
                           ("ema-abc", "ema_decay"), ("epochs-abc", "epochs"),
                           ("betas-three", "betas"), ("nz-zero", "nz"),
                           ("unknown-key", "widht"), ("not-yaml", "YAML"),
                           ("privacy-without-dp-options", "differential privacy")]),
    # -- command-line values ---------------------------------------------------------------------
    Case("--lr-g nan", lambda r: ["train", "dcgan", "phantom:n=16,size=28", "--lr-g", "nan",
                                  "--out", out_of(r), *TINY_DCGAN], "lr-g"),
    Case("--lr-g -1", lambda r: ["train", "dcgan", "phantom:n=16,size=28", "--lr-g", "-1",
                                 "--out", out_of(r), *TINY_DCGAN], "lr-g"),
    Case("--seed -1", lambda r: ["train", "dcgan", "phantom:n=16,size=28", "--seed", "-1",
                                 "--out", out_of(r), *TINY_DCGAN], "seed"),
    Case("--seed 2**70", lambda r: ["generate", r / "runs/dcgan", "--n", "4", "--seed",
                                    str(2 ** 70), "--out", out_of(r)], "seed"),
    Case("--n 10**12", lambda r: ["generate", r / "runs/dcgan", "--n", str(10 ** 12),
                                  "--out", out_of(r)], "--n"),
    Case("--n 0", lambda r: ["generate", r / "runs/dcgan", "--n", "0", "--out", out_of(r)],
         "--n"),
    Case("--per-class of an unknown class", lambda r: [
        "generate", r / "runs/dcgan", "--per-class", "tumour=3", "--out", out_of(r)],
        "unknown class 'tumour'"),
    Case("--per-class not CLASS=COUNT", lambda r: [
        "generate", r / "runs/dcgan", "--per-class", "lesion:3", "--out", out_of(r)],
        "CLASS=COUNT"),
    Case("--train-read size=abc", lambda r: [
        "generate", r / "runs/dcgan", "--n", "4", "--privacy-filter", "--train",
        "phantom:n=16,size=28", "--train-read", "size=abc", "--out", out_of(r)], "size"),
    Case("evaluate privacy --holdout-split tset", lambda r: [
        "evaluate", "privacy", "--synthetic", r / "data/pngs", "--train", r / "data/t1.npz",
        "--holdout", r / "data/t1.npz", "--holdout-split", "tset", "--out", out_of(r)],
        "tset"),
    Case("evaluate utility --fractions abc", lambda r: [
        "evaluate", "utility", "--real", r / "data/t1.npz", "--generator", r / "runs/dcgan",
        "--fractions", "abc", "--out", out_of(r)], "--fractions"),
    Case("evaluate utility --shard 3/2", lambda r: [
        "evaluate", "utility", "--real", r / "data/t1.npz", "--generator", r / "runs/dcgan",
        "--shard", "3/2", "--out", out_of(r)], "shard must be K/N"),
    # -- run directories -------------------------------------------------------------------------
    *(Case(f"generate from a run with {name}", lambda r, name=name: [
        "generate", r / f"runs/{name}", "--n", "4", "--out", out_of(r)], expect)
      for name, expect in [("model-null", "model"), ("width-abc", "width"),
                           ("nz-zero", "nz"), ("epochs-abc", "epochs"),
                           ("few-class-names", "class"), ("nan-intensity", "intensity"),
                           ("inf-intensity", "intensity"), ("text-intensity", "intensity"),
                           ("nan-weights", "finite")]),
    Case("generate from a folder that is not a run", lambda r: [
        "generate", r / "mine", "--n", "4", "--out", out_of(r)], "not a synthmed run"),
    Case("generate from a CycleGAN run", lambda r: [
        "generate", r / "runs/cyclegan", "--n", "4", "--out", out_of(r)], "cyclegan"),
    Case("translate with a DCGAN run", lambda r: [
        "translate", r / "runs/dcgan", r / HELD / "t1.nii.gz", "--direction", "a2b",
        "--out", out_of(r)], "cyclegan"),
    Case("translate an RGB picture with a 1-channel translator", lambda r: [
        "translate", r / "runs/cyclegan", r / "data/rgb.png", "--direction", "a2b",
        "--out", out_of(r)], "channel"),
    Case("translate the same input twice", lambda r: [
        "translate", r / "runs/cyclegan", r / HELD / "t1.nii.gz",
        f"{r}/{SEEN}/../phantom-s0002/t1.nii.gz", "--direction", "a2b", "--out", out_of(r)],
        "given twice"),
    Case("translate a missing input", lambda r: [
        "translate", r / "runs/cyclegan", r / "volumes/nobody/t1.nii.gz", "--direction", "a2b",
        "--out", out_of(r)], "no such file"),
    Case("evaluate translation on its training subjects", lambda r: [
        "evaluate", "translation", r / "runs/cyclegan", "--source",
        r / SEEN / "t1.nii.gz", "--target", r / SEEN / "t2.nii.gz", "--out", out_of(r)],
        "training domain"),
    Case("evaluate blend on its training subjects", lambda r: [
        "evaluate", "blend", r / "runs/cyclegan", "--source", r / SEEN / "t1.nii.gz",
        "--target", r / SEEN / "t2.nii.gz", "--blend-map", "inverted", "--out", out_of(r)],
        "training domain"),
    # -- data files ------------------------------------------------------------------------------
    Case("a DICOM with RescaleSlope 0", lambda r: [
        "data", "inspect", r / "data/slope0.dcm"], "RescaleSlope"),
    Case("a truncated DICOM", lambda r: ["data", "inspect", r / "data/truncated.dcm"],
         "truncated.dcm"),
    Case("an all-zero NIfTI", lambda r: ["data", "inspect", r / "data/zeros.nii.gz"],
         "zeros.nii.gz"),
    Case("a NIfTI with NaN voxels", lambda r: ["data", "inspect", r / "data/nan.nii.gz"],
         "nan.nii.gz"),
    Case("an empty folder", lambda r: ["data", "inspect", r / "data/empty"], "empty"),
    Case("pictures of mixed sizes", lambda r: ["data", "inspect", r / "data/mixed"], "mixed"),
    Case("an npz without images", lambda r: ["data", "inspect", r / "data/no-images.npz"],
         "no-images.npz"),
    Case("an npz whose labels do not match its images", lambda r: [
        "data", "inspect", r / "data/wrong-labels.npz"], "wrong-labels.npz"),
    Case("a manifest naming a missing file", lambda r: [
        "data", "inspect", r / "data/manifest.csv"], "missing.png"),
    Case("a missing data path", lambda r: ["data", "inspect", r / "data/nothing.npz"],
         "nothing.npz"),
]


def write_run_variant(run: Path, target: Path, file: str, field: str, value: object) -> None:
    """A copy of ``run`` with one field of ``file`` replaced (a corrupt or hand-edited run)."""
    shutil.copytree(run, target)
    path = target / file
    document = yaml.safe_load(path.read_text()) if file.endswith(".yaml") else \
        json.loads(path.read_text())
    *parents, last = field.split(".")
    node = document
    for key in parents:
        node = node[key]
    node[last] = value
    path.write_text(yaml.safe_dump(document) if file.endswith(".yaml") else json.dumps(document))


def write_data(data: Path) -> None:
    """The data files of the battery: good ones to aim outputs at, bad ones to read."""
    from synthmed.augment.medmnist import write_npz
    from synthmed.augment.phantom import make_phantom

    t1, _ = make_phantom(PhantomConfig(n=16, size=28, lesion_fraction=0.5))
    write_npz(t1, data / "t1.npz")
    pictures = np.random.default_rng(0).integers(0, 255, (4, 28, 28), np.uint8)
    for k, picture in enumerate(pictures):
        (data / "pngs" / f"class{k % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(picture).save(data / "pngs" / f"class{k % 2}" / f"{k}.png")
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (28, 28, 3), np.uint8)).save(
        data / "rgb.png")
    source = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    source.RescaleSlope = 0
    source.save_as(data / "slope0.dcm")
    whole = Path(pydicom.data.get_testdata_file("CT_small.dcm")).read_bytes()
    (data / "truncated.dcm").write_bytes(whole[:len(whole) // 2])
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 4), np.float32), np.eye(4)),
             data / "zeros.nii.gz")
    nan = np.random.default_rng(2).uniform(0, 1, (16, 16, 4)).astype(np.float32)
    nan[3, 3, 1] = np.nan
    nib.save(nib.Nifti1Image(nan, np.eye(4)), data / "nan.nii.gz")
    (data / "empty").mkdir()
    (data / "mixed").mkdir()
    for side in (16, 20):
        Image.fromarray(np.full((side, side), side * 9, np.uint8)).save(
            data / "mixed" / f"{side}.png")
        Image.fromarray(np.arange(side * side, dtype=np.uint8).reshape(side, side)).save(
            data / "mixed" / f"ramp{side}.png")
    np.savez(data / "no-images.npz", train_labels=np.zeros(4))
    np.savez(data / "wrong-labels.npz", train_images=pictures, train_labels=np.zeros(3))
    (data / "manifest.csv").write_text("path,label\nmissing.png,0\n")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return build_world(tmp_path_factory.mktemp("world"))


def build_world(root: Path) -> Path:
    """Fill ``root`` with a user's files, data, tiny runs and run variants."""
    (root / "mine" / "samples").mkdir(parents=True)
    (root / "mine" / "notes.txt").write_text("keep me")
    (root / "mine" / "samples" / "scan.png").write_bytes(b"the user's scan")
    (root / "album" / "samples").mkdir(parents=True)  # nothing but a samples/ folder
    (root / "album" / "samples" / "scan.png").write_bytes(b"the user's scan")
    (root / ".pending.partial").mkdir()
    (root / ".pending.partial" / "draft.txt").write_text("not synthmed's")
    (root / "data").mkdir()
    write_data(root / "data")
    (root / "configs").mkdir()
    for name, text in CONFIGS.items():
        (root / "configs" / f"{name}.yaml").write_text(text)
    write_phantom_volumes(root / "volumes", PhantomConfig(n=24, size=32, seed=1,
                                                          slices_per_subject=8))
    runner = CliRunner()
    made = runner.invoke(cli, ["train", "dcgan", "phantom:n=16,size=28", "--conditional",
                               "--out", str(root / "runs/dcgan"), *TINY_DCGAN])
    assert made.exit_code == 0, made.output
    made = runner.invoke(cli, ["train", "cyclegan", "--domain-a", f"{root}/volumes/*/t1.nii.gz",
                               "--domain-b", f"{root}/volumes/*/t2.nii.gz", "--val-subjects",
                               Path(HELD).name, "--out", str(root / "runs/cyclegan"),
                               *TINY_CYCLEGAN])
    assert made.exit_code == 0, made.output
    for name, edit in RUN_EDITS.items():
        write_run_variant(root / "runs/dcgan", root / f"runs/{name}", *edit)
    nan_weights = root / "runs/nan-weights"
    shutil.copytree(root / "runs/dcgan", nan_weights)
    tensors, metadata = checkpoint.load_weights(nan_weights, "dcgan")
    tensors = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
               for k, v in tensors.items()}
    checkpoint.save_weights(nan_weights, tensors, "dcgan", int(metadata["epoch"]))
    return root


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and folder (``None``) below ``root``, hidden ones included."""
    return {str(p.relative_to(root)): None if p.is_dir() else p.read_bytes()
            for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_is_one_clear_line_and_loses_nothing(case, world, monkeypatch):
    before = snapshot(world)
    monkeypatch.chdir(world / case.cwd)
    result = CliRunner().invoke(cli, [str(a) for a in case.args(world)])
    assert result.exit_code in (1, 2), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        repr(result.exception)
    assert "Traceback" not in result.output
    error = result.output.strip().splitlines()
    if result.exit_code == 1:
        assert len(error) == 1, result.output
    assert case.expect in error[-1], result.output
    assert snapshot(world) == before


def test_the_battery_covers_the_reported_cases():
    """About 60 cases, as the issue lists them; each name once."""
    assert len(CASES) >= 60
    assert len({case.name for case in CASES}) == len(CASES)

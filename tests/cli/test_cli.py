"""The command line, through click's CliRunner: exit codes, summaries, one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from synthmed.augment.readers import read_images
from synthmed.cli import cli

from ..conftest import invoke, real_file


def test_help_lists_the_commands():
    result = invoke("--help")
    assert result.exit_code == 0 and "data" in result.output
    result = invoke("data", "--help")
    assert "inspect" in result.output and "phantom" in result.output


@pytest.mark.parametrize("format_", ["png", "npz", "nifti", "dicom"])
def test_phantom_writes_t1_and_t2_that_read_back(tmp_path, format_):
    out = tmp_path / "phantom"
    result = invoke("data", "phantom", "--out", out, "--n", 16, "--size", 32, "--format", format_)
    assert result.exit_code == 0, result.output
    assert "wrote 16 phantom slice(s) x 2 contrast(s) (8 with a lesion)" in result.output
    t1, t2 = read_images(out / "t1"), read_images(out / "t2")
    assert len(t1) == len(t2) == 16
    assert t1.images.shape[1:] == (1, 32, 32)
    assert np.array_equal(t1.labels, t2.labels) and t1.labels.sum() == 8
    assert t1.class_names == ("no lesion", "lesion")


def test_phantom_refuses_to_overwrite_without_flag(tmp_path):
    out = tmp_path / "phantom"
    assert invoke("data", "phantom", "--out", out, "--n", 4, "--size", 16).exit_code == 0
    result = invoke("data", "phantom", "--out", out, "--n", 8, "--size", 16)
    assert result.exit_code == 1
    assert "already exists" in result.output and "Traceback" not in result.output
    assert len(read_images(out / "t1")) == 4
    result = invoke("data", "phantom", "--out", out, "--n", 8, "--size", 16, "--overwrite")
    assert result.exit_code == 0 and len(read_images(out / "t1")) == 8


def test_inspect_phantom_prints_counts_and_writes_preview(tmp_path):
    preview, summary = tmp_path / "p.png", tmp_path / "s.json"
    result = invoke("data", "inspect", "phantom:t2,n=40,size=32", "--preview", preview,
                    "--json", summary)
    assert result.exit_code == 0, result.output
    assert "40 images" in result.output and "lesion" in result.output
    assert preview.stat().st_size > 1000
    data = json.loads(summary.read_text())
    assert data["images"] == 40 and data["classes"] == ["no lesion", "lesion"]


def test_inspect_breastmnist_finds_the_cross_split_duplicate(shared_data, tmp_path):
    path = real_file(shared_data, "medmnist/breastmnist.npz")
    result = invoke("data", "inspect", path, "--json", tmp_path / "s.json")
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "s.json").read_text())
    assert data["counts"]["test"] == {"malignant": 42, "normal, benign": 114}
    assert data["duplicates"]["across_splits"].get("train/test") == 1


def test_inspect_dicom_folder_and_nifti_pair(shared_data, tmp_path):
    dicom = invoke("data", "inspect", real_file(shared_data, "dicom-transfer-syntax/In"))
    assert dicom.exit_code == 0, dicom.output
    assert "9 images" in dicom.output and "384x384" in dicom.output
    brain = real_file(shared_data, "brain-t1t2")
    nifti = invoke("data", "inspect", f"{brain}/*/t2.nii.gz", "--preview", tmp_path / "p.png")
    assert nifti.exit_code == 0, nifti.output
    assert "3 groups" in nifti.output and "240x240" in nifti.output


@pytest.mark.parametrize("args, message", [
    (["data", "inspect", "/no/such/place"], "/no/such/place: no such file or folder"),
    (["data", "inspect", "phantom:t3"], "phantom"),
    (["data", "inspect", "phantom", "--window", "nonsense"], "unknown window"),
])
def test_user_errors_are_one_line_without_traceback(args, message):
    result = invoke(*args)
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_verbose_shows_the_traceback(tmp_path):
    result = CliRunner().invoke(cli, ["--verbose", "data", "inspect", str(tmp_path / "nope")])
    assert result.exit_code == 1 and "Traceback" in result.output


def test_train_dcgan_makes_images_of_the_datas_own_size(shared_data, tmp_path):
    """BreastMNIST is 28 px: without --size the DCGAN trains and generates at 28 px (it used
    to upsample to a 64 px model)."""
    data = real_file(shared_data, "medmnist/breastmnist.npz")
    result = invoke("train", "dcgan", data, "--out", tmp_path / "r", "--epochs", 1,
                    "--width", 4, "--no-progress")
    assert result.exit_code == 0, result.output
    result = invoke("generate", tmp_path / "r", "--format", "npz", "--n", 6,
                    "--out", tmp_path / "syn", "--no-progress")
    assert result.exit_code == 0, result.output
    with np.load(tmp_path / "syn" / "images.npz") as archive:
        assert archive["train_images"].shape == (6, 28, 28)

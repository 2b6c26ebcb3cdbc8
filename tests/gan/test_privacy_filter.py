"""The export's privacy filter (near-copies of training images dropped and redrawn) and the
DP-SGD guarantee of a run carried into provenance.json and DICOM headers."""

from __future__ import annotations

import csv
import json
import shutil

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch

from synthmed.augment.distances import flatten_pixels, near_copy_threshold
from synthmed.augment.items import ReadConfig
from synthmed.augment.nifti import display_plane
from synthmed.augment.readers import read_images
from synthmed.errors import InputError
from synthmed.gan import generate as generate_module
from synthmed.gan.generate import BLOCK, GenerateConfig, generate
from synthmed.gan.near_copy import PrivacyFilterConfig
from synthmed.gan.run import load_run

from ..conftest import generate_killed_at_block, invoke

pytestmark = pytest.mark.usefixtures("one_thread")

TRAIN = "phantom:t1,n=48"
DP = {"target_epsilon": 3.0, "epsilon": 2.5, "delta": 1e-5, "noise_multiplier": 1.1,
      "max_grad_norm": 1.0, "sample_rate": 0.25, "steps": 12, "accountant": "rdp"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "phantom"
    result = invoke("train", "dcgan", TRAIN, "--size", 28, "--width", 4, "--epochs", 1,
                    "--batch-size", 16, "--conditional", "--out", out, "--no-progress")
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def train():
    return read_images(TRAIN, ReadConfig(size=28))


def plant_copies(monkeypatch, run, train_images: np.ndarray, share: float = 0.3) -> list[int]:
    """Make the run's generator return a training image for every noise vector whose first
    value is in the top ``share`` of N(0, 1) (decided by the noise, so every draw of the same
    vector plants the same way); return the number planted at each call."""
    real = run.model.generate
    cut = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(1.0 - share))
    planted: list[int] = []

    def copying(z, labels=None):
        images = real(z, labels)
        copy = z[:, 0] > cut
        which = (z[:, 1].abs() * 1000).long() % len(train_images)
        images[copy] = torch.from_numpy(train_images)[which[copy]]
        planted.append(int(copy.sum()))
        return images

    monkeypatch.setattr(run.model, "generate", copying)
    return planted


def documented_threshold(train, percentile: float) -> float:
    """The documented rule: the percentile of the distances from 20 % of the subjects (held
    aside with seed 0) to the others."""
    subjects = np.unique(train.groups.astype(str))
    aside = np.isin(train.groups.astype(str),
                    np.random.default_rng(0).permutation(subjects)[:round(0.2 * len(subjects))])
    pixels = flatten_pixels(train.images)
    return near_copy_threshold(pixels[~aside], pixels[aside], percentile)


def manifest(folder) -> list[dict[str, str]]:
    with (folder / "manifest.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def provenance(folder) -> dict:
    return json.loads((folder / "provenance.json").read_text())


def image(folder, row: dict[str, str]) -> np.ndarray:
    """The exported NIfTI slice of a manifest row: ``(H, W)`` in original units."""
    return display_plane(nib.load(folder / row["path"]).get_fdata()[:, :, 0])


def files(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_planted_copies_are_dropped_and_redrawn(run_dir, train, tmp_path, monkeypatch):
    run = load_run(run_dir)
    assert train.fingerprint() == run.training_data["fingerprint"]
    real_generate = run.model.generate
    planted = plant_copies(monkeypatch, run, train.images)
    request = dict(n=40, format="nifti", seed=3)
    generate(run, tmp_path / "plain", GenerateConfig(**request), progress=False)
    planted.clear()
    generate(run, tmp_path / "filtered",
             GenerateConfig(**request, privacy_filter=PrivacyFilterConfig(train=TRAIN)),
             progress=False)

    record = provenance(tmp_path / "filtered")["privacy_filter"]
    assert planted[0] > 0 and record["dropped"] == sum(planted)
    assert record["training_images"] == 48 and record["matches_run_training_data"]
    assert record["training_data_fingerprint"] == train.fingerprint()
    assert record["threshold"] == documented_threshold(train, 5.0)
    assert record["threshold_rule"].startswith("percentile 5 of the distances")

    rows = manifest(tmp_path / "filtered")
    assert len(rows) == 40 and [r["path"] for r in rows] == [
        r["path"] for r in manifest(tmp_path / "plain")]
    redrawn = [r for r in rows if r["noise_round"] != "0"]
    assert len(redrawn) == planted[0]  # every slot planted in the first draw, no other
    plain, filtered = files(tmp_path / "plain"), files(tmp_path / "filtered")
    for row in rows:
        assert (filtered[row["path"]] == plain[row["path"]]) == (row["noise_round"] == "0")

    real = train.to_original_units()[:, 0]  # (48, H, W)

    def copies(folder) -> int:
        return sum(np.isclose(real, image(folder, row), atol=0.5).all(axis=(1, 2)).any()
                   for row in manifest(folder))

    assert copies(tmp_path / "plain") == planted[0] and copies(tmp_path / "filtered") == 0
    # seed, noise_index and noise_round name the noise vector of a redrawn image
    low, high = run.training_data["intensity"]["low"], run.training_data["intensity"]["high"]
    for row in redrawn:
        index, round_ = int(row["noise_index"]), int(row["noise_round"])
        rng = torch.Generator().manual_seed(generate_module._block_seed(3, index // BLOCK))
        z = [torch.randn(BLOCK, run.model.config.nz, generator=rng)
             for _ in range(round_ + 1)][-1]
        made = real_generate(z[index % BLOCK][None], torch.tensor([int(row["label"])]))
        expected = low + (made[0, 0].numpy() + 1) / 2 * (high - low)
        np.testing.assert_allclose(image(tmp_path / "filtered", row), expected, atol=0.05)


def test_same_command_twice_and_after_an_interruption_gives_the_same_files(
        run_dir, train, tmp_path, monkeypatch):
    run = load_run(run_dir)
    plant_copies(monkeypatch, run, train.images)
    config = GenerateConfig(n=2 * BLOCK + 10, seed=1,
                            privacy_filter=PrivacyFilterConfig(train=TRAIN))
    for name in ("first", "second"):
        generate(run, tmp_path / name, config, progress=False)

    generate_killed_at_block(run, tmp_path / "resumed", config, block=2)
    generate(run, tmp_path / "resumed", config, progress=False)

    first = files(tmp_path / "first")
    assert len(first) == 2 * BLOCK + 13  # the images, manifest, provenance and marker
    assert provenance(tmp_path / "first")["privacy_filter"]["dropped"] > 0
    assert first == files(tmp_path / "second") == files(tmp_path / "resumed")


def test_a_generator_that_keeps_copying_is_refused(run_dir, train, tmp_path, monkeypatch):
    run = load_run(run_dir)
    plant_copies(monkeypatch, run, train.images, share=1.0)
    config = GenerateConfig(n=4, privacy_filter=PrivacyFilterConfig(train=TRAIN, max_redraws=2))
    with pytest.raises(InputError, match="4 image.s. were still near-copies .* after 2 new"):
        generate(run, tmp_path / "syn", config, progress=False)
    assert not (tmp_path / "syn").exists()


def test_dp_guarantee_goes_into_provenance_and_dicom_headers(run_dir, tmp_path):
    dp_run = tmp_path / "dp-run"
    shutil.copytree(run_dir, dp_run)
    record = json.loads((dp_run / "training_data.json").read_text())
    (dp_run / "training_data.json").write_text(json.dumps(
        {**record, "differential_privacy": DP}))
    for run, name in ((dp_run, "dp"), (run_dir, "plain")):
        result = invoke("generate", run, "--n", 3, "--format", "dicom", "--out",
                        tmp_path / name, "--no-progress")
        assert result.exit_code == 0, result.output
        assert ("generator trained with DP-SGD: epsilon 2.5, delta 1e-05" in result.output) == (
            name == "dp")

    note = "generator trained with DP-SGD (epsilon=2.5, delta=1e-05)"
    assert provenance(tmp_path / "dp")["differential_privacy"] == DP
    assert "differential_privacy" not in provenance(tmp_path / "plain")
    for path in (tmp_path / "dp").rglob("*.dcm"):
        ds = pydicom.dcmread(path)
        assert list(ds.DeidentificationMethod) == [
            "synthmed synthetic image; no source patient data", note]
        assert ds.ImageComments == f"synthmed synthetic image; no source patient data; {note}"
    for path in (tmp_path / "plain").rglob("*.dcm"):
        ds = pydicom.dcmread(path)
        assert ds.DeidentificationMethod == "synthmed synthetic image; no source patient data"
        assert "ImageComments" not in ds


def test_cli_privacy_filter_summary(run_dir, tmp_path):
    result = invoke("generate", run_dir, "--n", 6, "--out", tmp_path / "syn", "--privacy-filter",
                    "--train", TRAIN, "--threshold", 0.5, "--no-progress")
    assert result.exit_code == 0, result.output
    summary = result.output.splitlines()[-1]
    assert summary.startswith("privacy filter: dropped and redrew 0 near-copies, nearer than "
                              "0.5 to one of 48 training images (threshold: given")
    record = provenance(tmp_path / "syn")["privacy_filter"]
    assert record["threshold"] == 0.5 and record["dropped"] == 0
    assert record["training_data_fingerprint"][:16] in summary

    other = invoke("generate", run_dir, "--n", 2, "--out", tmp_path / "other",
                   "--privacy-filter", "--train", "phantom:t1,n=48,seed=1", "--no-progress")
    assert other.exit_code == 0, other.output
    assert other.output.rstrip().endswith(", not the run's own")
    assert not provenance(tmp_path / "other")["privacy_filter"]["matches_run_training_data"]


def test_cli_filter_percentile_and_max_redraws(run_dir, train, tmp_path):
    result = invoke("generate", run_dir, "--n", 6, "--out", tmp_path / "syn", "--privacy-filter",
                    "--train", TRAIN, "--filter-percentile", 50, "--max-redraws", 40,
                    "--no-progress")
    assert result.exit_code == 0, result.output
    record = provenance(tmp_path / "syn")["privacy_filter"]
    assert record["threshold"] == documented_threshold(train, 50.0) > documented_threshold(
        train, 5.0)
    assert record["threshold_rule"].startswith("percentile 50 of the distances")
    assert record["max_redraws"] == 40 and len(manifest(tmp_path / "syn")) == 6

    # every image a near-copy at a threshold no image passes: refused after --max-redraws
    refused = invoke("generate", run_dir, "--n", 2, "--out", tmp_path / "none",
                     "--privacy-filter", "--train", TRAIN, "--threshold", 1e6, "--max-redraws",
                     3, "--no-progress")
    assert refused.exit_code == 1 and "still near-copies of training images after 3 new" in (
        refused.output) and "(raise --max-redraws" in refused.output, refused.output
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("args, message", [
    (["--privacy-filter"], "--privacy-filter needs --train DATA"),
    (["--filter-percentile", "50"], "need --privacy-filter"),
    (["--max-redraws", "30"], "need --privacy-filter"),
    (["--privacy-filter", "--train", TRAIN, "--threshold", "0.5", "--filter-percentile", "50"],
     "give it or --filter-percentile, not both"),
    (["--train", TRAIN], "need --privacy-filter"),
    (["--threshold", "0.5"], "need --privacy-filter"),
    (["--privacy-filter", "--train", TRAIN, "--train-read", "size=32"],
     "images are 1x32x32 but the generator makes 1x28x28"),
    (["--privacy-filter", "--train", TRAIN, "--train-read", "colour=3"],
     "--train-read: unknown setting(s) colour"),
    (["--privacy-filter", "--train", TRAIN, "--train-read", "size=big"],
     "--train-read: size must be a whole number or null, got 'big'"),
    (["--privacy-filter", "--train", "phantom:t1,n=1"], "one training image cannot give"),
])
def test_cli_privacy_filter_errors(run_dir, tmp_path, args, message):
    result = invoke("generate", run_dir, "--n", 2, "--out", tmp_path / "syn", *args,
                    "--no-progress")
    assert result.exit_code == 1 and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())  # no output folder, no partial one

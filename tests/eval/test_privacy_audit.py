"""Privacy audit: distance to closest record, near-copies, membership inference with a control,
the white-box attack on a DCGAN run, the CLI's outputs and errors, and the report section."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from sklearn.metrics import roc_auc_score

from synthmed.augment.dataset import ImageSet
from synthmed.augment.distances import flatten_pixels, nearest_distances
from synthmed.augment.phantom import PhantomConfig, make_phantom
from synthmed.cli import cli
from synthmed.errors import InputError
from synthmed.eval.membership import attack_indices, membership_auc, white_box_scores
from synthmed.eval.privacy_audit import PrivacyConfig, evaluate_privacy
from synthmed.eval.report import build_report
from synthmed.gan.run import load_run
from synthmed.io import MARKER

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = PrivacyConfig(n_boot=200)
OUTPUTS = {"privacy.json", "privacy.md", "dcr.png", "membership.png", "closest_pairs.png"}


def blobs(n: int, seed: int, size: int = 16) -> np.ndarray:
    """``(n, 1, size, size)`` independent random Gaussian blobs with pixel noise, in [-1, 1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    cx, cy = (rng.uniform(3, size - 3, (n, 1, 1)) for _ in range(2))
    radius = rng.uniform(2, 4, (n, 1, 1))
    images = 2 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * radius ** 2)) - 1
    return (images[:, None] + rng.normal(0, 0.05, (n, 1, size, size))).astype(np.float32)


@pytest.fixture(scope="module")
def sets() -> tuple[ImageSet, ImageSet, ImageSet]:
    """40 training, 160 held-out and 100 'fresh' real images (never used by the audit)."""
    return tuple(ImageSet.from_arrays(blobs(n, seed)) for n, seed in ((40, 1), (160, 2),
                                                                      (100, 3)))


# -- building blocks ---------------------------------------------------------------------------


def test_membership_auc_is_sklearns_roc_auc():
    rng = np.random.default_rng(1)
    members, others = rng.normal(0.5, size=30).round(1), rng.normal(size=40).round(1)  # ties
    truth = np.concatenate([np.ones(30), np.zeros(40)])
    expected = roc_auc_score(truth, np.concatenate([members, others]))
    assert membership_auc(members, others) == pytest.approx(expected, abs=1e-12)
    assert membership_auc(others, members) == pytest.approx(1 - expected, abs=1e-12)


def test_attack_indices_are_equal_sized_and_disjoint():
    members, control, non_members = attack_indices(40, 161, seed=3)
    assert len(members) == len(control) == len(non_members) == 40
    assert not set(control) & set(non_members)
    assert max(members) < 40 and max(control.max(), non_members.max()) < 161
    members, control, non_members = attack_indices(100, 30, seed=3)
    assert len(members) == len(control) == len(non_members) == 15
    assert len(set(members)) == 15


# -- the audit ---------------------------------------------------------------------------------


def test_a_generator_that_copies_its_training_images_is_flagged(sets):
    train, holdout, _ = sets
    copies = ImageSet.from_arrays(train.images.copy(), synthetic=True)
    report = evaluate_privacy(copies, train, holdout, config=CONFIG)
    dcr = report.distances["pixels"].summary()
    assert dcr["near_copy_share"] == 1.0 and dcr["closer_to_train_share"] == 1.0
    attack = report.attacks["pixels"]
    assert attack["auc"] > 0.99 and attack["advantage"] > 0.3
    assert attack["advantage_ci"][0] > 0.2
    assert abs(attack["control_auc"] - 0.5) < 0.2
    findings = " ".join(report.findings())
    assert "near-copies" in findings and "better than chance" in findings
    assert "closer to a training image than to a held-out one" in findings
    assert report.pairs[2].max() < 1e-3  # the gallery shows exact copies


def test_a_generator_of_unseen_images_is_not_flagged(sets):
    train, holdout, fresh = sets
    report = evaluate_privacy(fresh, train, holdout, config=CONFIG)
    dcr = report.distances["pixels"].summary()
    assert dcr["near_copy_share"] < 0.15
    assert dcr["reference_size"] == 40
    # fair: held-out subsampled to 40; against all 160 held-out images the share would be ~0.2
    assert 0.35 < dcr["closer_to_train_share"] < 0.65
    to_all_holdout = nearest_distances(flatten_pixels(fresh.images),
                                       flatten_pixels(holdout.images))[0]
    assert np.mean(report.distances["pixels"].to_train < to_all_holdout) < 0.3
    attack = report.attacks["pixels"]
    assert abs(attack["auc"] - 0.5) < 0.2
    assert attack["advantage_ci"][0] < 0 < attack["advantage_ci"][1]
    assert attack["n_members"] == attack["n_non_members"] == 40
    assert report.findings()[0].startswith("No excess")


def centroids(images: np.ndarray) -> np.ndarray:
    """A feature space ``(N, 2)``: each blob's centre of mass."""
    weights = images[:, 0] + 1
    grid = np.arange(images.shape[-1])
    total = weights.sum(axis=(1, 2))
    return np.stack([(weights.sum(1) * grid).sum(1) / total,
                     (weights.sum(2) * grid).sum(1) / total], axis=1)


def test_feature_space_and_json(sets):
    train, holdout, fresh = sets
    features = centroids
    report = evaluate_privacy(fresh, train, holdout, features=features, extractor="centroid",
                              config=CONFIG)
    document = json.loads(json.dumps(report.to_json()))
    assert set(document["dcr"]) == {"pixels", "features"}
    assert set(document["membership"]) == {"pixels", "features"}
    assert document["settings"]["extractor"] == "centroid"
    assert document["settings"]["n_train"] == 40 and document["settings"]["n_holdout"] == 160
    assert document["settings"]["config"]["n_boot"] == 200
    direct = nearest_distances(features(fresh.images), features(train.images))[0]
    assert document["dcr"]["features"]["median_to_train"] == pytest.approx(np.median(direct))
    assert "| feature space |" in report.to_markdown()


def test_bad_inputs(sets):
    train, holdout, fresh = sets
    with pytest.raises(InputError, match="held-out images are 12x12"):
        evaluate_privacy(fresh, train, ImageSet.from_arrays(blobs(20, 5, size=12)))
    with pytest.raises(InputError, match="at least 4 held-out"):
        evaluate_privacy(fresh, train, holdout.subset([0, 1, 2]))


def test_held_out_copies_of_training_images_are_left_out_of_the_non_members(sets):
    train, holdout, fresh = sets
    config = PrivacyConfig(n_boot=50)
    plain = evaluate_privacy(fresh, train, holdout, config=config)
    with_copies = evaluate_privacy(
        fresh, train, ImageSet.concatenate([holdout, train.subset([0, 1, 2])]), config=config)
    assert with_copies.settings["holdout_training_copies_dropped"] == 3
    assert with_copies.settings["n_holdout"] == len(holdout)
    assert with_copies.to_json()["dcr"] == plain.to_json()["dcr"]
    assert "3 held-out image(s) were exact copies" in with_copies.to_markdown()
    assert plain.settings["holdout_training_copies_dropped"] == 0


# -- white-box ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A conditional DCGAN trained for 2 epochs on 16 phantom slices (32 px), through the CLI."""
    root = tmp_path_factory.mktemp("privacy")
    result = CliRunner().invoke(cli, [
        "train", "dcgan", "phantom:n=16,size=32", "--out", str(root / "run"), "--size", "32",
        "--conditional", "--width", "4", "--epochs", "2", "--batch-size", "8", "--no-progress"])
    assert result.exit_code == 0, result.output
    return root


def test_white_box_scores_of_a_dcgan_are_the_discriminator_logits(tiny_run):
    run = load_run(tiny_run / "run")
    data = make_phantom(PhantomConfig(n=12, size=32, seed=4))[0]
    scores = white_box_scores(run, data.images, data.labels, batch_size=64, seed=1)
    with torch.inference_mode():
        direct = run.model.discriminator(torch.from_numpy(data.images),
                                         torch.from_numpy(data.labels)).numpy()
    np.testing.assert_allclose(scores, direct, rtol=1e-4, atol=1e-5)


class TinyExtractor(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(1)  # (B, 4 C)


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_cli_writes_every_output_with_the_white_box_attack(tiny_run, tmp_path):
    extractor = tmp_path / "extractor.pt"
    torch.jit.script(TinyExtractor()).save(str(extractor))
    out = tmp_path / "privacy"
    result = CliRunner().invoke(cli, [
        "evaluate", "privacy", "--synthetic", str(tiny_run / "run"),
        "--train", "phantom:n=16,size=32", "--holdout", "phantom:n=16,size=32,seed=1",
        "--extractor", str(extractor), "--n", "24", "--bootstrap", "50", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == OUTPUTS | {MARKER}  # the marker: synthmed's
    document = json.loads((out / "privacy.json").read_text())
    assert set(document["membership"]) == {"pixels", "features", "discriminator"}
    white = document["membership"]["discriminator"]
    assert 0 <= white["auc"] <= 1 and white["n_members"] == 8
    assert white["auc_ci"][0] <= white["auc"] <= white["auc_ci"][1]
    settings = document["settings"]
    assert settings["n_synthetic"] == 24 and settings["train_seen_by_run"] == 16
    assert settings["extractor"] == f"TorchScript model {extractor}"
    with Image.open(out / "closest_pairs.png") as picture:
        assert picture.width > 200
    assert "white-box, discriminator logit" in (out / "privacy.md").read_text()

    page, _ = build_report(out)
    text = page.read_text()
    assert "<h2>Privacy</h2>" in text and "Membership inference" in text
    for name in ("dcr.png", "membership.png", "closest_pairs.png"):
        assert f"alt='{name}'" in text


def png_folder(folder, images: np.ndarray) -> str:
    folder.mkdir()
    for k, image in enumerate(images):
        Image.fromarray(np.rint((image[0] + 1) * 127.5).astype(np.uint8)).save(folder / f"{k}.png")
    return str(folder)


@pytest.mark.parametrize("case, message", [
    ("size", "synthetic images are 12x12 with 1 channel(s) but training images 16x16"),
    ("empty", "empty"),
    ("no-holdout", "missing"),
    ("leak", "the run was trained on 16 of the held-out images"),
])
def test_cli_errors_leave_no_output(tmp_path, sets, tiny_run, case, message):
    train, holdout, _ = sets
    paths = {"train": png_folder(tmp_path / "train", train.images[:10]),
             "holdout": png_folder(tmp_path / "holdout", holdout.images[:10]),
             "synthetic": png_folder(tmp_path / "synthetic", blobs(6, 7, size=12))}
    if case == "empty":
        (tmp_path / "empty").mkdir()
        paths["synthetic"] = str(tmp_path / "empty")
    elif case == "no-holdout":
        paths["holdout"] = str(tmp_path / "missing")
    elif case == "leak":
        paths = {"synthetic": str(tiny_run / "run"), "train": "phantom:n=16,size=32,seed=1",
                 "holdout": "phantom:n=16,size=32"}  # the run's training images
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["evaluate", "privacy", "--synthetic", paths["synthetic"],
                                      "--train", paths["train"], "--holdout", paths["holdout"],
                                      "--out", str(out)])
    assert result.exit_code == 1
    assert message in result.output and result.output.count("\n") == 1, result.output
    assert not out.exists()
    assert not list(tmp_path.glob(".out*"))


@pytest.mark.parametrize("fit_on_train", [True, False])
def test_a_feature_space_learnt_from_the_training_images_is_named_in_the_finding(
        sets, fit_on_train):
    train, holdout, _ = sets
    copies = ImageSet.from_arrays(train.images.copy(), synthetic=True)
    report = evaluate_privacy(copies, train, holdout, features=centroids, extractor="centroid",
                              features_fit_on_train=fit_on_train, config=CONFIG)
    closer = [f for f in report.findings() if "closer to a training image" in f]
    assert len(closer) == 2  # pixels and features
    pixels, features = sorted(closer, key=lambda f: "feature space" in f)
    assert "Caution" not in pixels
    assert ("Caution: this feature space was learnt from the training images" in features) \
        == fit_on_train
    assert report.settings["features_fit_on_train"] == fit_on_train

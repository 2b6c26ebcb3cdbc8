"""Fidelity metrics (FID, KID, precision / recall / density / coverage) and the report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image

from synthmed.augment.dataset import ImageSet
from synthmed.errors import InputError
from synthmed.eval.fidelity import (
    evaluate_fidelity,
    fid,
    fidelity_metrics,
    kid,
    prdc,
    save_gallery,
    torchscript_features,
)


def gaussian(n: int, dim: int = 4, shift: float = 0.0, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, dim)) + shift


def numpy_fid(a: np.ndarray, b: np.ndarray) -> float:
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * covmean))


def brute_precision_recall(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    def radii(points: np.ndarray) -> np.ndarray:
        d = np.sqrt(((points[:, None] - points[None]) ** 2).sum(-1))
        return np.sort(d, axis=1)[:, k]  # column 0 is the point itself

    d = np.sqrt(((real[:, None] - fake[None]) ** 2).sum(-1))  # (N, M)
    precision = (d < radii(real)[:, None]).any(axis=0).mean()
    recall = (d < radii(fake)[None, :]).any(axis=1).mean()
    return float(precision), float(recall)


# -- FID ---------------------------------------------------------------------------------------


def test_fid_identical_is_zero():
    x = gaussian(60)
    assert fid(x, x) == pytest.approx(0.0, abs=1e-8)


def test_fid_matches_numpy_and_mean_shift():
    real = gaussian(400, seed=1)
    fake = gaussian(300, seed=2, shift=0.7)
    assert fid(real, fake) == pytest.approx(numpy_fid(real, fake), rel=1e-6)
    # same covariance: FID = ||mu1 - mu2||^2
    shift = np.array([1.0, -2.0, 0.0, 0.5])
    assert fid(real, real + shift) == pytest.approx((shift ** 2).sum(), rel=1e-9)
    assert fid(real, real + 2 * shift) > fid(real, real + shift) > 0


def test_fid_rejects_bad_shapes():
    with pytest.raises(InputError, match="features must be"):
        fid(gaussian(10, 4), gaussian(10, 3))
    with pytest.raises(InputError, match="2 feature dimensions"):
        fid(gaussian(10, 1), gaussian(10, 1))


# -- KID ---------------------------------------------------------------------------------------


def test_kid_same_vs_shifted_and_deterministic():
    real, same, shifted = gaussian(200, 8, seed=1), gaussian(200, 8, seed=2), \
        gaussian(200, 8, 1.0, seed=3)
    same_mean, same_std = kid(real, same, subsets=20, subset_size=100)
    shifted_mean, _ = kid(real, shifted, subsets=20, subset_size=100)
    assert abs(same_mean) < 0.02 and same_std > 0
    assert shifted_mean > 0.2 and shifted_mean > 10 * abs(same_mean)
    again = kid(real, same, subsets=20, subset_size=100, rng=np.random.default_rng(0))
    assert again == (same_mean, same_std)
    other = kid(real, same, subsets=20, subset_size=100, rng=np.random.default_rng(1))
    assert other != again


def test_kid_is_the_unbiased_formula_on_half_subsets():
    """Each subset holds half of each set: the closed-form unbiased MMD^2 of the drawn halves,
    averaged; the subsets differ, so their spread is not 0."""
    x, y = gaussian(12, 3, seed=4), gaussian(12, 3, 0.3, seed=5)
    mean, std = kid(x, y, subsets=3, subset_size=100, rng=np.random.default_rng(7))

    def kernel(a, b):
        return (a @ b.T / 3 + 1) ** 3

    rng, off, values = np.random.default_rng(7), ~np.eye(6, dtype=bool), []
    for _ in range(3):
        a, b = x[rng.choice(12, 6, replace=False)], y[rng.choice(12, 6, replace=False)]
        values.append(kernel(a, a)[off].mean() + kernel(b, b)[off].mean()
                      - 2 * kernel(a, b).mean())
    assert mean == pytest.approx(np.mean(values), rel=1e-9)
    assert std == pytest.approx(np.std(values), rel=1e-9) and std > 0


# -- precision / recall / density / coverage -----------------------------------------------------


def test_prdc_identical_sets():
    x = gaussian(80, 5)
    result = prdc(x, x.copy(), k=5)
    assert result["precision"] == result["recall"] == result["coverage"] == 1.0
    assert result["density"] == 1.0  # each real ball holds its centre and k - 1 others


def test_prdc_far_away_fakes():
    result = prdc(gaussian(50, seed=1), gaussian(50, seed=2, shift=100.0), k=3)
    assert result["precision"] == result["coverage"] == result["density"] == 0.0
    assert result["recall"] == 0.0


def test_prdc_mode_collapse_onto_one_cluster():
    cluster_a, cluster_b = gaussian(60, 2, 0.0, seed=1), gaussian(60, 2, 50.0, seed=2)
    real = np.concatenate([cluster_a, cluster_b])
    fake = gaussian(60, 2, 0.0, seed=3)  # only cluster a
    result = prdc(real, fake, k=5)
    assert result["precision"] > 0.9
    assert result["recall"] == pytest.approx(0.5, abs=0.06)
    assert result["coverage"] <= 0.5


def test_prdc_matches_brute_force():
    real, fake = gaussian(25, 3, seed=1), gaussian(20, 3, 0.5, seed=2)
    result = prdc(real, fake, k=3)
    precision, recall = brute_precision_recall(real, fake, 3)
    assert (result["precision"], result["recall"]) == pytest.approx((precision, recall))
    assert 0 < precision < 1 and 0 < recall < 1  # the test set is not degenerate


def test_fidelity_metrics_keys_and_counts():
    result = fidelity_metrics(gaussian(30, seed=1), gaussian(20, seed=2), k=5)
    assert set(result) == {"fid", "kid", "kid_std", "precision", "recall", "density",
                           "coverage", "n_real", "n_fake"}
    assert (result["n_real"], result["n_fake"]) == (30, 20)
    with pytest.raises(InputError, match="at least 6 images on each side, got 30 real and 5"):
        fidelity_metrics(gaussian(30), gaussian(5), k=5)


# -- images ------------------------------------------------------------------------------------


def projection_features(dim: int = 16):
    """Flatten, then a fixed random projection to ``dim`` features."""

    def features(images: np.ndarray) -> np.ndarray:
        flat = images.reshape(len(images), -1)
        weights = np.random.default_rng(123).normal(size=(flat.shape[1], dim))
        return flat @ weights / np.sqrt(flat.shape[1])

    return features


def blob_images(n: int, seed: int, labels: np.ndarray | None = None) -> np.ndarray:
    """Smooth random blobs, one per image, in [-1, 1]; the label sets the blob's side."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:12, 0:12]
    images = np.empty((n, 1, 12, 12), np.float32)
    for i in range(n):
        cx = rng.uniform(2, 5) + (5 if labels is not None and labels[i] == 1 else 0)
        cy = rng.uniform(2, 10)
        images[i, 0] = 2 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 8) - 1
    return images + rng.normal(0, 0.05, images.shape).astype(np.float32)


@pytest.fixture(scope="module")
def real_set() -> ImageSet:
    labels = np.repeat([0, 1], 40)
    return ImageSet.from_arrays(blob_images(80, 0, labels), labels=labels,
                                class_names=["left", "right"])


def test_copies_of_real_images_reach_the_floor(real_set):
    copies = ImageSet.from_arrays(real_set.images.copy(), labels=real_set.labels,
                                  class_names=real_set.class_names, synthetic=True)
    report = evaluate_fidelity(real_set, copies, projection_features(), "random projection")
    assert report.overall["fid"] <= report.floor["fid"] + 1e-6
    assert report.overall["precision"] > 0.95 and report.overall["recall"] > 0.95
    assert report.floor["fid"] > 0  # the halves differ: a real, positive floor
    assert report.floor["n_real"] + report.floor["n_fake"] == len(real_set)


def test_pure_noise_is_far_above_the_floor(real_set):
    noise = np.random.default_rng(5).uniform(-1, 1, (60, 1, 12, 12)).astype(np.float32)
    report = evaluate_fidelity(real_set, ImageSet.from_arrays(noise), projection_features(),
                               "random projection")
    assert report.overall["fid"] > 10 * report.floor["fid"]
    assert report.overall["precision"] < 0.05
    assert report.per_class == {} and report.skipped_classes == []  # noise is unlabelled


def test_per_class_matches_names_and_skips_small_classes(real_set):
    # synthetic "right" is labelled 0 in its own class order; "left" has only 3 images
    fake_labels = np.array([0] * 30 + [1] * 3)
    fake_images = np.concatenate([real_set.images[40:70], real_set.images[:3]])
    synthetic = ImageSet.from_arrays(fake_images, labels=fake_labels,
                                     class_names=["right", "left"])
    report = evaluate_fidelity(real_set, synthetic, projection_features(), "random projection")
    assert list(report.per_class) == ["right"] and report.skipped_classes == ["left"]
    right = report.per_class["right"]
    assert right["synthetic"]["n_real"] == 40 and right["synthetic"]["n_fake"] == 30
    assert right["synthetic"]["precision"] == 1.0  # copies of real "right" images
    assert right["floor"]["n_real"] + right["floor"]["n_fake"] == 40
    # matched by index instead of name, "right" would be compared with real "left" images
    left_images = ImageSet.from_arrays(real_set.images[:30], labels=np.zeros(30, np.int64),
                                       class_names=["right"])
    wrong = evaluate_fidelity(real_set, left_images, projection_features(), "random projection")
    assert wrong.per_class["right"]["synthetic"]["precision"] < 0.5


def test_report_json_and_markdown(real_set):
    synthetic = ImageSet.from_arrays(blob_images(30, 9, np.repeat([0, 1], 15)),
                                     labels=np.repeat([0, 1], 15), class_names=["left", "right"])
    report = evaluate_fidelity(real_set, synthetic, projection_features(), "my-extractor")
    report.overall["fid"] = float("inf")  # what a JSON writer must survive
    document = report.to_json()
    json.dumps(document, allow_nan=False)
    assert document["overall"]["fid"] is None and document["extractor"] == "my-extractor"
    markdown = report.to_markdown()
    assert "my-extractor" in markdown and "floor" in markdown
    assert "left" in markdown and "right" in markdown
    assert markdown.count("\n| ") == 1 + 2 + 2 * 2  # header, overall + floor, two per class


def test_evaluate_rejects_too_few_and_bad_features(real_set):
    tiny = ImageSet.from_arrays(real_set.images[:3])
    with pytest.raises(InputError, match="got 80 real and 3 synthetic"):
        evaluate_fidelity(real_set, tiny, projection_features(), "x")
    with pytest.raises(InputError, match="feature extractor returned shape"):
        evaluate_fidelity(real_set, real_set, lambda images: images.mean(axis=(1, 2, 3)), "x")
    with pytest.raises(InputError, match="NaN or inf for real images"):
        evaluate_fidelity(real_set, real_set, lambda images: np.full((len(images), 2), np.nan),
                          "x")


def test_save_gallery(real_set, tmp_path):
    path = tmp_path / "gallery.png"
    synthetic = ImageSet.from_arrays(real_set.images[:20], labels=real_set.labels[:20],
                                     class_names=real_set.class_names)
    save_gallery(real_set, synthetic, path, per_class=4)
    with Image.open(path) as image:
        width, height = image.size
    assert width >= 300 and height >= 4 * 60  # four rows: left/right x real/synthetic
    assert 2_000 < path.stat().st_size < 2_000_000
    assert [p.name for p in tmp_path.iterdir()] == ["gallery.png"]  # no temporary left


# -- TorchScript -------------------------------------------------------------------------------

torch_jit_deprecated = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


class TinyExtractor(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 3, 3)
        self.pool = torch.nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(x))  # (B, 3, 1, 1)


@torch_jit_deprecated
def test_torchscript_features(tmp_path, real_set):
    torch.manual_seed(0)
    module = TinyExtractor().eval()
    path = tmp_path / "extractor.pt"
    torch.jit.script(module).save(str(path))
    features = torchscript_features(path, batch_size=16)
    result = features(real_set.images[:37])
    assert result.shape == (37, 3) and result.dtype == np.float64
    with torch.no_grad():
        expected = module(torch.from_numpy(real_set.images[:37])).reshape(37, 3).numpy()
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-6)


@torch_jit_deprecated
def test_torchscript_features_errors(tmp_path):
    with pytest.raises(InputError, match="no such TorchScript file"):
        torchscript_features(tmp_path / "missing.pt")
    not_script = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, not_script)
    with pytest.raises(InputError, match="is not a TorchScript file"):
        torchscript_features(not_script)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(InputError, match="notes.txt: is not a TorchScript file"):
        torchscript_features(text)

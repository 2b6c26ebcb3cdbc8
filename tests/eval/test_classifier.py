"""The downstream classifier: networks, classic augmentation and the step-budgeted trainer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synthmed.augment.augmentation import classic_augment, mri_augment
from synthmed.errors import InputError
from synthmed.eval.classifier import (
    ClassifierConfig,
    Pretraining,
    TrainedClassifier,
    build_classifier,
    train_classifier,
)

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"width": 8, "batch_size": 16, "lr": 1e-3}


def halves(n: int, seed: int, noise: float = 0.3, swap: bool = False) -> tuple[np.ndarray,
                                                                               np.ndarray]:
    """16x16 images: class 0 bright left half, class 1 bright right half (``swap`` flips the
    rule), plus Gaussian noise; alternating labels."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    images = rng.normal(-0.5, noise, (n, 1, 16, 16))
    right = labels.astype(bool) ^ swap
    images[right, :, :, 8:] += 1.0
    images[~right, :, :, :8] += 1.0
    return np.clip(images, -1, 1).astype(np.float32), labels


def balanced_accuracy(labels: np.ndarray, scores: np.ndarray, threshold: float) -> float:
    predicted = scores >= threshold
    return 0.5 * (predicted[labels == 1].mean() + (~predicted[labels == 0]).mean())


@pytest.fixture(scope="module")
def easy() -> dict[str, np.ndarray]:
    x_train, y_train = halves(64, seed=1)
    x_val, y_val = halves(32, seed=2)
    return {"train_images": x_train, "train_labels": y_train, "val_images": x_val,
            "val_labels": y_val}


@pytest.fixture(scope="module")
def trained(easy) -> TrainedClassifier:
    return train_classifier(**easy, num_classes=2,
                            config=ClassifierConfig(steps=60, eval_every=25, **TINY), seed=0)


# -- networks ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("arch", "size", "dim"), [
    ("small-cnn", 28, 8 * 8), ("resnet18", 32, 512), ("densenet121", 32, 1024),
])
@pytest.mark.parametrize("channels", [1, 3])
def test_build_classifier_shapes(arch, size, dim, channels):
    model = build_classifier(arch, channels, num_classes=3, width=8).eval()
    x = torch.randn(2, channels, size, size)
    with torch.no_grad():
        assert model(x).shape == (2, 3)
        assert model.features(x).shape == (2, dim)


@pytest.mark.parametrize("arch", ["small-cnn", "resnet18"])
def test_forward_is_head_of_features(arch):
    torch.manual_seed(0)
    model = build_classifier(arch, 1, num_classes=4, width=8).eval()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.head(model.features(x)))


def test_build_classifier_rejects_unknown_arch_and_one_class():
    with pytest.raises(InputError, match="unknown classifier arch 'vgg'"):
        build_classifier("vgg", 1, 2)
    with pytest.raises(InputError, match="at least 2 classes"):
        build_classifier("small-cnn", 1, 1)


# -- classic augmentation ---------------------------------------------------------------------


def gradient_batch(n: int = 32, size: int = 16) -> torch.Tensor:
    """Left-to-right ramp from -0.8 to 0.8, so a flip swaps the sign of right - left."""
    return torch.linspace(-0.8, 0.8, size).expand(n, 1, size, size).clone()


def test_classic_augment_reproducible_in_range_and_flips():
    x = gradient_batch()
    a = classic_augment(x, torch.Generator().manual_seed(3))
    b = classic_augment(x, torch.Generator().manual_seed(3))
    c = classic_augment(x, torch.Generator().manual_seed(4))
    assert a.shape == x.shape
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)
    assert a.min() >= -1 and a.max() <= 1
    slope = a[:, 0, :, -3:].mean(dim=(1, 2)) - a[:, 0, :, :3].mean(dim=(1, 2))  # (B,)
    assert 0 < int((slope < 0).sum()) < len(x)  # some items flipped, some not
    assert not torch.allclose(a[slope > 0], x[slope > 0])  # the others moved too


def test_classic_augment_leaves_global_rng_alone():
    state = torch.get_rng_state()
    classic_augment(gradient_batch(4), torch.Generator().manual_seed(0))
    assert torch.equal(state, torch.get_rng_state())


def test_mri_augment_is_seeded_in_range_and_changes_intensities_not_geometry():
    x = gradient_batch(32)
    a = mri_augment(x, torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, mri_augment(x, torch.Generator().manual_seed(3)), rtol=0, atol=0)
    assert not torch.allclose(a, mri_augment(x, torch.Generator().manual_seed(4)))
    assert a.shape == x.shape and a.dtype == x.dtype and a.min() >= -1 and a.max() <= 1
    changed = (a - x).abs().amax(dim=(1, 2, 3)) > 1e-3  # (B,)
    assert 0 < int(changed.sum()) <= len(x)
    # no flip or shift: every image still rises from left to right
    assert (a[:, 0, :, -4:].mean(dim=(1, 2)) > a[:, 0, :, :4].mean(dim=(1, 2))).all()
    state = torch.get_rng_state()
    mri_augment(x, torch.Generator().manual_seed(0))
    assert torch.equal(state, torch.get_rng_state())


# -- training ---------------------------------------------------------------------------------


def test_train_classifier_learns_and_keeps_the_best_pass(trained, easy):
    assert [e["step"] for e in trained.curve] == [25, 50, 60]  # every 25 steps + the last
    assert max(e["val_auroc"] for e in trained.curve) > 0.95
    keys = [(e["val_auroc"], -e["val_loss"]) for e in trained.curve]
    best = trained.curve[keys.index(max(keys))]  # highest AUROC, ties to the lower loss
    assert trained.best_step == best["step"]
    assert not trained.model.training

    probs = trained.predict_proba(easy["val_images"], batch_size=7)
    assert probs.shape == (32, 2) and probs.dtype == np.float64
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    val_loss = -np.mean(np.log(probs[np.arange(32), easy["val_labels"]]))
    assert val_loss == pytest.approx(best["val_loss"], rel=1e-5)  # the best state is loaded
    features = trained.features(easy["val_images"])
    assert features.shape == (32, 64) and features.dtype == np.float32


def test_pretraining_comes_first_within_the_same_budget(easy):
    swapped_images, swapped_labels = halves(64, seed=3, swap=True)
    config = ClassifierConfig(steps=60, eval_every=10, **TINY)
    trained = train_classifier(**easy, num_classes=2, config=config, seed=0,
                               pretraining=Pretraining(swapped_images, swapped_labels, 30))
    aurocs = {e["step"]: e["val_auroc"] for e in trained.curve}
    assert list(aurocs) == [10, 20, 30, 40, 50, 60]
    assert aurocs[30] < 0.2 and aurocs[60] > 0.9  # the swapped rule first, then the real one
    for steps, message in ((60, "between 1 and 59"), (0, "between 1 and 59")):
        with pytest.raises(InputError, match=message):
            train_classifier(**easy, num_classes=2, config=config, seed=0,
                             pretraining=Pretraining(swapped_images, swapped_labels, steps))
    with pytest.raises(InputError, match=r"pretraining images are \(1, 8, 8\)"):
        train_classifier(**easy, num_classes=2, config=config, seed=0,
                         pretraining=Pretraining(swapped_images[:, :, :8, :8], swapped_labels, 5))


def test_loss_weights_of_zero_silence_their_images(easy):
    swapped_images, swapped_labels = halves(64, seed=3, swap=True)
    mixed = {**easy, "train_images": np.concatenate([easy["train_images"], swapped_images]),
             "train_labels": np.concatenate([easy["train_labels"], swapped_labels])}
    config = ClassifierConfig(steps=40, eval_every=10, **TINY)
    silenced = train_classifier(**mixed, num_classes=2, config=config, seed=0,
                                weights=np.repeat([1.0, 0.0], 64))
    heard = train_classifier(**mixed, num_classes=2, config=config, seed=0,
                             weights=np.ones(128))
    assert silenced.curve[-1]["val_auroc"] > 0.9 > heard.curve[-1]["val_auroc"] + 0.2
    with pytest.raises(InputError, match="weights must be 128 finite non-negative"):
        train_classifier(**mixed, num_classes=2, config=config, seed=0, weights=-np.ones(128))
    with pytest.raises(InputError, match="unknown augmentation 'blur'"):
        train_classifier(**mixed, num_classes=2, config=config, seed=0, augment=("blur",))


def test_train_classifier_is_deterministic_and_seeded(easy):
    config = ClassifierConfig(steps=12, eval_every=6, **TINY)
    runs = [train_classifier(**easy, num_classes=2, config=config, seed=s,
                               augment=("classic", "mri"))
            for s in (5, 5, 6)]
    probs = [r.predict_proba(easy["val_images"]) for r in runs]
    np.testing.assert_array_equal(probs[0], probs[1])
    assert runs[0].curve == runs[1].curve
    assert not np.allclose(probs[0], probs[2])


def test_train_classifier_counts_steps_not_epochs(easy):
    done: list[int] = []
    result = train_classifier(**easy, num_classes=2,
                              config=ClassifierConfig(steps=10, eval_every=5, **TINY), seed=0,
                              progress=done.append)
    assert done == [5, 5]
    assert [e["step"] for e in result.curve] == [5, 10]  # no duplicate pass at the last step


def test_converged_false_while_still_improving(easy):
    result = train_classifier(**easy, num_classes=2,
                              config=ClassifierConfig(steps=30, eval_every=3, **TINY), seed=0)
    assert len(result.curve) == 10
    losses = [e["val_loss"] for e in result.curve]
    assert losses[-1] == min(losses)
    assert result.best_step >= 24  # among the last 3 passes
    assert not result.converged


def test_converged_true_when_validation_gets_worse(easy):
    # validation follows the opposite rule: training makes it worse, the first pass is best
    x_val, y_val = halves(32, seed=2, swap=True)
    data = dict(easy, val_images=x_val, val_labels=y_val)
    result = train_classifier(**data, num_classes=2,
                              config=ClassifierConfig(steps=30, eval_every=3, **TINY), seed=0)
    assert result.curve[-1]["val_auroc"] < 0.1
    assert result.best_step <= 21
    assert result.converged


def test_threshold_beats_one_half_on_validation():
    x_train, y_train = halves(64, seed=1, noise=1.2)
    x_val, y_val = halves(48, seed=2, noise=1.2)
    result = train_classifier(x_train, y_train, x_val, y_val, 2,
                              ClassifierConfig(steps=6, eval_every=3, **TINY), seed=0)
    scores = result.predict_proba(x_val)[:, 1]
    assert result.threshold is not None
    assert balanced_accuracy(y_val, scores, result.threshold) >= \
        balanced_accuracy(y_val, scores, 0.5)


def test_multiclass_has_no_threshold_and_bf16_runs():
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (24, 1, 16, 16)).astype(np.float32)
    labels = np.arange(24) % 3
    result = train_classifier(images, labels, images, labels, 3,
                              ClassifierConfig(steps=2, eval_every=1, precision="bf16", **TINY),
                              seed=0)
    assert result.threshold is None
    assert np.isfinite(result.curve[-1]["val_auroc"])
    probs = result.predict_proba(images)
    assert probs.shape == (24, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)


def test_validation_missing_a_class_selects_on_loss(easy):
    keep = easy["val_labels"] == 0
    result = train_classifier(easy["train_images"], easy["train_labels"],
                              easy["val_images"][keep], easy["val_labels"][keep], 2,
                              ClassifierConfig(steps=6, eval_every=2, **TINY), seed=0)
    losses = [e["val_loss"] for e in result.curve]
    assert all(np.isnan(e["val_auroc"]) for e in result.curve)
    assert result.best_step == result.curve[int(np.argmin(losses))]["step"]
    assert result.threshold == 0.5


def test_global_rng_untouched(easy):
    torch.manual_seed(123)
    state = torch.get_rng_state()
    train_classifier(**easy, num_classes=2,
                     config=ClassifierConfig(steps=2, eval_every=1, **TINY), seed=0)
    assert torch.equal(state, torch.get_rng_state())


# -- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("change", "message"), [
    ({"train_labels": np.array([0, 1, 2, 1])}, r"train labels must lie in \[0, 1\]"),
    ({"train_labels": np.array([0, -1, 1, 1])}, r"train labels must lie in \[0, 1\]"),
    ({"train_images": np.zeros((0, 1, 16, 16), np.float32),
      "train_labels": np.zeros(0, np.int64)}, "the train set is empty"),
    ({"train_images": np.zeros((4, 16, 16), np.float32)}, r"must be \(N, C, H, W\)"),
    ({"val_labels": np.array([0, 1, 0])}, "val has 4 images but 3 labels"),
    ({"val_images": np.zeros((4, 3, 16, 16), np.float32)}, "val images have 3 channels"),
    ({"train_images": np.full((4, 1, 16, 16), np.nan, np.float32)}, "NaN"),
])
def test_train_classifier_errors(change, message):
    data = {"train_images": np.zeros((4, 1, 16, 16), np.float32),
            "train_labels": np.array([0, 1, 0, 1]),
            "val_images": np.zeros((4, 1, 16, 16), np.float32),
            "val_labels": np.array([0, 1, 0, 1])} | change
    with pytest.raises(InputError, match=message):
        train_classifier(**data, num_classes=2, config=ClassifierConfig(steps=1, **TINY), seed=0)


def test_densenet_rejects_small_images():
    images = np.zeros((4, 1, 28, 28), np.float32)
    labels = np.array([0, 1, 0, 1])
    with pytest.raises(InputError, match="densenet121 needs images of at least 29 px"):
        train_classifier(images, labels, images, labels, 2,
                         ClassifierConfig(arch="densenet121", steps=1), seed=0)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"arch": "vgg"}, "unknown classifier arch"),
    ({"precision": "fp16"}, "unknown precision"),
    ({"steps": 0}, "steps must be at least 1"),
    ({"batch_size": 1}, "batch_size must be at least 2"),
    ({"lr": 0.0}, "lr must be positive"),
    ({"eval_every": 0}, "eval_every must be at least 1"),
])
def test_config_validation(kwargs, message):
    with pytest.raises(InputError, match=message):
        ClassifierConfig(**kwargs)

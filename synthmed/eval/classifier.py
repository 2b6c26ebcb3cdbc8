"""The downstream classifier of the utility evaluation: networks, classic augmentation and a
seeded, step-budgeted training loop with validation-only model selection.

Every regime (real only, real + classic augmentation, real + synthetic, ...) trains for the
same number of optimizer steps, whatever its training-set size. Batches come from seeded
permutations of the training set, one after another, so a batch may straddle two passes.
The best state on the validation split (highest val AUROC, ties to the lower val loss) is
kept; the test split is never seen here (the harness calls :meth:`TrainedClassifier.
predict_proba` on it once per trained model).

Randomness: ``seed`` seeds the weight initialisation and dropout (inside
``torch.random.fork_rng``, so the caller's global RNG is untouched), the batch order and the
augmentation (two explicit generators, so a regime with and without augmentation sees the
same batch order for the same seed). Same seed + same inputs + same thread count -> the same
model.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.nets import DenseNet121, resnet18
from torch import nn

from synthmed.augment.augmentation import AUGMENTATIONS
from synthmed.errors import InputError
from synthmed.eval.metrics import choose_threshold, classification_metrics
from synthmed.gan.config import PRECISIONS

ARCHITECTURES = ("small-cnn", "resnet18", "densenet121")
# Smallest image side each network accepts: DenseNet121's stem and three 2x2 average-pool
# transitions leave no pixel below 29 px.
MIN_SIDE = {"small-cnn": 1, "resnet18": 1, "densenet121": 29}


@dataclass(frozen=True)
class ClassifierConfig:
    """How the downstream classifier is built and trained.

    Args:
        arch: one of :data:`ARCHITECTURES`.
        steps: optimizer steps, the same for every regime.
        batch_size: images per step (at least 2, for BatchNorm).
        lr: AdamW learning rate, constant.
        weight_decay: AdamW weight decay.
        eval_every: steps between validation passes (one more at the last step).
        width: channel width of the first small-cnn block (doubled per block).
        precision: ``"fp32"`` or ``"bf16"`` (CPU autocast around forward passes).
    """

    arch: str = "small-cnn"
    steps: int = 600
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    eval_every: int = 25
    width: int = 16
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise InputError(f"unknown classifier arch {self.arch!r}, use one of "
                             f"{', '.join(ARCHITECTURES)}")
        if self.precision not in PRECISIONS:
            raise InputError(f"unknown precision {self.precision!r}, use fp32 or bf16")
        for name, minimum in (("steps", 1), ("batch_size", 2), ("eval_every", 1), ("width", 1)):
            if getattr(self, name) < minimum:
                raise InputError(f"classifier {name} must be at least {minimum}, "
                                 f"got {getattr(self, name)}")
        if not self.lr > 0:
            raise InputError(f"classifier lr must be positive, got {self.lr}")
        if not self.weight_decay >= 0:
            raise InputError(f"classifier weight_decay must be >= 0, got {self.weight_decay}")


# -- networks ---------------------------------------------------------------------------------


class Classifier(nn.Module):
    """A body that maps images to pooled features and a linear head on them.

    Args:
        body: ``(B, C, H, W) -> (B, D)``, ending with global pooling.
        head: linear ``D -> K``.
        dropout: dropout rate before the head (training only).

    Examples:
        >>> net = build_classifier("small-cnn", in_channels=1, num_classes=3, width=8)
        >>> x = torch.zeros(2, 1, 28, 28)
        >>> net.features(x).shape, net(x).shape
        (torch.Size([2, 64]), torch.Size([2, 3]))
    """

    def __init__(self, body: nn.Module, head: nn.Linear, dropout: float = 0.0) -> None:
        super().__init__()
        self.body = body
        self.dropout = nn.Dropout(dropout)
        self.head = head

    @property
    def feature_dim(self) -> int:
        return self.head.in_features

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate representation ``(B, D)`` of images ``(B, C, H, W)``."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, K)``."""
        return self.head(self.dropout(self.features(x)))


def _conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True)]


def small_cnn(in_channels: int, num_classes: int, width: int = 32) -> Classifier:
    """Four blocks of (conv3x3-BN-ReLU) x 2 + 2x2 max-pool with widths w, 2w, 4w, 8w, global
    average pool, dropout 0.2, linear. Pools use ``ceil_mode`` so a 1 px map stays 1 px
    (28 -> 14 -> 7 -> 4 -> 2, 64 -> 32 -> 16 -> 8 -> 4). About 1.17 M parameters at w = 32."""
    layers: list[nn.Module] = []
    c_in = in_channels
    for c_out in (width, 2 * width, 4 * width, 8 * width):
        layers += _conv_bn_relu(c_in, c_out) + _conv_bn_relu(c_out, c_out)
        layers.append(nn.MaxPool2d(2, ceil_mode=True))  # (B, c_out, ceil(H/2), ceil(W/2))
        c_in = c_out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(1)]  # (B, 8w)
    return Classifier(nn.Sequential(*layers), nn.Linear(c_in, num_classes), dropout=0.2)


def build_classifier(arch: str, in_channels: int, num_classes: int,
                     width: int = 32) -> Classifier:
    """A randomly initialised classifier with ``features(x) -> (B, D)`` and logits ``(B, K)``.

    ``small-cnn`` is :func:`small_cnn` (D = 8 * width). ``resnet18`` is MONAI's 2D ResNet-18
    (7x7 stride-1 stem + max-pool, D = 512): its ``fc`` becomes the head and the rest, which
    ends with average pool + flatten, the body. ``densenet121`` is MONAI's 2D DenseNet121
    (D = 1024, images of at least 29 px): ``features`` + the class layers' ReLU, pool and
    flatten form the body, their final linear the head. No pretrained weights are loaded.

    Args:
        arch: one of :data:`ARCHITECTURES`.
        in_channels: image channels C.
        num_classes: K, at least 2.
        width: small-cnn channel width (ignored by the MONAI networks).
    """
    if num_classes < 2:
        raise InputError(f"a classifier needs at least 2 classes, got {num_classes}")
    if arch == "small-cnn":
        return small_cnn(in_channels, num_classes, width)
    if arch == "resnet18":
        net = resnet18(pretrained=False, spatial_dims=2, n_input_channels=in_channels,
                       num_classes=num_classes)
        head, net.fc = net.fc, None  # without fc, MONAI's forward returns the pooled features
        return Classifier(net, head)
    if arch == "densenet121":
        net = DenseNet121(spatial_dims=2, in_channels=in_channels, out_channels=num_classes,
                          pretrained=False)
        tail = net.class_layers
        return Classifier(nn.Sequential(net.features, tail.relu, tail.pool, tail.flatten),
                          tail.out)
    raise InputError(f"unknown classifier arch {arch!r}, use one of {', '.join(ARCHITECTURES)}")


# -- training ---------------------------------------------------------------------------------


@dataclass
class TrainedClassifier:
    """A trained classifier with its validation curve.

    Args:
        model: the best-on-validation weights, in eval mode.
        curve: one entry per validation pass: ``step``, ``val_loss``, ``val_auroc`` (nan when
            the validation set lacks a class) and ``train_loss`` (mean over the steps since
            the previous pass).
        best_step: the step of the selected state.
        converged: the best pass is not among the last 3 passes.
        threshold: binary only, the threshold on ``p[:, 1]`` with the highest balanced
            accuracy (Youden's J) on validation (0.5 when validation lacks a class);
            ``None`` for K > 2.
        precision: ``"fp32"`` or ``"bf16"``, used for inference too.
    """

    model: nn.Module
    curve: list[dict[str, float]]
    best_step: int
    converged: bool
    threshold: float | None
    precision: str = "fp32"

    def predict_proba(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Softmax probabilities ``(N, K)`` float64 of images ``(N, C, H, W)`` in [-1, 1]."""
        logits = _run(self.model, _as_images(images, "images"), batch_size, self.precision,
                      self.model)
        return torch.softmax(logits.double(), dim=1).numpy()

    def features(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Penultimate features ``(N, D)`` float32 of images ``(N, C, H, W)``."""
        feats = _run(self.model, _as_images(images, "images"), batch_size, self.precision,
                     self.model.features)
        return feats.float().numpy()


@dataclass(frozen=True)
class Pretraining:
    """Images a classifier trains on first, for the first ``steps`` of its budget (bridged
    transfer: synthetic images, then the real ones).

    Args:
        images: ``(P, C, H, W)`` in [-1, 1].
        labels: ``(P,)`` ints in ``[0, num_classes)``.
        steps: optimiser steps on these images, fewer than the budget.
    """

    images: np.ndarray
    labels: np.ndarray
    steps: int


def train_classifier(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    val_images: np.ndarray,
    val_labels: np.ndarray,
    num_classes: int,
    config: ClassifierConfig,
    seed: int,
    *,
    augment: tuple[str, ...] = (),
    weights: np.ndarray | None = None,
    pretraining: Pretraining | None = None,
    progress: Callable[[int], None] | None = None,
) -> TrainedClassifier:
    """Train ``config.arch`` for exactly ``config.steps`` AdamW steps; keep the best state on
    validation.

    Cross-entropy loss, constant learning rate. A validation pass every ``eval_every`` steps
    and at the last step scores val loss and val AUROC (binary: on ``p[:, 1]``; K > 2: macro
    one-vs-rest); the state with the highest AUROC (ties: lower loss) is kept, or the lowest
    loss when the validation set lacks a class.

    Args:
        train_images: ``(N, C, H, W)`` in [-1, 1].
        train_labels: ``(N,)`` ints in ``[0, num_classes)``.
        val_images: ``(M, C, H, W)``, the model-selection split.
        val_labels: ``(M,)``.
        num_classes: K, at least 2.
        config: architecture and optimisation settings.
        seed: seeds initialisation, dropout, batch order and augmentation.
        augment: names in :data:`AUGMENTATIONS`, applied in order to every training batch.
        weights: ``(N,)`` non-negative loss weight of each training image (``None``: 1).
        pretraining: images trained on first, within the same ``config.steps``.
        progress: called with the number of steps just done, after each validation pass.
    """
    x_train, y_train, x_val, y_val = _checked_inputs(train_images, train_labels, val_images,
                                                     val_labels, num_classes, config.arch)
    w_train = _checked_weights(weights, len(x_train))
    unknown = [name for name in augment if name not in AUGMENTATIONS]
    if unknown:
        raise InputError(f"unknown augmentation {unknown[0]!r}, use {', '.join(AUGMENTATIONS)}")
    order_seed, augment_seed = np.random.SeedSequence(seed).generate_state(2)
    order_rng = torch.Generator().manual_seed(int(order_seed))
    augment_rng = torch.Generator().manual_seed(int(augment_seed))
    selection = _Selection(x_val, y_val, num_classes, config.precision)
    stages = [(x_train, y_train, w_train, config.steps)]
    if pretraining is not None:
        x_first, y_first = _checked_pretraining(pretraining, x_train, num_classes, config)
        stages = [(x_first, y_first, None, pretraining.steps),
                  (x_train, y_train, w_train, config.steps - pretraining.steps)]

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # weight init and dropout
        model = build_classifier(config.arch, x_train.shape[1], num_classes, config.width)
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr,
                                      weight_decay=config.weight_decay)
        schedule = ((x, y, w, index) for x, y, w, steps in stages
                    for index in itertools.islice(_batches(len(x), config.batch_size,
                                                           order_rng), steps))
        train_losses: list[float] = []
        for step, (x_all, y_all, w_all, index) in enumerate(schedule, start=1):
            x = x_all[index]  # (B, C, H, W)
            for name in augment:
                x = AUGMENTATIONS[name](x, augment_rng)
            train_losses.append(_train_step(model, optimizer, x, y_all[index],
                                            None if w_all is None else w_all[index],
                                            config.precision))
            if step % config.eval_every and step != config.steps:
                continue
            selection.score(model, step, float(np.mean(train_losses)))
            if progress is not None:
                progress(len(train_losses))
            train_losses = []
    return selection.trained(model, num_classes)


def _checked_weights(weights: np.ndarray | None, n: int) -> torch.Tensor | None:
    """Per-image loss weights ``(N,)`` float32, or ``None``; InputError when they do not fit."""
    if weights is None:
        return None
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,) or not np.isfinite(w).all() or (w < 0).any():
        raise InputError(f"weights must be {n} finite non-negative numbers, one per training "
                         f"image, got shape {w.shape}")
    return torch.from_numpy(w.astype(np.float32))


def _checked_pretraining(pretraining: Pretraining, x_train: torch.Tensor, num_classes: int,
                         config: ClassifierConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The pretraining images and labels as tensors, checked like the training split."""
    if not 1 <= pretraining.steps < config.steps:
        raise InputError(f"pretraining steps must be between 1 and {config.steps - 1} (the "
                         f"budget is {config.steps}), got {pretraining.steps}")
    x, y = _check_split(pretraining.images, pretraining.labels, num_classes, "pretraining")
    if x.shape[1:] != x_train.shape[1:]:
        raise InputError(f"pretraining images are {tuple(x.shape[1:])}, training images "
                         f"{tuple(x_train.shape[1:])}")
    return x, y


def _checked_inputs(train_images: np.ndarray, train_labels: np.ndarray, val_images: np.ndarray,
                    val_labels: np.ndarray, num_classes: int, arch: str
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The training and validation images and labels as tensors, checked against each other
    and against the smallest image side ``arch`` accepts."""
    x_train, y_train = _check_split(train_images, train_labels, num_classes, "train")
    x_val, y_val = _check_split(val_images, val_labels, num_classes, "val")
    if x_val.shape[1] != x_train.shape[1]:
        raise InputError(f"val images have {x_val.shape[1]} channels, train images "
                         f"{x_train.shape[1]}")
    side = min(x_train.shape[2:])
    if side < MIN_SIDE[arch]:
        raise InputError(f"{arch} needs images of at least {MIN_SIDE[arch]} px, "
                         f"got {tuple(x_train.shape[2:])}")
    return x_train, y_train, x_val, y_val


def _train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                y: torch.Tensor, w: torch.Tensor | None, precision: str) -> float:
    """One optimizer step on a batch ``x (B, C, H, W)``, ``y (B,)``, loss weights ``w (B,)``
    (``None``: 1); its mean (weighted) cross-entropy loss."""
    model.train()
    with _autocast(precision):
        logits = model(x)  # (B, K)
    if w is None:
        loss = F.cross_entropy(logits.float(), y)
    else:
        loss = (F.cross_entropy(logits.float(), y, reduction="none") * w).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


class _Selection:
    """The validation passes of one training run and the best state among them: the highest
    val AUROC (ties: lower val loss), or the lowest val loss when validation lacks a class."""

    def __init__(self, x_val: torch.Tensor, y_val: torch.Tensor, num_classes: int,
                 precision: str) -> None:
        self.x_val, self.y_val, self.precision = x_val, y_val, precision
        self.y_val_np = y_val.numpy()
        self.val_complete = len(np.unique(self.y_val_np)) == num_classes
        self.curve: list[dict[str, float]] = []
        self.best_key: tuple[float, ...] | None = None
        self.best_index = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_probs: np.ndarray | None = None

    def score(self, model: nn.Module, step: int, train_loss: float) -> None:
        """A validation pass after ``step``: a point of the curve, and the model's state when
        it is the best so far."""
        model.eval()
        logits = _run(model, self.x_val, 256, self.precision, model).double()  # (M, K)
        probs = torch.softmax(logits, dim=1).numpy()
        val_loss = F.cross_entropy(logits, self.y_val).item()
        auroc = classification_metrics(self.y_val_np, probs)["auroc"]
        self.curve.append({"step": step, "val_loss": val_loss, "val_auroc": auroc,
                           "train_loss": train_loss})
        key = (auroc, -val_loss) if self.val_complete else (-val_loss,)
        if self.best_key is None or key > self.best_key:
            self.best_key, self.best_index, self.best_probs = key, len(self.curve) - 1, probs
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def trained(self, model: nn.Module, num_classes: int) -> TrainedClassifier:
        """``model`` with the best state, in eval mode, and (binary) its threshold."""
        model.load_state_dict(self.best_state)
        model.eval()
        threshold = None
        if num_classes == 2:
            threshold = (choose_threshold(self.y_val_np, self.best_probs[:, 1])
                         if self.val_complete else 0.5)
        return TrainedClassifier(model=model, curve=self.curve,
                                 best_step=int(self.curve[self.best_index]["step"]),
                                 converged=self.best_index < len(self.curve) - 3,
                                 threshold=threshold, precision=self.precision)


def _batches(n: int, batch_size: int, rng: torch.Generator) -> Iterator[torch.Tensor]:
    """Index batches ``(batch_size,)`` cut from a stream of permutations of ``range(n)``."""
    pending = torch.empty(0, dtype=torch.long)
    while True:
        while len(pending) < batch_size:
            pending = torch.cat([pending, torch.randperm(n, generator=rng)])
        yield pending[:batch_size]
        pending = pending[batch_size:]


def _autocast(precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def _run(model: nn.Module, images: torch.Tensor, batch_size: int, precision: str,
         fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``fn`` over ``images`` in batches with ``model`` in eval mode, as float32."""
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    was_training = model.training
    model.eval()
    try:
        outs = []
        for start in range(0, len(images), batch_size):
            with _autocast(precision):
                outs.append(fn(images[start:start + batch_size]).float())
        return torch.cat(outs)
    finally:
        model.train(was_training)


def _as_images(images: np.ndarray, name: str) -> torch.Tensor:
    array = np.asarray(images)
    if array.ndim != 4:
        raise InputError(f"{name} must be (N, C, H, W), got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number):
        raise InputError(f"{name} must be numeric, got dtype {array.dtype}")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _check_split(images: np.ndarray, labels: np.ndarray, num_classes: int,
                 split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(N, C, H, W)`` float32 and labels ``(N,)`` int64 as tensors, or InputError."""
    if num_classes < 2:
        raise InputError(f"a classifier needs at least 2 classes, got num_classes={num_classes}")
    x = _as_images(images, f"{split} images")
    y = np.asarray(labels)
    if y.ndim != 1:
        raise InputError(f"{split} labels must be (N,), got shape {y.shape}")
    if len(y) != len(x):
        raise InputError(f"{split} has {len(x)} images but {len(y)} labels")
    if len(x) == 0:
        raise InputError(f"the {split} set is empty")
    if not np.issubdtype(y.dtype, np.integer):
        raise InputError(f"{split} labels must be integers, got dtype {y.dtype}")
    if y.min() < 0 or y.max() >= num_classes:
        raise InputError(f"{split} labels must lie in [0, {num_classes - 1}], found "
                         f"{y.min()}..{y.max()}")
    if not torch.isfinite(x).all():
        raise InputError(f"{split} images contain NaN or infinite values")
    return x, torch.from_numpy(y.astype(np.int64))

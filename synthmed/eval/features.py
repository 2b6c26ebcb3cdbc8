"""The feature space of the fidelity and privacy metrics.

No pretrained network can be downloaded, so the default feature extractor is ours: the
harness's classifier trained on the real training split (fixed seed, model selection on the
validation split), its penultimate layer as features. It is cached by the fingerprint of the
data and its settings under ``$SYNTHMED_CACHE`` (default ``~/.cache/synthmed``) and named in
every report, so numbers computed with it can be compared. A user's own TorchScript model can
replace it (:func:`synthmed.eval.fidelity.torchscript_features`).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from safetensors.torch import load_file, save_file

from synthmed.eval.classifier import (
    ClassifierConfig,
    TrainedClassifier,
    build_classifier,
    train_classifier,
)
from synthmed.eval.real_data import RealData

EXTRACTOR_SEED = 0


@dataclass
class Extractor:
    """Features ``(N, D)`` for images ``(N, C, H, W)`` in [-1, 1], and what they come from."""

    name: str
    classifier: TrainedClassifier

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.classifier.features(images)


def cache_dir() -> Path:
    return Path(os.environ.get("SYNTHMED_CACHE", Path.home() / ".cache" / "synthmed"))


def default_extractor(real: RealData, config: ClassifierConfig | None = None) -> Extractor:
    """The classifier trained on ``real.train`` (selected on ``real.val``), from the cache when
    the same data and settings were seen before."""
    config = config or ClassifierConfig()
    classes = len(real.train.class_names)
    key = hashlib.sha256(json.dumps({
        "train": real.train.fingerprint(), "val": real.val.fingerprint(),
        "config": asdict(config), "seed": EXTRACTOR_SEED,
    }, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir() / "extractors" / f"{key}.safetensors"
    if path.is_file():
        model = build_classifier(config.arch, real.train.channels, classes, config.width)
        model.load_state_dict(load_file(path))
        model.eval()
        trained = TrainedClassifier(model=model, curve=[], best_step=-1, converged=True,
                                    threshold=None, precision=config.precision)
    else:
        trained = train_classifier(real.train.images, real.train.labels, real.val.images,
                                   real.val.labels, classes, config, seed=EXTRACTOR_SEED)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        save_file({k: v.contiguous() for k, v in trained.model.state_dict().items()},
                  temporary)
        os.replace(temporary, path)
    name = (f"{config.arch} classifier trained on the real training split "
            f"({len(real.train)} images, seed {EXTRACTOR_SEED}, {config.steps} steps; "
            f"cache key {key})")
    return Extractor(name, trained)


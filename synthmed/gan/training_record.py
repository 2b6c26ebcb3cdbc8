"""A run's record of its training data (``RUN/training_data.json``): read and checked.

The record holds what the model was trained on (fingerprint, per-image hashes, classes,
intensity mappings, a CycleGAN's two domains, the privacy spent), never a path or a name
(GUIDE section 5); every value a command uses is type-checked when it is read.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from synthmed.errors import InputError
from synthmed.gan.checkpoint import TRAINING_DATA
from synthmed.settings import shown


def _training_data(run_dir: Path) -> dict[str, Any]:
    """The run's ``training_data.json`` record; ``{}`` when it has none."""
    path = run_dir / TRAINING_DATA
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InputError("is not valid JSON (corrupt or tampered)", path) from None
    if not isinstance(record, dict):
        raise InputError("is not a training data record (a JSON object)", path)
    return record


def read_training_data(run_dir: str | Path, model: Any = None) -> dict[str, Any]:
    """The run's ``training_data.json`` record (``{}`` when it has none), checked by
    :func:`check_training_data` against the model config ``model`` when given."""
    run_dir = Path(run_dir)
    record = _training_data(run_dir)
    check_training_data(record, run_dir / TRAINING_DATA, model)
    return record


def check_training_data(record: dict[str, Any], where: str | Path, model: Any = None) -> None:
    """Check a run's training data record (``training_data.json``) against its model config
    ``model``: the types of every value the commands use, finite intensity mappings, and, for
    a class-conditional DCGAN, one class name per class of the model.

    Raises:
        InputError: ``where: field must be ..., got ...``.
    """
    def fail(problem: str) -> None:
        raise InputError(problem, where)

    _check_imageset_record(record, "", fail)
    dp = record.get("differential_privacy")
    if dp is not None:
        if not isinstance(dp, dict):
            fail(f"differential_privacy must be a mapping, got {shown(dp)}")
        for name in ("target_epsilon", "epsilon", "delta", "noise_multiplier", "max_grad_norm",
                     "sample_rate"):
            if name in dp or name in ("epsilon", "delta"):
                _number(dp.get(name), f"differential_privacy.{name}", fail, minimum=0.0)
        if "steps" in dp:
            _count(dp["steps"], "differential_privacy.steps", fail)
    domains = record.get("domains")
    if domains is not None:
        if not isinstance(domains, dict) or not set(domains) <= {"a", "b"}:
            fail(f"domains must be a mapping with domains a and b, got {shown(domains)}")
        for name, domain in domains.items():
            if not isinstance(domain, dict):
                fail(f"domains.{name} must be a mapping, got {shown(domain)}")
            _check_imageset_record(domain, f"domains.{name}.", fail)
            quantiles = domain.get("foreground_quantiles")
            if quantiles is not None or getattr(model, "standardize", False):
                field_name = f"domains.{name}.foreground_quantiles"
                if not isinstance(quantiles, list) or len(quantiles) < 2:
                    fail(f"{field_name} must be a list of at least 2 finite numbers, "
                         f"got {shown(quantiles)}")
                for k, q in enumerate(quantiles):
                    _number(q, f"{field_name}[{k}]", fail)
                if any(b < a for a, b in zip(quantiles, quantiles[1:], strict=False)):
                    fail(f"{field_name} must not decrease, got {shown(quantiles)}")
    classes = getattr(model, "num_classes", 0)
    if classes:
        names = record.get("class_names")
        if not isinstance(names, list) or len(names) != classes:
            count = len(names) if isinstance(names, list) else "no"
            fail(f"class_names lists {count} class name(s) but the model has {classes} "
                 "classes: the record does not belong to these weights")
        counts = record.get("class_counts", {})
        if not counts or not set(counts) <= set(names):
            fail(f"class_counts must count images of the classes {', '.join(names)}, got "
                 f"{shown(counts)}")


def _check_imageset_record(record: dict[str, Any], prefix: str, fail: Any) -> None:
    """The fields :func:`synthmed.gan.data.imageset_record` writes (each optional)."""
    for name in ("origin", "fingerprint"):
        if name in record and not isinstance(record[name], str):
            fail(f"{prefix}{name} must be a string, got {shown(record[name])}")
    for name in ("images", "channels", "subjects"):
        if name in record:
            _count(record[name], prefix + name, fail)
    for name in ("splits", "class_names", "group_hashes", "image_hashes"):
        value = record.get(name, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            fail(f"{prefix}{name} must be a list of strings, got {shown(value)}")
    if "size" in record:
        size = record["size"]
        if not isinstance(size, list) or len(size) != 2:
            fail(f"{prefix}size must be a list of 2 whole numbers, got {shown(size)}")
        for k, side in enumerate(size):
            _count(side, f"{prefix}size[{k}]", fail)
    bit_depths = record.get("bit_depths", [])
    if not isinstance(bit_depths, list):
        fail(f"{prefix}bit_depths must be a list of whole numbers, got {shown(bit_depths)}")
    for k, depth in enumerate(bit_depths):
        _count(depth, f"{prefix}bit_depths[{k}]", fail)
    counts = record.get("class_counts", {})
    if not isinstance(counts, dict):
        fail(f"{prefix}class_counts must be a mapping of class names to image counts, "
             f"got {shown(counts)}")
    for name, count in counts.items():
        _count(count, f"{prefix}class_counts.{name}", fail)
    intensity = record.get("intensity", {})
    if not isinstance(intensity, dict):
        fail(f"{prefix}intensity must be a mapping (unit, modality, low, high), "
             f"got {shown(intensity)}")
    for name in ("unit", "modality"):
        if name in intensity and not isinstance(intensity[name], str):
            fail(f"{prefix}intensity.{name} must be a string, got {shown(intensity[name])}")
    for name in ("low", "high"):
        if name in intensity:
            _number(intensity[name], f"{prefix}intensity.{name}", fail)
    if "distinct_mappings" in intensity:
        _count(intensity["distinct_mappings"], f"{prefix}intensity.distinct_mappings", fail)


def _number(value: Any, name: str, fail: Any, minimum: float | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        fail(f"{name} must be a finite number, got {shown(value)}")
    if minimum is not None and value < minimum:
        fail(f"{name} must be at least {minimum:g}, got {shown(value)}")


def _count(value: Any, name: str, fail: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        fail(f"{name} must be a whole number >= 0, got {shown(value)}")

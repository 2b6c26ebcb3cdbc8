"""The run directory (GUIDE section 5): read and write, every write atomic.

```
RUN/config.yaml          resolved config, versioned (synthmed.gan.run_config)
RUN/model.safetensors    weights, loadable without our code; metadata: kind, epoch, sha256
RUN/trainer_state.pt     weights, optimisers, schedulers, epoch, RNG states (exact resume)
RUN/training_data.json   what the model was trained on (fingerprint, per-image hashes, ...)
RUN/metrics.jsonl        one line per epoch
RUN/samples/epoch_0001.png, RUN/progress.gif, RUN/losses.png
```

``trainer_state.pt`` alone resumes a run, so one atomic rename commits a checkpoint;
``model.safetensors`` follows it. Nothing is pickled: the state holds tensors and plain
values only and is read with ``torch.load(weights_only=True)``.

A run killed (even by SIGKILL) loses at most the epochs since its last checkpoint. One killed
before its first checkpoint holds nothing to resume: ``--resume`` removes what it left, file
by file and only the files a run writes by then, once its own ``config.yaml`` shows it is a
run, and starts again (a fresh start never replaces a folder). Temporary files of writes a kill
interrupted are removed on resume.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from synthmed import __version__
from synthmed.errors import InputError
from synthmed.io import RUN_CONFIG, atomic_write, is_run_config

CONFIG = RUN_CONFIG
WEIGHTS = "model.safetensors"
STATE = "trainer_state.pt"
TRAINING_DATA = "training_data.json"
METRICS = "metrics.jsonl"
SAMPLES = "samples"
_UNSTARTED_FILES = {CONFIG, TRAINING_DATA, METRICS}
_SAMPLE_GRID = re.compile(r"epoch_\d{4,}\.png")
_RUN_FILES = (CONFIG, WEIGHTS, STATE, TRAINING_DATA, METRICS, "progress.gif", "losses.png")
# atomic_write's mkstemp names for the files a run writes
_TEMPORARY = re.compile(rf"\.(?:{'|'.join(map(re.escape, _RUN_FILES))}|epoch_\d{{4,}}\.png)"
                        r"\.[a-z0-9_]{8}")


def is_unstarted(run_dir: Path) -> bool:
    """True when ``run_dir`` holds only what a run stopped before its first checkpoint leaves,
    known by name and by the run's own ``config.yaml``: with that config, the data record,
    metric lines, sample grids ``samples/epoch_NNNN.png`` and temporary files of those; without
    it (killed before it saved it), nothing but such temporary files. Nothing to resume or to
    keep."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or (run_dir / STATE).exists():
        return False
    contents = list(run_dir.iterdir())
    if is_run_config(run_dir / CONFIG):
        return all(_written_before_checkpoint(path) for path in contents)
    # killed before it saved its config: at most a torn temporary file and an empty samples
    # folder (which earlier versions made first)
    return all(_is_temporary(path) or _is_empty_samples(path) for path in contents)


def discard_unstarted(run_dir: Path) -> None:
    """Remove, file by file, what a run for which :func:`is_unstarted` is true wrote."""
    run_dir = Path(run_dir)
    if not is_unstarted(run_dir):
        raise InputError("holds files a run stopped before its first checkpoint does not "
                         "write: nothing was removed", run_dir)
    samples = run_dir / SAMPLES
    for path in sorted(samples.iterdir()) if samples.is_dir() else ():
        path.unlink()
    if samples.is_dir():
        samples.rmdir()
    for path in run_dir.iterdir():
        path.unlink()


def _is_empty_samples(path: Path) -> bool:
    return path.name == SAMPLES and path.is_dir() and not path.is_symlink() and \
        not any(path.iterdir())


def _written_before_checkpoint(path: Path) -> bool:
    """A file of the run directory (or its samples folder) that a run writes before its first
    checkpoint, by name."""
    if path.name == SAMPLES and path.is_dir() and not path.is_symlink():
        return all(path.is_file() and (_SAMPLE_GRID.fullmatch(path.name) or _is_temporary(path))
                   for path in path.iterdir())
    return path.is_file() and (path.name in _UNSTARTED_FILES or _is_temporary(path))


def remove_temporaries(run_dir: Path) -> None:
    """Delete the temporary files of atomic writes that a kill interrupted."""
    for folder in (Path(run_dir), Path(run_dir) / SAMPLES):
        for path in folder.glob(".*") if folder.is_dir() else ():
            if _is_temporary(path):
                path.unlink()


def _is_temporary(path: Path) -> bool:
    return path.is_file() and _TEMPORARY.fullmatch(path.name) is not None


def save_weights(run_dir: Path, state: dict[str, torch.Tensor], kind: str, epoch: int) -> None:
    """``model.safetensors`` with a checksum of its tensors in the metadata."""
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in state.items()}
    metadata = {"kind": kind, "epoch": str(epoch), "synthmed_version": __version__,
                "tensors_sha256": _tensors_sha256(tensors)}
    atomic_write(Path(run_dir) / WEIGHTS, save_safetensors(tensors, metadata=metadata))


def load_weights(run_dir: Path, kind: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The weights of a run of ``kind``, checked against their checksum, and their metadata."""
    path = Path(run_dir) / WEIGHTS
    if not path.is_file():
        raise InputError(f"{WEIGHTS} is missing: the run has no checkpoint yet", run_dir)
    data = path.read_bytes()
    try:
        tensors = load_safetensors(data)
        metadata = _safetensors_metadata(data)
    except (SafetensorError, ValueError, json.JSONDecodeError):
        raise InputError("is not a readable safetensors file (corrupt or tampered)", path) from None
    if metadata.get("kind") != kind:
        raise InputError(f"holds a {metadata.get('kind', 'unknown')!r} model, not {kind!r}", path)
    if metadata.get("tensors_sha256") != _tensors_sha256(tensors):
        raise InputError("weights do not match their checksum (corrupt or tampered)", path)
    return tensors, metadata


def save_state(run_dir: Path, state: dict[str, Any]) -> None:
    """``trainer_state.pt``: plain values and tensors only."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(Path(run_dir) / STATE, buffer.getvalue())


def load_state(run_dir: Path) -> dict[str, Any]:
    """The trainer state, refusing anything but tensors and plain values (no code runs)."""
    path = Path(run_dir) / STATE
    if not path.is_file():
        raise InputError(f"{STATE} is missing: nothing to resume", run_dir)
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": we refuse anyway
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torch raises UnpicklingError, RuntimeError, EOFError ...
        # torch's own message suggests weights_only=False: never an option here
        raise InputError("cannot be loaded safely: corrupt, or holds more than tensors and "
                         "plain values (nothing in it was run)", path) from None


def _tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name]
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    header_size = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + header_size]).get("__metadata__", {})

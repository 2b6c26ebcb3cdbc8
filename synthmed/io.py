"""Output folders that never cost a user a file: where ``--out`` may be, what ``--overwrite``
may replace, one writer at a time, and the replacement itself.

The rules, the same for every command that writes a folder:

- ``--out`` is not an input (data, run, extractor ...), does not hold one and does not lie
  inside one, and is neither the current folder nor one holding it (:func:`check_out`);
- an existing, non-empty ``--out`` is replaced only with ``--overwrite``, and only when
  synthmed wrote it: it carries :data:`MARKER` (written into every output folder) or, for
  folders written before the marker existed, one of :data:`LEGACY_MARKERS` or a run's
  ``config.yaml`` naming its ``kind`` (:func:`check_replaceable`);
- one process writes a given ``--out`` at a time: :func:`output_lock` takes an exclusive
  ``fcntl`` lock on ``.OUT.lock`` beside it, and a second writer fails at once naming the
  first one's pid;
- the new folder replaces the old one atomically (:func:`replace_folder`): the old one is
  renamed aside, the new one moved in, then the old one removed; a failure puts it back.

A command that writes its output in one go uses :func:`atomic_output_dir`; one that fills its
folder in place and continues it when run again (the utility grid) uses
:func:`resumable_output_dir`; ``generate`` and training apply the same checks to their own
resumable folders.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import math
import os
import shutil
import socket
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

from synthmed import __version__
from synthmed.errors import InputError

MARKER = ".synthmed-output"
RUN_CONFIG = "config.yaml"  # a run directory's settings (synthmed.gan.run_config)
PROVENANCE = "provenance.json"  # how an export was made
MANIFEST = "manifest.csv"  # one row per exported image
LEGACY_MARKERS = (PROVENANCE, MANIFEST, "results.json", "fidelity.json", "privacy.json",
                  "translation.json", "unpaired.json", "synthmed-report.html")


@contextlib.contextmanager
def atomic_output_dir(out: Path, overwrite: bool = False,
                      inputs: Iterable[str | Path | None] = (), kind: str = "output"
                      ) -> Iterator[Path]:
    """Yield a temporary folder beside ``out`` that replaces ``out`` when the block succeeds.

    Files go to a hidden folder, which gets the synthmed marker and is moved into place only
    when everything is written: a failed command leaves nothing behind and an earlier output
    untouched. The folder of a writer killed outright (SIGKILL, power loss) is removed by the
    next writer of the same ``out`` on the same machine.

    Args:
        out: the output folder.
        overwrite: replace an existing output folder that synthmed wrote.
        inputs: what the command reads (see :func:`check_out`).
        kind: what the folder holds, recorded in the marker (``export``, ``report`` ...).

    Raises:
        InputError: see :func:`check_out`, :func:`check_replaceable` and :func:`output_lock`.
    """
    out = Path(out)
    check_out(out, inputs)
    check_replaceable(out, overwrite)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"cannot be created ({error.strerror})", out.parent) from None
    with output_lock(out):
        _remove_killed_work_dirs(out)
        try:
            work = Path(tempfile.mkdtemp(prefix=f"{_work_prefix(out)}{os.getpid()}-",
                                         dir=out.parent))
        except OSError as error:
            raise InputError(f"cannot write here ({error.strerror})", out.parent) from None
        try:
            yield work
            work.chmod(0o777 & ~current_umask())  # mkdtemp's 0700 is for secrets, not results
            mark_output(work, kind)
            check_replaceable(out, overwrite)  # nothing new appeared there meanwhile
            replace_folder(work, out)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise


@contextlib.contextmanager
def resumable_output_dir(out: Path, inputs: Iterable[str | Path | None] = (),
                         kind: str = "output") -> Iterator[Path]:
    """Yield ``out``, a folder a command fills in place and continues when run again (the
    utility grid): created when absent, otherwise empty or synthmed's own; marked, and locked
    while the block runs.

    Raises:
        InputError: see :func:`check_out` and :func:`output_lock`; ``out`` holds files
            synthmed did not write.
    """
    out = Path(out)
    check_out(out, inputs)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not is_synthmed_output(out):
        raise InputError("holds files synthmed did not write: choose another --out", out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    with output_lock(out):
        if not (out / MARKER).is_file():
            mark_output(out, kind)
        try:
            yield out
        except BaseException:
            if created and [path.name for path in out.iterdir()] == [MARKER]:
                (out / MARKER).unlink()  # a command that failed before writing leaves nothing
                out.rmdir()
            raise


def check_out(out: Path, inputs: Iterable[str | Path | None] = ()) -> None:
    """Refuse an ``out`` that replacing could destroy an input or the current folder with.

    Args:
        out: the output folder (or file) a command is about to write.
        inputs: paths, globs or ``phantom:`` specs the command reads; ``None`` is skipped.

    Raises:
        InputError: ``out`` is, holds or lies inside an input, or is or holds the current
            folder.
    """
    target = _real(out)
    here = _real(Path.cwd())
    if target == here or target in here.parents:
        raise InputError("is the current folder or holds it: choose a new folder for --out",
                         out)
    for given in inputs:
        for path in _input_paths(given):
            if target == path:
                relation = "is"
            elif target in path.parents:
                relation = "holds"
            elif path in target.parents:
                relation = "lies inside"
            else:
                continue
            raise InputError(f"{relation} the input {given}: choose a folder apart from the "
                             "inputs for --out", out)


def check_replaceable(out: Path, overwrite: bool) -> None:
    """Allow writing ``out`` only when it is absent or empty, or ``overwrite`` is set and
    synthmed wrote it.

    Raises:
        InputError: ``out`` holds files and ``overwrite`` is False, or holds files synthmed
            did not write, or is a file.
    """
    out = Path(out)
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir() or out.is_symlink():
        raise InputError("exists and is not a folder synthmed wrote: choose another --out", out)
    if not any(out.iterdir()):
        return
    if not overwrite:
        raise InputError("already exists and is not empty: choose another --out or pass "
                         "--overwrite", out)
    if not is_synthmed_output(out):
        raise InputError("holds files synthmed did not write (no synthmed output marker): "
                         "--overwrite replaces only synthmed's own output folders", out)


def is_synthmed_output(folder: Path) -> bool:
    """Whether ``folder`` carries synthmed's marker, an older output's record, or a run's
    ``config.yaml`` with its ``kind``."""
    folder = Path(folder)
    if any((folder / name).is_file() for name in (MARKER, *LEGACY_MARKERS)):
        return True
    return is_run_config(folder / RUN_CONFIG)


def is_run_config(path: Path) -> bool:
    """Whether ``path`` is a run's ``config.yaml`` as synthmed writes it (with ``kind`` and
    ``format_version``)."""
    try:
        document = yaml.safe_load(Path(path).read_text()) if Path(path).is_file() else None
    except (yaml.YAMLError, UnicodeDecodeError, OSError):
        return False
    return isinstance(document, dict) and "kind" in document and "format_version" in document


def mark_output(folder: Path, kind: str) -> None:
    """Write the marker that lets a later ``--overwrite`` replace ``folder``."""
    (Path(folder) / MARKER).write_text(json.dumps(
        {"written_by": "synthmed", "synthmed_version": __version__, "kind": kind}) + "\n")


@contextlib.contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on writing ``out`` (the file ``.OUT.lock`` beside it).

    Raises:
        InputError: another process holds the lock; the message names its pid.
    """
    out = Path(out)
    lock_path = out.parent / f".{out.name}.lock"
    while True:
        try:
            handle = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise InputError(f"cannot be written ({error.strerror})", out) from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(handle, 32).decode(errors="replace").strip() or "unknown"
            os.close(handle)
            raise InputError(f"is being written by another synthmed process (pid {holder}): "
                             "wait for it to finish or choose another --out", out) from None
        if _same_file(handle, lock_path):  # not a lock file a finishing writer just removed
            break
        os.close(handle)
    os.ftruncate(handle, 0)
    os.write(handle, f"{os.getpid()}\n".encode())
    try:
        yield
    finally:
        lock_path.unlink(missing_ok=True)
        os.close(handle)


def replace_folder(new: Path, out: Path) -> None:
    """Move the finished folder ``new`` to ``out``, replacing what is there atomically: the old
    ``out`` is renamed aside, ``new`` moved in, then the old one removed; if the move fails, the
    old ``out`` is put back."""
    new, out = Path(new), Path(out)
    if not out.exists():
        new.rename(out)
        return
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    out.rename(old)
    try:
        new.rename(out)
    except BaseException:
        old.rename(out)
        raise
    shutil.rmtree(old)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.chmod(temporary, 0o666 & ~current_umask())  # mkstemp's 0600 is for secrets, not results
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_json(path: Path, value: Any) -> None:
    """``value`` as strict JSON (NaN and inf written as null), atomically."""
    atomic_write(path, (json.dumps(json_safe(value), indent=1, allow_nan=False) + "\n").encode())


def json_safe(value: Any) -> Any:
    """``value`` with every NaN / inf float (nested in dicts, lists and tuples) as ``None``:
    strict JSON has neither."""
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def current_umask() -> int:
    """The process's umask (read without changing it for good)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _work_prefix(out: Path) -> str:
    """The start of the names of this machine's temporary folders for ``out``; the id of the
    process writing one follows."""
    return f".{out.name}.partial-{socket.gethostname()}-"


def _remove_killed_work_dirs(out: Path) -> None:
    """Delete temporary folders for ``out`` whose process, on this machine, is gone."""
    prefix = _work_prefix(out)
    for work in out.parent.glob(glob.escape(prefix) + "*"):
        pid = work.name[len(prefix):].split("-")[0]
        if pid.isdigit() and not _is_running(int(pid)):
            shutil.rmtree(work, ignore_errors=True)


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _same_file(handle: int, path: Path) -> bool:
    try:
        return os.fstat(handle).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _real(path: str | Path) -> Path:
    return Path(os.path.realpath(Path(path).expanduser()))


def _input_paths(given: str | Path | None) -> list[Path]:
    """The existing paths an input argument names: itself, or a glob's matches."""
    if given is None or str(given).startswith("phantom:"):
        return []
    text = str(given)
    matches = glob.glob(os.path.expanduser(text)) if glob.has_magic(text) else [text]
    return [_real(match) for match in matches if os.path.lexists(match)]

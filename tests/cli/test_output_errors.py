"""Outputs that cannot be written: a read-only parent folder, a full disk. Every command that
writes (``data phantom``, ``train dcgan``, ``generate``, ``evaluate privacy``) fails with one
line naming the output (exit status 1, no traceback) and leaves no partial output behind.

Root ignores folder permissions, so besides ``chmod`` (skipped for root) a read-only file system
is simulated: creating anything inside the folder fails with EROFS. A full disk is simulated
too, at once or after two files: pictures land in part and fail with ENOSPC, atomic writes fail
at their ``fsync``; the error, as from ``write()``, names no file.
"""

from __future__ import annotations

import errno
import itertools
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthmed.augment.phantom import PhantomConfig, make_phantom

from ..conftest import invoke, one_line_error

pytestmark = pytest.mark.usefixtures("one_thread")


def read_only_by_chmod(monkeypatch: pytest.MonkeyPatch, folder: Path) -> str:
    """Make ``folder`` read-only; return the error the system will give."""
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders: see the simulated variant")
    folder.chmod(0o555)  # pytest's clean-up of tmp_path copes with it
    return os.strerror(errno.EACCES)


def read_only_simulated(monkeypatch: pytest.MonkeyPatch, folder: Path) -> str:
    """Creating a folder or file inside ``folder`` fails as on a read-only file system; return
    that error."""
    mkdir, open_ = os.mkdir, os.open

    def inside(path: object) -> bool:
        return Path(os.fspath(path)).resolve().is_relative_to(folder.resolve())

    def refused_mkdir(path, *args, **kwargs):  # a missing parent still gives ENOENT first
        if inside(path) and not os.path.lexists(path) and os.path.isdir(os.path.dirname(path)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))
        return mkdir(path, *args, **kwargs)

    def refused_open(path, flags, *args, **kwargs):
        if flags & os.O_CREAT and inside(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))
        return open_(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", refused_mkdir)
    monkeypatch.setattr(os, "open", refused_open)
    return os.strerror(errno.EROFS)


READ_ONLY = [read_only_by_chmod, read_only_simulated]


def fill_disk(monkeypatch: pytest.MonkeyPatch, room: int) -> None:
    """Let ``room`` more files be written, then fill the disk: a picture written to a file (by
    us, or by matplotlib through PIL) lands in part and fails with ENOSPC, an atomic write
    fails at its ``fsync``. Pictures made in memory are unaffected."""
    save, fsync = Image.Image.save, os.fsync
    writes = itertools.count()

    def no_space() -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def full_fsync(fd: int) -> None:
        if next(writes) >= room:
            no_space()
        fsync(fd)

    def full_save(self: Image.Image, fp, *args, **kwargs) -> None:
        on_disk = isinstance(fp, str | os.PathLike) or isinstance(getattr(fp, "name", None), str)
        if not on_disk or next(writes) < room:
            return save(self, fp, *args, **kwargs)
        if isinstance(fp, str | os.PathLike):
            Path(fp).write_bytes(b"\x89PNG\r\n\x1a\n partial")
        else:
            fp.write(b"\x89PNG\r\n\x1a\n partial")
        no_space()

    monkeypatch.setattr(Image.Image, "save", full_save)
    monkeypatch.setattr(os, "fsync", full_fsync)


def png_folder(folder: Path, seed: int) -> Path:
    """10 unlabelled 16 px phantom slices as PNG files."""
    folder.mkdir()
    for k, image in enumerate(make_phantom(PhantomConfig(n=10, size=16, seed=seed))[0].images):
        Image.fromarray(np.rint((image[0] + 1) * 127.5).astype(np.uint8)).save(folder / f"{k}.png")
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny DCGAN run (32 px, width 4, one epoch on 8 phantom slices)."""
    run = tmp_path_factory.mktemp("output-errors") / "run"
    result = invoke("train", "dcgan", "phantom:t1,n=8,size=32", "--out", run, "--size", 32,
                    "--width", 4, "--epochs", 1, "--batch-size", 8, "--no-progress")
    assert result.exit_code == 0, result.output
    return run


@pytest.fixture
def commands(tmp_path, trained) -> dict[str, Callable[[Path], list[object]]]:
    """Each writing command's arguments for an output folder."""
    data = {name: png_folder(tmp_path / name, seed) for seed, name in
            enumerate(["train", "holdout", "synthetic"])}
    return {
        "data phantom": lambda out: ["data", "phantom", "--out", out, "--n", 4, "--size", 16],
        "train dcgan": lambda out: ["train", "dcgan", "phantom:t1,n=8,size=32", "--out", out,
                                    "--size", 32, "--width", 4, "--epochs", 1, "--batch-size", 8,
                                    "--no-progress"],
        "generate": lambda out: ["generate", trained, "--n", 4, "--out", out, "--no-progress"],
        "evaluate privacy": lambda out: ["evaluate", "privacy", "--synthetic",
                                         data["synthetic"], "--train", data["train"],
                                         "--holdout", data["holdout"], "--bootstrap", 20,
                                         "--out", out],
    }


COMMANDS = ["data phantom", "train dcgan", "generate", "evaluate privacy"]


@pytest.mark.parametrize("make_read_only", READ_ONLY)
@pytest.mark.parametrize("command", COMMANDS)
def test_read_only_parent_folder(tmp_path, monkeypatch, commands, command, make_read_only):
    parent = tmp_path / "read-only"
    parent.mkdir()
    problem = make_read_only(monkeypatch, parent)
    result = invoke(*commands[command](parent / "out"))
    one_line_error(result, str(parent), problem)
    assert list(parent.iterdir()) == []


@pytest.mark.parametrize("room", [0, 2], ids=["full", "full after 2 files"])
@pytest.mark.parametrize("command", COMMANDS)
def test_full_disk(tmp_path, monkeypatch, commands, command, room):
    out = tmp_path / "parent" / "out"
    out.parent.mkdir()
    fill_disk(monkeypatch, room)
    result = invoke(*commands[command](out))
    one_line_error(result, str(out), "No space left on device")
    leftovers = [path.name for path in out.parent.iterdir()]
    if command == "generate":  # finished blocks are kept, hidden, for the rerun to continue
        assert leftovers in ([], [".out.partial"])
        monkeypatch.undo()
        assert invoke(*commands[command](out)).exit_code == 0
        assert [path.name for path in out.parent.iterdir()] == ["out"]
    else:
        assert leftovers == []

"""No command deletes what synthmed did not write (:mod:`synthmed.io`): ``--out`` is never an
input or the current folder, ``--overwrite`` replaces only synthmed's own output and puts it
back when the replacement fails, one writer holds an output at a time, and ``--resume``
removes only a run's own files. Each case runs in a temporary folder and checks that every
file the user had is still there, byte for byte."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from synthmed.gan import checkpoint
from synthmed.io import MARKER, check_out, output_lock, replace_folder

from ..conftest import invoke, one_line_error

pytestmark = pytest.mark.usefixtures("one_thread")

PHANTOM = ["data", "phantom", "--n", "8", "--size", "28", "--format", "npz", "--contrast", "t1"]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "dcgan"
    result = invoke("train", "dcgan", "phantom:n=16,size=32", "--out", out, "--size", "32",
                    "--width", "4", "--epochs", "1", "--batch-size", "8", "--no-progress")
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def user_folder(tmp_path) -> Path:
    """A folder of the user's own files, none of them synthmed's."""
    folder = tmp_path / "mine"
    (folder / "samples").mkdir(parents=True)
    (folder / "notes.txt").write_text("keep me")
    (folder / "samples" / "scan.png").write_bytes(b"\x89PNG not really")
    return folder


# -- --out is never an input or the current folder ----------------------------------------------


def test_generate_into_the_current_folder_keeps_it(run_dir, user_folder, monkeypatch):
    before = snapshot(user_folder)
    monkeypatch.chdir(user_folder / "samples")
    for out in (".", "..", str(user_folder / "samples")):
        one_line_error(invoke("generate", run_dir, "--n", "4", "--out", out, "--overwrite",
                              "--no-progress"), "current folder")
    assert snapshot(user_folder) == before


@pytest.mark.parametrize("where", ["the run", "its parent", "inside it"])
def test_generate_never_writes_over_or_into_its_run(run_dir, where):
    out = {"the run": run_dir, "its parent": run_dir.parent,
           "inside it": run_dir / "synthetic"}[where]
    before = snapshot(run_dir.parent)
    relation = {"the run": " is the input", "its parent": " holds the input",
                "inside it": " lies inside the input"}[where]
    one_line_error(invoke("generate", run_dir, "--n", "4", "--out", out, "--overwrite",
                          "--no-progress"), relation)
    assert snapshot(run_dir.parent) == before


def test_evaluate_and_translate_never_replace_their_input(run_dir, tmp_path):
    data = tmp_path / "data"
    assert invoke(*PHANTOM, "--out", data).exit_code == 0
    before = snapshot(tmp_path)
    one_line_error(invoke("evaluate", "fidelity", "--real", data, "--synthetic", data,
                          "--out", data, "--overwrite"), "is the input")
    one_line_error(invoke("evaluate", "privacy", "--synthetic", data, "--train", data, "--holdout",
                          data, "--out", tmp_path, "--overwrite"), "holds the input")
    one_line_error(invoke("translate", run_dir, data, "--direction", "a2b", "--out", data,
                          "--overwrite"), "is the input")
    one_line_error(invoke("evaluate", "utility", "--real", data, "--generator", run_dir, "--out",
                          data / "utility"), "lies inside the input")
    assert snapshot(tmp_path) == before


def test_training_never_writes_into_its_data(tmp_path):
    data = tmp_path / "data"  # a picture folder: a run inside it would be read as data
    assert invoke(*PHANTOM[:-4], "--format", "png", "--contrast", "t1", "--out", data
                  ).exit_code == 0
    before = snapshot(tmp_path)
    one_line_error(invoke("train", "dcgan", data, "--out", data / "run", "--size", "28"),
                   "lies inside the input")
    one_line_error(invoke("train", "dcgan", data, "--out", tmp_path, "--resume"), "holds the input")
    assert snapshot(tmp_path) == before


def test_inspect_never_writes_its_files_over_the_input(tmp_path):
    data = tmp_path / "data"
    assert invoke(*PHANTOM, "--out", data).exit_code == 0
    before = snapshot(tmp_path)
    npz = next(data.rglob("*.npz"))
    one_line_error(invoke("data", "inspect", npz, "--json", npz), "is the input")
    assert snapshot(tmp_path) == before


def test_check_out_follows_globs_and_links(tmp_path):
    (tmp_path / "a" / "s1").mkdir(parents=True)
    (tmp_path / "a" / "s1" / "t1.nii.gz").write_bytes(b"")
    with pytest.raises(Exception, match="holds the input"):
        check_out(tmp_path / "a", [f"{tmp_path}/a/*/t1.nii.gz"])
    (tmp_path / "link").symlink_to(tmp_path / "a")
    with pytest.raises(Exception, match="is the input"):
        check_out(tmp_path / "link", [tmp_path / "a"])
    check_out(tmp_path / "elsewhere", [f"{tmp_path}/a/*/t1.nii.gz", "phantom:n=4", None])


# -- --overwrite replaces only synthmed's output, atomically ----------------------------------


def test_overwrite_refuses_a_folder_synthmed_did_not_write(user_folder):
    before = snapshot(user_folder)
    one_line_error(invoke(*PHANTOM, "--out", user_folder, "--overwrite"), "synthmed did not write")
    (user_folder.parent / "link").symlink_to(user_folder)
    one_line_error(invoke(*PHANTOM, "--out", user_folder.parent / "link", "--overwrite"),
                   "not a folder synthmed wrote")
    assert snapshot(user_folder) == before


def test_overwrite_replaces_synthmed_output_and_older_outputs(tmp_path):
    out = tmp_path / "out"
    assert invoke(*PHANTOM, "--out", out).exit_code == 0
    assert (out / MARKER).is_file()
    assert invoke(*PHANTOM, "--out", out, "--seed", "1", "--overwrite").exit_code == 0
    older = tmp_path / "older"  # written before the marker: known by its provenance.json
    older.mkdir()
    (older / "provenance.json").write_text("{}")
    assert invoke(*PHANTOM, "--out", older, "--overwrite").exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["older", "out"]  # no leftovers


def test_a_failed_replacement_puts_the_old_output_back(tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert invoke(*PHANTOM, "--out", out).exit_code == 0
    before = snapshot(out)
    rename = Path.rename

    def failing(self, target):
        if Path(target) == out and ".partial" in self.name:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", failing)
    result = invoke(*PHANTOM, "--out", out, "--seed", "1", "--overwrite")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_replace_folder_moves_in_and_removes_the_old(tmp_path):
    new, out = tmp_path / "new", tmp_path / "out"
    new.mkdir()
    (new / "a").write_text("new")
    out.mkdir()
    (out / "a").write_text("old")
    replace_folder(new, out)
    assert (out / "a").read_text() == "new" and sorted(os.listdir(tmp_path)) == ["out"]


# -- one writer at a time ---------------------------------------------------------------------


def test_a_second_writer_fails_at_once_naming_the_first(run_dir, tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from synthmed.io import output_lock\n"
         f"with output_lock({str(out)!r}):\n print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        for args in (["generate", run_dir, "--n", "4"], PHANTOM,
                     ["train", "dcgan", "phantom:n=16,size=32", "--size", "32"]):
            one_line_error(invoke(*args, "--out", out, "--no-progress" if args[0] != "data" else
                                  "--overwrite"), f"another synthmed process (pid {holder.pid})")
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
    assert invoke(*PHANTOM, "--out", out).exit_code == 0  # a lock dies with its process


def test_the_lock_is_released_and_removed(tmp_path):
    out = tmp_path / "out"
    with output_lock(out):
        assert (tmp_path / ".out.lock").read_text().strip() == str(os.getpid())
    assert list(tmp_path.iterdir()) == []
    with output_lock(out):  # and can be taken again
        pass


def test_generate_keeps_a_partial_folder_it_did_not_make(run_dir, tmp_path):
    partial = tmp_path / ".out.partial"
    partial.mkdir()
    (partial / "mine.txt").write_text("keep")
    one_line_error(invoke("generate", run_dir, "--n", "4", "--out", tmp_path / "out",
                          "--no-progress"), "not a partial output synthmed left")
    assert (partial / "mine.txt").read_text() == "keep"


# -- --resume removes only a run's own files ---------------------------------------------------


def test_resume_on_a_folder_that_is_not_a_run_deletes_nothing(user_folder):
    (user_folder / "notes.txt").unlink()  # only a samples/ folder, as a run has
    before = snapshot(user_folder)
    one_line_error(invoke("train", "dcgan", "phantom:n=16,size=32", "--size", "32", "--out",
                          user_folder, "--resume", "--no-progress"), "not a synthmed run")
    assert snapshot(user_folder) == before


def test_an_unstarted_run_is_known_by_its_config_and_file_names(tmp_path, run_dir):
    run = tmp_path / "run"
    (run / "samples").mkdir(parents=True)
    (run / "config.yaml").write_bytes((run_dir / "config.yaml").read_bytes())
    (run / "samples" / "epoch_0001.png").write_bytes(b"grid")
    assert checkpoint.is_unstarted(run)
    (run / "samples" / "scan.png").write_bytes(b"the user's")
    assert not checkpoint.is_unstarted(run)
    with pytest.raises(Exception, match="nothing was removed"):
        checkpoint.discard_unstarted(run)
    assert (run / "samples" / "scan.png").is_file()
    (run / "samples" / "scan.png").unlink()
    (run / "config.yaml").write_text("a: user's yaml\n")  # not a run's config
    assert not checkpoint.is_unstarted(run)


def test_resume_restarts_a_run_killed_before_its_first_checkpoint(tmp_path, run_dir):
    run = tmp_path / "run"
    (run / "samples").mkdir(parents=True)
    (run / "config.yaml").write_bytes((run_dir / "config.yaml").read_bytes())
    (run / "samples" / "epoch_0001.png").write_bytes(b"grid")
    result = invoke("train", "dcgan", "phantom:n=16,size=32", "--out", run, "--size", "32",
                    "--width", "4", "--epochs", "1", "--batch-size", "8", "--resume",
                    "--no-progress")
    assert result.exit_code == 0, result.output
    assert (run / checkpoint.STATE).is_file()


def test_a_run_killed_before_its_config_is_known_by_torn_run_files_only(tmp_path):
    run = tmp_path / "run"
    (run / "samples").mkdir(parents=True)
    (run / ".config.yaml.abcd1234").write_bytes(b"torn")
    assert checkpoint.is_unstarted(run)
    (run / ".notes.txt.abcd1234").write_bytes(b"the user's, named like a temporary file")
    assert not checkpoint.is_unstarted(run)

"""Commands killed with SIGKILL at random moments, then run again: no corrupt checkpoint,
manifest or results file, and the same final result as an uninterrupted run.

Each command runs once without interruption (timing its start-up and its work), then is
killed twice at moments drawn from the first 60 % of its work period (a later moment can miss
a rerun that runs faster), each kill followed by the same command again (``--resume`` for
training); the last run finishes. The moments come from a seeded generator, so a failure
reproduces.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from synthmed.augment.medmnist import write_npz
from synthmed.augment.phantom import PhantomConfig, make_phantom, write_phantom_volumes
from synthmed.cli import cli
from synthmed.gan import checkpoint
from synthmed.gan.run_config import read_run_config
from synthmed.io import MARKER

pytestmark = pytest.mark.slow

KILLS = 2
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def command(*args) -> list[str]:
    return [sys.executable, "-m", "synthmed.cli", *map(str, args)]


def appears(folder: Path, pattern: str) -> Callable[[], bool]:
    """Whether a file matching ``pattern`` is in ``folder``: the sign that a command, past its
    start-up, is working."""
    return lambda: any(folder.glob(pattern))


def run_timed(args: list[str], started: Callable[[], bool]) -> float:
    """Run ``args`` to the end; return how long it worked after it ``started``."""
    process = subprocess.Popen(args, env=ENV, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    while process.poll() is None and not started():
        time.sleep(0.02)
    begun = time.monotonic()
    _, error = process.communicate(timeout=600)
    assert process.returncode == 0, error
    return time.monotonic() - begun


def kill_while_working(args: list[str], started: Callable[[], bool], after: float) -> bool:
    """Start ``args`` and SIGKILL it ``after`` seconds after it ``started``; True when the
    kill came before the command finished."""
    process = subprocess.Popen(args, env=ENV, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = None
    while process.poll() is None:
        if deadline is None and started():
            deadline = time.monotonic() + after
        if deadline is not None and time.monotonic() >= deadline:
            process.send_signal(signal.SIGKILL)
            process.wait()
            return True
        time.sleep(0.01)
    return False


def kill_and_rerun(first: list[str], again: list[str], started: Callable[[], bool], work: float,
                   seed: int) -> int:
    """Kill ``first`` (then ``again``) at random moments of its work; finish with ``again``
    unless a kill came too late. Returns how many kills landed before the command finished."""
    rng = random.Random(seed)
    for attempt in range(KILLS):
        if not kill_while_working(first if attempt == 0 else again, started,
                                  rng.uniform(0.05, 0.6) * work):
            return attempt
    result = subprocess.run(again, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return KILLS


def hidden_leftovers(folder: Path) -> list[str]:
    """Hidden files and folders below ``folder`` other than synthmed's output markers."""
    return sorted(p.name for p in folder.rglob(".*") if p.name != MARKER)


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def metrics_without_speed(run: Path) -> list[dict]:
    lines = [json.loads(line) for line in (run / checkpoint.METRICS).read_text().splitlines()]
    return [{k: v for k, v in line.items() if k != "images_per_s"} for line in lines]


@pytest.mark.parametrize("seed", [1, 2])
def test_killed_training_resumes_to_the_same_weights(tmp_path, seed):
    train = ["train", "dcgan", "phantom:t1,n=48,size=32", "--size", "32", "--width", "8",
             "--conditional", "--epochs", "6", "--batch-size", "8", "--checkpoint-every", "2",
             "--seed", "4", "--no-progress"]
    work = run_timed(command(*train, "--out", tmp_path / "a"),
                     appears(tmp_path / "a", checkpoint.CONFIG))
    run_b = tmp_path / "b"
    landed = kill_and_rerun(command(*train, "--out", run_b),
                            command(*train, "--out", run_b, "--resume"),
                            appears(run_b, checkpoint.CONFIG), work, seed)
    assert landed >= 1, "no kill landed while training"

    weights_a = load_file(tmp_path / "a" / checkpoint.WEIGHTS)
    weights_b = load_file(run_b / checkpoint.WEIGHTS)
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    assert metrics_without_speed(run_b) == metrics_without_speed(tmp_path / "a")
    assert checkpoint.load_state(run_b)["epoch"] == 6
    assert sorted(p.name for p in (run_b / "samples").iterdir()) == \
        [f"epoch_{k:04d}.png" for k in range(1, 7)]
    assert (run_b / "progress.gif").read_bytes() == (tmp_path / "a" / "progress.gif").read_bytes()
    assert hidden_leftovers(run_b) == []


def test_resume_of_a_run_killed_before_its_first_checkpoint_starts_it_again(tmp_path):
    """What such a kill leaves (config, data record, metric lines, grids, a temporary file)
    holds nothing to resume: --resume starts the run again and equals an uninterrupted one."""
    train = ["train", "dcgan", "phantom:t1,n=16,size=32", "--size", "32", "--width", "4",
             "--epochs", "2", "--batch-size", "8", "--no-progress"]
    assert CliRunner().invoke(cli, [*train, "--out", str(tmp_path / "a")]).exit_code == 0
    run_b = tmp_path / "b"
    assert CliRunner().invoke(cli, [*train, "--out", str(run_b)]).exit_code == 0
    for name in (checkpoint.STATE, checkpoint.WEIGHTS, "progress.gif", "losses.png"):
        (run_b / name).unlink()
    (run_b / ".trainer_state.pt.abcd1234").write_bytes(b"torn")
    assert checkpoint.is_unstarted(run_b)

    fresh = CliRunner().invoke(cli, [*train, "--out", str(run_b)])
    assert fresh.exit_code == 1 and "pass --resume" in fresh.output  # never replaced unasked
    resumed = CliRunner().invoke(cli, [*train, "--out", str(run_b), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert files(run_b).keys() == files(tmp_path / "a").keys()
    assert metrics_without_speed(run_b) == metrics_without_speed(tmp_path / "a")
    assert load_file(run_b / checkpoint.WEIGHTS).keys() == \
        load_file(tmp_path / "a" / checkpoint.WEIGHTS).keys()


def test_resume_of_a_run_killed_before_it_saved_its_config_uses_the_options(tmp_path):
    run = tmp_path / "run"
    (run / "samples").mkdir(parents=True)
    (run / ".config.yaml.abcd1234").write_bytes(b"torn")
    result = CliRunner().invoke(cli, ["train", "dcgan", "phantom:t1,n=16,size=32", "--size",
                                      "32", "--width", "4", "--epochs", "1", "--batch-size", "8",
                                      "--no-progress", "--out", str(run), "--resume"])
    assert result.exit_code == 0, result.output
    assert read_run_config(run).model.width == 4
    assert hidden_leftovers(run) == []


def test_a_run_folder_with_other_files_is_never_restarted(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("mine")
    (run / "notes.txt").write_text("mine too")
    assert not checkpoint.is_unstarted(run)
    result = CliRunner().invoke(cli, ["train", "dcgan", "phantom:t1,n=16,size=32", "--size",
                                      "32", "--epochs", "1", "--no-progress", "--out", str(run),
                                      "--resume"])
    assert result.exit_code == 1
    assert {p.name: p.read_text() for p in run.iterdir()} == {"config.yaml": "mine",
                                                             "notes.txt": "mine too"}


@pytest.fixture(scope="module")
def dcgan_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "dcgan"
    result = CliRunner().invoke(cli, ["train", "dcgan", "phantom:t1,n=32,size=32", "--size",
                                      "32", "--width", "4", "--conditional", "--epochs", "1",
                                      "--batch-size", "16", "--no-progress", "--out", str(run)])
    assert result.exit_code == 0, result.output
    return run


def test_killed_generate_reruns_to_the_same_files(tmp_path, dcgan_run):
    generate = ["generate", dcgan_run, "--n", "3000", "--format", "png", "--seed", "3"]
    work = run_timed(command(*generate, "--out", tmp_path / "a"),
                     appears(tmp_path, ".a.partial/plan.json"))
    out = tmp_path / "b"
    landed = kill_and_rerun(command(*generate, "--out", out), command(*generate, "--out", out),
                            appears(tmp_path, ".b.partial/plan.json"), work, seed=3)
    assert landed >= 1, "no kill landed while generating"
    expected, got = files(tmp_path / "a"), files(out)
    assert got.keys() == expected.keys()
    differing = [name for name in expected if got[name] != expected[name]]
    assert differing in ([], ["provenance.json"])
    provenance = [json.loads((folder / "provenance.json").read_text())
                  for folder in (tmp_path / "a", out)]
    assert {**provenance[0], "output": None} == {**provenance[1], "output": None}
    assert hidden_leftovers(tmp_path) == []


@pytest.fixture(scope="module")
def cyclegan_run(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny T1 -> T2 run, and a folder of phantom volumes to translate."""
    root = tmp_path_factory.mktemp("cyclegan")
    write_phantom_volumes(root / "volumes", PhantomConfig(n=240, size=64, seed=2))
    run = root / "run"
    result = CliRunner().invoke(cli, [
        "train", "cyclegan", "--domain-a", f"{root}/volumes/*/t1.nii.gz", "--domain-b",
        f"{root}/volumes/*/t2.nii.gz", "--out", str(run), "--epochs", "1", "--crop", "32",
        "--ngf", "4", "--ndf", "4", "--blocks", "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    return run, root / "volumes"


def test_killed_translate_reruns_to_the_same_volumes(tmp_path, cyclegan_run):
    run, volumes = cyclegan_run
    translate = ["translate", run, *sorted(volumes.glob("*/t1.nii.gz")), "--direction", "a2b",
                 "--no-progress"]
    work = run_timed(command(*translate, "--out", tmp_path / "a"),
                     appears(tmp_path, ".a.partial-*"))
    out = tmp_path / "b"
    landed = kill_and_rerun(command(*translate, "--out", out),
                            command(*translate, "--out", out), appears(tmp_path, ".b.partial-*"),
                            work, seed=5)
    assert landed >= 1, "no kill landed while translating"
    expected, got = files(tmp_path / "a"), files(out)
    assert got.keys() == expected.keys()
    assert all(got[name] == expected[name] for name in expected if "provenance" not in name)
    assert hidden_leftovers(tmp_path) == [], "a killed run's work folder was not removed"


def test_killed_utility_grid_reruns_to_the_same_results(tmp_path):
    data = tmp_path / "phantom.npz"
    write_npz(make_phantom(PhantomConfig(n=160, size=28, lesion_fraction=0.5, seed=1))[0], data)
    utility = ["evaluate", "utility", "--real", data, "--train-generator", "dcgan-conditional",
               "--fractions", "1", "--seeds", "1", "--steps", "6", "--pilot-doublings", "1",
               "--batch-size", "16",
               "--generator-steps", "8", "--no-progress"]
    work = run_timed(command(*utility, "--out", tmp_path / "a"), appears(tmp_path, "a"))
    out = tmp_path / "b"
    landed = kill_and_rerun(command(*utility, "--out", out), command(*utility, "--out", out),
                            appears(tmp_path, "b"), work, seed=7)
    assert landed >= 1, "no kill landed while evaluating"
    expected = json.loads((tmp_path / "a" / "results.json").read_text())
    got = json.loads((out / "results.json").read_text())
    assert got == expected
    assert (out / "report.md").read_text() == (tmp_path / "a" / "report.md").read_text()
    generators = out / "generators"
    assert all(checkpoint.load_state(run)["epoch"] >= 1 for run in generators.iterdir())
    assert hidden_leftovers(out) == []

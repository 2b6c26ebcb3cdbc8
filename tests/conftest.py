"""Shared fixtures. Real data comes from ``$SYNTHMED_TEST_DATA`` (CI: ``../shared/data``);
tests that need it are skipped, with the reason, when it is absent."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner, Result

from synthmed.cli import cli

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (``make test`` runs ``-n auto``) each worker computes on one thread,
    and so do the commands it starts: one busy thread per core, not OpenMP threads of several
    workers spinning on the same cores."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real-data folder, or skip."""
    root = os.environ.get("SYNTHMED_TEST_DATA")
    if not root:
        pytest.skip("SYNTHMED_TEST_DATA is not set: real-data test skipped")
    path = Path(root)
    if not path.is_dir():
        pytest.skip(f"SYNTHMED_TEST_DATA={root} is not a folder: real-data test skipped")
    return path


def real_file(shared_data: Path, relative: str) -> Path:
    """One file or folder of the real data set, or skip when it is missing."""
    path = shared_data / relative
    if not path.exists():
        pytest.skip(f"{path} is missing: real-data test skipped")
    return path


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run faster on one thread than on two contended ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def invoke(*args: object) -> Result:
    """Run the ``synthmed`` command line in-process (arguments made strings)."""
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line_error(result: Result, *texts: str) -> None:
    """The command failed with exit status 1 and one line holding every text, no traceback."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    for text in texts:
        assert text in result.output, result.output


def edit_config(run: Path, section: str | None, key: str, value: object) -> None:
    """Set ``key`` (of ``section``, or at the top) in a run's ``config.yaml``: a corrupt or
    hand-edited run."""
    path = run / "config.yaml"
    config = yaml.safe_load(path.read_text())
    (config[section] if section else config)[key] = value
    path.write_text(yaml.safe_dump(config))


def copied_run(tmp_path: Path, run: Path) -> Path:
    """A copy of the run directory ``run`` to damage, as ``tmp_path / "run"``."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return copy


def generate_killed_at_block(run: object, out: Path, config: object, block: int) -> None:
    """Run ``generate`` into ``out`` and kill it (``KeyboardInterrupt``) as it writes block
    ``block`` (from 1); the output must not appear, only its hidden partial folder."""
    from synthmed.gan import generate as generate_module

    real_write, calls = generate_module._write_block, []

    def dies(*args: object, **kwargs: object) -> None:
        calls.append(1)
        if len(calls) == block:
            raise KeyboardInterrupt
        real_write(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(generate_module, "_write_block", dies)
        with pytest.raises(KeyboardInterrupt):
            generate_module.generate(run, out, config, progress=False)
    assert not out.exists()  # the output only ever appears complete


def benchmark_module(name: str):
    """The script ``benchmarks/NAME.py`` imported as module ``NAME`` (its folder on the path,
    for its ``common`` import)."""
    sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module

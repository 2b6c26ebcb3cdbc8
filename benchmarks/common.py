"""What the benchmark scripts share: running the CLI and finding the shared data."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path


def synthmed(*args: str) -> float:
    """Run ``synthmed ARGS`` in a fresh process; return its wall time in seconds."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "synthmed.cli", *args], check=True)
    return time.perf_counter() - started


def add_data_options(parser: argparse.ArgumentParser) -> None:
    """``--out`` (required) and ``--data`` (default ``$SYNTHMED_TEST_DATA``)."""
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path,
                        default=Path(os.environ.get("SYNTHMED_TEST_DATA", "../shared/data")))

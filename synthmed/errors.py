"""Errors a user can cause. The CLI prints their message as one line and exits non-zero.

Warnings about input (pydicom's notes on an odd file ...) are logged to the ``synthmed``
logger as ``path: warning``; a library user sees them when logging is configured, the CLI
with ``--verbose`` (:func:`show_warnings`). Nothing reaches the terminal otherwise.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

LOGGER = logging.getLogger("synthmed")
LOGGER.addHandler(logging.NullHandler())  # no "last resort" printing to stderr


class SynthmedError(Exception):
    """An error with a message meant for the user: the CLI prints it as one line."""


class InputError(SynthmedError):
    """Bad input: a missing path, an unreadable file, a wrong shape or label.

    The message names the file (when there is one) and the problem, e.g.
    ``scan.dcm: truncated file (PixelData has 100 of 524288 bytes)``.
    """

    def __init__(self, problem: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(problem if path is None else f"{path}: {problem}")


def require(checks: list[tuple[bool, str]]) -> None:
    """Raise an :class:`InputError` with the message of the first check that is false: the
    range checks of a configuration's ``__post_init__``, written as ``(condition, message)``."""
    for ok, message in checks:
        if not ok:
            raise InputError(message)


class _StderrHandler(logging.Handler):
    """Writes ``warning: message`` to the ``sys.stderr`` of the moment (a test runner may
    swap it between calls)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(f"{record.levelname.lower()}: {record.getMessage()}", file=sys.stderr)


def show_warnings(enabled: bool) -> None:
    """Print the ``synthmed`` logger's warnings on stderr, or stop printing them."""
    for handler in [h for h in LOGGER.handlers if isinstance(h, _StderrHandler)]:
        LOGGER.removeHandler(handler)
    if enabled:
        LOGGER.addHandler(_StderrHandler(logging.WARNING))

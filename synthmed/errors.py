"""Errors a user can cause. The CLI prints their message as one line and exits non-zero."""

from __future__ import annotations

from pathlib import Path


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

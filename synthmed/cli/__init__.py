"""The ``synthmed`` command line. Each command parses, calls the Python API and prints a summary.

Errors a user can cause end in one line on stderr and exit status 1; ``--verbose`` adds the
traceback. The root group and what the commands share are in :mod:`synthmed.cli.base`, the
commands in one module per family (:mod:`~synthmed.cli.data`, :mod:`~synthmed.cli.train`,
:mod:`~synthmed.cli.generate`, :mod:`~synthmed.cli.evaluate` and
:mod:`~synthmed.cli.evaluate_translation`, :mod:`~synthmed.cli.report`),
registered here; their heavy imports wait inside each command.
"""

from __future__ import annotations

from synthmed.cli import data, evaluate, evaluate_translation, generate, report, train
from synthmed.cli.base import cli

__all__ = ["cli", "main"]

cli.add_command(data.data)
cli.add_command(train.train)
cli.add_command(generate.generate_command)
cli.add_command(generate.translate_command)
cli.add_command(evaluate.evaluate)
evaluate.evaluate.add_command(evaluate_translation.evaluate_translation_command)
evaluate.evaluate.add_command(evaluate_translation.evaluate_blend_command)
cli.add_command(report.demo_command)
cli.add_command(report.report_command)


def main() -> None:
    """Console entry point."""
    cli(prog_name="synthmed")

"""``synthmed demo`` (the whole story on the embedded phantom) and ``synthmed report`` (one
HTML page for a run or evaluation folder)."""

from __future__ import annotations

from pathlib import Path

import click

from synthmed.cli.base import Command


@click.command("demo", cls=Command)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default="demo-out",
              show_default=True, help="Output folder (must not exist or be empty).")
@click.option("--quick", is_flag=True, help="A smaller demo, under 2 minutes.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
@click.option("--progress/--no-progress", default=True, help="Show progress bars.")
def demo_command(out: Path, quick: bool, overwrite: bool, progress: bool) -> None:
    """The whole story on the embedded phantom: train, export, utility, fidelity, translation,
    one HTML report.

    Example: synthmed demo --out demo-out --quick
    """
    from synthmed.eval.demo import DemoConfig, run_demo

    page = run_demo(out, DemoConfig.quick() if quick else DemoConfig(), overwrite=overwrite,
                    progress=progress, echo=click.echo)
    click.echo(f"demo finished; open {page}")


@click.command("report", cls=Command)
@click.argument("folder", type=click.Path(path_type=Path))
def report_command(folder: Path) -> None:
    """One self-contained HTML page (and Markdown) for a run or evaluation FOLDER, or a
    folder of them.

    Example: synthmed report demo-out && open demo-out/synthmed-report.html
    """
    from synthmed.eval.report import build_report

    page, markdown = build_report(folder)
    click.echo(f"report: {page}\nmarkdown: {markdown}")

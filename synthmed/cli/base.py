"""What every command shares: one-line error handling, the root group with ``--verbose``, the
read options, the ``--out`` check, the options whose defaults live in a config dataclass, and
the small parsers of more than one command family."""

from __future__ import annotations

import dataclasses
import functools
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from synthmed import __version__
from synthmed.cli import types
from synthmed.errors import InputError, SynthmedError


class Command(click.Command):
    """A command whose OS errors that name no file (a full disk: ``write`` failing with
    ENOSPC) name its ``--out`` folder."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except OSError as error:
            out = ctx.params.get("out")
            if error.filename or out is None:
                raise
            raise InputError(f"cannot be written ({error.strerror or error})", out) from error


class Group(click.Group):
    """A click group that turns user errors into one clear line; its groups and commands
    inherit that."""

    command_class = Command
    group_class = type

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (SynthmedError, OSError) as error:
            if (ctx.obj or {}).get("verbose"):
                traceback.print_exc()
            message = str(error) if isinstance(error, SynthmedError) else _os_message(error)
            # one line even when a file name or a file's own text holds a line break
            raise click.ClickException("\\n".join(message.splitlines())) from None


def _os_message(error: OSError) -> str:
    where = f"{error.filename}: " if error.filename else ""
    return f"{where}{error.strerror or error}"


def check_out_folder(out: Path, overwrite: bool, *inputs: str | Path | None) -> None:
    """Refuse, before any work, an ``--out`` that writing could cost an input or a user's
    files (:mod:`synthmed.io`); the writer checks again when it writes."""
    from synthmed.io import check_out, check_replaceable

    check_out(out, inputs)
    check_replaceable(out, overwrite)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--verbose", is_flag=True,
              help="Show warnings about input files, and the full traceback when something "
                   "fails.")
@click.version_option(__version__, prog_name="synthmed")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """Synthetic medical images: read, train, generate, translate, evaluate.

    Data can be a DICOM file or folder, a NIfTI volume, a folder of PNG/JPEG/TIFF pictures
    (one sub-folder per class), a MedMNIST .npz, a CSV manifest, a glob pattern, or the
    embedded phantom (`phantom`, `phantom:t2,n=500,size=64`).
    """
    from synthmed.errors import show_warnings

    ctx.ensure_object(dict)["verbose"] = verbose
    show_warnings(verbose)  # warnings about input files (pydicom's ...) only with --verbose


# -- defaults that live in a config dataclass ---------------------------------------------------


def config_default(config: Any, name: str) -> Any:
    """The default of field ``name`` of ``config``: a dataclass (its declared default) or an
    instance of one (its value, e.g. ``TrainConfig.cyclegan()``'s)."""
    if not isinstance(config, type):
        return getattr(config, name)
    field = {f.name: f for f in dataclasses.fields(config)}[name]
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    raise ValueError(f"{config.__name__}.{name} has no default")


def shown(value: Any) -> str:
    """A default as the command line writes it: ``2e-4``, ``10``, ``0.1,0.25,1``, ``on``."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        if value and abs(value) < 1e-3:
            mantissa, exponent = f"{value:e}".split("e")
            return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
        return f"{value:g}"
    if isinstance(value, tuple | list):
        return ",".join(shown(item) for item in value)
    return str(value)


def config_option(*decls: str, config: Any, field: str, help: str | None = None,
                  override: bool = True, **kwargs: Any) -> Callable[[Any], Any]:
    """A ``click.option`` whose default is field ``field`` of ``config`` (a dataclass or an
    instance), so the number lives in one place.

    ``override=True`` (train options): the click default is ``None``, so an unset option lets
    a ``--config`` file's value (or the config's own default) stand, and the help text ends
    with ``(default X)``. ``override=False``: the click default is the field's default (a
    tuple as the comma list the option parses), shown with ``show_default``.
    """
    value = config_default(config, field)
    if override:
        text = f"{help} (default {shown(value)})." if help else f"Default {shown(value)}."
        return click.option(*decls, default=None, help=text, **kwargs)
    default = shown(value) if isinstance(value, tuple | list) else value
    return click.option(*decls, default=default, show_default=True, help=help, **kwargs)


# -- options and parsers of several commands ---------------------------------------------------


def read_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add the options of :class:`~synthmed.augment.items.ReadConfig`; pass ``read_config``."""
    from synthmed.augment.intensity import CT_WINDOWS
    from synthmed.augment.items import ReadConfig
    from synthmed.augment.readers import FORMATS

    options = [
        config_option("--format", "format_", type=click.Choice(FORMATS), config=ReadConfig,
                      field="format", override=False,
                      help="Reader to use; auto picks by file name."),
        click.option("--size", type=click.IntRange(1), default=None,
                     help="Resize every image to SIZE x SIZE (needed for mixed sizes)."),
        config_option("--resize-mode", type=click.Choice(["resize", "pad", "fit"]),
                      config=ReadConfig, field="resize_mode", override=False,
                      help="resize: stretch; pad: pad/crop around the center; "
                           "fit: scale the longest side, then pad."),
        click.option("--channels", type=click.Choice(["1", "3"]), default=None,
                     help="Convert to 1 (grayscale) or 3 (RGB) channels."),
        click.option("--window", default=None,
                     help=f"CT window: {', '.join(CT_WINDOWS)} or CENTER,WIDTH in HU."),
        config_option("--axis", "slice_axis", type=click.IntRange(0, 2), config=ReadConfig,
                      field="slice_axis", override=False, help="NIfTI axis to slice along."),
        config_option("--min-foreground", type=types.FINITE, config=ReadConfig,
                      field="min_foreground", override=False,
                      help="NIfTI: skip slices whose foreground fraction is not above this."),
        click.option("--skip-bad", is_flag=True,
                     help="Skip unreadable files and list them instead of stopping."),
        click.option("--root", type=click.Path(exists=True, file_okay=False, resolve_path=True),
                     default=None,
                     help="Confine reading to this folder: every file the data, a manifest, "
                          "folder or glob names must resolve (symlinks followed) inside it."),
    ]

    @functools.wraps(command)
    def wrapper(*args: Any, format_: str, size: int | None, resize_mode: str,
                channels: str | None, window: str | None, slice_axis: int,
                min_foreground: float, skip_bad: bool, root: str | None,
                **kwargs: Any) -> Any:
        config = ReadConfig(format=format_, size=size, resize_mode=resize_mode,
                            channels=None if channels is None else int(channels), window=window,
                            slice_axis=slice_axis, min_foreground=min_foreground,
                            skip_bad=skip_bad, root=root)
        return command(*args, read_config=config, **kwargs)

    return stacked(*options)(wrapper)


def blend_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--blend-map`` and ``--blend-weight``; pass ``blend``, a
    :class:`~synthmed.gan.translate.MapBlend` or ``None`` (neither given)."""
    from synthmed.gan.translate import MAPS, MapBlend

    options = [
        click.option("--blend-map", type=click.Choice(MAPS), default=None,
                     help="Mix this global intensity map of the input into the translation "
                          "(inverted: a decreasing map, as T1 <-> T2); needs --blend-weight."),
        click.option("--blend-weight", type=types.FiniteFloat(0, 1, min_open=True),
                     default=None,
                     help="The map's share of the blend, in (0, 1]; choose it on validation "
                          "subjects (synthmed evaluate blend)."),
    ]

    @functools.wraps(command)
    def wrapper(*args: Any, blend_map: str | None, blend_weight: float | None,
                **kwargs: Any) -> Any:
        if (blend_map is None) != (blend_weight is None):
            raise click.UsageError("--blend-map and --blend-weight go together")
        blend = None if blend_map is None else MapBlend(blend_map, blend_weight)
        return command(*args, blend=blend, **kwargs)

    return stacked(*options)(wrapper)


def stacked(*options: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """One decorator for several ``click.option`` s, listed in ``--help`` in this order."""
    def decorate(command: Any) -> Any:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def comma_names(text: str) -> tuple[str, ...]:
    """``"color, cutout"`` -> ``("color", "cutout")``; empty parts are dropped."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def class_runs_by_name(texts: tuple[str, ...], option: str) -> dict[str, str]:
    """``("malignant=runs/copy",)`` -> ``{"malignant": "runs/copy"}`` (``CLASS=RUN`` each)."""
    runs: dict[str, str] = {}
    for text in texts:
        name, _, run = text.partition("=")
        if not name.strip() or not run.strip() or name.strip() in runs:
            raise click.BadParameter(f"{text!r} is not CLASS=RUN for a class not given before",
                                     param_hint=option)
        runs[name.strip()] = run.strip()
    return runs


def comma_floats(text: str, option: str) -> tuple[float, ...]:
    """``"0.1, 1"`` -> ``(0.1, 1.0)``."""
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of numbers",
                                 param_hint=option) from None

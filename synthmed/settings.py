"""Typed settings from YAML and JSON: dataclasses built from plain mappings, every value
checked against its field's annotation, with errors that name the file and the field.

A configuration dataclass calls :func:`check_fields` first in its ``__post_init__`` and then
its own range checks (:func:`synthmed.errors.require`); :func:`from_dict` builds one from a
YAML section. A dataclass's ``section`` class attribute (``model``, ``train`` ...) is the name
its errors give it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import types
import typing
from dataclasses import MISSING, asdict, fields, replace
from pathlib import Path
from typing import Any, TypeVar

import yaml

from synthmed.errors import InputError

C = TypeVar("C")


def from_dict(cls: type[C], values: Any, where: str | Path | None = "config",
              section: str | None = None) -> C:
    """Build dataclass ``cls`` from a plain dict (a YAML / JSON section), checked.

    Each value must fit its field's annotation (:func:`check_fields`: lists become tuples,
    ints are accepted for floats, NaN and inf are refused), unknown keys and missing required
    fields are errors, and then the dataclass's own range checks run.

    Raises:
        InputError: naming ``where`` (the file, or an option) and ``section.field``, with
            what the field takes; also for a ``values`` that is not a mapping.
    """
    section = getattr(cls, "section", "") if section is None else section
    prefix = f"{section}: " if section else ""
    if not isinstance(values, dict):
        raise InputError(f"{prefix}must be a mapping of settings (name: value), got "
                         f"{shown(values)}", where)
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(str(key) for key in values if key not in names)
    if unknown:
        raise InputError(f"{prefix}unknown setting(s) {', '.join(unknown)}; "
                         f"known: {', '.join(sorted(names))}", where)
    missing = [f.name for f in fields(cls)  # type: ignore[arg-type]
               if f.name not in values and f.default is MISSING
               and f.default_factory is MISSING]
    if missing:
        raise InputError(f"{prefix}missing setting(s) {', '.join(missing)}", where)
    hints = _hints(cls)
    checked = {}
    try:
        for f in fields(cls):  # type: ignore[arg-type]
            if f.name in values:
                checked[f.name] = _coerce(hints.get(f.name, Any), values[f.name], f.name,
                                          f.metadata.get("finite", True))
        return cls(**checked)
    except _Invalid as error:
        raise InputError(f"{prefix}{error}", where) from None
    except InputError as error:
        if error.path is not None:
            raise
        raise InputError(f"{prefix}{error.problem}", where) from None


def check_fields(config: Any) -> None:
    """Check (and normalise) every field of dataclass instance ``config`` against its
    annotation; call it first in ``__post_init__``.

    ``int``: an int, not a bool (a whole float such as ``1e7`` becomes an int); ``float``:
    an int or float, finite unless the field's metadata says ``finite=False``; ``bool``,
    ``str``: exactly those; ``tuple[X, ...]`` / ``tuple[X, Y]``: a list or tuple of such items
    (stored as a tuple); ``X | None``: ``None`` or an X; ``Literal[...]``: one of its values;
    a dataclass: an instance or a mapping of its fields. YAML 1.1 reads ``2e-4`` (an exponent
    without a dot) as a string: such strings are taken as the numbers they spell.

    Raises:
        InputError: ``field must be ..., got ...`` (no path: :func:`from_dict` adds it).
    """
    hints = _hints(type(config))
    for f in fields(config):
        value = getattr(config, f.name)
        try:
            checked = _coerce(hints.get(f.name, Any), value, f.name,
                              f.metadata.get("finite", True))
        except _Invalid as error:
            raise InputError(str(error)) from None
        if checked is not value:
            object.__setattr__(config, f.name, checked)


_EXPONENT = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)[eE][-+]?\d+")


class _Invalid(Exception):
    """A value that does not fit its field's annotation (the message names the field)."""


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(annotation: Any, value: Any, name: str, finite: bool = True) -> Any:
    """``value`` checked against ``annotation`` (see :func:`check_fields`), or ``_Invalid``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(option, value, name, finite)
            except _Invalid:
                if isinstance(value, dict) and dataclasses.is_dataclass(option):
                    raise  # the section's own error names the setting
        raise _Invalid(f"{name} must be {_expected(annotation)}, got {shown(value)}")
    if origin is typing.Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise _Invalid(f"{name} must be {_expected(annotation)}, got {shown(value)}")
    if annotation is bool or annotation is str:
        if type(value) is annotation:
            return value
        raise _Invalid(f"{name} must be {_expected(annotation)}, got {shown(value)}")
    if annotation is int:
        number = _number(value)
        if isinstance(number, float) and math.isfinite(number) and number.is_integer():
            number = int(number)
        if isinstance(number, int):
            return number
        raise _Invalid(f"{name} must be {_expected(int)}, got {shown(value)}")
    if annotation is float:
        number = _number(value)
        if number is None:
            raise _Invalid(f"{name} must be {_expected(float)}, got {shown(value)}")
        if finite and not math.isfinite(number):
            raise _Invalid(f"{name} must be a finite number, got {shown(value)}")
        return number if type(number) is float else float(number)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise _Invalid(f"{name} must be {_expected(annotation)}, got {shown(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            items = [(args[0], item) for item in value]
        elif len(value) == len(args):
            items = list(zip(args, value, strict=True))
        else:
            raise _Invalid(f"{name} must be {_expected(annotation)}, got {shown(value)}")
        return tuple(_coerce(kind, item, f"{name}[{k}]", finite)
                     for k, (kind, item) in enumerate(items))
    if dataclasses.is_dataclass(annotation) and isinstance(annotation, type):
        if isinstance(value, annotation):
            return value
        if not isinstance(value, dict):
            raise _Invalid(f"{name} must be a mapping of settings (name: value), got "
                           f"{shown(value)}")
        try:
            return from_dict(annotation, value, section=name)
        except InputError as error:
            raise _Invalid(error.problem) from None
    return value  # an annotation this checker does not know: left to the dataclass


def _number(value: Any) -> int | float | None:
    """An int or float (not a bool), or a string YAML 1.1 left unparsed such as ``2e-4``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value
    if isinstance(value, str) and _EXPONENT.fullmatch(value.strip()):
        number = float(value)
        return int(number) if number.is_integer() and abs(number) < 2**63 else number
    return None


def _expected(annotation: Any) -> str:
    """What a field of ``annotation`` takes, in words."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        words = [_expected(a) for a in args if a is not type(None)]
        return " or ".join(words) + (" or null" if type(None) in args else "")
    if origin is typing.Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_plural(args[0])}"
        if len(set(args)) == 1:
            return f"a list of {len(args)} {_plural(args[0])}"
        return f"a list of {len(args)} items ({', '.join(_expected(a) for a in args)})"
    if dataclasses.is_dataclass(annotation):
        return "a mapping of settings (name: value)"
    return {int: "a whole number", float: "a finite number", bool: "true or false",
            str: "a string"}.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _plural(annotation: Any) -> str:
    return {int: "whole numbers", float: "finite numbers", bool: "booleans",
            str: "strings"}.get(annotation, _expected(annotation))


def shown(value: Any) -> str:
    """``value`` as a message shows it: YAML words for null and booleans, short reprs."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    text = repr(list(value) if isinstance(value, tuple) else value)
    return text if len(text) <= 60 else text[:57] + "..."


def load_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping from ``path``, or a clear error."""
    try:
        values = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise InputError("config file not found", path) from None
    except yaml.YAMLError as error:
        raise InputError(f"not valid YAML ({error})".replace("\n", " "), path) from None
    if not isinstance(values, dict):
        raise InputError("must hold a mapping (model:, train:)", path)
    return values


def with_overrides(config: C, **overrides: Any) -> C:
    """``config`` with the fields that are not ``None`` in ``overrides`` replaced."""
    return replace(config, **{k: v for k, v in overrides.items() if v is not None})


def to_dict(config: Any) -> dict[str, Any]:
    """A dataclass as plain YAML-safe values (tuples become lists)."""
    def plain(value: Any) -> Any:
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(asdict(config))

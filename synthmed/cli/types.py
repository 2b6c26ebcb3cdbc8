"""Click parameter types the commands share: one seed range, one image-count cap, and floats
that refuse NaN and inf (``click.FloatRange`` lets ``nan`` through every bound). Only the
command line imports click."""

from __future__ import annotations

import math
from typing import Any

import click

from synthmed.limits import MAX_IMAGES, MAX_SEED, MAX_WIDTH


class FiniteFloat(click.FloatRange):
    """A ``click.FloatRange`` that also refuses ``nan``, ``inf`` and ``-inf``."""

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return super().convert(number, param, ctx)


#: every --seed: 0 .. 2**32 - 1 (synthmed.limits.MAX_SEED)
SEED = click.IntRange(0, MAX_SEED)
#: every count of images to make or sample: 1 .. 10,000,000 (synthmed.limits.MAX_IMAGES)
IMAGES = click.IntRange(1, MAX_IMAGES)
#: network widths (--width, --ngf, --ndf): 1 .. 1024 (synthmed.limits.MAX_WIDTH)
WIDTH = click.IntRange(1, MAX_WIDTH)
#: learning rates, thresholds, epsilons: finite and > 0
POSITIVE = FiniteFloat(0, min_open=True)
#: loss weights (lambdas, R1): finite and >= 0
NON_NEGATIVE = FiniteFloat(0)
#: EMA decays: [0, 1)
DECAY = FiniteFloat(0, 1, max_open=True)
#: shares: [0, 1]
FRACTION = FiniteFloat(0, 1)
#: a percentile: 0 .. 100
PERCENTILE = FiniteFloat(0, 100)
#: any finite number
FINITE = FiniteFloat()


class StepRange(click.ParamType):
    """``START,END``: two optimiser steps, ``0 <= START <= END`` (a transition's span)."""

    name = "START,END"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        if isinstance(value, tuple):
            return value
        start, comma, end = str(value).partition(",")
        if not (comma and start.strip().isdigit() and end.strip().isdigit()):
            self.fail(f"{value!r} is not START,END (two whole numbers of steps)", param, ctx)
        if int(start) > int(end):
            self.fail(f"{value!r}: START must not be after END", param, ctx)
        return int(start), int(end)


#: a span of optimiser steps: START,END
STEP_RANGE = StepRange()

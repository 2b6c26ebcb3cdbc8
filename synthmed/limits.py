"""Limits every command shares, defined once.

``MAX_SEED``: a seed is a whole number in ``0 .. 2**32 - 1`` (what NumPy's and PyTorch's
generators, and NumPy's ``SeedSequence``, all take without wrapping or refusing). Every
``--seed`` option and every seed field of a configuration uses this range.

``MAX_IMAGES``: the most images one command makes or samples (``generate --n``, ``--per-class``
counts, ``evaluate ... --n``): 10,000,000, about 40 GB of 64x64 float32 pixels. Larger requests
are refused up front instead of running for days or exhausting memory or disk.

``MAX_WIDTH``: the most channels of a network's width setting (DCGAN ``width``, CycleGAN
``ngf`` / ``ndf``); a DCGAN's widest layers have 8 times as many, so wider networks do not fit
in memory.
"""

from __future__ import annotations

MAX_SEED = 2**32 - 1
MAX_IMAGES = 10_000_000
MAX_WIDTH = 1024

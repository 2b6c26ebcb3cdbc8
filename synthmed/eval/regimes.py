"""The regimes of the utility harness: the ways of building a classifier's training set from
the real subset, classic augmentation, synthetic images and an unlabelled pool."""

from __future__ import annotations

from dataclasses import dataclass

#: The loss weight of a synthetic image in the down-weighted regimes (fixed, not tuned).
SYNTHETIC_WEIGHT = 0.5


@dataclass(frozen=True)
class Regime:
    """One way of building the classifier's training set.

    Args:
        name: shown in reports.
        real: real images included. classic: classic augmentation on every batch.
        synthetic: ``None``, a ratio of synthetic to real images, or ``"balance"``.
        repeat_to: the real images repeated to this multiple of their count (the control).
        mri: MR / X-ray intensity artefacts (:func:`mri_augment`) after the classic ones.
        synthetic_weight: the loss weight of a synthetic image (a real one weighs 1).
        bridged: the synthetic images alone for the first half of the steps, then the real
            ones (bridged transfer) instead of one mixed set.
        unlabelled: with an unlabelled pool, this many of its real images per labelled one,
            pseudo-labelled by the ``real`` regime's classifier (self-training, the control
            of the pool's generator).
    """

    name: str
    real: bool = True
    classic: bool = False
    synthetic: float | str | None = None
    repeat_to: float = 1.0
    mri: bool = False
    synthetic_weight: float = 1.0
    bridged: bool = False
    unlabelled: float | None = None

    @property
    def uses_synthetic(self) -> bool:
        return self.synthetic is not None

    @property
    def augment(self) -> tuple[str, ...]:
        """The classifier's augmentations (:data:`AUGMENTATIONS` names), in order."""
        return ("classic",) * self.classic + ("mri",) * self.mri


def make_regimes(ratios: tuple[float, ...], balance: bool, pool: bool = False
                 ) -> list[Regime]:
    """The regimes of the grid, baselines first (with an unlabelled ``pool``, its pseudo-
    labelled real images too); per mix of synthetic images: mixed in plainly, with classic
    augmentation, with their loss down-weighted, and bridged (synthetic first); synthetic
    images alone, as many as real ones and at each other ratio."""
    mixes: list[float | str] = [*ratios, *(["balance"] if balance else [])]
    largest = 1.0 + max(ratios, default=1.0)
    regimes = [Regime("real"), Regime("real+classic", classic=True),
               Regime("real+classic-mri", classic=True, mri=True),
               Regime("real-repeated", classic=True, repeat_to=largest)]
    if pool:
        regimes += [Regime(f"real+classic+pool pseudo-labelled x{ratio:g}", classic=True,
                           unlabelled=ratio) for ratio in ratios]
    for mix in mixes:
        label = "balance" if mix == "balance" else f"x{mix:g}"
        regimes += [
            Regime(f"real+synthetic {label}", synthetic=mix),
            Regime(f"real+classic+synthetic {label}", classic=True, synthetic=mix),
            Regime(f"real+classic+synthetic {label} (loss x{SYNTHETIC_WEIGHT:g})", classic=True,
                   synthetic=mix, synthetic_weight=SYNTHETIC_WEIGHT),
            Regime(f"synthetic, then real+classic {label}", classic=True, synthetic=mix,
                   bridged=True),
        ]
    regimes.append(Regime("synthetic only", real=False, synthetic=1.0))
    regimes += [Regime(f"synthetic only x{ratio:g}", real=False, synthetic=ratio)
                for ratio in ratios if ratio != 1.0]
    return regimes

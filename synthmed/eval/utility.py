"""Does synthetic data help a classifier? The utility harness.

The same classifier, hyper-parameters and number of optimiser steps are used in every regime:

- ``real``: the real training images of the fraction;
- ``real+classic``: the same with classic augmentation (flips, small affine, intensity);
- ``real+classic-mri``: classic plus MR / X-ray artefacts (bias field, gamma, Gibbs ringing,
  noise; MONAI), the strongest cheap baseline;
- ``real-repeated``: the real images repeated to the size of the largest real + synthetic set,
  with classic augmentation: the control that shows how much of a gain is only extra training;
- ``real+synthetic xR`` / ``real+classic+synthetic xR``: R synthetic images per real one (class
  mix of the real subset), or ``balance``: synthetic images fill every class up to the largest;
- ``real+classic+synthetic xR (loss x0.5)``: the same, each synthetic image's loss weighted
  by :data:`SYNTHETIC_WEIGHT`, so the real images dominate once synthetic ones outnumber them;
- ``synthetic, then real+classic xR``: bridged transfer (Li et al. 2024), half the steps on
  the synthetic images alone, then the other half on the real ones;
- ``synthetic only``: as many synthetic images as real ones, tested on real images;
- ``synthetic only xR``: ``R`` x as many, for each other ratio of ``--ratios``.

Grid: fractions (stratified subsets of the real training split, drawn per seed) x seeds x
regimes. All regimes of one (fraction, seed) share its real subset and synthetic images, so
comparisons across regimes are paired by seed. Model selection uses the real validation split;
the test split is scored once per trained model.

No leakage: with a generator recipe, the generator of a (fraction, seed) is trained on exactly
that subset (cached by its fingerprint); with a trained run, its ``training_data.json`` must
not contain any validation or test image.

A cell's result depends only on its (fraction, seed, regime), never on which process runs it,
so ``shard=(k, n)`` runs one disjoint part of the grid and :func:`merge` joins the parts into
the same ``results.json`` a single process writes.

The real splits come from :mod:`synthmed.eval.real_data`, the synthetic images from
:mod:`synthmed.eval.generators`; this module runs the grid and merges its shards.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from synthmed import __version__
from synthmed.augment.dataset import ImageSet
from synthmed.errors import InputError
from synthmed.eval.classifier import (
    ClassifierConfig,
    Pretraining,
    TrainedClassifier,
    train_classifier,
)
from synthmed.eval.generators import (
    FAMILIES,
    GeneratorRecipe,
    SubsetGenerators,
    TrainedRun,
    best_of,
    pseudo_labels,
    synthetic_labels,
)
from synthmed.eval.metrics import classification_metrics
from synthmed.eval.real_data import RealData, fraction_subset
from synthmed.eval.regimes import Regime, make_regimes
from synthmed.io import write_json

RESULTS = "results.json"
MAX_DOUBLINGS = 6  # the pilot's budget grows at most 64-fold


@dataclass(frozen=True)
class UtilityConfig:
    """The grid and its classifier.

    Args:
        fractions: shares of the real training split, each in (0, 1].
        seeds: repeats of every (fraction, regime); seed ``s`` draws the subset, the
            synthetic images and the classifier's initialisation and batch order.
        ratios: synthetic images per real image in the mixed regimes (and, other than 1,
            in synthetic only).
        balance: add the regimes where synthetic images fill the minority classes.
        best_of: draw this many candidates per synthetic image and keep the one that a
            classifier trained on the fraction's real images (the ``real`` regime's model)
            finds most typical of its class; 1 keeps every draw.
        metric: the headline metric (``auroc``, ``balanced_accuracy``, ``macro_f1``).
        generator_pool: ``subset``: the generator of a (fraction, seed) sees exactly its
            labelled subset; ``train``: one unconditional generator sees every training image
            (many scans, few labels), its samples pseudo-labelled by the ``real`` regime's
            classifier, beside the self-training control (the same classifier's labels on the
            pool's real images).
        pilot_doublings: before a fraction's cells, the ``real`` regime of seed 0 is trained
            with ``classifier.steps``, doubled at most this many times while its best
            validation pass is among its last three (unconverged); every regime of the
            fraction then gets that budget. 0: ``classifier.steps`` as given.
    """

    fractions: tuple[float, ...] = (0.1, 0.25, 1.0)
    seeds: int = 5
    ratios: tuple[float, ...] = (1.0,)
    balance: bool = False
    best_of: int = 1
    metric: str = "auroc"
    generator_pool: str = "subset"
    pilot_doublings: int = 3
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)

    def __post_init__(self) -> None:
        if not self.fractions or not all(0 < f <= 1 for f in self.fractions):
            raise InputError(f"fractions must be in (0, 1], got {list(self.fractions)}")
        if self.seeds < 1:
            raise InputError(f"seeds must be at least 1, got {self.seeds}")
        if not all(0 < r < math.inf for r in self.ratios):
            raise InputError(f"ratios must be positive finite numbers, got {list(self.ratios)}")
        if self.best_of < 1:
            raise InputError(f"best_of must be at least 1, got {self.best_of}")
        if not 0 <= self.pilot_doublings <= MAX_DOUBLINGS:
            raise InputError(f"pilot_doublings must be between 0 and {MAX_DOUBLINGS}, got "
                             f"{self.pilot_doublings}")
        if self.classifier.steps < 2:
            raise InputError("the classifier needs at least 2 steps (the bridged regimes give "
                             f"half to the synthetic images), got {self.classifier.steps}")
        if self.metric not in ("auroc", "balanced_accuracy", "macro_f1", "accuracy"):
            raise InputError(f"unknown metric {self.metric!r}")
        if self.generator_pool not in ("subset", "train"):
            raise InputError(f"generator_pool must be subset or train, got "
                             f"{self.generator_pool!r}")
        if self.pool and (self.balance or self.best_of > 1 or max(self.fractions) >= 1):
            raise InputError("an unlabelled pool (generator_pool train) needs fractions below 1 "
                             "(the rest of the training split is the pool) and takes neither "
                             "balance nor best_of (its samples' labels come from the real-only "
                             "classifier)")

    @property
    def pool(self) -> bool:
        return self.generator_pool == "train"

    @property
    def regimes(self) -> list[Regime]:
        return make_regimes(self.ratios, self.balance, self.pool)


# -- the grid -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    fraction: float
    seed: int
    regime: Regime


def grid(config: UtilityConfig, shard: tuple[int, int] = (1, 1)) -> list[Cell]:
    """The cells of shard ``k`` of ``n``: whole (fraction, seed) pairs, dealt round robin, so
    each shard trains each of its generators once."""
    k, n = shard
    if not 1 <= k <= n:
        raise InputError(f"shard must be K/N with 1 <= K <= N, got {k}/{n}")
    pairs = [(f, s) for f in config.fractions for s in range(config.seeds)]
    return [Cell(f, s, regime) for i, (f, s) in enumerate(pairs) if i % n == k - 1
            for regime in config.regimes]


def run_grid(
    real: RealData,
    generator: TrainedRun | SubsetGenerators,
    config: UtilityConfig,
    out: Path,
    *,
    shard: tuple[int, int] = (1, 1),
    progress: bool = True,
) -> dict[str, Any]:
    """Train and test every cell of the shard; write ``out/results.json`` and return it.

    ``results.json`` is rewritten after every cell, so a killed run keeps its finished
    cells; running the same command again skips them, and so does a larger grid (more seeds
    or fractions) in the same ``out``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cells = grid(config, shard)
    results = _header(real, generator, config)
    done, budgets = _load_cells(out / RESULTS, results, config)
    bar = tqdm(total=len(cells), unit="model", disable=True if not progress else None,
               dynamic_ncols=True)
    for fraction, seed in dict.fromkeys((c.fraction, c.seed) for c in cells):
        todo = [c for c in cells if (c.fraction, c.seed) == (fraction, seed)
                and _key(c) not in done]
        bar.update(sum(1 for c in cells if (c.fraction, c.seed) == (fraction, seed)) - len(todo))
        if not todo:
            continue
        if f"{fraction:g}" not in budgets:
            bar.set_postfix_str(f"f={fraction:g} pilot")
            budgets[f"{fraction:g}"] = pilot_budget(real, fraction, config)
        budget = replace(config, classifier=replace(config.classifier,
                                                    steps=budgets[f"{fraction:g}"]))
        subset = fraction_subset(real.train, fraction, seed)
        synthetic = _synthetic_sets(subset, todo, generator, seed, real, budget)
        for cell in todo:
            bar.set_postfix_str(f"f={fraction:g} seed={seed} {cell.regime.name}")
            done[_key(cell)] = _run_cell(cell, subset, synthetic, real, budget)
            _write_results(out, results, done, budgets, config)  # a kill loses one model
            bar.update()
    bar.close()
    return _write_results(out, results, done, budgets, config)


def _write_results(out: Path, header: dict[str, Any], done: dict[tuple, dict[str, Any]],
                   budgets: dict[str, int], config: UtilityConfig) -> dict[str, Any]:
    results = {**{k: v for k, v in header.items() if k not in ("budgets", "cells")},
               "budgets": dict(sorted(budgets.items(), key=lambda kv: float(kv[0]))),
               "cells": _ordered(done.values(), config)}
    write_json(out / RESULTS, results)
    return results


def pilot_budget(real: RealData, fraction: float, config: UtilityConfig) -> int:
    """The classifier's step budget at ``fraction``: ``config.classifier.steps``, doubled at
    most ``config.pilot_doublings`` times while the ``real`` regime of seed 0 has not
    converged (its best validation pass among its last three)."""
    subset = fraction_subset(real.train, fraction, seed=0)
    steps = config.classifier.steps
    for _ in range(config.pilot_doublings):
        trial = replace(config, classifier=replace(config.classifier, steps=steps))
        if _real_only_classifier(subset, real, trial, seed=0).converged:
            break
        steps *= 2
    return steps


def _header(real: RealData, generator: TrainedRun | SubsetGenerators,
            config: UtilityConfig) -> dict[str, Any]:
    """Everything but the cells: what was run on what (no timings, so shards agree), as it
    reads back from JSON."""
    return _as_json({
        "synthmed_version": __version__,
        "config": asdict(config),
        "regimes": [asdict(r) for r in config.regimes],
        "data": {
            "origin": real.train.metadata.get("origin", ""),
            "class_names": list(real.train.class_names),
            "size": list(real.train.size),
            "channels": real.train.channels,
            "counts": {name: {real.train.class_names[k]: n for k, n in part.class_counts().items()}
                       for name, part in (("train", real.train), ("val", real.val),
                                          ("test", real.test))},
            "fingerprints": {"train": real.train.fingerprint(), "val": real.val.fingerprint(),
                             "test": real.test.fingerprint()},
            "notes": real.notes,
        },
        "generator": generator.describe(),
        "cells": [],
    })


def _load_cells(path: Path, header: dict[str, Any], config: UtilityConfig
                ) -> tuple[dict[tuple, dict[str, Any]], dict[str, int]]:
    """Finished cells and step budgets of an earlier run of the same grid on the same data.
    The grid may have grown (more seeds, more fractions): its finished cells are kept and only
    the new ones run."""
    if not path.is_file():
        return {}, {}
    earlier = json.loads(path.read_text())
    if _grid_identity(earlier) != _grid_identity(header):
        raise InputError("holds results of another grid, data or generator: choose another "
                         "--out", path.parent)
    cells = {(c["fraction"], c["seed"], c["regime"]): c for c in earlier["cells"]}
    outside = sorted(set(cells) - {_key(c) for c in grid(config)})
    if outside:
        raise InputError(f"holds {len(outside)} finished cell(s) outside this grid, e.g. "
                         f"fraction {outside[0][0]}, seed {outside[0][1]}: rerun with those "
                         "--fractions and --seeds or choose another --out", path.parent)
    return cells, _earlier_budgets(earlier)


def _earlier_budgets(results: dict[str, Any]) -> dict[str, int]:
    """The step budget of each fraction of ``results``; results written before the pilot
    existed trained every fraction with the classifier's own steps."""
    if "budgets" in results:
        return dict(results["budgets"])
    steps = results["config"]["classifier"]["steps"]
    return {f"{cell['fraction']:g}": steps for cell in results["cells"]}


def _grid_identity(results: dict[str, Any]) -> dict[str, Any]:
    """What must match for cells to be reused or merged: everything but the cells, the seed
    count, the fractions and where the data and the generator lie (their fingerprints say
    what they are). Options added since the results were written count as their defaults, and
    regimes added since then are run beside the finished ones."""
    config = _as_json(asdict(_config_from(results["config"])))
    config = {k: v for k, v in config.items() if k not in ("seeds", "fractions")}
    data = {k: v for k, v in results["data"].items() if k != "origin"}
    generator = {k: v for k, v in results["generator"].items() if k != "path"}
    if generator.get("model") == FAMILIES["dcgan"]:
        generator = {**_as_json(asdict(GeneratorRecipe())), **generator}
    rest = {k: v for k, v in results.items() if k not in ("cells", "regimes", "budgets")}
    return {**rest, "config": config, "data": data, "generator": generator}


def _key(cell: Cell) -> tuple:
    return (cell.fraction, cell.seed, cell.regime.name)


def _ordered(cells: Any, config: UtilityConfig) -> list[dict[str, Any]]:
    order = {r.name: k for k, r in enumerate(config.regimes)}
    return sorted(cells, key=lambda c: (c["fraction"], c["seed"], order[c["regime"]]))


def _synthetic_sets(subset: ImageSet, cells: list[Cell], generator: TrainedRun |
                    SubsetGenerators, seed: int, real: RealData, config: UtilityConfig
                    ) -> dict[Any, tuple[np.ndarray, np.ndarray]]:
    """The (images, labels) sets the cells add to the real subset, drawn once per (fraction,
    seed): synthetic ones keyed by their mix, in the subset's class mix (the best of
    ``config.best_of`` candidates per image when above 1); with an unlabelled pool, synthetic
    ones from the pool's generator and the pool's own real images (keyed ``("pool",
    ratio)``), both labelled by the ``real`` regime's classifier."""
    mixes = dict.fromkeys(c.regime.synthetic for c in cells if c.regime.uses_synthetic)
    ratios = dict.fromkeys(c.regime.unlabelled for c in cells if c.regime.unlabelled)
    judge = (_real_only_classifier(subset, real, config, seed)
             if (mixes or ratios) and (config.pool or config.best_of > 1) else None)
    every_mix = list(dict.fromkeys(r.synthetic for r in config.regimes if r.uses_synthetic))
    sets: dict[Any, tuple[np.ndarray, np.ndarray]] = {}
    for mix in mixes:
        k = every_mix.index(mix)  # the mix's draws do not depend on which cells are left
        if config.pool:
            images = generator.sample(real.train, np.zeros(round(float(mix) * len(subset)),
                                                           np.int64), seed * 1000 + k)
            sets[mix] = (images, pseudo_labels(images, judge))
            continue
        labels = synthetic_labels(subset, mix, np.random.default_rng([seed, k]))
        candidates = generator.sample(subset, np.repeat(labels, config.best_of), seed * 1000 + k)
        images = candidates if judge is None else best_of(candidates, labels, judge)
        sets[mix] = (images, labels)
    for ratio in ratios:
        images = _pool_images(real.train, subset, round(ratio * len(subset)),
                              np.random.default_rng([seed, round(ratio * 1e6)]))
        sets[("pool", ratio)] = (images, pseudo_labels(images, judge))
    return sets


def _pool_images(train: ImageSet, subset: ImageSet, n: int, rng: np.random.Generator
                 ) -> np.ndarray:
    """Up to ``n`` training images ``(n, C, H, W)`` outside the labelled subset, drawn
    without replacement (their labels are never read)."""
    labelled = set(subset.image_hashes())
    pool = np.flatnonzero([h not in labelled for h in train.image_hashes()])
    chosen = np.sort(rng.choice(pool, size=min(n, len(pool)), replace=False))
    return train.images[chosen]


def _real_only_classifier(subset: ImageSet, real: RealData, config: UtilityConfig,
                          seed: int) -> TrainedClassifier:
    """The ``real`` regime's classifier: the subset, no augmentation, the cell's seed."""
    return train_classifier(subset.images, subset.labels, real.val.images, real.val.labels,
                            len(real.train.class_names), config.classifier, seed=seed)



def _run_cell(cell: Cell, subset: ImageSet, synthetic: dict, real: RealData,
              config: UtilityConfig) -> dict[str, Any]:
    """Train one classifier and score it once on the test split."""
    regime = cell.regime
    images, labels = [], []
    n_real = n_synthetic = n_unlabelled = 0
    pretraining = None
    if regime.real:
        n_real = max(1, round(regime.repeat_to * len(subset)))
        index = np.resize(np.arange(len(subset)), n_real)  # the subset repeated, then cut
        images.append(subset.images[index])
        labels.append(subset.labels[index])
    if regime.unlabelled:
        pool_images, pool_labels = synthetic[("pool", regime.unlabelled)]
        n_unlabelled = len(pool_images)
        images.append(pool_images)
        labels.append(pool_labels)
    if regime.uses_synthetic:
        synthetic_images, synthetic_labels_ = synthetic[regime.synthetic]
        n_synthetic = len(synthetic_images)
        if regime.bridged:
            pretraining = Pretraining(synthetic_images, synthetic_labels_,
                                      config.classifier.steps // 2)
        else:
            images.append(synthetic_images)
            labels.append(synthetic_labels_)
    weights = None
    if regime.synthetic_weight != 1.0:
        weights = np.concatenate([np.ones(n_real + n_unlabelled),  # in the order appended
                                  np.full(n_synthetic, regime.synthetic_weight)])
    trained = train_classifier(np.concatenate(images), np.concatenate(labels), real.val.images,
                               real.val.labels, len(real.train.class_names), config.classifier,
                               seed=cell.seed, augment=regime.augment, weights=weights,
                               pretraining=pretraining)
    probabilities = trained.predict_proba(real.test.images)
    test = classification_metrics(real.test.labels, probabilities, trained.threshold,
                                  minority=minority_class(real.train))
    return {
        "fraction": cell.fraction, "seed": cell.seed, "regime": regime.name,
        "n_real_images": len(subset), "n_real": n_real, "n_synthetic": n_synthetic,
        "n_unlabelled": n_unlabelled,
        "steps": config.classifier.steps,
        "best_step": trained.best_step, "converged": trained.converged,
        "threshold": trained.threshold, "curve": trained.curve,
        "test": test,
    }


def minority_class(train: ImageSet) -> int:
    """The class with the fewest training images (the lowest index among equals)."""
    counts = train.class_counts()
    return min(counts, key=lambda label: (counts[label], label))


# -- merging shards ----------------------------------------------------------------------------


def merge(parts: list[Path], out: Path) -> dict[str, Any]:
    """Join the ``results.json`` of shards of one grid into ``out/results.json``."""
    loaded = []
    for part in parts:
        path = Path(part) / RESULTS
        if not path.is_file():
            raise InputError(f"has no {RESULTS}", part)
        loaded.append(json.loads(path.read_text()))
    header = {k: v for k, v in loaded[0].items() if k not in ("cells", "budgets")}
    for part, other in zip(parts[1:], loaded[1:], strict=True):
        if _grid_identity(other) != _grid_identity(loaded[0]) or \
                other["config"] != header["config"]:
            raise InputError("is a shard of another grid, data or generator", part)
    cells: dict[tuple, dict[str, Any]] = {}
    budgets: dict[str, int] = {}
    for part, other in zip(parts, loaded, strict=True):
        for fraction, steps in _earlier_budgets(other).items():
            if budgets.setdefault(fraction, steps) != steps:
                raise InputError(f"gives fraction {fraction} a budget of {steps} steps, another "
                                 f"shard {budgets[fraction]}", part)
        for cell in other["cells"]:
            cells[(cell["fraction"], cell["seed"], cell["regime"])] = cell
    config = _config_from(header["config"])
    expected = {_key(c) for c in grid(config)}
    missing = sorted(expected - set(cells))
    if missing:
        raise InputError(f"{len(missing)} cell(s) of the grid are missing, e.g. fraction "
                         f"{missing[0][0]}, seed {missing[0][1]}, {missing[0][2]}: merge every "
                         "shard")
    Path(out).mkdir(parents=True, exist_ok=True)
    return _write_results(Path(out), header, cells, budgets, config)


def _config_from(values: dict[str, Any]) -> UtilityConfig:
    values = {"pilot_doublings": 0, **values}  # results written before the pilot had none
    classifier = ClassifierConfig(**values["classifier"])
    rest = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()
            if k != "classifier"}
    return replace(UtilityConfig(**rest), classifier=classifier)


def _as_json(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(value))

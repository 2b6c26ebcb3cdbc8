"""The recipes :mod:`generator_quality` measures, by name, and how the harness is told to
train one: ``RECIPE[@STEPS[+CLASS_STEPS]]`` names, the choice of the best one on
validation, and ``evaluate utility``'s options for it."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

from quality_table import REFERENCE_ROWS

from synthmed.eval.generators import GeneratorRecipe
from synthmed.gan.losses import AUGMENTS

CLASS_STEPS = 500  # the class copies' fine-tuning (``-classes``, ``-smallest``)
ADA_TRANSITION = GeneratorRecipe(diffaugment=AUGMENTS, ada_target=0.6,
                                 transition_steps=(500, 1000), ema_decay=0.999)
MIRRORED_COPIES = replace(ADA_TRANSITION, upsample="resize", class_steps=CLASS_STEPS,
                          mirror=True)
#: name -> (family, recipe); the first is the harness's default
RECIPES = {
    "dcgan": ("dcgan", GeneratorRecipe()),
    "dcgan-resize": ("dcgan", GeneratorRecipe(upsample="resize")),
    "dcgan-ada-transition": ("dcgan", ADA_TRANSITION),
    "dcgan-ada-resize": ("dcgan", replace(ADA_TRANSITION, upsample="resize")),
    "dcgan-ada-resize-classes": ("dcgan", replace(ADA_TRANSITION, upsample="resize",
                                                  class_steps=CLASS_STEPS)),
    "dcgan-ada-resize-classes-mirror": ("dcgan", MIRRORED_COPIES),
    "dcgan-ada0.3-resize-classes-mirror": ("dcgan", replace(MIRRORED_COPIES, ada_target=0.3)),
    "dcgan-ada-resize-smallest": ("dcgan", replace(ADA_TRANSITION, upsample="resize",
                                                   class_steps=CLASS_STEPS,
                                                   class_copies="smallest")),
    "dcgan-ema": ("dcgan", GeneratorRecipe(ema_decay=0.999)),
    "diffusion": ("diffusion", GeneratorRecipe()),
}


def chosen_recipe(name: str, init_from: Path | None = None) -> tuple[str, GeneratorRecipe]:
    """The family and recipe of ``RECIPE``, ``RECIPE@STEPS`` or, for a recipe with class
    copies, ``RECIPE@STEPS+CLASS_STEPS`` (a row name may end in `` from RUN-NAME``: its
    generators start from the run ``init_from``)."""
    name, transfer, _ = name.partition(" from ")
    if transfer and init_from is None:
        sys.exit(f"the row '{name}{transfer}...' starts from a run: pass --init-from")
    base, _, steps = name.partition("@")
    steps, plus, class_steps = steps.partition("+")
    family, recipe = RECIPES[base]
    if plus and not recipe.class_steps:
        sys.exit(f"{base} has no class copies to give +{class_steps} steps")
    recipe = replace(recipe, class_steps=int(class_steps)) if plus else recipe
    recipe = replace(recipe, steps=int(steps)) if steps else recipe
    return family, replace(recipe, init_from=str(init_from)) if transfer else recipe


def best_recipe(rows: dict, filter_percentile: float | None = None) -> str:
    """The row whose synthetic-only classifiers have the best mean validation AUROC, among
    the rows of as many synthetic images as real ones (the harness's synthetic only) and
    through the privacy filter at ``filter_percentile`` (``None``: unfiltered)."""
    return max((r for r in rows if r not in REFERENCE_ROWS and "synthetic_scale" not in rows[r]
                and rows[r].get("filter", {}).get("percentile") == filter_percentile),
               key=lambda r: rows[r]["auroc"]["val"]["mean"])


def harness_options(family: str, recipe: GeneratorRecipe) -> list[str]:
    """``evaluate utility``'s options for ``recipe``: its budget and, for a DCGAN, each
    small-data remedy it sets (a recipe that changes what the harness has no option for is
    refused rather than run as another)."""
    default = GeneratorRecipe()
    fixed = [f for f in ("width", "batch_size", "r1_gamma", "precision")
             if getattr(recipe, f) != getattr(default, f)]
    if fixed:
        sys.exit(f"evaluate utility has no option for the recipe's {', '.join(fixed)}")
    options = ["--generator-steps", str(recipe.steps)]
    if recipe.init_from is not None:
        options += ["--generator-init", recipe.init_from]
    if recipe.filter_percentile is not None:
        options += ["--generator-filter-percentile", f"{recipe.filter_percentile:g}"]
    if recipe.class_steps:
        options += ["--generator-class-steps", str(recipe.class_steps),
                    "--generator-class-copies", recipe.class_copies]
    if recipe.mirror:
        options.append("--generator-mirror")
    if family != "dcgan":
        return options
    for flag, name, text in (
            ("--generator-diffaugment", "diffaugment", ",".join),
            ("--generator-ada-target", "ada_target", str),
            ("--generator-transition-steps", "transition_steps", lambda v: f"{v[0]},{v[1]}"),
            ("--generator-ema", "ema_decay", str),
            ("--generator-upsample", "upsample", str)):
        if getattr(recipe, name) != getattr(default, name):
            options += [flag, text(getattr(recipe, name))]
    return options

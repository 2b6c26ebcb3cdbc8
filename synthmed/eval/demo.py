"""``synthmed demo``: the whole story on the embedded phantom data, into one folder.

1. ``data/``: a labelled phantom set (T1 slices, lesion / no lesion) with a patient-level
   train / val / test split, as a MedMNIST-style npz, and a preview.
2. ``utility/generators/``: a class-conditional DCGAN trained on a low-data fraction of the
   training patients' slices (the harness's generator for that fraction and seed 0).
3. ``synthetic/``: as many synthetic slices as real training slices, exported from it with
   ``manifest.csv`` and provenance.
4. ``utility/``: the utility harness (real, classic augmentation, the real-repeated control,
   real + synthetic, synthetic only) over a few seeds, with intervals and paired tests.
5. ``fidelity/``: FID, KID, precision / recall / density / coverage of the synthetic slices
   against the real training split, with the real-vs-real floor, and a gallery.
6. ``privacy/``: the privacy audit of the exported slices: distance to the closest training
   (the generator's subset) vs held-out (test split) slice, near-copies, and membership
   inference (black-box and with the generator's discriminator) against a control.
7. ``translation/``: a small CycleGAN T1 -> T2 trained on phantom volumes of all subjects but
   one, evaluated on the held-out subject against its true T2 and the intensity baselines.
8. ``synthmed-report.html``: everything on one page.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from synthmed.augment.medmnist import write_npz
from synthmed.augment.phantom import PhantomConfig, make_phantom, write_phantom_volumes
from synthmed.augment.preview import save_preview
from synthmed.augment.readers import read_images
from synthmed.augment.splits import split_by_group
from synthmed.eval.classifier import ClassifierConfig
from synthmed.eval.features import default_extractor
from synthmed.eval.fidelity import evaluate_fidelity, save_gallery
from synthmed.eval.generators import GeneratorRecipe, SubsetGenerators
from synthmed.eval.privacy_audit import evaluate_privacy
from synthmed.eval.real_data import fraction_subset, prepare_real
from synthmed.eval.report import build_report
from synthmed.eval.translation import evaluate_run
from synthmed.eval.translation_report import save_report
from synthmed.eval.utility import UtilityConfig, run_grid
from synthmed.eval.utility_report import write_report
from synthmed.gan.config import CycleGANConfig, TrainConfig, resolve_precision
from synthmed.gan.generate import GenerateConfig, generate
from synthmed.gan.run import load_run
from synthmed.gan.run_config import RunConfig
from synthmed.gan.train import train_cyclegan
from synthmed.io import atomic_output_dir


@dataclass(frozen=True)
class DemoConfig:
    """How big the demo is; :meth:`quick` is the few-minute version (narrower networks, no
    step-budget pilot)."""

    slices: int = 2000
    size: int = 32
    fraction: float = 0.25
    seeds: int = 3
    generator_steps: int = 300
    generator_width: int = 32
    classifier: ClassifierConfig = field(default_factory=lambda: ClassifierConfig(steps=200))
    pilot_doublings: int = 1  # the demo keeps its few minutes; the harness default is 3
    cyclegan_subjects: int = 6
    cyclegan_epochs: int = 6

    @classmethod
    def quick(cls) -> DemoConfig:
        return cls(slices=640, fraction=0.25, seeds=2, generator_steps=50, generator_width=16,
                   classifier=ClassifierConfig(steps=30, batch_size=32, width=8),
                   pilot_doublings=0, cyclegan_subjects=4, cyclegan_epochs=2)


def run_demo(out: Path, config: DemoConfig, *, overwrite: bool = False, progress: bool = True,
             echo: Callable[[str], None] = print) -> Path:
    """Run every step into ``out`` (which must not hold files unless ``overwrite``); return
    the HTML report. ``out`` appears (or is replaced) only when every step has finished."""
    out = Path(out).absolute()
    started = time.perf_counter()

    def timed(message: str) -> None:
        echo(f"[{time.perf_counter() - started:5.0f} s] {message}")

    with atomic_output_dir(out, overwrite, kind="demo") as work:
        # paths recorded in runs and manifests are relative to the demo folder
        here = os.getcwd()
        os.chdir(work)
        try:
            _demo_steps(Path("."), config, progress, timed)
        finally:
            os.chdir(here)
    page, _ = build_report(out)
    timed(f"report: {page}")
    return page


def _demo_steps(work: Path, config: DemoConfig, progress: bool,
                echo: Callable[[str], None]) -> None:
    echo(f"1/7 phantom: {config.slices} labelled T1 slices, patient-level split")
    t1, _ = make_phantom(PhantomConfig(n=config.slices, size=config.size))
    t1 = t1.with_splits(split_by_group(t1, val_fraction=0.15, test_fraction=0.15, seed=0))
    (work / "data").mkdir()
    write_npz(t1, work / "data" / "phantom-t1.npz")
    save_preview(t1, work / "data" / "real-t1.png")
    real = prepare_real(read_images(work / "data" / "phantom-t1.npz"))

    subset = fraction_subset(real.train, config.fraction, seed=0)
    echo(f"2/7 conditional DCGAN on {len(subset)} slices ({config.fraction:.0%} of the "
         "training patients' slices)")
    generators = SubsetGenerators(GeneratorRecipe(steps=config.generator_steps,
                                                  width=config.generator_width),
                                  work / "utility" / "generators")
    run_dir = generators.train(subset, progress=progress)

    echo(f"3/7 export: {len(real.train)} synthetic slices, as many as real training slices")
    generate(load_run(run_dir), work / "synthetic",
             GenerateConfig(n=len(real.train), format="png"), progress=False)

    echo(f"4/7 utility harness: {config.seeds} seeds x {len(UtilityConfig().regimes)} regimes")
    utility = UtilityConfig(fractions=(config.fraction,), seeds=config.seeds,
                            pilot_doublings=config.pilot_doublings,
                            classifier=config.classifier)
    write_report(run_grid(real, generators, utility, work / "utility", progress=progress),
                 work / "utility")

    echo("5/7 fidelity against the real training split")
    extractor = default_extractor(real, config.classifier)
    synthetic = read_images(work / "synthetic")
    report = evaluate_fidelity(real.train, synthetic, extractor, extractor.name)
    (work / "fidelity").mkdir()
    (work / "fidelity" / "fidelity.json").write_text(json.dumps(report.to_json(), indent=1))
    (work / "fidelity" / "fidelity.md").write_text(report.to_markdown())
    save_gallery(real.train, synthetic, work / "fidelity" / "gallery.png")

    echo(f"6/7 privacy: the synthetic slices against the generator's {len(subset)} training "
         f"slices and {len(real.test)} unseen test slices")
    (work / "privacy").mkdir()
    evaluate_privacy(synthetic, subset, real.test, features=extractor, extractor=extractor.name,
                     features_fit_on_train=True, run=load_run(run_dir)).save(work / "privacy")

    echo(f"7/7 CycleGAN T1 -> T2 on {config.cyclegan_subjects - 1} phantom subjects, "
         "evaluated on one more")
    _translation(work, config, progress)


def _translation(work: Path, config: DemoConfig, progress: bool) -> None:
    volumes = work / "data" / "volumes"
    subjects = write_phantom_volumes(volumes, PhantomConfig(
        n=8 * config.cyclegan_subjects, size=config.size, seed=1, slices_per_subject=8))
    held_out = subjects[-1]
    model = CycleGANConfig(ngf=16, ndf=16, n_blocks=3, crop=24)
    train = TrainConfig(epochs=config.cyclegan_epochs, batch_size=1,
                        precision=resolve_precision("auto"),
                        decay_epochs=config.cyclegan_epochs // 2, preview=8)
    run = work / "translation" / "run"
    train_cyclegan(f"{volumes}/*/t1.nii.gz", f"{volumes}/*/t2.nii.gz", run,
                   RunConfig("cyclegan", model, train), val_subjects=held_out,
                   progress=progress)
    report = evaluate_run(load_run(run), str(volumes / held_out / "t1.nii.gz"),
                          str(volumes / held_out / "t2.nii.gz"))
    save_report(report, work / "translation")


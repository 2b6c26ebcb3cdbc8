"""Train ``generator_quality.py``'s generators on another machine (a GPU), measure them here.

The real sets do not travel (the brain tumour folder alone is 64 MB): the exact training
subsets do. ``export`` writes each subset's images as float32 with its labels, class names
and fingerprint (the cache key of :class:`~synthmed.eval.generators.SubsetGenerators`, the
same there as here); ``train`` trains one generator per subset there, one process each on
the one accelerator, and packs each finished run without its optimiser state (weights,
config and records: what sampling, the audit and the cache read; such a run cannot be
resumed); ``place`` puts the runs where ``generator_quality.py`` (seed 0) and its harness
headline (``harness-RECIPE/generators``, every seed) look, so they measure them untrained.

    SYNTHMED_TEST_DATA=../shared/data python benchmarks/remote_generators.py export \\
        --out pack breastmnist-0.25:0,1,2 brain-tumor-0.1:0 retinamnist-1.0:0
    python benchmarks/remote_generators.py train pack --recipe diffusion --seconds 330 \\
        --deadline 500 --out runs   # there; without @STEPS: the largest ladder budget that fits
    python benchmarks/remote_generators.py place runs --quality bench-quality
    python benchmarks/generator_quality.py --out bench-quality --sets brain-tumor-0.1 \\
        --recipes diffusion@20000

A machine that has torch but not synthmed's other needs takes them as wheels (monai,
pydicom and nibabel are pure Python: ``pip download --no-deps`` them here, ``pip install
--no-index --no-deps --target`` there) and runs from the repository root with the
repository on ``PYTHONPATH``. A packed 28-32 px diffusion run is about 9 MB.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import add_data_options
from generator_quality import SETS, chosen_recipe

from synthmed.augment.dataset import ImageSet
from synthmed.augment.items import ReadConfig
from synthmed.augment.readers import read_images
from synthmed.eval.generators import SubsetGenerators
from synthmed.eval.real_data import fraction_subset, prepare_real
from synthmed.gan import checkpoint
from synthmed.gan.run_config import GENERATORS, read_run_config
from synthmed.io import resumable_output_dir

#: step budgets ``train --seconds`` chooses from
LADDER = (2000, 4000, 6000, 8000, 10000, 12000, 16000, 20000, 25000, 30000, 40000)
WARM_UP_STEPS, PROBE_STEPS = 50, 300


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="here: the training subsets")
    add_data_options(export)
    export.add_argument("subsets", nargs="+", help="SET:SEED[,SEED...] (seed 0: the "
                        "benchmark's subset; each seed: the harness's subset of that seed)")
    train = commands.add_parser("train", help="there: one generator per exported subset")
    train.add_argument("pack", type=Path)
    train.add_argument("--out", type=Path, required=True, help="folder for one tar per run")
    train.add_argument("--recipe", required=True, help="RECIPE or RECIPE@STEPS")
    train.add_argument("--seconds", type=float, help="without @STEPS: the time to fill")
    train.add_argument("--deadline", type=float, help="seconds after which runs still "
                       "training stop (the finished ones are packed; exit status 1)")
    place = commands.add_parser("place", help="here: the runs where the benchmark looks")
    place.add_argument("runs", type=Path)
    place.add_argument("--quality", type=Path, required=True, help="generator_quality's --out")
    worker = commands.add_parser("worker")  # one subset's generator, in its own process
    worker.add_argument("subset", type=Path)
    worker.add_argument("recipe")
    worker.add_argument("folder", type=Path)
    worker.add_argument("--probe", help="WARM_UP,TIMED: time it instead")
    args = parser.parse_args(argv)
    if args.command == "export":
        export_subsets(args.data, args.subsets, args.out)
    elif args.command == "train":
        train_all(sorted(args.pack.glob("*.npz")), args.recipe, args.seconds, args.out,
                  args.deadline)
    elif args.command == "place":
        place_runs(args.runs, args.quality)
    elif args.probe:
        warm_up, timed = map(int, args.probe.split(","))
        probe_one(args.subset, args.recipe, args.folder, warm_up, timed)
    else:
        train_one(args.subset, args.recipe, args.folder)


def export_subsets(data: Path, specs: list[str], out: Path) -> None:
    """``OUT/SET-sSEED.npz`` per ``SET:SEED,...``: images, labels, class names, fingerprint
    (``OUT``: empty, new or this script's own)."""
    with resumable_output_dir(out, (data,), "remote-generators export"):
        for spec in specs:
            export_set(data, spec, out)


def export_set(data: Path, spec: str, out: Path) -> None:
    """The subsets of one ``SET:SEED,...``."""
    name, _, seeds = spec.partition(":")
    if name not in SETS:
        sys.exit(f"{name}: not one of {', '.join(SETS)}")
    path, read, fraction = SETS[name]
    real = prepare_real(read_images(data / path, ReadConfig(**read)))
    for seed in map(int, (seeds or "0").split(",")):
        subset = fraction_subset(real.train, fraction, seed)
        fingerprint = subset.fingerprint()
        np.savez(out / f"{name}-s{seed}.npz", images=subset.images, labels=subset.labels,
                 class_names=np.array(subset.class_names), fingerprint=np.array(fingerprint))
        print(f"{name} seed {seed}: {len(subset)} images {fingerprint[:16]}")


def load_subset(path: Path) -> ImageSet:
    """An exported subset, refused unless its fingerprint is the one exported."""
    arrays = np.load(path)
    subset = ImageSet.from_arrays(arrays["images"], arrays["labels"],
                                  [str(k) for k in arrays["class_names"]])
    if subset.fingerprint() != str(arrays["fingerprint"]):
        sys.exit(f"{path}: its images are not the ones exported (fingerprint differs)")
    return subset


def train_one(subset_path: Path, recipe_name: str, folder: Path) -> None:
    """The generator of one exported subset in ``folder``, with its training seconds."""
    family, recipe = chosen_recipe(recipe_name)
    subset = load_subset(subset_path)
    started = time.perf_counter()
    SubsetGenerators(recipe, folder, family).train(subset)
    (folder / "train_seconds.json").write_text(json.dumps(time.perf_counter() - started))


def train_all(subsets: list[Path], recipe: str, seconds: float | None, out: Path,
              deadline: float | None = None) -> None:
    """Every subset's generator at once (a process each), packed into ``OUT/SET-sSEED.tar``
    (``OUT``: empty, new or this script's own). Runs still training ``deadline`` seconds after
    the start are stopped and reported with the epochs they reached; the others are packed."""
    stop_at = None if deadline is None else time.monotonic() + deadline
    with (resumable_output_dir(out, subsets, "remote-generators runs"),
          tempfile.TemporaryDirectory(prefix="remote-generators-") as work):
        recipe = chosen_budget(subsets, recipe, seconds, Path(work) / "probe")
        runs = Path(work) / "runs"
        finished = run_workers([["worker", str(path), recipe, str(runs / path.stem)]
                                for path in subsets], stop_at)
        for path, done in zip(subsets, finished, strict=True):
            if done:
                pack_run(runs / path.stem, recipe, out / f"{path.stem}.tar")
            else:
                print(f"{path.stem}: stopped at the deadline, {reached(runs / path.stem)}",
                      flush=True)
    if not all(finished):
        sys.exit(f"{finished.count(False)} run(s) stopped at the deadline")


def reached(folder: Path) -> str:
    """How far the run in ``folder`` got: ``epoch E of N`` (its logged epochs)."""
    runs = [d for d in folder.glob("*") if (d / checkpoint.METRICS).is_file()]
    if not runs:
        return "before its first epoch"
    epochs = len((runs[0] / checkpoint.METRICS).read_text().splitlines())
    return f"epoch {epochs} of {read_run_config(runs[0], kind=GENERATORS).train.epochs}"


def chosen_budget(subsets: list[Path], recipe: str, seconds: float | None,
                  folder: Path) -> str:
    """``recipe`` with its steps: its own ``@STEPS``, or the ladder's largest budget that
    trains in ``seconds`` at the probed speed."""
    if "@" not in recipe:
        if seconds is None:
            sys.exit("--recipe without @STEPS needs --seconds")
        rates = probe(subsets, recipe, folder)
        steps = budget_steps(min(rates), seconds)
        print(f"steps per second {[round(r) for r in rates]}: {steps} steps", flush=True)
        recipe = f"{recipe}@{steps}"
    return recipe


def budget_steps(steps_per_second: float, seconds: float) -> int:
    """The largest budget of the ladder that trains in ``seconds`` (at least the smallest)."""
    return max([s for s in LADDER if s / steps_per_second <= seconds] or [LADDER[0]])


def probe(subsets: list[Path], recipe: str, folder: Path,
          steps: tuple[int, int] = (WARM_UP_STEPS, PROBE_STEPS)) -> list[float]:
    """Steps per second of each subset's generator while all train at once."""
    run_workers([["worker", str(path), recipe, str(folder / path.stem),
                  "--probe", ",".join(map(str, steps))] for path in subsets])
    return [json.loads((folder / path.stem / "steps_per_second.json").read_text())
            for path in subsets]


def probe_one(subset_path: Path, recipe: str, folder: Path, warm_up: int, timed: int) -> None:
    """A warm-up run, then a timed one (epoch ends, previews and checkpoints included)."""
    train_one(subset_path, f"{recipe}@{warm_up}", folder / "warm-up")
    started = time.perf_counter()
    train_one(subset_path, f"{recipe}@{timed}", folder / "timed")
    rate = timed / (time.perf_counter() - started)
    (folder / "steps_per_second.json").write_text(json.dumps(rate))


def run_workers(commands: list[list[str]], stop_at: float | None = None) -> list[bool]:
    """Run this script once per command at the same time; stop at the first failure. Those
    still running at ``stop_at`` (a ``time.monotonic()`` value) are stopped: which finished."""
    procs = [subprocess.Popen([sys.executable, __file__, *command]) for command in commands]
    finished = []
    for command, proc in zip(commands, procs, strict=True):
        left = None if stop_at is None else max(0.0, stop_at - time.monotonic())
        try:
            code = proc.wait(timeout=left)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            finished.append(False)
            continue
        if code != 0:
            for other in procs:
                other.kill()
            sys.exit(f"{command[1]}: training failed (exit {code})")
        finished.append(True)
    return finished


def pack_run(folder: Path, recipe: str, tar_path: Path) -> None:
    """The finished run in ``folder`` as a tar: its files but the optimiser state (a stub
    holding the epoch, which tells the cache it is finished), the preview grids but the
    last, and ``recipe.json`` (recipe with steps, training seconds)."""
    (run_dir,) = [d for d in folder.iterdir() if (d / checkpoint.WEIGHTS).is_file()]
    epoch = int(checkpoint.load_state(run_dir)["epoch"])
    grids = sorted(run_dir.glob(f"{checkpoint.SAMPLES}/epoch_*.png"))
    skipped = {run_dir / checkpoint.STATE, run_dir / "progress.gif", *grids[:-1]}
    with tarfile.open(tar_path, "w") as tar:
        for path in sorted(run_dir.rglob("*")):
            if path.is_file() and path not in skipped:
                tar.add(path, arcname=f"{run_dir.name}/{path.relative_to(run_dir)}")
        add_bytes(tar, f"{run_dir.name}/{checkpoint.STATE}", state_stub(epoch))
        seconds = json.loads((folder / "train_seconds.json").read_text())
        add_bytes(tar, "recipe.json", json.dumps({"recipe": recipe, "train_seconds": seconds,
                                                  "device": device_name()}).encode())
    print(f"{tar_path.name}: {recipe}, epoch {epoch}, {seconds:.0f} s, "
          f"{tar_path.stat().st_size / 1e6:.1f} MB", flush=True)


def state_stub(epoch: int) -> bytes:
    buffer = io.BytesIO()
    torch.save({"epoch": epoch}, buffer)
    return buffer.getvalue()


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def device_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def place_runs(runs: Path, quality: Path) -> None:
    """Each packed run under ``QUALITY/SET/RECIPE`` (seed 0) and, for the harness headline,
    ``QUALITY/SET/harness-RECIPE/generators`` (every seed). The harness folder must be
    empty, new or synthmed's own (it is marked as such); a run already there is refused."""
    for tar_path in sorted(runs.glob("*.tar")):
        name, _, seed = tar_path.stem.rpartition("-s")
        with tarfile.open(tar_path) as tar:
            record = json.load(tar.extractfile("recipe.json"))
            members = [m for m in tar.getmembers() if m.name != "recipe.json"]
            harness = quality / name / f"harness-{record['recipe']}"
            benchmark = quality / name / record["recipe"]
            targets = [harness / "generators"] + ([benchmark] if seed == "0" else [])
            run_name = members[0].name.split("/")[0]
            for target in targets:
                if (target / run_name).exists():
                    sys.exit(f"{target / run_name}: already holds a run; remove it first")
            with resumable_output_dir(harness, (runs,), "utility"):
                for target in targets:
                    tar.extractall(target, members=members, filter="data")
        if seed == "0":
            (benchmark / "train_seconds.json").write_text(json.dumps(record["train_seconds"]))
        print(f"{tar_path.name}: {record['recipe']} on {record['device']} -> "
              f"{', '.join(map(str, targets))}")


if __name__ == "__main__":
    main()

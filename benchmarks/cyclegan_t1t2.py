"""Translators on the shared brain MRI: step times, T1 -> T2 quality against baselines, and
translation throughput.

1. Seconds per training step (batch 1, the reference's widths: ngf = ndf = 64; 6 ResNet blocks
   at 128 px, 9 at 256 px), fp32 against bf16 autocast, interleaved step by step; prints the
   bf16 speed-up.
2. Quality, leave one subject out over the distinct subjects of ``$SYNTHMED_TEST_DATA``
   (``brain-t1t2/`` and ``brain-t1t2-extra/``; a subject whose files are byte-identical to
   another's is left out, and kept out of every fold's training): for each mode (``--modes``:
   ``unpaired`` the CycleGAN, ``paired`` pix2pix, each ``-2.5d`` with ``--context``
   neighbouring slices on each side) and each subject, ``synthmed train cyclegan`` T1 -> T2 on
   the others (``--val-subjects``), the same epochs for every mode and fold, then ``synthmed
   evaluate translation`` on the held-out one: MAE / PSNR / SSIM of the translator against
   identity and the best global intensity map (histogram matching, plain or inverted),
   computed in the same run. Prints each fold, the mean over folds and the folds where the
   translator beats the map. A finished fold (``OUT/<mode>/<subject>/fold.json``) is read
   back, so a killed benchmark continues (with ``--resume`` for the fold it was training);
   ``--held-out`` picks folds. With ``--planes`` each fold trains three runs, slicing along
   each voxel axis (``--axis``), and scores their multi-planar fusion (``--fuse``).
   With ``--blend-map`` each fold also scores its translation blended with that global map
   of the source (``synthmed evaluate translation --blend-map --blend-weight``), the weight
   chosen on the fold's training subjects only (nested): an inner run trained on each of them
   alone (axial, ``OUT/<mode>/inner/<subject>``) translates each other one (as ``synthmed
   evaluate blend`` scores it), and the weight of 0, 0.1, ..., 1 with the best mean PSNR
   there is the fold's.
3. Translation throughput: slices per second for the first held-out volume through
   ``synthmed translate`` with the first mode's run (the whole command: read, normalise,
   translate, write).

    SYNTHMED_TEST_DATA=../shared/data python benchmarks/cyclegan_t1t2.py --out bench-cyclegan
    python benchmarks/cyclegan_t1t2.py --out b --skip-steps --epochs 2 --modes paired \
        --held-out TCGA-DU-7294

The default recipe trains on random 112 px crops of the native 240 px slices (the cost of a
112 px model; the translator then sees the whole slice at its own resolution, so nothing is
lost to resizing), ngf = ndf = 32, resize upsampling, the inverted intensity prior without an
identity loss, intensity augmentation of the generators' inputs, ResNet generators
(``--generator unet``: pix2pix's U-Net), bf16 where the CPU has it
natively (``--precision auto``), 12 epochs, the last half decaying. The paired recipe the
README recommends, a regression U-Net on whole slices (``--paired-loss``, ``--lambda-gan``
reach the paired modes only):

    python benchmarks/cyclegan_t1t2.py --out b --skip-steps --modes paired --generator unet \
        --width 16 --crop 0 --epochs 8 --intensity-prior none --lambda-gan 0 --planes \
        --blend-map inverted
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from common import add_data_options, synthmed

from synthmed.eval.translation_blend import BLEND_WEIGHTS, best_weight
from synthmed.gan.config import CycleGANConfig
from synthmed.gan.cyclegan import CycleGAN
from synthmed.gan.translate import MAPS


def step_times(sizes: tuple[int, ...], steps: int) -> dict[str, float]:
    """Median seconds per train_step for each size x precision, interleaved step by step."""
    times: dict[str, list[float]] = {}
    setups = {}
    for size in sizes:
        torch.manual_seed(0)
        model = CycleGAN(CycleGANConfig(crop=size))  # reference widths and block counts
        a, b = (torch.rand(1, 1, size, size) * 2 - 1 for _ in range(2))
        setups[size] = (model, model.make_optimizers(), (a, b))
    for repeat in range(steps + 1):
        for size, (model, optimizers, batch) in setups.items():
            for precision in ("fp32", "bf16"):
                autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16"
                            else contextlib.nullcontext())
                started = time.perf_counter()
                model.train_step(batch, optimizers, torch.Generator().manual_seed(repeat),
                                 autocast)
                if repeat:  # the first round is warm-up
                    times.setdefault(f"{size}px {precision}", []).append(
                        time.perf_counter() - started)
    return {key: statistics.median(values) for key, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_data_options(parser)
    parser.add_argument("--size", type=int, default=0,
                        help="resize slices to SIZE (0: keep the native 240 px)")
    parser.add_argument("--crop", type=int, default=112)
    parser.add_argument("--width", type=int, default=32, help="ngf and ndf")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--lambda-identity", default="0",
                        help="identity loss weight as a share of the cycle weight")
    parser.add_argument("--lambda-structure", default="0",
                        help="weight of the sign-blind structure loss (squared local NCC)")
    parser.add_argument("--intensity-prior", default="inverted",
                        help="none, matching or inverted: generators correct that global map")
    parser.add_argument("--upsample", default="resize", help="or convtranspose")
    parser.add_argument("--generator", default="resnet",
                        help="resnet or unet (pix2pix's); give each its own --out")
    parser.add_argument("--paired-loss", default="l1", help="paired modes: l1 or mse")
    parser.add_argument("--lambda-gan", default="1",
                        help="adversarial weight (0, paired modes: a regression translator)")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--modes", default="unpaired,unpaired-2.5d,paired,paired-2.5d",
                        help="comma list of unpaired, paired, unpaired-2.5d, paired-2.5d")
    parser.add_argument("--context", type=int, default=1,
                        help="neighbouring slices on each side in the 2.5D modes")
    parser.add_argument("--intensity-augment", action=argparse.BooleanOptionalAction,
                        default=True, help="bias field, gamma, noise on the generators' inputs")
    parser.add_argument("--spatial-augment", action=argparse.BooleanOptionalAction,
                        default=False, help="random rotation, scale and shift of each slice")
    parser.add_argument("--seed", type=int, default=0,
                        help="training seed of every fold (another seed sizes the noise)")
    parser.add_argument("--step-repeats", type=int, default=3)
    parser.add_argument("--skip-steps", action="store_true")
    parser.add_argument("--held-out", default="all",
                        help="subjects held out, one fold each (comma list; all: every subject)")
    parser.add_argument("--planes", action="store_true",
                        help="also train each fold along the other two voxel axes (--axis 0, "
                             "1) and score the multi-planar fusion of the three (--fuse)")
    parser.add_argument("--blend-map", choices=MAPS,
                        help="also score each fold blended with this global map, the weight "
                             "chosen on its training subjects (nested)")
    parser.add_argument("--skip-training", action="store_true",
                        help="evaluate the folds' existing runs")
    parser.add_argument("--resume", action="store_true",
                        help="continue the folds' interrupted runs from their last checkpoints")
    args = parser.parse_args()
    folders = [args.data / "brain-t1t2", args.data / "brain-t1t2-extra"]
    if not folders[0].is_dir():
        sys.exit(f"{folders[0]}: not found (set SYNTHMED_TEST_DATA)")
    modes = args.modes.split(",")
    unknown_modes = sorted(set(modes) - set(MODES))
    if unknown_modes:
        sys.exit(f"unknown mode(s) {unknown_modes}: use {', '.join(MODES)}")
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {"threads": torch.get_num_threads()}

    if not args.skip_steps:
        times = step_times((128, 256), args.step_repeats)
        results["seconds_per_step"] = times
        print("seconds per step (batch 1, ngf = ndf = 64):")
        for size in (128, 256):
            fp32, bf16 = times[f"{size}px fp32"], times[f"{size}px bf16"]
            print(f"  {size} px: fp32 {fp32:.2f} s, bf16 {bf16:.2f} s, "
                  f"bf16 speed-up {fp32 / bf16:.2f}x")

    volumes, copies = distinct_subjects(sorted(path.parent for folder in folders
                                               for path in folder.glob("*/t1.nii.gz")))
    subjects = sorted(volumes)
    held_out = subjects if args.held_out == "all" else args.held_out.split(",")
    unknown = sorted(set(held_out) - set(subjects))
    if unknown:
        sys.exit(f"unknown subject(s) {unknown}: the data have {', '.join(subjects)}")
    results["folds"] = {}
    for mode in modes:
        results["folds"] |= mode_folds(args, mode, volumes, copies, held_out)
    if len(results["folds"]) > 1:
        print_modes(results["folds"])

    source = volumes[held_out[0]] / "t1.nii.gz"
    translated = args.out / "translated"
    runs = fold_runs(args, args.out / modes[0] / held_out[0])
    seconds = synthmed("translate", str(runs[0][0]), str(source), *fuse_options(runs),
                       "--direction", "a2b", "--out", str(translated), "--overwrite",
                       "--no-progress")
    slices = sum(int(row.split(",")[3]) for row in
                 (translated / "manifest.csv").read_text().splitlines()[1:])
    results["translate"] = {"seconds": seconds, "slices": slices,
                            "slices_per_s": slices / seconds}
    print(f"translate: {slices} slices in {seconds:.1f} s = {slices / seconds:.1f} slices/s "
          "(the whole command, start-up included)")
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")


MODES = ("unpaired", "unpaired-2.5d", "paired", "paired-2.5d")


def mode_folds(args: argparse.Namespace, mode: str, volumes: dict[str, Path],
               copies: list[str], held_out: list[str]) -> dict[str, dict[str, dict]]:
    """``{mode: {subject: fold record}}`` for every held-out subject, with ``--blend-map``
    also ``{mode+blend: ...}`` (the fold records with the blended evaluation); each printed."""
    folds = {mode: {subject: fold(args, mode, volumes, [subject, *copies])
                    for subject in held_out}}
    print_summary(mode, folds[mode])
    if args.blend_map:
        folds[f"{mode}+blend"] = {
            subject: {**folds[mode][subject],
                      **blend_fold(args, mode, volumes, copies, subject)}
            for subject in held_out}
        print_summary(f"{mode}+blend", folds[f"{mode}+blend"])
    return folds


def distinct_subjects(folders: list[Path]) -> tuple[dict[str, Path], list[str]]:
    """Subject name -> folder, and the names of the folders left out (with a note) because
    their t1 and t2 files are byte-identical to an earlier subject's: a copy under another name
    would put the held-out subject's own images in its fold's training set (``evaluate
    translation`` refuses it), so every fold holds the copies out too."""
    kept: dict[str, Path] = {}
    copies: list[str] = []
    seen: dict[tuple[str, str], str] = {}
    for folder in folders:
        content = tuple(hashlib.sha256((folder / f"{c}.nii.gz").read_bytes()).hexdigest()
                        for c in ("t1", "t2"))
        if content in seen:
            print(f"{folder.name}: left out, its volumes are byte-identical to "
                  f"{seen[content]}'s")
            copies.append(folder.name)
            continue
        seen[content] = folder.name
        kept[folder.name] = folder
    return kept, copies


def fold(args: argparse.Namespace, mode: str, volumes: dict[str, Path], kept_out: list[str]
         ) -> dict:
    """Train ``mode`` on every subject but ``kept_out`` (the held-out subject, then the copies
    of others) in ``OUT/<mode>/<held_out>/run`` (with ``--planes`` also ``run-axis0`` and
    ``run-axis1``) and evaluate on the held-out one; a finished fold (``fold.json`` there) is
    read back instead of run again."""
    held_out = kept_out[0]
    out = args.out / mode / held_out
    record_path = out / "fold.json"
    if record_path.is_file():
        print(f"{mode} fold {held_out}: finished earlier, read from {record_path}")
        return json.loads(record_path.read_text())
    runs, record = fold_runs(args, out), {}
    if not args.skip_training:
        for run, axis in runs:
            record |= train_fold_run(args, mode, kept_out, run, axis)
    subject = volumes[held_out]
    record["evaluate_seconds"] = synthmed(
        "evaluate", "translation", str(runs[0][0]), *fuse_options(runs),
        "--source", str(subject / "t1.nii.gz"),
        "--target", str(subject / "t2.nii.gz"), "--out", str(out / "evaluation"), "--overwrite")
    record["evaluation"] = json.loads((out / "evaluation" / "translation.json").read_text())
    record_path.write_text(json.dumps(record, indent=1) + "\n")
    return record


def blend_fold(args: argparse.Namespace, mode: str, volumes: dict[str, Path],
               copies: list[str], held_out: str) -> dict:
    """The fold's map-blend weight, chosen on its training subjects only, and the evaluation
    of its runs blended with it (``OUT/<mode>/<held_out>/blend.json``, read back when there).

    Each training subject's inner run translates each other training subject; the weight
    with the best mean PSNR over those translations is the fold's (0: the fold's own
    evaluation stands). The inner runs' training time counts in the fold's budget
    (``train_seconds_inner``), though each is trained once for all folds."""
    out = args.out / mode / held_out
    record_path = out / "blend.json"
    if record_path.is_file():
        return json.loads(record_path.read_text())
    training = [subject for subject in volumes if subject != held_out]
    inner = {subject: inner_run(args, mode, subject, volumes, copies) for subject in training}
    curves = [inner_curve(inner[subject], volumes[other], args.blend_map)
              for subject in training for other in training if other != subject]
    inner_psnr = [statistics.mean(values) for values in zip(*curves, strict=True)]
    weight = best_weight(BLEND_WEIGHTS, inner_psnr)
    print(f"{mode} fold {held_out}: blend weight {weight} (inner mean PSNR "
          + ", ".join(f"{w}: {p:.2f}" for w, p in zip(BLEND_WEIGHTS, inner_psnr, strict=True))
          + ")")
    record = {"blend": {"map": args.blend_map, "weight": weight,
                        "inner_psnr": dict(zip(map(str, BLEND_WEIGHTS), inner_psnr,
                                               strict=True))},
              "train_seconds_inner": sum(inner_seconds(inner[s]) for s in training)}
    if weight:
        subject, runs = volumes[held_out], fold_runs(args, out)
        record["evaluate_seconds"] = synthmed(
            "evaluate", "translation", str(runs[0][0]), *fuse_options(runs),
            "--blend-map", args.blend_map, "--blend-weight", str(weight),
            "--source", str(subject / "t1.nii.gz"), "--target", str(subject / "t2.nii.gz"),
            "--out", str(out / "evaluation-blend"), "--overwrite")
        record["evaluation"] = json.loads(
            (out / "evaluation-blend" / "translation.json").read_text())
    record_path.write_text(json.dumps(record, indent=1) + "\n")
    return record


def inner_run(args: argparse.Namespace, mode: str, subject: str, volumes: dict[str, Path],
              copies: list[str]) -> Path:
    """``OUT/<mode>/inner/<subject>/run``: ``mode`` trained along axis 2 on ``subject``
    alone (every other subject and the copies kept out), trained once for all folds."""
    out = args.out / mode / "inner" / subject
    done = out / "train.json"
    if not done.is_file() and not args.skip_training:
        kept_out = [other for other in volumes if other != subject] + copies
        record = train_fold_run(args, mode, kept_out, out / "run", 2, f"inner {subject}")
        done.write_text(json.dumps(record, indent=1) + "\n")
    return out / "run"


def inner_seconds(run: Path) -> float:
    """Training seconds of an inner run, 0 when this benchmark did not train it."""
    done = run.parent / "train.json"
    return json.loads(done.read_text())["train_seconds"] if done.is_file() else 0.0


def inner_curve(run_path: Path, subject: Path, blend_map: str) -> list[float]:
    """PSNR of ``run_path``'s translation of ``subject``'s T1 against its T2, blended with
    ``blend_map`` at each of :data:`BLEND_WEIGHTS` (as ``synthmed evaluate blend``)."""
    from synthmed.eval.translation_blend import sweep_blend
    from synthmed.gan.run import load_run

    sweep = sweep_blend(load_run(run_path, kind="cyclegan"), str(subject / "t1.nii.gz"),
                        str(subject / "t2.nii.gz"), blend_map, BLEND_WEIGHTS)
    return sweep.per_subject[subject.name]["psnr"]


def fold_runs(args: argparse.Namespace, out: Path) -> list[tuple[Path, int]]:
    """A fold's runs and their slice axes: ``run`` (axial), with ``--planes`` also
    ``run-axis0`` and ``run-axis1``."""
    return [(out / "run", 2)] + ([(out / f"run-axis{axis}", axis) for axis in (0, 1)]
                                 if args.planes else [])


def fuse_options(runs: list[tuple[Path, int]]) -> list[str]:
    """``--fuse RUN`` for every run but the first."""
    return [option for run, _ in runs[1:] for option in ("--fuse", str(run))]


def train_fold_run(args: argparse.Namespace, mode: str, kept_out: list[str], run: Path,
                   axis: int, label: str = "") -> dict[str, float]:
    """Train one run of a fold along ``axis`` on every subject but ``kept_out``; its training
    seconds and median step time (keys suffixed ``_axisN`` for the sagittal and coronal runs
    of ``--planes``). ``label`` names it in the log (default: the fold, ``kept_out[0]``)."""
    label, suffix = label or f"fold {kept_out[0]}", "" if axis == 2 else f"_axis{axis}"
    pattern = str(args.data / "brain-t1t2*" / "*" / "{}.nii.gz")
    paired = ["--paired", "--paired-loss", args.paired_loss, "--lambda-gan", args.lambda_gan]
    mode_options = [*(paired if mode.startswith("paired") else []),
                    "--context", str(args.context if mode.endswith("2.5d") else 0),
                    "--intensity-augment" if args.intensity_augment else "--no-intensity-augment",
                    "--spatial-augment" if args.spatial_augment else "--no-spatial-augment"]
    seconds = synthmed(
        "train", "cyclegan", "--domain-a", pattern.format("t1"),
        "--domain-b", pattern.format("t2"), "--val-subjects", ",".join(kept_out),
        *mode_options,
        *(["--size", str(args.size)] if args.size else []),
        "--crop", str(args.crop), "--ngf", str(args.width),
        "--ndf", str(args.width), "--epochs", str(args.epochs), "--lambda-identity",
        args.lambda_identity, "--lambda-structure", args.lambda_structure,
        "--intensity-prior", args.intensity_prior, "--upsample", args.upsample,
        "--generator", args.generator, "--seed", str(args.seed),
        "--precision", args.precision, "--checkpoint-every", "1", "--out", str(run),
        "--axis", str(axis), "--no-progress", *(["--resume"] if args.resume else []))
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    step = statistics.median(1 / line["images_per_s"] for line in lines)
    print(f"{mode} {label}, axis {axis}: training {seconds / 60:.1f} min in this call; "
          f"median {step:.3f} s per step over {len(lines)} epochs")
    return {f"train_seconds{suffix}": seconds, f"seconds_per_step_median{suffix}": step}


METRICS = ("mae", "psnr", "ssim_slice", "ssim_bbox")


def fold_scores(folds: dict[str, dict]) -> dict[str, list[list[float]]]:
    """Per method (``synthmed``, ``best global map``) the fold's :data:`METRICS` values."""
    rows: dict[str, list[list[float]]] = {}
    for subject, record in folds.items():
        evaluation = record["evaluation"]
        for method in ("synthmed", evaluation["best_global_map"]):
            values = [evaluation["per_subject"][subject][method][m] for m in METRICS]
            rows.setdefault("synthmed" if method == "synthmed" else "best global map",
                            []).append(values)
    return rows


def wins(rows: dict[str, list[list[float]]]) -> list[int]:
    """Per metric, the folds where the translator beats the best global map (MAE: lower)."""
    return [sum(ours[k] < theirs[k] if k == 0 else ours[k] > theirs[k]
                for ours, theirs in zip(rows["synthmed"], rows["best global map"], strict=True))
            for k in range(len(METRICS))]


def print_summary(mode: str, folds: dict[str, dict]) -> None:
    """One mode's translator against the best global intensity map, per held-out subject and
    as the mean over them."""
    print(f"{mode}: held-out subject | method | MAE | PSNR | SSIM slice | SSIM bbox")
    rows = fold_scores(folds)
    for k, subject in enumerate(folds):
        for label, values in rows.items():
            method = label if label == "synthmed" else folds[subject]["evaluation"][
                "best_global_map"]
            print(f"{subject} | {method} | " + " | ".join(f"{v:.3f}" for v in values[k]))
    for label, values in rows.items():
        means = [statistics.mean(column) for column in zip(*values, strict=True)]
        print(f"mean of {len(values)} | {label} | " + " | ".join(f"{v:.3f}" for v in means))
    print("folds where synthmed beats the best global map: " + ", ".join(
        f"{m} {w}/{len(folds)}" for m, w in zip(METRICS, wins(rows), strict=True)))


def print_modes(results: dict[str, dict[str, dict]]) -> None:
    """The modes side by side: mean over folds and folds won against the best global map."""
    print("mode | mean MAE | mean PSNR | mean SSIM slice | mean SSIM bbox | folds won "
          "(PSNR, SSIM bbox) | train min per fold")
    for mode, folds in results.items():
        rows = fold_scores(folds)
        means = [statistics.mean(column) for column in zip(*rows["synthmed"], strict=True)]
        won = wins(rows)
        minutes = statistics.mean(sum(seconds for key, seconds in f.items()  # all planes
                                      if key.startswith("train_seconds"))
                                  for f in folds.values()) / 60
        print(f"{mode} | " + " | ".join(f"{v:.3f}" for v in means) +
              f" | {won[1]}/{len(folds)}, {won[3]}/{len(folds)} | {minutes:.1f}")


if __name__ == "__main__":
    main()

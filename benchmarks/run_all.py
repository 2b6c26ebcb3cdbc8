"""Run every benchmark script and write ``benchmarks/RESULTS.md`` from what they print.

Each benchmark runs in its own process with its outputs under ``OUT/<name>``; its printed
output is kept in ``OUT/<name>/stdout.txt`` with the command and the wall time, and
RESULTS.md is rebuilt from every benchmark found in OUT. ``--only`` reruns some of them and
keeps the others' last results: from OUT, or else (OUT from another machine) their sections
of the RESULTS.md being rewritten. Run them on an otherwise idle machine: on 2 cores a second
busy process slows a benchmark several times.

    make bench                                                   # all: several hours on 2 cores
    SYNTHMED_TEST_DATA=../shared/data python benchmarks/run_all.py --only demo,train_throughput
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
OUT = "{out}"  # replaced by the benchmark's output folder, also inside an argument

# name -> (what it measures, command); the order of RESULTS.md
BENCHMARKS = {
    "demo": ("`synthmed demo` wall time on the embedded phantom",
             ["-m", "synthmed.cli", "demo", "--out", f"{OUT}/demo-out", "--overwrite"]),
    "train_throughput": ("training throughput of the tutorial DCGAN against a plain PyTorch loop",
                         [str(HERE / "train_throughput.py")]),
    "diffusion_overheads": ("what a diffusion run's sample grids and EMA update cost",
                            [str(HERE / "diffusion_overheads.py")]),
    "export_throughput": ("generate + export throughput and peak memory",
                          [str(HERE / "export_throughput.py")]),
    "large_inputs": ("reading a 2,000-file DICOM series and a 512x512x300 NIfTI",
                     [str(HERE / "large_inputs.py"), "--out", OUT]),
    "breastmnist_quality": ("conditional DCGAN quality on BreastMNIST",
                            [str(HERE / "breastmnist_quality.py"), "--out", f"{OUT}/run"]),
    "generator_quality": ("generator quality per family and recipe on real sets",
                          [str(HERE / "generator_quality.py"), "--out", OUT, "--headline"]),
    "cyclegan_t1t2": ("CycleGAN step times and T1 -> T2 quality against baselines",
                      [str(HERE / "cyclegan_t1t2.py"), "--out", OUT]),
    "utility_harness": ("classifier gain from synthetic data on real sets",
                        [str(HERE / "utility_harness.py"), "--out", OUT]),
    "privacy_breastmnist": ("what differential privacy costs on BreastMNIST",
                            [str(HERE / "privacy_breastmnist.py"), "--out", OUT]),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    parser.add_argument("--only", default=",".join(BENCHMARKS),
                        help=f"comma list of: {', '.join(BENCHMARKS)}")
    parser.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    args = parser.parse_args()
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(BENCHMARKS))
    if unknown:
        sys.exit(f"unknown benchmark(s) {unknown}: choose from {', '.join(BENCHMARKS)}")
    for name in chosen:
        run_one(name, args.out / name)
    earlier = earlier_sections(args.results.read_text()) if args.results.is_file() else {}
    args.results.write_text(results_markdown(args.out, earlier))
    print(f"results: {args.results}")


def run_one(name: str, out: Path) -> None:
    """Run one benchmark, keeping its output, command, exit status and wall time in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, *(part.replace(OUT, str(out)) for part in BENCHMARKS[name][1])]
    print(f"== {name}: {' '.join(command)}", flush=True)
    started = time.perf_counter()
    with (out / "stdout.txt").open("w") as stdout:
        status = subprocess.run(command, stdout=stdout, stderr=subprocess.STDOUT,
                                env={**os.environ, "TQDM_DISABLE": "1"}).returncode
    shown = [os.path.relpath(part) if os.path.isabs(part) else part for part in command[1:]]
    record = {"command": " ".join(shown), "returncode": status,
              "seconds": round(time.perf_counter() - started, 1), "date": time.ctime()}
    (out / "run.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"   exit {status} after {record['seconds']:.0f} s", flush=True)


def earlier_sections(results: str) -> dict[str, str]:
    """The ``## name`` sections of an earlier RESULTS.md, by benchmark name."""
    sections = {}
    for section in results.split("\n## ")[1:]:
        name, _, body = section.partition("\n")
        sections[name.strip()] = body.strip("\n")
    return sections


def results_markdown(out: Path, earlier: dict[str, str]) -> str:
    """RESULTS.md: the machine, then each benchmark's command, wall time and output; a
    benchmark without a record in ``out`` keeps its ``earlier`` section."""
    lines = ["# Benchmark results", "",
             "Written by `make bench` (`python benchmarks/run_all.py`); every number below is "
             "printed by the command above it.", "",
             f"Machine: {platform.platform()}, {os.cpu_count()} CPU cores, Python "
             f"{platform.python_version()}, torch {torch.__version__}"
             f"{', CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else ''}.",
             ""]
    for name, (what, _) in BENCHMARKS.items():
        record_path = out / name / "run.json"
        if not record_path.is_file():
            lines += [f"## {name}", "", earlier.get(name, f"{what}: not run yet."), ""]
            continue
        record = json.loads(record_path.read_text())
        status = "" if record["returncode"] == 0 else f", **failed (exit {record['returncode']})**"
        lines += [f"## {name}", "", f"{what}. Run {record['date']}, {record['seconds']:.0f} s"
                  f"{status}:", "", f"    python {record['command']}", "", "```",
                  (out / name / "stdout.txt").read_text().rstrip(), "```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

"""``make bench``'s runner: each benchmark's output, command and status end up in RESULTS.md."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import benchmark_module, real_file


@pytest.fixture
def run_all(monkeypatch, tmp_path):
    module = benchmark_module("run_all")
    script = tmp_path / "fake_benchmark.py"
    script.write_text("import sys\nprint('ratio 1.50x', '/ok' in sys.argv[-1])\n"
                      "sys.exit(0 if '/ok' in sys.argv[-1] else 3)\n")
    monkeypatch.setattr(module, "BENCHMARKS", {
        "ok": ("a benchmark that works", [str(script), "--out", f"{module.OUT}/run"]),
        "broken": ("a benchmark that fails", [str(script), "--out", module.OUT]),
        "never": ("a benchmark not run", [str(script)]),
    })
    return module


def test_results_hold_each_benchmark_output_status_and_command(run_all, tmp_path, monkeypatch):
    results = tmp_path / "RESULTS.md"
    monkeypatch.setattr(sys, "argv", ["run_all.py", "--out", str(tmp_path / "bench"), "--only",
                                      "ok,broken", "--results", str(results)])
    run_all.main()
    text = results.read_text()
    ok, broken = text.split("## broken")
    assert "ratio 1.50x True" in ok and "failed" not in ok
    assert "ratio 1.50x False" in broken and "**failed (exit 3)**" in broken
    assert "bench/ok/run" in ok
    assert "a benchmark not run: not run yet." in text

    # rerunning one keeps the other's last result
    monkeypatch.setattr(sys, "argv", ["run_all.py", "--out", str(tmp_path / "bench"), "--only",
                                      "ok", "--results", str(results)])
    run_all.main()
    assert "**failed (exit 3)**" in results.read_text()

    # on another machine (a fresh OUT) the sections of the committed RESULTS.md are kept
    before = results.read_text().split("## ok")[1]
    monkeypatch.setattr(sys, "argv", ["run_all.py", "--out", str(tmp_path / "elsewhere"),
                                      "--only", "never", "--results", str(results)])
    run_all.main()
    text = results.read_text()
    assert text.split("## ok")[1].split("## never")[0] == before.split("## never")[0]
    assert "a benchmark not run: not run yet." not in text


def test_unknown_benchmark_is_refused(run_all, monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "argv", ["run_all.py", "--out", str(tmp_path), "--only", "nope"])
    with pytest.raises(SystemExit, match="unknown benchmark"):
        run_all.main()


@pytest.mark.slow
def test_train_throughput_runs_end_to_end(capsys):
    """The throughput benchmark drives fit with a stub model and the real DCGAN: it breaks
    when the model protocol grows, which only a run shows."""
    module = benchmark_module("train_throughput")
    module.main(["--images", "256", "--epochs", "2", "--repeats", "1", "--steps", "1",
                 "--precisions", "fp32"])
    printed = capsys.readouterr().out
    assert "3. fit's own per-step cost (stub model)" in printed
    assert "4. our end-to-end fit() per epoch" in printed and "fp32:" in printed


def test_translation_benchmark_keeps_a_copied_subject_out_of_every_fold(tmp_path, capsys):
    """A subject stored twice under two names would put the held-out subject's own images
    into its fold's training set: the second name is left out, and listed to be held out."""
    module = benchmark_module("cyclegan_t1t2")
    folders = []
    for name, content in (("a", b"one"), ("b", b"two"), ("c", b"one")):
        folder = tmp_path / name
        folder.mkdir()
        for contrast in ("t1", "t2"):
            (folder / f"{contrast}.nii.gz").write_bytes(content + contrast.encode())
        folders.append(folder)
    kept, copies = module.distinct_subjects(folders)
    assert list(kept) == ["a", "b"] and copies == ["c"]
    assert "c: left out, its volumes are byte-identical to a's" in capsys.readouterr().out


def test_translation_benchmark_chooses_the_blend_weight_without_the_held_out_subject(
        tmp_path, monkeypatch):
    """The map-blend weight of a fold comes from inner runs on its training subjects alone,
    each scored on the other training subject: the held-out subject is never trained on or
    scored before the fold's own evaluation, which uses the chosen weight."""
    module = benchmark_module("cyclegan_t1t2")
    volumes = {name: tmp_path / "data" / name for name in ("a", "b", "c")}
    peaks = {("a", "b"): 0.3, ("b", "a"): 0.5}  # (trained on, scored on): best weight
    trained, scored, evaluated = [], [], []

    def train(args, mode, kept_out, run, axis, label):
        trained.append(sorted(kept_out))
        run.mkdir(parents=True)
        return {"train_seconds": 1.0}

    def curve(run, subject, blend_map):
        scored.append((run.parent.name, subject.name))
        peak = peaks.get((run.parent.name, subject.name), 0.0)
        return [-(w - peak) ** 2 for w in module.BLEND_WEIGHTS]  # PSNR peaks at ``peak``

    def evaluate(*cli):
        evaluated.append(cli)
        out = Path(cli[cli.index("--out") + 1])
        out.mkdir(parents=True)
        (out / "translation.json").write_text('{"blended": true}')
        return 2.0

    monkeypatch.setattr(module, "train_fold_run", train)
    monkeypatch.setattr(module, "inner_curve", curve)
    monkeypatch.setattr(module, "synthmed", evaluate)
    args = argparse.Namespace(out=tmp_path / "out", blend_map="inverted", skip_training=False,
                              planes=True)
    for held_out in ("a", "c"):  # where the folds' own runs and fold.json are
        (args.out / "paired" / held_out).mkdir(parents=True)
    record = module.blend_fold(args, "paired", volumes, ["copy"], "c")
    assert trained == [["b", "c", "copy"], ["a", "c", "copy"]]  # each on one subject alone
    assert sorted(scored) == [("a", "b"), ("b", "a")]  # never the held-out c
    assert record["blend"]["weight"] == 0.4 and record["evaluation"] == {"blended": True}
    assert record["train_seconds_inner"] == 2.0  # both inner runs count in the fold's budget
    (cli,) = evaluated
    assert cli[cli.index("--blend-weight") + 1] == "0.4" and "--fuse" in cli
    assert str(volumes["c"] / "t1.nii.gz") in cli
    assert module.blend_fold(args, "paired", volumes, ["copy"], "c") == record  # read back
    assert len(scored) == 2 and len(trained) == 2  # inner runs and curves not redone
    unblended = module.blend_fold(args, "paired", volumes, ["copy"], "a")  # b and c: peak 0
    assert unblended["blend"]["weight"] == 0.0 and "evaluation" not in unblended
    assert trained[-1] == ["a", "b", "copy"] and len(evaluated) == 1  # c's run; no evaluation


@pytest.mark.slow
def test_generators_trained_elsewhere_are_measured_here_untrained(shared_data, tmp_path,
                                                                 monkeypatch):
    """Exported subsets train into packed runs that ``place`` puts where the benchmark and
    its harness find them finished: nothing is trained again, and they sample."""
    real_file(shared_data, "medmnist/breastmnist.npz")
    module = benchmark_module("remote_generators")
    module.main(["export", "--data", str(shared_data), "--out", str(tmp_path / "pack"),
                 "breastmnist-0.25:0,1"])
    module.main(["train", str(tmp_path / "pack"), "--recipe", "dcgan@4",
                 "--out", str(tmp_path / "runs")])
    module.main(["place", str(tmp_path / "runs"), "--quality", str(tmp_path / "q")])

    from synthmed.errors import InputError
    from synthmed.eval import generators
    from synthmed.io import resumable_output_dir

    monkeypatch.setattr(generators, "train_dcgan", lambda *a, **k: pytest.fail("retrained"))
    family, recipe = module.chosen_recipe("dcgan@4")
    subsets = [module.load_subset(tmp_path / "pack" / f"breastmnist-0.25-s{s}.npz")
               for s in (0, 1)]
    benchmark = tmp_path / "q" / "breastmnist-0.25" / "dcgan@4"
    harness = tmp_path / "q" / "breastmnist-0.25" / "harness-dcgan@4"
    placed_seconds = json.loads((benchmark / "train_seconds.json").read_text())
    quality = sys.modules["generator_quality"]
    run, train_seconds = quality.trained_run(family, recipe, subsets[0], benchmark)
    assert train_seconds == placed_seconds  # found, not trained again: the remote time stays
    assert generators.sample_run(run, like=subsets[0], n=3).images.shape == (3, 1, 28, 28)
    harness_runs = [generators.SubsetGenerators(recipe, harness / "generators", family)
                    .train(subset) for subset in subsets]
    assert len(set(harness_runs)) == 2
    with resumable_output_dir(harness, (), "utility"):  # the harness may write there
        pass

    # nothing replaces a placed run or writes into a folder synthmed did not write
    with pytest.raises(SystemExit, match="already holds a run"):
        module.main(["place", str(tmp_path / "runs"), "--quality", str(tmp_path / "q")])
    mine = tmp_path / "mine"
    (mine / "breastmnist-0.25" / "harness-dcgan@4").mkdir(parents=True)
    (mine / "breastmnist-0.25" / "harness-dcgan@4" / "notes.txt").write_text("keep")
    with pytest.raises(InputError, match="synthmed did not write"):
        module.main(["place", str(tmp_path / "runs"), "--quality", str(mine)])
    assert sorted(p.name for p in mine.rglob("*")) == ["breastmnist-0.25", "harness-dcgan@4",
                                                        "notes.txt"]
    with pytest.raises(InputError, match="synthmed did not write"):
        module.main(["export", "--data", str(shared_data), "--out", str(mine / "breastmnist-0.25"
                     / "harness-dcgan@4"), "breastmnist-0.25:0"])

    rates = module.probe([tmp_path / "pack" / "breastmnist-0.25-s1.npz"], "dcgan",
                         tmp_path / "probe", steps=(2, 4))
    assert len(rates) == 1 and rates[0] > 0
    assert module.budget_steps(10.0, 900) == 8000 and module.budget_steps(0.1, 900) == 2000

    # a deadline stops what is still training and packs nothing of it
    with pytest.raises(SystemExit, match="2 run"):
        module.main(["train", str(tmp_path / "pack"), "--recipe", "dcgan@4000", "--out",
                     str(tmp_path / "late"), "--deadline", "0"])
    assert not list((tmp_path / "late").glob("*.tar"))
    assert module.reached(benchmark) == "epoch 1 of 1"

    # synthetic only on 2 x the subset's size
    monkeypatch.setattr(quality, "classifier_auroc",
                        lambda sets, real, seeds: [len(s) for s in sets])
    row = quality.synthetic_only_at_scale(quality.recipe_sampler(family, recipe, run, subsets[0]),
                                          subsets[0], None, seeds=2, scale=2)
    assert row["auroc"] == [2 * len(subsets[0])] * 2 and row["synthetic_scale"] == 2
    assert module.reached(tmp_path / "late") == "before its first epoch"

    exported = dict(np.load(tmp_path / "pack" / "breastmnist-0.25-s1.npz"))
    exported["images"][0] += 0.5
    np.savez(tmp_path / "changed.npz", **exported)
    with pytest.raises(SystemExit, match="fingerprint differs"):
        module.load_subset(tmp_path / "changed.npz")

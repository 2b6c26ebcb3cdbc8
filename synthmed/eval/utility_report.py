"""The utility harness's statistics and report: ``report.md``, ``gain.png``, ``fractions.png``.

Per fraction and regime: mean, sample sd and Student-t 95 % interval of each test metric over
seeds; the gain over ``real`` paired by seed, with its interval, a paired t-test and a
Wilcoxon signed-rank test, their p-values Holm-corrected over the regimes compared; the
smallest gain the seeds could resolve. The headline compares the best regime that uses
synthetic images with the best one that does not (the ``real-repeated`` control included),
both picked on the validation split (the mean over seeds of each selected model's validation
AUROC), never on the test split it then reports.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from synthmed.eval.metrics import BINARY_METRICS, METRICS, MINORITY_METRIC
from synthmed.eval.stats import holm, paired_comparison, resolvable_difference, summarize
from synthmed.io import atomic_write, write_json

BASELINE = "real"


def summarize_results(results: dict[str, Any]) -> dict[str, Any]:
    """``{fraction: {"regimes": {name: {metric: stats}}, "headline": ..., ...}}`` (JSON-able)."""
    regimes = [r["name"] for r in results["regimes"]]
    synthetic = {r["name"] for r in results["regimes"] if r["synthetic"] is not None}
    metric = results["config"]["metric"]
    by_fraction: dict[float, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for cell in results["cells"]:
        by_fraction[cell["fraction"]][cell["regime"]].append(cell)
    summary: dict[str, Any] = {}
    for fraction, cells in sorted(by_fraction.items()):
        table: dict[str, dict[str, Any]] = {}
        for name in regimes:
            runs = sorted(cells.get(name, []), key=lambda c: c["seed"])
            table[name] = {m: summarize([c["test"].get(m, math.nan) for c in runs])
                           for m in _metrics(results)}
            table[name]["converged"] = sum(c["converged"] for c in runs) / max(len(runs), 1)
        _add_gains(table, cells, regimes, results)
        summary[f"{fraction:g}"] = {
            "regimes": table,
            "headline": _headline(table, cells, regimes, synthetic, metric),
        }
    return summary


def _metrics(results: dict[str, Any]) -> list[str]:
    first = results["cells"][0]["test"] if results["cells"] else {}
    return [m for m in (*METRICS, *BINARY_METRICS, MINORITY_METRIC) if m in first]


def _seed_values(cells: dict[str, list[dict]], name: str, metric: str) -> dict[int, float]:
    return {c["seed"]: c["test"].get(metric, math.nan) for c in cells.get(name, [])}


def _paired(cells: dict[str, list[dict]], treatment: str, control: str, metric: str
            ) -> dict[str, float]:
    a, b = _seed_values(cells, treatment, metric), _seed_values(cells, control, metric)
    seeds = sorted(set(a) & set(b))
    return paired_comparison([a[s] for s in seeds], [b[s] for s in seeds])


def _add_gains(table: dict[str, dict[str, Any]], cells: dict[str, list[dict]],
               regimes: list[str], results: dict[str, Any]) -> None:
    """Gain over ``real`` per regime and metric, p-values Holm-corrected over the regimes."""
    others = [name for name in regimes if name != BASELINE and name in cells]
    for metric in _metrics(results):
        gains = {name: _paired(cells, name, BASELINE, metric) for name in others}
        for kind in ("t_p", "wilcoxon_p"):
            adjusted = holm([gains[name][kind] for name in others])
            for name, value in zip(others, adjusted, strict=True):
                gains[name][f"{kind}_holm"] = value
        for name in others:
            gain = gains[name]
            gain["resolvable"] = resolvable_difference(gain["gain_sd"], int(gain["n"]))
            table[name][metric]["gain"] = gain


def _headline(table: dict[str, dict[str, Any]], cells: dict[str, list[dict]],
              regimes: list[str], synthetic: set[str], metric: str) -> dict[str, Any]:
    """Best synthetic regime against the best non-synthetic one, each the best on validation
    (:func:`validation_score`); their paired gain in the test ``metric``."""
    present = [name for name in regimes if name in cells]
    with_synthetic = [n for n in present if n in synthetic]
    without = [n for n in present if n not in synthetic]
    if not with_synthetic or not without:
        return {}
    best_synthetic = max(with_synthetic, key=lambda n: validation_score(cells[n]))
    best_other = max(without, key=lambda n: validation_score(cells[n]))
    return {"metric": metric, "best_synthetic": best_synthetic, "best_without": best_other,
            "chosen_on": "validation",
            "converged": min(table[best_synthetic]["converged"], table[best_other]["converged"]),
            **_paired(cells, best_synthetic, best_other, metric)}


def validation_score(runs: list[dict]) -> float:
    """How well a regime's models did on the validation split: the mean over seeds of each
    selected model's validation AUROC (where the validation split lacks a class and AUROC is
    undefined, its validation loss, negated); ``-inf`` without runs."""
    selected = [next(point for point in run["curve"] if point["step"] == run["best_step"])
                for run in runs]
    if not selected:
        return -math.inf
    aurocs = [point["val_auroc"] for point in selected]
    if any(math.isnan(value) for value in aurocs):
        return -float(np.mean([point["val_loss"] for point in selected]))
    return float(np.mean(aurocs))


# -- Markdown ---------------------------------------------------------------------------------


def to_markdown(results: dict[str, Any], summary: dict[str, Any]) -> str:
    """The report: data, grid, one table per fraction, the headline and the caveats."""
    config, data = results["config"], results["data"]
    metric = config["metric"]
    seeds = config["seeds"]
    classes = ", ".join(f"`{name}`" for name in data["class_names"])  # names may hold commas
    lines = [
        "# Does synthetic data help the classifier?",
        "",
        f"Data: `{data['origin']}`, {len(data['class_names'])} classes ({classes}), "
        f"{data['size'][0]}x{data['size'][1]}x{data['channels']}; train / val / test: "
        + " / ".join(str(sum(data["counts"][p].values())) for p in ("train", "val", "test"))
        + ".",
        *[f"- {note}" for note in data["notes"]],
        f"Generator: {_describe_generator(results['generator'])}.",
        *([f"Synthetic images: the best of {config['best_of']} candidates each, judged by the "
           "`real` regime's classifier (trained on the fraction's real images) by the "
           "probability it gives the intended class."] if config.get("best_of", 1) > 1 else []),
        f"Classifier: {config['classifier']['arch']}, {_budgets(results)} of batch "
        f"{config['classifier']['batch_size']} in every regime (compute-matched), model "
        "selection on the validation split, the test split scored once per model.",
        f"Seeds: {seeds} per regime and fraction; intervals are Student-t 95 % over seeds; p "
        f"against `{BASELINE}` (paired by seed), Holm-corrected over the regimes.",
        "",
    ]
    for fraction, part in summary.items():
        lines += _fraction_table(fraction, part, results, metric)
    lines += [
        "Reading the numbers: a gain whose interval contains 0 is not evidence of an effect. "
        "`resolvable` is the smallest paired gain these seeds detect with 80 % power at 5 %; "
        "smaller true effects look like noise here. `real-repeated` trains on the real images "
        "repeated to the size of the largest real + synthetic set with the same steps and "
        "augmentation: a synthetic regime must beat it, not only `real`, to show that the "
        "synthetic images, and not extra training, made the difference. Accuracy at a fixed "
        "threshold misleads on imbalanced sets; binary thresholds are chosen on validation. "
        "The last column is the recall of the class with the fewest training images, where "
        "gains from synthetic images showed first in earlier studies (Frid-Adar et al. 2018).",
        "",
    ]
    return "\n".join(lines)


def _budgets(results: dict[str, Any]) -> str:
    """The classifier's step budget per fraction, and how it was chosen."""
    steps = results["config"]["classifier"]["steps"]
    budgets = results.get("budgets") or {}
    doublings = results["config"].get("pilot_doublings", 0)
    if not doublings:
        return f"{steps} optimiser steps"
    chosen = ", ".join(f"{b} at fraction {f}" for f, b in budgets.items())
    times = "once" if doublings == 1 else f"{doublings} times"
    return (f"optimiser steps {chosen} (a pilot on `{BASELINE}`, seed 0, doubled {steps} steps "
            f"at most {times} until its best validation pass was not among its last three)")


def _fraction_table(fraction: str, part: dict[str, Any], results: dict[str, Any],
                    metric: str) -> list[str]:
    table = part["regimes"]
    baseline_converged = table[BASELINE]["converged"]
    minority = f"`{minority_name(results['data'])}`"
    lines = [
        f"## Real-data fraction {fraction}",
        "",
        f"| regime | {metric} mean ± sd | 95 % CI | gain vs real [95 % CI] | p (t, Holm) | "
        f"p (Wilcoxon, Holm) | resolvable | balanced acc. | macro F1 | {minority} sens. |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in table.items():
        stats = row[metric]
        gain = stats.get("gain")
        lines.append(
            f"| {name} | {stats['mean']:.3f} ± {stats['sd']:.3f} | "
            f"[{stats['ci_low']:.3f}, {stats['ci_high']:.3f}] | "
            + (f"{gain['gain_mean']:+.3f} [{gain['gain_ci_low']:+.3f}, "
               f"{gain['gain_ci_high']:+.3f}] | {_p(gain['t_p_holm'])} | "
               f"{_p(gain['wilcoxon_p_holm'])} | {gain['resolvable']:.3f}" if gain
               else "(baseline) | | |")
            + f" | {row['balanced_accuracy']['mean']:.3f} | {row['macro_f1']['mean']:.3f} | "
            + (f"{row[MINORITY_METRIC]['mean']:.3f} |" if MINORITY_METRIC in row else "n/a |"))
    lines.append("")
    head = part["headline"]
    if head:
        lines.append(
            f"**Headline ({fraction}):** best synthetic regime `{head['best_synthetic']}` vs "
            f"best without synthetic images `{head['best_without']}` (each the best on the "
            f"validation split): {metric} gain "
            f"{head['gain_mean']:+.3f} [{head['gain_ci_low']:+.3f}, {head['gain_ci_high']:+.3f}]"
            f", paired t p = {_p(head['t_p'])}, Wilcoxon p = {_p(head['wilcoxon_p'])}: "
            f"synthetic data {headline_verdict(head)}.")
    if baseline_converged < 1:
        lines.append(f"Warning: the `{BASELINE}` baseline's best validation pass was among its "
                     f"last three in {1 - baseline_converged:.0%} of seeds: raise the step "
                     "budget (--steps) until it converges.")
    lines.append("")
    return lines


def minority_name(data: dict[str, Any]) -> str:
    """The name of the class with the fewest training images (as ``minority_class``)."""
    counts = data["counts"]["train"]
    return min(data["class_names"], key=lambda name: (counts.get(name, 0),
                                                      data["class_names"].index(name)))


def headline_verdict(head: dict[str, Any]) -> str:
    """What the headline's interval says synthetic data did, with the caveat when a regime it
    compares had not converged."""
    verdict = ("helped" if head["gain_ci_low"] > 0 else
               "hurt" if head["gain_ci_high"] < 0 else "made no difference we can resolve")
    share = head.get("converged", 1.0)
    if share >= 1:
        return verdict
    return (f"{verdict}, but UNCONVERGED: in {1 - share:.0%} of the seeds of one of the two "
            "regimes the best validation pass was among the last three, so the gain may change "
            "with more steps")


def _describe_generator(generator: dict[str, Any]) -> str:
    if generator["kind"] == "run":
        copies = "".join(f"; class `{name}` drawn by its class run (weights {weights[:12]})"
                         for name, weights in generator.get("class_runs", {}).items())
        return (f"trained run `{generator['path']}` (epoch {generator['epoch']}, "
                f"{generator['images_seen']} real training images seen{copies})")
    trained_on = ("a conditional {} trained on exactly each fraction's real subset"
                  if generator.get("conditional", True) else
                  "an unconditional {} trained on the whole training split (the unlabelled "
                  "pool), its images labelled by the `real` regime's classifier")
    if generator.get("init_from"):
        trained_on += f", starting from the weights of the run `{generator['init_from']}`"
    if generator.get("mirror"):
        trained_on += ", each image flipped left-right at random (mirror)"
    filtered = ("" if generator.get("filter_percentile") is None else
                f"; its images through the privacy filter at percentile "
                f"{generator['filter_percentile']:g}, near-copies of its training images redrawn")
    if generator.get("class_steps"):
        which = ("each class's images" if generator["class_copies"] == "all" else
                 "the smallest class's images")
        filtered = (f"; {which} from a copy fine-tuned on that class alone for "
                    f"{generator['class_steps']} steps{filtered}")
    if generator.get("model") == "conditional diffusion model":
        return (f"{trained_on.format('diffusion model')} ({generator['steps']} steps of "
                f"batch {generator['batch_size']}, widths {generator['width']}/"
                f"{2 * generator['width']}/{2 * generator['width']}{filtered})")
    remedies = ""
    if generator.get("diffaugment"):
        remedies += f", DiffAugment {'/'.join(generator['diffaugment'])}"
    if generator.get("ada_target"):
        remedies += f" (adaptive, target {generator['ada_target']})"
    if generator.get("transition_steps", [0, 0])[1]:
        start, end = generator["transition_steps"]
        remedies += f", conditioning ramped in over steps {start}-{end}"
    if generator.get("ema_decay"):
        remedies += f", EMA {generator['ema_decay']}"
    if generator.get("upsample", "convtranspose") != "convtranspose":
        remedies += f", {generator['upsample']} upsampling"
    return (f"{trained_on.format('DCGAN')} ({generator['steps']} steps of batch "
            f"{generator['batch_size']}, width "
            f"{generator['width']}, R1 {generator['r1_gamma']}{remedies}{filtered})")


def _p(value: float) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:.3g}"


# -- plots ------------------------------------------------------------------------------------


def save_plots(results: dict[str, Any], summary: dict[str, Any], out: Path) -> list[Path]:
    """``gain.png``: the metric per regime with 95 % intervals, one panel per fraction;
    ``fractions.png``: the metric against the real-data fraction, one line per regime."""
    import matplotlib.pyplot as plt

    metric = results["config"]["metric"]
    regimes = [r["name"] for r in results["regimes"]]
    fractions = list(summary)
    figure, axes = plt.subplots(1, len(fractions), figsize=(4.5 * len(fractions), 4),
                                squeeze=False, sharey=True)
    for axis, fraction in zip(axes[0], fractions, strict=True):
        table = summary[fraction]["regimes"]
        means = [table[n][metric]["mean"] for n in regimes]
        low = [table[n][metric]["mean"] - table[n][metric]["ci_low"] for n in regimes]
        high = [table[n][metric]["ci_high"] - table[n][metric]["mean"] for n in regimes]
        positions = np.arange(len(regimes))
        axis.errorbar(means, positions, xerr=np.nan_to_num([low, high]), fmt="o", capsize=3)
        axis.axvline(table[BASELINE][metric]["mean"], color="grey", linestyle=":")
        axis.set_yticks(positions, regimes)
        axis.set_title(f"fraction {fraction}")
        axis.set_xlabel(f"test {metric} (95 % CI)")
    axes[0][0].invert_yaxis()
    paths = [out / "gain.png", out / "fractions.png"]
    save_figure(figure, paths[0])
    figure, axis = plt.subplots(figsize=(6, 4))
    xs = [float(f) for f in fractions]
    for name in regimes:
        stats = [summary[f]["regimes"][name][metric] for f in fractions]
        axis.plot(xs, [s["mean"] for s in stats], marker="o", label=name)
        axis.fill_between(xs, [s["ci_low"] for s in stats], [s["ci_high"] for s in stats],
                          alpha=0.15)
    axis.set_xscale("log")
    axis.set_xlabel("real-data fraction")
    axis.set_ylabel(f"test {metric}")
    axis.legend(fontsize=7)
    save_figure(figure, paths[1])
    return paths


def save_figure(figure: Any, path: Path) -> None:
    """Write a matplotlib figure as a PNG atomically and close it."""
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    atomic_write(path, buffer.getvalue())


def write_report(results: dict[str, Any], out: Path) -> list[Path]:
    """``summary.json``, ``report.md``, ``gain.png`` and ``fractions.png`` in ``out``."""
    summary = summarize_results(results)
    write_json(Path(out) / "summary.json", summary)
    atomic_write(Path(out) / "report.md", to_markdown(results, summary).encode())
    return [Path(out) / "summary.json", Path(out) / "report.md",
            *save_plots(results, summary, Path(out))]

"""The privacy audit's report: its findings in plain sentences, ``privacy.json``, a short
``privacy.md`` for a data-protection officer and the plots of distances, attacks and the
closest synthetic / training pairs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import binomtest
from sklearn.metrics import roc_curve

from synthmed.augment.preview import image_grid
from synthmed.eval.membership import Distances, closer_to_train
from synthmed.eval.utility_report import save_figure
from synthmed.io import atomic_write, json_safe

SPACES = {"pixels": "pixel", "features": "feature"}
# Said beside a feature-space excess when the extractor learnt from the training images.
FIT_ON_TRAIN = (" Caution: this feature space was learnt from the training images, which "
                "draws images it does not recognise towards them; without the same excess in "
                "pixel space or near-copies, it may say more about the extractor than about "
                "the generator.")
ATTACKS = {"pixels": "black-box, pixel distance", "features": "black-box, feature distance",
           "discriminator": "white-box, discriminator logit",
           "denoising": "white-box, denoising error"}

# The limits section of privacy.md, the same for every audit.
LIMITS = (
    "## Limits",
    "",
    "- These are empirical tests of a few attacks, not a guarantee: a stronger attacker "
    "(e.g. with more auxiliary data) may do better, and small N gives wide intervals.",
    "- Distances in pixel space miss copies that are shifted, flipped or re-windowed; "
    "the feature space helps there, but the default extractor was trained on the "
    "real training images, which may pull synthetic images towards them.",
    "- Training and held-out images must come from the same source and patients must "
    "not be in both: a patient's other slices in the held-out set look like members.",
    "- Look at `closest_pairs.png`: the closest synthetic / training pairs, for a "
    "human judgement of whether any is a copy.",
)


@dataclass
class PrivacyReport:
    """The audit's numbers and what the plots need.

    Args:
        settings: sizes, sources, feature space, configuration.
        distances: space name -> its :class:`Distances`.
        attacks: attack name -> :func:`~synthmed.eval.membership.membership_attack` result.
        scores: attack name -> ``(members, control, non_members)`` scores ``(n,)`` each.
        pairs: the closest synthetic images ``(P, C, H, W)``, their nearest training images
            and the pixel distances ``(P,)``.
    """

    settings: dict[str, Any]
    distances: dict[str, Distances]
    attacks: dict[str, dict[str, Any]]
    scores: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]
    pairs: tuple[np.ndarray, np.ndarray, np.ndarray]

    def findings(self) -> list[str]:
        """Plain sentences: each excess of near-copies, of synthetic images closer to training
        than to held-out data, or of membership advantage; or none."""
        rate = self.settings["config"]["percentile"] / 100
        found = []
        for space, distances in self.distances.items():
            summary = distances.summary()
            n = len(distances.to_train)
            p = binomtest(summary["near_copies"], n, rate, alternative="greater").pvalue
            if p < 0.05:
                found.append(f"{summary['near_copies']} of {n} synthetic images "
                             f"({summary['near_copy_share']:.0%}) are near-copies of a training "
                             f"image in {SPACES[space]} space, more than the {rate:.0%} of "
                             f"unseen real images (binomial p = {p:.2g}).")
            closer, untied = closer_to_train(distances)
            p = binomtest(closer, untied, 0.5, alternative="greater").pvalue if untied else 1.0
            biased_space = space == "features" and self.settings.get("features_fit_on_train")
            if p < 0.05:
                found.append(f"{summary['closer_to_train_share']:.0%} of synthetic images are "
                             f"closer to a training image than to a held-out one in "
                             f"{SPACES[space]} space, more than the 50 % of a generator that "
                             f"learned the population (binomial p = {p:.2g})."
                             + (FIT_ON_TRAIN if biased_space else ""))
        for name, attack in self.attacks.items():
            if attack["advantage_ci"][0] > 0:
                found.append(f"The {ATTACKS[name]} attack tells training images from unseen "
                             f"ones better than chance: AUC {attack['auc']:.3f}, advantage "
                             f"{attack['advantage']:.3f} (CI {_interval(attack['advantage_ci'])}).")
        return found or ["No excess of near-copies or of images closer to training data, and "
                         "no membership advantage detected at these sample sizes (this is not a "
                         "proof of privacy)."]

    def to_json(self) -> dict[str, Any]:
        """Every number and setting as JSON values (non-finite numbers become ``None``)."""
        return json_safe({
            "settings": self.settings,
            "dcr": {space: d.summary() for space, d in self.distances.items()},
            "membership": self.attacks,
            "closest_pairs_distance": self.pairs[2].tolist(),
            "findings": self.findings(),
            "notes": {
                "closer_to_train_share": "share of synthetic images closer to a training than "
                                         "to a held-out image, both reference sets subsampled "
                                         "(seeded) to reference_size; 0.5 is ideal, ties count "
                                         "half",
                "near_copy_threshold": f"the {self.settings['config']['percentile']:g}th "
                                       "percentile of held-out-to-training nearest distances",
                "auc": "members: training images; non-members: held-out half B; higher score "
                       "= member; 0.5 is chance",
                "control_auc": "the same attack with held-out half A as 'members': both sides "
                               "non-members",
                "advantage": "auc - control_auc, interval by bootstrap",
            },
        })

    def to_markdown(self) -> str:
        """A short report for a data-protection officer: tables, findings and limits."""
        lines = [*self._markdown_findings(), "", *self._markdown_distances(), "",
                 *self._markdown_membership(), "", *LIMITS, *self._markdown_notes()]
        return "\n".join(lines) + "\n"

    def _markdown_findings(self) -> list[str]:
        """The title, what was compared with what, and the findings."""
        s = self.settings
        return [
            "# Privacy",
            "",
            f"{s['n_synthetic']} synthetic images ({s['synthetic_source'] or 'no source given'}) "
            "against "
            f"{s['n_train']} training images (members) and {s['n_holdout']} held-out real "
            f"images the generator never saw (non-members). Feature space: "
            f"**{s['extractor'] or 'none (pixels only)'}**.",
            "",
            "## Findings",
            "",
            *(f"- {finding}" for finding in self.findings()),
        ]

    def _markdown_distances(self) -> list[str]:
        """The distance-to-closest-record table and how to read it."""
        s = self.settings
        percentile = s["config"]["percentile"]
        summaries = {space: d.summary() for space, d in self.distances.items()}
        rows = [
            ("median distance to the nearest training image", "median_to_train", ".4g"),
            ("median distance to the nearest held-out image", "median_to_holdout", ".4g"),
            ("share closer to training than to held-out data (ideal 0.5)",
             "closer_to_train_share", ".3f"),
            (f"near-copy threshold ({percentile:g}th percentile of held-out-to-training "
             "distances)", "near_copy_threshold", ".4g"),
        ]
        return [
            "## Distance to closest record",
            "",
            "| synthetic images | " + " | ".join(f"{SPACES[space]} space" for space in summaries)
            + " |",
            "|---" * (len(summaries) + 1) + "|",
            *(f"| {label} | " + " | ".join(format(v[key], spec) for v in summaries.values())
              + " |" for label, key, spec in rows),
            "| near-copies (closer to a training image than the threshold) | "
            + " | ".join(f"{v['near_copies']} of {s['n_synthetic']} ({v['near_copy_share']:.1%})"
                         for v in summaries.values()) + " |",
            "",
            f"Medians and the closer-to-train share use {self.distances['pixels'].reference_size}"
            " images of each reference set (the larger one subsampled with a fixed seed, so "
            "neither side is closer only by being larger); near-copies are counted against all "
            "training images. Unseen real images are near-copies at "
            f"{percentile:g} % by construction: a generator that learned the population, not "
            f"its training images, gives about {percentile:g} %.",
        ]

    def _markdown_membership(self) -> list[str]:
        """The membership-inference table and how to read it."""
        s = self.settings
        level = f"{s['config']['confidence']:.0%}"
        return [
            "## Membership inference",
            "",
            f"| attack | AUC ({level} CI) | control AUC | advantage ({level} CI) | "
            "members / non-members |",
            "|---|---|---|---|---|",
            *(f"| {ATTACKS[name]} | {a['auc']:.3f} ({_interval(a['auc_ci'])}) | "
              f"{a['control_auc']:.3f} | {a['advantage']:+.3f} ({_interval(a['advantage_ci'])})"
              f" | {a['n_members']} / {a['n_non_members']} |" for name, a in self.attacks.items()),
            "",
            "An attacker scores real images (black-box: closeness to the nearest synthetic image; "
            "white-box: the GAN discriminator's output, or how well a diffusion model predicts "
            "the noise added to the image) to guess which were in the training set. "
            "AUC 0.5 means no better than a coin; 1.0 means every training image is recognised. "
            "The control runs the same attack with two halves of the held-out images, so both "
            "sides are non-members: the advantage (AUC minus control AUC) is what the training "
            "set gives away. An interval that includes 0 means no evidence of leakage at this "
            f"N. Intervals: bootstrap, {s['config']['n_boot']} resamples.",
        ]

    def _markdown_notes(self) -> list[str]:
        """Held-out copies of training images left out, and what the run's record lists."""
        s = self.settings
        lines: list[str] = []
        if s.get("holdout_training_copies_dropped"):
            lines += ["", f"{s['holdout_training_copies_dropped']} held-out image(s) were exact "
                      "copies of training images: they were left out of the non-members."]
        if s.get("train_seen_by_run") is not None:
            lines += ["", f"The run's training record lists {s['train_seen_by_run']} of the "
                      f"{s['n_train']} training images given (the members)."]
        return lines

    def save(self, folder: Path) -> None:
        """``privacy.json``, ``privacy.md``, ``dcr.png``, ``membership.png`` and
        ``closest_pairs.png`` into ``folder``."""
        folder = Path(folder)
        atomic_write(folder / "privacy.json", (json.dumps(self.to_json(), indent=1) + "\n")
                     .encode())
        atomic_write(folder / "privacy.md", self.to_markdown().encode())
        self._plot_distances(folder / "dcr.png")
        self._plot_roc(folder / "membership.png")
        self._plot_pairs(folder / "closest_pairs.png")

    def _plot_distances(self, path: Path) -> None:
        import matplotlib.pyplot as plt

        figure, axes = plt.subplots(1, len(self.distances), figsize=(5 * len(self.distances), 3.5),
                                    squeeze=False)
        for axis, (space, d) in zip(axes[0], self.distances.items(), strict=True):
            bins = np.linspace(0, max(d.fair_train.max(), d.fair_holdout.max()) * 1.05 + 1e-9,
                               40)
            axis.hist(d.fair_train, bins, alpha=0.6, label="to nearest training image")
            axis.hist(d.fair_holdout, bins, alpha=0.6, label="to nearest held-out image")
            axis.axvline(d.threshold, color="black", linestyle=":", label="near-copy threshold")
            axis.set_xlabel(f"distance in {SPACES[space]} space ({d.reference_size} images "
                            "of each reference set)")
            axis.set_ylabel("synthetic images")
            axis.legend(fontsize=7)
        save_figure(figure, path)

    def _plot_roc(self, path: Path) -> None:
        import matplotlib.pyplot as plt

        figure, axis = plt.subplots(figsize=(4.5, 4.5))
        for name, (members, control, non_members) in self.scores.items():
            color = None
            for who, kind, style in ((members, "attack", "-"), (control, "control", "--")):
                truth = np.concatenate([np.ones(len(who)), np.zeros(len(non_members))])
                fpr, tpr, _ = roc_curve(truth, np.concatenate([who, non_members]))
                (line,) = axis.plot(fpr, tpr, style, color=color,
                                    label=f"{ATTACKS[name]} ({kind})")
                color = line.get_color()
        axis.plot([0, 1], [0, 1], color="grey", linewidth=0.5)
        axis.set_xlabel("false positive rate (non-members called members)")
        axis.set_ylabel("true positive rate (members found)")
        axis.legend(fontsize=6)
        save_figure(figure, path)

    def _plot_pairs(self, path: Path) -> None:
        import matplotlib.pyplot as plt

        synthetic, train, distances = self.pairs
        figure, axes = plt.subplots(2, len(distances), squeeze=False,
                                    figsize=(0.9 * len(distances) + 0.5, 2.4))
        for column, distance in enumerate(distances):
            for row, images in enumerate((synthetic, train)):
                tile = image_grid(images[column:column + 1], padding=0)
                axes[row, column].imshow(tile[..., 0] if tile.shape[-1] == 1 else tile,
                                         cmap="gray", vmin=0, vmax=255)
                axes[row, column].axis("off")
            axes[0, column].set_title(f"{distance:.2f}", fontsize=7)
        figure.suptitle("closest synthetic images (top) and their nearest training image "
                        "(bottom); pixel distance above", fontsize=8)
        save_figure(figure, path)



def _interval(bounds: list[float]) -> str:
    return f"{bounds[0]:.3f} to {bounds[1]:.3f}"

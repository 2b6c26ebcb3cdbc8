"""Privacy audit of synthetic images: distance to closest record and membership inference.

Members are the generator's training images; non-members are real images it never saw (the
held-out set, from the same source). Everything is measured in pixel space (the images as
vectors in [-1, 1]) and, when a feature extractor is given, in its feature space too.

- Distance to closest record (DCR): for every synthetic image, the Euclidean distance to its
  nearest training image and to its nearest held-out image. A *near-copy* is a synthetic image
  closer to a training image than the ``percentile``-th percentile of the held-out-to-training
  nearest distances: by construction, unseen real images are that close at that rate (5 %).
  The *closer-to-train share* compares the two distances with the larger reference set
  subsampled (seeded) to the size of the smaller one, so neither side wins by size; 0.5 is
  ideal, ties count half.
- Membership inference: an attacker scores a real image (higher = "it was in the training
  set"); the ROC AUC of member vs non-member scores, 0.5 = chance. Black-box: minus the
  distance to the nearest synthetic image. White-box (a DCGAN run): the discriminator's logit.
  The held-out set is split into seeded halves A and B: the attack is training images vs B,
  the *control* A vs B (both sides non-members: chance up to noise); the *advantage* is AUC
  minus control AUC. Members, A and B have the same size.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import binomtest, rankdata
from sklearn.metrics import roc_curve

from synthmed.augment.dataset import ImageSet
from synthmed.augment.distances import flatten_pixels, near_copy_threshold, nearest_distances
from synthmed.augment.preview import image_grid
from synthmed.errors import InputError, require
from synthmed.eval.fidelity import FeatureFn, checked_features
from synthmed.eval.stats import bootstrap_ci
from synthmed.eval.utility_report import save_figure
from synthmed.gan.config import check_fields
from synthmed.gan.run import LoadedRun
from synthmed.io import atomic_write, json_safe
from synthmed.limits import MAX_SEED

SPACES = {"pixels": "pixel", "features": "feature"}
# Said beside a feature-space excess when the extractor learnt from the training images.
FIT_ON_TRAIN = (" Caution: this feature space was learnt from the training images, which "
                "draws images it does not recognise towards them; without the same excess in "
                "pixel space or near-copies, it may say more about the extractor than about "
                "the generator.")
ATTACKS = {"pixels": "black-box, pixel distance", "features": "black-box, feature distance",
           "discriminator": "white-box, discriminator logit"}


@dataclass(frozen=True)
class PrivacyConfig:
    """Settings of the audit.

    Args:
        percentile: near-copy threshold, as a percentile of held-out-to-training distances.
        n_boot: bootstrap resamples of each interval.
        confidence: coverage of the intervals.
        pairs: closest synthetic / training pairs in the gallery.
        batch_size: images per discriminator call (white-box attack).
        seed: the subsampling, the held-out halves and the bootstrap.
    """

    percentile: float = 5.0
    n_boot: int = 1000
    confidence: float = 0.95
    pairs: int = 16
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        check_fields(self)  # types; NaN and inf refused
        checks = [
            (0.0 <= self.percentile <= 100.0,
             f"percentile must be in [0, 100], got {self.percentile}"),
            (self.n_boot >= 1, f"n_boot must be at least 1, got {self.n_boot}"),
            (0.0 < self.confidence < 1.0, f"confidence must be in (0, 1), got {self.confidence}"),
            (self.pairs >= 0, f"pairs must not be negative, got {self.pairs}"),
            (self.batch_size >= 1, f"batch_size must be at least 1, got {self.batch_size}"),
            (0 <= self.seed <= MAX_SEED, f"seed must be between 0 and {MAX_SEED}, got {self.seed}"),
        ]
        require(checks)


# -- distances ---------------------------------------------------------------------------------


@dataclass
class Distances:
    """DCR of M synthetic vectors in one space.

    Args:
        to_train: ``(M,)`` distance to the nearest training vector (of all of them).
        nearest_train: ``(M,)`` index of that training vector.
        threshold: the near-copy threshold.
        fair_train: ``(M,)`` distance to the nearest of ``reference_size`` training vectors.
        fair_holdout: ``(M,)`` distance to the nearest of ``reference_size`` held-out vectors.
        reference_size: the size of the smaller reference set (the larger one is subsampled
            to it, so the two fair distances can be compared).
    """

    to_train: np.ndarray
    nearest_train: np.ndarray
    threshold: float
    fair_train: np.ndarray
    fair_holdout: np.ndarray
    reference_size: int

    def summary(self) -> dict[str, float]:
        """Medians and the closer-to-train share (ties count half) from the fair distances;
        near-copies against all training vectors."""
        near = int((self.to_train < self.threshold).sum())
        closer = np.mean(self.fair_train < self.fair_holdout) + 0.5 * np.mean(
            self.fair_train == self.fair_holdout)
        return {"median_to_train": float(np.median(self.fair_train)),
                "median_to_holdout": float(np.median(self.fair_holdout)),
                "closer_to_train_share": float(closer),
                "reference_size": self.reference_size,
                "near_copy_threshold": self.threshold,
                "near_copies": near,
                "near_copy_share": near / len(self.to_train)}


def distance_to_closest_record(synthetic: np.ndarray, train: np.ndarray, holdout: np.ndarray,
                               percentile: float = 5.0, seed: int = 0) -> Distances:
    """DCR of ``synthetic (M, D)`` against ``train (N_t, D)`` and ``holdout (N_h, D)``."""
    to_train, nearest = nearest_distances(synthetic, train)
    size = min(len(train), len(holdout))
    rng = np.random.default_rng(seed)
    fair_train, fair_holdout = (
        nearest_distances(synthetic, reference if len(reference) == size else
                          reference[rng.choice(len(reference), size, replace=False)])[0]
        for reference in (train, holdout))
    return Distances(to_train, nearest, near_copy_threshold(train, holdout, percentile),
                     fair_train, fair_holdout, size)


# -- membership inference ----------------------------------------------------------------------


def attack_indices(n_train: int, n_holdout: int, seed: int = 0
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Equal-size index sets ``(n,)``: members (of the training set), control members (held-out
    half A) and non-members (held-out half B), ``n = min(n_train, n_holdout // 2)``."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(n_holdout)
    n = min(n_train, n_holdout // 2)
    members = np.sort(rng.choice(n_train, n, replace=False))
    return members, np.sort(order[:n]), np.sort(order[n_holdout // 2:][:n])


def membership_auc(members: np.ndarray, non_members: np.ndarray) -> float:
    """ROC AUC of attack scores, members ``(N,)`` vs non-members ``(M,)``; higher = member.

    The Mann-Whitney U over ``N M`` (ties count half): the value of sklearn's
    ``roc_auc_score``, without its input checks that cost some 3 ms a call, thousands of
    calls in a bootstrap.

    Examples:
        >>> membership_auc(np.array([3.0, 4.0]), np.array([1.0, 2.0]))
        1.0
    """
    ranks = rankdata(np.concatenate([members, non_members]))  # ties get their mean rank
    n = len(members)
    return float((ranks[:n].sum() - n * (n + 1) / 2) / (n * len(non_members)))


def membership_attack(members: np.ndarray, control: np.ndarray, non_members: np.ndarray,
                      n_boot: int = 1000, confidence: float = 0.95, seed: int = 0
                      ) -> dict[str, Any]:
    """The attack (members vs non-members) and its control (held-out half A vs non-members),
    scores ``(n,)`` each, with bootstrap intervals of the AUC and of the advantage.

    The advantage's resamples draw members and control scores with the same indices (they are
    independent samples, so each is a plain resample) and non-members once for both AUCs.
    """
    def advantage(pairs: np.ndarray, others: np.ndarray) -> float:  # pairs (n, 2)
        return membership_auc(pairs[:, 0], others) - membership_auc(pairs[:, 1], others)

    auc, control_auc = membership_auc(members, non_members), membership_auc(control, non_members)
    auc_ci = bootstrap_ci(members, non_members, membership_auc, n_boot, confidence,
                          rng=np.random.default_rng(seed))
    advantage_ci = bootstrap_ci(np.column_stack([members, control]), non_members, advantage,
                                n_boot, confidence, rng=np.random.default_rng(seed))
    return {"auc": auc, "auc_ci": list(auc_ci), "control_auc": control_auc,
            "advantage": auc - control_auc, "advantage_ci": list(advantage_ci),
            "n_members": len(members), "n_non_members": len(non_members)}


def discriminator_scores(run: LoadedRun, images: np.ndarray, labels: np.ndarray | None,
                         batch_size: int = 64, seed: int = 0) -> np.ndarray:
    """``(N,)`` the DCGAN discriminator's logit (higher = "real") for images ``(N, C, H, W)``
    with labels ``(N,)`` (run's class indices; ``None`` for an unconditional run).

    Batches are drawn in a seeded random order, so a minibatch-std discriminator sees members
    and non-members mixed as in training rather than one group at a time.
    """
    model = run.model
    order = np.random.default_rng(seed).permutation(len(images))
    scores = np.empty(len(images))
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            index = order[start:start + batch_size]
            batch = torch.from_numpy(np.ascontiguousarray(images[index], np.float32))
            classes = None if labels is None else torch.from_numpy(labels[index].astype(np.int64))
            scores[index] = model.discriminator(batch, classes).float().numpy()  # (B,)
    return scores


# -- the audit ---------------------------------------------------------------------------------


@dataclass
class PrivacyReport:
    """The audit's numbers and what the plots need.

    Args:
        settings: sizes, sources, feature space, configuration.
        distances: space name -> its :class:`Distances`.
        attacks: attack name -> :func:`membership_attack` result.
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
            closer, untied = _closer_to_train(distances)
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
        s = self.settings
        percentile = s["config"]["percentile"]
        level = f"{s['config']['confidence']:.0%}"
        summaries = {space: d.summary() for space, d in self.distances.items()}
        rows = [
            ("median distance to the nearest training image", "median_to_train", ".4g"),
            ("median distance to the nearest held-out image", "median_to_holdout", ".4g"),
            ("share closer to training than to held-out data (ideal 0.5)",
             "closer_to_train_share", ".3f"),
            (f"near-copy threshold ({percentile:g}th percentile of held-out-to-training "
             "distances)", "near_copy_threshold", ".4g"),
        ]
        lines = [
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
            "",
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
            "",
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
            "white-box: the GAN discriminator's output) to guess which were in the training set. "
            "AUC 0.5 means no better than a coin; 1.0 means every training image is recognised. "
            "The control runs the same attack with two halves of the held-out images, so both "
            "sides are non-members: the advantage (AUC minus control AUC) is what the training "
            "set gives away. An interval that includes 0 means no evidence of leakage at this "
            f"N. Intervals: bootstrap, {s['config']['n_boot']} resamples.",
            "",
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
        ]
        if s.get("holdout_training_copies_dropped"):
            lines += ["", f"{s['holdout_training_copies_dropped']} held-out image(s) were exact "
                      "copies of training images: they were left out of the non-members."]
        if s.get("train_seen_by_run") is not None:
            lines += ["", f"The run's training record lists {s['train_seen_by_run']} of the "
                      f"{s['n_train']} training images given (the members)."]
        return "\n".join(lines) + "\n"

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


def evaluate_privacy(
    synthetic: ImageSet,
    train: ImageSet,
    holdout: ImageSet,
    *,
    features: FeatureFn | None = None,
    extractor: str = "",
    features_fit_on_train: bool = False,
    run: LoadedRun | None = None,
    config: PrivacyConfig | None = None,
) -> PrivacyReport:
    """Audit ``synthetic`` against the generator's ``train`` images and unseen ``holdout`` ones.

    Args:
        features: images ``(N, C, H, W)`` -> features ``(N, D)``; ``None``: pixel space only.
        extractor: the name of the feature space, stated in the report.
        features_fit_on_train: the feature space was learnt from ``train`` (the default
            extractor is): it pulls any image towards the training images, and the report
            says so beside an excess closer to them in that space.
        run: the DCGAN run that made ``synthetic``: adds the white-box attack and refuses a
            held-out image its training record lists.
        config: see :class:`PrivacyConfig`.

    Raises:
        InputError: too few images, different image shapes, a held-out image the run trained
            on, unlabelled images for a conditional run.
    """
    config = config or PrivacyConfig()
    holdout, copies = without_training_copies(holdout, train)
    check_inputs(synthetic, train, holdout, run)
    seen = set(run.training_data.get("image_hashes", [])) if run is not None else set()
    vectors = {"pixels": [flatten_pixels(s.images) for s in (synthetic, train, holdout)]}
    if features is not None:
        vectors["features"] = [checked_features(features, s.images, what) for s, what in
                               ((synthetic, "synthetic"), (train, "training"),
                                (holdout, "held-out"))]
    distances = {space: distance_to_closest_record(*v, config.percentile, config.seed)
                 for space, v in vectors.items()}

    members, control, non_members = attack_indices(len(train), len(holdout), config.seed)
    scores = {space: tuple(-nearest_distances(queries, fake)[0] for queries in
                           (real[members], held[control], held[non_members]))
              for space, (fake, real, held) in vectors.items()}
    if run is not None:
        parts = ((train, members), (holdout, control), (holdout, non_members))
        labels = (np.concatenate([s.labels[index] for s, index in parts])
                  if run.model.conditional else None)
        logits = discriminator_scores(run, np.concatenate([s.images[index] for s, index in parts]),
                                      labels, config.batch_size, config.seed)
        scores["discriminator"] = tuple(np.split(logits, [len(members), 2 * len(members)]))
    attacks = {name: membership_attack(*s, config.n_boot, config.confidence, config.seed)
               for name, s in scores.items()}

    closest = np.argsort(distances["pixels"].to_train, kind="stable")[:config.pairs]
    pairs = (synthetic.images[closest],
             train.images[distances["pixels"].nearest_train[closest]],
             distances["pixels"].to_train[closest])
    settings = {
        "n_synthetic": len(synthetic), "n_train": len(train), "n_holdout": len(holdout),
        "holdout_training_copies_dropped": copies,
        "synthetic_source": str(synthetic.metadata.get("origin", "")),
        "train_source": str(train.metadata.get("origin", "")),
        "holdout_source": str(holdout.metadata.get("origin", "")),
        "run": None if run is None else {"path": str(run.path), "fingerprint": run.fingerprint,
                                         "epoch": run.epoch},
        "train_seen_by_run": (sum(h in seen for h in train.image_hashes()) if seen else None),
        "extractor": extractor if features is not None else "",
        "features_fit_on_train": features is not None and features_fit_on_train,
        "config": asdict(config),
    }
    return PrivacyReport(settings, distances, attacks, scores, pairs)


STANDARD_SPLITS = ("train", "val", "test")


def choose_split(images: ImageSet, split: str, option: str, where: str | Path) -> ImageSet:
    """Split ``split`` of ``images`` (read from ``where``), as ``option`` asked for it.

    ``all`` is every image. Data without splits has no split to choose: a standard name
    (train, val, test) then means every image. Data with splits must have the one asked for:
    a misspelt or missing split is an error listing the splits it has, never every image.
    """
    if split == "all":
        return images
    named = [name for name in images.split_names() if name]
    if split in named:
        return images.split(split)
    if named:
        raise InputError(f"has no split {split!r} ({option}): its splits are "
                         f"{', '.join(named)}; pass one of them, or all", where)
    if split not in STANDARD_SPLITS:
        raise InputError(f"{option} {split!r} is not a split name: the data has no splits, "
                         f"so use {', '.join(STANDARD_SPLITS)} or all (every image)", where)
    return images


def without_training_copies(holdout: ImageSet, train: ImageSet) -> tuple[ImageSet, int]:
    """``holdout`` less its exact copies of training images, and how many there were.

    A copy of a member is a member, not a non-member. Public sets have such copies across
    their splits (BreastMNIST repeats one image in its train and test splits).
    """
    seen = set(train.image_hashes())
    unseen = np.array([h not in seen for h in holdout.image_hashes()], dtype=bool)
    return holdout.subset(unseen), int((~unseen).sum())


def check_inputs(synthetic: ImageSet, train: ImageSet, holdout: ImageSet,
                 run: LoadedRun | None = None) -> None:
    """At least 1 synthetic, 2 training and 4 held-out images (two halves of 2), one image
    shape, no held-out image in ``run``'s training record (pass the held-out set
    :func:`without_training_copies`), and for a class-conditional run real images labelled
    with its classes.

    Raises:
        InputError: naming the set and the problem.
    """
    for imageset, what, least in ((synthetic, "synthetic", 1), (train, "training", 2),
                                  (holdout, "held-out", 4)):
        if len(imageset) < least:
            raise InputError(f"the privacy audit needs at least {least} {what} images, got "
                             f"{len(imageset)}", imageset.metadata.get("origin"))
    shape = train.images.shape[1:]
    for imageset, what in ((synthetic, "synthetic"), (holdout, "held-out")):
        if imageset.images.shape[1:] != shape:
            raise InputError(f"{what} images are {_shape(imageset)} but training images "
                             f"{_shape(train)}: pass --size / --channels so they match",
                             imageset.metadata.get("origin"))
    if run is None:
        return
    leaked = set(run.training_data.get("image_hashes", [])) & set(holdout.image_hashes())
    if leaked:
        raise InputError(f"the run was trained on {len(leaked)} of the held-out images: "
                         "non-members must be images the generator never saw", run.path)
    for imageset in (train, holdout) if run.model.conditional else ():
        if not imageset.is_labelled or list(imageset.class_names) != run.class_names:
            raise InputError(f"the run is class-conditional with classes {run.class_names}: the "
                             "white-box attack needs real images with the same labels, got "
                             f"{list(imageset.class_names) if imageset.is_labelled else 'none'}",
                             imageset.metadata.get("origin"))


def _closer_to_train(distances: Distances) -> tuple[int, int]:
    """Synthetic images strictly closer to training than to held-out data (equal-size
    references), and those not tied."""
    closer = int((distances.fair_train < distances.fair_holdout).sum())
    return closer, closer + int((distances.fair_train > distances.fair_holdout).sum())


def _shape(imageset: ImageSet) -> str:
    return f"{imageset.size[0]}x{imageset.size[1]} with {imageset.channels} channel(s)"


def _interval(bounds: list[float]) -> str:
    return f"{bounds[0]:.3f} to {bounds[1]:.3f}"

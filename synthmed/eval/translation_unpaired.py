"""Evaluation of a translator without paired truth: the distribution distance between
translated source images and real target-domain images, in the feature space of a domain
classifier."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from synthmed.augment.dataset import ImageSet
from synthmed.augment.readers import read_images
from synthmed.augment.splits import split_by_group
from synthmed.errors import InputError
from synthmed.eval.classifier import ClassifierConfig, train_classifier
from synthmed.eval.fidelity import FidelityReport, evaluate_fidelity
from synthmed.eval.translation import refuse_seen
from synthmed.gan.cyclegan import TRANSLATE_BATCH
from synthmed.gan.run import LoadedRun
from synthmed.gan.translate import translate_images


def evaluate_unpaired(run: LoadedRun, source: str, reference: str, direction: str = "a2b",
                      batch_size: int = TRANSLATE_BATCH, steps: int = 300
                      ) -> dict[str, FidelityReport]:
    """Distribution distance between translated source images and real target-domain images
    when no paired truth exists: the fidelity metrics (FID, KID, precision / recall / density
    / coverage, with the real-vs-real floor) in a learned feature space, for the translator
    and for the untranslated source (the gap a translator has to close).

    The feature space is a domain classifier (source domain vs target domain) trained on the
    source and reference images, with a validation split of slices for model selection;
    translated images are never shown to it.

    Returns:
        ``{"synthmed": report, "identity": report}``.
    """
    read = run.config.data.read_config()
    source_set, target_set = read_images(source, read), read_images(reference, read)
    for images, where in ((source_set, source), (target_set, reference)):
        refuse_seen(run, images, set(images.groups.tolist()), where)
    if source_set.size != target_set.size:
        raise InputError(f"source images are {source_set.size} and reference images "
                         f"{target_set.size}: pass --size to the run's training size", reference)
    translated = replace(source_set, images=translate_images(run, source_set.images, direction,
                                                             batch_size))
    domains = ImageSet.concatenate([_labelled(source_set, 0), _labelled(target_set, 1)])
    # a slice-level validation split: it only selects the feature extractor's weights
    by_slice = replace(domains, groups=domains.sources)
    domains = domains.with_splits(split_by_group(by_slice, val_fraction=0.2, test_fraction=0.0))
    train, val = domains.split("train"), domains.split("val")
    classifier = train_classifier(train.images, train.labels, val.images, val.labels, 2,
                                  ClassifierConfig(steps=steps), seed=0)
    name = (f"domain classifier (source vs target domain, small-cnn, {steps} steps) trained on "
            f"the {len(source_set)} source and {len(target_set)} reference images")
    return {method: evaluate_fidelity(_labelled(target_set, -1), _labelled(images, -1),
                                      classifier.features, name)
            for method, images in (("synthmed", translated), ("identity", source_set))}


def _labelled(images: ImageSet, label: int) -> ImageSet:
    """Every image with one label (``-1``: unlabelled) of the classes source / target."""
    return replace(images, labels=np.full(len(images), label, np.int64),
                   class_names=("source", "target") if label >= 0 else ())

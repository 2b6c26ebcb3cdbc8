"""What the fit loop trains on: labelled images (DCGAN) or two unpaired domains (CycleGAN).

Both kinds answer the same questions for :func:`synthmed.gan.trainer.fit`: how many items
make an epoch, the batch for a set of item indices (random crops and flips drawn from the
loop's generator, so a resumed run repeats exactly), a content fingerprint, the record for
``training_data.json`` and the inputs of the epoch's sample grid.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch

from synthmed.augment.dataset import ImageSet
from synthmed.augment.intensity import foreground_quantiles, standardize_groups
from synthmed.errors import InputError


class LabelledImages:
    """One image set; a batch is ``(images (B, C, H, W), labels (B,))``, unlabelled as 0.

    ``repeats`` makes an epoch that many passes over the set (item ``i`` is image
    ``i mod N``): for a small set, fewer and longer epochs, so the per-epoch work (sample
    grid, metrics line) does not dominate training.
    """

    def __init__(self, imageset: ImageSet, repeats: int = 1) -> None:
        self.imageset = imageset
        self.images = torch.from_numpy(imageset.images)
        self.labels = torch.from_numpy(np.maximum(imageset.labels, 0))
        self.repeats = repeats

    def __len__(self) -> int:
        return len(self.imageset) * self.repeats

    def to(self, device: torch.device) -> LabelledImages:
        self.images, self.labels = self.images.to(device), self.labels.to(device)
        return self

    def batch(self, index: torch.Tensor, rng: torch.Generator) -> tuple[torch.Tensor, ...]:
        index = index % len(self.imageset)
        return self.images[index], self.labels[index]

    def fingerprint(self) -> str:
        return self.imageset.fingerprint()

    def record(self) -> dict[str, Any]:
        return imageset_record(self.imageset)

    def preview_inputs(self, n: int, seed: int) -> dict[str, Any]:
        """A generator's sample grid needs only a count and a noise seed."""
        return {"n": n, "seed": seed}


class UnpairedImages:
    """Two domains that are never paired: item ``i`` of an epoch is image ``i mod len(A)`` of
    domain A with a random image of domain B (as the reference CycleGAN loader); an epoch has
    ``max(len(A), len(B))`` items. A batch is ``(a (B, C, crop, crop), b (B, C, crop, crop))``:
    random crops of side ``crop`` (0: whole images) and random horizontal flips. With
    ``standardize`` each subject's images are histogram-standardised onto its domain's pooled
    foreground quantiles (:func:`standardize_groups`); the record keeps the read images' hashes.
    """

    def __init__(self, a: ImageSet, b: ImageSet, crop: int = 0, flip: bool = True,
                 standardize: bool = True) -> None:
        for name, domain in (("A", a), ("B", b)):
            if crop and min(domain.size) < crop:
                raise InputError(f"domain {name} images are {domain.size[0]}x{domain.size[1]}, "
                                 f"smaller than the training crop {crop}: pass a smaller --crop",
                                 domain.metadata.get("origin"))
        if a.channels != b.channels:
            raise InputError(f"domain A has {a.channels} channel(s) and domain B {b.channels}: "
                             "pass --channels 1 or --channels 3")
        self.domains = (a, b)
        self.quantiles = [foreground_quantiles(domain.images) for domain in self.domains]
        self.a, self.b = (
            torch.from_numpy(standardize_groups(domain.images, domain.groups, quantiles)
                             if standardize else domain.images)
            for domain, quantiles in zip(self.domains, self.quantiles, strict=True))
        self.crop, self.flip = crop, flip

    def __len__(self) -> int:
        return max(len(self.a), len(self.b))

    def to(self, device: torch.device) -> UnpairedImages:
        self.a, self.b = self.a.to(device), self.b.to(device)
        return self

    def batch(self, index: torch.Tensor, rng: torch.Generator) -> tuple[torch.Tensor, ...]:
        a = self.a[index % len(self.a)]
        b = self.b[torch.randint(len(self.b), index.shape, generator=rng, device=rng.device)]
        return self._augment(a, rng), self._augment(b, rng)

    def _augment(self, images: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        """Random crop per image, then a random horizontal flip per image."""
        if self.crop:
            height, width = images.shape[-2:]
            tops = torch.randint(height - self.crop + 1, (len(images),), generator=rng,
                                 device=rng.device).tolist()
            lefts = torch.randint(width - self.crop + 1, (len(images),), generator=rng,
                                  device=rng.device).tolist()
            images = torch.stack([image[:, top:top + self.crop, left:left + self.crop]
                                  for image, top, left in zip(images, tops, lefts, strict=True)])
        if self.flip:
            flipped = torch.rand(len(images), generator=rng, device=rng.device) < 0.5
            images = torch.where(flipped[:, None, None, None], images.flip(-1), images)
        return images

    def fingerprint(self) -> str:
        a, b = (domain.fingerprint() for domain in self.domains)
        return hashlib.sha256(f"unpaired:{a}:{b}".encode()).hexdigest()

    def record(self) -> dict[str, Any]:
        """Both domains' records, each with the quantiles of its foreground intensities."""
        domains = {}
        for name, domain, quantiles in zip("ab", self.domains, self.quantiles, strict=True):
            domains[name] = {**imageset_record(domain), "foreground_quantiles": quantiles.tolist()}
        return {"kind": "unpaired", "fingerprint": self.fingerprint(),
                "images": sum(len(d) for d in self.domains), "domains": domains}

    def preview_inputs(self, n: int, seed: int) -> dict[str, Any]:
        """Up to ``n // 4`` whole images per domain, evenly spaced (the same every epoch)."""
        k = max(1, min(n // 4, len(self.a), len(self.b)))
        pick = [np.linspace(0, len(d) - 1, k).round().astype(int) for d in (self.a, self.b)]
        return {"examples": (self.a[pick[0]].cpu(), self.b[pick[1]].cpu())}


def imageset_record(data: ImageSet) -> dict[str, Any]:
    """What a model is trained on: enough to prove which images it saw (their content hashes),
    and no patient id, subject name or data path (:func:`recorded_source`)."""
    pairs = sorted({(float(lo), float(hi))
                    for lo, hi in zip(data.intensity_low, data.intensity_high, strict=True)})
    return {
        "origin": recorded_source(data.metadata.get("origin", "")),
        "fingerprint": data.fingerprint(),
        "images": len(data),
        "size": list(data.size),
        "channels": data.channels,
        "splits": sorted(set(data.splits.tolist())),
        "class_names": list(data.class_names),
        "class_counts": {data.class_names[k]: n for k, n in data.class_counts().items()},
        "intensity": {
            "unit": data.unit,
            "modality": data.modality,
            # Synthetic images map back with the median mapping of the training images.
            "low": float(np.median(data.intensity_low)),
            "high": float(np.median(data.intensity_high)),
            "distinct_mappings": len(pairs),
        },
        "bit_depths": data.metadata.get("bit_depths", []),
        "subjects": len(set(data.groups.tolist())),
        "image_hashes": data.image_hashes(),
    }


def recorded_source(text: str) -> str:
    """How a run records where its data came from: an embedded ``phantom:`` spec as given, a
    path not at all, since folder and file names often name patients
    (``Doe_Jane_MRN123456/``); the data's fingerprint and image hashes identify it."""
    return text if text.startswith("phantom:") else "path not recorded"


def group_hash(group: str) -> str:
    """A subject / patient id as the first 16 hex digits of its sha256: how older runs recorded
    their subjects (``group_hashes``, reversible by guessing ids, so no longer written); read
    only to refuse those runs' subjects in an evaluation."""
    return hashlib.sha256(str(group).encode()).hexdigest()[:16]

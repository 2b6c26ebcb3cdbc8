"""What the fit loop trains on: labelled images (DCGAN) or two domains (CycleGAN: unpaired
or co-registered pairs).

Both kinds answer the same questions for :func:`synthmed.gan.trainer.fit`: how many items
make an epoch, the batch for a set of item indices (random crops and flips drawn from the
loop's generator, so a resumed run repeats exactly), a content fingerprint, the record for
``training_data.json`` and the inputs of the epoch's sample grid.
"""

from __future__ import annotations

import hashlib
from typing import Any, ClassVar

import numpy as np
import torch

from synthmed.augment.augmentation import mri_augment, random_affine
from synthmed.augment.dataset import ImageSet
from synthmed.augment.intensity import FOREGROUND_FLOOR, foreground_quantiles, standardize_groups
from synthmed.augment.nifti import slice_index
from synthmed.errors import InputError

MIN_PAIRED_DICE = 0.5  # foreground overlap of a subject's two contrasts below this: not paired


def random_flips(images: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """Images ``(B, C, H, W)``, each flipped left-right with probability 1/2 (one draw per
    image from ``rng``, the fit loop's generator, so a resumed run repeats them)."""
    flipped = torch.rand(len(images), generator=rng, device=rng.device) < 0.5
    return torch.where(flipped[:, None, None, None], images.flip(-1), images)


class LabelledImages:
    """One image set; a batch is ``(images (B, C, H, W), labels (B,))``, unlabelled as 0.

    ``repeats`` makes an epoch that many passes over the set (item ``i`` is image
    ``i mod N``): for a small set, fewer and longer epochs, so the per-epoch work (sample
    grid, metrics line) does not dominate training. With ``mirror`` each image of a batch is
    flipped left-right with probability 1/2 (drawn from the loop's generator).
    """

    def __init__(self, imageset: ImageSet, repeats: int = 1, mirror: bool = False) -> None:
        self.imageset = imageset
        self.images = torch.from_numpy(imageset.images)
        self.labels = torch.from_numpy(np.maximum(imageset.labels, 0))
        self.repeats = repeats
        self.mirror = mirror

    def __len__(self) -> int:
        return len(self.imageset) * self.repeats

    def to(self, device: torch.device) -> LabelledImages:
        self.images, self.labels = self.images.to(device), self.labels.to(device)
        return self

    def batch(self, index: torch.Tensor, rng: torch.Generator) -> tuple[torch.Tensor, ...]:
        index = index % len(self.imageset)
        images = self.images[index]
        return (random_flips(images, rng) if self.mirror else images), self.labels[index]

    def fingerprint(self) -> str:
        return self.imageset.fingerprint()

    def record(self) -> dict[str, Any]:
        return imageset_record(self.imageset)

    def preview_inputs(self, n: int, seed: int) -> dict[str, Any]:
        """A generator's sample grid needs only a count and a noise seed."""
        return {"n": n, "seed": seed}


class _TwoDomains:
    """What unpaired and paired training share. Each domain's images are histogram-
    standardised per subject onto its domain's pooled foreground quantiles with
    ``standardize`` (:func:`standardize_groups`), stacked with ``context`` neighbouring slices
    on each side (:func:`slice_stacks`, 2.5D), moved by a random affine with
    ``spatial_augment`` (:func:`random_affine`), randomly cropped to ``crop`` (0: whole
    images) and flipped. With ``intensity_augment`` a batch also carries the generators'
    inputs: the same images with MR intensity artefacts (:func:`intensity_augmented`). The
    record keeps the read images' hashes.
    """

    kind: ClassVar[str]

    def __init__(self, a: ImageSet, b: ImageSet, crop: int = 0, flip: bool = True,
                 standardize: bool = True, context: int = 0,
                 intensity_augment: bool = False, spatial_augment: bool = False) -> None:
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
            torch.from_numpy(slice_stacks(
                standardize_groups(domain.images, domain.groups, quantiles)
                if standardize else domain.images, domain.groups, slice_positions(domain),
                context))
            for domain, quantiles in zip(self.domains, self.quantiles, strict=True))
        self.crop, self.flip = crop, flip
        self.intensity_augment, self.spatial_augment = intensity_augment, spatial_augment

    def __len__(self) -> int:
        return max(len(self.a), len(self.b))

    def to(self, device: torch.device) -> _TwoDomains:
        self.a, self.b = self.a.to(device), self.b.to(device)
        return self

    def _move(self, images: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        """Per image: a random affine (``spatial_augment``), a random crop, then a random
        horizontal flip."""
        if self.spatial_augment:
            images = random_affine(images, rng, flip=False).clamp(-1.0, 1.0)
        if self.crop:
            height, width = images.shape[-2:]
            tops = torch.randint(height - self.crop + 1, (len(images),), generator=rng,
                                 device=rng.device).tolist()
            lefts = torch.randint(width - self.crop + 1, (len(images),), generator=rng,
                                  device=rng.device).tolist()
            images = torch.stack([image[:, top:top + self.crop, left:left + self.crop]
                                  for image, top, left in zip(images, tops, lefts, strict=True)])
        return random_flips(images, rng) if self.flip else images

    def _with_inputs(self, a: torch.Tensor, b: torch.Tensor, rng: torch.Generator
                     ) -> tuple[torch.Tensor, ...]:
        """``(a, b)``, with ``intensity_augment`` followed by the generators' inputs."""
        if not self.intensity_augment:
            return a, b
        return a, b, intensity_augmented(a, rng), intensity_augmented(b, rng)

    def fingerprint(self) -> str:
        a, b = (domain.fingerprint() for domain in self.domains)
        return hashlib.sha256(f"{self.kind}:{a}:{b}".encode()).hexdigest()

    def record(self) -> dict[str, Any]:
        """Both domains' records, each with the quantiles of its foreground intensities."""
        domains = {}
        for name, domain, quantiles in zip("ab", self.domains, self.quantiles, strict=True):
            domains[name] = {**imageset_record(domain), "foreground_quantiles": quantiles.tolist()}
        return {"kind": self.kind, "fingerprint": self.fingerprint(),
                "images": sum(len(d) for d in self.domains), "domains": domains}

    def preview_inputs(self, n: int, seed: int) -> dict[str, Any]:
        """Up to ``n // 4`` whole images per domain, evenly spaced (the same every epoch)."""
        k = max(1, min(n // 4, len(self.a), len(self.b)))
        pick = [np.linspace(0, len(d) - 1, k).round().astype(int) for d in (self.a, self.b)]
        return {"examples": (self.a[pick[0]].cpu(), self.b[pick[1]].cpu())}


class UnpairedImages(_TwoDomains):
    """Two domains that are never paired: item ``i`` of an epoch is image ``i mod len(A)`` of
    domain A with a random image of domain B (as the reference CycleGAN loader); an epoch has
    ``max(len(A), len(B))`` items. A batch is ``(a (B, S, crop, crop), b (B, S, crop, crop))``
    (``S``: channels x stacked slices), each image moved, cropped and flipped on its own, then
    the generators' inputs when augmented (:class:`_TwoDomains`).
    """

    kind = "unpaired"

    def batch(self, index: torch.Tensor, rng: torch.Generator) -> tuple[torch.Tensor, ...]:
        a = self.a[index % len(self.a)]
        b = self.b[torch.randint(len(self.b), index.shape, generator=rng, device=rng.device)]
        return self._with_inputs(self._move(a, rng), self._move(b, rng), rng)


class PairedImages(_TwoDomains):
    """Co-registered pairs: item ``i`` is one subject's slice in both contrasts, moved,
    cropped and flipped alike. Only slices both domains have are kept
    (:func:`paired_slices`); a subject in one domain only, two grids, or contrasts whose
    foregrounds do not overlap (not co-registered) are refused.
    """

    kind = "paired"

    def __init__(self, a: ImageSet, b: ImageSet, crop: int = 0, flip: bool = True,
                 standardize: bool = True, context: int = 0,
                 intensity_augment: bool = False, spatial_augment: bool = False) -> None:
        keep_a, keep_b = paired_slices(a, b)
        super().__init__(a.subset(keep_a), b.subset(keep_b), crop, flip, standardize, context,
                         intensity_augment, spatial_augment)

    def batch(self, index: torch.Tensor, rng: torch.Generator) -> tuple[torch.Tensor, ...]:
        index = index % len(self.a)
        both = self._move(torch.cat([self.a[index], self.b[index]], dim=1), rng)
        a, b = both.split(self.a.shape[1], dim=1)
        return self._with_inputs(a, b, rng)


def paired_slices(a: ImageSet, b: ImageSet) -> tuple[np.ndarray, np.ndarray]:
    """Indices into ``a`` and ``b`` of the slices both have, matched by subject (their group:
    the subject folder of ``<subject>/t1.nii.gz``; one subject in each domain pairs as is)
    and slice position (:func:`slice_positions`), in ``a``'s order.

    Raises:
        InputError: the domains' image sizes differ, a subject has images in one domain only
            or no slice in common, or a subject's A and B foregrounds overlap by a Dice under
            :data:`MIN_PAIRED_DICE` (not co-registered).
    """
    origin = a.metadata.get("origin")
    if a.size != b.size:
        raise InputError(f"domain A images are {a.size[0]}x{a.size[1]} and domain B images "
                         f"{b.size[0]}x{b.size[1]}: --paired needs both contrasts on one grid",
                         origin)
    groups_a, groups_b = set(a.groups.tolist()), set(b.groups.tolist())
    b_groups = b.groups
    if len(groups_a) == len(groups_b) == 1:  # one subject each (e.g. two files): as is
        b_groups = np.full(len(b), a.groups[0])
    else:
        for one, other, name in ((groups_a, groups_b, "A"), (groups_b, groups_a, "B")):
            alone = sorted(one - other)
            if alone:
                raise InputError(
                    f"subject {alone[0]} has images in domain {name} only (the other domain "
                    f"has {', '.join(sorted(other)[:3])}{' ...' if len(other) > 3 else ''}): "
                    "--paired needs both contrasts of every subject, named alike (or train "
                    "unpaired)", origin)
    where_b = {(group, position): k for k, (group, position)
               in enumerate(zip(b_groups.tolist(), slice_positions(b).tolist(), strict=True))}
    keep_a, keep_b = [], []
    for k, key in enumerate(zip(a.groups.tolist(), slice_positions(a).tolist(), strict=True)):
        if key in where_b:
            keep_a.append(k)
            keep_b.append(where_b[key])
    keep_a, keep_b = np.asarray(keep_a, np.int64), np.asarray(keep_b, np.int64)
    for group in np.unique(a.groups):
        members = a.groups[keep_a] == group
        if not members.any():
            raise InputError(f"subject {group} has no slice in both domains: --paired needs "
                             "the contrasts on one grid", origin)
        dice = _foreground_dice(a.images[keep_a[members]], b.images[keep_b[members]])
        if dice < MIN_PAIRED_DICE:
            raise InputError(f"subject {group}: the foregrounds of its A and B images overlap "
                             f"by Dice {dice:.2f}, so they are not co-registered; register "
                             "them or train unpaired", origin)
    return keep_a, keep_b


def _foreground_dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of the foreground masks (above :data:`FOREGROUND_FLOOR`) of two image stacks."""
    mask_a, mask_b = a > FOREGROUND_FLOOR, b > FOREGROUND_FLOOR
    total = mask_a.sum() + mask_b.sum()
    return float(2 * (mask_a & mask_b).sum() / total) if total else 1.0


def slice_positions(images: ImageSet) -> np.ndarray:
    """Each image's position ``(N,)`` along its subject's slice axis: the ``k`` of a NIfTI
    slice's source ``path#slice=k``, else its order among its subject's images (a DICOM
    series or a folder as read, the phantom's slices)."""
    positions = np.empty(len(images), np.int64)
    counts: dict[str, int] = {}
    for k, (source, group) in enumerate(zip(images.sources.tolist(), images.groups.tolist(),
                                             strict=True)):
        index = slice_index(source)
        positions[k] = counts.get(group, 0) if index is None else index
        counts[group] = counts.get(group, 0) + 1
    return positions


def slice_stacks(images: np.ndarray, groups: np.ndarray, positions: np.ndarray,
                 context: int) -> np.ndarray:
    """2.5D inputs: each image ``(N, C, H, W)`` with its ``context`` neighbours on each side
    along its subject's slice axis, as channels ``(N, (2 context + 1) C, H, W)`` from the
    lowest position up (the image itself in the middle). A neighbour that is not among the
    images (past the volume's edge, or a slice not read) is the nearest one between it and
    the centre that is: at an edge the edge slice repeats. ``context`` 0 returns ``images``.

    Examples:
        >>> x = np.arange(3, dtype=np.float32).reshape(3, 1, 1, 1)
        >>> slice_stacks(x, np.zeros(3), np.arange(3), 1)[:, :, 0, 0].tolist()
        [[0.0, 0.0, 1.0], [0.0, 1.0, 2.0], [1.0, 2.0, 2.0]]
    """
    if context == 0:
        return images
    n, channels, height, width = images.shape
    stacks = np.empty((n, (2 * context + 1) * channels, height, width), np.float32)
    for group in np.unique(groups):
        members = np.flatnonzero(groups == group)
        members = members[np.argsort(positions[members], kind="stable")]
        present = positions[members]  # increasing
        for slot, offset in enumerate(range(-context, context + 1)):
            wanted = present + offset
            if offset >= 0:  # the highest present position at or below the wanted one
                nearest = np.searchsorted(present, wanted, side="right") - 1
            else:  # the lowest present position at or above it
                nearest = np.searchsorted(present, wanted, side="left")
            stacks[members, slot * channels:(slot + 1) * channels] = images[members[nearest]]
    return stacks


def intensity_augmented(images: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """``images`` ``(B, S, H, W)`` with MR intensity artefacts (:func:`mri_augment`: bias
    field, gamma, noise, Gibbs ringing; one draw per image, shared by its stacked slices)
    inside the foreground; the background (at -1) stays background."""
    augmented = mri_augment(images, rng)
    return torch.where(images > FOREGROUND_FLOOR, augmented, images)


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

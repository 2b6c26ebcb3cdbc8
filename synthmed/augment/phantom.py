"""The embedded default data set: brain-like axial MR slices in T1 and T2 contrast of the same
anatomy, with or without a tumour-like lesion. Nothing is read from disk; the seed fixes every
pixel.

Each slice is first drawn as a tissue map in its head's frame (the head outline near the unit
circle, +y anterior): scalp / fat, skull, CSF, a grey matter cortex with sulci and the
interhemispheric fissure, white matter reaching into the gyri, a butterfly pair of lateral
ventricles and, on lesion slices, an irregular tumour with a rim of oedema inside the brain.
Each tissue has a T1 and a T2 signal; the clean image is blurred a little (partial volume),
multiplied by a smooth bias field and made noisy the way a magnitude MR image is (Rician: the
magnitude of a complex Gaussian). Values are 12-bit scanner units, 0..4095.

Slices come in subjects of ``slices_per_subject`` consecutive items that share one head
(size, shape, pose, folding, ventricles), varied a little from slice to slice, so that
patient-level splits can be tested on the phantom.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from synthmed.augment.dataset import ImageSet
from synthmed.augment.intensity import to_model_space
from synthmed.augment.items import Item, ReadConfig, ReadResult, assemble
from synthmed.augment.nifti import display_plane
from synthmed.errors import InputError

CLASS_NAMES = ("no lesion", "lesion")
CONTRASTS = ("t1", "t2")
FULL_SCALE = 4095.0  # 12-bit scanner units
CHUNK_PIXELS = 2**20  # pixels rendered at a time

# Tissue indices of a tissue map, and the relative signal of each tissue in T1 and T2.
BACKGROUND, SCALP, SKULL, CSF, GREY, WHITE, LESION, OEDEMA = range(8)
T1_SIGNAL = np.array([0.0, 0.95, 0.08, 0.15, 0.55, 0.80, 0.30, 0.45], np.float32)
T2_SIGNAL = np.array([0.0, 0.70, 0.06, 1.00, 0.62, 0.42, 0.92, 0.78], np.float32)


@dataclass(frozen=True)
class PhantomConfig:
    """What to render.

    Args:
        n: number of slices.
        size: height and width in pixels (16 or more).
        seed: fixes every pixel.
        lesion_fraction: share of lesion slices; exactly ``round(n * lesion_fraction)``.
        slices_per_subject: consecutive slices that share one head.
    """

    n: int = 2000
    size: int = 64
    seed: int = 0
    lesion_fraction: float = 0.5
    slices_per_subject: int = 8

    def __post_init__(self) -> None:
        if self.n < 1:
            raise InputError(f"phantom n must be positive, got {self.n}")
        if self.seed < 0:
            raise InputError(f"phantom seed must be 0 or more, got {self.seed}")
        if self.size < 16:
            raise InputError(f"phantom size must be at least 16, got {self.size}")
        if not 0.0 <= self.lesion_fraction <= 1.0:
            raise InputError(
                f"phantom lesion_fraction must be in [0, 1], got {self.lesion_fraction}"
            )
        if self.slices_per_subject < 1:
            raise InputError(
                f"phantom slices_per_subject must be positive, got {self.slices_per_subject}"
            )


@dataclass(frozen=True)
class PhantomSlices:
    """Rendered phantom slices.

    Args:
        t1, t2: float32 ``(N, H, W)``, scanner units 0..4095.
        tissue: uint8 ``(N, H, W)``, the tissue index of each pixel (``BACKGROUND`` ... ``OEDEMA``).
        labels: int64 ``(N,)``, 1 = lesion.
        subjects: int64 ``(N,)``, subject index.
    """

    t1: np.ndarray
    t2: np.ndarray
    tissue: np.ndarray
    labels: np.ndarray
    subjects: np.ndarray


def render_phantom(config: PhantomConfig, lesions: bool = True) -> PhantomSlices:
    """Render the phantom slices of ``config``.

    With ``lesions=False`` the lesion slices are drawn without their lesion: same anatomy,
    bias field and noise, so comparing both renders shows exactly what the lesion changed.

    Examples:
        >>> s = render_phantom(PhantomConfig(n=4, size=32))
        >>> s.t1.shape, s.labels.tolist()
        ((4, 32, 32), [0, 1, 1, 0])
    """
    rng = np.random.default_rng(config.seed)
    n, per_subject = config.n, config.slices_per_subject
    labels = np.zeros(n, np.int64)
    labels[: round(n * config.lesion_fraction)] = 1
    labels = rng.permutation(labels)
    # whole subjects per chunk, about CHUNK_PIXELS each: bounded memory, cache-friendly
    chunk = per_subject * max(1, CHUNK_PIXELS // (config.size**2 * per_subject))
    starts = range(0, n, chunk)
    parts = [
        _render_chunk(np.arange(start, min(start + chunk, n)), labels, config, chunk_rng, lesions)
        for start, chunk_rng in zip(starts, rng.spawn(len(starts)), strict=True)
    ]
    t1, t2, tissue = (np.concatenate(arrays) for arrays in zip(*parts, strict=True))
    return PhantomSlices(t1, t2, tissue, labels, np.arange(n) // per_subject)


def make_phantom(config: PhantomConfig) -> tuple[ImageSet, ImageSet]:
    """The phantom as a (T1, T2) pair of ImageSets, ``(N, 1, size, size)`` each.

    Both share the anatomy, labels (``CLASS_NAMES``) and groups (``phantom-s0000`` ...).

    Examples:
        >>> t1, t2 = make_phantom(PhantomConfig(n=16, size=32))
        >>> t1.images.shape, t1.class_counts() == t2.class_counts(), t1.groups[8]
        ((16, 1, 32, 32), True, 'phantom-s0001')
    """
    slices = render_phantom(config)
    return (
        _imageset(slices, "t1", config, ReadConfig()),
        _imageset(slices, "t2", config, ReadConfig()),
    )


def is_phantom_spec(text: str) -> bool:
    """Whether a path argument names the phantom (``phantom`` or ``phantom:...``)."""
    return text == "phantom" or text.startswith("phantom:")


def parse_phantom_spec(text: str, default_size: int | None = None) -> tuple[str, PhantomConfig]:
    """``phantom[:t1|t2][,key=value...]`` -> ``(contrast, config)``.

    Keys are the fields of :class:`PhantomConfig`; the contrast defaults to ``t1`` and the
    size to ``default_size`` (when given), else 64.

    Examples:
        >>> parse_phantom_spec("phantom:t2,n=200,size=32")
        ('t2', PhantomConfig(n=200, size=32, seed=0, lesion_fraction=0.5, slices_per_subject=8))
    """
    if not is_phantom_spec(text):
        raise InputError("not a phantom spec: use phantom[:t1|t2][,key=value...]", text)
    types = {field.name: type(field.default) for field in fields(PhantomConfig)}
    contrast = "t1"
    values: dict[str, int | float] = {} if default_size is None else {"size": default_size}
    for token in text.removeprefix("phantom").removeprefix(":").split(","):
        key, has_value, value = (part.strip() for part in token.partition("="))
        if not has_value and key.lower() in CONTRASTS:
            contrast = key.lower()
        elif key in types and has_value:
            try:
                values[key] = types[key](value)
            except ValueError:
                kind = "an integer" if types[key] is int else "a number"
                raise InputError(f"phantom option {key}={value!r} is not {kind}", text) from None
        elif key:
            raise InputError(
                f"unknown phantom option {token.strip()!r}: use t1 or t2 and "
                f"{', '.join(f'{name}=' for name in types)}",
                text,
            )
    return contrast, PhantomConfig(**values)


def read_phantom_spec(text: str, read_config: ReadConfig) -> ImageSet:
    """Render the phantom a spec names (see :func:`parse_phantom_spec`) as one ImageSet.

    Without ``size=`` in the spec it renders at ``read_config.size``; the read options (size,
    resize mode, channels) then apply as for files.

    Examples:
        >>> read_phantom_spec("phantom:t2,n=8", ReadConfig(size=32, channels=3)).images.shape
        (8, 3, 32, 32)
    """
    contrast, config = parse_phantom_spec(text, default_size=read_config.size)
    return _imageset(render_phantom(config), contrast, config, read_config)


def _imageset(
    slices: PhantomSlices, contrast: str, config: PhantomConfig, read_config: ReadConfig
) -> ImageSet:
    """One contrast of the rendered slices as an ImageSet, through the readers' assembly."""
    images = to_model_space(slices.t1 if contrast == "t1" else slices.t2, 0.0, FULL_SCALE)
    source = f"phantom:{contrast},seed={config.seed}"
    items = [
        Item(
            pixels=image[None],
            source=f"{source}#{i}",
            group=f"phantom-s{subject:04d}",
            low=0.0,
            high=FULL_SCALE,
            label=CLASS_NAMES[label],
            modality="MR",
        )
        for i, (image, label, subject) in enumerate(
            zip(images, slices.labels, slices.subjects, strict=True)
        )
    ]
    metadata = {"reader": "phantom", "contrast": contrast.upper(), **asdict(config)}
    spec = f"phantom:{contrast}," + ",".join(f"{k}={v}" for k, v in asdict(config).items())
    return assemble(ReadResult(items, CLASS_NAMES, metadata), read_config, origin=spec)


def write_phantom_volumes(folder: Path, config: PhantomConfig) -> list[str]:
    """Write each subject as ``folder/<subject>/t1.nii.gz`` and ``t2.nii.gz``: int16 volumes
    ``(X, Y, slices_per_subject)`` of the same anatomy on the same grid (1 x 1 x 4 mm), the
    layout of paired T1 / T2 data; returns the subject names."""
    slices = render_phantom(config)
    affine = np.diag([1.0, 1.0, 4.0, 1.0])
    subjects = []
    for subject in np.unique(slices.subjects):
        name = f"phantom-s{subject:04d}"
        (Path(folder) / name).mkdir(parents=True, exist_ok=True)
        members = slices.subjects == subject
        for contrast in CONTRASTS:
            images = getattr(slices, contrast)[members]  # (S, H, W) display images
            volume = np.stack([display_plane(image) for image in images], axis=-1)
            nifti = nib.Nifti1Image(np.rint(volume).astype(np.int16), affine)
            nifti.header.set_xyzt_units("mm")
            nib.save(nifti, Path(folder) / name / f"{contrast}.nii.gz")
        subjects.append(name)
    return subjects


# -- drawing ---------------------------------------------------------------------------------


def _render_chunk(
    index: np.ndarray,
    labels: np.ndarray,
    config: PhantomConfig,
    rng: np.random.Generator,
    lesions: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """T1, T2 and tissue map ``(n, H, W)`` of the slices at ``index`` (whole subjects)."""
    per_subject = config.slices_per_subject
    subjects = index // per_subject - index[0] // per_subject  # from 0 in each chunk
    position = (index % per_subject + 0.5) / per_subject  # of the slice within its subject
    x, y = _head_frame(config.size, subjects, rng)
    tissue = _anatomy(x, y, subjects, position, rng)
    core, rim = _lesion(x, y, tissue, rng)  # for every slice: the random stream never changes
    if lesions:
        brain = np.isin(tissue, (GREY, WHITE)) & (labels[index] == 1)[:, None, None]
        tissue[rim & brain] = OEDEMA
        tissue[core & brain] = LESION
    t1 = _acquire(T1_SIGNAL, tissue, subjects, rng)
    t2 = _acquire(T2_SIGNAL, tissue, subjects, rng)
    return t1, t2, tissue


def _per_subject(
    rng: np.random.Generator, subjects: np.ndarray, bounds: tuple[float, float], jitter: float
) -> np.ndarray:
    """A value drawn uniformly in ``bounds`` per subject plus a normal per-slice jitter, (N,)."""
    base = rng.uniform(*bounds, subjects[-1] + 1)
    return (base[subjects] + rng.normal(0.0, jitter, len(subjects))).astype(np.float32)


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres in [-1, 1]: u ``(1, 1, W)`` to the right, v ``(1, H, 1)`` up."""
    centres = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
    return centres[None, None, :], -centres[None, :, None]


def _head_frame(
    size: int, subjects: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Each pixel's position in its head's frame, float32 ``(N, H, W)`` x and y.

    The head's left-right half-width is 1 there, +y is anterior; head size, aspect, rotation
    and position vary per subject and a little per slice.
    """
    radius = _per_subject(rng, subjects, (0.68, 0.78), 0.005)  # of the half field of view
    aspect = _per_subject(rng, subjects, (1.08, 1.22), 0.005)  # anterior-posterior / left-right
    angle = _per_subject(rng, subjects, (-0.2, 0.2), 0.01)  # radians
    shift_x = _per_subject(rng, subjects, (-0.04, 0.04), 0.003)
    shift_y = _per_subject(rng, subjects, (-0.04, 0.04), 0.003)
    u, v = _grid(size)
    u = u - shift_x[:, None, None]  # (N, 1, W)
    v = v - shift_y[:, None, None]  # (N, H, 1)
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    x = (cos * u + sin * v) / radius[:, None, None]
    y = (cos * v - sin * u) / (radius * aspect)[:, None, None]
    return x, y


def _angular_profile(
    theta: np.ndarray, owners: np.ndarray, harmonics: range, rng: np.random.Generator
) -> np.ndarray:
    """A random periodic function of the angle with unit RMS, float32 ``(N, H, W)``.

    A sum of ``cos(k theta + phase)`` over the harmonics ``k`` with amplitudes and phases drawn
    per owner (subject) and the phases jittered per slice; tabulated on an angle grid, then
    looked up at ``theta`` (cheaper than evaluating the harmonics at every pixel).
    """
    n, k = len(owners), np.arange(harmonics.start, harmonics.stop)
    amplitude = rng.uniform(0.3, 1.0, (owners[-1] + 1, len(k)))[owners]  # (N, K)
    phase = rng.uniform(0, 2 * np.pi, (owners[-1] + 1, len(k)))[owners]
    phase = phase + rng.normal(0.0, 0.15, (n, len(k)))
    bins = 8 * theta.shape[-1]
    grid = np.linspace(-np.pi, np.pi, bins, endpoint=False)
    table = np.einsum("nk,nkb->nb", amplitude, np.cos(k[None, :, None] * grid + phase[..., None]))
    table = (table / table.std(axis=1, keepdims=True)).astype(np.float32)  # (N, bins)
    index = np.rint((theta + np.pi) / (2 * np.pi) * bins).astype(np.int64) % bins
    return np.take_along_axis(table, index.reshape(n, -1), axis=1).reshape(theta.shape)


def _anatomy(
    x: np.ndarray,
    y: np.ndarray,
    subjects: np.ndarray,
    position: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Tissue map uint8 ``(N, H, W)``: scalp, skull, CSF, cortex, white matter, ventricles."""
    theta = np.arctan2(y, x)
    # radius relative to a slightly irregular head outline
    rho = np.hypot(x, y) / (1.0 + 0.02 * _angular_profile(theta, subjects, range(2, 5), rng))
    folds = _angular_profile(theta, subjects, range(12, 28), rng)  # gyri > 0, sulci < 0
    skull = _per_subject(rng, subjects, (0.88, 0.92), 0.002)[:, None, None]  # scalp inner edge
    brain = skull - 0.07  # brain surface, below the skull and a thin CSF layer
    pial = brain - 0.14 * np.clip(3.0 * (-folds - 0.7), 0.0, 1.0)  # sulci cut into the surface
    white = brain - 0.07 - 0.12 * np.clip(3.0 * (-folds - 0.2), 0.0, 1.0)  # cortex lines them
    tissue = np.full(x.shape, BACKGROUND, np.uint8)
    tissue[rho < 1.0] = SCALP
    tissue[rho < skull] = SKULL
    tissue[rho < skull - 0.05] = CSF
    tissue[rho < pial] = GREY
    tissue[rho < white] = WHITE
    # interhemispheric fissure: CSF on the midline, lined with cortex, front and back
    depth = np.abs(y) - _per_subject(rng, subjects, (0.35, 0.45), 0.01)[:, None, None]
    tissue[(tissue == WHITE) & (np.abs(x) < 0.07) & (depth > -0.05)] = GREY
    tissue[(tissue == GREY) & (np.abs(x) < 0.02) & (depth > 0)] = CSF
    # lateral ventricles, a butterfly: on each side a frontal horn and a body whose far ends
    # lean away from the midline; largest in the middle slice of a subject
    scale = _per_subject(rng, subjects, (0.7, 1.3), 0.02) * (1.0 - 0.8 * (position - 0.5) ** 2)
    scale = scale[:, None, None].astype(np.float32)
    for side in (-1.0, 1.0):
        for centre_y, tilt, length in ((0.1, -0.35, 0.16), (-0.1, 0.35, 0.18)):
            dx, dy = x - side * 0.09 * scale, y - centre_y * scale
            along = (dy * np.cos(tilt) - side * dx * np.sin(tilt)) / (length * scale)
            across = (dx * np.cos(tilt) + side * dy * np.sin(tilt)) / (0.06 * scale)
            tissue[(along**2 + across**2 < 1.0) & (tissue == WHITE)] = CSF
    return tissue


def _lesion(
    x: np.ndarray, y: np.ndarray, tissue: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Core and core-plus-oedema masks, bool ``(N, H, W)``: one irregular blob per slice,
    centred on a random white matter pixel (so the core always holds that pixel)."""
    n = len(x)
    scores = np.where(tissue == WHITE, rng.random(tissue.shape, np.float32), -1.0)
    centre = scores.reshape(n, -1).argmax(axis=1)[:, None]  # (N, 1) flat pixel index
    dx = x - np.take_along_axis(x.reshape(n, -1), centre, axis=1)[:, :, None]
    dy = y - np.take_along_axis(y.reshape(n, -1), centre, axis=1)[:, :, None]
    radius = rng.uniform(0.12, 0.22, n).astype(np.float32)[:, None, None]
    outline = 1.0 + 0.2 * _angular_profile(np.arctan2(dy, dx), np.arange(n), range(2, 6), rng)
    r = np.hypot(dx, dy) / (radius * outline)
    return r < 1.0, r < 1.5


def _acquire(
    signal: np.ndarray, tissue: np.ndarray, subjects: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Scanner image float32 ``(N, H, W)``: tissue signal, partial-volume blur, bias field and
    Rician noise, rounded to 12-bit values."""
    n, size = len(tissue), tissue.shape[-1]
    gain = _per_subject(rng, subjects, (2300, 3000), 20.0)
    contrast = 1.0 + rng.normal(0.0, 0.04, (subjects[-1] + 1, len(signal)))[subjects]  # (N, T)
    levels = (signal * contrast * gain[:, None]).astype(np.float32)  # (N, T)
    clean = np.take_along_axis(levels, tissue.reshape(n, -1), axis=1).reshape(tissue.shape)
    clean = ndimage.gaussian_filter(clean, sigma=(0, 0.5 * size / 64, 0.5 * size / 64))
    u, v = _grid(size)
    c = rng.normal(0.0, 0.08, (5, n, 1, 1)).astype(np.float32)
    clean *= np.exp(c[0] * u + c[1] * v + c[2] * u * v + c[3] * u * u + c[4] * v * v)
    sigma = (rng.uniform(0.01, 0.03, n) * gain).astype(np.float32)[:, None, None]
    real = clean + sigma * rng.standard_normal(clean.shape, np.float32)
    imaginary = sigma * rng.standard_normal(clean.shape, np.float32)
    return np.clip(np.rint(np.hypot(real, imaginary)), 0.0, FULL_SCALE)

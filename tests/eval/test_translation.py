"""Paired translation evaluation: metrics, baselines, masks, errors and the written report."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from synthmed.augment.intensity import foreground_quantiles, percentile_range, to_model_space
from synthmed.augment.nifti import display_plane
from synthmed.errors import InputError
from synthmed.eval.translation import VolumePair, evaluate_pairs
from synthmed.eval.translation_metrics import bounding_box
from synthmed.eval.translation_report import (
    BEST_GLOBAL,
    IDENTITY,
    INVERTED,
    MATCHING,
    METHODS,
    SYNTHMED,
    TranslationReport,
    save_report,
)
from synthmed.gan.config import CycleGANConfig
from synthmed.gan.cyclegan import CycleGAN

SHAPE = (32, 32, 12)
QUANTISED = (0.0, 100.0)  # percentiles under which quantised truths round-trip exactly


def ellipsoid(shape: tuple[int, int, int] = SHAPE, radii: tuple[float, ...] = (12, 9, 5)):
    """A brain-like ellipsoid; for ``SHAPE`` slices 0 and 11 along z are empty."""
    grid = np.meshgrid(*[np.arange(n) - (n - 1) / 2 for n in shape], indexing="ij")
    return sum((axis / radius) ** 2 for axis, radius in zip(grid, radii, strict=True)) <= 1


def t1(mask: np.ndarray, seed: int = 0) -> np.ndarray:
    """Smoothly varying intensities in 200..1000 inside ``mask``, 0 outside."""
    rng = np.random.default_rng(seed)
    x, y, _ = np.meshgrid(*[np.linspace(0, 1, n) for n in mask.shape], indexing="ij")
    values = 300 + 500 * x + 100 * np.sin(6 * y) + rng.normal(0, 20, mask.shape)
    return np.where(mask, np.clip(values, 200, 1000), 0).astype(np.float32)


def quantised(mask: np.ndarray, seed: int = 0) -> np.ndarray:
    """Values 100, 200, .., 500 inside ``mask``: exact in model space with ``QUANTISED``."""
    values = np.random.default_rng(seed).choice([100, 200, 300, 400, 500], mask.shape)
    return np.where(mask, values, 0).astype(np.float32)


def normalised_slices(
    volume: np.ndarray, keep: Sequence[int], percentiles: tuple[float, float]
) -> np.ndarray:
    """What the readers make of ``volume``: ``(S, 1, H, W)`` display slices in [-1, 1]."""
    low, high = percentile_range(volume, volume != 0, percentiles)
    planes = np.stack([display_plane(volume[:, :, k]) for k in keep])
    return to_model_space(planes, low, high)[:, None]


def perfect(pair: VolumePair, percentiles: tuple[float, float]):
    """A translator that returns the normalised truth of ``pair``."""
    keep = np.flatnonzero((pair.target != 0).mean(axis=(0, 1)) > 0.01)
    return lambda source: normalised_slices(pair.target, keep, percentiles)


def some_quantiles(pair: VolumePair) -> np.ndarray:
    keep = np.arange(pair.target.shape[2])
    return foreground_quantiles(normalised_slices(pair.target, keep, (0.5, 99.5)))


@pytest.fixture(scope="module")
def perfect_report() -> TranslationReport:
    mask = ellipsoid()
    pair = VolumePair("sub-01", t1(mask), quantised(mask))
    return evaluate_pairs(
        [pair], perfect(pair, QUANTISED), some_quantiles(pair), percentiles=QUANTISED
    )


def test_a_perfect_translator_scores_perfectly(perfect_report: TranslationReport) -> None:
    scores = perfect_report.per_subject["sub-01"][SYNTHMED]
    assert scores["mae"] == 0.0
    assert math.isinf(scores["psnr"]) and scores["psnr"] > 0
    assert scores["ssim_slice"] == pytest.approx(1.0, abs=1e-6)
    assert scores["ssim_bbox"] == pytest.approx(1.0, abs=1e-6)
    assert perfect_report.per_subject["sub-01"][IDENTITY]["mae"] > 10
    rows = [row for row in perfect_report.per_slice if row["method"] == SYNTHMED]
    assert [row["slice"] for row in rows] == list(range(1, 11))  # the empty end slices skipped
    assert all(row["mae"] == 0.0 and math.isinf(row["psnr"]) for row in rows)


def test_panel_columns_are_source_translated_truth_error(
    perfect_report: TranslationReport,
) -> None:
    panel = perfect_report.panels["sub-01"]
    assert panel.shape == (3 * 4, 1, 32, 32) and panel.dtype == np.float32
    columns = panel.reshape(3, 4, 32, 32)
    np.testing.assert_array_equal(columns[:, 1], columns[:, 2])  # translated == truth
    np.testing.assert_array_equal(columns[:, 3], -1.0)  # no error: black
    assert not np.array_equal(columns[:, 0], columns[:, 2])
    shown = normalised_slices(quantised(ellipsoid()), [3, 5, 8], QUANTISED)  # inner of 1..10
    np.testing.assert_array_equal(columns[:, 2], shown[:, 0])


def test_inverted_histogram_matching_wins_on_an_anticorrelated_pair() -> None:
    pairs = []
    for seed in (1, 2):
        mask = ellipsoid()
        source = t1(mask, seed)
        target = np.where(mask, 1000 - 0.8 * source, 0).astype(np.float32)
        pairs.append(VolumePair(f"sub-{seed}", source, target))
    report = evaluate_pairs(pairs, lambda s: s, some_quantiles(pairs[0]))
    summary = {m: {k: v["mean"] for k, v in report.summary[m].items()} for m in METHODS}
    assert report.best_global_map == INVERTED
    assert summary[INVERTED]["mae"] < 0.2 * summary[MATCHING]["mae"]
    assert summary[INVERTED]["psnr"] > summary[MATCHING]["psnr"] + 10
    assert summary[INVERTED]["ssim_bbox"] > summary[MATCHING]["ssim_bbox"]
    assert summary[IDENTITY]["mae"] > 3 * summary[INVERTED]["mae"]
    assert summary[BEST_GLOBAL] == summary[INVERTED]
    assert report.summary[SYNTHMED]["mae"]["n"] == 2
    assert not report.beats_best_global_map()["psnr"]  # the identity "translator" loses
    markdown = report.to_markdown()
    assert f"Best global intensity map: {INVERTED}" in markdown
    assert "PSNR (dB): no" in markdown


def test_masked_mae_and_psnr_match_numpy() -> None:
    mask = ellipsoid()
    source, target = t1(mask, 3), quantised(mask, 3) + t1(mask, 4) / 10
    pair = VolumePair("s", source, target)
    report = evaluate_pairs([pair], np.zeros_like, some_quantiles(pair))
    low, high = np.percentile(target[mask], (0.5, 99.5))
    error = (low + high) / 2 - target.astype(np.float64)  # model-space 0 is the middle
    scores = report.per_subject["s"][SYNTHMED]
    assert scores["mae"] == pytest.approx(np.abs(error[mask]).mean(), rel=1e-9)
    psnr = 10 * np.log10((high - low) ** 2 / (error[mask] ** 2).mean())
    assert scores["psnr"] == pytest.approx(psnr, rel=1e-9)
    row = next(r for r in report.per_slice if r["method"] == SYNTHMED and r["slice"] == 4)
    assert row["mae"] == pytest.approx(np.abs(error[:, :, 4][mask[:, :, 4]]).mean(), rel=1e-9)


def test_bbox_ssim_is_lower_than_whole_slice_ssim_on_a_large_empty_background() -> None:
    mask = ellipsoid((64, 64, 3), (7, 7, 9))
    pair = VolumePair("s", t1(mask), quantised(mask))
    clean = perfect(pair, (0.5, 99.5))
    rng = np.random.default_rng(0)
    noisy = lambda source: np.clip(clean(source) + rng.normal(0, 0.3, source.shape), -1, 1)  # noqa: E731
    scores = evaluate_pairs([pair], noisy, some_quantiles(pair)).per_subject["s"][SYNTHMED]
    assert 1 - scores["ssim_slice"] < 0.2 * (1 - scores["ssim_bbox"])


@pytest.mark.parametrize(
    ("pixel", "shape", "expected"),
    [((0, 0), (20, 30), ((0, 11), (0, 11))), ((10, 29), (20, 30), ((5, 16), (19, 30))),
     ((19, 15), (20, 30), ((9, 20), (10, 21)))],
)
def test_bbox_is_padded_to_the_ssim_window_inside_the_slice(pixel, shape, expected) -> None:
    mask = np.zeros(shape, bool)
    mask[pixel] = True
    rows, columns = bounding_box(mask)
    assert ((rows.start, rows.stop), (columns.start, columns.stop)) == expected


def test_bbox_keeps_a_large_box() -> None:
    mask = np.zeros((40, 40), bool)
    mask[3:30, 10:12] = True
    rows, columns = bounding_box(mask)
    assert (rows.start, rows.stop, columns.stop - columns.start) == (3, 30, 11)
    assert columns.start <= 10 and columns.stop >= 12


def test_mismatched_shapes_name_the_subject() -> None:
    mask = ellipsoid()
    pair = VolumePair("sub-07", t1(mask), t1(mask)[:, :, :10])
    with pytest.raises(InputError, match="sub-07: source is 32x32x12 but the truth is 32x32x10"):
        evaluate_pairs([pair], lambda s: s, np.linspace(-1, 1, 5))


@pytest.mark.parametrize("which", ["source", "target"])
def test_nan_is_an_input_error(which: str) -> None:
    mask = ellipsoid()
    volumes = {"source": t1(mask), "target": t1(mask, 1)}
    volumes[which][3, 3, 3] = np.nan
    with pytest.raises(InputError, match=r"sub-03 \(.*NaN"):
        evaluate_pairs([VolumePair("sub-03", **volumes)], lambda s: s, np.linspace(-1, 1, 5))


def test_a_pair_without_an_evaluable_slice_is_an_input_error() -> None:
    speck = np.zeros(SHAPE, np.float32)
    speck[5, 5, 5] = 100.0  # 1 of 1024 pixels: not above the 1 % foreground
    with pytest.raises(InputError, match="sub-09: no slice along axis 2 has more than 1.0%"):
        evaluate_pairs([VolumePair("sub-09", speck, speck)], lambda s: s, np.linspace(-1, 1, 5))


def test_an_empty_source_is_an_input_error() -> None:
    mask = ellipsoid()
    empty = np.zeros(SHAPE, np.float32)
    with pytest.raises(InputError, match="sub-10: the source has no foreground"):
        evaluate_pairs([VolumePair("sub-10", empty, t1(mask))], lambda s: s, np.linspace(-1, 1, 5))


def test_a_translator_of_the_wrong_shape_is_refused() -> None:
    mask = ellipsoid()
    pair = VolumePair("s", t1(mask), t1(mask, 1))
    with pytest.raises(ValueError, match="translator returned"):
        evaluate_pairs([pair], lambda s: s[:, :, :16], np.linspace(-1, 1, 5))
    made = VolumePair("t", t1(mask), t1(mask, 1), translated=np.zeros(SHAPE, np.float32))
    with pytest.raises(ValueError, match="every pair needs its translated volume"):
        evaluate_pairs([pair, made], None, np.linspace(-1, 1, 5))
    scored = evaluate_pairs([made], None, np.linspace(-1, 1, 5)).per_subject["t"]
    assert scored["synthmed"]["psnr"] < scored["identity"]["psnr"]  # the flat volume given


def test_save_report_writes_json_markdown_and_panels(
    perfect_report: TranslationReport, tmp_path: Path
) -> None:
    written = save_report(perfect_report, tmp_path)
    names = sorted(path.name for path in written)
    assert names == ["panel_sub-01.png", "translation.json", "translation.md"]
    assert sorted(p.name for p in tmp_path.iterdir()) == names  # no temporary files left

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    document = json.loads((tmp_path / "translation.json").read_text(), parse_constant=refuse)
    scores = document["per_subject"]["sub-01"]
    assert scores[SYNTHMED]["mae"] == 0.0 and scores[SYNTHMED]["psnr"] is None
    assert scores[IDENTITY]["mae"] == pytest.approx(perfect_report.per_subject["sub-01"][
        IDENTITY]["mae"])
    assert document["methods"] == METHODS
    assert len(document["per_slice"]) == 10 * len(METHODS)
    markdown = (tmp_path / "translation.md").read_text()
    assert all(f"| {method} |" in markdown for method in METHODS)
    picture = Image.open(tmp_path / "panel_sub-01.png")
    assert picture.mode == "L" and picture.size == (4 * 34 + 2, 3 * 34 + 2)


def test_foreground_quantiles_uses_pixels_above_the_background() -> None:
    images = np.full((2, 1, 3, 3), -1.0, np.float32)
    images[0, 0, 0, :3] = [0.0, 0.25, 0.5]
    images[1, 0, 2, :2] = [0.75, 1.0]
    images[1, 0, 1, 1] = -0.9995  # within 1e-3 of -1: background
    np.testing.assert_allclose(foreground_quantiles(images, levels=5), [0, 0.25, 0.5, 0.75, 1])
    with pytest.raises(InputError, match="no foreground"):
        foreground_quantiles(np.full((1, 1, 4, 4), -1.0))


def test_an_untrained_cyclegan_with_the_inverted_prior_scores_as_inverted_matching():
    # the generator starts as the prior; the source's darkest tissue (below its 0.5th
    # percentile) must stay foreground for it, as it does for the baseline's mask
    mask = ellipsoid()
    pair = VolumePair("sub-p", t1(mask), t1(mask, seed=1)[::-1].copy())
    target_quantiles = some_quantiles(pair)
    model = CycleGAN(CycleGANConfig(ngf=4, ndf=4, n_blocks=1, intensity_prior="inverted",
                                    lambda_identity=0.0))

    def translator(source: np.ndarray) -> np.ndarray:
        model.set_intensity_prior(foreground_quantiles(source), target_quantiles)
        return model.translate(torch.from_numpy(source), "a2b").numpy()

    scores = evaluate_pairs([pair], translator, target_quantiles).per_subject["sub-p"]
    for metric in ("mae", "psnr", "ssim_slice", "ssim_bbox"):
        assert scores[SYNTHMED][metric] == pytest.approx(scores[INVERTED][metric], rel=2e-3)
    assert scores[INVERTED]["mae"] < scores[IDENTITY]["mae"]

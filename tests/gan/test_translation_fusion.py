"""Multi-planar fusion (runs that slice one volume along different axes translate it
together: the mean of their model-space outputs) and the blend with a global intensity map,
through the library and the command line."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from synthmed.augment.intensity import foreground_mask, to_original
from synthmed.augment.phantom import PhantomConfig, write_phantom_volumes
from synthmed.errors import InputError
from synthmed.eval.translation import evaluate_run
from synthmed.eval.translation_blend import best_weight, sweep_blend
from synthmed.gan.run import load_run
from synthmed.gan.translate import (
    MapBlend,
    TranslateConfig,
    blended_translation,
    fused_translation,
    target_domain,
    translate_inputs,
    translate_volume,
)

from ..conftest import invoke, one_line_error

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--ngf", "4", "--ndf", "4", "--blocks", "1", "--epochs", "1", "--crop", "0",
        "--no-progress"]


@pytest.fixture(scope="module")
def planes(tmp_path_factory):
    """Phantom volumes ``(32, 32, 8)`` and two paired runs trained on all subjects but
    phantom-s0002 (regression translators): one slicing along axis 2, one along axis 0."""
    root = tmp_path_factory.mktemp("fusion")
    write_phantom_volumes(root / "data", PhantomConfig(n=24, size=32, seed=2))
    for axis in (2, 0):
        result = invoke("train", "cyclegan", "--domain-a", f"{root}/data/*/t1.nii.gz",
                        "--domain-b", f"{root}/data/*/t2.nii.gz", "--val-subjects",
                        "phantom-s0002", "--paired", "--lambda-gan", "0", "--axis", str(axis),
                        "--out", root / f"axis{axis}", *TINY)
        assert result.exit_code == 0, result.output
    return root


def held_out_volume(planes) -> np.ndarray:
    return nib.load(planes / "data" / "phantom-s0002" / "t1.nii.gz").get_fdata(dtype=np.float32)


def test_fusion_is_the_mean_of_each_runs_own_plane(planes):
    axial, sagittal = load_run(planes / "axis2"), load_run(planes / "axis0")
    volume = held_out_volume(planes)
    one, slices = fused_translation([axial], volume, "a2b")
    other, sagittal_slices = fused_translation([sagittal], volume, "a2b")
    assert one.shape == other.shape == volume.shape
    sagittal_with_foreground = (foreground_mask(volume).mean(axis=(1, 2)) > 0.01).sum()
    assert (slices, sagittal_slices) == (8, sagittal_with_foreground)  # each its own slices
    assert not np.allclose(one, other, atol=1e-3)  # two planes, two translations
    fused, counted = fused_translation([axial, sagittal], volume, "a2b")
    assert counted == slices
    np.testing.assert_allclose(fused, (one + other) / 2, atol=1e-6)
    in_units, _ = translate_volume(axial, volume, "a2b", fuse=[sagittal])
    intensity = target_domain(axial, "a2b")["intensity"]  # the first run's mapping
    np.testing.assert_allclose(in_units, to_original(fused, intensity["low"], intensity["high"]),
                               rtol=1e-5, atol=1e-3)


def test_fusion_refuses_a_run_twice_a_plane_and_another_target(planes):
    axial, sagittal = load_run(planes / "axis2"), load_run(planes / "axis0")
    volume = held_out_volume(planes)
    with pytest.raises(InputError, match="is given twice: fuse distinct runs"):
        fused_translation([axial, load_run(planes / "axis2")], volume, "a2b")
    with pytest.raises(InputError, match="multi-planar fusion needs 3D volumes, got 2D"):
        fused_translation([axial, sagittal], volume[:, :, 3], "a2b")
    sagittal.training_data["domains"]["b"]["intensity"]["unit"] = "HU"
    with pytest.raises(InputError, match="cannot be fused with .*axis2: target unit 'HU'"):
        fused_translation([axial, sagittal], volume, "a2b")


def test_translate_and_evaluate_fuse_runs_from_the_command_line(planes, tmp_path):
    subject = planes / "data" / "phantom-s0002"
    out = tmp_path / "fused"
    result = invoke("translate", planes / "axis2", subject / "t1.nii.gz", "--fuse",
                    planes / "axis0", "--direction", "a2b", "--out", out, "--no-progress")
    assert result.exit_code == 0, result.output
    expected, _ = translate_volume(load_run(planes / "axis2"), held_out_volume(planes), "a2b",
                                   fuse=[load_run(planes / "axis0")])
    written = nib.load(out / "volume_0001.nii.gz").get_fdata()
    np.testing.assert_allclose(written, expected, rtol=1e-5, atol=1e-3)
    provenance = json.loads((out / "provenance.json").read_text())
    assert [r["slice_axis"] for r in provenance["fused_with"]] == [0]
    evaluation = tmp_path / "eval"
    result = invoke("evaluate", "translation", planes / "axis2", "--fuse", planes / "axis0",
                    "--source", subject / "t1.nii.gz", "--target", subject / "t2.nii.gz",
                    "--out", evaluation)
    assert result.exit_code == 0, result.output
    settings = json.loads((evaluation / "translation.json").read_text())["settings"]
    assert [r["slice_axis"] for r in settings["fused_with"]] == [0]
    assert "the mean of this run's translation and those of 1 more (slice axes 0)" in \
        (evaluation / "translation.md").read_text()


def test_fusion_refuses_pictures_and_unpaired_evaluation_and_leaves_nothing(planes, tmp_path):
    result = invoke("translate", planes / "axis2", planes / "data" / "phantom-s0002" /
                    "t1.nii.gz", "--format", "png", "--fuse", planes / "axis0",
                    "--direction", "a2b", "--out", tmp_path / "no", "--no-progress")
    one_line_error(result, "multi-planar fusion translates NIfTI volumes into NIfTI only")
    assert not (tmp_path / "no").exists()
    weights = (planes / "axis0" / "model.safetensors").read_bytes()
    result = invoke("translate", planes / "axis2", planes / "data" / "phantom-s0002" /
                    "t1.nii.gz", "--fuse", planes / "axis0", "--direction", "a2b",
                    "--out", planes / "axis0", "--overwrite", "--no-progress")
    assert result.exit_code != 0 and "axis0" in result.output  # a fused run is an input
    with pytest.raises(InputError):  # the writer checks again, without the command line
        translate_inputs(load_run(planes / "axis2"), [planes / "data" / "phantom-s0002" /
                         "t1.nii.gz"], planes / "axis0", TranslateConfig(),
                         fuse=[load_run(planes / "axis0")], overwrite=True, progress=False)
    assert (planes / "axis0" / "model.safetensors").read_bytes() == weights
    result = invoke("evaluate", "translation", planes / "axis2", "--fuse", planes / "axis0",
                    "--source", planes / "data" / "phantom-s0002" / "t1.nii.gz",
                    "--reference", planes / "data" / "phantom-s0001" / "t2.nii.gz",
                    "--out", tmp_path / "none")
    assert result.exit_code != 0 and "--fuse and --blend-map need --target" in result.output
    assert not (tmp_path / "none").exists()


def test_blend_mixes_the_inverted_map_of_the_input_into_the_translation(planes):
    axial, sagittal = load_run(planes / "axis2"), load_run(planes / "axis0")
    volume = held_out_volume(planes)
    plain, slices = fused_translation([axial], volume, "a2b")
    blended, counted = blended_translation([axial], volume, "a2b", blend=MapBlend("inverted", 0.25))
    assert counted == slices and blended.shape == volume.shape
    mapped = (blended - 0.75 * plain) / 0.25  # the map's share, recovered
    inside = foreground_mask(volume)
    np.testing.assert_allclose(mapped[~inside], -1.0, atol=1e-4)  # background stays background
    order = np.argsort(volume[inside], kind="stable")
    assert np.all(np.diff(mapped[inside][order]) <= 1e-4)  # inverted: brighter in, darker out
    quantiles = np.asarray(target_domain(axial, "a2b")["foreground_quantiles"])
    levels = np.linspace(0, 1, len(quantiles))
    np.testing.assert_allclose(np.quantile(mapped[inside], levels[10:-10]), quantiles[10:-10],
                               atol=0.05)  # onto the target domain's training histogram
    only_map = [blended_translation([run], volume, "a2b", blend=MapBlend("inverted", 1.0))[0]
                for run in (axial, sagittal)]
    np.testing.assert_allclose(only_map[0], only_map[1], atol=1e-5)  # weight 1: no model left
    for bad, message in ((("inverted", 0.0), "weight must be in \\(0, 1\\], got 0.0"),
                         (("inverted", 1.5), "got 1.5"), (("sharp", 0.5), "got 'sharp'")):
        with pytest.raises(InputError, match=message):
            MapBlend(*bad)


def test_translate_and_evaluate_blend_from_the_command_line(planes, tmp_path):
    subject = planes / "data" / "phantom-s0002"
    options = ["--blend-map", "inverted", "--blend-weight", "0.5"]
    result = invoke("translate", planes / "axis2", subject / "t1.nii.gz", *options,
                    "--direction", "a2b", "--out", tmp_path / "blended", "--no-progress")
    assert result.exit_code == 0, result.output
    expected, _ = translate_volume(load_run(planes / "axis2"), held_out_volume(planes), "a2b",
                                   blend=MapBlend("inverted", 0.5))
    written = nib.load(tmp_path / "blended" / "volume_0001.nii.gz").get_fdata()
    np.testing.assert_allclose(written, expected, rtol=1e-5, atol=1e-3)
    provenance = json.loads((tmp_path / "blended" / "provenance.json").read_text())
    assert provenance["blend"] == {"map": "inverted", "weight": 0.5}

    axial = load_run(planes / "axis2")

    def pictures(out_name: str, blend: MapBlend | None) -> np.ndarray:  # the slices as PNGs
        translate_inputs(axial, [subject / "t1.nii.gz"], tmp_path / out_name,
                         TranslateConfig(format="png", blend=blend), progress=False)
        return np.stack([np.asarray(Image.open(p), dtype=np.float64)
                         for p in sorted((tmp_path / out_name).rglob("*.png"))])

    plain, only_map = pictures("plain", None), pictures("map", MapBlend("inverted", 1.0))
    assert len(plain) == 8 and not np.allclose(plain, only_map, atol=2)
    np.testing.assert_allclose(pictures("half", MapBlend("inverted", 0.5)),
                               (plain + only_map) / 2, atol=1.0)  # one grey level of rounding
    for parameter in axial.model.parameters():  # another translator: the map alone is the same
        parameter.data.zero_()
    np.testing.assert_array_equal(pictures("zeroed", MapBlend("inverted", 1.0)), only_map)

    result = invoke("evaluate", "translation", planes / "axis2", "--source",
                    subject / "t1.nii.gz", "--target", subject / "t2.nii.gz", "--blend-map",
                    "inverted", "--blend-weight", "1", "--out", tmp_path / "eval")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "eval" / "translation.json").read_text())
    assert report["settings"]["blend"] == {"map": "inverted", "weight": 1.0}
    scores = report["per_subject"]["phantom-s0002"]
    assert scores["synthmed"]["psnr"] == pytest.approx(
        scores["inverted histogram matching"]["psnr"], abs=0.05)  # the map alone
    assert "0 x the translation + 1 x the map" in (tmp_path / "eval" / "translation.md").read_text()
    result = invoke("translate", planes / "axis2", subject / "t1.nii.gz", "--blend-map",
                    "inverted", "--direction", "a2b", "--out", tmp_path / "none")
    assert result.exit_code != 0 and "--blend-map and --blend-weight go together" in result.output
    assert not (tmp_path / "none").exists()


def test_blend_sweep_scores_each_weight_as_evaluate_translation_does(planes):
    axial, sagittal = load_run(planes / "axis2"), load_run(planes / "axis0")
    subject = planes / "data" / "phantom-s0002"
    source, target = str(subject / "t1.nii.gz"), str(subject / "t2.nii.gz")
    sweep = sweep_blend(axial, source, target, "inverted", (1.0, 0.0, 0.5), fuse=[sagittal])
    assert sweep.weights == [0.0, 0.5, 1.0] and len(sweep.runs) == 2
    psnr = sweep.per_subject["phantom-s0002"]["psnr"]
    for weight, score in zip(sweep.weights, psnr, strict=True):
        blend = MapBlend("inverted", weight) if weight else None
        report = evaluate_run(axial, source, target, fuse=[sagittal], blend=blend)
        scores = report.per_subject["phantom-s0002"]
        assert score == pytest.approx(scores["synthmed"]["psnr"], abs=1e-6)
    assert psnr[2] == pytest.approx(scores["inverted histogram matching"]["psnr"], abs=0.05)
    assert len(set(psnr)) == 3 and sweep.best_weight == sweep.weights[int(np.argmax(psnr))]
    assert sweep.mean("psnr") == pytest.approx(psnr)  # one subject: its own curve
    assert best_weight([0.0, 0.5, 1.0], [3.0, 5.0, 5.0]) == 0.5  # a tie: less of the map
    for bad in ((0.5,), (0.5, 0.5), (0.0, 1.5), (-0.1, 0.5), (0.0, float("nan"))):
        with pytest.raises(InputError, match="at least two distinct values in \\[0, 1\\]"):
            sweep_blend(axial, source, target, "inverted", bad)
    with pytest.raises(InputError, match="got 'sharp'"):
        sweep_blend(axial, source, target, "sharp", (0.0, 1.0))


def test_evaluate_blend_names_the_weight_and_refuses_training_subjects(planes, tmp_path):
    subject = planes / "data" / "phantom-s0002"
    paths = ["--source", subject / "t1.nii.gz", "--target", subject / "t2.nii.gz"]
    result = invoke("evaluate", "blend", planes / "axis2", *paths, "--blend-map", "inverted",
                    "--weights", "0,0.25,1", "--out", tmp_path / "blend")
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "blend" / "blend.json").read_text())
    assert record["weights"] == [0.0, 0.25, 1.0] and record["blend_map"] == "inverted"
    psnr = record["per_subject"]["phantom-s0002"]["psnr"]
    assert record["mean"]["psnr"] == psnr and record["best_weight"] == [0, 0.25, 1][
        int(np.argmax(psnr))]
    best = record["best_weight"]
    assert (f"--blend-weight {best:g}" if best else "without --blend-map") in result.output
    assert f"**w = {best:g}**" in (tmp_path / "blend" / "blend.md").read_text()

    trained = planes / "data" / "phantom-s0001"
    for args, message in (
            (["--source", trained / "t1.nii.gz", "--target", trained / "t2.nii.gz"],
             "8 image(s) and 0 subject(s) of it were in the run's training domain A"),
            ([*paths, "--weights", "0.5"], "at least two distinct values in [0, 1], got 0.5")):
        result = invoke("evaluate", "blend", planes / "axis2", *args, "--blend-map",
                        "inverted", "--out", tmp_path / "refused")
        one_line_error(result, message)
        assert not (tmp_path / "refused").exists()
    result = invoke("evaluate", "blend", planes / "axis2", *paths, "--blend-map", "inverted",
                    "--weights", "0,x", "--out", tmp_path / "refused")
    assert result.exit_code == 2 and "not a comma-separated list of numbers" in result.output
    assert not (tmp_path / "refused").exists()

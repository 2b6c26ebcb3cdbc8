"""Multi-planar fusion: runs that slice one volume along different axes translate it
together (the mean of their model-space outputs), through the library and the command line."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from synthmed.augment.intensity import foreground_mask, to_original
from synthmed.augment.phantom import PhantomConfig, write_phantom_volumes
from synthmed.errors import InputError
from synthmed.gan.run import load_run
from synthmed.gan.translate import (
    TranslateConfig,
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
    assert result.exit_code != 0 and "--fuse needs --target" in result.output
    assert not (tmp_path / "none").exists()

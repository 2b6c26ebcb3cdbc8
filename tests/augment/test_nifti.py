"""NIfTI: slicing, per-volume normalisation, orientation, group ids, bad files, and writing."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from synthmed.augment.dataset import ImageSet
from synthmed.augment.intensity import FOREGROUND_FLOOR, TISSUE_FLOOR, foreground_mask
from synthmed.augment.items import ReadConfig, assemble
from synthmed.augment.nifti import read_nifti, write_nifti
from synthmed.augment.phantom import PhantomConfig, make_phantom
from synthmed.augment.readers import read_images
from synthmed.errors import InputError
from tests.conftest import real_file


def save(path: Path, volume: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(volume, np.eye(4)), path)
    return path


def read(paths: list[Path], config: ReadConfig) -> ImageSet:
    return assemble(read_nifti(paths, config, []), config, origin="test")


def slice_indices(imageset: ImageSet, group: str) -> list[int]:
    return [
        int(source.rsplit("#slice=", 1)[1])
        for source, owner in zip(imageset.sources, imageset.groups, strict=True)
        if owner == group
    ]


def body(shape: tuple[int, ...]) -> np.ndarray:
    """A volume with a zero background around a noisy block."""
    volume = np.zeros(shape, np.float32)
    inner = tuple(slice(1, n - 1) for n in shape[:2])
    volume[inner] = 100.0 + np.random.default_rng(0).random(volume[inner].shape, np.float32)
    return volume


# -- real brain volumes -------------------------------------------------------------------


@pytest.fixture(scope="module")
def brain(shared_data) -> Path:
    return real_file(shared_data, "brain-t1t2")


@pytest.fixture(scope="module")
def t1_set(brain) -> ImageSet:
    return read_images(f"{brain}/*/t1.nii.gz")


def test_kept_slices_are_those_with_enough_foreground(brain, t1_set):
    subjects = sorted(folder.name for folder in brain.iterdir())
    assert len(subjects) == 3 and sorted(set(t1_set.groups)) == subjects
    for subject in subjects:
        volume = np.asanyarray(nib.load(brain / subject / "t1.nii.gz").dataobj)
        fraction = (volume != 0).mean(axis=(0, 1))  # skull-stripped: the background is 0
        expected = np.flatnonzero(fraction > ReadConfig().min_foreground).tolist()
        assert slice_indices(t1_set, subject) == expected
        assert 120 <= len(expected) <= 155


def test_t1_and_t2_of_a_subject_keep_the_same_slices(brain, t1_set):
    # the brain masks of T1 and T2 differ by up to 3 % of their voxels, the kept slices do not
    t2_set = read_images(f"{brain}/*/t2.nii.gz")
    for subject in sorted(set(t1_set.groups)):
        assert slice_indices(t1_set, subject) == slice_indices(t2_set, subject)


def test_values_follow_the_volume_percentiles_in_radiology_orientation(brain):
    path = brain / "TCGA-DU-7294" / "t2.nii.gz"
    s = read_images(path, ReadConfig(min_foreground=-1))
    volume = np.asanyarray(nib.load(path).dataobj).astype(np.float64)  # (X, Y, Z)
    # rows from +Y down, columns from +X leftwards, one image per Z: (Z, Y, X)
    expected = np.moveaxis(volume, 2, 0)[:, ::-1, ::-1].transpose(0, 2, 1)
    low, high = np.percentile(volume[volume != 0], (0.5, 99.5))
    assert len(s) == volume.shape[2]
    assert np.allclose(s.intensity_low, low) and np.allclose(s.intensity_high, high)
    original, inside = s.to_original_units()[:, 0], expected != 0
    darkest_tissue = low + (TISSUE_FLOOR + 1.0) / 2.0 * (high - low)
    assert np.allclose(original[~inside], low)
    assert np.allclose(original[inside], np.clip(expected[inside], darkest_tissue, high),
                       atol=1e-2)
    images = s.images[:, 0]
    assert (images[~inside] == -1).all()
    # tissue under the 0.5th percentile stays foreground: clipped to TISSUE_FLOOR, not to -1
    assert (images[inside] > FOREGROUND_FLOOR).all()
    assert 0.005 <= (images[inside] == np.float32(TISSUE_FLOOR)).mean() < 0.006
    assert 0.005 <= (images[inside] == 1).mean() < 0.006


# -- orientation, shapes, groups ---------------------------------------------------------


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_ras_volume_shows_the_plus_corner_top_left(tmp_path, axis):
    # marker at +X +Y +Z (patient right, anterior, superior): top left in every cut
    volume = body((20, 24, 28))
    volume[14:18, 18:22, 22:26] = 1000.0
    s = read([save(tmp_path / "ras.nii.gz", volume)], ReadConfig(slice_axis=axis))
    marked = s.images[:, 0].max(axis=(1, 2)) == 1.0
    assert marked.sum() == 4
    for image in s.images[marked, 0]:
        rows, cols = np.nonzero(image == 1.0)
        assert rows.max() < image.shape[0] // 3 and cols.max() < image.shape[1] // 3


def test_singleton_fourth_dimension_and_2d_images(tmp_path):
    volume = body((8, 9, 3))
    as_3d = read([save(tmp_path / "a.nii.gz", volume)], ReadConfig())
    as_4d = read([save(tmp_path / "b.nii.gz", volume[..., None])], ReadConfig())
    assert as_3d.images.shape == (3, 1, 9, 8) and np.array_equal(as_3d.images, as_4d.images)
    flat = read([save(tmp_path / "c.nii", volume[:, :, 0])], ReadConfig(slice_axis=0))
    assert flat.images.shape == (1, 1, 9, 8) and list(flat.sources) == [f"{tmp_path}/c.nii#slice=0"]


def test_group_is_the_file_stem_or_the_folder_when_names_repeat(tmp_path):
    for name in ("a/t1.nii.gz", "b/t1.nii.gz", "c/scan.nii", "c/other.nii.gz"):
        save(tmp_path / name, body((6, 6, 2)))
    s = read_images(tmp_path)
    files = [source.split("#")[0] for source in s.sources]
    groups = dict(zip(files, s.groups, strict=True))
    assert groups == {
        f"{tmp_path}/a/t1.nii.gz": "a",
        f"{tmp_path}/b/t1.nii.gz": "b",
        f"{tmp_path}/c/scan.nii": "scan",
        f"{tmp_path}/c/other.nii.gz": "other",
    }


# -- bad input ---------------------------------------------------------------------------


def write_bad(folder: Path, kind: str) -> Path:
    if kind == "4d":
        return save(folder / "multi.nii.gz", np.zeros((8, 8, 4, 4), np.float32))
    if kind == "random":
        path = folder / "random.nii.gz"
        path.write_bytes(np.random.default_rng(0).bytes(5000))
        return path
    if kind == "truncated":
        whole = save(folder / "whole.nii.gz", body((32, 32, 16))).read_bytes()
        path = folder / "truncated.nii.gz"
        path.write_bytes(whole[: len(whole) // 2])
        return path
    if kind == "bad gzip data":
        raw = bytearray(gzip.compress(save(folder / "x.nii", body((16, 16, 8))).read_bytes()))
        raw[len(raw) // 2 : len(raw) // 2 + 50] = bytes(50)
        path = folder / "corrupt.nii.gz"
        path.write_bytes(bytes(raw))
        return path
    if kind == "constant":
        return save(folder / "zeros.nii.gz", np.zeros((8, 8, 3), np.float32))
    volume = body((8, 8, 3))
    volume[4, 4, 1] = np.nan
    return save(folder / "nan.nii.gz", volume)


@pytest.mark.parametrize(
    "kind, problem",
    [
        ("4d", r"is 4D \(8x8x4x4\)"),
        ("random", "not a NIfTI file"),
        ("truncated", "truncated or damaged"),
        ("bad gzip data", "truncated or damaged"),
        ("nan", "1 pixel"),
        ("constant", "every voxel is 0: a constant image teaches nothing"),
    ],
)
def test_bad_files_raise_input_errors_naming_the_file(tmp_path, kind, problem):
    path = write_bad(tmp_path, kind)
    with pytest.raises(InputError, match=problem) as raised:
        read_nifti([path], ReadConfig(), [])
    assert raised.value.path == str(path)


def test_skip_bad_reads_the_good_volumes_and_lists_the_bad(tmp_path):
    save(tmp_path / "good.nii.gz", body((8, 8, 3)))
    bad = [write_bad(tmp_path / "bad", kind) for kind in ("4d", "random", "nan", "constant")]
    with pytest.raises(InputError, match="bad/"):
        read_images(tmp_path)
    s = read_images(tmp_path, ReadConfig(skip_bad=True))
    assert set(s.groups) == {"good"} and len(s) == 3
    assert sorted(entry["path"] for entry in s.metadata["skipped"]) == sorted(map(str, bad))


def test_bad_slice_axis_is_refused(tmp_path):
    with pytest.raises(InputError, match="slice axis"):
        read_nifti([save(tmp_path / "a.nii.gz", body((4, 4, 4)))], ReadConfig(slice_axis=3), [])


# -- writing -----------------------------------------------------------------------------


def test_written_phantom_reads_back_with_the_same_picture_and_values(tmp_path):
    t1, _ = make_phantom(PhantomConfig(n=6, size=32, seed=2))
    names = [f"{t1.class_names[label]}/{i:05d}.nii.gz" for i, label in enumerate(t1.labels)]
    write_nifti(t1, tmp_path, names)
    original = t1.to_original_units()  # (N, 1, H, W)
    first = nib.load(tmp_path / names[0])
    assert first.shape == (32, 32, 1) and first.get_data_dtype() == np.float32
    assert np.array_equal(first.affine, np.eye(4))
    volume = first.get_fdata()  # top-left pixel at +X +Y, rows along -Y
    assert np.isclose(volume[-1, -1, 0], original[0, 0, 0, 0], atol=1e-2)
    assert np.allclose(volume[::-1, -1, 0], original[0, 0, 0], atol=1e-2)
    back = read([tmp_path / name for name in names], ReadConfig(min_foreground=-1))
    low = back.intensity_low[:, None, None, None]
    high = back.intensity_high[:, None, None, None]
    inside = np.stack([foreground_mask(image) for image in original])  # each file's mask
    darkest_tissue = low + (TISSUE_FLOOR + 1.0) / 2.0 * (high - low)
    expected = np.where(inside, np.clip(original, darkest_tissue, high), low)
    assert np.allclose(back.to_original_units(), expected, atol=1e-2)
    assert ((original > low) & (original < high)).mean() > 0.4  # most pixels compared unclipped


def test_rgb_export_is_refused(tmp_path):
    rgb = ImageSet.from_arrays(np.zeros((1, 3, 8, 8), np.float32))
    with pytest.raises(InputError, match="one-channel"):
        write_nifti(rgb, tmp_path, ["x.nii.gz"])
    assert not list(tmp_path.iterdir())

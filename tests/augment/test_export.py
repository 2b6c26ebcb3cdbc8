"""Exports: every format reads back, manifests keep labels and splits, writes are atomic."""

from __future__ import annotations

import json

import numpy as np
import pytest

from synthmed.augment import export
from synthmed.augment.dataset import ImageSet
from synthmed.augment.export import atomic_output_dir, export_imageset
from synthmed.augment.intensity import TISSUE_FLOOR
from synthmed.augment.items import ReadConfig
from synthmed.augment.readers import read_images
from synthmed.errors import InputError


def labelled_set(n: int = 6, channels: int = 1) -> ImageSet:
    rng = np.random.default_rng(0)
    images = np.full((n, channels, 12, 12), -1.0, np.float32)  # a constant background
    images[:, :, 2:10, 2:10] = rng.uniform(-0.9, 1, (n, channels, 8, 8))
    images = np.rint((images + 1) * 127.5) / 127.5 - 1  # exactly representable in 8 bits
    return ImageSet.from_arrays(
        images.astype(np.float32),
        labels=np.arange(n) % 2,
        class_names=["no lesion", "lesion"],
        groups=[f"s{k // 2}" for k in range(n)],
        splits=["train"] * (n - 2) + ["test"] * 2,
        intensity_range=(0.0, 4095.0),
        modality="MR",
    )


def read_sorted(path, **kwargs) -> ImageSet:
    return read_images(path, ReadConfig(min_foreground=-1.0, **kwargs))


def test_png_export_reads_back_with_labels_splits_groups(tmp_path):
    s = labelled_set()
    export_imageset(s, tmp_path / "out", "png", provenance={"generator": "test"})
    back = read_sorted(tmp_path / "out")
    assert back.class_names == ("no lesion", "lesion")
    assert np.array_equal(back.labels, s.labels)
    assert list(back.splits) == list(s.splits) and list(back.groups) == list(s.groups)
    assert np.allclose(back.images, s.images, atol=1e-6)
    assert json.loads((tmp_path / "out" / "provenance.json").read_text())["generator"] == "test"
    assert (tmp_path / "out" / "test" / "lesion" / "00005.png").is_file()


def test_16bit_png_keeps_original_units(tmp_path):
    s = labelled_set()
    export_imageset(s, tmp_path / "out", "png", bit_depth=16)
    from PIL import Image

    stored = np.asarray(Image.open(tmp_path / "out" / "train" / "no lesion" / "00000.png"))
    assert stored.dtype == np.uint16
    assert np.allclose(stored, s.to_original_units([0])[0, 0], atol=0.5)


def test_16bit_png_refuses_negative_units(tmp_path):
    ct = ImageSet.from_arrays(np.full((1, 1, 4, 4), -1.0), intensity_range=(-1000.0, 1000.0),
                              unit="HU")
    with pytest.raises(InputError, match="outside 16-bit"):
        export_imageset(ct, tmp_path / "out", "png", bit_depth=16)
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.iterdir())  # no partial folder left behind


def test_npz_export_is_medmnist_layout(tmp_path):
    s = labelled_set(channels=3)
    export_imageset(s, tmp_path / "out", "npz")
    with np.load(tmp_path / "out" / "images.npz") as archive:
        assert archive["train_images"].shape == (4, 12, 12, 3)
        assert archive["train_images"].dtype == np.uint8
        assert archive["test_labels"].shape == (2, 1)
        assert list(archive["class_names"]) == ["no lesion", "lesion"]
    back = read_images(tmp_path / "out")
    assert np.allclose(back.images, s.images, atol=1e-6)
    assert back.class_names == s.class_names and list(back.splits) == list(s.splits)


@pytest.mark.parametrize("channels", [1, 3])
def test_16bit_npz_holds_uint16_original_units_and_reads_back(tmp_path, channels):
    s = labelled_set(channels=channels)
    export_imageset(s, tmp_path / "out", "npz", bit_depth=16)
    original = np.rint(s.to_original_units())  # (N, C, H, W) in 0 .. 4095
    with np.load(tmp_path / "out" / "images.npz") as archive:
        stored = archive["train_images"]  # (N, H, W) or (N, H, W, 3), MedMNIST's layout
    assert stored.dtype == np.uint16 and stored.shape == (4, 12, 12, 3)[:3 if channels == 1 else 4]
    assert np.array_equal(stored.reshape(4, 12, 12, channels), np.moveaxis(original[:4], 1, -1))
    back = read_images(tmp_path / "out")
    assert np.abs(back.images).max() <= 1 and back.unit == "a.u."
    assert np.allclose(back.to_original_units(), original, atol=1e-3)


def test_16bit_npz_refuses_values_outside_16_bits(tmp_path):
    ct = ImageSet.from_arrays(np.linspace(-1, 1, 16).reshape(1, 1, 4, 4),
                              intensity_range=(-1000.0, 1000.0), unit="HU")
    with pytest.raises(InputError, match=r"span -1000\.\.1000 HU, outside 16-bit npz's"):
        export_imageset(ct, tmp_path / "out", "npz", bit_depth=16)


@pytest.mark.parametrize("format_", ["dicom", "nifti"])
def test_volume_formats_read_back_in_original_units(tmp_path, format_):
    s = labelled_set()
    export_imageset(s, tmp_path / "out", format_)
    back = read_sorted(tmp_path / "out")
    assert np.array_equal(back.labels, s.labels)
    # percentile normalisation clips the extremes: the darkest tissue to TISSUE_FLOOR
    unclipped = (back.images > np.float32(TISSUE_FLOOR)) & (back.images < 1)
    assert unclipped.sum() > 0.9 * 64 * len(s)
    assert np.allclose(back.to_original_units()[unclipped], s.to_original_units()[unclipped],
                       atol=1.0)


def test_existing_output_is_refused_and_kept(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "earlier.txt").write_text("earlier result")
    with pytest.raises(InputError, match="already exists"):
        export_imageset(labelled_set(), out, "png")
    assert (out / "earlier.txt").read_text() == "earlier result"


def test_overwrite_replaces_the_folder_whole(tmp_path):
    out = tmp_path / "out"
    export_imageset(labelled_set(6), out, "png")
    export_imageset(labelled_set(4), out, "png", overwrite=True)
    assert len(read_images(out)) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_failure_mid_export_leaves_earlier_output_untouched(tmp_path, monkeypatch):
    out = tmp_path / "out"
    export_imageset(labelled_set(6), out, "png")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export, "write_manifest", fail)
    with pytest.raises(OSError):
        export_imageset(labelled_set(4), out, "png", overwrite=True)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_dir_in_unwritable_place_gives_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises((InputError, OSError)), atomic_output_dir(blocker / "out"):
        pass


def test_class_names_become_safe_folder_names():
    s = ImageSet.from_arrays(np.zeros((1, 1, 2, 2)), labels=[0], class_names=["a/b: c"])
    assert export.file_names(s, ".png") == ["a_b_ c/00000.png"]

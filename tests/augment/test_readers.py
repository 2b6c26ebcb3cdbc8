"""Readers: pictures (ImageFolder layout, 8/16-bit, RGB), MedMNIST npz, CSV manifests, globs,
resize / channels, and bad input."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from synthmed.augment.items import ReadConfig
from synthmed.augment.readers import read_images
from synthmed.errors import InputError
from tests.conftest import real_file


def write_png(path, array) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture
def image_folder(tmp_path):
    """``train/{cat,dog}`` and ``test/{cat,dog}``, 8-bit grayscale 16x16."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 3), ("test", 2)):
        for label in ("cat", "dog"):
            for k in range(count):
                write_png(tmp_path / "data" / split / label / f"{k}.png",
                          rng.integers(0, 256, (16, 16), dtype=np.uint8))
    return tmp_path / "data"


def test_image_folder_layout_gives_classes_and_splits(image_folder):
    s = read_images(image_folder)
    assert s.images.shape == (10, 1, 16, 16)
    assert s.class_names == ("cat", "dog")
    assert s.class_counts() == {0: 5, 1: 5}
    assert sorted(set(s.splits)) == ["test", "train"]
    assert (s.splits == "train").sum() == 6


def test_8bit_pixels_map_exactly_to_model_space(tmp_path):
    pixels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    write_png(tmp_path / "a.png", pixels)
    s = read_images(tmp_path / "a.png")
    assert s.unit == "uint8"
    assert np.allclose(s.images[0, 0], pixels / 127.5 - 1.0, atol=1e-6)
    assert np.allclose(s.to_original_units()[0, 0], pixels, atol=1e-4)


def test_16bit_pictures_keep_relative_intensities(tmp_path):
    low = np.full((8, 8), 1000, np.uint16)
    high = np.full((8, 8), 3000, np.uint16)
    high[0, 0] = 5000
    write_png(tmp_path / "x" / "low.png", low)
    write_png(tmp_path / "x" / "high.png", high)
    s = read_images(tmp_path / "x")
    original = s.to_original_units()
    by_name = dict(zip([src.rsplit("/", 1)[-1] for src in s.sources], original, strict=True))
    assert np.allclose(by_name["low.png"], low, atol=0.5)
    assert np.allclose(by_name["high.png"], high, atol=0.5)
    assert s.intensity_low[0] == 1000 and s.intensity_high[0] == 5000


def write_png16(path, samples: np.ndarray) -> None:
    """A 16-bit PNG of ``samples`` ``(H, W, C)`` (C = 2: gray + alpha, 3: RGB, 4: RGBA), which
    Pillow cannot write; row ``y`` uses PNG filter ``y % 5``, so every filter is undone."""
    height, width, channels = samples.shape
    step = 2 * channels  # bytes per pixel
    data = samples.astype(">u2").reshape(height, -1).view(np.uint8).astype(np.int32)
    rows = []
    for y, raw in enumerate(data):
        up = data[y - 1] if y else np.zeros_like(raw)
        left = np.concatenate([np.zeros(step, np.int32), raw[:-step]])
        up_left = np.concatenate([np.zeros(step, np.int32), up[:-step]])
        guess = left + up - up_left
        paeth = np.where((abs(guess - left) <= abs(guess - up))
                         & (abs(guess - left) <= abs(guess - up_left)), left,
                         np.where(abs(guess - up) <= abs(guess - up_left), up, up_left))
        kind = y % 5  # none, sub, up, average, paeth
        predicted = [0 * raw, left, up, (left + up) // 2, paeth][kind]
        rows.append(bytes([kind]) + ((raw - predicted) % 256).astype(np.uint8).tobytes())

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(
            ">I", zlib.crc32(kind + body))

    color_type = {2: 4, 3: 2, 4: 6}[channels]
    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(b"".join(rows))) + chunk(b"IEND", b""))


@pytest.mark.parametrize("channels", [2, 3, 4])
def test_16bit_colour_png_keeps_its_16_bits(tmp_path, channels):
    samples = np.random.default_rng(channels).integers(0, 65536, (7, 9, channels), np.uint16)
    if channels in (2, 4):
        samples[..., -1] = 65535  # opaque alpha: dropped
    write_png16(tmp_path / "deep" / "a.png", samples)
    s = read_images(tmp_path / "deep")
    colour = samples[..., :1] if channels == 2 else samples[..., :3]
    assert s.images.shape == (1, colour.shape[-1], 7, 9)
    assert s.metadata["bit_depths"] == [16] and s.unit == "a.u."
    assert (s.intensity_low[0], s.intensity_high[0]) == (colour.min(), colour.max())
    assert np.allclose(s.to_original_units()[0], np.moveaxis(colour, -1, 0), atol=0.01)


@pytest.mark.parametrize("bits", [8, 16])
def test_pictures_with_transparent_pixels_are_refused(tmp_path, bits):
    rgba = np.random.default_rng(0).integers(0, 2**bits, (6, 6, 4)).astype(f"uint{bits}")
    rgba[..., 3] = 2**bits - 1
    rgba[0, :3, 3] = 0  # three transparent pixels
    path, write = tmp_path / "a.png", write_png16 if bits == 16 else write_png
    write(path, rgba)
    with pytest.raises(InputError, match=r"a\.png: 8\.3% of its pixels are transparent"):
        read_images(path)
    rgba[0, :3, 3] = 2**bits - 1
    write(path, rgba)
    assert np.allclose(read_images(path).to_original_units()[0],
                       np.moveaxis(rgba[..., :3], -1, 0), atol=0.01)


def test_pictures_that_are_all_constant_are_refused(tmp_path):
    for name, value in (("a", 0), ("b", 200)):
        write_png(tmp_path / "blank" / f"{name}.png", np.full((8, 8), value, np.uint8))
    with pytest.raises(InputError, match="blank: all 2 images are constant"):
        read_images(tmp_path / "blank")
    with pytest.raises(InputError, match=r"a\.png: the image is constant"):
        read_images(tmp_path / "blank" / "a.png")
    write_png(tmp_path / "blank" / "c.png", np.eye(8, dtype=np.uint8))
    assert len(read_images(tmp_path / "blank")) == 3  # one varying image: the set is kept


def test_rgb_with_equal_channels_reads_as_grayscale(tmp_path):
    gray = np.random.default_rng(0).integers(0, 256, (12, 12), dtype=np.uint8)
    write_png(tmp_path / "rgb.png", np.stack([gray] * 3, -1))
    colour = np.stack([gray, gray[::-1], gray], -1)
    write_png(tmp_path / "colour" / "c.png", colour)
    assert read_images(tmp_path / "rgb.png").channels == 1
    assert read_images(tmp_path / "colour").channels == 3
    assert read_images(tmp_path / "colour", ReadConfig(channels=1)).channels == 1
    assert read_images(tmp_path / "rgb.png", ReadConfig(channels=3)).channels == 3


def test_tiff_and_jpeg_are_read(tmp_path):
    pixels = np.random.default_rng(1).integers(0, 256, (10, 10), dtype=np.uint8)
    write_png(tmp_path / "a.tif", pixels)
    write_png(tmp_path / "b.jpg", pixels)
    assert np.allclose(read_images(tmp_path / "a.tif").images[0, 0], pixels / 127.5 - 1, atol=1e-6)
    assert read_images(tmp_path / "b.jpg").images.shape == (1, 1, 10, 10)


@pytest.mark.parametrize("mode, expected", [("resize", 0.0), ("pad", -1.0), ("fit", -1.0)])
def test_resize_modes(tmp_path, mode, expected):
    wide = np.full((8, 16), 128, np.uint8)
    wide[-1, -1] = 0  # not constant
    write_png(tmp_path / "wide.png", wide)
    s = read_images(tmp_path / "wide.png", ReadConfig(size=16, resize_mode=mode))
    assert s.images.shape == (1, 1, 16, 16)
    assert s.images[0, 0, 0, 8] == pytest.approx(expected, abs=0.01)  # top row: image or padding
    assert s.images[0, 0, 8, 8] == pytest.approx(0.0039, abs=0.01)  # center: the image


def test_mixed_sizes_need_size_option(tmp_path):
    write_png(tmp_path / "d" / "a.png", np.eye(8, dtype=np.uint8))
    write_png(tmp_path / "d" / "b.png", np.eye(9, 8, dtype=np.uint8))
    with pytest.raises(InputError, match=r"b\.png: is 9x8.*--size"):
        read_images(tmp_path / "d")
    assert read_images(tmp_path / "d", ReadConfig(size=8)).images.shape == (2, 1, 8, 8)


def test_glob_pattern_reads_matching_files(image_folder):
    s = read_images(str(image_folder / "train" / "*" / "0.png"))
    assert len(s) == 2 and s.class_names == ("cat", "dog")


# -- manifests ------------------------------------------------------------------------------


def test_csv_manifest_with_labels_splits_groups(image_folder, tmp_path):
    csv = tmp_path / "m.csv"
    csv.write_text(
        "path,label,split,group,modality\n"
        f"{image_folder}/train/cat/0.png,0,training,p1,MR\n"
        f"{image_folder}/train/dog/0.png,1,validation,p2,MR\n"
        f"{image_folder}/test/dog/1.png,1,test,p3,MR\n"
    )
    s = read_images(csv)
    assert list(s.labels) == [0, 1, 1]
    assert list(s.splits) == ["train", "val", "test"]
    assert list(s.groups) == ["p1", "p2", "p3"] and s.modality == "MR"


def test_manifest_paths_are_relative_to_the_csv_and_may_hold_spaces(tmp_path):
    write_png(tmp_path / "ümlaut dir" / "scan one.png", np.eye(4, dtype=np.uint8))
    (tmp_path / "labels.csv").write_text("path,label\nümlaut dir/scan one.png,tumour\n",
                                         encoding="utf-8")
    s = read_images(tmp_path / "labels.csv")
    assert s.class_names == ("tumour",) and len(s) == 1


@pytest.mark.parametrize("body, problem", [
    ("file,label\na.png,0\n", "lacks column"),
    ("path,label\nmissing.png,0\n", "not found"),
    ("path,label\na.png,0.5\n", "neither a class index"),
    ("path,label\na.png,0\nb.png,tumour\n", "is a name while other labels are class indices"),
    ("path,label\na.png,-1\n", "neither a class index"),
])
def test_bad_manifests_name_the_problem(tmp_path, body, problem):
    write_png(tmp_path / "a.png", np.zeros((4, 4), np.uint8))
    write_png(tmp_path / "b.png", np.zeros((4, 4), np.uint8))
    (tmp_path / "m.csv").write_text(body)
    with pytest.raises(InputError, match=problem):
        read_images(tmp_path / "m.csv")


# -- npz ------------------------------------------------------------------------------------


def test_npz_keeps_splits_and_flattens_labels(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "toy.npz",
             train_images=rng.integers(0, 256, (5, 6, 6), dtype=np.uint8),
             train_labels=np.array([[0], [1], [2], [1], [0]], np.uint8),
             test_images=rng.integers(0, 256, (2, 6, 6), dtype=np.uint8),
             test_labels=np.array([[2], [0]], np.uint8))
    s = read_images(tmp_path / "toy.npz")
    assert s.images.shape == (7, 1, 6, 6)
    assert list(s.labels) == [0, 1, 2, 1, 0, 2, 0]
    assert list(s.splits) == ["train"] * 5 + ["test"] * 2
    assert s.class_names == ("0", "1", "2")


@pytest.mark.parametrize("arrays, problem", [
    ({"x": np.zeros(3)}, "no train_images"),
    ({"train_images": np.zeros((3, 4, 4), np.uint8), "train_labels": np.zeros((2, 1))},
     "2 labels for 3 images"),
    ({"train_images": np.zeros((2, 4, 4), np.uint8), "train_labels": np.zeros((2, 14))},
     "multi-label"),
    ({"train_images": np.full((1, 4, 4), np.nan), "train_labels": np.zeros((1, 1))},
     "NaN or infinite"),
    ({"train_images": np.zeros((2, 4), np.uint8), "train_labels": np.zeros((2, 1))},
     "expected"),
])
def test_bad_npz_files_name_the_problem(tmp_path, arrays, problem):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(InputError, match=problem) as error:
        read_images(tmp_path / "bad.npz")
    assert "bad.npz" in str(error.value)


def test_breastmnist_counts_match_the_data_readme(shared_data):
    s = read_images(real_file(shared_data, "medmnist/breastmnist.npz"))
    assert s.class_names == ("malignant", "normal, benign")
    counts = {split: s.split(split).class_counts() for split in ("train", "val", "test")}
    assert counts == {"train": {0: 147, 1: 399}, "val": {0: 21, 1: 57}, "test": {0: 42, 1: 114}}
    assert s.images.shape[1:] == (1, 28, 28)


def test_retinamnist_is_rgb_with_five_grades(shared_data):
    s = read_images(real_file(shared_data, "medmnist/retinamnist.npz"))
    assert s.images.shape == (1600, 3, 28, 28)
    assert [len(s.split(x)) for x in ("train", "val", "test")] == [1080, 120, 400]
    assert set(s.labels.tolist()) == {0, 1, 2, 3, 4}


# -- bad input ------------------------------------------------------------------------------


def test_missing_path_and_empty_folder(tmp_path):
    with pytest.raises(InputError, match="no such file or folder"):
        read_images(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no image files found"):
        read_images(tmp_path / "empty")


def test_non_image_file_in_image_folder_and_skip_bad(image_folder):
    (image_folder / "train" / "cat" / "notes.txt").write_text("not an image")
    (image_folder / "train" / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(InputError, match=r"notes\.txt: not a supported image file"):
        read_images(image_folder)
    s = read_images(image_folder, ReadConfig(skip_bad=True))
    assert len(s) == 10
    skipped = {entry["path"].rsplit("/", 1)[-1] for entry in s.metadata["skipped"]}
    assert skipped == {"notes.txt", "broken.png"}


def test_truncated_picture_names_the_file(tmp_path):
    write_png(tmp_path / "full.png", np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8))
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"cut\.png: not a readable picture"):
        read_images(tmp_path / "cut.png")


def test_nan_pixels_in_a_float_tiff(tmp_path):
    pixels = np.ones((4, 4), np.float32)
    pixels[1, 1] = np.nan
    Image.fromarray(pixels).save(tmp_path / "nan.tif")
    with pytest.raises(InputError, match=r"nan\.tif: 1 pixel\(s\) are NaN"):
        read_images(tmp_path / "nan.tif")


def test_unknown_format_is_refused(tmp_path):
    with pytest.raises(InputError, match="unknown format"):
        read_images(tmp_path, ReadConfig(format="jpeg2000"))

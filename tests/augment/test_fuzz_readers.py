"""The readers against hostile input (hypothesis): random bytes under every suffix, truncated
files, DICOM headers that disagree with their pixels, odd sizes, empty series, broken npz
archives and CSV manifests, through ``read_images`` and ``synthmed data inspect``.

Every input either loads correctly or raises one :class:`InputError` whose one-line message
names the file: no other exception escapes, no read hangs, no image comes back wrong.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import signal
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from click.testing import CliRunner
from hypothesis import example, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydicom.data import get_testdata_file

from synthmed.augment.dataset import ImageSet
from synthmed.augment.items import ReadConfig
from synthmed.augment.readers import read_images
from synthmed.cli import cli
from synthmed.errors import InputError

CT = Path(get_testdata_file("CT_small.dcm"))
MR = Path(get_testdata_file("MR_small.dcm"))
FUZZ = settings(max_examples=100, deadline=None)
HANG_SECONDS = 30
SUFFIXES = (".dcm", ".nii", ".nii.gz", ".png", ".jpg", ".tif", ".npz", ".csv")
# Each format's first bytes, so that random bodies get past the sniffing into the decoders.
MAGIC = (b"", b"\0" * 128 + b"DICM", b"\x5c\x01\0\0", b"\x1f\x8b\x08", b"\x89PNG\r\n\x1a\n",
         b"\xff\xd8\xff", b"II*\0", b"PK\x03\x04", b"path,label\n")
GRAY = np.random.default_rng(0).integers(0, 256, (12, 10), dtype=np.uint8)
SPLITS = ("train", "val", "test")

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom, PIL on broken files


class Hung(BaseException):
    """A read took longer than HANG_SECONDS (a BaseException, so no reader can swallow it)."""


def _hung(signum: int, frame: object) -> None:
    raise Hung(f"reading took more than {HANG_SECONDS} s")


@contextlib.contextmanager
def folder() -> Iterator[Path]:
    """A fresh temporary folder per hypothesis example."""
    with tempfile.TemporaryDirectory() as name:
        yield Path(name)


def read(path: Path, config: ReadConfig | None = None, names: Path | None = None
         ) -> ImageSet | InputError:
    """``read_images(path)``: the images, or the InputError it raised, whose one line must name
    ``names`` (default: ``path``). Any other exception, or a read longer than HANG_SECONDS,
    fails the test."""
    previous = signal.signal(signal.SIGALRM, _hung)
    signal.alarm(HANG_SECONDS)
    try:
        return read_images(path, config)
    except InputError as error:
        message = str(error)
        assert str(names or path) in message and "\n" not in message and error.problem, message
        return error
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def assert_sane(s: ImageSet) -> None:
    """What every loaded set must be, whatever the input: finite model-space images."""
    assert s.images.ndim == 4 and s.images.dtype == np.float32 and s.images.size
    assert np.isfinite(s.images).all() and np.abs(s.images).max() <= 1.0
    assert len(s.labels) == len(s.sources) == len(s.images)


# -- valid files to damage ---------------------------------------------------------------------


def _picture(array: np.ndarray, format: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format)
    return buffer.getvalue()


def _npz(save: Callable[..., None], **arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    save(buffer, **arrays)
    return buffer.getvalue()


@cache
def valid_files() -> dict[str, bytes]:
    """One small valid file per format and flavour, written by the usual tools."""
    volume = np.zeros((8, 8, 4), np.float32)
    volume[2:6, 2:6] = 1.0 + GRAY[:4, :4, None]
    nifti = nib.Nifti1Image(volume, np.eye(4)).to_bytes()
    medmnist = {"train_images": np.stack([GRAY, GRAY[::-1]]),
                "train_labels": np.array([[0], [1]], np.uint8)}
    return {
        "scan.dcm": CT.read_bytes(),
        "volume.nii": nifti,
        "volume.nii.gz": gzip.compress(nifti),
        "gray.png": _picture(GRAY, "PNG"),
        "deep.png": _picture(GRAY.astype(np.uint16) * 200, "PNG"),
        "colour.jpg": _picture(np.stack([GRAY, GRAY[::-1], GRAY[:, ::-1]], -1), "JPEG"),
        "gray.tif": _picture(GRAY, "TIFF"),
        "images.npz": _npz(np.savez, **medmnist),
        "packed.npz": _npz(np.savez_compressed, **medmnist),
    }


@cache
def whole_images(name: str) -> np.ndarray:
    with folder() as root:
        (root / name).write_bytes(valid_files()[name])
        return read_images(root / name).images


# -- random bytes and truncated files ----------------------------------------------------------


@FUZZ
@given(suffix=st.sampled_from(SUFFIXES), magic=st.sampled_from(MAGIC),
       body=st.binary(max_size=3000))
def test_random_bytes_under_any_suffix_raise_one_input_error(suffix, magic, body):
    with folder() as root:
        path = root / f"random{suffix}"
        path.write_bytes(magic + body)
        s = read(path)
    if isinstance(s, ImageSet):  # bytes that happen to decode must still give images
        assert_sane(s)


@FUZZ
@given(name=st.sampled_from(sorted(valid_files())), cut=st.integers(0, 2**20))
@example(name="volume.nii", cut=352)  # the header alone, not one voxel
@example(name="scan.dcm", cut=39000)  # inside the pixel data
def test_truncated_file_gives_the_same_images_or_one_input_error(name, cut):
    data = valid_files()[name]
    with folder() as root:
        path = root / name
        path.write_bytes(data[: cut % len(data)])
        s = read(path)
    if isinstance(s, ImageSet):  # only what the image does not need was cut (a PNG's end ...)
        assert np.array_equal(s.images, whole_images(name))


ZIP_DIRECTORY = valid_files()["images.npz"].find(b"PK\x01\x02")  # its first entry


@FUZZ
@given(name=st.sampled_from(sorted(valid_files())),
       at=st.integers(0, 400) | st.integers(0, 2**20),  # in the header half the time
       junk=st.binary(min_size=1, max_size=16))
@example(name="volume.nii", at=42, junk=b"\xff\xff")  # a negative size
@example(name="volume.nii", at=108, junk=struct.pack("<f", 1e30))  # voxels far past the end
@example(name="volume.nii", at=116, junk=struct.pack("<f", 1e30))  # every voxel 1e30
@example(name="volume.nii.gz", at=10, junk=b"\xff\xff\xff\xff")  # bad deflate block
@example(name="packed.npz", at=100, junk=b"\xff\xff")  # bad deflate data in an array
@example(name="images.npz", at=ZIP_DIRECTORY + 6, junk=b"\xff")  # unknown zip version
@example(name="images.npz", at=ZIP_DIRECTORY + 8, junk=b"\x01")  # "encrypted"
@example(name="images.npz", at=ZIP_DIRECTORY + 8, junk=b"\x20")  # "compressed patched data"
def test_file_with_overwritten_bytes_loads_or_raises_one_input_error(name, at, junk):
    data = bytearray(valid_files()[name])
    at %= len(data)
    data[at : at + len(junk)] = junk
    with folder() as root:
        (root / name).write_bytes(bytes(data))
        s = read(root / name)
    if isinstance(s, ImageSet):  # damaged pixels are still pixels; the rest must hold
        assert_sane(s)


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` pixels, with almost no data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(bytes(100))) + chunk(b"IEND", b""))


def _nifti_claiming(shape: tuple[int, ...]) -> bytes:
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.float32)
    return header.binaryblock + bytes(4 + 1000)


def _npz_claiming(shape: tuple[int, ...]) -> bytes:
    npy = io.BytesIO()
    np.lib.format.write_array_header_1_0(npy, {"descr": "|u1", "fortran_order": False,
                                               "shape": shape})
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("train_images.npy", npy.getvalue() + bytes(100))
    return archive.getvalue()


@pytest.mark.parametrize("name, data", [
    ("bomb.png", _png_claiming(100_000, 100_000)),
    ("huge.nii", _nifti_claiming((10_000, 10_000, 10_000))),
    ("huge.nii.gz", gzip.compress(_nifti_claiming((10_000, 10_000, 10_000)))),
    ("huge.npz", _npz_claiming((10**6, 10**4, 10**4))),
], ids=["png", "nii", "nii.gz", "npz"])
def test_header_claiming_more_than_fits_in_memory_is_refused(name, data):
    with folder() as root:
        (root / name).write_bytes(data)
        assert isinstance(read(root / name), InputError)


@pytest.mark.parametrize("name", ["huge.tif", "huge.npz", "huge.nii"])
def test_constant_image_of_huge_values_is_refused_in_one_line(name):
    values = np.full((4, 4), 1e30, np.float32)  # 1e30 + 1 == 1e30: no unit-wide range
    with folder() as root:
        path = root / name
        if name.endswith(".tif"):
            Image.fromarray(values).save(path)
        elif name.endswith(".npz"):
            np.savez(path, train_images=values[None])
        else:
            nib.save(nib.Nifti1Image(values[:, :, None], np.eye(4)), path)
        s = read(path)
    assert isinstance(s, InputError) and "constant" in s.problem


def test_constant_foreground_of_huge_values_loads_finite():
    volume = np.zeros((6, 6, 2), np.float32)
    volume[1:5, 1:5] = 1e30  # foreground percentiles: no unit-wide range
    with folder() as root:
        nib.save(nib.Nifti1Image(volume, np.eye(4)), root / "huge.nii")
        s = read(root / "huge.nii")
    assert isinstance(s, ImageSet)
    assert_sane(s)
    assert np.allclose(s.to_original_units()[:, 0, 1:5, 1:5], 1e30)


@pytest.mark.parametrize("name", ["volume.nii.gz", "gray.png", "scan.dcm"])
def test_truncated_file_in_a_folder_is_named(name):
    with folder() as root:
        (root / "scans").mkdir()
        data = valid_files()[name]
        (root / "scans" / name).write_bytes(data[: len(data) // 2])
        assert isinstance(read(root / "scans", names=root / "scans" / name), InputError)


# -- DICOM ----------------------------------------------------------------------------------


@cache
def ct_hu() -> np.ndarray:
    ds = pydicom.dcmread(CT)
    return ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


@FUZZ
@given(keyword=st.sampled_from(["Rows", "Columns", "BitsAllocated", "NumberOfFrames",
                                "SamplesPerPixel"]),
       value=st.integers(0, 65535))
@example(keyword="Rows", value=127)  # one row short: the rest is padding, as pydicom says
@example(keyword="Rows", value=100)
@example(keyword="Rows", value=64)  # twice the frames
@example(keyword="Columns", value=1)
@example(keyword="BitsAllocated", value=8)
@example(keyword="NumberOfFrames", value=2)
def test_dicom_header_that_disagrees_with_its_pixels_is_refused(keyword, value):
    ds = pydicom.dcmread(CT)
    setattr(ds, keyword, value)
    with folder() as root:
        path = root / "scan.dcm"
        ds.save_as(path)
        s = read(path, ReadConfig(window="0,100000"))  # wide: no value clips
    if isinstance(s, ImageSet):  # the header's image: at most one row of padding left out
        rows, columns = int(ds.Rows), int(ds.Columns)
        assert s.images.shape == (1, 1, rows, columns)
        hu = ct_hu().ravel()
        assert rows * columns >= hu.size - columns
        assert np.allclose(s.to_original_units()[0, 0].ravel(), hu[: rows * columns], atol=0.05)


def _without(keyword: str) -> Callable[[pydicom.Dataset], None]:
    def damage(ds: pydicom.Dataset) -> None:
        delattr(ds, keyword)
    return damage


def _with(**values: object) -> Callable[[pydicom.Dataset], None]:
    def damage(ds: pydicom.Dataset) -> None:
        for keyword, value in values.items():
            setattr(ds, keyword, value)
    return damage


def _transfer_syntax(uid: str) -> Callable[[pydicom.Dataset], None]:
    def damage(ds: pydicom.Dataset) -> None:
        ds.file_meta.TransferSyntaxUID = uid
    return damage


@pytest.mark.parametrize("damage, problem", [
    (_without("PixelData"), "has no pixel data"),
    (_with(PixelData=b""), "has no pixel data"),
    (_without("Rows"), "Rows"),
    (_without("BitsAllocated"), "Bits Allocated"),
    (_with(BitsAllocated=12), "Bits Allocated"),
    (_with(PhotometricInterpretation="PALETTE COLOR"), "PALETTE COLOR"),
    (_with(RescaleSlope="nan"), "NaN"),
    (_with(WindowCenter="inf", WindowWidth="100"), None),  # a window that is no window
    (_with(WindowCenter="40", WindowWidth="nan"), None),
    (_with(WindowCenter="1e30", WindowWidth="100"), None),  # 1e30 - 50 == 1e30 + 50
    (_with(NumberOfFrames=0), None),
    (_transfer_syntax("1.2.3\n4"), r"('1.2.3\n4') is not supported"),
], ids=["no PixelData", "empty PixelData", "no Rows", "no BitsAllocated", "12 bits allocated",
        "palette", "NaN slope", "infinite window", "NaN window width", "zero-width window",
        "0 frames", "transfer syntax with a line break"])
def test_damaged_dicom_headers(damage, problem):
    ds = pydicom.dcmread(CT)
    damage(ds)
    with folder() as root:
        path = root / "scan.dcm"
        ds.save_as(path)
        s = read(path)
    if problem is not None:
        assert isinstance(s, InputError) and problem in str(s)
    else:  # read as if the value were absent (no window: the image's percentiles map it)
        assert isinstance(s, ImageSet)
        assert_sane(s)
        assert s.images.shape == (1, 1, 128, 128) and s.images.min() == -1 < s.images.max()


@FUZZ
@given(short=st.integers(1, 4), long=st.integers(1, 5000), tall=st.booleans(),
       bits=st.sampled_from([8, 16]))
@example(short=1, long=1, tall=False, bits=16)
@example(short=1, long=5000, tall=False, bits=16)
@example(short=1, long=5000, tall=True, bits=8)
def test_dicom_of_odd_sizes_loads_exactly(short, long, tall, bits):
    shape = (long, short) if tall else (short, long)
    dtype = np.uint8 if bits == 8 else np.uint16
    pixels = np.random.default_rng(long).integers(0, 2**bits - 1, shape).astype(dtype)
    ds = pydicom.dcmread(MR)
    ds.set_pixel_data(pixels, "MONOCHROME2", bits)
    with folder() as root:
        ds.save_as(root / "odd.dcm")
        s = read(root / "odd.dcm", ReadConfig(percentiles=(0.0, 100.0)))
    if pixels.min() == pixels.max():  # a 1x1 image: constant
        assert isinstance(s, InputError) and "constant" in s.problem
        return
    assert isinstance(s, ImageSet) and s.images.shape == (1, 1, *shape)
    assert np.allclose(s.to_original_units()[0, 0], pixels, atol=0.01)


def _no_pixels() -> bytes:
    ds = pydicom.dcmread(CT)
    del ds.PixelData
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


UNUSABLE = {"empty.dcm": b"", ".hidden.dcm": CT.read_bytes(), "DICOMDIR": b"index",
            "series.json": b"{}", "notes.txt": b"not an image", "random.dcm": b"\0" * 300}


@FUZZ
@given(names=st.lists(st.sampled_from([*UNUSABLE, "header-only.dcm"]), unique=True, max_size=4),
       skip_bad=st.booleans())
def test_series_folder_without_one_usable_file_is_refused(names, skip_bad):
    with folder() as root:
        series = root / "series"
        series.mkdir()
        for name in names:
            (series / name).write_bytes(UNUSABLE.get(name) or _no_pixels())
        assert isinstance(read(series, ReadConfig(skip_bad=skip_bad)), InputError)


# -- npz ------------------------------------------------------------------------------------


# Damages to one array of a valid MedMNIST layout ("missing": the key is left out).
NPZ_DAMAGES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "one more": lambda a: np.concatenate([a, a[:1]]),
    "one fewer": lambda a: a[1:],
    "flat": lambda a: a.reshape(-1),
    "extra axis": lambda a: a[..., None],
    "no width": lambda a: a[..., :0],
    "bool": lambda a: a.astype(bool),
    "text": lambda a: a.astype(str),
    "minus one": lambda a: a - 1 if a.dtype.kind in "iuf" else a,
}


@st.composite
def npz_arrays(draw: st.DrawFn) -> dict[str, np.ndarray]:
    """A MedMNIST layout (splits of uint8 or wider images, labels, maybe class names) with up to
    two damages: a key missing, a count, shape, type or value off."""
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 3)),
             *draw(st.sampled_from([(), (1,), (3,)])))
    arrays = {}
    for split in draw(st.lists(st.sampled_from(SPLITS), min_size=1, unique=True)):
        n = draw(st.integers(0, 3))
        values = np.arange(n * int(np.prod(shape))) * 37 % 256
        dtype = draw(st.sampled_from(["uint8", "uint8", "float32", "int16"]))
        arrays[f"{split}_images"] = values.reshape(n, *shape).astype(dtype)
        labels = draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))
        arrays[f"{split}_labels"] = np.array(labels, np.int64).reshape(n, 1)
    if draw(st.booleans()):
        names = draw(st.lists(st.sampled_from(["benign", "malignant", "normal"]), min_size=1,
                              max_size=3, unique=True))
        arrays["class_names"] = np.array(names)
    for damage in draw(st.lists(st.sampled_from(["missing", *NPZ_DAMAGES]), max_size=2)):
        key = draw(st.sampled_from(sorted(arrays)))
        if damage == "missing":
            del arrays[key]
        else:
            arrays[key] = NPZ_DAMAGES[damage](arrays[key])
    return arrays


@FUZZ
@given(arrays=npz_arrays())
@example(arrays={"train_images": np.zeros((2, 4, 4), np.uint8), "val_labels": np.zeros((2, 1))})
@example(arrays={"train_images": np.zeros((2, 0, 4), np.uint8)})
@example(arrays={"train_images": np.zeros((1, 4, 4), np.uint8), "train_labels": np.array([3]),
                 "class_names": np.array(["a", "a", "b", "a"])})
@example(arrays={"train_images": np.zeros((1, 4, 4), np.uint8),
                 "train_labels": np.array([10**9])})
def test_npz_with_missing_keys_or_wrong_labels_loads_exactly_or_is_refused(arrays):
    with folder() as root:
        np.savez(root / "fuzz.npz", **arrays)
        s = read(root / "fuzz.npz")
    if isinstance(s, InputError):
        return
    present = [split for split in SPLITS if f"{split}_images" in arrays]
    originals = [image for split in present for image in arrays[f"{split}_images"]]
    assert list(s.splits) == [split for split in present for _ in arrays[f"{split}_images"]]
    for index, original in enumerate(originals):
        channels_first = original[None] if original.ndim == 2 else np.moveaxis(original, -1, 0)
        assert np.allclose(s.to_original_units([index])[0], channels_first, atol=1e-3)
    names = [str(name) for name in arrays.get("class_names", [])]
    labels = [label for split in present
              for label in arrays.get(f"{split}_labels", np.zeros((0, 1))).reshape(-1)]
    if not labels:
        assert (s.labels == -1).all()
    for index, label in enumerate(labels):
        assert s.class_names[s.labels[index]] == (names[label] if names else str(label))


# -- CSV manifests ----------------------------------------------------------------------------


def write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def write_manifest(path: Path, rows: list[list[str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)


# File names as users make them: any letters, spaces inside, punctuation; not '/' (a folder),
# not '#' (the manifest's image index: ``file.npz#3``), no surrounding spaces (cells are
# stripped), no control characters.
NAME = (st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\#"),
                min_size=1, max_size=10)
        .map(str.strip).filter(lambda name: name not in ("", ".", "..")))
LABEL = st.sampled_from(["tumour", "Ödem", "normal tissue", "腫瘍", "grade, high"])


@FUZZ
@given(entries=st.lists(st.tuples(NAME, NAME, LABEL), min_size=1, max_size=3,
                        unique_by=lambda entry: entry[:2]))
@example(entries=[("ümlaut dir", "scan one", "tumour"), ("a b", "  c  d ", "Ödem")])
def test_manifest_paths_with_unicode_and_spaces_load(entries):
    with folder() as root:
        rows = [["path", "label"]]
        for k, (sub, name, label) in enumerate(entries):
            pixels = np.full((4, 4), 40 * k, np.uint8)
            pixels[0, 0] = 255  # not constant
            write_png(root / sub / f"{name}.png", pixels)
            rows.append([f"{sub}/{name}.png", label])
        manifest = root / "a list, ü" / "manifest.csv"
        manifest.parent.mkdir(exist_ok=True)
        write_manifest(manifest, [rows[0]] + [[f"../{path}", label] for path, label in rows[1:]])
        s = read(manifest)
    assert isinstance(s, ImageSet) and len(s) == len(entries)
    for k, (_, _, label) in enumerate(entries):
        assert np.allclose(s.to_original_units([k])[0, 0, 1:], 40 * k, atol=1e-3)
        assert s.class_names[s.labels[k]] == label


GOOD_PATHS = ["a.png", "b.png", "a.png#0", "images.npz#1"]
BAD_PATHS = ["a.png#1", "images.npz#5", "missing.png", "", "sub", "a.png#²", "a.png#x"]
NAMED = ["tumour", "normal tissue", "Ödem"]
NUMBERED = ["0", "1", "2.0", " 1 "]
BAD_LABELS = ["1.5", "-1", "²", "1e9", "NaN", "inf", ""]


@st.composite
def manifests(draw: st.DrawFn) -> list[list[str]]:
    """A header, sometimes with a wrong label column, and rows of mostly good paths and labels
    (all names or all numbers), with some missing files, bad indices and bad labels."""
    label = draw(st.sampled_from(["label"] * 6 + ["labels", "Label", ""]))
    extras = draw(st.lists(st.sampled_from(["split", "group", "class_name", "note"]),
                           unique=True, max_size=2))
    header = draw(st.permutations(["path", label, *extras]))
    good_labels = st.sampled_from(draw(st.sampled_from([NAMED, NUMBERED])))
    good_paths = st.sampled_from(GOOD_PATHS)
    cells = {"path": st.one_of(*[good_paths] * 3, st.sampled_from(BAD_PATHS)),
             label: st.one_of(*[good_labels] * 5, st.sampled_from(BAD_LABELS)),
             "split": st.sampled_from(["train", "Test", "x", ""]),
             "group": st.sampled_from(["p1", "p2", ""]),
             "class_name": st.sampled_from(["benign", "malignant", ""]),
             "note": st.text(max_size=5)}
    rows = draw(st.lists(st.tuples(*[cells[column] for column in header]), min_size=1,
                         max_size=4))
    return [header, *map(list, rows)]


def _label_name(cell: str) -> str:
    """A label cell as the class name it gives (numbers become class indices)."""
    try:
        return str(int(float(cell)))
    except (ValueError, OverflowError):
        return cell.strip()


@FUZZ
@given(rows=manifests(), skip_bad=st.booleans())
@example(rows=[["path", "labels"], ["a.png", "0"]], skip_bad=False)
@example(rows=[["path", "label"], ["missing.png", "0"], ["a.png", "0"]], skip_bad=True)
@example(rows=[["path", "label", "class_name"], ["a.png", "0", "benign"],
               ["b.png", "1", "benign"]], skip_bad=False)
@example(rows=[["path", "label", "class_name"], ["a.png", "0", ""], ["b.png", "0", "benign"],
               ["a.png#0", "2", ""]], skip_bad=False)
def test_manifest_with_missing_files_and_wrong_label_columns(rows, skip_bad):
    images = {"a.png": GRAY[:4, :4], "b.png": GRAY[4:8, :4], "images.npz#1": GRAY[8:12, :4]}
    with folder() as root:
        write_png(root / "a.png", images["a.png"])
        write_png(root / "b.png", images["b.png"])
        np.savez(root / "images.npz", train_images=np.stack([GRAY[:4, :4], images["images.npz#1"]]))
        (root / "sub").mkdir()
        write_manifest(root / "m.csv", rows)
        s = read(root / "m.csv", ReadConfig(skip_bad=skip_bad))
    if isinstance(s, InputError):
        return
    body = [dict(zip(rows[0], row, strict=True)) for row in rows[1:]]
    good = [row for row in body if row["path"].removesuffix("#0") in images]
    assert len(s) == len(good) and len(s) + len(s.metadata.get("skipped", [])) == len(body)
    named = {_label_name(row["label"]): row["class_name"] for row in good
             if _label_name(row["label"]).isdecimal() and row.get("class_name")}
    for k, row in enumerate(good):
        assert np.allclose(s.to_original_units([k])[0, 0], images[row["path"].removesuffix("#0")],
                           atol=1e-3)
        name = _label_name(row["label"])
        name = named.get(name, name)  # a class index named on any line
        assert (s.labels[k] == -1) if name == "" else (s.class_names[s.labels[k]] == name)


@FUZZ
@given(text=st.text(st.sampled_from('pathlbe,"#\n a.png0²\x00'), max_size=200))
def test_random_manifest_text_raises_one_input_error(text):
    with folder() as root:
        write_png(root / "a.png", GRAY)
        (root / "m.csv").write_text(text, encoding="utf-8")
        s = read(root / "m.csv")
    if isinstance(s, ImageSet):
        assert_sane(s)


@pytest.mark.parametrize("files, problem", [
    ({"m.csv": "path,label\nm.csv,0\n"}, "m.csv:2: file 'm.csv' is a CSV"),
    ({"m.csv": "path,label\nother.csv,0\n", "other.csv": "path,label\nm.csv,0\n"},
     "m.csv:2: file 'other.csv' is a CSV"),
    ({"m.csv": "path,label\na\0b.png,0\n"}, "m.csv:2: path holds a NUL character"),
    ({"m.csv": f"path,label\n{'x' * 5000}.png,0\n"}, "cannot be opened (File name too long)"),
    ({"m.csv": "path,label\na.png,1000000000\n"}, "neither a class index (0 .. 9999)"),
    ({"m.csv": "path,label\na.png#²,0\n"}, "no image #² in a file of 1 images"),
])
def test_manifest_traps(files, problem):
    with folder() as root:
        write_png(root / "a.png", GRAY)
        for name, text in files.items():
            (root / name).write_text(text, encoding="utf-8")
        s = read(root / "m.csv")
    assert isinstance(s, InputError) and problem in str(s)


def test_folder_named_like_a_date_is_no_class_index():
    with folder() as root:
        write_png(root / "scans" / "20240101" / "a.png", GRAY)
        s = read(root / "scans")
    assert isinstance(s, InputError) and "label 20240101 is not a class index" in str(s)


def test_a_manifest_read_with_format_csv_reads_its_files_by_their_own_format():
    with folder() as root:
        write_png(root / "a.png", GRAY)
        write_manifest(root / "m.csv", [["path", "label"], ["a.png", "tumour"]])
        s = read(root / "m.csv", ReadConfig(format="csv"))
    assert isinstance(s, ImageSet) and s.class_names == ("tumour",)


# -- the command line --------------------------------------------------------------------------


@pytest.mark.parametrize("name, data", [
    ("random.dcm", b"\0" * 128 + b"DICM" + b"\xff" * 64),
    ("cut.png", valid_files()["gray.png"][:60]),
    ("cut.nii.gz", valid_files()["volume.nii.gz"][:100]),
    ("m.csv", b"path,labels\na.png,0\n"),
], ids=["dcm", "png", "nii.gz", "csv"])
def test_cli_inspect_of_bad_input_prints_one_line_naming_the_file(name, data):
    with folder() as root:
        (root / name).write_bytes(data)
        result = CliRunner().invoke(cli, ["data", "inspect", str(root / name)])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and str(root / name) in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_cli_error_about_a_file_name_with_a_line_break_stays_one_line():
    with folder() as root:
        (root / "two\nlines.dcm").write_bytes(bytes(200))
        result = CliRunner().invoke(cli, ["data", "inspect", str(root / "two\nlines.dcm")])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert "two\\nlines.dcm: not a DICOM file" in result.output


def test_cli_inspect_reads_a_manifest_with_unicode_and_spaces():
    with folder() as root:
        write_png(root / "Bilder ü" / "scan one.png", GRAY)
        manifest = root / "liste ü.csv"
        write_manifest(manifest, [["path", "label"], ["Bilder ü/scan one.png", "Ödem"]])
        result = CliRunner().invoke(cli, ["data", "inspect", str(manifest)])
    assert result.exit_code == 0, result.output
    assert "1 images" in result.output and "Ödem" in result.output

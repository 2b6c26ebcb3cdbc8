"""DICOM in and out: :func:`read_dicom` (single files, folders, series, multi-frame files, any
transfer syntax pydicom can decode) and :func:`write_dicom` (synthetic Secondary Capture).

Reading: the Modality LUT (rescale slope / intercept) gives HU for CT, which is then windowed
(``ReadConfig.window``, else the file's own window, else percentiles); MR and other modalities
are normalised with percentiles shared by every slice and frame of a series. MONOCHROME1 images
get an inverted mapping (``low > high``) so that bright means dense in model space. Colour
images (RGB, YBR, which pydicom converts to RGB) map ``0 .. 2**BitsStored - 1`` linearly.
A grayscale file whose RescaleSlope is 0 is refused (every pixel would be the intercept).
pydicom's warnings about a file (excess padding, odd values) do not reach the terminal: they
are logged, naming the file, to the ``synthmed.augment.dicom`` logger (shown by the CLI's
``--verbose``, see :func:`synthmed.errors.show_warnings`).
"""

from __future__ import annotations

import logging
import math
import struct
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import apply_rescale, get_decoder
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import (
    ExplicitVRLittleEndian,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)
from pydicom.valuerep import DSfloat

from synthmed import __version__
from synthmed.augment.dataset import ImageSet
from synthmed.augment.intensity import (
    parse_window,
    percentile_range,
    require_finite,
    to_model_space,
    window_range,
)
from synthmed.augment.items import Item, ReadConfig, ReadResult, read_each
from synthmed.errors import InputError

LOG = logging.getLogger(__name__)
CODEC_HINT = "install the codec extra: pip install 'synthmed[dicom-codecs]'"
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# What pydicom and its codecs raise on corrupt files (found by fuzzing pydicom's test files).
PYDICOM_ERRORS = (
    ValueError, EOFError, OSError, AttributeError, KeyError, TypeError, IndexError,
    NotImplementedError, RuntimeError, StopIteration, struct.error, BytesLengthException,
)


def has_dicom_magic(path: Path) -> bool:
    """True when the file has the ``DICM`` marker after its 128-byte preamble."""
    try:
        with path.open("rb") as handle:
            return handle.read(132)[128:] == b"DICM"
    except OSError:
        return False


# -- reading ---------------------------------------------------------------------------


@dataclass
class _File:
    """The images of one DICOM file in original units, with what sorting and mapping need.

    Args:
        values: float32 ``(F, C, H, W)``: HU for CT, stored values otherwise.
        mapping: ``(low, high)`` known from the file alone, ``None`` for series percentiles.
        order: sort key within the series, ``(InstanceNumber, ImagePositionPatient)``.
    """

    values: np.ndarray
    path: Path
    group: str
    series: str
    modality: str
    unit: str
    mapping: tuple[float, float] | None
    inverted: bool
    order: tuple[float, tuple[float, ...]]


def read_dicom(paths: list[Path], config: ReadConfig, skipped: list[dict[str, str]]) -> ReadResult:
    """Read DICOM files into items, one per frame, ordered series by series.

    Args:
        paths: DICOM files; files of one series may come in any order.
        config: window, percentiles and ``skip_bad`` are used here.
        skipped: unreadable files are appended here when ``config.skip_bad``.

    Returns:
        Unlabelled items ``(C, H, W)`` grouped by PatientID (else StudyInstanceUID, else the
        file name); slices of a series sorted by InstanceNumber, then ImagePositionPatient.
    """
    files = read_each(paths, lambda path: [_read_file(path, config)], config, skipped)
    series: dict[str, list[_File]] = {}
    for file in files:
        series.setdefault(file.series, []).append(file)
    items: list[Item] = []
    for members in series.values():
        items.extend(_series_items(sorted(members, key=lambda f: f.order), config))
    return ReadResult(items, metadata={"reader": "dicom"})


def _series_items(files: list[_File], config: ReadConfig) -> list[Item]:
    """Map the sorted files of one series to model space; percentiles span the whole series."""
    unmapped = [file.values.ravel() for file in files if file.mapping is None]
    series_range = (
        percentile_range(np.concatenate(unmapped), percentiles=config.percentiles)
        if unmapped else None
    )
    items: list[Item] = []
    for file in files:
        low, high = file.mapping or series_range
        if file.inverted:
            low, high = high, low
        for k, frame in enumerate(file.values):
            source = str(file.path) if len(file.values) == 1 else f"{file.path}#frame={k}"
            items.append(Item(
                to_model_space(frame, low, high), source, file.group, low, high,
                unit=file.unit, modality=file.modality,
            ))
    return items


def _read_file(path: Path, config: ReadConfig) -> _File:
    """Read one file's header and pixels (decoded once); the dataset is not kept. Warnings
    raised meanwhile are logged as ``path: warning``, not shown."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            return _file_images(pydicom.dcmread(path), path, config)
        except InvalidDicomError:
            raise InputError("not a DICOM file (no 'DICM' marker after the preamble)",
                             path) from None
        except PYDICOM_ERRORS as error:
            raise InputError(f"corrupt or unsupported DICOM file ({_one_line(error)})",
                             path) from None
        finally:
            for warning in caught:
                LOG.warning("%s: %s", path, _one_line(warning.message))


def _file_images(ds: Dataset, path: Path, config: ReadConfig) -> _File:
    """Decode ``ds``'s pixels to original units and note its series, group and sort key."""
    if not any(ds.get(keyword) for keyword in PIXEL_KEYWORDS):
        raise InputError("has no pixel data (not an image)", path)
    pixels = _decode(ds, path)
    photometric = str(ds.get("PhotometricInterpretation", ""))
    samples = int(ds.get("SamplesPerPixel", 1))
    modality = str(ds.get("Modality", ""))
    unit, mapping = "a.u.", None
    if samples == 3:
        mapping = (0.0, float(2 ** int(ds.BitsStored) - 1))
        values = pixels
    elif samples == 1 and photometric in ("MONOCHROME1", "MONOCHROME2"):
        if "ModalityLUTSequence" not in ds and ds.get("RescaleSlope") == 0:
            raise InputError("RescaleSlope is 0: every pixel maps to the intercept", path)
        values = apply_rescale(pixels, ds)
        if modality == "CT":
            unit = "HU"
            mapping = parse_window(config.window) if config.window else _file_window(ds)
    else:
        raise InputError(f"photometric interpretation {photometric!r} is not supported", path)
    require_finite(values, path)
    frames = int(ds.get("NumberOfFrames") or 1)
    values = values.astype(np.float32).reshape(frames, int(ds.Rows), int(ds.Columns), samples)
    number = ds.get("InstanceNumber")
    return _File(
        values=values.transpose(0, 3, 1, 2),  # (F, C, H, W)
        path=path,
        group=str(ds.get("PatientID") or ds.get("StudyInstanceUID") or path.stem),
        series=str(ds.get("SeriesInstanceUID") or path),
        modality=modality,
        unit=unit,
        mapping=mapping,
        inverted=photometric == "MONOCHROME1",
        order=(
            math.inf if number is None else float(number),
            tuple(float(v) for v in ds.get("ImagePositionPatient") or ()),
        ),
    )


def _decode(ds: Dataset, path: Path) -> np.ndarray:
    """The pixel array (YBR converted to RGB); a one-line hint when no codec can decode it."""
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is None:
        raise InputError("has no Transfer Syntax UID in its file meta information", path)
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise InputError(f"transfer syntax {syntax.name!r} ({str(syntax)!r}) is not supported",
                         path) from None
    if not decoder.is_available:
        raise InputError(f"cannot decode {syntax.name}: {CODEC_HINT}", path)
    if syntax == RLELossless:
        # pylibjpeg-rle panics on some corrupt data, with a BaseException no error handler sees
        ds.pixel_array_options(decoding_plugin="pydicom")
    pixels = ds.pixel_array
    if not syntax.is_encapsulated:
        _require_native_length(ds, path)
    return pixels


def _require_native_length(ds: Dataset, path: Path) -> None:
    """Refuse uncompressed pixel data longer than the header describes by more than one row.

    pydicom drops such excess as padding (some writers pad a little) or returns it as extra
    frames, which would silently cut or misshape an image whose Rows, Columns, Bits Allocated
    or Number of Frames are wrong. (Too little pixel data pydicom refuses itself.)
    """
    keyword = next(k for k in PIXEL_KEYWORDS if ds.get(k))
    actual, expected = len(ds[keyword].value), get_expected_length(ds)
    row = math.ceil(int(ds.Columns) * int(ds.SamplesPerPixel) * int(ds.BitsAllocated) / 8)
    if actual > expected + expected % 2 + row:
        frames = int(ds.get("NumberOfFrames") or 1)
        raise InputError(
            f"{keyword} holds {actual} bytes, but {frames} frame(s) of {ds.Rows}x{ds.Columns} "
            f"pixels, {ds.SamplesPerPixel} sample(s) of {ds.BitsAllocated} bits, need "
            f"{expected}: Rows, Columns, Bits Allocated or Number of Frames disagree with the "
            "pixel data",
            path,
        )


def _file_window(ds: Dataset) -> tuple[float, float] | None:
    """The file's first WindowCenter / WindowWidth as ``(low, high)``, if it has a usable one
    (see :func:`~synthmed.augment.intensity.window_range`)."""
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is None or width is None:
        return None
    center, width = (float(v[0] if isinstance(v, MultiValue) else v) for v in (center, width))
    try:
        return window_range(center, width)
    except InputError:  # zero, NaN or infinite: the percentiles map the image instead
        return None


def _one_line(error: Exception | Warning) -> str:
    return " ".join(str(error).split()) or type(error).__name__


# -- writing ---------------------------------------------------------------------------


def write_dicom(
    imageset: ImageSet,
    out_dir: Path,
    names: list[str],
    *,
    patient_id: str = "SYNTHETIC",
    series_description: str = "synthmed synthetic images",
    deidentification: str = "synthmed synthetic image; no source patient data",
    series: tuple[str, str] | None = None,
    first_instance: int = 1,
    note: str = "",
) -> None:
    """Write each item as a Secondary Capture file, one new study and series for the export.

    Grayscale items ``(1, H, W)`` are stored as uint16 MONOCHROME2 in their original units,
    with RescaleSlope 1 and RescaleIntercept ``min(0, floor(min))`` so negative HU survive,
    and the item's mapping as WindowCenter / WindowWidth. An inverted mapping (MONOCHROME1
    source) is written as MONOCHROME2 with the original values, so it reads back upright.
    RGB items ``(3, H, W)`` are stored as uint8 (uint16 when their mapping goes above 255).
    Nothing is copied from a source file: UIDs are new and the Patient module is a dummy.

    Args:
        imageset: images ``(N, C, H, W)`` with ``C`` 1 or 3.
        out_dir: folder the names are relative to.
        names: one relative file name per item, e.g. ``lesion/00001.dcm``.
        patient_id, series_description, deidentification: written as given.
        series: ``(StudyInstanceUID, SeriesInstanceUID)`` shared by an export written in
            several calls; new UIDs when ``None``.
        first_instance: InstanceNumber of the first item.
        note: how the images were made beyond synthesis, up to 64 characters (e.g. the
            generator's DP-SGD guarantee): a second DeidentificationMethod value, and with
            the first one, ImageComments.
    """
    if len(names) != len(imageset):
        raise ValueError(f"{len(names)} names for {len(imageset)} images")
    if imageset.channels not in (1, 3):
        raise InputError(f"DICOM export needs 1 or 3 channels, not {imageset.channels}")
    study_uid, series_uid = series or (generate_uid(), generate_uid())
    now = datetime.now()
    # a mixed set (``CT+MR``) has no single modality
    modality = imageset.modality if imageset.modality.isalnum() else "OT"
    for i, name in enumerate(names):
        ds = _secondary_capture(now, patient_id, deidentification, note)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.Modality = modality
        ds.SeriesDescription = series_description
        ds.InstanceNumber = first_instance + i
        original = imageset.to_original_units([i])[0]  # (C, H, W)
        if imageset.channels == 3:
            _set_rgb(ds, original, max(imageset.intensity_low[i], imageset.intensity_high[i]))
        else:
            _set_grayscale(ds, original[0], imageset, i)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = out_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)


def _secondary_capture(now: datetime, patient_id: str, deidentification: str,
                       note: str) -> Dataset:
    """A Secondary Capture dataset with every module except the image and study / series UIDs
    (``note``: see :func:`write_dicom`)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8, for any patient id or description
    # Patient: dummy values only
    ds.PatientName = "SYNTHETIC^IMAGE"
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.PatientIdentityRemoved = "YES"
    # LO values hold 64 characters: the note is a value of its own
    ds.DeidentificationMethod = [deidentification, note] if note else deidentification
    # Study and series (UIDs set by the caller)
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.StudyID = ""
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.SeriesNumber = 1
    ds.Laterality = ""  # Type 2C: unknown for a synthetic image
    # SC equipment and general image
    ds.ConversionType = "SYN"
    ds.SecondaryCaptureDeviceManufacturer = "synthmed"
    ds.SecondaryCaptureDeviceSoftwareVersions = __version__
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.BurnedInAnnotation = "NO"
    ds.PatientOrientation = ""
    if note:
        ds.ImageComments = f"{deidentification}; {note}"
    return ds


def _set_grayscale(ds: Dataset, values: np.ndarray, imageset: ImageSet, index: int) -> None:
    """Store item ``index``'s ``values`` ``(H, W)`` (original units) as uint16, rescale, window."""
    intercept = min(0, math.floor(values.min()))
    stored = np.rint(values - intercept)
    if stored.max() > np.iinfo(np.uint16).max:
        raise InputError(
            f"original values span {values.min():.0f}..{values.max():.0f} {imageset.unit}, "
            "more than 16-bit DICOM's 65536 levels: write NIfTI instead",
            imageset.sources[index],
        )
    ds.set_pixel_data(stored.astype(np.uint16), "MONOCHROME2", 16, generate_instance_uid=False)
    ds.RescaleIntercept = intercept
    ds.RescaleSlope = 1
    ds.RescaleType = "HU" if imageset.unit == "HU" else "US"
    low, high = imageset.intensity_low[index], imageset.intensity_high[index]
    ds.WindowCenter = DSfloat((low + high) / 2, auto_format=True)
    ds.WindowWidth = DSfloat(abs(high - low), auto_format=True)


def _set_rgb(ds: Dataset, values: np.ndarray, top: float) -> None:
    """Store ``values`` ``(3, H, W)`` as RGB: uint8 when they fit ``0..255``, else uint16."""
    dtype = np.uint8 if top <= 255 else np.uint16
    rgb = np.clip(np.round(values), 0, np.iinfo(dtype).max).astype(dtype)
    bits = 8 * np.dtype(dtype).itemsize
    ds.set_pixel_data(rgb.transpose(1, 2, 0), "RGB", bits, generate_instance_uid=False)

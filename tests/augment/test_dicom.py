"""DICOM reading (pydicom's test files, the 9 transfer syntaxes, crafted bad files) and the
synthetic Secondary Capture writer."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.datadict import dictionary_description, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder
from pydicom.tag import Tag
from pydicom.uid import UID, JPEGLSLossless, SecondaryCaptureImageStorage, generate_uid

from synthmed.augment.dataset import ImageSet
from synthmed.augment.dicom import has_dicom_magic, read_dicom, write_dicom
from synthmed.augment.intensity import percentile_range
from synthmed.augment.items import ReadConfig, assemble
from synthmed.augment.readers import read_images
from synthmed.errors import InputError
from tests.conftest import real_file

CT = Path(get_testdata_file("CT_small.dcm"))
MR = Path(get_testdata_file("MR_small.dcm"))
PADDED = get_testdata_file("MR_small_padded.dcm", download=False)  # pydicom warns on it
MR_VARIANTS = ["RLE", "jpeg_ls_lossless", "jp2klossless", "bigendian", "expb", "implicit",
               "padded"]


def read(paths: list[Path], **options) -> ImageSet:
    config = ReadConfig(**options)
    return assemble(read_dicom(paths, config, []), config, "test")


def dataset(path: Path = MR) -> Dataset:
    return pydicom.dcmread(path)


def save(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path)
    return path


# -- pydicom's real files ------------------------------------------------------------------


def test_ct_values_are_hu_from_the_modality_lut():
    ds = dataset(CT)
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    s = read([CT], window="0,10000")  # wide enough that nothing clips
    assert s.unit == "HU" and s.modality == "CT" and s.images.shape == (1, 1, 128, 128)
    assert np.allclose(s.to_original_units()[0, 0], hu, atol=1e-3)
    assert list(s.groups) == [ds.PatientID]
    assert list(s.sources) == [str(CT)] and list(s.labels) == [-1]


@pytest.mark.parametrize(("window", "expected"), [
    ("brain", (0.0, 80.0)), ("lung", (-1350.0, 150.0)), ("40,400", (-160.0, 240.0)),
])
def test_ct_window_presets_and_explicit_windows(window, expected):
    s = read([CT], window=window)
    assert (s.intensity_low[0], s.intensity_high[0]) == expected
    hu = s.to_original_units()[0, 0]
    assert hu.min() >= expected[0] - 1e-3 and hu.max() <= expected[1] + 1e-3


def test_ct_uses_the_files_first_window_else_percentiles(tmp_path):
    ds = dataset(CT)
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert (read([CT]).intensity_low[0], read([CT]).intensity_high[0]) == percentile_range(hu)
    ds.WindowCenter, ds.WindowWidth = [40, 400], [80, 1500]
    s = read([save(ds, tmp_path / "windowed.dcm")])
    assert (s.intensity_low[0], s.intensity_high[0]) == (0.0, 80.0)


@pytest.mark.parametrize("variant", MR_VARIANTS)
def test_mr_small_variants_decode_to_the_same_pixels(variant):
    path = get_testdata_file(f"MR_small_{variant}.dcm", download=False)
    if path is None:
        pytest.skip(f"MR_small_{variant}.dcm is not shipped with this pydicom")
    reference, s = read([MR]), read([Path(path)])
    assert s.unit == "a.u." and s.modality == "MR"
    assert np.array_equal(s.images, reference.images)
    assert np.array_equal(s.intensity_high, reference.intensity_high)


def test_mr_is_normalised_with_percentiles():
    s = read([MR], percentiles=(1.0, 99.0))
    assert (s.intensity_low[0], s.intensity_high[0]) == percentile_range(
        dataset().pixel_array, percentiles=(1.0, 99.0)
    )


def test_ybr_jpeg_frames_become_rgb_items():
    path = Path(get_testdata_file("examples_ybr_color.dcm"))
    s = read([path])
    rgb = dataset(path).pixel_array  # (30, H, W, 3), pydicom converts YBR to RGB
    assert s.images.shape == (30, 3, 240, 320)
    assert [s.sources[0], s.sources[29]] == [f"{path}#frame=0", f"{path}#frame=29"]
    assert np.allclose(s.to_original_units(), rgb.transpose(0, 3, 1, 2), atol=1e-3)


def test_multi_frame_file_splits_into_frames_sharing_one_mapping(tmp_path):
    ds = dataset()
    frames = np.stack([ds.pixel_array + 100 * k for k in range(3)])  # (3, 64, 64)
    ds.set_pixel_data(frames.astype(np.uint16), "MONOCHROME2", 16)
    path = save(ds, tmp_path / "multi.dcm")
    s = read([path], percentiles=(0.0, 100.0))
    assert list(s.sources) == [f"{path}#frame={k}" for k in range(3)]
    assert len(set(s.intensity_low)) == len(set(s.intensity_high)) == 1
    assert np.allclose(s.to_original_units()[:, 0], frames, atol=1e-2)


def test_monochrome1_is_read_inverted(tmp_path):
    ds = dataset()
    ds.PhotometricInterpretation = "MONOCHROME1"
    inverted, upright = read([save(ds, tmp_path / "m1.dcm")]), read([MR])
    assert inverted.intensity_low[0] > inverted.intensity_high[0]
    assert np.allclose(inverted.images, -upright.images, atol=1e-6)
    assert np.allclose(inverted.to_original_units(), upright.to_original_units(), atol=1e-3)


def test_dicom_magic():
    assert has_dicom_magic(CT)
    assert not has_dicom_magic(Path(__file__))
    assert not has_dicom_magic(Path("/no/such/file.dcm"))


# -- the 9 transfer syntaxes --------------------------------------------------------------


def test_nine_transfer_syntaxes_decode_to_the_same_pixels_and_the_reference(shared_data):
    folder = real_file(shared_data, "dicom-transfer-syntax")
    paths = [folder / "In" / f"{n}.dcm" for n in range(1, 10)]
    raw = dataset(paths[0]).pixel_array  # (384, 384), explicit VR little endian
    for path in paths:
        s = read([path], percentiles=(0.0, 100.0))  # no clipping: values come back exactly
        assert s.modality == "MR" and s.images.shape == (1, 1, 384, 384)
        assert np.array_equal(np.rint(s.to_original_units()[0, 0]), raw), path.name
    # The image is a Siemens MOSAIC: a 6 x 6 grid of 64 x 64 tiles holding 35 slices, and
    # Ref/N.nii is dcm2niix's de-mosaiced volume (64, 64, 35). Tile k (row-major in the grid)
    # is the NIfTI slice transposed and flipped up-down: tile_k == flipud(ref[:, :, k].T),
    # i.e. NIfTI axis 0 runs along DICOM columns and axis 1 along DICOM rows, bottom to top.
    tiles = raw.reshape(6, 64, 6, 64).transpose(0, 2, 1, 3).reshape(36, 64, 64)
    for n in range(1, 10):
        ref = np.asarray(nib.load(folder / "Ref" / f"{n}.nii").dataobj)
        assert ref.shape == (64, 64, 35)
        assert np.array_equal(np.flipud(ref.transpose(1, 0, 2)), tiles[:35].transpose(1, 2, 0))


# -- codecs -------------------------------------------------------------------------------


def test_transfer_syntax_without_any_decoder_is_refused(tmp_path):
    ds = dataset(Path(get_testdata_file("MR_small_jpeg_ls_lossless.dcm")))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2, never decoded
    path = save(ds, tmp_path / "video.dcm")
    with pytest.raises(InputError, match="not supported") as error:
        read([path])
    assert str(path) in str(error.value) and "MPEG2" in str(error.value)


def test_missing_codec_names_the_extra(monkeypatch):
    path = Path(get_testdata_file("MR_small_jpeg_ls_lossless.dcm"))
    monkeypatch.setattr(get_decoder(JPEGLSLossless), "_available", {})  # no plugin installed
    with pytest.raises(InputError, match=r"synthmed\[dicom-codecs\]") as error:
        read([path])
    assert str(path) in str(error.value) and "JPEG-LS" in str(error.value)


# -- bad input ----------------------------------------------------------------------------


def _truncated(path: Path) -> None:
    path.write_bytes(CT.read_bytes()[: CT.stat().st_size // 2])


def _random_bytes(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).bytes(4096))


def _without_pixels(path: Path) -> None:
    ds = dataset()
    del ds.PixelData
    save(ds, path)


def _bits_allocated_12(path: Path) -> None:
    ds = dataset()
    ds.BitsAllocated = 12
    save(ds, path)


def _float_nan(path: Path) -> None:
    ds = dataset()
    values = ds.pixel_array.astype(np.float32)
    values[3, 4] = np.nan
    del ds.PixelData, ds.PixelRepresentation
    ds.FloatPixelData = values.tobytes()
    ds.BitsAllocated = ds.BitsStored = 32
    ds.HighBit = 31
    save(ds, path)


def _rescale_slope_0(path: Path) -> None:
    ds = dataset()
    ds.RescaleSlope, ds.RescaleIntercept = 0, 100
    save(ds, path)


BAD_FILES = {
    "truncated": (_truncated, "less than expected"),
    "random": (_random_bytes, "not a DICOM file"),
    "no_pixels": (_without_pixels, "no pixel data"),
    "bits_allocated": (_bits_allocated_12, "Bits Allocated"),
    "nan": (_float_nan, "NaN"),
    "slope_0": (_rescale_slope_0, "RescaleSlope is 0: every pixel maps to the intercept"),
}


@pytest.mark.parametrize("kind", BAD_FILES)
def test_bad_file_gives_one_line_error_naming_it(tmp_path, kind):
    make, problem = BAD_FILES[kind]
    path = tmp_path / f"{kind}.dcm"
    make(path)
    with pytest.raises(InputError, match=problem) as error:
        read([path])
    assert str(path) in str(error.value) and "\n" not in str(error.value)
    context = error.value.__context__  # no pydicom error chained into the traceback
    assert error.value.__cause__ is None and (context is None or error.value.__suppress_context__)


def test_skip_bad_skips_and_lists_bad_files(tmp_path):
    from synthmed.augment.readers import read_images

    folder = tmp_path / "scans"
    folder.mkdir()
    (folder / "good.dcm").write_bytes(CT.read_bytes())
    for kind, (make, _) in BAD_FILES.items():
        make(folder / f"{kind}.dcm")
    s = read_images(folder, ReadConfig(skip_bad=True))
    assert list(s.sources) == [str(folder / "good.dcm")]
    skipped = {Path(entry["path"]).stem for entry in s.metadata["skipped"]}
    assert skipped == set(BAD_FILES)
    with pytest.raises(InputError):
        read_images(folder)


def test_a_set_of_only_constant_images_is_refused_one_among_others_kept(tmp_path):
    for name, value in (("a", 0), ("b", 500)):
        ds = dataset()
        ds.PixelData = np.full(ds.pixel_array.shape, value, np.uint16).tobytes()
        ds.SOPInstanceUID = generate_uid()
        save(ds, tmp_path / "scans" / f"{name}.dcm")
    with pytest.raises(InputError, match="all 2 images are constant") as error:
        read_images(tmp_path / "scans")
    assert str(error.value).startswith(f"{tmp_path / 'scans'}: ")
    (tmp_path / "scans" / "c.dcm").write_bytes(MR.read_bytes())
    assert len(read_images(tmp_path / "scans")) == 3


def test_pydicom_warnings_are_logged_naming_the_file_not_shown(tmp_path, caplog, capsys):
    from synthmed.errors import show_warnings

    if PADDED is None:
        pytest.skip("MR_small_padded.dcm is not shipped with this pydicom")
    padded = Path(PADDED)
    broken = dataset(padded)
    broken.RescaleSlope = 0
    broken_path = save(broken, tmp_path / "broken.dcm")  # warns, then fails
    with warnings.catch_warnings(), caplog.at_level(logging.WARNING, logger="synthmed"):
        warnings.simplefilter("error")  # a warning that escaped would fail the read
        read([padded])
        with pytest.raises(InputError, match="RescaleSlope is 0"):
            read([broken_path])
    logged = [r.getMessage() for r in caplog.records if r.name.startswith("synthmed")]
    assert len(logged) == 2 and all("excess padding" in message for message in logged)
    assert logged[0].startswith(f"{padded}: ") and logged[1].startswith(f"{broken_path}: ")
    assert capsys.readouterr().err == ""
    show_warnings(True)  # what the CLI's --verbose does
    try:
        read([padded])
    finally:
        show_warnings(False)
    shown = capsys.readouterr().err
    assert shown.startswith(f"warning: {padded}: ") and shown.count("\n") == 1
    read([padded])
    assert capsys.readouterr().err == ""


def test_the_cli_shows_reader_warnings_only_with_verbose():
    from click.testing import CliRunner

    from synthmed.cli import cli

    if PADDED is None:
        pytest.skip("MR_small_padded.dcm is not shipped with this pydicom")
    quiet = CliRunner().invoke(cli, ["data", "inspect", PADDED])
    assert quiet.exit_code == 0, quiet.output
    assert quiet.stderr == ""
    verbose = CliRunner().invoke(cli, ["--verbose", "data", "inspect", PADDED])
    assert verbose.exit_code == 0, verbose.output
    assert verbose.stderr.startswith(f"warning: {PADDED}: ") and "padding" in verbose.stderr
    again = CliRunner().invoke(cli, ["data", "inspect", PADDED])  # --verbose does not linger
    assert again.stderr == ""


# -- series and groups --------------------------------------------------------------------


def test_series_is_sorted_by_instance_number_then_position(tmp_path):
    series = generate_uid()
    # (file, InstanceNumber, z): expected order c (1, -5), b (1, 5), a (2, 0)
    for k, (name, number, z) in enumerate([("a", 2, 0.0), ("b", 1, 5.0), ("c", 1, -5.0)]):
        ds = dataset()
        ds.SeriesInstanceUID, ds.InstanceNumber = series, number
        ds.ImagePositionPatient = [0.0, 0.0, z]
        ds.PixelData = (ds.pixel_array + 1000 * k).astype(np.uint16).tobytes()
        save(ds, tmp_path / f"{name}.dcm")
    s = read(sorted(tmp_path.iterdir()))
    assert [Path(p).stem for p in s.sources] == ["c", "b", "a"]
    assert len(set(s.intensity_low)) == len(set(s.intensity_high)) == 1  # one mapping
    values = np.concatenate([dataset(tmp_path / f"{n}.dcm").pixel_array.ravel() for n in "abc"])
    assert (s.intensity_low[0], s.intensity_high[0]) == percentile_range(values)


def test_groups_come_from_patient_then_study_then_file_name(tmp_path):
    for name, patient, study in [("p1", "alice", "1.2.3"), ("p2", "bob", "1.2.3"),
                                 ("s", "", "1.2.4"), ("f", "", "")]:
        ds = dataset()
        ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID = patient, study, generate_uid()
        save(ds, tmp_path / f"{name}.dcm")
    s = read(sorted(tmp_path.iterdir()))
    assert sorted(s.groups) == sorted(["alice", "bob", "1.2.4", "f"])


# -- writing ------------------------------------------------------------------------------


def ct_set() -> ImageSet:
    images = np.linspace(-1, 1, 2 * 16 * 16, dtype=np.float32).reshape(2, 1, 16, 16)
    return ImageSet.from_arrays(images, intensity_range=(-1000.0, 1000.0), unit="HU",
                                modality="CT")


def test_write_secondary_capture_round_trip(tmp_path):
    s = ct_set()
    names = ["lesion/00000.dcm", "00001.dcm"]
    write_dicom(s, tmp_path, names, patient_id="ANON7")
    files = [tmp_path / name for name in names]
    written = [pydicom.dcmread(f) for f in files]
    for i, ds in enumerate(written):
        assert ds.SOPClassUID == SecondaryCaptureImageStorage
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.ImageType == ["DERIVED", "SECONDARY"] and ds.ConversionType == "SYN"
        assert ds.PatientIdentityRemoved == "YES" and ds.BurnedInAnnotation == "NO"
        assert ds.PatientID == "ANON7" and ds.Modality == "CT" and ds.InstanceNumber == i + 1
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        hu = s.to_original_units([i])[0, 0]
        expected = np.round(hu - ds.RescaleIntercept).astype(np.uint16)
        assert ds.pixel_array.dtype == np.uint16 and np.array_equal(ds.pixel_array, expected)
        assert np.abs(ds.pixel_array * ds.RescaleSlope + ds.RescaleIntercept - hu).max() <= 1
    uids = {(ds.StudyInstanceUID, ds.SeriesInstanceUID) for ds in written}
    instances = {ds.SOPInstanceUID for ds in written}
    assert len(uids) == 1 and len(instances) == 2
    assert all(UID(u).is_valid for u in [*next(iter(uids)), *instances])
    back = read(files)  # CT: the stored window restores the model-space mapping
    assert np.abs(back.images - s.images).max() < 1e-3

    write_dicom(s, tmp_path / "again", names)
    again = pydicom.dcmread(tmp_path / "again" / names[0])
    assert again.StudyInstanceUID not in next(iter(uids)) and again.SOPInstanceUID not in instances


# Secondary Capture Image IOD (DICOM PS3.3 A.8.1): per module, its usage (M mandatory, U user
# option: required complete once any attribute of it is written), and the Type 1 and Type 2
# attributes it requires of our files (the 1C / 2C ones whose condition holds, or which we
# write anyway). Type 1 must hold a value, Type 2 may be empty. Modules of Type 3 attributes
# only (Patient Study, SC Image) need nothing. The multi-frame SC IODs would add the
# Multi-frame and SC Multi-frame Image modules; we write single-frame SC Image Storage.
SC_IMAGE_MODULES = {
    "Patient C.7.1.1": ("M", [], ["PatientName", "PatientID", "PatientBirthDate",
                                  "PatientSex"]),
    "General Study C.7.2.1": ("M", ["StudyInstanceUID"],
                              ["StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID",
                               "AccessionNumber"]),
    "General Series C.7.3.1": ("M", ["Modality", "SeriesInstanceUID"],
                               ["SeriesNumber", "Laterality"]),  # Laterality: 2C
    "General Equipment C.7.5.1": ("U", [], ["Manufacturer"]),
    "SC Equipment C.8.6.1": ("M", ["ConversionType"], []),
    "General Image C.7.6.1": ("M", [], ["InstanceNumber", "PatientOrientation"]),  # 2, 2C
    "Image Pixel C.7.6.3": ("M", ["SamplesPerPixel", "PhotometricInterpretation", "Rows",
                                  "Columns", "BitsAllocated", "BitsStored", "HighBit",
                                  "PixelRepresentation", "PixelData"], []),  # PixelData: 1C
    "Modality LUT C.11.1": ("U", ["RescaleIntercept", "RescaleSlope", "RescaleType"], []),
    "VOI LUT C.11.2": ("U", ["WindowCenter", "WindowWidth"], []),  # 1C: no VOI LUT Sequence
    "SOP Common C.12.1": ("M", ["SOPClassUID", "SOPInstanceUID", "SpecificCharacterSet"], []),
}


def missing_attributes(ds: Dataset) -> list[str]:
    """Each Type 1 / 2 attribute of :data:`SC_IMAGE_MODULES` that ``ds`` lacks (or, Type 1,
    leaves empty), as ``module: Type N Keyword (gggg,eeee) Description``."""
    problems = []
    for module, (usage, type1, type2) in SC_IMAGE_MODULES.items():
        if usage == "U" and not any(keyword in ds for keyword in type1 + type2):
            continue
        for kind, keywords in (("1", type1), ("2", type2)):
            for keyword in keywords:
                if keyword not in ds or (kind == "1" and ds[keyword].is_empty):
                    tag = Tag(tag_for_keyword(keyword))
                    problems.append(f"{module}: Type {kind} {keyword} {tag} "
                                    f"{dictionary_description(tag)}")
    return problems


@pytest.mark.parametrize("channels", [1, 3])
def test_written_files_hold_every_type_1_and_2_attribute_of_their_modules(tmp_path, channels):
    assert all(tag_for_keyword(k) for _, t1, t2 in SC_IMAGE_MODULES.values() for k in t1 + t2)
    s = ct_set() if channels == 1 else ImageSet.from_arrays(
        np.random.default_rng(0).uniform(-1, 1, (2, 3, 8, 8)), intensity_range=(0.0, 255.0))
    write_dicom(s, tmp_path, ["0.dcm", "1.dcm"])
    for name in ("0.dcm", "1.dcm"):
        ds = pydicom.dcmread(tmp_path / name)
        assert ds.SOPClassUID == SecondaryCaptureImageStorage and "NumberOfFrames" not in ds
        assert missing_attributes(ds) == []
        assert ("RescaleSlope" in ds) == ("WindowCenter" in ds) == (channels == 1)
        if channels == 3:  # Image Pixel: Type 1C when Samples per Pixel > 1
            assert ds.PlanarConfiguration == 0
    del ds.Laterality, ds.StudyInstanceUID
    assert missing_attributes(ds) == [
        "General Study C.7.2.1: Type 1 StudyInstanceUID (0020,000D) Study Instance UID",
        "General Series C.7.3.1: Type 2 Laterality (0020,0060) Laterality"]


def test_write_mr_and_inverted_mapping_keep_original_values(tmp_path):
    images = np.random.default_rng(0).uniform(-1, 1, (2, 1, 8, 8)).astype(np.float32)
    s = ImageSet.from_arrays(images, intensity_range=(np.array([0.0, 4000.0]),
                                                      np.array([4000.0, 0.0])), modality="MR")
    write_dicom(s, tmp_path, ["0.dcm", "1.dcm"])
    ds = pydicom.dcmread(tmp_path / "1.dcm")
    assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.RescaleIntercept == 0
    back = read([tmp_path / "0.dcm", tmp_path / "1.dcm"], percentiles=(0.0, 100.0))
    assert np.abs(back.to_original_units() - s.to_original_units()).max() <= 0.51


@pytest.mark.parametrize(("top", "bits"), [(255, 8), (4095, 16)])
def test_write_rgb_round_trip(tmp_path, top, bits):
    values = np.random.default_rng(0).integers(0, top + 1, (2, 3, 8, 10))
    s = ImageSet.from_arrays(values / (top / 2) - 1, intensity_range=(0.0, float(top)))
    write_dicom(s, tmp_path, ["0.dcm", "1.dcm"])
    ds = pydicom.dcmread(tmp_path / "1.dcm")
    assert ds.PhotometricInterpretation == "RGB" and ds.BitsAllocated == bits
    assert ds.Modality == "OT"
    assert np.array_equal(ds.pixel_array, values[1].transpose(1, 2, 0))
    back = read([tmp_path / "0.dcm", tmp_path / "1.dcm"])
    assert back.images.shape == (2, 3, 8, 10)
    assert np.allclose(back.to_original_units(), values, atol=1e-2)


def test_write_refuses_values_beyond_16_bits(tmp_path):
    images = np.linspace(-1, 1, 16).reshape(1, 1, 4, 4)  # -1000 .. 70000 HU
    s = ImageSet.from_arrays(images, intensity_range=(-1000.0, 70000.0), unit="HU")
    with pytest.raises(InputError, match="16-bit"):
        write_dicom(s, tmp_path, ["0.dcm"])

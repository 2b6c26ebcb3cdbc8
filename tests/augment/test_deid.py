"""De-identification of exported DICOM, end to end: real DICOM input full of identifiers
goes through the CLI (train, generate, translate), and every element of every exported file,
file meta and sequences included, is scanned for any of them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import UID, generate_uid

from ..conftest import invoke

pytestmark = pytest.mark.usefixtures("one_thread")

IDENTIFYING_VRS = ("PN", "DA", "DT", "TM", "UI", "AS")
IDENTIFYING_WORDS = ("ID", "Institution", "Accession", "Address", "Station", "SerialNumber",
                     "Description", "Name")
SOFTWARE = ("ImplementationClassUID", "ImplementationVersionName")
TINY_CYCLEGAN = ["--ngf", 4, "--ndf", 4, "--blocks", 1, "--pool-size", 2, "--epochs", 1]


def write_patient(folder: Path, source: str, patient: str, slices: int) -> None:
    """``slices`` copies of a pydicom test file as one series of one patient, each carrying
    distinctive identifiers (also inside sequences) and slightly shifted pixels."""
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    for k in range(slices):
        ds = pydicom.dcmread(get_testdata_file(source))
        for element in ds.iterall():  # times the export never writes (it has no fraction)
            if element.VR == "TM":
                element.value = "101112.131415"
        ds.PatientName = f"Quixote{patient}^Zaphod^Middle"
        ds.PatientID = f"PID-{patient}-583920"
        ds.PatientBirthDate = f"194503{10 + len(patient)}"
        ds.PatientAge = "078Y"
        ds.PatientAddress = f"{patient} Rue Imaginaire, Nowhere"
        other = Dataset()
        other.PatientID = f"ALT-{patient}-771199"
        other.IssuerOfPatientID = "Ledger of St Elsewhere"
        ds.OtherPatientIDsSequence = Sequence([other])
        ds.StudyDate, ds.SeriesDate = "20190422", "20190423"
        ds.AcquisitionDate = ds.ContentDate = ds.InstanceCreationDate = "20190424"
        ds.AccessionNumber = f"ACC{patient}99331"
        ds.InstitutionName = "St Elsewhere Memorial Hospital"
        ds.InstitutionAddress = "1 Hidden Lane, Secret City"
        ds.ReferringPhysicianName = "Strangelove^Doctor"
        ds.OperatorsName = "Operator^Olga"
        ds.StationName = "STATION-SCAN-9"
        ds.DeviceSerialNumber = "SN-4451-9981"
        ds.StudyID = f"STUDY-{patient}"
        ds.StudyDescription = f"Abdomen of Quixote{patient}"
        ds.SeriesDescription = f"Axial series of Quixote{patient}"
        referenced = Dataset()
        referenced.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
        referenced.ReferencedSOPInstanceUID = generate_uid()
        ds.ReferencedStudySequence = Sequence([referenced])
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = k + 1
        ds.PixelData = np.roll(ds.pixel_array, 7 * k + 3 * len(patient), axis=1).tobytes()
        ds.save_as(folder / f"{patient}-{k}.dcm")


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    """``ct/``: two CT patients of three slices; ``mr/``: one MR patient of three slices."""
    root = tmp_path_factory.mktemp("patients")
    for name in ("ct", "mr"):
        (root / name).mkdir()
    write_patient(root / "ct", "CT_small.dcm", "Alpha", 3)
    write_patient(root / "ct", "CT_small.dcm", "Beta", 3)
    write_patient(root / "mr", "MR_small.dcm", "Gamma", 3)
    return root


def all_elements(ds: Dataset) -> Iterator[DataElement]:
    """Every element: file meta, data set and, recursively, sequence items."""
    yield from ds.file_meta.iterall()
    yield from ds.iterall()


def values(element: DataElement) -> list[str | bytes]:
    if element.VR == "SQ" or element.value is None:
        return []  # the items' elements come on their own
    if isinstance(element.value, bytes):
        return [element.value]
    if isinstance(element.value, MultiValue | list):
        return [str(v) for v in element.value]
    return [str(element.value)]


def registered(value: str) -> bool:
    """A UID from the standard (SOP class, transfer syntax ...), not one made for an object."""
    return UID(value).name != value


def identifiers(paths: list[Path]) -> dict[str, str]:
    """The values of every identifying attribute of the files (names, IDs, dates, times,
    ages, UIDs, institution, accession, addresses, station, serial number, descriptions),
    each with its VR."""
    found = {}
    for path in paths:
        for element in all_elements(pydicom.dcmread(path)):
            if element.keyword in SOFTWARE or not (
                    element.VR in IDENTIFYING_VRS
                    or any(word in element.keyword for word in IDENTIFYING_WORDS)):
                continue
            found |= {v.strip(): element.VR for v in values(element)
                      if isinstance(v, str) and v.strip()
                      and not (element.VR == "UI" and registered(v))}
    return found


def leaks(ds: Dataset, needles: dict[str, str]) -> set[str]:
    """The source identifiers found in ``ds``: equal to a value, or (for those with letters)
    inside a text or binary value."""
    words = {needle for needle in needles if any(c.isalpha() for c in needle)}
    found = set()
    for element in all_elements(ds):
        if element.keyword == "PixelData":
            continue
        for value in values(element):
            if isinstance(value, bytes):
                found |= {word for word in words if word.encode() in value}
            else:
                found |= {n for n in needles if n == value.strip()}
                found |= {word for word in words if word in value}
    return found


def check_deidentified(exported: list[Path], source_paths: list[Path]) -> None:
    needles = identifiers(source_paths)
    instance_uids = {value for value, vr in needles.items() if vr == "UI"}
    assert {"QuixoteAlpha^Zaphod^Middle", "PID-Alpha-583920", "ALT-Beta-771199",
            "19450315", "20190422", "101112.131415", "ACCAlpha99331",
            "St Elsewhere Memorial Hospital", "SN-4451-9981", "078Y"} <= needles.keys()
    sources = [pydicom.dcmread(path) for path in source_paths]
    assert {uid for ds in sources for uid in (ds.StudyInstanceUID, ds.SeriesInstanceUID,
            ds.SOPInstanceUID, ds.ReferencedStudySequence[0].ReferencedSOPInstanceUID)
            } <= instance_uids
    assert leaks(pydicom.dcmread(source_paths[0]), needles)  # the scan does find them
    for path in exported:
        ds = pydicom.dcmread(path)
        assert not leaks(ds, needles), f"{path.name} carries {leaks(ds, needles)}"
        uids = [v for e in all_elements(ds) if e.VR == "UI" for v in values(e)
                if not registered(v)]
        assert {ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID} <= set(uids)
        assert all(UID(uid).is_valid for uid in uids)
        assert not [uid for uid in uids for old in instance_uids if uid.startswith(old)]
        assert ds.PatientIdentityRemoved == "YES" and ds.DeidentificationMethod
        assert ds.ConversionType == "SYN" and ds.pixel_array.size


def test_generated_dicom_carries_nothing_from_the_training_files(sources, tmp_path):
    run = tmp_path / "run"
    trained = invoke("train", "dcgan", sources / "ct", "--out", run, "--size", 28, "--width", 4,
                     "--epochs", 1, "--batch-size", 3, "--no-progress")
    assert trained.exit_code == 0, trained.output
    out = tmp_path / "syn"
    made = invoke("generate", run, "--n", 4, "--format", "dicom", "--out", out,
                  "--privacy-filter", "--train", sources / "ct", "--no-progress")
    assert made.exit_code == 0, made.output
    near = json.loads((out / "provenance.json").read_text())["privacy_filter"]
    assert near["matches_run_training_data"] and near["threshold"] > 0
    exported = sorted(out.rglob("*.dcm"))
    assert len(exported) == 4
    check_deidentified(exported, sorted((sources / "ct").glob("*.dcm")))


def test_translated_dicom_carries_nothing_from_the_source_files(sources, tmp_path):
    run = tmp_path / "run"
    trained = invoke("train", "cyclegan", "--domain-a", sources / "ct", "--domain-b",
                     sources / "mr", "--out", run, "--size", 32, *TINY_CYCLEGAN,
                     "--no-progress")
    assert trained.exit_code == 0, trained.output
    out = tmp_path / "translated"
    translated = invoke("translate", run, sources / "ct", "--direction", "a2b", "--out", out,
                        "--no-progress")
    assert translated.exit_code == 0, translated.output
    exported = sorted(out.rglob("*.dcm"))
    assert len(exported) == 6
    check_deidentified(exported, sorted(sources.rglob("*.dcm")))

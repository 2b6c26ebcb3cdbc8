"""Generation and export from a trained run: formats, counts, determinism, resume, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner

from synthmed.augment.phantom import PhantomConfig, make_phantom
from synthmed.augment.readers import read_images
from synthmed.cli import cli
from synthmed.errors import InputError
from synthmed.gan import generate as generate_module
from synthmed.gan.config import DCGANConfig, TrainConfig
from synthmed.gan.generate import BLOCK, GenerateConfig, generate, plan_labels
from synthmed.gan.run import load_run
from synthmed.gan.run_config import RunConfig
from synthmed.gan.train import train_dcgan

from ..conftest import generate_killed_at_block


def train_tiny(run_dir, conditional: bool):
    t1, _ = make_phantom(PhantomConfig(n=48, size=28, lesion_fraction=0.25))
    config = RunConfig("dcgan", DCGANConfig(width=4), TrainConfig(epochs=1, batch_size=16))
    train_dcgan(t1, run_dir, config, conditional=conditional, progress=False)
    return run_dir


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("runs") / "conditional", conditional=True)


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("runs") / "plain", conditional=False)


def test_plan_labels_for_n_per_class_and_balance(conditional_run, plain_run):
    run = load_run(conditional_run)
    assert list(plan_labels(run, GenerateConfig(n=5))) == [0, 1, 0, 1, 0]
    per_class = plan_labels(run, GenerateConfig(per_class={"lesion": 3, "0": 1}))
    assert list(per_class) == [0, 1, 1, 1]
    # training data: 36 without and 12 with a lesion -> 24 lesion images balance it
    assert list(plan_labels(run, GenerateConfig(balance=True))) == [1] * 24
    assert list(plan_labels(load_run(plain_run), GenerateConfig(n=3))) == [-1, -1, -1]


@pytest.mark.parametrize("config, problem", [
    (dict(n=0), "--n must be in 1..10,000,000"),
    (dict(n=-3), "--n must be in 1..10,000,000"),
    (dict(n=10**12), "--n must be in 1..10,000,000"),
    (dict(n=3, seed=-1), "--seed must be in 0..4294967295"),
    (dict(), "exactly one of"),
    (dict(n=3, balance=True), "exactly one of"),
    (dict(per_class={"tumour": 4}), "unknown class 'tumour'"),
    (dict(n=3, format="jpeg"), "unknown format"),
])
def test_bad_requests_are_refused(conditional_run, config, problem):
    with pytest.raises(InputError, match=problem):
        plan_labels(load_run(conditional_run), GenerateConfig(**config))


def test_per_class_needs_a_conditional_model(plain_run):
    with pytest.raises(InputError, match="class-conditional"):
        plan_labels(load_run(plain_run), GenerateConfig(per_class={"0": 2}))


@pytest.mark.parametrize("format_", ["png", "npz", "nifti", "dicom"])
def test_every_format_reads_back_with_its_labels(conditional_run, tmp_path, format_):
    out = tmp_path / "syn"
    record = generate(load_run(conditional_run), out,
                      GenerateConfig(per_class={"no lesion": 3, "lesion": 5}, format=format_),
                      progress=False)
    back = read_images(out)
    assert len(back) == 8 and back.class_names == ("no lesion", "lesion")
    assert sorted(back.labels.tolist()) == [0] * 3 + [1] * 5
    manifest = (out / "manifest.csv").read_text().splitlines()
    assert manifest[0] == ",".join(generate_module.MANIFEST_COLUMNS)
    assert len(manifest) == 9 and record["model_fingerprint"] in manifest[1]
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["class_counts"] == {"no lesion": 3, "lesion": 5}
    assert not list(tmp_path.glob(".*partial*"))


def test_images_depend_only_on_seed_and_index(conditional_run, tmp_path):
    run = load_run(conditional_run)
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):  # NIfTI keeps the float values
        generate(run, tmp_path / name, GenerateConfig(n=BLOCK + 10, format="nifti", seed=seed),
                 progress=False)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.nii.gz"))
    assert len(files) == BLOCK + 10
    same = [(tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files]
    other = [(tmp_path / "a" / f).read_bytes() == (tmp_path / "c" / f).read_bytes() for f in files]
    assert all(same) and not any(other)


def test_npz_export_is_medmnist_layout_and_byte_identical(conditional_run, tmp_path):
    run = load_run(conditional_run)
    for name in "ab":
        generate(run, tmp_path / name, GenerateConfig(n=BLOCK + 10, format="npz", seed=7),
                 progress=False)
    assert (tmp_path / "a" / "images.npz").read_bytes() == (tmp_path / "b" / "images.npz"
                                                             ).read_bytes()
    with np.load(tmp_path / "a" / "images.npz") as archive:
        assert archive["train_images"].shape == (BLOCK + 10, 28, 28)
        assert archive["train_images"].dtype == np.uint8
        assert archive["train_labels"].shape == (BLOCK + 10, 1)
        assert list(archive["class_names"]) == ["no lesion", "lesion"]


def test_npz_holds_the_bit_depth_its_provenance_states(conditional_run, tmp_path):
    run = load_run(conditional_run)
    for bit_depth, dtype in ((None, np.uint8), (16, np.uint16)):
        out = tmp_path / str(bit_depth)
        record = generate(run, out, GenerateConfig(n=4, format="npz", bit_depth=bit_depth),
                          progress=False)
        with np.load(out / "images.npz") as archive:
            assert archive["train_images"].dtype == dtype
        assert record["bit_depth"] == np.iinfo(dtype).bits
    wide = read_images(str(tmp_path / "16" / "images.npz"))  # original units, read back
    low, high = run.training_data["intensity"]["low"], run.training_data["intensity"]["high"]
    assert low - 1 <= wide.intensity_low.min() and wide.intensity_high.max() <= high + 1


def test_png_is_16_bit_when_the_training_data_was_wider(conditional_run, tmp_path):
    generate(load_run(conditional_run), tmp_path / "syn", GenerateConfig(n=2), progress=False)
    from PIL import Image

    picture = Image.open(next((tmp_path / "syn").rglob("*.png")))
    assert picture.mode.startswith("I")  # the phantom's 12-bit units keep 16 bits


def test_dicom_export_is_secondary_capture_in_one_new_series(conditional_run, tmp_path):
    generate(load_run(conditional_run), tmp_path / "syn", GenerateConfig(n=BLOCK + 2,
             format="dicom"), progress=False)
    files = sorted((tmp_path / "syn").rglob("*.dcm"))
    first, last = pydicom.dcmread(files[0]), pydicom.dcmread(files[-1])
    assert first.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert first.ConversionType == "SYN" and first.PatientIdentityRemoved == "YES"
    assert first.SeriesInstanceUID == last.SeriesInstanceUID  # blocks share the series
    assert first.SOPInstanceUID != last.SOPInstanceUID
    assert len({pydicom.dcmread(f).InstanceNumber for f in files}) == len(files)


def test_interrupted_export_resumes_to_the_same_result(conditional_run, tmp_path, monkeypatch):
    run = load_run(conditional_run)
    config = GenerateConfig(n=3 * BLOCK, format="png", seed=1)
    generate(run, tmp_path / "whole", config, progress=False)

    generate_killed_at_block(run, tmp_path / "resumed", config, block=3)
    assert len(list((tmp_path / ".resumed.partial" / "parts").glob("*.csv"))) == 2
    generate(run, tmp_path / "resumed", config, progress=False)
    for name in ("manifest.csv", "provenance.json"):
        whole = (tmp_path / "whole" / name).read_text().replace("whole", "")
        assert whole == (tmp_path / "resumed" / name).read_text().replace("resumed", "")
    pictures = sorted(p.relative_to(tmp_path / "whole")
                      for p in (tmp_path / "whole").rglob("*.png"))
    assert pictures == sorted(p.relative_to(tmp_path / "resumed")
                              for p in (tmp_path / "resumed").rglob("*.png"))
    assert all((tmp_path / "whole" / p).read_bytes() == (tmp_path / "resumed" / p).read_bytes()
               for p in pictures)


def test_a_different_request_does_not_reuse_a_partial_export(conditional_run, tmp_path):
    partial = tmp_path / ".syn.partial"
    (partial / "parts").mkdir(parents=True)
    (partial / "plan.json").write_text(json.dumps({"request": {"other": 1}}))
    (partial / "parts" / "000000.csv").write_text("stale\n")
    generate(load_run(conditional_run), tmp_path / "syn", GenerateConfig(n=4), progress=False)
    assert "stale" not in (tmp_path / "syn" / "manifest.csv").read_text()


def test_cli_generate_and_its_errors(conditional_run, tmp_path):
    runner = CliRunner()
    ok = runner.invoke(cli, ["generate", str(conditional_run), "--per-class", "lesion=4",
                             "--out", str(tmp_path / "syn"), "--no-progress"])
    assert ok.exit_code == 0, ok.output
    assert "wrote 4 synthetic image(s)" in ok.output
    again = runner.invoke(cli, ["generate", str(conditional_run), "--n", "2",
                                "--out", str(tmp_path / "syn")])
    assert again.exit_code == 1 and "already exists" in again.output
    assert len(read_images(tmp_path / "syn")) == 4  # untouched
    for args, message in [
        (["generate", str(tmp_path / "nope"), "--n", "2"], "no such run directory"),
        (["generate", str(tmp_path), "--n", "2"], "config.yaml is missing"),
        (["generate", str(conditional_run), "--per-class", "lesion"], "not CLASS=COUNT"),
        (["generate", str(conditional_run), "--per-class", "cyst=3"], "unknown class 'cyst'"),
        (["generate", str(conditional_run), "--n", "0"], "0 is not in the range 1<=x"),
    ]:
        result = runner.invoke(cli, [*args, "--out", str(tmp_path / "other")])
        assert result.exit_code != 0 and message in result.output, (args, result.output)
        assert "Traceback" not in result.output


def _generate_as_rank(rank: int, world: int, port: int, run_dir: str, out: str) -> None:
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    try:
        generate(load_run(run_dir), Path(out), GenerateConfig(n=2 * BLOCK + 5, format="nifti"),
                 progress=False)
    finally:
        dist.destroy_process_group()


def test_two_processes_write_disjoint_shards_of_the_same_images(conditional_run, tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_generate_as_rank, args=(2, port, str(conditional_run), str(tmp_path / "two")),
             nprocs=2, join=True)
    generate(load_run(conditional_run), tmp_path / "one",
             GenerateConfig(n=2 * BLOCK + 5, format="nifti"), progress=False)
    assert (tmp_path / "one" / "manifest.csv").read_text() == (
        tmp_path / "two" / "manifest.csv").read_text()
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*.nii.gz"))
    assert len(files) == 2 * BLOCK + 5
    assert all((tmp_path / "one" / f).read_bytes() == (tmp_path / "two" / f).read_bytes()
               for f in files)


def test_dicom_export_from_real_dicom_carries_no_source_identifiers(tmp_path):
    from pydicom.data import get_testdata_file

    sources = [pydicom.dcmread(get_testdata_file(name)) for name in ("CT_small.dcm",
                                                                      "MR_small.dcm")]
    folder = tmp_path / "patients"
    folder.mkdir()
    for k, ds in enumerate(sources):
        ds.save_as(folder / f"{k}.dcm")
    from synthmed.augment.items import ReadConfig

    data = read_images(folder, ReadConfig(size=28))
    config = RunConfig("dcgan", DCGANConfig(width=4), TrainConfig(epochs=1, batch_size=2))
    train_dcgan(data, tmp_path / "run", config, progress=False)
    generate(load_run(tmp_path / "run"), tmp_path / "syn", GenerateConfig(n=3, format="dicom"),
             progress=False)
    source_values = {str(element.value) for ds in sources for element in ds.iterall()
                     if element.VR in ("PN", "LO", "SH", "UI", "DA", "TM", "DT", "CS", "LT")
                     and str(element.value).strip() and element.keyword not in (
                         "Modality", "ImageType", "PhotometricInterpretation", "SOPClassUID",
                         "PatientSex", "BurnedInAnnotation", "RescaleType", "ConversionType")}
    exported = sorted((tmp_path / "syn").rglob("*.dcm"))
    assert len(exported) == 3
    for path in exported:
        ds = pydicom.dcmread(path)
        assert ds.ConversionType == "SYN" and ds.PatientIdentityRemoved == "YES"
        leaked = {str(e.value) for e in ds.iterall()} & source_values
        assert not leaked, f"{path.name} carries source values {leaked}"
        assert ds.pixel_array.shape == (28, 28)


@pytest.mark.parametrize("option, flag", [({"sampling_steps": 3}, "--sampling-steps"),
                                          ({"guidance": 1.5}, "--guidance")])
def test_diffusion_sampling_options_are_refused_for_a_dcgan(plain_run, tmp_path, option, flag):
    with pytest.raises(InputError, match=f"{flag} is for diffusion runs, not a dcgan"):
        generate(load_run(plain_run), tmp_path / "syn", GenerateConfig(n=2, **option),
                 progress=False)
    assert not (tmp_path / "syn").exists()

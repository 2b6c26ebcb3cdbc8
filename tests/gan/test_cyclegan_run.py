"""CycleGAN runs end to end: unpaired batches, subject hold-out, the ``train cyclegan``
command, exact resume, ``translate`` (NIfTI, DICOM, pictures) and its errors."""

from __future__ import annotations

import csv
import json
import math
import shutil
from dataclasses import replace

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from synthmed.augment.dataset import ImageSet
from synthmed.augment.intensity import foreground_mask, foreground_quantiles
from synthmed.augment.phantom import PhantomConfig, write_phantom_volumes
from synthmed.augment.readers import read_images
from synthmed.augment.splits import held_out_hashes, hold_out_groups
from synthmed.errors import InputError
from synthmed.eval.translation import evaluate_run
from synthmed.eval.translation_blend import sweep_blend
from synthmed.gan import checkpoint
from synthmed.gan.config import CycleGANConfig, TrainConfig
from synthmed.gan.data import PairedImages, UnpairedImages, group_hash
from synthmed.gan.run import build_model, load_run
from synthmed.gan.run_config import RunConfig, read_run_config
from synthmed.gan.trainer import fit
from synthmed.gan.translate import translate_volume

from ..conftest import invoke, real_file

pytestmark = pytest.mark.usefixtures("one_thread")

SUBJECTS = ("s0", "s1", "s2")
TINY = ["--ngf", "4", "--ndf", "4", "--blocks", "1", "--pool-size", "4", "--no-progress"]


def images(n: int, value: float = 0.0, group: str = "g") -> ImageSet:
    pixels = np.full((n, 1, 16, 16), value, np.float32)
    pixels[:, 0, 0, :] = np.arange(n, dtype=np.float32)[:, None] / 100  # item index, row 0
    return ImageSet.from_arrays(pixels, groups=[f"{group}{k // 4}" for k in range(n)])


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    """Three phantom subjects, T1 and T2 volumes ``(32, 32, 8)`` on the same grid, with an
    affine and header fields that translation must keep."""
    root = tmp_path_factory.mktemp("brain")
    names = write_phantom_volumes(root, PhantomConfig(n=24, size=32, seed=1))
    affine = np.diag([0.9, 0.9, 2.5, 1.0])
    affine[:3, 3] = (-10.0, 20.0, 5.0)
    for name, subject in zip(names, SUBJECTS, strict=True):
        (root / name).rename(root / subject)
        for contrast in ("t1", "t2"):
            path = root / subject / f"{contrast}.nii.gz"
            image = nib.load(path)
            edited = nib.Nifti1Image(np.asarray(image.dataobj), affine, image.header)
            edited.header["descrip"] = b"phantom"
            nib.save(edited, path)
    return root


@pytest.fixture(scope="module")
def trained(volumes, tmp_path_factory):
    """A tiny T1 -> T2 run on two subjects, s2 held out."""
    out = tmp_path_factory.mktemp("runs") / "t1t2"
    result = invoke("train", "cyclegan", "--domain-a", f"{volumes}/*/t1.nii.gz",
                    "--domain-b", f"{volumes}/*/t2.nii.gz", "--val-subjects", "s2",
                    "--out", out, "--epochs", "2", "--crop", "24", "--checkpoint-every", "1",
                    *TINY)
    assert result.exit_code == 0, result.output
    return out


# -- unpaired batches, hold-out ------------------------------------------------------------


def test_unpaired_batches_never_pair_items_and_repeat_from_the_generator():
    a, b = images(12, 0.5), images(5, -0.5)
    data = UnpairedImages(a, b, crop=8, flip=True, standardize=False)
    assert len(data) == 12
    index = torch.arange(12)
    first = data.batch(index, torch.Generator().manual_seed(3))
    again = data.batch(index, torch.Generator().manual_seed(3))
    assert all(torch.equal(x, y) for x, y in zip(first, again, strict=True))
    assert first[0].shape == first[1].shape == (12, 1, 8, 8)
    # B is drawn at random, whatever the A index: over many draws every B image pairs with
    # every A position
    data = UnpairedImages(a, b, crop=0, flip=False, standardize=False)
    rng = torch.Generator().manual_seed(0)
    seen = {(i, round(float(img[0, 0, 0]) * 100))
            for _ in range(40) for i, img in zip(range(12), data.batch(index, rng)[1],
                                                    strict=True)}
    assert len(seen) > 50  # far more than the 12 of any fixed pairing


def test_unpaired_crops_and_flips_are_random_per_image():
    gradient = np.tile(np.linspace(-1, 1, 16, dtype=np.float32), (16, 1))
    a = ImageSet.from_arrays(np.broadcast_to(gradient, (64, 1, 16, 16)).copy())
    data = UnpairedImages(a, a, crop=8, flip=True, standardize=False)
    crops = data.batch(torch.arange(64), torch.Generator().manual_seed(1))[0]
    first_columns = {round(float(c[0, 0, 0]), 4) for c in crops}
    assert len(first_columns) > 4  # crops start at many places, both flip directions
    increasing = (crops[:, 0, 0, -1] > crops[:, 0, 0, 0]).float().mean()
    assert 0.2 < increasing < 0.8


def test_unpaired_data_refuses_small_images_and_channel_mix():
    with pytest.raises(InputError, match="smaller than the training crop"):
        UnpairedImages(images(4), images(4), crop=32)
    rgb = ImageSet.from_arrays(np.zeros((4, 3, 16, 16), np.float32))
    with pytest.raises(InputError, match="channel"):
        UnpairedImages(images(4), rgb)


def test_record_has_both_domains_quantiles_and_no_subject_ids():
    a, b = images(8, 0.5, "alice"), images(6, -0.5, "bob")
    record = UnpairedImages(a, b).record()
    assert record["fingerprint"] == UnpairedImages(a, b).fingerprint()
    assert record["fingerprint"] != UnpairedImages(b, a).fingerprint()
    assert record["domains"]["a"]["images"] == 8 and record["domains"]["b"]["images"] == 6
    assert record["domains"]["a"]["subjects"] == 2
    text = json.dumps(record)
    assert "alice0" not in text and group_hash("alice0") not in text  # unsalted: reversible
    assert len(record["domains"]["b"]["foreground_quantiles"]) == 101


def test_standardized_training_subjects_share_their_domain_histogram():
    rng = np.random.default_rng(0)
    pixels = np.full((8, 1, 16, 16), -1.0, np.float32)
    pixels[:, :, 4:12, 4:12] = rng.uniform(-0.5, 0.5, (8, 1, 8, 8))
    pixels[4:] = np.where(pixels[4:] > -1, pixels[4:] ** 3 * 4 + 0.3, -1.0)  # other scanner
    domain = ImageSet.from_arrays(pixels, groups=["s0"] * 4 + ["s1"] * 4)
    data = UnpairedImages(domain, domain, standardize=True)
    pooled = np.asarray(data.record()["domains"]["a"]["foreground_quantiles"])
    assert np.allclose(pooled, foreground_quantiles(pixels))  # the read images' quantiles
    for subject in (slice(0, 4), slice(4, 8)):
        assert foreground_quantiles(data.a[subject].numpy()) == pytest.approx(pooled, abs=0.02)
        assert (data.a[subject].numpy() == -1).sum() == (pixels[subject] == -1).sum()
    assert data.record()["domains"]["a"]["image_hashes"] == domain.image_hashes()
    raw = UnpairedImages(domain, domain, standardize=False)
    assert np.array_equal(raw.a.numpy(), pixels)


def test_foreground_quantiles_ignore_the_background():
    pixels = np.full((1, 1, 10, 10), -1.0, np.float32)
    pixels[0, 0, :5, :2] = np.linspace(0, 1, 10).reshape(5, 2)
    levels = foreground_quantiles(pixels, levels=3)
    assert levels == pytest.approx([0.0, 0.5, 1.0])


def test_hold_out_groups_by_name_and_count():
    a, b = images(12, group="p"), images(8, group="p")  # groups p0 p1 p2 / p0 p1
    (a_kept, b_kept), held = hold_out_groups([a, b], "p1")
    assert held == ["p1"] and "p1" not in set(a_kept.groups) | set(b_kept.groups)
    assert len(a_kept) == 8 and len(b_kept) == 4
    _, held_count = hold_out_groups([a, b], "1", seed=4)
    assert held_count in (["p0"], ["p1"])  # drawn from the subjects both domains have
    assert hold_out_groups([a, b], "1", seed=4)[1] == held_count
    with pytest.raises(InputError, match="unknown subject"):
        hold_out_groups([a, b], "p9")
    with pytest.raises(InputError, match="at least one must be left"):
        hold_out_groups([a, b], "2")
    with pytest.raises(InputError, match="leaves no training image"):
        hold_out_groups([a, b], "p0,p1")


# -- train cyclegan ------------------------------------------------------------------------


def test_train_cyclegan_writes_a_complete_run(trained, volumes):
    config = read_run_config(trained)
    assert config.kind == "cyclegan"
    assert config.model.crop == 24 and config.model.channels == 1
    assert config.model.standardize is True
    assert config.data.val_subjects == ()  # names may name patients: hashes of images
    held = [read_images(f"{volumes}/*/{contrast}.nii.gz") for contrast in ("t1", "t2")]
    assert list(config.data.val_image_hashes) == held_out_hashes(held, ["s2"])
    record = json.loads((trained / "training_data.json").read_text())
    assert record["domains"]["a"]["subjects"] == 2 and "group_hashes" not in record["domains"]["a"]
    assert config.data.domain_a == "path not recorded"
    assert str(trained.parent) not in (trained / "config.yaml").read_text()
    lines = [json.loads(x) for x in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2]
    assert {"loss_g", "loss_d_a", "loss_cycle_a", "lr_generator"} <= set(lines[0])
    assert all(math.isfinite(v) for line in lines for v in line.values())
    grid = Image.open(trained / "samples" / "epoch_0002.png")
    assert grid.height > grid.width  # six rows: A, A->B, A->B->A, B, B->A, B->A->B
    for name in ("progress.gif", "losses.png", "model.safetensors", "trainer_state.pt"):
        assert (trained / name).is_file()
    assert load_run(trained).model.kind == "cyclegan"


def test_no_standardize_and_structure_options_reach_the_run(volumes, tmp_path):
    out = tmp_path / "plain"
    result = invoke("train", "cyclegan", "--domain-a", f"{volumes}/s0/t1.nii.gz", "--domain-b",
                    f"{volumes}/s1/t2.nii.gz", "--out", out, "--epochs", "1", "--crop", "24",
                    "--no-standardize", "--lambda-structure", "1.5", *TINY)
    assert result.exit_code == 0, result.output
    saved = read_run_config(out).model
    assert (saved.standardize, saved.lambda_structure) == (False, 1.5)
    assert load_run(out).model.config.lambda_structure == 1.5
    metrics = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert metrics["loss_structure_ab"] > 0


def test_intensity_prior_keeps_the_training_domains_quantiles(volumes, tmp_path):
    out = tmp_path / "prior"
    result = invoke("train", "cyclegan", "--domain-a", f"{volumes}/s0/t1.nii.gz", "--domain-b",
                    f"{volumes}/s1/t2.nii.gz", "--out", out, "--epochs", "1", "--crop", "24",
                    "--intensity-prior", "inverted", "--lambda-identity", "0", *TINY)
    assert result.exit_code == 0, result.output
    assert read_run_config(out).model.intensity_prior == "inverted"
    loaded = load_run(out).model
    domains = json.loads((out / "training_data.json").read_text())["domains"]
    for net, source, target in ((loaded.generator_ab, "a", "b"),
                                (loaded.generator_ba, "b", "a")):
        assert net.prior.invert
        assert net.prior.source.tolist() == pytest.approx(domains[source]["foreground_quantiles"])
        assert net.prior.target.tolist() == pytest.approx(domains[target]["foreground_quantiles"])


def test_resume_holds_out_the_same_subjects_without_their_names(trained, volumes, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    result = invoke("train", "cyclegan", "--domain-a", f"{volumes}/*/t1.nii.gz",
                    "--domain-b", f"{volumes}/*/t2.nii.gz", "--out", copy, "--resume", *TINY)
    assert result.exit_code == 0, result.output
    assert "held out: s2" in result.output


@pytest.mark.parametrize("paired, lambda_gan", [(False, 1.0), (True, 1.0), (True, 0.0)],
                         ids=["unpaired", "paired-2.5d-augmented", "paired-regression"])
def test_cyclegan_resume_after_a_kill_repeats_an_uninterrupted_run(volumes, tmp_path, paired,
                                                                    lambda_gan):
    a = read_images(f"{volumes}/s0/t1.nii.gz")
    b = read_images(f"{volumes}/{'s0' if paired else 's1'}/t2.nii.gz")
    model_config = CycleGANConfig(ngf=4, ndf=4, n_blocks=1, pool_size=3, crop=24, paired=paired,
                                  context=int(paired), intensity_augment=paired,
                                  lambda_gan=lambda_gan)
    train_config = TrainConfig(epochs=3, batch_size=2, checkpoint_every=1, seed=3, preview=8,
                               decay_epochs=2)
    config = RunConfig("cyclegan", model_config, train_config)
    pairing = PairedImages if paired else UnpairedImages

    def train(run_dir, model, resume=False):
        data = pairing(a, b, crop=24, context=int(paired), intensity_augment=paired)
        return fit(model, data, config, run_dir, resume=resume, progress=False)

    train(tmp_path / "a", build_model(config, seed=3))
    killed = build_model(config, seed=3)
    real_step, calls = killed.train_step, [0]

    def die_in_epoch_two(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 6:  # 4 steps per epoch: the second step of epoch 2
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    killed.train_step = die_in_epoch_two
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "b", killed)
    assert checkpoint.load_state(tmp_path / "b")["epoch"] == 1
    torch.manual_seed(999)  # a fresh process
    train(tmp_path / "b", build_model(config, seed=42), resume=True)
    weights = [load_file(d / "model.safetensors") for d in (tmp_path / "a", tmp_path / "b")]
    assert set(weights[0]) == set(weights[1])
    assert any(k.startswith("pool_") for k in weights[0])  # the image pools are saved
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    states = [checkpoint.load_state(d) for d in (tmp_path / "a", tmp_path / "b")]
    assert states[0]["schedulers"] == states[1]["schedulers"]
    lines = [[{k: v for k, v in json.loads(x).items() if k != "images_per_s"}
              for x in (d / "metrics.jsonl").read_text().splitlines()]
             for d in (tmp_path / "a", tmp_path / "b")]
    assert lines[0] == lines[1]
    assert [line["lr_generator"] for line in lines[0]] == pytest.approx([2e-4, 2e-4 * 2 / 3,
                                                                         2e-4 / 3], rel=1e-5)


def test_train_cyclegan_errors(volumes, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = invoke("train", "cyclegan", "--domain-a", empty, "--domain-b",
                    f"{volumes}/*/t2.nii.gz", "--out", tmp_path / "r", *TINY)
    assert result.exit_code == 1 and "empty: no image files found" in result.output
    assert not (tmp_path / "r").exists()
    four_d = tmp_path / "4d.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((8, 8, 4, 2), np.float32), np.eye(4)), four_d)
    result = invoke("train", "cyclegan", "--domain-a", four_d, "--domain-b",
                    f"{volumes}/*/t2.nii.gz", "--out", tmp_path / "r", *TINY)
    assert result.exit_code == 1 and "4D" in result.output
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(mixed / "gray.png")
    red = np.zeros((16, 16, 3), np.uint8)
    red[..., 0] = 200
    Image.fromarray(red).save(mixed / "red.png")
    result = invoke("train", "cyclegan", "--domain-a", mixed, "--domain-b", mixed,
                    "--out", tmp_path / "r", *TINY)
    assert result.exit_code == 1 and "channel" in result.output
    assert not (tmp_path / "r").exists()


# -- translate -----------------------------------------------------------------------------


def test_translate_a_volume_keeps_shape_affine_and_header(trained, volumes, tmp_path):
    source = volumes / "s2" / "t1.nii.gz"
    out = tmp_path / "out"
    result = invoke("translate", trained, source, "--direction", "a2b", "--out", out,
                    "--no-progress")
    assert result.exit_code == 0, result.output
    original, translated = nib.load(source), nib.load(out / "volume_0001.nii.gz")
    assert translated.shape == original.shape
    assert np.allclose(translated.affine, original.affine)
    assert translated.header["descrip"].tobytes().startswith(b"phantom")
    values = translated.get_fdata()
    assert np.isfinite(values).all()
    target = json.loads((trained / "training_data.json").read_text())["domains"]["b"]
    low, high = target["intensity"]["low"], target["intensity"]["high"]
    assert low - 1e-3 <= values.min() and values.max() <= high + 1e-3  # the T2 scale
    rows = list(csv.DictReader((out / "manifest.csv").open()))
    assert rows[0]["output"] == "volume_0001.nii.gz" and int(rows[0]["slices"]) == 8
    assert rows[0]["input"] == "1"  # the input's position: its path may name a patient
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["model_fingerprint"] == load_run(trained).fingerprint


def test_standardized_translation_ignores_how_the_scanner_spread_intensities(
        trained, volumes, monkeypatch):
    loaded = load_run(trained)
    # an identity "generator" shows what the model is given
    monkeypatch.setattr(loaded.model, "translate", lambda images, *args, **kwargs: images)
    volume = nib.load(volumes / "s2" / "t1.nii.gz").get_fdata()
    volume = np.where(foreground_mask(volume), volume, 0.0)  # skull-stripped: background 0
    curved = np.where(volume > 0, volume ** 2 / volume.max() + 7.0, 0.0)  # monotone, nonlinear
    assert loaded.model.config.standardize
    plain, _ = translate_volume(loaded, volume, "a2b")
    again, _ = translate_volume(loaded, curved, "a2b")
    span = plain.max() - plain.min()
    assert np.abs(plain - again).mean() < 0.01 * span
    loaded.model.config = replace(loaded.model.config, standardize=False)
    plain, _ = translate_volume(loaded, volume, "a2b")
    again, _ = translate_volume(loaded, curved, "a2b")
    assert np.abs(plain - again).mean() > 0.03 * span


def test_translate_names_no_input_unless_asked(trained, volumes, tmp_path):
    patient = tmp_path / "Doe_Jane_MRN123456"
    patient.mkdir()
    (patient / "t2.nii.gz").write_bytes((volumes / SUBJECTS[0] / "t2.nii.gz").read_bytes())
    inputs = [patient / "t2.nii.gz", *(volumes / s / "t2.nii.gz" for s in SUBJECTS[1:])]
    result = invoke("translate", trained, *inputs, "--direction", "b2a", "--out", tmp_path / "o",
                    "--no-progress")
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in (tmp_path / "o").iterdir() if not p.name.startswith("."))
    assert written == ["manifest.csv", "provenance.json",
                       *(f"volume_{k:04d}.nii.gz" for k in range(1, len(inputs) + 1))]
    text = "".join(p.read_text() for p in (tmp_path / "o").glob("*.*") if p.suffix != ".gz")
    assert "Doe_Jane" not in text and "MRN123456" not in text and str(volumes) not in text
    assert str(tmp_path) not in text


def test_translate_keeps_subject_folders_when_asked(trained, volumes, tmp_path):
    inputs = [volumes / s / "t2.nii.gz" for s in SUBJECTS]
    result = invoke("translate", trained, *inputs, "--direction", "b2a", "--out", tmp_path / "o",
                    "--keep-source-names", "--no-progress")
    assert result.exit_code == 0, result.output
    assert all((tmp_path / "o" / s / "t2.nii.gz").is_file() for s in SUBJECTS)
    rows = list(csv.DictReader((tmp_path / "o" / "manifest.csv").open()))
    assert [row["input"] for row in rows] == [str(p) for p in inputs]


def test_translate_refuses_an_input_given_twice(trained, volumes, tmp_path):
    source = volumes / SUBJECTS[0] / "t2.nii.gz"
    result = invoke("translate", trained, source, source.parent / ".." / SUBJECTS[0] / "t2.nii.gz",
                    "--direction", "b2a", "--out", tmp_path / "o", "--no-progress")
    assert result.exit_code == 1 and "given twice" in result.output
    assert not (tmp_path / "o").exists()


def test_translate_a_dicom_series_into_a_new_deidentified_series(trained, tmp_path):
    series = tmp_path / "series"
    series.mkdir()
    source_uids = set()
    for k, path in enumerate(sorted(pydicom.data.get_testdata_files("MR_small.dcm"))[:1] * 3):
        ds = pydicom.dcmread(path)
        ds.PatientName, ds.PatientID = "Doe^Jane", "PID-12345"
        ds.InstanceNumber = k + 1
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        source_uids |= {ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID}
        ds.save_as(series / f"slice{k}.dcm")
    out = tmp_path / "out"
    result = invoke("translate", trained, series, "--direction", "a2b", "--out", out,
                    "--no-progress")
    assert result.exit_code == 0, result.output
    files = sorted((out / "series_0001").glob("*.dcm"))
    assert len(files) == 3
    written = [pydicom.dcmread(f) for f in files]
    assert len({ds.SeriesInstanceUID for ds in written}) == 1
    for ds in written:
        assert ds.ConversionType == "SYN" and ds.PatientIdentityRemoved == "YES"
        assert {ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID}.isdisjoint(
            source_uids)
        text = str(ds)
        assert "Doe" not in text and "PID-12345" not in text
        assert ds.pixel_array.shape == (64, 64)


def test_translate_pictures_file_for_file(trained, tmp_path):
    folder = tmp_path / "pngs" / "sub"
    folder.mkdir(parents=True)
    for name in ("x.png", "y.png"):
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 36), np.uint8)).save(
            folder / name)
    result = invoke("translate", trained, tmp_path / "pngs", "--direction", "a2b", "--out",
                    tmp_path / "out", "--no-progress")
    assert result.exit_code == 0, result.output
    outputs = sorted(p.relative_to(tmp_path / "out").as_posix()
                     for p in (tmp_path / "out").rglob("*.png"))
    assert outputs == ["images_0001/00001.png", "images_0001/00002.png"]
    assert Image.open(tmp_path / "out" / "images_0001/00001.png").size == (36, 40)
    result = invoke("translate", trained, tmp_path / "pngs", "--direction", "a2b", "--out",
                    tmp_path / "kept", "--keep-source-names", "--no-progress")
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "kept" / "pngs/sub/x.png").size == (36, 40)
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 36, 3), np.uint8)).save(rgb)
    result = invoke("translate", trained, rgb, "--direction", "a2b", "--out", tmp_path / "o")
    assert result.exit_code == 1 and "3 channel(s) but the translator takes 1" in result.output
    assert not (tmp_path / "o").exists()


def test_translate_errors_leave_nothing(trained, volumes, tmp_path):
    source = volumes / "s2" / "t1.nii.gz"
    dcgan = tmp_path / "dcgan"
    made = invoke("train", "dcgan", "phantom:n=16,size=32", "--out", dcgan, "--size", "32",
                  "--width", "4", "--epochs", "1", "--batch-size", "8", "--no-progress")
    assert made.exit_code == 0, made.output
    result = invoke("translate", dcgan, source, "--direction", "a2b", "--out", tmp_path / "o")
    assert result.exit_code == 1 and "not 'cyclegan'" in result.output
    result = invoke("translate", trained, source, "--direction", "up", "--out", tmp_path / "o")
    assert result.exit_code == 2 and "--direction" in result.output
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    result = invoke("translate", trained, source, "--direction", "a2b", "--out", existing)
    assert result.exit_code == 1 and "already exists" in result.output
    assert [p.name for p in existing.iterdir()] == ["keep.txt"]
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a nifti")
    result = invoke("translate", trained, source, broken, "--direction", "a2b",
                    "--out", tmp_path / "o")
    assert result.exit_code == 1 and "broken.nii.gz" in result.output
    assert not (tmp_path / "o").exists()
    assert not list(tmp_path.glob(".o.partial-*"))


def test_translate_real_brain_volume(shared_data, trained, tmp_path):
    source = real_file(shared_data, "brain-t1t2/TCGA-DU-7294/t1.nii.gz")
    result = invoke("translate", trained, source, "--direction", "a2b", "--out", tmp_path / "o",
                    "--no-progress")
    assert result.exit_code == 0, result.output
    translated = nib.load(tmp_path / "o" / "volume_0001.nii.gz")
    assert translated.shape == nib.load(source).shape == (240, 240, 155)


@pytest.mark.slow
def test_blend_sweep_on_a_real_brain_subject_ends_at_the_inverted_map(shared_data, trained):
    subject = real_file(shared_data, "brain-t1t2/BraTS-GLI-00001-000")
    source, target = str(subject / "t1.nii.gz"), str(subject / "t2.nii.gz")
    run = load_run(trained)
    sweep = sweep_blend(run, source, target, "inverted", (0.0, 1.0))
    scores = evaluate_run(run, source, target).per_subject["BraTS-GLI-00001-000"]
    for metric in ("psnr", "ssim_bbox"):
        values = sweep.per_subject["BraTS-GLI-00001-000"][metric]
        assert values[0] == pytest.approx(scores["synthmed"][metric], abs=1e-6)
        assert values[1] == pytest.approx(scores["inverted histogram matching"][metric],
                                          abs=0.05 if metric == "psnr" else 0.005)


# -- evaluate translation ----------------------------------------------------------------------


def test_evaluate_translation_on_the_held_out_subject(trained, volumes, tmp_path):
    out = tmp_path / "eval"
    result = invoke("evaluate", "translation", trained, "--source", volumes / "s2" / "t1.nii.gz",
                    "--target", volumes / "s2" / "t2.nii.gz", "--out", out)
    assert result.exit_code == 0, result.output
    assert "inverted histogram matching" in result.output
    report = json.loads((out / "translation.json").read_text())
    assert set(report["per_subject"]) == {"s2"}
    assert {"synthmed", "identity", "best global intensity map"} <= set(report["per_subject"]["s2"])
    assert (out / "translation.md").is_file() and (out / "panel_s2.png").is_file()


def test_evaluate_translation_refuses_training_subjects_and_unpaired_volumes(trained, volumes,
                                                                            tmp_path):
    out = tmp_path / "eval"
    seen = invoke("evaluate", "translation", trained, "--source", f"{volumes}/*/t1.nii.gz",
                  "--target", f"{volumes}/*/t2.nii.gz", "--out", out)
    assert seen.exit_code == 1 and "training domain A" in seen.output
    assert "s0" in seen.output
    unpaired = invoke("evaluate", "translation", trained, "--source", f"{volumes}/s2/t1.nii.gz",
                      "--target", f"{volumes}/*/t2.nii.gz", "--out", out)
    assert unpaired.exit_code == 1 and "pair one to one" in unpaired.output
    wrong_grid = tmp_path / "s2" / "t2.nii.gz"
    wrong_grid.parent.mkdir()
    noise = np.random.default_rng(0).uniform(1, 2, (16, 16, 8)).astype(np.float32)
    nib.save(nib.Nifti1Image(noise, np.eye(4)), wrong_grid)
    shape = invoke("evaluate", "translation", trained, "--source", volumes / "s2" / "t1.nii.gz",
                   "--target", wrong_grid, "--out", out)
    assert shape.exit_code == 1 and "same voxel grid" in shape.output
    assert not out.exists()


def test_evaluate_translation_without_paired_truth(trained, volumes, tmp_path):
    """A new subject of 16 slices (the metrics need 12 reference images for their floor)."""
    (subject,) = write_phantom_volumes(tmp_path / "new", PhantomConfig(
        n=16, size=32, seed=7, slices_per_subject=16))
    new = tmp_path / "new" / subject
    out = tmp_path / "unpaired"
    result = invoke("evaluate", "translation", trained, "--source", new / "t1.nii.gz",
                    "--reference", new / "t2.nii.gz", "--domain-steps", "40", "--out", out)
    assert result.exit_code == 0, result.output
    reports = json.loads((out / "unpaired.json").read_text())
    assert set(reports) == {"synthmed", "identity"}
    for report in reports.values():
        assert report["extractor"].startswith("domain classifier (source vs target domain, "
                                              "small-cnn, 40 steps)")
        assert {"fid", "kid", "precision", "recall"} <= set(report["overall"])
        assert report["floor"]["fid"] is not None
    assert "untranslated source (identity)" in (out / "fidelity.md").read_text()
    both = invoke("evaluate", "translation", trained, "--source", volumes / "s2" / "t1.nii.gz",
                  "--out", tmp_path / "x")
    assert both.exit_code == 2 and "exactly one" in both.output
    seen = invoke("evaluate", "translation", trained, "--source", f"{volumes}/*/t1.nii.gz",
                  "--reference", volumes / "s2" / "t2.nii.gz", "--out", tmp_path / "y")
    assert seen.exit_code == 1 and "training domain A" in seen.output

"""The translator's modes beyond the unpaired CycleGAN: paired (pix2pix) training on
co-registered pairs and its pairing checks, 2.5D slice stacks, and intensity augmentation of
the generators' inputs; each through the data, the model and the command line."""

from __future__ import annotations

import json
from dataclasses import replace

import nibabel as nib
import numpy as np
import pytest
import torch

from synthmed.augment.augmentation import random_affine
from synthmed.augment.dataset import ImageSet
from synthmed.augment.phantom import PhantomConfig, write_phantom_volumes
from synthmed.augment.readers import read_images
from synthmed.errors import InputError
from synthmed.gan.config import CycleGANConfig
from synthmed.gan.cyclegan import CycleGAN
from synthmed.gan.data import (
    PairedImages,
    UnpairedImages,
    paired_slices,
    slice_positions,
    slice_stacks,
)
from synthmed.gan.run import load_run
from synthmed.gan.translate import translate_images
from synthmed.gan.translator_nets import ResizeUpUNet, UnetGenerator

from ..conftest import invoke, one_line_error

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--ngf", "4", "--ndf", "4", "--blocks", "1", "--no-progress"]


def subject_images(n: int, group: str, sign: float = 1.0, size: int = 16) -> ImageSet:
    """``n`` slices of one subject: a disc whose row 0 encodes the slice index, times
    ``sign`` (-1: the 'other contrast' of the same anatomy)."""
    yy, xx = np.mgrid[:size, :size]
    disc = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2).astype(np.float32)
    pixels = np.where(disc, 0.5 * sign, -1.0)[None, None].repeat(n, 0).astype(np.float32)
    pixels[:, 0, size // 2, :] = np.where(disc[size // 2], np.arange(n)[:, None] / 100 * sign,
                                          -1.0)
    sources = [f"/data/{group}/t.nii.gz#slice={10 + k}" for k in range(n)]
    return ImageSet.from_arrays(pixels, groups=[group] * n, sources=sources)


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    """Three phantom subjects, T1 and T2 volumes ``(32, 32, 8)`` on one grid."""
    root = tmp_path_factory.mktemp("pairs")
    write_phantom_volumes(root, PhantomConfig(n=24, size=32, seed=2))
    return root


# -- 2.5D stacks -----------------------------------------------------------------------------


def test_slice_stacks_take_neighbours_by_position_and_repeat_the_edges():
    values = np.array([0, 1, 3, 7, 8], np.float32)  # positions 0, 1, 3 of s; 7, 8 of t
    images = values.reshape(5, 1, 1, 1)
    groups = np.array(["s", "s", "s", "t", "t"])
    positions = np.array([1, 0, 3, 8, 7])  # not in order
    images = images[[1, 0, 2, 4, 3]]  # the image at each position
    stacks = slice_stacks(images, groups, positions, 1)[:, :, 0, 0]
    # position 1: 0 below, 3 above is two away, so the nearest towards the centre (1 itself)
    assert stacks[0].tolist() == [0, 1, 1]
    assert stacks[1].tolist() == [0, 0, 1]  # the lower edge repeats
    assert stacks[2].tolist() == [3, 3, 3]  # 2 and 4 are missing: the slice itself
    assert stacks[3].tolist() == [7, 8, 8] and stacks[4].tolist() == [7, 7, 8]  # own subject
    assert slice_stacks(images, groups, positions, 0) is images


def test_slice_positions_read_nifti_slices_else_the_order_per_subject():
    nifti = subject_images(3, "s")
    assert slice_positions(nifti).tolist() == [10, 11, 12]
    plain = ImageSet.from_arrays(np.zeros((4, 1, 4, 4), np.float32), groups=["a", "b", "a", "a"])
    assert slice_positions(plain).tolist() == [0, 0, 1, 2]


# -- pairing ---------------------------------------------------------------------------------


def test_paired_slices_match_subject_and_position_and_drop_the_rest():
    a = ImageSet.concatenate([subject_images(4, "s"), subject_images(3, "t")])
    b = ImageSet.concatenate([subject_images(3, "t", -1), subject_images(4, "s", -1).subset(
        [3, 1, 0])])  # s's slice 12 is missing in B, and B's order differs
    keep_a, keep_b = paired_slices(a, b)
    assert keep_a.tolist() == [0, 1, 3, 4, 5, 6]
    assert [b.sources[k] for k in keep_b] == [a.sources[k] for k in keep_a]
    one_each = paired_slices(subject_images(3, "x"), subject_images(3, "y", -1))
    assert [k.tolist() for k in one_each] == [[0, 1, 2], [0, 1, 2]]  # one subject each: as is


def test_pairing_is_refused_when_the_data_are_not_pairs():
    a = subject_images(4, "s")
    with pytest.raises(InputError, match="one grid"):
        paired_slices(a, subject_images(4, "s", -1, size=20))
    with pytest.raises(InputError, match=r"subject t has images in domain B only \(the other "
                       "domain has s\\)"):
        paired_slices(a, ImageSet.concatenate([subject_images(4, "s", -1),
                                               subject_images(2, "t", -1)]))
    shifted = subject_images(4, "s", -1)
    moved = np.full_like(shifted.images, -1.0)
    moved[..., 11:] = shifted.images[..., :5]  # the anatomy moved 11 px: not co-registered
    with pytest.raises(InputError, match="not co-registered"):
        paired_slices(a, ImageSet.from_arrays(moved, groups=shifted.groups,
                                              sources=shifted.sources))
    far = subject_images(4, "s", -1)
    far = ImageSet.from_arrays(far.images, groups=far.groups,
                               sources=[s.replace("=1", "=9") for s in far.sources])
    with pytest.raises(InputError, match="no slice in both domains"):
        paired_slices(a, far)


def test_paired_batches_crop_and_flip_both_contrasts_alike():
    a, b = subject_images(8, "s"), subject_images(8, "s", -1)
    data = PairedImages(a, b, crop=8, flip=True, standardize=False)
    batch = data.batch(torch.arange(8).repeat(4), torch.Generator().manual_seed(0))
    assert len(batch) == 2 and batch[0].shape == (32, 1, 8, 8)
    assert torch.equal(torch.where(batch[0] > -1, -batch[0], batch[0]), batch[1])
    different = {tuple(x.flatten().tolist()) for x in batch[0]}
    assert len(different) > 8  # crops and flips vary, yet each pair stays aligned
    assert data.record()["kind"] == "paired"
    assert data.fingerprint() != UnpairedImages(a, b).fingerprint()


def test_stacked_pairs_carry_their_neighbours():
    a, b = subject_images(5, "s"), subject_images(5, "s", -1)
    data = PairedImages(a, b, flip=False, standardize=False, context=2)
    a_stack, b_stack = data.batch(torch.tensor([0, 4]), torch.Generator())
    assert a_stack.shape == (2, 5, 16, 16)
    row = a_stack[:, :, 8, 8].mul(100).round().tolist()  # the slice index in each channel
    assert row == [[0, 0, 0, 1, 2], [2, 3, 4, 4, 4]]
    assert torch.equal(torch.where(a_stack > -1, -a_stack, a_stack), b_stack)


# -- intensity augmentation ------------------------------------------------------------------


def test_intensity_augmentation_changes_only_the_inputs_foreground():
    a, b = subject_images(8, "s"), subject_images(8, "s", -1)
    data = PairedImages(a, b, flip=False, standardize=False, intensity_augment=True)
    batch = data.batch(torch.arange(8), torch.Generator().manual_seed(5))
    again = data.batch(torch.arange(8), torch.Generator().manual_seed(5))
    assert len(batch) == 4 and all(torch.equal(x, y) for x, y in zip(batch, again, strict=True))
    real_a, real_b, input_a, input_b = batch
    assert torch.equal(real_a, torch.from_numpy(a.images))  # targets stay clean
    foreground = real_a > -1
    assert not torch.equal(input_a[foreground], real_a[foreground])
    assert torch.equal(input_a[~foreground], real_a[~foreground])  # background stays -1
    assert not torch.equal(input_b, real_b)


# -- spatial augmentation --------------------------------------------------------------------


def test_spatial_augmentation_moves_both_contrasts_of_a_pair_alike():
    a, b = subject_images(8, "s"), subject_images(8, "s")  # two identical "contrasts"
    data = PairedImages(a, b, flip=False, standardize=False, spatial_augment=True)
    moved_a, moved_b = data.batch(torch.arange(8), torch.Generator().manual_seed(5))
    again = data.batch(torch.arange(8), torch.Generator().manual_seed(5))
    assert torch.equal(moved_a, again[0]) and torch.equal(moved_b, again[1])
    assert moved_a.shape == (8, 1, 16, 16)
    original = torch.from_numpy(a.images)
    assert (moved_a - original).abs().amax(dim=(1, 2, 3)).min() > 0.01  # every slice moved
    assert torch.equal(moved_a, moved_b)  # by one move: still a pair
    unpaired = UnpairedImages(a, b, flip=False, standardize=False, spatial_augment=True)
    moved_a, moved_b = unpaired.batch(torch.arange(8), torch.Generator().manual_seed(5))
    assert not torch.equal(moved_a, moved_b)  # each image of its own


def test_random_affine_moves_a_dot_and_keeps_the_batch_shape():
    images = -torch.ones(16, 2, 21, 21)
    images[:, :, 4, 15] = 1.0  # an off-centre dot, in both channels
    moved = random_affine(images, torch.Generator().manual_seed(0), flip=False)
    assert moved.shape == images.shape
    assert torch.equal(moved[:, 0], moved[:, 1])  # one move per image, all its channels
    peaks = moved[:, 0].flatten(1).argmax(dim=1)
    assert len(set(peaks.tolist())) > 8  # the dot lands in different places
    assert moved.amin() > -1 - 1e-6 and moved.amax() < 1 + 1e-6  # bilinear: no overshoot


# -- the model -------------------------------------------------------------------------------


@pytest.mark.parametrize("generator", ["resnet", "unet"])
def test_paired_model_learns_the_pair_with_l1_and_a_conditional_discriminator(generator):
    torch.manual_seed(0)
    config = CycleGANConfig(ngf=4, ndf=4, n_blocks=1, d_layers=2, crop=16, paired=True,
                            context=1, generator=generator)
    model = CycleGAN(config)
    first_conv = next(m for m in model.discriminator_a.modules() if isinstance(m, torch.nn.Conv2d))
    assert first_conv.in_channels == 6  # (input, output) stacks of 3 slices
    first_conv = next(m for m in model.generator_ab.modules() if isinstance(m, torch.nn.Conv2d))
    assert first_conv.in_channels == 3
    a = torch.from_numpy(slice_stacks(subject_images(4, "s").images, np.zeros(4),
                                      np.arange(4), 1))
    b = torch.where(a > -1, -a, a)
    optimizers, rng = model.make_optimizers(), torch.Generator().manual_seed(0)
    first = model.train_step((a, b), optimizers, rng)
    assert {"loss_l1_ab", "loss_l1_ba"} <= set(first) and "loss_cycle_a" not in first
    assert first["loss_l1_ab"] == pytest.approx(
        100 * torch.nn.functional.l1_loss(model.generator_ab(a), b).item(), rel=0.3)
    for _ in range(30):
        last = model.train_step((a, b), optimizers, rng)
    assert last["loss_l1_ab"] < 0.75 * first["loss_l1_ab"]
    assert model.translate(a, "a2b").shape == (4, 3, 16, 16)
    assert torch.equal(model.centre(a), a[:, 1:2])
    rows = model.preview((a[:2], b[:2]))
    assert rows.shape == (4, 2, 1, 16, 16)  # A, A->B, B (the truth), B->A: centre slices
    assert torch.equal(rows[2], b[:2, 1:2]) and torch.equal(rows[0], a[:2, 1:2])


def test_paired_regression_trains_the_generators_alone_on_the_squared_error():
    torch.manual_seed(0)
    config = CycleGANConfig(ngf=4, ndf=4, d_layers=2, crop=16, paired=True, generator="unet",
                            paired_loss="mse", lambda_gan=0.0)
    model = CycleGAN(config)
    a = torch.from_numpy(subject_images(4, "s").images)
    b = torch.where(a > -1, -a, a)
    optimizers = model.make_optimizers()
    assert set(optimizers) == {"generator"}
    discriminator = [p.clone() for p in model.discriminator_b.parameters()]
    expected = 100 * torch.nn.functional.mse_loss(model.generator_ab(a), b).item()
    first = model.train_step((a, b), optimizers, torch.Generator().manual_seed(0))
    assert set(first) == {"loss_g", "loss_mse_ab", "loss_mse_ba"}  # no GAN term, no D step
    assert first["loss_mse_ab"] == pytest.approx(expected, rel=1e-4)
    assert first["loss_g"] == pytest.approx(first["loss_mse_ab"] + first["loss_mse_ba"])
    after = list(model.discriminator_b.parameters())
    assert all(torch.equal(p, q) for p, q in zip(discriminator, after, strict=True))
    structured = CycleGAN(replace(config, lambda_structure=2.0))  # paired takes it too
    squared_ncc = -structured.local_ncc(structured.generator_ab(a).float(), a).item()
    losses = structured.train_step((a, b), structured.make_optimizers(),
                                   torch.Generator().manual_seed(0))
    assert losses["loss_structure_ab"] == pytest.approx(2.0 * (1.0 - squared_ncc), rel=1e-4)
    assert losses["loss_g"] == pytest.approx(sum(v for k, v in losses.items() if k != "loss_g"))
    with pytest.raises(InputError, match="lambda_gan 0 needs paired training"):
        CycleGANConfig(lambda_gan=0.0)
    with pytest.raises(InputError, match="paired_loss must be one of l1, mse"):
        CycleGANConfig(paired=True, paired_loss="l2")


# -- the command line ------------------------------------------------------------------------


def test_train_paired_2_5d_translates_and_evaluates_a_volume(volumes, tmp_path):
    run = tmp_path / "p2p"
    result = invoke("train", "cyclegan", "--domain-a", f"{volumes}/*/t1.nii.gz",
                    "--domain-b", f"{volumes}/*/t2.nii.gz", "--val-subjects", "phantom-s0002",
                    "--out", run, "--epochs", "1", "--crop", "24", "--paired", "--context", "1",
                    "--intensity-augment", "--spatial-augment", "--generator", "unet",
                    "--upsample", "resize", *TINY)
    assert result.exit_code == 0, result.output
    assert "trained pix2pix (paired) on 16 A and 16 B images" in result.output
    model = load_run(run).model
    config = model.config
    assert (config.paired, config.context, config.intensity_augment,
            config.spatial_augment) == (True, 1, True, True)
    assert config.generator == "unet" and isinstance(model.generator_ab, UnetGenerator)
    assert isinstance(model.generator_ab.model, ResizeUpUNet)  # --upsample reaches the U-Net
    assert json.loads((run / "training_data.json").read_text())["kind"] == "paired"
    held_out = volumes / "phantom-s0002"
    out = tmp_path / "translated"
    result = invoke("translate", run, held_out / "t1.nii.gz", "--direction", "a2b",
                    "--out", out)
    assert result.exit_code == 0, result.output
    volume = nib.load(out / "volume_0001.nii.gz").get_fdata()
    assert volume.shape == nib.load(held_out / "t1.nii.gz").shape
    assert np.isfinite(volume).all() and volume.std() > 0
    result = invoke("evaluate", "translation", run, "--source", held_out / "t1.nii.gz",
                    "--target", held_out / "t2.nii.gz", "--out", tmp_path / "eval")
    assert result.exit_code == 0, result.output


def test_translate_images_stacks_by_the_given_positions(volumes, tmp_path):
    run = tmp_path / "stacked"
    result = invoke("train", "cyclegan", "--domain-a", f"{volumes}/phantom-s0000/t1.nii.gz",
                    "--domain-b", f"{volumes}/phantom-s0000/t2.nii.gz", "--out", run,
                    "--epochs", "1", "--crop", "24", "--context", "1", *TINY)
    assert result.exit_code == 0, result.output
    loaded = load_run(run)
    images = read_images(f"{volumes}/phantom-s0001/t1.nii.gz").images[:4]
    consecutive = translate_images(loaded, images, "a2b")
    assert consecutive.shape == images.shape
    apart = translate_images(loaded, images, "a2b", positions=np.array([0, 1, 2, 9]))
    assert np.allclose(apart[:2], consecutive[:2])  # same neighbours
    assert not np.allclose(apart[3], consecutive[3])  # slice 9 has no neighbour: repeats


def test_paired_training_refuses_unpaired_data_and_leaves_nothing(volumes, tmp_path):
    run = tmp_path / "refused"
    result = invoke("train", "cyclegan", "--domain-a", f"{volumes}/*/t1.nii.gz",
                    "--domain-b", f"{volumes}/phantom-s0000/t2.nii.gz", "--out", run,
                    "--epochs", "1", "--paired", *TINY)
    one_line_error(result, "phantom-s0000 has images in domain A only (the other domain has "
                   "t2)", "--paired")
    assert not run.exists()


def test_train_regression_translator_from_the_command_line(volumes, tmp_path):
    run = tmp_path / "regression"
    result = invoke("train", "cyclegan", "--domain-a", f"{volumes}/*/t1.nii.gz",
                    "--domain-b", f"{volumes}/*/t2.nii.gz", "--out", run, "--epochs", "1",
                    "--crop", "0", "--paired", "--paired-loss", "mse", "--lambda-gan", "0",
                    "--generator", "unet", *TINY)
    assert result.exit_code == 0, result.output
    config = load_run(run).model.config
    assert (config.paired_loss, config.lambda_gan, config.crop) == ("mse", 0.0, 0)
    metrics = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert "loss_mse_ab" in metrics and "d_real" not in metrics
    refused = invoke("train", "cyclegan", "--domain-a", f"{volumes}/*/t1.nii.gz",
                     "--domain-b", f"{volumes}/*/t2.nii.gz", "--out", tmp_path / "no",
                     "--epochs", "1", "--lambda-gan", "0", *TINY)
    one_line_error(refused, "lambda_gan 0 needs paired training")
    assert not (tmp_path / "no").exists()

"""Data-parallel training as under ``torchrun``: two CPU processes (gloo) train one DCGAN
(and one CycleGAN).

The copies must stay identical (rank 0's initial weights broadcast, gradients averaged before
each optimiser step, normalisation statistics averaged at each epoch's end), each process must
see its own share of every batch, only rank 0 writes the run directory, and a resumed run
restores each process's random state.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

WORLD = 2
EPOCHS = 2
N_IMAGES = 32
BATCH = 4  # per process: global batches of 8, 4 steps per epoch


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world: int, port: int, root: str) -> None:
    """One process of the group: train 2 epochs, save what it saw and its weights, resume."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import torch.distributed as dist

    from synthmed.augment.phantom import PhantomConfig, make_phantom
    from synthmed.gan.config import DCGANConfig, TrainConfig
    from synthmed.gan.run import build_model
    from synthmed.gan.run_config import RunConfig
    from synthmed.gan.trainer import fit

    root_dir = Path(root)
    data = make_phantom(PhantomConfig(n=N_IMAGES, size=32))[0]
    model_config = DCGANConfig(size=32, width=4, num_classes=2, spectral_norm=True,
                               diffaugment=("color", "translation", "cutout"), ema_decay=0.9)
    train_config = TrainConfig(epochs=EPOCHS, batch_size=BATCH, preview=4, checkpoint_every=1,
                               seed=3)
    config = RunConfig("dcgan", model_config, train_config)
    # other initial weights on each process: fit must start every copy from rank 0's
    model = build_model(config, seed=rank + 1)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    seen: list[torch.Tensor] = []
    real_step = model.train_step

    def recording_step(batch, *args, **kwargs):
        seen.append(batch[0].clone())
        return real_step(batch, *args, **kwargs)

    model.train_step = recording_step
    fit(model, data, config, root_dir / "run", progress=False)
    torch.save({"initial": initial, "final": model.state_dict(), "seen": seen},
               root_dir / f"rank{rank}.pt")

    # resume one more epoch into the same run directory, from yet other initial weights
    resumed = build_model(config, seed=rank + 10)
    longer = TrainConfig(epochs=EPOCHS + 1, batch_size=BATCH, preview=4, checkpoint_every=1,
                         seed=3)
    fit(resumed, data, RunConfig("dcgan", model_config, longer), root_dir / "run", resume=True,
        progress=False)
    torch.save(resumed.state_dict(), root_dir / f"resumed{rank}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """Run the two processes once; fail (and stop them) if they hang."""
    root = tmp_path_factory.mktemp("ddp")
    _spawn(_worker, root)
    return root


def _spawn(worker, root: Path) -> None:
    """Run ``worker`` in WORLD processes; fail (and stop them) if they hang."""
    context = mp.start_processes(worker, args=(WORLD, _free_port(), str(root)), nprocs=WORLD,
                                 join=False, start_method="spawn")
    deadline = time.monotonic() + 120
    try:
        while not context.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail("the training processes did not finish in 120 s (deadlock?)")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()


def _load(root: Path, name: str):
    return torch.load(root / name, weights_only=True)


def test_copies_stay_identical_and_train(trained):
    ranks = [_load(trained, f"rank{r}.pt") for r in range(WORLD)]
    initial0, initial1 = ranks[0]["initial"], ranks[1]["initial"]
    assert any(not torch.equal(initial0[k], initial1[k]) for k in initial0)  # the test's premise
    final0, final1 = ranks[0]["final"], ranks[1]["final"]
    assert set(final0) == set(final1)
    different = [k for k in final0 if not torch.equal(final0[k], final1[k])]
    assert different == [], f"parameters or buffers differ across processes: {different}"
    # every buffer kind is covered: BatchNorm statistics, spectral-norm vectors, EMA copies
    assert any(k.endswith("running_var") for k in final0)
    assert any(k.endswith("weight_u") for k in final0)
    assert any(k.startswith("ema.") for k in final0)
    weights = [k for k in final0 if k.endswith(("weight", "weight_orig"))
               and not k.startswith("ema.")]
    assert weights and all(not torch.equal(final0[k], initial0[k]) for k in weights)


def test_each_process_trains_on_its_own_share(trained):
    from synthmed.augment.phantom import PhantomConfig, make_phantom

    seen = [_load(trained, f"rank{r}.pt")["seen"] for r in range(WORLD)]
    steps = N_IMAGES // (BATCH * WORLD)
    assert len(seen[0]) == len(seen[1]) == steps * EPOCHS
    data = torch.from_numpy(make_phantom(PhantomConfig(n=N_IMAGES, size=32))[0].images)
    for epoch in range(EPOCHS):
        shares = [torch.cat(s[epoch * steps:(epoch + 1) * steps]) for s in seen]
        assert all(len(share) == N_IMAGES // WORLD for share in shares)
        both = torch.cat(shares).flatten(1)
        # together the processes saw every image exactly once per epoch
        matches = (both[:, None, :] == data.flatten(1)[None]).all(dim=2)  # (seen, data)
        assert torch.equal(matches.sum(dim=0), torch.ones(N_IMAGES, dtype=torch.long))
    for a, b in zip(seen[0], seen[1], strict=True):
        assert not torch.equal(a, b)


def test_only_rank_0_writes_the_run(trained):
    run = trained / "run"
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == list(range(1, EPOCHS + 2))  # + the resumed one
    assert sorted(p.name for p in (run / "samples").iterdir()) == [
        f"epoch_{e:04d}.png" for e in range(1, EPOCHS + 2)]
    state = torch.load(run / "trainer_state.pt", weights_only=True)
    assert state["epoch"] == EPOCHS + 1
    # the checkpoint keeps every process's noise / dropout generator, and they differ
    assert len(state["rng"]["step"]) == len(state["rng"]["torch"]) == WORLD
    assert not torch.equal(state["rng"]["step"][0], state["rng"]["step"][1])
    assert not torch.equal(state["rng"]["torch"][0], state["rng"]["torch"][1])
    assert [p.name for p in run.rglob(".*")] == []


def test_resumed_copies_are_identical_and_continue(trained):
    resumed = [_load(trained, f"resumed{r}.pt") for r in range(WORLD)]
    final = _load(trained, "rank0.pt")["final"]
    assert all(torch.equal(resumed[0][k], resumed[1][k]) for k in resumed[0])
    weights = [k for k in final if k.endswith("weight") and not k.startswith("ema.")]
    assert all(not torch.equal(resumed[0][k], final[k]) for k in weights)  # one more epoch
    from safetensors.torch import load_file

    saved = load_file(trained / "run" / "model.safetensors")
    assert all(torch.equal(saved[k], resumed[0][k]) for k in saved)


def _cyclegan_worker(rank: int, world: int, port: int, root: str) -> None:
    """One process of a CycleGAN group (batch 1 per process): train one epoch."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import torch.distributed as dist

    from synthmed.augment.phantom import PhantomConfig, make_phantom
    from synthmed.gan.config import CycleGANConfig, TrainConfig
    from synthmed.gan.data import UnpairedImages
    from synthmed.gan.run import build_model
    from synthmed.gan.run_config import RunConfig
    from synthmed.gan.trainer import fit

    t1, t2 = make_phantom(PhantomConfig(n=8, size=32))
    train_config = TrainConfig(epochs=1, batch_size=1, preview=4, seed=3)
    config = RunConfig("cyclegan", CycleGANConfig(ngf=4, ndf=4, n_blocks=1, pool_size=2,
                                                  crop=24), train_config)
    model = build_model(config, seed=rank + 1)
    fit(model, UnpairedImages(t1, t2, crop=24), config, Path(root) / "run", progress=False)
    torch.save(model.state_dict(), Path(root) / f"cyclegan{rank}.pt")
    dist.destroy_process_group()


def test_cyclegan_copies_stay_identical_with_their_own_image_pools(tmp_path):
    _spawn(_cyclegan_worker, tmp_path)
    states = [_load(tmp_path, f"cyclegan{r}.pt") for r in range(WORLD)]
    pools = [k for k in states[0] if k.startswith("pool_") and k.endswith("images")]
    nets = [k for k in states[0] if not k.startswith("pool_")]
    assert pools and nets
    assert all(torch.equal(states[0][k], states[1][k]) for k in nets)
    # each process keeps the fakes of its own images (averaging them would blur them)
    assert all(not torch.equal(states[0][k], states[1][k]) for k in pools)


@pytest.mark.parametrize("n, batch_size", [(32, 4), (35, 8), (34, 8), (33, 4), (19, 4), (5, 2)])
def test_batches_are_disjoint_and_equal_in_number(n, batch_size):
    """Every process must take the same number of steps, or the gradient all-reduce of the
    extra step waits forever."""
    from synthmed.gan.trainer import _batches

    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    shares = [_batches(order, batch_size, rank, WORLD) for rank in range(WORLD)]
    assert len(shares[0]) == len(shares[1]) > 0
    assert all(len(b) >= 2 for share in shares for b in share)  # BatchNorm needs 2 per process
    assert all(len(b) <= batch_size for share in shares for b in share)
    used = torch.cat([b for share in shares for b in share])
    assert len(set(used.tolist())) == len(used)  # no image twice in an epoch
    assert len(used) > n - 2 * WORLD  # at most a too-small last batch is dropped
    single = _batches(order, batch_size, 0, 1)
    assert torch.equal(torch.cat(single), order[:sum(len(b) for b in single)])

"""Data-parallel training (mltm.distributed): 2 gloo processes on 127.0.0.1 against 1 process.

(a) loss and gradients with gathered embeddings == one process on the concatenated batch
(float64, 1e-10), m-LTM and NT-Xent, global and per-rank plans; (b) a 2-process
``torchrun -m mltm.train`` run == a 1-process run with the same global batch; (c) the
sharded sampler; (d) ``--resume`` under torchrun.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from mltm import distributed
from mltm.config import load_config
from mltm.data import UniqueClipBatchSampler
from mltm.losses import build_loss
from mltm.train import Trainer

from tests._assets import REPO, require
from tests._assets import data_root as _data_root
WORLD = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(fn, *args, nprocs: int = WORLD, timeout: float = 120.0) -> None:
    """Run ``fn(rank, *args)`` in ``nprocs`` spawned processes; fail after ``timeout`` s."""
    ctx = mp.start_processes(fn, args=args, nprocs=nprocs, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    try:
        while not ctx.join(timeout=max(deadline - time.monotonic(), 0.1)):
            if time.monotonic() > deadline:
                pytest.fail(f"{nprocs} processes still running after {timeout} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.terminate()


def set_env(rank: int, world: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))


# -- (a) the loss and its gradients ---------------------------------------------------------

B, D_IN, D = 13, 10, 6  # 13 pairs: uneven slices of 7 and 6


def problem(name: str):
    """Features, clip ids (two pairs share a clip, across the slices), heads and loss."""
    g = torch.Generator().manual_seed(0)
    xa = torch.randn(B, D_IN, generator=g, dtype=torch.float64)
    xt = torch.randn(B, D_IN, generator=g, dtype=torch.float64)
    clip = torch.arange(B)
    clip[9] = 2  # pairs 2 (rank 0) and 9 (rank 1) are captions of one clip
    torch.manual_seed(1)
    heads = torch.nn.ModuleList([torch.nn.Linear(D_IN, D), torch.nn.Linear(D_IN, D)]).double()
    if name == "mltm":
        loss = build_loss("mltm", dim=D, eps=0.1, sinkhorn_kwargs={"tol": 1e-12, "max_iter": 5000},
                          metric={"kind": "full", "init": "paper", "dtype": torch.float64,
                                  "generator": torch.Generator().manual_seed(2)})
    else:
        loss = build_loss("ntxent", dim=D, tau=0.1)
    return xa, xt, clip, heads, loss


def grads(heads, loss) -> dict[str, torch.Tensor]:
    named = list(heads.named_parameters()) + [("loss." + n, p) for n, p in loss.named_parameters()]
    return {n: p.grad.clone() for n, p in named}


def single_process(name: str, global_plan: bool):
    xa, xt, clip, heads, loss = problem(name)
    a, t = F.normalize(heads[0](xa), dim=1), F.normalize(heads[1](xt), dim=1)
    a.retain_grad()
    t.retain_grad()
    if global_plan:
        value = loss(a, t, clip)
    else:  # per-rank plans: the mean of the slices' losses
        value = sum(loss(a[s], t[s], clip[s]) for s in
                    (distributed.shard_batch(range(B), r, WORLD) for r in range(WORLD))) / WORLD
    value.backward()
    return {"value": value.detach(), "a": a.grad, "t": t.grad, **grads(heads, loss)}


def _loss_worker(rank, port, out, name, global_plan):
    set_env(rank, WORLD, port)
    torch.set_num_threads(1)
    with distributed.process_group("cpu") as world:
        assert world == WORLD and distributed.get_rank() == rank
        xa, xt, clip, heads, loss = problem(name)
        mine = distributed.shard_batch(range(B), rank, WORLD)
        a = F.normalize(heads[0](xa[mine]), dim=1)
        t = F.normalize(heads[1](xt[mine]), dim=1)
        a.retain_grad()
        t.retain_grad()
        A, T, C = distributed.batch_for_loss(a, t, clip[mine], global_plan=global_plan)
        value = loss(A, T, C)
        value.backward()
        distributed.average_gradients(list(heads.parameters()) + list(loss.parameters()))
        if global_plan:
            assert torch.equal(C, clip)
        else:
            value = torch.tensor(distributed.all_reduce_sum([float(value.detach()) / WORLD])[0],
                                 dtype=torch.float64)
        torch.save({"value": value.detach(), "a": a.grad, "t": t.grad, "rows": mine,
                    **grads(heads, loss)}, Path(out) / f"rank{rank}.pt")


@pytest.mark.parametrize("global_plan", [True, False], ids=["global_plan", "per_rank_plans"])
@pytest.mark.parametrize("name", ["mltm", "ntxent"])
def test_two_ranks_match_one_process(name, global_plan, tmp_path):
    spawn(_loss_worker, free_port(), str(tmp_path), name, global_plan)
    ref = single_process(name, global_plan)
    got = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    tol = {"rtol": 0, "atol": 1e-10}
    for g in got:
        torch.testing.assert_close(g["value"], ref["value"], **tol)
        params = [k for k in ref if k not in ("value", "a", "t")]
        assert any(k.startswith("loss.") for k in params) == (name == "mltm")  # M is checked
        for k in params:  # after averaging: the one-process gradient, on every rank
            torch.testing.assert_close(g[k], ref[k], **tol, msg=k)
        # the embeddings' own gradients: the gather sums them over the ranks (each rank holds
        # the same global loss), so a rank's slice gets WORLD x the one-process gradient;
        # with per-rank plans, a rank's slice gets its own loss's gradient (= WORLD x that of
        # the mean of the slices' losses).
        for k in ("a", "t"):
            torch.testing.assert_close(g[k], WORLD * ref[k][g["rows"]], **tol)


# -- (c) the sharded sampler ----------------------------------------------------------------


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_sharded_sampler_keeps_the_global_batch(world):
    rng = np.random.default_rng(0)
    keys = np.stack([rng.integers(0, 60, 300), np.arange(300) % 250], 1)  # clips repeat
    sampler = UniqueClipBatchSampler(keys, 32, seed=7)
    for epoch in (0, 3):
        global_batches = sampler.batches(epoch)
        shards = [distributed.ShardedBatchSampler(sampler, rank=r, world_size=world).batches(epoch)
                  for r in range(world)]
        assert all(len(s) == len(global_batches) for s in shards)  # same steps on every rank
        for i, gb in enumerate(global_batches):
            parts = [s[i] for s in shards]
            assert sum(parts, []) == gb  # contiguous slices, in rank order
            assert max(map(len, parts)) - min(map(len, parts)) <= 1
            for col in range(keys.shape[1]):  # no clip (or caption) twice in a global batch
                assert len(set(keys[sum(parts, []), col].tolist())) == len(gb)
        assert sorted(sum(global_batches, [])) == list(range(300))
    sampler.set_epoch(3)
    it = distributed.ShardedBatchSampler(sampler, rank=world - 1, world_size=world)
    assert list(it) == shards[world - 1]
    with pytest.raises(ValueError):
        distributed.shard_batch([1, 2], rank=world, world_size=world)


def test_helpers_are_identities_in_one_process():
    assert distributed.get_world_size() == 1 and distributed.is_main_process()
    x = torch.randn(3, 2, requires_grad=True)
    assert distributed.gather_with_grad(x) is x
    assert distributed.batch_for_loss(x[:1], x[:1], None) == (None, None, None)
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    assert distributed.all_reduce_sum([1, 2.5]) == [1.0, 2.5]
    with distributed.process_group("cpu") as world:  # no WORLD_SIZE: nothing to join
        assert world == 1
        distributed.barrier()


# -- (b), (d) training under torchrun --------------------------------------------------------


def data_root() -> Path:
    root = _data_root()
    require(root / "debsfx-ci" / "train.jsonl", "the debsfx-ci dataset")
    return root


def overrides(out: Path, epochs: int) -> list[str]:
    # 6 steps per epoch instead of every batch: each code path (sharded sampler, gathered plan,
    # all-reduce, checkpoint, resume) runs in a fraction of the time of full epochs
    return [f"data.dataset={data_root() / 'debsfx-ci'}", f"optim.epochs={epochs}",
            "optim.max_steps_per_epoch=6", "progress=false", f"out_dir={out}"]


def torchrun(out: Path, epochs: int, *extra: str, nproc: int = WORLD) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
           "--master-addr=127.0.0.1", f"--master-port={free_port()}", "-m", "mltm.train",
           "--config", str(REPO / "configs" / "debsfx-ci.yaml")]
    for o in overrides(out, epochs):
        cmd += ["--set", o]
    cmd += extra  # after the defaults, so that an extra --set wins
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    printed = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    assert len(printed) == 1, p.stdout  # rank 0 alone reports
    return json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist") / "straight"
    return out, torchrun(out, 2)


def test_torchrun_matches_one_process(two_process_run, tmp_path):
    out2, res2 = two_process_run
    cfg = load_config(REPO / "configs" / "debsfx-ci.yaml", overrides(tmp_path / "one", 2))
    res1 = Trainer(cfg).run()
    assert res2["provenance"]["world_size"] == WORLD and res1["provenance"]["world_size"] == 1
    a = torch.load(tmp_path / "one" / "last.pt", weights_only=False)
    b = torch.load(out2 / "last.pt", weights_only=False)
    assert b["world_size"] == WORLD and a["epoch"] == b["epoch"] == 1
    assert [h["steps"] for h in a["history"]] == [h["steps"] for h in b["history"]]
    # float32: the two runs sum the head gradients in a different order (two half-batch
    # matmuls + all-reduce vs one matmul), so parameters agree to rounding, not bitwise
    # (measured: at most 1.3e-5 absolute after 2 epochs, weights of order 0.1).
    for part in ("model", "loss"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            torch.testing.assert_close(b[part][k], a[part][k], rtol=1e-3, atol=1e-4, msg=k)
    for h1, h2 in zip(a["history"], b["history"], strict=True):
        assert h2["train_loss"] == pytest.approx(h1["train_loss"], rel=1e-5)
    for rank_by in ("distance", "plan"):  # measured: identical test metrics
        for d in ("a2t", "t2a"):
            for k in ("R@1", "R@5", "R@10", "medR"):
                assert res2["test"][rank_by][d][k] == pytest.approx(
                    res1["test"][rank_by][d][k], abs=1e-9), (rank_by, d, k)
    assert not list(out2.glob("*.tmp*"))


def test_torchrun_resume_continues_exactly(two_process_run, tmp_path):
    straight, _ = two_process_run
    split = tmp_path / "split"
    torchrun(split, 1)
    res = torchrun(split, 2, "--resume")
    assert res["provenance"]["world_size"] == WORLD
    a = torch.load(straight / "last.pt", weights_only=False)
    b = torch.load(split / "last.pt", weights_only=False)
    assert a["epoch"] == b["epoch"] == 1
    for part in ("model", "loss"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert strip(a["history"]) == strip(b["history"])


def test_torchrun_per_rank_plans(tmp_path):
    out = tmp_path / "local"
    res = torchrun(out, 1, "--set", "dist.global_plan=false",
                   "--set", "optim.max_steps_per_epoch=3")
    ckpt = torch.load(out / "last.pt", weights_only=False)
    assert ckpt["world_size"] == WORLD and ckpt["history"][0]["steps"] == 3
    assert res["provenance"]["world_size"] == WORLD
    cfg = load_config(REPO / "configs" / "debsfx-ci.yaml",
                      overrides(out, 2) + ["dist.global_plan=false", "optim.max_steps_per_epoch=3"])
    with pytest.raises(ValueError, match="per-rank plans on 2 processes"):
        Trainer(cfg).run(resume=True)  # one process cannot continue a 2-process local run

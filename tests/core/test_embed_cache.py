"""mltm.embed.cached: hits, unreadable entries recomputed, and one computation for processes
that ask for the same entry at once (pytest-xdist workers and torchrun ranks share a cache)."""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path

import torch

from mltm.embed import cached


def _slow_compute(calls: Path, value: float, seconds: float):
    def compute():
        with open(calls, "a") as f:  # one line per computation, whichever process ran it
            f.write("x\n")
        time.sleep(seconds)
        return {"x": torch.full((3,), value)}
    return compute


def _worker(directory: str, calls: str, value: float, out: str) -> None:
    got = cached("test", {"k": 1}, _slow_compute(Path(calls), value, 3.0), directory)
    torch.save(got, out)


def test_hit_returns_the_stored_value_without_computing(tmp_path):
    calls = tmp_path / "calls"
    first = cached("test", {"k": 1}, _slow_compute(calls, 1.0, 0), tmp_path)
    again = cached("test", {"k": 1}, _slow_compute(calls, 2.0, 0), tmp_path)
    other = cached("test", {"k": 2}, _slow_compute(calls, 3.0, 0), tmp_path)
    assert torch.equal(first["x"], again["x"]) and again["x"][0] == 1.0 and other["x"][0] == 3.0
    assert calls.read_text().count("x") == 2


def test_unreadable_entry_is_recomputed(tmp_path):
    calls = tmp_path / "calls"
    cached("test", {"k": 1}, _slow_compute(calls, 1.0, 0), tmp_path)
    (entry,) = tmp_path.glob("test-*.pt")
    entry.write_bytes(entry.read_bytes()[:30])
    assert cached("test", {"k": 1}, _slow_compute(calls, 5.0, 0), tmp_path)["x"][0] == 5.0
    assert calls.read_text().count("x") == 2


def test_concurrent_processes_compute_an_entry_once(tmp_path):
    calls = tmp_path / "calls"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(str(tmp_path / "cache"), str(calls), float(i),
                                                str(tmp_path / f"out{i}.pt")))
             for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    outs = [torch.load(tmp_path / f"out{i}.pt", weights_only=True)["x"] for i in range(3)]
    # every process got the one value that was computed, and it was computed once
    assert calls.read_text().count("x") == 1
    assert all(torch.equal(o, outs[0]) for o in outs)

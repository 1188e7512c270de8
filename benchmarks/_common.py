"""Timing helpers shared by the benchmark scripts (run them as ``python benchmarks/X.py``)."""

from __future__ import annotations

import os
import platform
import time

import torch

for _backend in ("JAX", "CUPY", "TENSORFLOW"):
    os.environ.setdefault(f"POT_BACKEND_DISABLE_{_backend}", "1")


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def best_time(fn, device, repeat: int, warmup: int = 1) -> float:
    """Minimum wall time of ``fn()`` over ``repeat`` runs after ``warmup`` runs (seconds)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return min(times)


def device_name(device) -> tuple[str, str]:
    """Human-readable device name and a slug for result file names."""
    if torch.device(device).type == "cuda":
        name = torch.cuda.get_device_name(device)
        return name, "cuda-" + "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
    return (f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores, "
            f"{torch.get_num_threads()} threads)", "cpu")


def write_record(path, root, device: str, results: dict, **settings) -> dict:
    """Write a benchmark record (provenance, ``settings``, ``results``) atomically and say where.

    Every record names the commit, device, date, torch and Python versions that produced it, so
    the book can cite it (DEVELOPERS.md: recorded numbers name their commit, device and date).
    """
    import datetime as dt
    import json
    import sys
    from pathlib import Path

    from mltm._atomic import atomic_write
    from mltm.provenance import git_commit

    record = {"commit": git_commit(), "device": device,
              "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "torch": torch.__version__, "python": sys.version.split()[0], **settings,
              "results": results}
    path, root = Path(path), Path(root)
    with atomic_write(path) as f:
        f.write(json.dumps(record, indent=2) + "\n")
    print(f"written: {path.relative_to(root) if path.is_relative_to(root) else path}")
    return record

"""Provenance of a result: which commit, config, device and date produced it."""

from __future__ import annotations

import datetime as _dt
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

__all__ = ["provenance", "git_commit", "device_description"]

_ROOT = Path(__file__).resolve().parent.parent


def git_commit(root: str | Path = _ROOT) -> str:
    """``HEAD``'s SHA, suffixed ``+dirty`` when ``mltm/`` has uncommitted changes, or
    ``"unknown"`` outside a git checkout (e.g. an installed wheel)."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "mltm"], cwd=root,
                               capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("+dirty" if dirty else "")


def device_description(device: torch.device | str) -> str:
    """``"NVIDIA H100 80GB HBM3"`` for a GPU, the CPU model and thread count otherwise."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{_cpu_model()} CPU, {torch.get_num_threads()} threads"


def _cpu_model() -> str:
    """The CPU's model name (``platform.processor()`` is empty on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(device: torch.device | str = "cpu", config: Any = None,
               wall_time_s: float | None = None, *,
               world_size: int | None = None) -> dict[str, Any]:
    """A dict to store beside any recorded number (``world_size``: processes of a
    data-parallel run, see :mod:`mltm.distributed`)."""
    out: dict[str, Any] = {
        "commit": git_commit(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": device_description(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if config is not None:
        out["config"] = config
    if wall_time_s is not None:
        out["wall_time_s"] = round(float(wall_time_s), 3)
    if world_size is not None:
        out["world_size"] = int(world_size)
    return out

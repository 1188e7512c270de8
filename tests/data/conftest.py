"""Shared fixtures for the data tests.

``built_dataset`` gives the directory of a dataset built by ``bash data_scripts/build_all.sh
ci`` under ``$MLTM_DATA`` (default ``<repo>/data``). When it is absent the test is skipped,
naming the command that builds it, unless ``MLTM_REQUIRE_DATA=1`` (set in CI), where the
test fails instead.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests._assets import BUILD_COMMAND, data_root, missing


@pytest.fixture
def built_dataset() -> Callable[[str], Path]:
    """Return a function ``name -> dataset directory`` for datasets built by the CI builder.

    A dataset counts as built when its directory holds at least one ``*.jsonl`` manifest.
    """

    def get(name: str) -> Path:
        d = data_root() / name
        if d.is_dir() and any(d.glob("*.jsonl")):
            return d
        missing(f"dataset {name!r} not built at {d}: run `{BUILD_COMMAND}`")

    return get


@pytest.fixture
def built_datasets() -> list[Path]:
    """Return every built dataset directory (a subdirectory with a ``*.jsonl`` manifest)."""
    root = data_root()
    dirs = sorted({p.parent for p in root.glob("*/*.jsonl")}) if root.is_dir() else []
    if dirs:
        return dirs
    missing(f"no dataset built under {root}: run `{BUILD_COMMAND}`")


def write_tone(path: Path, seconds: float = 0.5, sr: int = 16000, freq: float = 440.0,
               channels: int = 1, noise: float = 0.0, seed: int = 0) -> Path:
    """Write a sine (plus optional noise) with soundfile; the format follows the suffix."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * sr))) / sr
    x = 0.3 * np.sin(2 * np.pi * freq * t) + noise * rng.standard_normal(t.size)
    if channels > 1:
        x = np.stack([x * (c + 1) / channels for c in range(channels)], axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x.astype(np.float32), sr)
    return path


def truncate(path: Path, fraction: float = 0.5) -> Path:
    """Cut a file to a fraction of its bytes (a download that stopped half-way)."""
    b = path.read_bytes()
    path.write_bytes(b[: int(len(b) * fraction)])
    return path


@pytest.fixture
def tone() -> Callable[..., Path]:
    """The :func:`write_tone` helper as a fixture."""
    return write_tone


@pytest.fixture
def truncated() -> Callable[..., Path]:
    """The :func:`truncate` helper as a fixture."""
    return truncate

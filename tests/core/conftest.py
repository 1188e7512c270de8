"""Fixtures shared by the training tests of ``tests/core``."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests._assets import data_root as _data_root
from tests._assets import require


@pytest.fixture(scope="module")
def data_root() -> Path:
    """``$MLTM_DATA`` holding the built ``debsfx-ci`` and the converted aisfx weights."""
    root = _data_root()
    require(root / "debsfx-ci" / "train.jsonl", "the debsfx-ci dataset")
    require(root / "weights" / "aisfx-0.1.2.safetensors", "the converted aisfx weights")
    return root


def debsfx_ci_config(data_root: Path, out: Path, *, loss: dict, epochs: int, **overrides):
    """A small training config on ``debsfx-ci`` (64-d, batch 32, seed 0, no progress bar);
    ``overrides`` are ``"section.field": value`` pairs, e.g. ``**{"optim.epochs": 2}``."""
    from mltm.config import config_from_dict

    base = {
        "data": {"dataset": str(data_root / "debsfx-ci")},
        "model": {"joint_dim": 64, "hidden_dim": 128},
        "loss": dict(loss),
        "optim": {"lr": 1e-3, "batch_size": 32, "epochs": epochs},
        "out_dir": str(out), "progress": False, "seed": 0,
    }
    for key, value in overrides.items():
        section, name = key.split(".")
        base.setdefault(section, {})[name] = value
    return config_from_dict(base)

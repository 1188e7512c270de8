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

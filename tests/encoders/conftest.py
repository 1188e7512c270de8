"""Shared fixtures for the encoder tests.

``aisfx_wheel`` finds the published aisfx 0.1.2 wheel: ``$MLTM_CACHE/wheels`` (where
``python data_scripts/fetch_aisfx.py``, run by ``bash data_scripts/build_all.sh``, puts it),
``~/.cache/mltm/wheels`` or ``/tmp/aisfx``. When it is absent the test is skipped, naming the
command, unless ``MLTM_REQUIRE_DATA=1`` (CI), where it fails.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mltm.encoders.aisfx import AISFX_WHEEL
from tests._assets import missing

FETCH_COMMAND = "python data_scripts/fetch_aisfx.py"


def _wheel_candidates() -> list[Path]:
    dirs = []
    if os.environ.get("MLTM_CACHE"):
        dirs.append(Path(os.environ["MLTM_CACHE"]).expanduser() / "wheels")
    dirs += [Path.home() / ".cache" / "mltm" / "wheels", Path("/tmp/aisfx")]
    return [d / AISFX_WHEEL for d in dirs]


def _missing(what: str) -> None:
    missing(f"{what}: run `{FETCH_COMMAND}`")


@pytest.fixture(scope="session")
def aisfx_wheel() -> Path:
    """Path of the aisfx 0.1.2 wheel (skips when it cannot be found)."""
    for p in _wheel_candidates():
        if p.is_file():
            return p
    _missing(f"{AISFX_WHEEL} not found in " + ", ".join(str(p.parent) for p in _wheel_candidates()))


@pytest.fixture(scope="session")
def aisfx_weights(aisfx_wheel, tmp_path_factory) -> Path:
    """A safetensors file converted from the wheel in this session."""
    from mltm.encoders.aisfx import convert_aisfx_wheel

    out = tmp_path_factory.mktemp("weights") / "aisfx.safetensors"
    return convert_aisfx_wheel(aisfx_wheel, out)

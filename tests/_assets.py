"""Where the tests find built datasets and fetched weights, and what happens when they are absent.

Tests that need an asset built by ``bash data_scripts/build_all.sh ci`` (a dataset under
``$MLTM_DATA``, the converted aisfx weights, the aisfx wheel) call :func:`require`. When the
asset is absent the test is skipped with the command that builds it, except under
``MLTM_REQUIRE_DATA=1`` (set by ``scripts/test.sh``, so CI), where it fails instead: CI never
skips what it should run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUILD_COMMAND = "bash data_scripts/build_all.sh ci"


def data_root() -> Path:
    """``$MLTM_DATA`` or ``<repo>/data``."""
    return Path(os.environ.get("MLTM_DATA", REPO / "data"))


def missing(msg: str) -> None:
    """Skip with ``msg``, or fail when ``MLTM_REQUIRE_DATA=1``."""
    if os.environ.get("MLTM_REQUIRE_DATA") == "1":
        pytest.fail(msg + " (MLTM_REQUIRE_DATA=1, so a missing asset is an error)")
    pytest.skip(msg)


def require(path: Path, what: str, command: str = BUILD_COMMAND) -> Path:
    """Return ``path`` if it exists; otherwise skip (or fail) naming ``what`` and ``command``."""
    if not Path(path).exists():
        missing(f"{what} not found at {path}: run `{command}`")
    return Path(path)

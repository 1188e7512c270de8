"""Tests for the mltm.data package surface: every exported name resolves, lazily."""

import subprocess
import sys

import pytest

import mltm.data


def test_every_exported_name_resolves():
    for name in mltm.data.__all__:
        obj = getattr(mltm.data, name)
        assert obj is not None
        mod = sys.modules[f"mltm.data.{mltm.data._EXPORTS[name]}"]
        assert name in mod.__all__, f"{name} missing from {mod.__name__}.__all__"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        mltm.data.nope  # noqa: B018


def test_manifests_and_converters_do_not_import_torch():
    code = ("import sys, mltm.data as d; d.read_manifest; d.prepare_esc50; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"

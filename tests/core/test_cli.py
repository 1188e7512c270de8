"""The command lines report known errors as one ``error:`` line and exit status 2."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "debsfx-ci.yaml"


def cli(module: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True,
                          text=True, cwd=cwd or REPO, env=env, timeout=300)


def assert_one_error_line(res: subprocess.CompletedProcess, *needles: str) -> str:
    assert res.returncode == 2, (res.returncode, res.stderr)
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def test_train_missing_config(tmp_path):
    res = cli("mltm.train", "--config", tmp_path / "nope.yaml")
    assert_one_error_line(res, f"config file {tmp_path / 'nope.yaml'} not found")


def test_train_bad_config_key_and_value(tmp_path):
    res = cli("mltm.train", "--config", CONFIG, "--set", "optim.learning_rate=1")
    assert_one_error_line(res, "unknown config key(s) optim.learning_rate", "valid keys of optim")
    res = cli("mltm.train", "--config", CONFIG, "--set", "optim.lr=fast")
    assert_one_error_line(res, "config key optim.lr: expected float, got 'fast'")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("optim: {lr: [1e-3\nseed: 1\n")
    assert_one_error_line(cli("mltm.train", "--config", bad_yaml), "invalid YAML")


def test_train_missing_dataset_and_debug_traceback(tmp_path):
    missing = tmp_path / "no-such-dataset"
    args = ("--config", CONFIG, "--set", f"data.dataset={missing}", "--out", tmp_path / "run")
    res = cli("mltm.train", *args)
    assert_one_error_line(res, f"dataset directory {missing} not found", "build_all.sh")
    res = cli("mltm.train", *args, "--debug")
    assert res.returncode == 1 and "Traceback (most recent call last)" in res.stderr
    assert "FileNotFoundError" in res.stderr


def test_eval_missing_garbage_and_crafted_checkpoints(tmp_path):
    manifest = tmp_path / "test.jsonl"
    manifest.write_text("")
    res = cli("mltm.eval", "--checkpoint", tmp_path / "best.pt", "--manifest", manifest)
    assert_one_error_line(res, f"checkpoint {tmp_path / 'best.pt'} not found")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint" * 100)
    res = cli("mltm.eval", "--checkpoint", garbage, "--manifest", manifest)
    assert_one_error_line(res, f"error: not an mltm checkpoint: {garbage}: ")
    # a crafted pickle: refused, and its code never runs
    marker = tmp_path / f"pwned-{uuid.uuid4().hex}"
    crafted = tmp_path / "crafted.pt"
    subprocess.run([sys.executable, "-c", (
        "import os, sys, torch\n"
        "class E:\n"
        "    def __reduce__(self):\n"
        f"        return (os.system, ('touch {marker}',))\n"
        f"torch.save({{'format': 'mltm-checkpoint/2', 'model': E()}}, {str(crafted)!r})\n")],
        check=True)
    res = cli("mltm.eval", "--checkpoint", crafted, "--manifest", manifest)
    assert_one_error_line(res, f"error: not an mltm checkpoint: {crafted}: ", "refused")
    assert not marker.exists()
    res = cli("mltm.eval", "--checkpoint", crafted, "--manifest", manifest, "--debug")
    assert res.returncode == 1 and "Traceback (most recent call last)" in res.stderr
    assert not marker.exists()


def test_eval_missing_or_misnamed_manifest(tmp_path):
    ckpt = tmp_path / "best.pt"
    torch.save({"format": "x"}, ckpt)
    res = cli("mltm.eval", "--checkpoint", ckpt, "--manifest", tmp_path / "test.jsonl")
    assert_one_error_line(res, f"manifest {tmp_path / 'test.jsonl'} not found")
    other = tmp_path / "test.csv"
    other.write_text("x")
    res = cli("mltm.eval", "--checkpoint", ckpt, "--manifest", other)
    assert_one_error_line(res, "must be a split file named <split>.jsonl")


def test_manifest_validate_non_utf8_and_unreadable_files(tmp_path):
    bad = tmp_path / "train.jsonl"
    bad.write_bytes(b'{"clip_id": "\xff\xfe"}\n')
    res = cli("mltm.data.manifest", "validate", "--no-audio", bad)
    assert res.returncode == 1 and "line 1" in res.stdout and "not UTF-8 text" in res.stdout
    assert res.stderr == ""
    locked = tmp_path / "val.jsonl"
    locked.write_text('{"clip_id": "a"}\n')
    locked.chmod(0)
    try:
        if os.access(locked, os.R_OK):
            pytest.skip("running as a user who can read any file (root)")
        res = cli("mltm.data.manifest", "validate", "--no-audio", locked)
        assert_one_error_line(res, "Permission denied", str(locked))
        res = cli("mltm.data.manifest", "validate", "--no-audio", locked, "--debug")
        assert res.returncode == 1 and "Traceback (most recent call last)" in res.stderr
    finally:
        locked.chmod(0o644)


def test_read_manifest_names_the_non_utf8_line(tmp_path):
    from mltm.data.manifest import read_manifest

    bad = tmp_path / "test.jsonl"
    bad.write_bytes(b'\n{"clip_id": "\xff"}\n')
    with pytest.raises(ValueError) as e:
        read_manifest(bad)
    assert str(e.value).startswith(f"{bad}:2: not UTF-8 text")


@pytest.mark.parametrize("module", ["mltm.train", "mltm.eval"])
def test_usage_errors_stay_argparse(module):
    res = cli(module)
    assert res.returncode == 2 and "usage:" in res.stderr


def test_manifest_cli_error_path_in_process(tmp_path, monkeypatch, capsys):
    """An OSError while validating (e.g. permission denied; untestable as root) → exit 2."""
    import mltm.data.manifest as manifest

    def unreadable(path, check_audio=True):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(manifest, "validate_manifest", unreadable)
    target = tmp_path / "train.jsonl"
    assert manifest._main(["validate", str(target)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: [Errno 13] Permission denied: '{target}'\n"
    with pytest.raises(PermissionError):
        manifest._main(["validate", str(target), "--debug"])

"""Tests for mltm.data.cache: round trip, keys, atomic writes, corrupt entries recomputed."""

import dataclasses
import os

import numpy as np
import pytest
import torch

from mltm.data.cache import FeatureCache
from mltm.data.frontend import LogMelConfig


def _counting(value):
    calls = []

    def compute():
        calls.append(1)
        return value.clone()

    return compute, calls


def test_round_trip_and_hits(tmp_path, tone):
    audio = tone(tmp_path / "a.wav")
    cache = FeatureCache(tmp_path / "cache", LogMelConfig())
    feats = torch.randn(64, 17)
    compute, calls = _counting(feats)
    out1 = cache.get_or_compute(audio, compute)
    out2 = FeatureCache(tmp_path / "cache", LogMelConfig()).get_or_compute(audio, compute)
    assert torch.equal(out1, feats) and torch.equal(out2, feats) and len(calls) == 1
    assert (cache.hits, cache.misses) == (0, 1)
    entry = cache.entry_path(audio)
    assert entry.is_file() and entry.parent.parent.name == LogMelConfig().feature_key()
    assert list(entry.parent.glob("*.tmp")) == []


def test_key_changes_with_settings_and_file(tmp_path, tone):
    audio = tone(tmp_path / "a.wav")
    base = FeatureCache(tmp_path, LogMelConfig())
    other = FeatureCache(tmp_path, dataclasses.replace(LogMelConfig(), hop_length=160))
    same_feats = FeatureCache(tmp_path, dataclasses.replace(LogMelConfig(), max_seconds=30.0))
    assert base.key(audio) != other.key(audio)
    assert base.key(audio) == same_feats.key(audio)  # clip policy is not part of the features
    k = base.key(audio)
    tone(audio, freq=880.0)  # rewrite the file
    os.utime(audio, ns=(1, 1))
    assert base.key(audio) != k
    assert base.key(tone(tmp_path / "b.wav")) != base.key(audio)
    with pytest.raises(FileNotFoundError):
        base.key(tmp_path / "missing.wav")


def test_corrupt_entry_is_recomputed(tmp_path, tone):
    audio = tone(tmp_path / "a.wav")
    cache = FeatureCache(tmp_path / "c", LogMelConfig())
    feats = torch.randn(64, 9)
    compute, calls = _counting(feats)
    cache.get_or_compute(audio, compute)
    entry = cache.entry_path(audio)
    entry.write_bytes(entry.read_bytes()[:40])  # truncated .npy
    assert torch.equal(cache.get_or_compute(audio, compute), feats) and len(calls) == 2
    np.save(entry, np.zeros((3, 3), np.float32))  # wrong shape for 64 mels
    assert torch.equal(cache.get_or_compute(audio, compute), feats) and len(calls) == 3
    assert cache.corrupt == 2
    assert torch.equal(cache.get_or_compute(audio, compute), feats) and len(calls) == 3


def test_failed_write_leaves_no_partial_file(tmp_path, tone, monkeypatch):
    audio = tone(tmp_path / "a.wav")
    cache = FeatureCache(tmp_path / "c", LogMelConfig())
    real_save = np.save

    def broken_save(f, arr, *a, **k):
        f.write(b"\x93NUMPY partial")  # some bytes reach the temp file, then the disk "fails"
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        cache.get_or_compute(audio, lambda: torch.zeros(64, 4))
    monkeypatch.setattr(np, "save", real_save)
    entry = cache.entry_path(audio)
    assert not entry.exists() and list(entry.parent.iterdir()) == []
    # compute errors propagate and write nothing
    with pytest.raises(RuntimeError, match="boom"):
        cache.get_or_compute(audio, lambda: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(ValueError, match="n_mels=64"):
        cache.get_or_compute(audio, lambda: torch.zeros(32, 4))
    assert list(entry.parent.iterdir()) == []
    assert torch.equal(cache.get_or_compute(audio, lambda: torch.ones(64, 4)), torch.ones(64, 4))

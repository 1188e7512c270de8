"""Tests for mltm.data.sampler: no clip twice in a batch, full coverage, seeded."""

from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from mltm.data.sampler import UniqueClipBatchSampler


def _random_manifest(rng):
    n_clips = int(rng.integers(1, 60))
    caps = rng.integers(1, 6, n_clips)  # 1 to 5 captions per clip
    clip = np.repeat(np.arange(n_clips), caps)
    return clip[rng.permutation(clip.size)] if rng.random() < 0.5 else clip


def test_invariants_on_random_manifests():
    rng = np.random.default_rng(0)
    for trial in range(300):
        clip = _random_manifest(rng)
        n_clips = np.unique(clip).size
        bs = int(rng.integers(1, 40))
        s = UniqueClipBatchSampler(clip, bs, seed=trial, shuffle=bool(rng.random() < 0.8))
        batches = list(s)
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(clip.size))  # every pair exactly once
        for b in batches:
            assert 1 <= len(b) <= bs
            assert len({int(clip[i]) for i in b}) == len(b)  # no clip twice
        # only the tail can be short, and not by much (deferred pairs are placed promptly)
        short = [k for k, b in enumerate(batches) if len(b) < min(bs, n_clips)]
        assert all(k >= len(batches) - 5 for k in short), (bs, n_clips, [len(b) for b in batches])
        if bs <= n_clips:
            d = UniqueClipBatchSampler(clip, bs, seed=trial, drop_last=True)
            n_expected = len(d)  # len() describes the epoch the next iter() yields
            db = list(d)
            assert all(len(b) == bs for b in db) and len(db) == n_expected
            assert len(db) >= clip.size // bs - 5


def test_seeded_and_changes_per_epoch():
    clip = np.repeat(np.arange(100), 5)
    a = UniqueClipBatchSampler(clip, 16, seed=1)
    b = UniqueClipBatchSampler(clip, 16, seed=1)
    e0a, e1a = list(a), list(a)
    assert e0a == list(b) and e1a == list(b)
    assert e0a != e1a  # a new shuffle each epoch
    b.set_epoch(0)
    assert list(b) == e0a
    assert list(UniqueClipBatchSampler(clip, 16, seed=2)) != e0a
    # the first batch is a genuine shuffle, not index order
    assert e0a[0] != list(range(16))


def test_without_shuffle_keeps_order_but_defers_repeats():
    clip = np.array([0, 0, 1, 1, 2, 2])
    s = UniqueClipBatchSampler(clip, 3, shuffle=False)
    assert list(s) == [[0, 2, 4], [1, 3, 5]]


def test_errors():
    with pytest.raises(ValueError, match="at least 1"):
        UniqueClipBatchSampler([0, 1], 0)
    with pytest.raises(ValueError, match="exceeds the 2 distinct clips"):
        UniqueClipBatchSampler([0, 0, 1], 3, drop_last=True)


class _Pairs(Dataset):
    def __init__(self, clip):
        self.clip = clip

    def __len__(self):
        return len(self.clip)

    def __getitem__(self, i):
        return torch.tensor([i, self.clip[i]])


def test_works_as_dataloader_batch_sampler():
    clip = np.repeat(np.arange(30), 4)
    s = UniqueClipBatchSampler(clip, 8, seed=0)
    loader = DataLoader(_Pairs(clip), batch_sampler=s)
    assert len(loader) == len(s.batches(0))
    seen = Counter()
    for batch in loader:
        assert batch[:, 1].unique().numel() == batch.shape[0]
        seen.update(batch[:, 0].tolist())
    assert set(seen) == set(range(clip.size)) and set(seen.values()) == {1}


def test_several_keys_each_unique_in_a_batch():
    rng = np.random.default_rng(5)
    clip = np.repeat(np.arange(80), 4)
    text = rng.integers(0, 40, clip.size)  # caption texts shared between clips
    keys = np.stack([clip, text], axis=1)
    s = UniqueClipBatchSampler(keys, 12, seed=3)
    batches = list(s)
    assert sorted(i for b in batches for i in b) == list(range(clip.size))
    for b in batches:
        assert len(set(clip[b])) == len(b) and len(set(text[b])) == len(b)
    assert np.mean([len(b) == 12 for b in batches]) > 0.8
    with pytest.raises(ValueError, match="exceeds the 3 distinct"):
        UniqueClipBatchSampler(np.stack([clip, clip % 3], 1), 4, drop_last=True)

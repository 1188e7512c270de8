"""Tests for mltm.data.noise: the paper's noisy correspondence (§3.3, §5.2)."""

import numpy as np
import pytest

from mltm.data.noise import corrupt_pairs


def _clips(n_clips, caps_per_clip, seed=0):
    rng = np.random.default_rng(seed)
    return np.repeat(np.arange(n_clips), rng.integers(1, caps_per_clip + 1, n_clips))


@pytest.mark.parametrize("ratio", [0.2, 0.4, 0.6, 0.05, 0.93])
def test_rate_is_binomial(ratio):
    clip = _clips(4000, 5)
    n = clip.size
    for seed in range(3):
        nc = corrupt_pairs(clip, ratio, seed)
        sd = np.sqrt(n * ratio * (1 - ratio))
        assert abs(nc.num_corrupted - n * ratio) < 4.5 * sd
        assert nc.empirical_ratio == pytest.approx(nc.num_corrupted / n)


def test_replacements_come_from_other_clips_and_are_spread():
    clip = _clips(300, 5)
    nc = corrupt_pairs(clip, 0.6, 7)
    z, src = nc.corrupted, nc.source
    assert np.all(src[~z] == np.flatnonzero(~z))
    assert np.all(clip[src[z]] != clip[z])
    # not a contiguous block (the reference code's flaw): corruption all over the index range
    idx = np.flatnonzero(z)
    assert idx.min() < 0.05 * clip.size and idx.max() > 0.95 * clip.size
    assert len(np.unique(src[z])) > 0.5 * z.sum()
    caps = [f"cap{i}" for i in range(clip.size)]
    noisy = nc.apply(caps)
    assert [noisy[i] == caps[i] for i in range(clip.size)] == list(~z)
    with pytest.raises(ValueError, match="captions for"):
        nc.apply(caps[:-1])


def test_determinism_by_seed():
    clip = _clips(500, 5)
    a, b, c = (corrupt_pairs(clip, 0.4, s) for s in (1, 1, 2))
    assert np.array_equal(a.corrupted, b.corrupted) and np.array_equal(a.source, b.source)
    assert not np.array_equal(a.corrupted, c.corrupted)
    assert not a.corrupted.flags.writeable  # fixed for the run


def test_zero_ratio_and_errors():
    clip = _clips(50, 3)
    assert corrupt_pairs(clip, 0.0, 0).num_corrupted == 0
    for split in ("val", "test"):
        with pytest.raises(ValueError, match="only applied to the training split"):
            corrupt_pairs(clip, 0.2, 0, split=split)
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"in \[0, 1\)"):
            corrupt_pairs(clip, bad, 0)
    with pytest.raises(ValueError, match="shares its clip"):
        corrupt_pairs(np.zeros(20, int), 0.5, 0)


def test_multiple_keys_must_all_differ():
    clip = np.arange(400)
    text = clip % 4  # four caption texts shared by many clips
    nc = corrupt_pairs(np.stack([clip, text], axis=1), 0.5, 0)
    z = nc.corrupted
    assert z.sum() > 100
    assert np.all(text[nc.source[z]] != text[z]) and np.all(clip[nc.source[z]] != clip[z])
    # with the clip key alone, some replacements keep the same text (~1/4 of them)
    same = corrupt_pairs(clip, 0.5, 0)
    assert np.mean(text[same.source[same.corrupted]] == text[same.corrupted]) > 0.1


def test_accept_rule_is_applied():
    clip = np.arange(300)
    nc = corrupt_pairs(clip, 0.5, 1, accept=lambda i, j: (j % 2) == 0)
    assert np.all(nc.source[nc.corrupted] % 2 == 0) and nc.num_corrupted > 100
    with pytest.raises(ValueError, match="refused by `accept`"):
        corrupt_pairs(clip, 0.5, 1, accept=lambda i, j: np.zeros(len(i), bool))

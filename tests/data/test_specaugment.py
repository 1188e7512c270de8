"""Tests for mltm.data.specaugment: stripes within bounds, seeded, off in evaluation."""

import pytest
import torch

from mltm.data.specaugment import SpecAugment


def _masked(x, y):
    return y != x


def test_stripe_widths_and_counts_are_bounded():
    aug = SpecAugment(freq_mask_param=8, n_freq_masks=2, time_mask_param=20, n_time_masks=2,
                      mask_value=-7.0)
    x = torch.randn(64, 64, 300)
    y = aug(x, generator=torch.Generator().manual_seed(0))
    m = _masked(x, y)
    assert torch.all(y[m] == -7.0)
    full_rows = m.all(dim=2)  # frequency stripes cover every frame
    full_cols = m.all(dim=1)  # time stripes cover every bin
    assert torch.all(full_rows.sum(1) <= 2 * 7) and torch.all(full_cols.sum(1) <= 2 * 19)
    # every masked cell lies in a masked row or column
    assert torch.equal(m, full_rows[:, :, None] | full_cols[:, None, :])
    assert full_rows.any(1).float().mean() > 0.5 and full_cols.any(1).float().mean() > 0.5
    # per-example masks differ
    assert not all(torch.equal(m[0], m[i]) for i in range(1, 64))


def test_seeded_and_off_in_eval():
    aug = SpecAugment()
    x = torch.randn(4, 64, 500)
    a = aug(x, generator=torch.Generator().manual_seed(3))
    b = aug(x, generator=torch.Generator().manual_seed(3))
    c = aug(x, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    aug.eval()
    assert aug(x, generator=torch.Generator().manual_seed(3)) is x


def test_time_stripes_stay_in_true_length():
    aug = SpecAugment(n_freq_masks=0, time_mask_param=30, n_time_masks=3)
    x = torch.randn(200, 8, 100)
    lengths = torch.randint(5, 100, (200,))
    y = aug(x, lengths, generator=torch.Generator().manual_seed(0))
    cols = (y != x).all(dim=1)
    for i in range(200):
        assert not cols[i, lengths[i]:].any()
    with pytest.raises(ValueError, match="lengths has 3 entries"):
        aug(x, torch.ones(3), generator=torch.Generator())

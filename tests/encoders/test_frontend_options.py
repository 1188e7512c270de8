"""Tests for the LogMelConfig options added for the aisfx front end (mltm/data/frontend.py).

The paper's defaults are covered by tests/data/test_frontend.py; here: the new options do
what they say, and leave the default config (and its feature-cache key) unchanged.
"""

from __future__ import annotations

import dataclasses
import math
import re

import pytest
import torch

from mltm.data.frontend import LogMelConfig, LogMelFrontEnd
from mltm.encoders.aisfx import aisfx_frontend_config

SMALL = dict(sample_rate=16000, n_fft=512, win_length=512, hop_length=256, n_mels=20,
             f_min=0.0, f_max=8000.0, max_seconds=None)


def test_default_feature_key_is_unchanged():
    # The key before these options existed: feature caches built earlier stay valid.
    assert LogMelConfig().feature_key() == "41891c112730aef2"
    assert "compression" not in LogMelConfig().feature_dict()
    assert aisfx_frontend_config().feature_key() != LogMelConfig().feature_key()
    assert dataclasses.replace(LogMelConfig(), peak_normalize=True).feature_key() != \
        LogMelConfig().feature_key()


def test_l1_filters_sum_to_one():
    fe = LogMelFrontEnd(LogMelConfig(**SMALL, mel_scale="htk", mel_norm="l1"))
    fb = fe.melspec.mel_scale.fb  # [n_freqs, n_mels]
    torch.testing.assert_close(fb.sum(dim=0), torch.ones(20))
    plain = LogMelFrontEnd(LogMelConfig(**SMALL, mel_scale="htk", mel_norm=None))
    ratio = fb / plain.melspec.mel_scale.fb.clamp_min(1e-12)
    # Same triangles, one scale per filter.
    for j in range(20):
        r = ratio[:, j][plain.melspec.mel_scale.fb[:, j] > 1e-6]
        torch.testing.assert_close(r, r[0].expand_as(r))


def test_log10_1p_compression_and_divisor(gen):
    cfg_db = LogMelConfig(**SMALL)
    cfg = dataclasses.replace(cfg_db, compression="log10_1p", compression_scale=100.0,
                              compression_divisor=2.0)
    x = 0.1 * torch.randn(4000, generator=gen)
    db = LogMelFrontEnd(cfg_db)(x)
    mel = 10.0 ** (db / 10.0)  # exact where mel > amin, true here for noise
    torch.testing.assert_close(LogMelFrontEnd(cfg)(x), torch.log10(100.0 * mel + 1) / 2.0,
                               atol=1e-4, rtol=1e-4)
    silence = LogMelFrontEnd(cfg)(torch.zeros(4000))
    assert torch.all(silence == 0)  # log10(0 + 1): silence is 0, padding value of aisfx


def test_peak_normalize_makes_features_gain_invariant(gen):
    cfg = LogMelConfig(**SMALL, compression="log10_1p", peak_normalize=True)
    x = torch.randn(2, 4000, generator=gen)
    fe = LogMelFrontEnd(cfg)
    torch.testing.assert_close(fe(0.01 * x), fe(x), atol=1e-5, rtol=1e-5)
    padded = torch.nn.functional.pad(x, (0, 1000))  # zero padding does not move the peak
    torch.testing.assert_close(fe(padded)[..., : fe(x).shape[-1] - 2], fe(x)[..., :-2])
    assert torch.all(fe(torch.zeros(1, 4000)) == 0)  # silence stays silence (no 0/0)
    no_peak = LogMelFrontEnd(dataclasses.replace(cfg, peak_normalize=False))
    assert (no_peak(0.01 * x) - no_peak(x)).abs().max() > 0.1


def test_invalid_options():
    with pytest.raises(ValueError, match=re.escape(
            "mel_norm 'area': use 'slaney', 'l1' or None")):
        LogMelConfig(mel_norm="area")
    with pytest.raises(ValueError, match=re.escape(
            "compression 'log': use 'db' or 'log10_1p'")):
        LogMelConfig(compression="log")
    with pytest.raises(ValueError, match=re.escape(
            "compression_scale and compression_divisor must be positive")):
        LogMelConfig(compression_divisor=0.0)


def test_aisfx_config_frames():
    cfg = aisfx_frontend_config()
    x = torch.zeros(3 * 44100)
    assert LogMelFrontEnd(cfg)(x).shape == (96, cfg.frames_for(x.numel())) == (96, 130)
    assert math.isclose(cfg.hop_length / cfg.sample_rate * 100, 2.32, abs_tol=0.01)

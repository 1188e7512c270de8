"""Tests for mltm.data.frontend: the paper's log-mel settings against an independent reference."""

import dataclasses

import numpy as np
import pytest
import torch

from mltm.data.frontend import LogMelConfig, LogMelFrontEnd, frontend_config_of


def _hz_to_mel(f):
    """Slaney mel scale (librosa's default, htk=False), written out in numpy."""
    f = np.asarray(f, dtype=np.float64)
    f_sp = 200.0 / 3
    mel = f / f_sp
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, np.log(6.4) / 27.0
    log_part = min_log_mel + np.log(np.maximum(f, 1e-9) / min_log_hz) / logstep
    return np.where(f >= min_log_hz, log_part, mel)


def _mel_to_hz(m):
    m = np.asarray(m, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


def _mel_filters(cfg):
    """librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax) re-derived: slaney scale and norm."""
    fft_freqs = np.linspace(0, cfg.sample_rate / 2, 1 + cfg.n_fft // 2)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(cfg.f_min), _hz_to_mel(cfg.f_max), cfg.n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    w = np.zeros((cfg.n_mels, fft_freqs.size))
    for i in range(cfg.n_mels):
        w[i] = np.maximum(0, np.minimum(-ramps[i] / fdiff[i], ramps[i + 2] / fdiff[i + 1]))
    w *= (2.0 / (mel_f[2 : cfg.n_mels + 2] - mel_f[: cfg.n_mels]))[:, None]
    return w, mel_f[1:-1]


def _reference_logmel(x, cfg):
    """numpy framing + rfft power spectrum, reflect padding, mel filters, 10 log10(max(., amin))."""
    pad = cfg.n_fft // 2
    xp = np.pad(x.astype(np.float64), pad, mode="reflect")
    n_frames = 1 + (xp.size - cfg.n_fft) // cfg.hop_length
    win = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(cfg.n_fft) / cfg.n_fft)  # periodic Hann
    hop = cfg.hop_length
    frames = np.stack([xp[t * hop : t * hop + cfg.n_fft] for t in range(n_frames)])
    power = np.abs(np.fft.rfft(frames * win, axis=1)) ** 2  # [frames, freqs]
    w, _ = _mel_filters(cfg)
    mel = power @ w.T  # [frames, n_mels]
    return 10 * np.log10(np.maximum(mel, cfg.amin)).T  # [n_mels, frames]


def test_defaults_are_the_papers():
    c = LogMelConfig()
    assert (c.sample_rate, c.n_fft, c.win_length, c.hop_length) == (32000, 1024, 1024, 320)
    assert (c.n_mels, c.f_min, c.f_max, c.amin, c.window) == (64, 50.0, 14000.0, 1e-10, "hann")


@pytest.mark.parametrize("seconds", [1.0, 0.37])
def test_matches_independent_reference(seconds):
    cfg = LogMelConfig()
    rng = np.random.default_rng(0)
    n = int(seconds * cfg.sample_rate)
    t = np.arange(n) / cfg.sample_rate
    x = 0.5 * np.sin(2 * np.pi * 1234.5 * t) + 0.05 * rng.standard_normal(n)
    out = LogMelFrontEnd(cfg)(torch.tensor(x, dtype=torch.float32)).double().numpy()
    ref = _reference_logmel(x, cfg)
    assert out.shape == ref.shape == (64, 1 + n // 320)
    # float32 STFT vs float64 reference (measured ~7e-5 dB; an htk mel scale differs by 20 dB)
    assert np.max(np.abs(out - ref)) < 1e-3


def test_silence_hits_the_floor_without_top_db():
    out = LogMelFrontEnd()(torch.zeros(3200))
    assert torch.all(out == -100.0)  # 10*log10(1e-10), no top_db clipping, no ref scaling


def test_tone_peaks_in_the_right_mel_bin():
    cfg = LogMelConfig()
    _, centres = _mel_filters(cfg)
    t = torch.arange(cfg.sample_rate) / cfg.sample_rate
    for f0 in (440.0, 3000.0):
        out = LogMelFrontEnd(cfg)(torch.sin(2 * np.pi * f0 * t))
        assert int(out[:, 5:-5].mean(dim=1).argmax()) == int(np.argmin(np.abs(centres - f0)))


def test_frame_count_and_batch_shapes():
    cfg = LogMelConfig()
    fe = LogMelFrontEnd(cfg)
    x = torch.randn(2, 3, 10 * 32000)
    out = fe(x)
    assert out.shape == (2, 3, 64, 1001)  # PANNs: 10 s at 32 kHz -> 1001 frames
    assert fe.frames_for(10 * 32000) == 1001
    n = torch.tensor([0, 319, 320, 32000])
    assert torch.equal(cfg.frames_for(n), torch.tensor([1, 1, 2, 101]))
    # each row of a batch equals the row computed alone
    torch.testing.assert_close(out[1, 2], fe(x[1, 2]), atol=1e-3, rtol=0)
    # very short input (reflect padding would fail) gives frames_for(n_fft//2 + 1)
    assert fe(torch.randn(100)).shape == (64, cfg.frames_for(513))


def test_other_settings_follow_the_config():
    cfg = LogMelConfig(sample_rate=16000, n_mels=40, f_max=8000, hop_length=160)
    out = LogMelFrontEnd(cfg)(torch.randn(16000))
    assert out.shape == (40, 101)


def test_config_validation_and_keys():
    with pytest.raises(ValueError, match="f_max"):
        LogMelConfig(sample_rate=16000)  # f_max 14 kHz above Nyquist
    with pytest.raises(ValueError, match="eval_crop"):
        LogMelConfig(eval_crop="random")
    with pytest.raises(ValueError, match="pad_to='max' needs max_seconds"):
        LogMelConfig(max_seconds=None, pad_to="max")
    a = LogMelConfig()
    assert a.feature_key() == LogMelConfig().feature_key()
    assert a.feature_key() != dataclasses.replace(a, n_mels=128).feature_key()
    # the clip policy does not change the features, so not the key either
    assert a.feature_key() == dataclasses.replace(a, max_seconds=30.0).feature_key()
    assert LogMelConfig(max_seconds=2.5).max_samples == 80000


def test_encoder_owns_its_config():
    class Encoder:
        frontend_config = LogMelConfig(n_mels=128)

    assert frontend_config_of(Encoder()).n_mels == 128
    assert frontend_config_of(None) == LogMelConfig()
    cfg = LogMelConfig(hop_length=160)
    assert frontend_config_of(cfg) is cfg
    with pytest.raises(TypeError, match="frontend_config"):
        frontend_config_of(object())

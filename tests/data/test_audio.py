"""Tests for mltm.data.audio: loading, resampling, crop/pad policy and the skip reasons."""

import numpy as np
import pytest
import soundfile as sf
import torch

from mltm.data.audio import (
    AudioLoadError,
    SkipReport,
    crop_waveform,
    load_audio,
    pad_right,
    probe_audio,
)


@pytest.mark.parametrize("suffix", [".wav", ".flac", ".ogg"])
def test_load_resamples_to_target_rate_and_keeps_pitch(tmp_path, tone, suffix):
    p = tone(tmp_path / f"a{suffix}", seconds=1.0, sr=44100, freq=1000.0)
    x = load_audio(p, 32000)
    assert x.dtype == torch.float32 and x.ndim == 1
    assert abs(x.shape[0] - 32000) <= 1
    spec = torch.fft.rfft(x[:32000] * torch.hann_window(32000)).abs()
    assert int(spec.argmax()) == pytest.approx(1000, abs=2)  # 1 Hz bins: still 1 kHz


def test_stereo_is_averaged_to_mono(tmp_path):
    p = tmp_path / "st.wav"
    left = np.full(800, 0.2, np.float32)
    sf.write(p, np.stack([left, -3 * left], axis=1), 16000, subtype="FLOAT")
    x = load_audio(p, 16000)
    torch.testing.assert_close(x, torch.full((800,), -0.2))


def test_skip_reasons_on_real_corrupted_files(tmp_path, tone, truncated):
    cases = {
        "missing": tmp_path / "nope.wav",
        "empty": tmp_path / "zero.wav",
        "not_audio": tmp_path / "text.wav",
        "truncated": truncated(tone(tmp_path / "cut.wav", seconds=1.0)),
    }
    cases["empty"].write_bytes(b"")
    cases["not_audio"].write_text("definitely not a RIFF header\n")
    for reason, path in cases.items():
        with pytest.raises(AudioLoadError) as e:
            load_audio(path, 16000)
        assert e.value.reason == reason and e.value.path == str(path)
        assert isinstance(e.value, ValueError)
    # truncated FLAC: the header is fine, decoding fails
    flac = truncated(tone(tmp_path / "cut.flac", seconds=1.0, noise=0.1))
    assert probe_audio(flac) > 0
    with pytest.raises(AudioLoadError, match="truncated"):
        load_audio(flac, 16000)
    # NaN samples in a float WAV
    nan = tmp_path / "nan.wav"
    sf.write(nan, np.array([0.1, np.nan, 0.2] * 100, np.float32), 16000, subtype="FLOAT")
    with pytest.raises(AudioLoadError) as e:
        load_audio(nan, 16000)
    assert e.value.reason == "non_finite"
    # the intact original loads
    assert load_audio(tone(tmp_path / "fine.wav"), 16000).shape == (8000,)


def test_probe_detects_wav_truncation_from_header(tmp_path, tone, truncated):
    p = tone(tmp_path / "a.wav", seconds=0.5)
    assert probe_audio(p) == 8000
    truncated(p, 0.9)
    with pytest.raises(AudioLoadError, match="declared bytes"):
        probe_audio(p)


def test_crop_policy():
    x = torch.arange(100.0)
    y, off = crop_waveform(x, 40, "start")
    assert off == 0 and torch.equal(y, x[:40])
    y, off = crop_waveform(x, 40, "center")
    assert off == 30 and torch.equal(y, x[30:70])
    offs = set()
    for s in range(50):
        g = torch.Generator().manual_seed(s)
        y, off = crop_waveform(x, 40, "random", g)
        assert torch.equal(y, x[off : off + 40]) and 0 <= off <= 60
        offs.add(off)
        g2 = torch.Generator().manual_seed(s)
        assert crop_waveform(x, 40, "random", g2)[1] == off  # seeded
    assert len(offs) > 20  # offsets really vary
    assert crop_waveform(x, 200, "random")[0] is x  # short clips untouched (padding is later)
    with pytest.raises(ValueError, match="Generator"):
        crop_waveform(x, 40, "random")
    # features: crops the last (frame) axis
    f = torch.randn(8, 100)
    assert crop_waveform(f, 10, "center")[0].shape == (8, 10)


def test_pad_right_keeps_true_lengths():
    a, b = torch.ones(3), torch.full((5,), 2.0)
    out, lens = pad_right([a, b])
    assert out.tolist() == [[1, 1, 1, 0, 0], [2, 2, 2, 2, 2]] and lens.tolist() == [3, 5]
    out, _ = pad_right([torch.ones(2, 3)], length=6)
    assert out.shape == (1, 2, 6) and out[0, :, 3:].abs().sum() == 0
    with pytest.raises(ValueError, match="does not fit"):
        pad_right([b], length=4)


def test_skip_report():
    r = SkipReport()
    assert not r and r.summary() == "no skipped files"
    r.add("missing", "a.wav")
    r.add("missing", "a.wav")
    r.add_error(AudioLoadError("truncated", "b.wav", "x"))
    r2 = SkipReport()
    r2.update([("empty", "c.wav"), ("missing", "d.wav")])
    r.update(r2)
    assert r.counts == {"missing": 3, "truncated": 1, "empty": 1} and r.total == 5
    assert r.paths["missing"] == ["a.wav", "d.wav"]
    assert "missing: 3 (a.wav, d.wav)" in r.summary()
    with pytest.raises(ValueError, match="unknown skip reason"):
        r.add("weird", "x")

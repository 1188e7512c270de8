"""mltm.numerics: the rounding that makes CPU runs portable, against brute force."""

from __future__ import annotations

import math

import pytest
import torch

from mltm.numerics import default_dtype, round_significant, round_to_grid, tensor_digest


def _brute_round_significant(x: float, bits: int) -> float:
    if x == 0 or not math.isfinite(x):
        return x
    e = math.floor(math.log2(abs(x))) + 1  # x = m * 2**e with 0.5 <= |m| < 1
    q = 2.0 ** (e - bits)
    return round(x / q) * q  # Python's round is half to even, like torch.round


def test_round_significant_matches_brute_force(gen):
    x = torch.randn(2000, generator=gen, dtype=torch.float64) * 10 ** torch.randint(
        -8, 8, (2000,), generator=gen).double()
    for bits in (1, 5, 16, 30):
        got = round_significant(x, bits)
        want = torch.tensor([_brute_round_significant(v, bits) for v in x.tolist()],
                            dtype=torch.float64)
        assert torch.equal(got, want), bits


def test_round_significant_properties(gen):
    x = torch.randn(500, generator=gen, dtype=torch.float64)
    r = round_significant(x, 16)
    assert torch.equal(round_significant(r, 16), r)  # idempotent
    assert torch.equal(r.float().double(), r)  # 16 bits are exact in float32
    assert float(((r - x).abs() / x.abs()).max()) <= 2.0**-16
    special = torch.tensor([0.0, -0.0, 1.0, -0.5, 2.0**-30, math.inf, -math.inf, math.nan])
    out = round_significant(special, 3)
    assert torch.equal(out[:6], special[:6]) and out[6] == -math.inf and math.isnan(out[7])
    assert torch.equal(round_significant(x.float(), 24), x.float())  # full mantissa: as is


def test_round_significant_errors():
    with pytest.raises(ValueError, match="bits must be in 1..24 for torch.float32, got 25"):
        round_significant(torch.ones(2), 25)
    with pytest.raises(TypeError, match="floating-point tensor"):
        round_significant(torch.ones(2, dtype=torch.long), 8)


def test_noise_below_the_step_rarely_moves_a_value(gen):
    # The premise of the portable features: float64 rounding noise (~1e-15 relative) almost
    # never crosses a 16-bit rounding boundary; float32 noise (~1e-7) often does.
    x = torch.randn(100_000, generator=gen, dtype=torch.float64)
    noise64 = x * 1e-15 * torch.randn(100_000, generator=gen, dtype=torch.float64)
    noise32 = x * 1e-7 * torch.randn(100_000, generator=gen, dtype=torch.float64)
    moved64 = int((round_significant(x, 16) != round_significant(x + noise64, 16)).sum())
    moved32 = int((round_significant(x, 16) != round_significant(x + noise32, 16)).sum())
    assert moved64 == 0
    assert moved32 > 100


def test_round_to_grid_uses_a_power_of_two_step():
    x = torch.tensor([3.0, 1.0 + 2.0**-30, 1.0, -2.5, 1e-12], dtype=torch.float64)
    out = round_to_grid(x, 20)  # max 3 < 4 = 2^2, step 2^(2 - 20)
    step = 2.0**-18
    assert torch.equal(out, torch.round(x / step) * step)
    assert out[1] == out[2]  # a difference below the step becomes an exact tie
    assert out[4] == 0.0
    # the step does not move with the last bits of the maximum
    y = x.clone()
    y[0] = 3.0 * (1 + 1e-15)
    assert torch.equal(round_to_grid(y, 20)[1:], out[1:])


def test_round_to_grid_keeps_non_finite_and_zero():
    x = torch.tensor([math.inf, 1.5, math.nan, -0.75], dtype=torch.float64)
    out = round_to_grid(x, 4)
    assert out[0] == math.inf and math.isnan(out[2]) and out[1] == 1.5 and out[3] == -0.75
    assert torch.equal(round_to_grid(torch.zeros(3, dtype=torch.float64), 8),
                       torch.zeros(3, dtype=torch.float64))


def test_tensor_digest_names_values_and_shapes(gen):
    x = torch.randn(10, 4, generator=gen)
    d = tensor_digest(x)
    assert len(d) == 12 and d == tensor_digest(x.clone())
    assert d == tensor_digest(x.double())  # a cast does not change it
    assert d != tensor_digest(x + 0.01)
    assert d != tensor_digest(x.reshape(4, 10))
    assert tensor_digest(x, torch.arange(3)) != tensor_digest(x, torch.arange(4))


def test_default_dtype_restores_on_error():
    before = torch.get_default_dtype()
    with pytest.raises(RuntimeError):
        with default_dtype(torch.float64):
            assert torch.ones(1).dtype == torch.float64
            assert torch.nn.Linear(2, 2).weight.dtype == torch.float64
            raise RuntimeError("boom")
    assert torch.get_default_dtype() == before
    with default_dtype(None):
        assert torch.get_default_dtype() == before


def test_frontend_window_and_filterbank_are_float64_values_rounded_once():
    import torchaudio

    from mltm.data.frontend import LogMelConfig, LogMelFrontEnd

    cfg = LogMelConfig()
    fe = LogMelFrontEnd(cfg)
    assert fe.dtype == torch.float32
    window64 = torch.hann_window(cfg.win_length or cfg.n_fft, dtype=torch.float64)
    assert torch.equal(fe.melspec.spectrogram.window, window64.float())
    # melscale_fbanks computes in the default dtype; in float64 it is the reference
    with default_dtype(torch.float64):
        fb64 = torchaudio.functional.melscale_fbanks(
            cfg.n_fft // 2 + 1, cfg.f_min, cfg.f_max, cfg.n_mels, cfg.sample_rate,
            norm=cfg.mel_norm if cfg.mel_norm == "slaney" else None, mel_scale=cfg.mel_scale)
    if cfg.mel_norm == "l1":
        fb64 = fb64 / fb64.sum(0, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    assert torch.equal(fe.melspec.mel_scale.fb, fb64.float())
    assert fe.double().dtype == torch.float64

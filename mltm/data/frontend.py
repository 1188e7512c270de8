"""Log-mel front end: the settings (owned by the audio encoder) and the torch module.

The paper (App. A.1) follows Mei et al. (2022) and PANNs: 32 kHz audio, a 1024-sample Hann
window, hop 320, 64 mel bins from 50 Hz to 14 kHz, power spectrum, and
``10 * log10(max(power, 1e-10))`` without any ``top_db`` clipping. These are the defaults of
:class:`LogMelConfig`.

Other pretrained encoders need other front ends, so the config also covers the one of the
aisfx sound-effects CNN (:mod:`mltm.encoders.aisfx`): peak-normalised audio, HTK mel filters
each normalised to unit sum (librosa's ``norm=1`` since 0.8, Essentia's ``unit_sum``), zero
(``"constant"``) padding and ``log10(1e4 * mel + 1) / 9.4578`` instead of decibels. The
fields for these (``peak_normalize``, ``mel_norm="l1"``, ``compression``,
``compression_scale``, ``compression_divisor``) default to the paper's behaviour and are left
out of :meth:`LogMelConfig.feature_key` while they keep their defaults, so existing feature
caches stay valid.

**Who owns the settings.** An audio encoder is pretrained on one front end, so the encoder
owns its :class:`LogMelConfig`: an encoder class exposes it as the attribute
``frontend_config`` (see :class:`HasFrontEndConfig`), and a dataset asks the encoder for it
through :func:`frontend_config_of`. Another encoder (say, one pretrained at 16 kHz with 128
bins) exposes other settings and the data pipeline follows.

**Clip policy** (also in :class:`LogMelConfig`, since it decides what the encoder sees):

* clips longer than ``max_seconds`` are cropped to it: at a random offset in training (drawn
  from a seeded generator, so an epoch is reproducible) and at ``eval_crop`` (``"start"`` by
  default, as the reference code truncates) in evaluation;
* shorter clips are zero-padded **on the right** when batched, and the true length is kept
  (``lengths`` in the batch, and :meth:`LogMelFrontEnd.frames_for` to convert it to frames)
  so the encoder can mask the padding. ``pad_to="batch"`` pads to the longest clip of the
  batch (the reference code's Clotho collate); ``pad_to="max"`` pads every clip to
  ``max_seconds`` (the reference code's AudioCaps behaviour, a fixed input size).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import torch
import torchaudio
from torch import nn

from mltm.numerics import default_dtype

__all__ = [
    "HasFrontEndConfig",
    "LogMelConfig",
    "LogMelFrontEnd",
    "frontend_config_of",
]

CropMode = Literal["random", "start", "center"]


@dataclass(frozen=True)
class LogMelConfig:
    """Settings of the log-mel front end and of the clip length policy.

    Attributes:
        sample_rate: Audio is resampled to this rate (Hz) on loading.
        n_fft: FFT size.
        win_length: Window length in samples.
        hop_length: Hop in samples; one frame every ``hop_length / sample_rate`` seconds.
        window: Window function; only ``"hann"`` (periodic, as librosa/torchlibrosa) for now.
        center: Pad the signal by ``n_fft // 2`` on both sides so frame ``t`` is centred on
            sample ``t * hop_length``.
        pad_mode: Padding used when ``center`` (``"reflect"`` as torchlibrosa).
        n_mels: Number of mel bins.
        f_min: Lowest mel band edge (Hz).
        f_max: Highest mel band edge (Hz).
        mel_scale: ``"slaney"`` (librosa's default, used by PANNs) or ``"htk"``.
        mel_norm: ``"slaney"`` area normalisation of the filters (librosa's default),
            ``"l1"`` (each filter's weights sum to 1: librosa's ``norm=1`` since 0.8, Essentia's
            ``unit_sum``) or None.
        power: Exponent of the magnitude (2 = power spectrum).
        amin: Floor before the logarithm: ``10 * log10(max(power, amin))`` (``"db"`` only).
        compression: ``"db"``: ``10 * log10(max(mel, amin))`` (PANNs); ``"log10_1p"``:
            ``log10(compression_scale * mel + 1)`` (Essentia's ``shift_scale_log``, aisfx).
        compression_scale: Multiplier inside ``log10_1p`` (``1e4`` in Essentia/aisfx).
        compression_divisor: The compressed features are divided by this (aisfx divides by
            the maximum of its training features, 9.457798957824707). 1 leaves them as they are.
        peak_normalize: Divide each waveform by its maximum absolute value (silence is left
            as it is) before the STFT, as aisfx's librosa front end does. Zero padding does not
            change the maximum, so padded batches give the same features.
        max_seconds: Clip length limit in seconds (None: never crop, e.g. for zero-shot sets
            of short clips). AudioCaps clips are 10 s, Clotho clips 15-30 s.
        train_crop: Where to crop a long clip in training (``"random"`` offset by default).
        eval_crop: Where to crop a long clip in evaluation (``"start"`` or ``"center"``).
        pad_to: ``"batch"``: zero-pad to the longest clip in the batch; ``"max"``: zero-pad
            every clip to ``max_seconds``.
    """

    sample_rate: int = 32000
    n_fft: int = 1024
    win_length: int = 1024
    hop_length: int = 320
    window: Literal["hann"] = "hann"
    center: bool = True
    pad_mode: str = "reflect"
    n_mels: int = 64
    f_min: float = 50.0
    f_max: float = 14000.0
    mel_scale: Literal["slaney", "htk"] = "slaney"
    mel_norm: Literal["slaney", "l1"] | None = "slaney"
    power: float = 2.0
    amin: float = 1e-10
    compression: Literal["db", "log10_1p"] = "db"
    compression_scale: float = 1e4
    compression_divisor: float = 1.0
    peak_normalize: bool = False
    max_seconds: float | None = 10.0
    train_crop: CropMode = "random"
    eval_crop: CropMode = "start"
    pad_to: Literal["batch", "max"] = "batch"

    def __post_init__(self) -> None:
        if self.sample_rate <= 0 or self.hop_length <= 0 or self.n_fft <= 0:
            raise ValueError("sample_rate, n_fft and hop_length must be positive")
        if not 0 < self.win_length <= self.n_fft:
            raise ValueError(f"win_length {self.win_length} must be in (0, n_fft={self.n_fft}]")
        if self.window != "hann":
            raise ValueError(f"window {self.window!r} is not supported; use 'hann'")
        if not 0 <= self.f_min < self.f_max <= self.sample_rate / 2:
            raise ValueError(
                f"need 0 <= f_min < f_max <= sample_rate/2, got f_min={self.f_min}, "
                f"f_max={self.f_max}, sample_rate={self.sample_rate}"
            )
        if self.n_mels <= 0:
            raise ValueError("n_mels must be positive")
        if self.amin <= 0:
            raise ValueError("amin must be positive")
        if self.mel_scale not in ("slaney", "htk"):
            raise ValueError(f"mel_scale {self.mel_scale!r}: use 'slaney' or 'htk'")
        if self.mel_norm not in ("slaney", "l1", None):
            raise ValueError(f"mel_norm {self.mel_norm!r}: use 'slaney', 'l1' or None")
        if self.compression not in ("db", "log10_1p"):
            raise ValueError(f"compression {self.compression!r}: use 'db' or 'log10_1p'")
        if self.compression_scale <= 0 or self.compression_divisor <= 0:
            raise ValueError("compression_scale and compression_divisor must be positive")
        if self.max_seconds is not None and self.max_seconds <= 0:
            raise ValueError("max_seconds must be positive or None")
        if self.train_crop not in ("random", "start", "center"):
            raise ValueError(f"train_crop {self.train_crop!r}: use 'random', 'start' or 'center'")
        if self.eval_crop not in ("start", "center"):
            raise ValueError(
                f"eval_crop {self.eval_crop!r}: use 'start' or 'center' (evaluation is "
                "deterministic)"
            )
        if self.pad_to not in ("batch", "max"):
            raise ValueError(f"pad_to {self.pad_to!r}: use 'batch' or 'max'")
        if self.pad_to == "max" and self.max_seconds is None:
            raise ValueError("pad_to='max' needs max_seconds")

    @property
    def max_samples(self) -> int | None:
        """Clip length limit in samples, or None."""
        if self.max_seconds is None:
            return None
        return int(round(self.max_seconds * self.sample_rate))

    def frames_for(self, num_samples: int | torch.Tensor) -> int | torch.Tensor:
        """Return the number of frames the front end makes from ``num_samples`` samples.

        With ``center=True`` this is ``1 + num_samples // hop_length``; otherwise
        ``1 + (num_samples - n_fft) // hop_length``. Works on ints and integer tensors.
        """
        if self.center:
            return 1 + num_samples // self.hop_length
        return 1 + (num_samples - self.n_fft) // self.hop_length

    def feature_dict(self) -> dict[str, Any]:
        """Return the settings that determine the features (not the clip policy).

        The fields added for other encoders' front ends (:data:`_OPTIONAL_FEATURE_FIELDS`) are
        listed only when they differ from their defaults, so the key of a config that does not
        use them is the same as before they existed (and existing feature caches stay valid).
        """
        d = asdict(self)
        for k in ("max_seconds", "train_crop", "eval_crop", "pad_to"):
            d.pop(k)
        for k, default in _OPTIONAL_FEATURE_FIELDS.items():
            if d[k] == default:
                d.pop(k)
        return d

    def feature_key(self) -> str:
        """Return a short stable hash of :meth:`feature_dict` (for feature caches)."""
        blob = json.dumps(self.feature_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


#: Feature settings that :meth:`LogMelConfig.feature_dict` lists only when not at this default.
_OPTIONAL_FEATURE_FIELDS: dict[str, Any] = {
    "compression": "db",
    "compression_scale": 1e4,
    "compression_divisor": 1.0,
    "peak_normalize": False,
}


@runtime_checkable
class HasFrontEndConfig(Protocol):
    """An object (usually an audio encoder) that owns its front-end settings."""

    frontend_config: LogMelConfig


def frontend_config_of(obj: LogMelConfig | HasFrontEndConfig | None) -> LogMelConfig:
    """Return the front-end settings of an encoder, or the settings themselves.

    Args:
        obj: A :class:`LogMelConfig`, an object with a ``frontend_config`` attribute (an audio
            encoder), or None for the paper's defaults.

    Raises:
        TypeError: If ``obj`` is neither.
    """
    if obj is None:
        return LogMelConfig()
    if isinstance(obj, LogMelConfig):
        return obj
    cfg = getattr(obj, "frontend_config", None)
    if isinstance(cfg, LogMelConfig):
        return cfg
    raise TypeError(
        f"{type(obj).__name__} has no LogMelConfig: pass a LogMelConfig or an encoder with a "
        "`frontend_config` attribute"
    )


class LogMelFrontEnd(nn.Module):
    """Waveform to log-mel spectrogram, built from a :class:`LogMelConfig`.

    Computes the power mel spectrogram with :class:`torchaudio.transforms.MelSpectrogram`, then
    ``10 * log10(max(mel, amin))`` (no reference scaling, no ``top_db``), which equals
    torchlibrosa's ``LogmelFilterBank(ref=1.0, amin=1e-10, top_db=None)``. With
    ``compression="log10_1p"`` it computes ``log10(compression_scale * mel + 1)`` instead; the
    result is divided by ``compression_divisor``. ``peak_normalize`` and ``mel_norm="l1"``
    are applied as described in :class:`LogMelConfig`.

    Input ``[..., T]`` (float waveform at ``config.sample_rate``); output
    ``[..., n_mels, n_frames]`` with ``n_frames = config.frames_for(T)``. Signals shorter than
    ``n_fft // 2 + 1`` samples (``n_fft`` when not centred) are first zero-padded on the right
    to that length (reflect padding needs it), so they give ``frames_for`` of that length.

    Args:
        config: Settings; the paper's by default.
    """

    def __init__(self, config: LogMelConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or LogMelConfig()
        # The window and the filterbank are computed in float64 and rounded once to float32:
        # computed in float32 their last bits depend on the CPU's SIMD path (measured: the
        # l1-normalised filterbank moved the float64 log-mel by 3e-5 between
        # ATEN_CPU_CAPABILITY=default and avx2), and every feature inherits them.
        with default_dtype(torch.float64):
            self._build_melspec(config)
        self.melspec.float()

    def _build_melspec(self, config: LogMelConfig) -> None:
        self.melspec = torchaudio.transforms.MelSpectrogram(
            sample_rate=config.sample_rate,
            n_fft=config.n_fft,
            win_length=config.win_length,
            hop_length=config.hop_length,
            f_min=config.f_min,
            f_max=config.f_max,
            n_mels=config.n_mels,
            window_fn=lambda n: torch.hann_window(n, dtype=torch.float64),
            power=config.power,
            center=config.center,
            pad_mode=config.pad_mode,
            norm=config.mel_norm if config.mel_norm == "slaney" else None,
            mel_scale=config.mel_scale,
        )
        if config.mel_norm == "l1":
            # torchaudio knows only slaney normalisation; the l1 one scales each filter (a
            # column of fb, [n_freqs, n_mels]) to unit sum. An empty filter stays zero.
            fb = self.melspec.mel_scale.fb
            fb.div_(fb.sum(dim=0, keepdim=True).clamp_min(torch.finfo(fb.dtype).tiny))

    def frames_for(self, num_samples: int | torch.Tensor) -> int | torch.Tensor:
        """Number of frames for ``num_samples`` samples (see :meth:`LogMelConfig.frames_for`)."""
        return self.config.frames_for(num_samples)

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype: float32, or the dtype the module was cast to (e.g. ``.double()``)."""
        return self.melspec.mel_scale.fb.dtype

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """Return the log-mel spectrogram of ``waveform`` (shape ``[..., T]``)."""
        min_len = self.config.n_fft // 2 + 1 if self.config.center else self.config.n_fft
        if waveform.shape[-1] < min_len:
            waveform = nn.functional.pad(waveform, (0, min_len - waveform.shape[-1]))
        cfg = self.config
        # float32 unless the module was cast (float64 for portable cached features)
        waveform = waveform.to(self.dtype)
        if cfg.peak_normalize:
            peak = waveform.abs().amax(dim=-1, keepdim=True)
            waveform = waveform / torch.where(peak > 0, peak, torch.ones_like(peak))
        mel = self.melspec(waveform)
        if cfg.compression == "log10_1p":
            out = torch.log10(cfg.compression_scale * mel + 1.0)
        else:
            out = 10.0 * torch.log10(torch.clamp(mel, min=cfg.amin))
        if cfg.compression_divisor != 1.0:
            out = out / cfg.compression_divisor
        return out

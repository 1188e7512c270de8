"""Log-mel front end: the settings (owned by the audio encoder) and the torch module.

The paper (App. A.1) follows Mei et al. (2022) and PANNs: 32 kHz audio, a 1024-sample Hann
window, hop 320, 64 mel bins from 50 Hz to 14 kHz, power spectrum, and
``10 * log10(max(power, 1e-10))`` without any ``top_db`` clipping. These are the defaults of
:class:`LogMelConfig`.

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
        mel_norm: ``"slaney"`` area normalisation of the filters (librosa's default) or None.
        power: Exponent of the magnitude (2 = power spectrum).
        amin: Floor before the logarithm: ``10 * log10(max(power, amin))``.
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
    mel_norm: Literal["slaney"] | None = "slaney"
    power: float = 2.0
    amin: float = 1e-10
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
        """Return the settings that determine the features (not the clip policy)."""
        d = asdict(self)
        for k in ("max_seconds", "train_crop", "eval_crop", "pad_to"):
            d.pop(k)
        return d

    def feature_key(self) -> str:
        """Return a short stable hash of :meth:`feature_dict` (for feature caches)."""
        blob = json.dumps(self.feature_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


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
    torchlibrosa's ``LogmelFilterBank(ref=1.0, amin=1e-10, top_db=None)``.

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
        self.melspec = torchaudio.transforms.MelSpectrogram(
            sample_rate=config.sample_rate,
            n_fft=config.n_fft,
            win_length=config.win_length,
            hop_length=config.hop_length,
            f_min=config.f_min,
            f_max=config.f_max,
            n_mels=config.n_mels,
            window_fn=torch.hann_window,
            power=config.power,
            center=config.center,
            pad_mode=config.pad_mode,
            norm=config.mel_norm,
            mel_scale=config.mel_scale,
        )

    def frames_for(self, num_samples: int | torch.Tensor) -> int | torch.Tensor:
        """Number of frames for ``num_samples`` samples (see :meth:`LogMelConfig.frames_for`)."""
        return self.config.frames_for(num_samples)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """Return the log-mel spectrogram of ``waveform`` (shape ``[..., T]``)."""
        min_len = self.config.n_fft // 2 + 1 if self.config.center else self.config.n_fft
        if waveform.shape[-1] < min_len:
            waveform = nn.functional.pad(waveform, (0, min_len - waveform.shape[-1]))
        mel = self.melspec(waveform.float())
        return 10.0 * torch.log10(torch.clamp(mel, min=self.config.amin))

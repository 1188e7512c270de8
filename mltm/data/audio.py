"""Audio loading, cropping and padding, and the report of files that could not be used.

Loading uses :mod:`soundfile` (``torchaudio.load`` needs torchcodec and FFmpeg), averages the
channels to mono, converts to float32 and resamples with
:func:`torchaudio.functional.resample`.

Files that cannot be used raise :class:`AudioLoadError`, whose ``reason`` is one of
:data:`SKIP_REASONS`:

* ``"missing"``: no such file;
* ``"empty"``: zero bytes, or a valid header with no samples;
* ``"not_audio"``: libsndfile does not recognise the format (e.g. a text file named ``.wav``);
* ``"truncated"``: the file ends before its header says it should (WAV data chunk shorter
  than declared, FLAC frames cut off), or decoding fails after a good header;
* ``"non_finite"``: samples are NaN or infinite (float files);
* ``"unreadable"``: any other decoding error (e.g. a malformed Ogg stream).

The dataset turns these errors into skipped items counted in a :class:`SkipReport`; they
never stop an epoch.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import soundfile as sf

if TYPE_CHECKING:  # torch is imported where needed, so the converters run without it
    import torch

__all__ = [
    "SKIP_REASONS",
    "AudioLoadError",
    "SkipReport",
    "crop_waveform",
    "load_audio",
    "pad_right",
    "probe_audio",
]

SKIP_REASONS = ("missing", "empty", "not_audio", "truncated", "non_finite", "unreadable")


class AudioLoadError(ValueError):
    """An audio file that cannot be used.

    Attributes:
        reason: One of :data:`SKIP_REASONS`.
        path: The file.
        detail: The underlying error message.
    """

    def __init__(self, reason: str, path: str | os.PathLike, detail: str = "") -> None:
        assert reason in SKIP_REASONS, reason
        self.reason = reason
        self.path = str(path)
        self.detail = detail
        super().__init__(f"{reason}: {self.path}" + (f" ({detail})" if detail else ""))


@dataclass
class SkipReport:
    """Counts and paths of skipped audio files, per reason.

    Attributes:
        counts: Number of skips per reason.
        paths: The paths per reason, in the order they were met (a path skipped twice, e.g.
            in two epochs, is listed once per skip only in ``counts``).
    """

    counts: dict[str, int] = field(default_factory=dict)
    paths: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, path: str | os.PathLike) -> None:
        """Record one skipped file."""
        if reason not in SKIP_REASONS:
            raise ValueError(f"unknown skip reason {reason!r}; expected one of {SKIP_REASONS}")
        self.counts[reason] = self.counts.get(reason, 0) + 1
        lst = self.paths.setdefault(reason, [])
        if str(path) not in lst:
            lst.append(str(path))

    def add_error(self, err: AudioLoadError) -> None:
        """Record the file of an :class:`AudioLoadError`."""
        self.add(err.reason, err.path)

    def update(self, skipped: Iterable[tuple[str, str]] | SkipReport) -> None:
        """Add ``(reason, path)`` pairs (e.g. a batch's ``"skipped"``) or another report."""
        if isinstance(skipped, SkipReport):
            for reason, n in skipped.counts.items():
                self.counts[reason] = self.counts.get(reason, 0) + n
                lst = self.paths.setdefault(reason, [])
                lst.extend(p for p in skipped.paths.get(reason, []) if p not in lst)
            return
        for reason, path in skipped:
            self.add(reason, path)

    @property
    def total(self) -> int:
        """Total number of skips."""
        return sum(self.counts.values())

    def __bool__(self) -> bool:
        return self.total > 0

    def summary(self, max_paths: int = 3) -> str:
        """Return a one-line-per-reason description (``"no skipped files"`` when empty)."""
        if not self.total:
            return "no skipped files"
        lines = []
        for reason in SKIP_REASONS:
            n = self.counts.get(reason, 0)
            if n:
                ps = self.paths.get(reason, [])
                more = f", ... (+{len(ps) - max_paths})" if len(ps) > max_paths else ""
                lines.append(f"{reason}: {n} ({', '.join(ps[:max_paths])}{more})")
        return "\n".join(lines)


def _wav_truncation(path: Path) -> str | None:
    """Return a message when a RIFF/WAVE file's data chunk is shorter than its header says."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            size = path.stat().st_size
            pos = 12
            while pos + 8 <= size:
                f.seek(pos)
                cid, clen = struct.unpack("<4sI", f.read(8))
                if cid == b"data":
                    if clen in (0, 0xFFFFFFFF):  # streaming writers leave it unset
                        return None
                    have = size - (pos + 8)
                    if have < clen:
                        return f"data chunk has {have} of {clen} declared bytes"
                    return None
                pos += 8 + clen + (clen & 1)
            return "no data chunk"
    except OSError:
        return None


def probe_audio(path: str | os.PathLike) -> int:
    """Check an audio file cheaply (header only) and return its number of frames.

    Args:
        path: The file.

    Returns:
        The number of sample frames the header announces.

    Raises:
        AudioLoadError: If the file is missing, empty, not audio, truncated (WAV) or
            unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioLoadError("missing", path)
    if path.stat().st_size == 0:
        raise AudioLoadError("empty", path, "zero bytes")
    try:
        info = sf.info(str(path))
    except Exception as e:  # LibsndfileError and friends
        msg = str(e)
        reason = "not_audio" if "Format not recognised" in msg else "unreadable"
        raise AudioLoadError(reason, path, msg) from None
    if info.frames <= 0:
        raise AudioLoadError("empty", path, "no samples")
    trunc = _wav_truncation(path)
    if trunc:
        raise AudioLoadError("truncated", path, trunc)
    return int(info.frames)


def load_audio(path: str | os.PathLike, sample_rate: int) -> torch.Tensor:
    """Load an audio file as a mono float32 waveform at ``sample_rate``.

    Channels are averaged; other rates are converted with
    :func:`torchaudio.functional.resample` (windowed sinc), both in float64, rounded once
    to float32 (portable: the same samples on every CPU).

    Args:
        path: The file (any format libsndfile reads: WAV, FLAC, Ogg/Vorbis, MP3, ...).
        sample_rate: Target rate in Hz.

    Returns:
        Waveform, shape ``[T]``, dtype float32.

    Raises:
        AudioLoadError: If the file cannot be used (see :data:`SKIP_REASONS`).
    """
    import torch
    import torchaudio

    path = Path(path)
    expected = probe_audio(path)
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:
        detail = f"decoding failed after a good header: {e}"
        raise AudioLoadError("truncated", path, detail) from None
    if data.shape[0] == 0:
        raise AudioLoadError("empty", path, "no samples decoded")
    if data.shape[0] < expected:
        raise AudioLoadError("truncated", path, f"decoded {data.shape[0]} of {expected} frames")
    if not np.isfinite(data).all():
        raise AudioLoadError("non_finite", path, "NaN or infinite samples")
    # The mix-down and the resampling run in float64 and are rounded once to float32, so
    # the waveform is the same bits on every CPU (a float32 resampling convolution is not:
    # its last bits depend on the SIMD path; see mltm.numerics).
    wave = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1, dtype=np.float64)))
    if sr != sample_rate:
        wave = torchaudio.functional.resample(wave, sr, sample_rate)
    return wave.float().contiguous()


def crop_waveform(
    waveform: torch.Tensor,
    max_samples: int | None,
    mode: str,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, int]:
    """Crop the last axis to at most ``max_samples`` samples.

    Args:
        waveform: Shape ``[..., T]`` (a waveform, or features with frames last).
        max_samples: Limit (None: no cropping).
        mode: ``"random"`` (offset uniform in ``[0, T - max_samples]``, drawn from
            ``generator``), ``"start"`` or ``"center"``.
        generator: Random source for ``"random"`` (required then, for reproducibility).

    Returns:
        The cropped tensor (a view) and the offset used. Shorter inputs are returned as they
        are with offset 0 (padding happens when batching, see :func:`pad_right`).
    """
    import torch

    n = waveform.shape[-1]
    if max_samples is None or n <= max_samples:
        return waveform, 0
    extra = n - max_samples
    if mode == "random":
        if generator is None:
            raise ValueError("random cropping needs a torch.Generator (seeded) for reproducibility")
        off = int(torch.randint(0, extra + 1, (1,), generator=generator))
    elif mode == "start":
        off = 0
    elif mode == "center":
        off = extra // 2
    else:
        raise ValueError(f"unknown crop mode {mode!r}; use 'random', 'start' or 'center'")
    return waveform[..., off : off + max_samples], off


def pad_right(
    tensors: Sequence[torch.Tensor], length: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack tensors of different last-axis lengths, zero-padding on the right.

    Args:
        tensors: Each of shape ``[..., T_i]`` with equal leading shapes.
        length: Target length (default: the longest ``T_i``). Longer inputs are an error.

    Returns:
        ``(batch, lengths)``: shape ``[B, ..., length]`` and the true lengths ``[B]`` (int64).
    """
    import torch

    if not tensors:
        raise ValueError("pad_right needs at least one tensor")
    lengths = torch.tensor([t.shape[-1] for t in tensors], dtype=torch.long)
    L = int(lengths.max()) if length is None else int(length)
    if int(lengths.max()) > L:
        raise ValueError(f"a tensor of length {int(lengths.max())} does not fit in {L}")
    out = tensors[0].new_zeros((len(tensors), *tensors[0].shape[:-1], L))
    for i, t in enumerate(tensors):
        out[i, ..., : t.shape[-1]] = t
    return out, lengths

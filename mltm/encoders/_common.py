"""Helpers shared by the encoders: freezing, input checks, length masks, the weights directory."""

from __future__ import annotations

import os
import types
from pathlib import Path

import torch
from torch import nn

from mltm.data.frontend import LogMelConfig

__all__ = ["freeze_", "is_frozen", "default_weights_dir"]


def _train_frozen(self: nn.Module, mode: bool = True) -> nn.Module:
    """``train()`` of a frozen module: always eval mode, whatever the parent asks for."""
    return nn.Module.train(self, False)


def freeze_(module: nn.Module) -> nn.Module:
    """Freeze ``module`` in place: no trainable parameters, and eval mode that stays.

    ``requires_grad`` is switched off for every parameter, so an optimiser built from
    ``model.parameters()`` with a filter on ``requires_grad`` skips them and no gradient is
    computed for them. The module is also put in eval mode, and its ``train()`` is replaced by
    one that keeps it there: when the model that contains it calls ``model.train()`` at the
    start of an epoch, a frozen encoder must not start updating its batch-norm statistics or
    applying dropout (a frozen pretrained network is a fixed feature extractor).

    Returns:
        ``module`` itself, for chaining.
    """
    for p in module.parameters():
        p.requires_grad_(False)
    module.train = types.MethodType(_train_frozen, module)
    module.eval()
    return module


def is_frozen(module: nn.Module) -> bool:
    """Return True when ``module`` was frozen with :func:`freeze_`."""
    train = module.__dict__.get("train")
    return isinstance(train, types.MethodType) and train.__func__ is _train_frozen


def default_weights_dir() -> Path:
    """Return ``$MLTM_DATA/weights``, or ``<repo>/data/weights`` when MLTM_DATA is unset.

    Converted pretrained weights live beside the datasets (same root as the dataset builders
    in ``data_scripts/`` and the test fixtures use), not inside the package.
    """
    env = os.environ.get("MLTM_DATA")
    root = Path(env).expanduser() if env else Path(__file__).resolve().parents[2] / "data"
    return root / "weights"


def make_buffers_nonpersistent(module: nn.Module) -> None:
    """Drop every buffer of ``module`` (recursively) from its ``state_dict``.

    The front end's window and mel filterbank are derived from the encoder's
    :class:`LogMelConfig`; keeping them out of the state dict makes the encoder's state dict
    exactly the network's weights, so pretrained weights load with ``strict=True``.
    """
    for sub in module.modules():
        for name, buf in list(sub.named_buffers(recurse=False)):
            delattr(sub, name)
            sub.register_buffer(name, buf, persistent=False)


def check_audio_input(
    audio: torch.Tensor, lengths: torch.Tensor | None, n_mels: int, name: str
) -> tuple[bool, torch.Tensor | None]:
    """Validate an encoder input; return ``(is_features, lengths as a long tensor)``.

    ``audio`` is a waveform batch ``[B, T]`` (lengths in samples) or a log-mel batch
    ``[B, n_mels, n_frames]`` (lengths in frames), as :class:`~mltm.data.AudioTextCollator`
    gives for ``output="waveform"`` and ``output="features"``.
    """
    if audio.dim() == 2:
        is_features = False
    elif audio.dim() == 3 and audio.shape[1] == n_mels:
        is_features = True
    else:
        raise ValueError(
            f"{name} takes a waveform batch [B, T] or log-mel features [B, {n_mels}, n_frames]; "
            f"got shape {tuple(audio.shape)}"
        )
    if audio.shape[0] == 0:
        raise ValueError(f"{name} got an empty batch (skip batches whose items all failed)")
    if lengths is None:
        return is_features, None
    lengths = torch.as_tensor(lengths, device=audio.device).long().reshape(-1)
    if lengths.numel() != audio.shape[0]:
        raise ValueError(
            f"lengths has {lengths.numel()} entries for a batch of {audio.shape[0]}"
        )
    if bool((lengths < 1).any()) or bool((lengths > audio.shape[-1]).any()):
        raise ValueError(
            f"lengths must be in [1, {audio.shape[-1]}] (the padded length); got "
            f"min {int(lengths.min())}, max {int(lengths.max())}"
        )
    return is_features, lengths


def valid_frames(
    config: LogMelConfig, lengths: torch.Tensor | None, n_frames: int, batch: int,
    device: torch.device,
) -> torch.Tensor:
    """Frames of each example that come from its true samples, ``[B]`` in ``[1, n_frames]``."""
    if lengths is None:
        return torch.full((batch,), n_frames, dtype=torch.long, device=device)
    return torch.as_tensor(config.frames_for(lengths)).clamp(1, n_frames)


def zero_padding(waveform: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Zero the samples of ``waveform`` ``[B, T]`` beyond each example's length.

    The STFT frames at a clip's end reach ``n_fft / 2`` samples past it; zeroing makes them
    independent of whatever fills the padding (the data pipeline pads with zeros anyway).
    """
    if lengths is None:
        return waveform
    return waveform * time_mask(lengths, waveform.shape[-1]).to(waveform.dtype)


def time_mask(valid: torch.Tensor, n: int) -> torch.Tensor:
    """Boolean ``[B, n]``: True at positions below each example's valid count."""
    return torch.arange(n, device=valid.device)[None, :] < valid[:, None]

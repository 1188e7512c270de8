"""The audio-text model: two encoders, two projection heads, one joint space.

``f_θ`` (audio) and ``g_φ`` (text) of the paper (§3.1) are an encoder followed by a
two-layer projection head to the L2-normalised joint space. The ground metric M is not
part of the model: it belongs to the loss (:class:`mltm.losses.MLTMLoss`), since it
parameterises the cost the plan is computed under, and the trainer optimises both.

The encoders are optional. With frozen encoders the trainer precomputes their outputs once
and trains only the heads (and M) on those: ``AudioTextModel.project_*`` take encoder
outputs, ``embed_*`` take raw audio and text.
"""

from __future__ import annotations

import torch
from torch import nn

from mltm.config import ModelConfig
from mltm.encoders import build_audio_encoder, build_text_encoder
from mltm.encoders.heads import ProjectionHead
from mltm.numerics import default_dtype

__all__ = ["AudioTextModel", "build_encoders", "build_model"]


def _param_dtype(module: nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


class AudioTextModel(nn.Module):
    """Encoders (optional) + projection heads to the joint space.

    Args:
        audio_dim: Output dimension of the audio encoder.
        text_dim: Output dimension of the text encoder.
        joint_dim: Joint space dimension (paper 1024).
        hidden_dim: Hidden width of the heads.
        head_dropout: Dropout inside the heads.
        audio_encoder, text_encoder: The encoders, or None when training on precomputed
            encoder outputs.
    """

    def __init__(self, audio_dim: int, text_dim: int, *, joint_dim: int = 1024,
                 hidden_dim: int = 2048, head_dropout: float = 0.0,
                 audio_encoder: nn.Module | None = None,
                 text_encoder: nn.Module | None = None) -> None:
        super().__init__()
        self.audio_encoder = audio_encoder
        self.text_encoder = text_encoder
        self.audio_head = ProjectionHead(audio_dim, joint_dim, hidden_dim=hidden_dim,
                                         dropout=head_dropout)
        self.text_head = ProjectionHead(text_dim, joint_dim, hidden_dim=hidden_dim,
                                        dropout=head_dropout)
        self.audio_dim, self.text_dim, self.joint_dim = audio_dim, text_dim, joint_dim

    def project_audio(self, features: torch.Tensor) -> torch.Tensor:
        """Audio encoder outputs (b, audio_dim) → joint space (b, joint_dim), unit norm.

        Features are cast to the heads' dtype (float32 cached features into float64 heads).
        """
        return self.audio_head(features.to(_param_dtype(self.audio_head)))

    def project_text(self, features: torch.Tensor) -> torch.Tensor:
        """Text encoder outputs (b, text_dim) → joint space (b, joint_dim), unit norm."""
        return self.text_head(features.to(_param_dtype(self.text_head)))

    def embed_audio(self, waveform: torch.Tensor, lengths: torch.Tensor | None = None):
        """Waveforms (b, T) → joint space."""
        if self.audio_encoder is None:
            raise RuntimeError("this model has no audio encoder; use project_audio(features)")
        return self.project_audio(self.audio_encoder(waveform, lengths))

    def embed_text(self, captions: list[str]) -> torch.Tensor:
        """Captions → joint space."""
        if self.text_encoder is None:
            raise RuntimeError("this model has no text encoder; use project_text(features)")
        return self.project_text(self.text_encoder(captions))

    def head_state_dict(self) -> dict[str, torch.Tensor]:
        """The heads' parameters only (what the fast path trains)."""
        return {k: v for k, v in self.state_dict().items() if k.startswith(("audio_head.", "text_head."))}


def build_encoders(cfg: ModelConfig) -> tuple[nn.Module, nn.Module]:
    """The audio and text encoders a :class:`ModelConfig` names."""
    audio = build_audio_encoder(cfg.audio_encoder, weights=cfg.audio_weights,
                                freeze=cfg.freeze_audio)
    text_kwargs = {"pooling": cfg.text_pooling, "freeze": cfg.freeze_text,
                   "max_length": cfg.text_max_length}
    if cfg.encoder_dropout is not None:
        text_kwargs["dropout"] = cfg.encoder_dropout
    text = build_text_encoder(cfg.text_encoder, **text_kwargs)
    return audio, text


def build_model(cfg: ModelConfig, *, audio_dim: int | None = None, text_dim: int | None = None,
                with_encoders: bool = True, dtype: torch.dtype | None = None) -> AudioTextModel:
    """Build the model of a config, with its encoders or (fast path) heads only.

    Without encoders, ``audio_dim`` and ``text_dim`` give the encoder output sizes.
    ``dtype``: the heads are initialised and kept in it (float64: the same initial weights
    on every CPU, see :func:`mltm.numerics.default_dtype`); None: torch's default.
    """
    audio = text = None
    if with_encoders:
        audio, text = build_encoders(cfg)
        audio_dim, text_dim = audio.out_dim, text.out_dim
    if audio_dim is None or text_dim is None:
        raise ValueError("without encoders, give audio_dim and text_dim")
    with default_dtype(dtype):
        return AudioTextModel(audio_dim, text_dim, joint_dim=cfg.joint_dim,
                              hidden_dim=cfg.hidden_dim, head_dropout=cfg.head_dropout,
                              audio_encoder=audio, text_encoder=text)

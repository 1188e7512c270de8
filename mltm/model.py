"""The audio-text model: two encoders, two projection heads, one joint space.

``f_θ`` (audio) and ``g_φ`` (text) of the paper (§3.1) are an encoder followed by a
two-layer projection head to the L2-normalised joint space. The ground metric M is not
part of the model: it belongs to the loss (:class:`mltm.losses.MLTMLoss`), since it
parameterises the cost the plan is computed under, and the trainer optimises both.

The encoders are optional. With frozen encoders the trainer precomputes their outputs once
and trains only the heads (and M) on those: ``AudioTextModel.project_*`` take encoder
outputs, ``embed_*`` take raw audio and text.

A head is either the paper's MLP on the pooled encoder output (``linear``) or a temporal
head on the encoder's frames or tokens (``attention``, ``transformer``;
:mod:`mltm.encoders.heads`): then ``project_*`` take the padded sequences and their lengths,
and ``embed_*`` ask the encoder for its sequence outputs.
"""

from __future__ import annotations

import torch
from torch import nn

from mltm.config import ModelConfig
from mltm.encoders import build_audio_encoder, build_text_encoder
from mltm.encoders.heads import HEAD_KINDS, build_head, takes_sequences
from mltm.numerics import default_dtype

__all__ = ["AudioTextModel", "build_encoders", "build_model", "check_heads"]


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
                 text_encoder: nn.Module | None = None,
                 audio_head: str = "linear", text_head: str = "linear",
                 temporal: dict | None = None) -> None:
        super().__init__()
        self.audio_encoder = audio_encoder
        self.text_encoder = text_encoder
        temporal = temporal or {}
        self.audio_head = build_head(audio_head, audio_dim, joint_dim, hidden_dim=hidden_dim,
                                     dropout=head_dropout, **temporal)
        self.text_head = build_head(text_head, text_dim, joint_dim, hidden_dim=hidden_dim,
                                    dropout=head_dropout, **temporal)
        self.audio_dim, self.text_dim, self.joint_dim = audio_dim, text_dim, joint_dim

    @property
    def audio_takes_sequences(self) -> bool:
        """True when the audio head is temporal (it takes frames and lengths)."""
        return takes_sequences(self.audio_head)

    @property
    def text_takes_sequences(self) -> bool:
        """True when the text head is temporal (it takes tokens and lengths)."""
        return takes_sequences(self.text_head)

    @staticmethod
    def _project(head: nn.Module, features: torch.Tensor, lengths, side: str) -> torch.Tensor:
        x = features.to(_param_dtype(head))
        if takes_sequences(head):
            return head(x, lengths)
        if lengths is not None:
            raise ValueError(f"the {side} head is linear: it takes pooled encoder outputs "
                             "[b, dim] without lengths")
        return head(x)

    def project_audio(self, features: torch.Tensor,
                      lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Audio encoder outputs → joint space (b, joint_dim), unit norm.

        ``features``: pooled (b, audio_dim) for a linear head; frames (b, n, audio_dim) with
        their ``lengths`` (b,) for a temporal one. Features are cast to the heads' dtype
        (float32 cached features into float64 heads).
        """
        return self._project(self.audio_head, features, lengths, "audio")

    def project_text(self, features: torch.Tensor,
                     lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Text encoder outputs (pooled (b, text_dim), or tokens (b, L, text_dim) with
        ``lengths`` for a temporal head) → joint space (b, joint_dim), unit norm."""
        return self._project(self.text_head, features, lengths, "text")

    def embed_audio(self, waveform: torch.Tensor, lengths: torch.Tensor | None = None):
        """Waveforms (b, T) → joint space."""
        if self.audio_encoder is None:
            raise RuntimeError("this model has no audio encoder; use project_audio(features)")
        if self.audio_takes_sequences:
            return self.project_audio(*self.audio_encoder.frame_embeddings(waveform, lengths))
        return self.project_audio(self.audio_encoder(waveform, lengths))

    def embed_text(self, captions: list[str]) -> torch.Tensor:
        """Captions → joint space."""
        if self.text_encoder is None:
            raise RuntimeError("this model has no text encoder; use project_text(features)")
        if self.text_takes_sequences:
            return self.project_text(*self.text_encoder.token_embeddings(captions))
        return self.project_text(self.text_encoder(captions))

    def head_state_dict(self) -> dict[str, torch.Tensor]:
        """The heads' parameters only (what the fast path trains)."""
        return {k: v for k, v in self.state_dict().items()
                if k.startswith(("audio_head.", "text_head."))}


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


def check_heads(cfg: ModelConfig) -> None:
    """Raise a one-line ``ValueError`` for a head the config cannot train.

    Temporal heads train on cached frame and token outputs, so their encoder must be frozen,
    and the audio encoder must have frame outputs (aisfx).
    """
    for side, kind in (("audio", cfg.audio_head), ("text", cfg.text_head)):
        if kind not in HEAD_KINDS:
            raise ValueError(f"model.{side}_head {kind!r}: choose one of " + ", ".join(HEAD_KINDS))
        if kind != "linear" and not getattr(cfg, f"freeze_{side}"):
            raise ValueError(f"model.{side}_head={kind} trains on the frozen encoder's cached "
                             f"{'frames' if side == 'audio' else 'tokens'}: set "
                             f"model.freeze_{side}=true, or use model.{side}_head=linear to "
                             "fine-tune the encoder")
    if cfg.audio_head != "linear" and cfg.audio_encoder != "aisfx":
        raise ValueError(f"model.audio_head={cfg.audio_head} needs frame outputs, which only the "
                         f"aisfx audio encoder has ({cfg.audio_encoder} has none): set "
                         "model.audio_encoder=aisfx or model.audio_head=linear")


def _head_kwargs(cfg: ModelConfig) -> dict:
    temporal = {"temporal_dim": cfg.temporal_dim, "temporal_layers": cfg.temporal_layers,
                "temporal_heads": cfg.temporal_heads, "max_positions": cfg.max_positions}
    return {"joint_dim": cfg.joint_dim, "hidden_dim": cfg.hidden_dim,
            "head_dropout": cfg.head_dropout, "audio_head": cfg.audio_head,
            "text_head": cfg.text_head, "temporal": temporal}


def build_model(cfg: ModelConfig, *, audio_dim: int | None = None, text_dim: int | None = None,
                with_encoders: bool = True, dtype: torch.dtype | None = None) -> AudioTextModel:
    """Build the model of a config, with its encoders or (fast path) heads only.

    Without encoders, ``audio_dim`` and ``text_dim`` give the encoder output sizes.
    ``dtype``: the heads are initialised and kept in it (float64: the same initial weights
    on every CPU, see :func:`mltm.numerics.default_dtype`); None: torch's default.
    """
    check_heads(cfg)
    audio = text = None
    if with_encoders:
        audio, text = build_encoders(cfg)
        audio_dim, text_dim = audio.out_dim, text.out_dim
    if audio_dim is None or text_dim is None:
        raise ValueError("without encoders, give audio_dim and text_dim")
    with default_dtype(dtype):
        return AudioTextModel(audio_dim, text_dim, audio_encoder=audio, text_encoder=text,
                              **_head_kwargs(cfg))

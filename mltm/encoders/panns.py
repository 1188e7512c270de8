"""PANNs Cnn14 and ResNet38 (Kong et al., 2020) as clip embedding encoders, as in the paper.

The paper's audio encoder is PANNs ResNet38 pretrained on AudioSet (reference code
``models/AudioEncoder.py``, from Mei et al., 2022); Cnn14 is the other common choice. Both are
used without their classifier: the last two layers (``fc1`` and ``fc_audioset``) are dropped,
the final feature map is averaged over frequency, and max + mean over time give a 2048-d
clip embedding.

**Front end.** :class:`~mltm.data.frontend.LogMelFrontEnd` with the paper's default
:class:`~mltm.data.frontend.LogMelConfig` (32 kHz, 1024/320, 64 mel bins 50-14000 Hz, dB),
which equals the torchlibrosa extractors of the checkpoints (whose buffers,
``spectrogram_extractor.*`` and ``logmel_extractor.*``, are therefore not loaded). Then batch
norm over mel bins (``bn0``) and, in training, SpecAugment.

**Architectures** (module names as in the official checkpoints, so their tensors load by
name):

* ``Cnn14``: six ``ConvBlock`` s (64 ... 2048 channels), 2x2 average pooling after the first
  five, dropout 0.2 after each. 75.5 M parameters without the heads.
* ``ResNet38``: ``conv_block1`` (64 channels, 2x2 average pool), ``resnet`` (basic blocks
  [3, 4, 6, 3], 64-512 channels, stride-2 stages downsampled by average pooling),
  a 2x2 average pool, ``conv_block_after1`` (512 -> 2048); dropout 0.2 between stages.
  Inside each residual block the official code uses dropout 0.1 and the reference code 0.2
  (``block_dropout``; the paper's 0.2 by default).

Mei et al.'s Cnn14 pools after the sixth block too (``pool_size=(2, 2)``); the official
Cnn14, which its checkpoints were trained with, does not, and that is what is built here.

**Padding.** Both networks reduce time by 32. When ``lengths`` are given, samples beyond each
clip's end are zeroed, frames beyond it are set to 0 after ``bn0`` (the normalised mean; the
same value SpecAugment writes) and the final max/mean over time covers only the output frames
that overlap the clip, so an embedding does not depend on what fills the padding. Unlike
:class:`~mltm.encoders.aisfx.AisfxEncoder`, a padded clip is not exactly equal to the clip
alone: the 3x3 convolutions near its end see zero frames instead of the edge of the input
(the reference code does not mask at all). Inputs shorter than 32 frames (~0.32 s) are padded
to 32 frames so the network has at least one output frame.

**Weights.** The official checkpoints (Zenodo record 3987831, ``Cnn14_mAP=0.431.pth``,
``ResNet38_mAP=0.434.pth``) are not reachable from the development machines; download one
elsewhere and load it with :func:`load_panns_checkpoint`.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from mltm.data.frontend import LogMelConfig, LogMelFrontEnd
from mltm.data.specaugment import SpecAugment
from mltm.encoders._common import (
    check_audio_input,
    freeze_,
    make_buffers_nonpersistent,
    time_mask,
    valid_frames,
    zero_padding,
)

__all__ = ["Cnn14", "ResNet38", "PannsLoadReport", "load_panns_checkpoint"]

#: Checkpoint key prefixes that are not loaded: the torchlibrosa front end (rebuilt from the
#: config) and the classifier heads ``fc1``/``fc_audioset`` (dropped by the paper).
SKIPPED_PREFIXES = ("spectrogram_extractor.", "logmel_extractor.", "fc")
#: Time (and frequency) reduction of both networks.
TIME_REDUCTION = 32


def _init_layer(layer: nn.Module) -> None:
    """PANNs' initialisation: Xavier-uniform weights, zero bias."""
    nn.init.xavier_uniform_(layer.weight)
    if getattr(layer, "bias", None) is not None:
        nn.init.zeros_(layer.bias)


class ConvBlock(nn.Module):
    """PANNs' ``ConvBlock``: two 3x3 conv + BN + ReLU, then average pooling."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        _init_layer(self.conv1)
        _init_layer(self.conv2)

    def forward(self, x: torch.Tensor, pool: bool = True) -> torch.Tensor:
        """``[N, C_in, T, F] -> [N, C_out, T/2, F/2]`` (same size when ``pool`` is off)."""
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return F.avg_pool2d(x, kernel_size=2) if pool else x


class _BasicBlock(nn.Module):
    """PANNs' ``_ResnetBasicBlock``: a stride-2 block average-pools its input first."""

    def __init__(
        self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None,
        dropout: float,
    ) -> None:
        super().__init__()
        self.stride = stride
        self.dropout = dropout
        self.conv1 = nn.Conv2d(inplanes, planes, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        _init_layer(self.conv1)
        _init_layer(self.conv2)
        nn.init.zeros_(self.bn2.weight)  # each residual branch starts as the identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.avg_pool2d(x, kernel_size=2) if self.stride == 2 else x
        out = F.relu(self.bn1(self.conv1(out)))
        out = F.dropout(out, p=self.dropout, training=self.training)
        out = self.bn2(self.conv2(out))
        identity = self.downsample(x) if self.downsample is not None else x
        return F.relu(out + identity)


class _ResNet(nn.Module):
    """PANNs' ``_ResNet`` body (``layer1`` ... ``layer4``)."""

    def __init__(self, layers: tuple[int, ...] = (3, 4, 6, 3), dropout: float = 0.2) -> None:
        super().__init__()
        self.inplanes = 64
        self.layer1 = self._make_layer(64, layers[0], 1, dropout)
        self.layer2 = self._make_layer(128, layers[1], 2, dropout)
        self.layer3 = self._make_layer(256, layers[2], 2, dropout)
        self.layer4 = self._make_layer(512, layers[3], 2, dropout)

    def _make_layer(self, planes: int, blocks: int, stride: int, dropout: float) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            conv = nn.Conv2d(self.inplanes, planes, 1, bias=False)
            _init_layer(conv)
            if stride == 1:
                downsample = nn.Sequential(conv, nn.BatchNorm2d(planes))
            else:  # keys downsample.1 (conv) and downsample.2 (bn), as in the checkpoints
                downsample = nn.Sequential(nn.AvgPool2d(kernel_size=2), conv,
                                           nn.BatchNorm2d(planes))
        layers = [_BasicBlock(self.inplanes, planes, stride, downsample, dropout)]
        self.inplanes = planes
        layers += [_BasicBlock(planes, planes, 1, None, dropout) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class _PannsEncoder(nn.Module):
    """Shared front end, ``bn0``, SpecAugment, length masking and pooling of Cnn14/ResNet38."""

    out_dim = 2048

    def __init__(
        self,
        frontend_config: LogMelConfig | None,
        spec_augment: bool | SpecAugment,
        dropout: float,
    ) -> None:
        super().__init__()
        cfg = frontend_config if frontend_config is not None else LogMelConfig()
        if cfg.n_mels != 64:
            raise ValueError(
                f"{type(self).__name__} has bn0 over 64 mel bins (the pretrained checkpoints); "
                f"got a front end with n_mels={cfg.n_mels}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1); got {dropout}")
        self.frontend_config = cfg
        self.frontend = LogMelFrontEnd(cfg)
        make_buffers_nonpersistent(self.frontend)
        if spec_augment is True:
            spec_augment = SpecAugment()
        self.spec_augment = spec_augment if isinstance(spec_augment, SpecAugment) else None
        self.dropout = dropout
        self.bn0 = nn.BatchNorm2d(64)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        """The CNN: ``[B, 1, T, 64] -> [B, 2048, T/32, 2]``."""
        raise NotImplementedError

    def forward(
        self, audio: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Embed a batch of clips: ``[B, T]`` waveforms or ``[B, 64, n_frames]`` log-mels.

        Args:
            audio: Waveforms at the config's sample rate, zero-padded on the right (lengths in
                samples), or dB log-mel features from :attr:`frontend` (lengths in frames).
            lengths: True lengths ``[B]``; None means no padding (the reference behaviour).

        Returns:
            ``[B, 2048]``: max + mean over time of the frequency-averaged last feature map.
        """
        name = type(self).__name__
        is_features, lengths = check_audio_input(audio, lengths, 64, name)
        feats = (audio.to(self.frontend.dtype) if is_features
                 else self.frontend(zero_padding(audio, lengths)))
        B, _, n = feats.shape
        if lengths is None:
            valid = None
        elif is_features:
            valid = lengths
        else:
            valid = valid_frames(self.frontend_config, lengths, n, B, feats.device)
        x = self.bn0(feats.unsqueeze(2)).squeeze(2)  # bn0 over mel bins (channels)
        if self.spec_augment is not None:
            x = self.spec_augment(x, None if valid is None else valid.cpu())
        if valid is not None:
            x = x * time_mask(valid, n)[:, None, :].to(x.dtype)
        if n < TIME_REDUCTION:
            x = F.pad(x, (0, TIME_REDUCTION - n))
        x = self.body(x.transpose(1, 2).unsqueeze(1))  # [B, 2048, n', 2]
        x = x.mean(dim=3)  # [B, 2048, n']
        n_out = x.shape[-1]
        if valid is None:
            return x.amax(dim=2) + x.mean(dim=2)
        out_valid = (-(-valid // TIME_REDUCTION)).clamp(1, n_out)  # frames overlapping the clip
        m = time_mask(out_valid, n_out)[:, None, :]
        x_max = x.masked_fill(~m, float("-inf")).amax(dim=2)
        x_mean = (x * m).sum(dim=2) / out_valid[:, None].to(x.dtype)
        return x_max + x_mean


class Cnn14(_PannsEncoder):
    """PANNs Cnn14 without ``fc1``/``fc_audioset``: 2048-d clip embeddings.

    Args:
        frontend_config: Front-end settings (64 mel bins); default: the paper's.
        spec_augment: SpecAugment after ``bn0`` in training (True: PANNs' settings).
        dropout: Dropout after each conv block (0.2 in PANNs and the reference code).
        freeze: Freeze the network (:func:`~mltm.encoders.freeze_`).
    """

    def __init__(
        self,
        frontend_config: LogMelConfig | None = None,
        spec_augment: bool | SpecAugment = False,
        dropout: float = 0.2,
        freeze: bool = False,
    ) -> None:
        super().__init__(frontend_config, spec_augment, dropout)
        channels = (1, 64, 128, 256, 512, 1024, 2048)
        for i in range(6):
            setattr(self, f"conv_block{i + 1}", ConvBlock(channels[i], channels[i + 1]))
        if freeze:
            freeze_(self)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        """Six conv blocks, pooling after the first five (official Cnn14)."""
        for i in range(1, 7):
            x = getattr(self, f"conv_block{i}")(x, pool=i < 6)
            x = F.dropout(x, p=self.dropout, training=self.training)
        return x


class ResNet38(_PannsEncoder):
    """PANNs ResNet38 without ``fc1``/``fc_audioset``: 2048-d clip embeddings (the paper's).

    Args:
        frontend_config: Front-end settings (64 mel bins); default: the paper's.
        spec_augment: SpecAugment after ``bn0`` in training (True: PANNs' settings).
        dropout: Dropout between stages (0.2 in PANNs and the reference code).
        block_dropout: Dropout inside each residual block (reference code 0.2, PANNs 0.1).
        freeze: Freeze the network (:func:`~mltm.encoders.freeze_`).
    """

    def __init__(
        self,
        frontend_config: LogMelConfig | None = None,
        spec_augment: bool | SpecAugment = False,
        dropout: float = 0.2,
        block_dropout: float = 0.2,
        freeze: bool = False,
    ) -> None:
        super().__init__(frontend_config, spec_augment, dropout)
        if not 0.0 <= block_dropout < 1.0:
            raise ValueError(f"block_dropout must be in [0, 1); got {block_dropout}")
        self.conv_block1 = ConvBlock(1, 64)
        self.resnet = _ResNet((3, 4, 6, 3), block_dropout)
        self.conv_block_after1 = ConvBlock(512, 2048)
        if freeze:
            freeze_(self)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        """Stem, residual stages, 2x2 average pool, the 512 -> 2048 block."""
        p = self.dropout
        x = F.dropout(self.conv_block1(x), p=p, training=self.training)
        x = F.avg_pool2d(self.resnet(x), kernel_size=2)
        x = F.dropout(x, p=p, training=self.training)
        x = self.conv_block_after1(x, pool=False)
        return F.dropout(x, p=p, training=self.training)


@dataclass
class PannsLoadReport:
    """What :func:`load_panns_checkpoint` did.

    Attributes:
        loaded: Model tensors set from the checkpoint.
        skipped: Checkpoint tensors not used on purpose (front-end buffers, ``fc*`` heads).
        missing: Model tensors the checkpoint lacks (left as they were). Only
            ``num_batches_tracked`` counters may be missing without ``strict=False``.
        unexpected: Other checkpoint tensors the model has no place for.
    """

    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)


def _examples(keys: list[str], k: int = 3) -> str:
    return ", ".join(keys[:k]) + (", ..." if len(keys) > k else "")


def load_panns_checkpoint(
    model: Cnn14 | ResNet38, path: str | os.PathLike, strict: bool = True
) -> PannsLoadReport:
    """Load an official PANNs checkpoint (``{"model": state_dict, ...}``) into ``model``.

    The file is read with ``torch.load(weights_only=True)`` (no arbitrary pickles). Tensors
    whose names start with ``spectrogram_extractor.``, ``logmel_extractor.`` or ``fc`` are
    skipped; every other tensor must match a model tensor by name and shape.

    Args:
        model: A :class:`Cnn14` or :class:`ResNet38` (weights are copied in place).
        path: The ``.pth`` file, e.g. ``ResNet38_mAP=0.434.pth`` from Zenodo record 3987831.
        strict: Raise if the checkpoint lacks model tensors (other than batch-norm
            ``num_batches_tracked`` counters) or has tensors the model does not know.

    Returns:
        A :class:`PannsLoadReport`.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the file is not a PANNs checkpoint, a tensor's shape differs, or (with
            ``strict``) tensors are missing or unexpected.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"PANNs checkpoint {path} not found")
    name = type(model).__name__
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        raise ValueError(
            f"{path} is not a PANNs checkpoint: torch.load(weights_only=True) cannot read it "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from e
    state = ckpt.get("model") if isinstance(ckpt, Mapping) else None
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ValueError(
            f"{path} is not a PANNs checkpoint: expected a dict whose 'model' entry is a state "
            "dict of tensors (the layout of the official checkpoints)"
        )
    own = model.state_dict()
    skipped = sorted(k for k in state if k.startswith(SKIPPED_PREFIXES))
    candidates = {k: v for k, v in state.items() if not k.startswith(SKIPPED_PREFIXES)}
    if not set(candidates) & set(own):
        raise ValueError(
            f"{path} is not a PANNs {name} checkpoint: none of its {len(candidates)} tensors "
            f"({_examples(sorted(candidates))}) is a tensor of the model"
        )
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)}, model {tuple(own[k].shape)}"
        for k, v in candidates.items() if k in own and v.shape != own[k].shape
    ]
    if mismatched:
        raise ValueError(
            f"{path} does not fit {name}: {len(mismatched)} tensors have other shapes ("
            + "; ".join(mismatched[:3]) + ("; ..." if len(mismatched) > 3 else "") + ")"
        )
    unexpected = sorted(k for k in candidates if k not in own)
    missing = sorted(k for k in own if k not in candidates)
    serious = [k for k in missing if not k.endswith("num_batches_tracked")]
    if strict and (serious or unexpected):
        raise ValueError(
            f"{path} does not fit {name}: {len(serious)} model tensors missing "
            f"({_examples(serious)}) and {len(unexpected)} checkpoint tensors unknown "
            f"({_examples(unexpected)}); is it a checkpoint of another architecture? "
            "Pass strict=False to load the tensors that match"
        )
    loaded = sorted(k for k in candidates if k in own)
    model.load_state_dict({k: candidates[k] for k in loaded}, strict=False)
    return PannsLoadReport(loaded=loaded, skipped=skipped, missing=missing, unexpected=unexpected)

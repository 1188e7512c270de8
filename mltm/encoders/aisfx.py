"""aisfx: a CNN pretrained on professional sound-effects libraries, as an audio encoder.

aisfx 0.1.2 (PyPI; Ma & Lerch, "Representation Learning for the Automatic Indexing of Sound
Effects Libraries", ISMIR 2022) ships its weights inside the wheel: it is the only general
sound-effects PyTorch encoder that can be obtained on machines that reach only package
registries (``shared/notes/offline-assets.md`` §2). On the DebSFX stand-in set its embeddings
beat the same network with random weights by ~0.2 in probe accuracy, so the weights carry
real information. The paper itself uses PANNs ResNet38 (:mod:`mltm.encoders.panns`), whose
weights are only on Zenodo.

**Network** (``aisfx/models/cnn2d.py``, ``EmbeddingNet('max', 3, 1, 64)``, the DCASE
cross-task CNN-9): four blocks of two 3x3 convolutions (no bias) with batch norm and ReLU,
64 -> 128 -> 256 -> 512 channels, 2x2 max pooling after the first three; then the mean over
frequency and the max over time give a 512-d embedding of a block of 100 frames. 4.69 M
parameters. The wheel's nine dataset classifier heads are dropped.

**Front end** (``aisfx/inference.py``, ``aisfx/spectrogram/spectrogram_librosa.py``): 44.1 kHz
mono, peak-normalised; STFT with n_fft 2048 (periodic Hann), hop 1024, centred with zero
padding; power spectrum; 96 HTK mel bands from 0 to 22050 Hz, each filter normalised to unit
sum (librosa ``norm=1``); ``log10(1e4 * mel + 1)`` divided by 9.457798957824707 (the
maximum over the training spectrograms). :func:`aisfx_frontend_config` expresses this as a
:class:`~mltm.data.frontend.LogMelConfig`; it matches the package's librosa features to
~2e-5 (``tests/encoders/test_aisfx.py``). The network was trained on Essentia features, which
differ slightly (ReplayGain loudness normalisation instead of the peak, symmetric window).

**Clip embedding.** The package cuts the spectrogram into 100-frame blocks (2.3 s) with a
50 % hop and returns one embedding per block. Here the blocks do not overlap, the last one
is zero-padded (zero is silence after the compression, and the package pads the same way),
and the clip embedding is the mean of the block embeddings over the blocks that hold real
audio (``lengths``), so a padded clip in a batch gets the same embedding as on its own.

**Frame embeddings** (:meth:`AisfxEncoder.frame_embeddings`, for the temporal heads). Inside
a block, ``conv_block4`` has 12 time columns (100 frames halved three times, floored), each
8 input frames (0.186 s) apart; the mean over frequency and a max over groups of 3 columns
give 4 frames per block, one every 24 input frames = 0.557 s (:data:`FRAME_HOP_SECONDS`), 20
frames for a 10 s clip. The max over a block's 4 frames is the block embedding, so the
clip embedding is exactly :func:`pool_aisfx_frames` of the frames (the time max of the
network moves after the grouping, which does not change it).

**Weights.** :func:`convert_aisfx_wheel` turns the wheel's pickled checkpoint into a
safetensors file once (``python data_scripts/fetch_aisfx.py``); :func:`load_aisfx_encoder`
loads only that file. The checkpoint is a pickle (``torch.load(weights_only=False)`` is
needed: it holds numpy integers), so it is unpickled only after the wheel's SHA-256 matches
the published one, and nowhere else. Licence of the weights: CC BY 4.0, (c) 2022 A.B. Ma and
A. Lerch (the wheel's LICENSE file; its METADATA classifier says MIT).
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from mltm._atomic import atomic_write
from mltm.data.frontend import LogMelConfig, LogMelFrontEnd
from mltm.data.specaugment import SpecAugment
from mltm.encoders._common import (
    check_audio_input,
    default_weights_dir,
    freeze_,
    make_buffers_nonpersistent,
    time_mask,
    valid_frames,
    zero_padding,
)

__all__ = [
    "AISFX_WHEEL",
    "AISFX_WHEEL_SHA256",
    "AisfxEncoder",
    "FRAME_HOP_SECONDS",
    "aisfx_frame_lengths",
    "aisfx_frontend_config",
    "convert_aisfx_wheel",
    "default_aisfx_weights_path",
    "load_aisfx_encoder",
    "pool_aisfx_frames",
]

AISFX_VERSION = "0.1.2"
#: File name of the wheel on PyPI.
AISFX_WHEEL = f"aisfx-{AISFX_VERSION}-py2.py3-none-any.whl"
#: SHA-256 of that wheel as published on PyPI.
AISFX_WHEEL_SHA256 = "bfe219950715af179e9a1653e7117cc1852baef267cd6596c42cad74afe1d194"
#: The checkpoint inside the wheel: a pickled ``(state_dict, dataset_dict)`` tuple.
AISFX_CHECKPOINT_MEMBER = "aisfx/models/checkpoint.pth"
#: Frames per embedding block (``EMB_BLOCK_LENGTH`` in ``aisfx/inference.py``).
BLOCK_FRAMES = 100
#: Columns of ``conv_block4``'s output per block (100 frames halved three times, floored).
CONV_FRAMES_PER_BLOCK = 12
#: Conv frames max-pooled into one frame of :meth:`AisfxEncoder.frame_embeddings`.
CONV_FRAMES_PER_FRAME = 3
#: Frames per block of :meth:`AisfxEncoder.frame_embeddings`.
FRAMES_PER_BLOCK = CONV_FRAMES_PER_BLOCK // CONV_FRAMES_PER_FRAME
#: Hop of those frames in input (STFT) frames: 8 input frames per conv frame.
FRAME_HOP_INPUT_FRAMES = 8 * CONV_FRAMES_PER_FRAME
#: Hop of those frames in seconds (hop 1024 samples at 44.1 kHz).
FRAME_HOP_SECONDS = FRAME_HOP_INPUT_FRAMES * 1024 / 44100
#: aisfx's "original" normalisation: features are divided by this (their training maximum).
FEATURE_MAX = 9.457798957824707
#: ``format`` entry in the metadata of converted files.
WEIGHTS_FORMAT = "mltm.encoders.aisfx.AisfxEncoder/1"
LICENSE = "CC BY 4.0 (Copyright (c) 2022 A.B. Ma and A. Lerch; aisfx wheel LICENSE file)"


def aisfx_frontend_config(max_seconds: float | None = 10.0) -> LogMelConfig:
    """Return the front-end settings aisfx was trained with (see the module docstring).

    Args:
        max_seconds: Clip length limit (clip policy only; it does not change the features).
    """
    return LogMelConfig(
        sample_rate=44100,
        n_fft=2048,
        win_length=2048,
        hop_length=1024,
        center=True,
        pad_mode="constant",
        n_mels=96,
        f_min=0.0,
        f_max=22050.0,
        mel_scale="htk",
        mel_norm="l1",
        power=2.0,
        compression="log10_1p",
        compression_scale=1e4,
        compression_divisor=FEATURE_MAX,
        peak_normalize=True,
        max_seconds=max_seconds,
    )


class ConvBlock(nn.Module):
    """Two 3x3 convolutions (no bias) with batch norm and ReLU, then max pooling.

    The attribute names (``conv1``, ``conv2``, ``bn1``, ``bn2``) are those of
    ``aisfx/models/cnn2d.py::ConvBlock`` so the converted weights load with ``strict=True``.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        # aisfx's init_layer/init_bn: Kaiming-uniform convolutions, identity batch norm.
        for conv in (self.conv1, self.conv2):
            nn.init.kaiming_uniform_(conv.weight, nonlinearity="leaky_relu")

    def forward(self, x: torch.Tensor, pool: bool = True) -> torch.Tensor:
        """``[N, C_in, T, F] -> [N, C_out, T/2, F/2]`` (or the same size when ``pool`` is off)."""
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return F.max_pool2d(x, kernel_size=2) if pool else x


class AisfxEncoder(nn.Module):
    """The aisfx embedding network with its own front end: audio to 512-d clip embeddings.

    Its ``state_dict`` holds only the network (``conv_block{1..4}.*``, the names of the
    wheel's ``embedding_net``); the front end's filterbank and window are rebuilt from
    :attr:`frontend_config`.

    Args:
        frontend_config: Front-end settings; default :func:`aisfx_frontend_config`. Only the
            clip policy (``max_seconds``, crops, ``pad_to``) may differ from it, since the
            weights were trained on those features.
        spec_augment: SpecAugment on the features in training mode (True: the paper's
            settings, 2 frequency stripes < 8 bins and 2 time stripes < 64 frames; or a
            :class:`~mltm.data.specaugment.SpecAugment`). Masks write 0, i.e. silence.
        freeze: Freeze the network (:func:`~mltm.encoders.freeze_`).

    Attributes:
        out_dim: 512.
        frontend_config: The :class:`LogMelConfig` (the data pipeline reads it through
            :func:`~mltm.data.frontend.frontend_config_of`).
    """

    out_dim = 512

    def __init__(
        self,
        frontend_config: LogMelConfig | None = None,
        spec_augment: bool | SpecAugment = False,
        freeze: bool = False,
    ) -> None:
        super().__init__()
        cfg = frontend_config if frontend_config is not None else aisfx_frontend_config()
        if cfg.feature_dict() != aisfx_frontend_config().feature_dict():
            raise ValueError(
                "AisfxEncoder's weights were trained on aisfx's features: only the clip policy "
                "may change; build the config with "
                "dataclasses.replace(aisfx_frontend_config(), max_seconds=...)"
            )
        self.frontend_config = cfg
        self.frontend = LogMelFrontEnd(cfg)
        make_buffers_nonpersistent(self.frontend)
        if spec_augment is True:
            spec_augment = SpecAugment()
        self.spec_augment = spec_augment if isinstance(spec_augment, SpecAugment) else None
        self.conv_block1 = ConvBlock(1, 64)
        self.conv_block2 = ConvBlock(64, 128)
        self.conv_block3 = ConvBlock(128, 256)
        self.conv_block4 = ConvBlock(256, 512)
        if freeze:
            freeze_(self)

    def embed_block_frames(self, blocks: torch.Tensor) -> torch.Tensor:
        """Feature blocks ``[N, frames, 96]`` to conv frames ``[N, 512, 12]`` (before the time max).

        The network up to ``conv_block4`` and the mean over frequency; each of the
        :data:`CONV_FRAMES_PER_BLOCK` columns covers 8 input frames (three 2x time poolings).
        """
        x = blocks.unsqueeze(1)  # [N, 1, T, F]
        x = self.conv_block1(x)
        x = self.conv_block2(x)
        x = self.conv_block3(x)
        x = self.conv_block4(x, pool=False)
        return x.mean(dim=3)

    def embed_blocks(self, blocks: torch.Tensor) -> torch.Tensor:
        """Embed feature blocks ``[N, frames, 96]`` to ``[N, 512]`` (aisfx's ``EmbeddingNet``).

        Mean over frequency, then max over time, as in ``cnn2d.py``.
        """
        return self.embed_block_frames(blocks).amax(dim=2)

    def _blocks(self, audio: torch.Tensor, lengths: torch.Tensor | None):
        """Front end, masking and cutting into blocks, shared by :meth:`forward` and
        :meth:`frame_embeddings`.

        Returns ``(blocks [B * n_blocks, 100, 96], block_valid [B, n_blocks] bool, valid
        [B] frames of real audio)``.
        """
        is_features, lengths = check_audio_input(
            audio, lengths, self.frontend_config.n_mels, "AisfxEncoder"
        )
        feats = (audio.to(self.frontend.dtype) if is_features
                 else self.frontend(zero_padding(audio, lengths)))
        B, _, n = feats.shape
        if is_features:
            valid = lengths if lengths is not None else torch.full((B,), n, device=feats.device)
        else:
            valid = valid_frames(self.frontend_config, lengths, n, B, feats.device)
        if self.spec_augment is not None:
            feats = self.spec_augment(feats, valid.cpu())
        n_blocks = -(-n // BLOCK_FRAMES)
        feats = feats * time_mask(valid, n)[:, None, :].to(feats.dtype)
        feats = F.pad(feats, (0, n_blocks * BLOCK_FRAMES - n))
        blocks = feats.transpose(1, 2).reshape(B * n_blocks, BLOCK_FRAMES, -1)
        block_valid = time_mask(-(-valid // BLOCK_FRAMES), n_blocks)  # [B, n_blocks]
        return blocks, block_valid, valid.to(block_valid.device)

    def forward(
        self, audio: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Embed a batch of clips: ``[B, T]`` waveforms or ``[B, 96, n_frames]`` features.

        Args:
            audio: Waveforms at 44.1 kHz, zero-padded on the right (lengths in samples), or
                features from :attr:`frontend` (``AudioCaptionDataset(output="features")``;
                lengths in frames).
            lengths: True lengths ``[B]``; None means no padding. Padded samples and frames
                are set to 0 (silence) and blocks that hold only padding are left out of the
                mean.

        Returns:
            ``[B, 512]`` clip embeddings (mean of the valid block embeddings).
        """
        blocks, block_valid, _ = self._blocks(audio, lengths)
        B, n_blocks = block_valid.shape
        keep = block_valid.reshape(-1)
        emb = self.embed_blocks(blocks[keep])  # only blocks with real audio
        out = emb.new_zeros(B * n_blocks, emb.shape[-1]).index_copy(
            0, keep.nonzero().squeeze(1), emb
        )
        out = out.view(B, n_blocks, -1).sum(dim=1)
        return out / block_valid.sum(dim=1, keepdim=True).to(out.dtype)

    def frame_embeddings(
        self, audio: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed a batch of clips to a sequence of frames: ``[B, n_frames, 512]`` and lengths.

        Each 100-frame block gives :data:`FRAMES_PER_BLOCK` (4) frames: its 12 conv frames
        (``conv_block4`` output, mean over frequency) max-pooled in groups of
        :data:`CONV_FRAMES_PER_FRAME` (3). A frame's hop is :data:`FRAME_HOP_INPUT_FRAMES`
        (24) input frames, 24 * 1024 / 44100 = :data:`FRAME_HOP_SECONDS` (0.557 s); frame
        ``j`` of block ``b`` starts at input frame ``100 b + 24 j`` (the last 4 input frames
        of a block reach only the receptive field of its last frame). A 10 s clip (431
        input frames, 5 blocks) gives 20 frames.

        The pooled embedding is exactly recoverable: :func:`pool_aisfx_frames` (max within
        each block, then mean over the blocks with real audio) equals :meth:`forward`.

        Args:
            audio, lengths: As :meth:`forward`.

        Returns:
            ``(frames, frame_lengths)``: ``frames [B, 4 * n_blocks, 512]``, ``frame_lengths
            [B]`` long, the frames that start inside the real audio (always >= 1). Frames
            at index ``>= frame_lengths`` are padding: zero in blocks without real audio;
            in the last block with real audio they hold the network's output for the
            silence that pads the block (kept so the pooled embedding is recoverable).
            Temporal heads must mask them by ``frame_lengths``.
        """
        blocks, block_valid, valid = self._blocks(audio, lengths)
        B, n_blocks = block_valid.shape
        keep = block_valid.reshape(-1)
        conv = self.embed_block_frames(blocks[keep])  # [K, 512, 12]
        frames = conv.unflatten(2, (FRAMES_PER_BLOCK, CONV_FRAMES_PER_FRAME)).amax(dim=3)
        frames = frames.transpose(1, 2)  # [K, 4, 512]
        out = frames.new_zeros(B * n_blocks, FRAMES_PER_BLOCK, frames.shape[-1]).index_copy(
            0, keep.nonzero().squeeze(1), frames
        )
        out = out.view(B, n_blocks * FRAMES_PER_BLOCK, -1)
        return out, aisfx_frame_lengths(valid)

    def pool_frames(self, frames: torch.Tensor, frame_lengths: torch.Tensor) -> torch.Tensor:
        """:meth:`forward`'s clip embeddings from :meth:`frame_embeddings`' outputs, equal to
        them bit for bit (:func:`pool_aisfx_frames`): one encoder pass gives both."""
        return pool_aisfx_frames(frames, frame_lengths)


def aisfx_frame_lengths(valid_input_frames: torch.Tensor) -> torch.Tensor:
    """Frames of :meth:`AisfxEncoder.frame_embeddings` that start inside ``valid_input_frames``.

    Frame ``j`` of block ``b`` starts at input frame ``100 b + 24 j``; the frames of a clip
    with ``v`` valid input frames that start before ``v`` form a prefix of its sequence.
    """
    v = torch.as_tensor(valid_input_frames).long()
    full_blocks = (v - 1) // BLOCK_FRAMES  # blocks before the last one with real audio
    rest = v - full_blocks * BLOCK_FRAMES  # real input frames of that block, 1..100
    in_last = (-(-rest // FRAME_HOP_INPUT_FRAMES)).clamp(max=FRAMES_PER_BLOCK)
    return full_blocks * FRAMES_PER_BLOCK + in_last


def pool_aisfx_frames(frames: torch.Tensor, frame_lengths: torch.Tensor) -> torch.Tensor:
    """The clip embedding of :meth:`AisfxEncoder.forward` from its frame embeddings.

    Max over the :data:`FRAMES_PER_BLOCK` frames of each block, then the mean over the
    blocks with real audio (those holding a frame below ``frame_lengths``), computed with
    the same operations as :meth:`AisfxEncoder.forward`, so the result is equal to it.

    Args:
        frames: ``[B, 4 * n_blocks, 512]`` as :meth:`AisfxEncoder.frame_embeddings` returns
            (possibly padded with more zero blocks).
        frame_lengths: ``[B]`` valid frames.
    """
    B, n, d = frames.shape
    if n % FRAMES_PER_BLOCK:
        raise ValueError(f"frames must hold whole blocks of {FRAMES_PER_BLOCK} frames; got {n}")
    n_blocks = n // FRAMES_PER_BLOCK
    lengths = torch.as_tensor(frame_lengths, device=frames.device).long()
    block_valid = time_mask(-(-lengths // FRAMES_PER_BLOCK), n_blocks)  # [B, n_blocks]
    per_block = frames.view(B, n_blocks, FRAMES_PER_BLOCK, d).amax(dim=2)
    per_block = per_block * block_valid[..., None].to(per_block.dtype)
    out = per_block.sum(dim=1)
    return out / block_valid.sum(dim=1, keepdim=True).to(out.dtype)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def default_aisfx_weights_path() -> Path:
    """Return ``$MLTM_DATA/weights/aisfx-0.1.2.safetensors`` (default MLTM_DATA: ``<repo>/data``).

    The same root as the datasets built by ``data_scripts/``.
    """
    return default_weights_dir() / f"aisfx-{AISFX_VERSION}.safetensors"


def check_aisfx_wheel(wheel_path: str | os.PathLike) -> str:
    """Return the wheel's SHA-256 after checking it is the published aisfx 0.1.2 wheel.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If the hash differs (the message gives both hashes and the fix).
    """
    wheel_path = Path(wheel_path)
    if not wheel_path.is_file():
        raise FileNotFoundError(
            f"aisfx wheel {wheel_path} not found: download it with "
            "`python data_scripts/fetch_aisfx.py`"
        )
    actual = _sha256(wheel_path)
    if actual != AISFX_WHEEL_SHA256:
        raise ValueError(
            f"{wheel_path} is not the published {AISFX_WHEEL}: SHA-256 {actual}, expected "
            f"{AISFX_WHEEL_SHA256}; delete it and download it again with "
            "`python data_scripts/fetch_aisfx.py`"
        )
    return actual


def convert_aisfx_wheel(
    wheel_path: str | os.PathLike, out_path: str | os.PathLike | None = None
) -> Path:
    """Convert the aisfx 0.1.2 wheel's checkpoint to a safetensors file for :class:`AisfxEncoder`.

    Steps: check the wheel's SHA-256 against :data:`AISFX_WHEEL_SHA256`; read
    ``aisfx/models/checkpoint.pth`` from the zip and unpickle it (the only pickle this project
    ever loads, and only from verified bytes); keep the ``embedding_net.*`` tensors (renamed
    without the prefix) and drop the dataset classifier heads; check they load into
    :class:`AisfxEncoder` with ``strict=True``; write ``out_path`` atomically with metadata
    (source wheel, its SHA-256, licence).

    Args:
        wheel_path: The downloaded ``aisfx-0.1.2-py2.py3-none-any.whl``.
        out_path: Output file; default :func:`default_aisfx_weights_path`.

    Returns:
        The output path.

    Raises:
        ValueError: If the wheel's hash is wrong or its checkpoint is not the expected one.
    """
    from safetensors.torch import save

    wheel_path = Path(wheel_path)
    out_path = Path(out_path) if out_path is not None else default_aisfx_weights_path()
    sha = check_aisfx_wheel(wheel_path)
    with zipfile.ZipFile(wheel_path) as z:
        blob = z.read(AISFX_CHECKPOINT_MEMBER)
    # Safe only because the bytes were just verified to be the published wheel's.
    weights, ds_dict = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=False)
    prefix = "embedding_net."
    state = {k[len(prefix):]: v.detach().clone().contiguous()
             for k, v in weights.items() if k.startswith(prefix)}
    AisfxEncoder().load_state_dict(state, strict=True)
    metadata = {
        "format": WEIGHTS_FORMAT,
        "source": f"{AISFX_WHEEL} (PyPI), member {AISFX_CHECKPOINT_MEMBER}, "
                  "tensors embedding_net.* (prefix removed)",
        "source_sha256": sha,
        "license": LICENSE,
        "architecture": "aisfx.models.cnn2d.EmbeddingNet('max', 3, 1, 64)",
        "dropped_heads": ",".join(sorted(str(k) for k in ds_dict)),
    }
    data = save(state, metadata=metadata)
    with atomic_write(out_path, "wb") as f:
        f.write(data)
    os.chmod(out_path, 0o644)  # atomic_write's temporary file is private (0600)
    return out_path


def read_aisfx_metadata(path: str | os.PathLike) -> dict[str, str]:
    """Return the metadata of a converted weights file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def load_aisfx_encoder(
    path: str | os.PathLike | None = None, freeze: bool = False, **kwargs
) -> AisfxEncoder:
    """Build an :class:`AisfxEncoder` with the converted pretrained weights.

    Args:
        path: The safetensors file written by :func:`convert_aisfx_wheel`; default
            :func:`default_aisfx_weights_path`.
        freeze: Freeze the encoder (fixed feature extractor).
        **kwargs: Passed to :class:`AisfxEncoder` (``frontend_config``, ``spec_augment``).

    Raises:
        FileNotFoundError: If the file is missing (the message names the script that makes it).
        ValueError: If the file is not a converted aisfx weights file.
    """
    from safetensors.torch import load_file

    path = Path(path) if path is not None else default_aisfx_weights_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"aisfx weights {path} not found: create them with "
            "`python data_scripts/fetch_aisfx.py` (downloads the aisfx 0.1.2 wheel from PyPI "
            "and converts it)"
        )
    fmt = read_aisfx_metadata(path).get("format")
    if fmt != WEIGHTS_FORMAT:
        raise ValueError(
            f"{path} is not an aisfx weights file made by convert_aisfx_wheel (format "
            f"{fmt!r}, expected {WEIGHTS_FORMAT!r}); recreate it with "
            "`python data_scripts/fetch_aisfx.py --force`"
        )
    encoder = AisfxEncoder(**kwargs)
    encoder.load_state_dict(load_file(str(path)), strict=True)
    if freeze:
        freeze_(encoder)
    return encoder

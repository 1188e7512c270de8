"""Run frozen encoders over a dataset once and cache their outputs.

With both encoders frozen, m-LTM training only moves the projection heads and M, so the
encoders' outputs are computed once per clip and per caption text and reused every epoch
(and by every run on the same data): this is what makes the CI config train in seconds.
The cache key covers the encoder (its class, options and a hash of its weights), the
front-end and clip-length settings, and every input (clip id, size and SHA-256 of the audio
file's bytes; caption text), so a change to any of them recomputes, and the same data found
elsewhere (a fresh clone that rebuilt it, a copy) does not. Files are written
atomically; a corrupted clip is skipped and counted, not fatal.

**Portable features.** By default the encoders run on a float64 copy of themselves and the
outputs are rounded to 16 significant bits (:func:`mltm.numerics.round_significant`), then
stored as float32 (exactly). A float32 forward pass differs between CPUs in the last bits
(measured: 84 % of the aisfx outputs and 97 % of the MiniLM outputs differ between
``ATEN_CPU_CAPABILITY=default`` and ``avx2`` on one machine); the rounded float64 outputs are
the same bits everywhere, so every run that starts from the cache starts from the same
numbers. ``dtype=torch.float32, significant_bits=None`` restores the plain float32 forward
(about 2x faster).

**Sequences.** :func:`encode_clip_frames` and :func:`encode_text_tokens` cache the encoders'
outputs before pooling (aisfx frames every 0.557 s, the text model's last layer per token),
for the temporal heads (:mod:`mltm.encoders.heads`): padded tensors ``[N, L, D]`` with
the valid lengths ``[N]``, under their own cache kinds (``audio-frames``, ``text-tokens``)
and the same precision rules. The pooled outputs follow from them by the encoders' pooling
(:func:`mltm.encoders.aisfx.pool_aisfx_frames`, :func:`mltm.encoders.text.pool_tokens`)
exactly before the rounding; each is rounded on its own, so the cached pooled vector and
the pooled cached frames agree to the rounding (2^-16 relative), not to the bit.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from torch import nn
from torch.utils.data import DataLoader

from mltm._atomic import atomic_write
from mltm.numerics import round_significant

__all__ = [
    "cache_dir",
    "encoder_fingerprint",
    "encode_clips",
    "encode_texts",
    "encode_clip_frames",
    "encode_text_tokens",
    "pad_sequences",
    "cached",
    "encoder_in",
]


def cache_dir() -> Path:
    """``$MLTM_CACHE/embeddings`` (default ``~/.cache/mltm/embeddings``)."""
    base = os.environ.get("MLTM_CACHE") or Path.home() / ".cache" / "mltm"
    return Path(base) / "embeddings"


def encoder_fingerprint(encoder: nn.Module) -> str:
    """SHA-256 over the encoder's class, options and every parameter and buffer."""
    h = hashlib.sha256(type(encoder).__qualname__.encode())
    for attr in ("pooling", "max_length", "out_dim"):
        h.update(f"{attr}={getattr(encoder, attr, None)!r};".encode())
    cfg = getattr(encoder, "frontend_config", None)
    if cfg is not None:
        h.update(repr(cfg).encode())
    for name, t in sorted(encoder.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def cached(kind: str, key: dict[str, Any], compute, directory: str | os.PathLike | None = None):
    """Return ``compute()``'s dict of tensors, cached under a hash of ``key``.

    A cache file that cannot be read (truncated, corrupted) is recomputed and rewritten. A
    process that finds another one computing the same entry (a ``.lock`` file beside it, held
    through :mod:`filelock`, released by the OS if its holder dies) waits and then reads it.
    """
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    path = Path(directory or cache_dir()) / f"{kind}-{digest[:24]}.pt"
    value = _load_entry(path)
    if value is not None:
        return value
    path.parent.mkdir(parents=True, exist_ok=True)
    # One process computes an entry while the others that want it wait, then read it (pytest
    # workers, torchrun ranks and chapters run side by side share one cache).
    with FileLock(f"{path}.lock"):
        value = _load_entry(path)
        if value is None:
            value = compute()
            buf = io.BytesIO()
            torch.save(value, buf)
            with atomic_write(path, "wb") as f:
                f.write(buf.getvalue())
    return value


def _load_entry(path: Path):
    """A cache entry's tensors, or None if the file is missing or cannot be read."""
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - any unreadable cache entry is recomputed
        return None


def encoder_in(encoder: nn.Module, dtype: torch.dtype, device) -> nn.Module:
    """The encoder in eval mode on ``device`` with ``dtype`` parameters.

    A copy if it must change.
    """
    params = list(encoder.parameters()) + [b for b in encoder.buffers() if b.is_floating_point()]
    if all(p.dtype == dtype for p in params):
        return encoder.eval().to(device)
    return copy.deepcopy(encoder).to(device=device, dtype=dtype).eval()


#: Clips per cache file for datasets larger than this: a long encoding (10,000 scenes take hours
#: on a CPU) is saved shard by shard, so an interrupted run resumes where it stopped. A
#: dataset of at most this many clips keeps a single cache file (and its key of before).
CLIP_SHARD = 1024


def _sharded(kind: str, key: dict[str, Any], n: int, compute_rows, merge, shard: int | None,
             sibling: tuple[str, dict[str, Any]] | None = None):
    """``compute_rows(range)``'s outputs for rows ``0..n``, cached per shard of ``shard`` rows.

    The key of each shard holds only that shard's inputs (``key["clips"][start:stop]``) plus
    the rest of ``key``, so a shard is reused whatever the dataset around it, and ``merge``
    concatenates the shards' dicts in order.

    With ``sibling = (kind2, key2)``, ``compute_rows`` returns two dicts: this cache's entry
    and the entry of ``kind2`` for the same rows (keyed like ``key2``, shard by shard), which
    is stored as well, so one pass of the encoder fills both caches.
    """
    shard = shard or CLIP_SHARD
    spans = [(0, n, key, sibling[1] if sibling else None)] if n <= shard else [
        (a, min(n, a + shard),
         {**key, "clips": key["clips"][a:min(n, a + shard)], "shard": [a, min(n, a + shard)]},
         {**sibling[1], "clips": sibling[1]["clips"][a:min(n, a + shard)],
          "shard": [a, min(n, a + shard)]} if sibling else None)
        for a in range(0, n, shard)]

    def entry(a: int, b: int, k2: dict[str, Any] | None):
        if sibling is None:
            return compute_rows(range(a, b))
        value, other = compute_rows(range(a, b))
        cached(sibling[0], k2, lambda: other)  # stored unless another process already did
        return value

    parts = [cached(kind, k, lambda a=a, b=b, k2=k2: entry(a, b, k2)) for a, b, k, k2 in spans]
    return parts[0] if len(parts) == 1 else merge(parts)


def _cat_rows(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Concatenate shard dicts along rows, zero-padding sequence outputs to the widest shard."""
    out = {}
    for name in parts[0]:
        values = [p[name] for p in parts]
        if values[0].dim() == 3:
            width = max(v.shape[1] for v in values)
            values = [torch.nn.functional.pad(v, (0, 0, 0, width - v.shape[1])) for v in values]
        out[name] = torch.cat(values)
    return out


def _finish(x: torch.Tensor, significant_bits: int | None) -> torch.Tensor:
    if significant_bits is not None:
        x = round_significant(x, significant_bits)
    return x.float()


def _precision_key(dtype: torch.dtype, significant_bits: int | None) -> dict[str, Any]:
    return {"dtype": str(dtype), "significant_bits": significant_bits}


#: Content digests of audio files already read by this process, by (path, size, mtime, inode).
_DIGESTS: dict[tuple, str] = {}


def _file_digest(path: Path) -> list[Any]:
    """``[size, sha256]`` of a file's bytes (``[None, None]`` if it cannot be read).

    The bytes, not the path or mtime: a fresh clone that rebuilds the same data, or the same
    data in another directory, finds the features it already computed.
    """
    try:
        st = path.stat()
        memo = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
        if memo not in _DIGESTS:
            with open(path, "rb") as f:
                _DIGESTS[memo] = hashlib.file_digest(f, "sha256").hexdigest()
        return [st.st_size, _DIGESTS[memo]]
    except OSError:
        return [None, None]


def _clips_key(encoder: nn.Module, dataset, dtype: torch.dtype, significant_bits: int | None,
               **extra: str) -> dict[str, Any]:
    """Cache key of a clips dataset's encoder outputs: encoder, front end, precision, every clip."""
    from mltm.data.manifest import resolve_audio_path

    return {"encoder": encoder_fingerprint(encoder), **extra,
            "frontend": repr(dataset.config),
            "precision": _precision_key(dtype, significant_bits),
            "clips": [[r.clip_id] + _file_digest(resolve_audio_path(r, dataset.root))
                      for r in dataset.records]}


def encode_clips(encoder: nn.Module, dataset, *, batch_size: int = 16,
                 device: torch.device | str = "cpu", progress: bool = False,
                 use_cache: bool = True, dtype: torch.dtype = torch.float64,
                 significant_bits: int | None = 16,
                 shard: int | None = None) -> dict[str, torch.Tensor]:
    """Encoder outputs for every clip of a clips-view :class:`~mltm.data.AudioCaptionDataset`.

    The encoder runs in ``dtype`` (on a copy when its parameters have another dtype) and
    the outputs are rounded to ``significant_bits`` (see the module docstring).

    A dataset of more than ``shard`` clips (default :data:`CLIP_SHARD`) is cached shard by
    shard, so an interrupted encoding resumes at the first missing shard.

    Returns:
        ``{"features": (N, D) float32, "valid": (N,) bool}``; rows of clips whose audio
        could not be decoded are zero with ``valid`` False (counted in the dataset's
        ``skip_report``).
    """
    if dataset.view != "clips":
        raise ValueError("encode_clips needs a dataset with view='clips'")

    def compute(rows: range) -> dict[str, torch.Tensor]:
        was_training = encoder.training
        enc = encoder_in(encoder, dtype, device)
        feats = torch.zeros(len(rows), encoder.out_dim)
        valid = torch.zeros(len(rows), dtype=torch.bool)
        loader = DataLoader(torch.utils.data.Subset(dataset, rows), batch_size=batch_size,
                            shuffle=False, collate_fn=dataset.collate_fn)
        from tqdm import tqdm

        with torch.no_grad():
            for batch in tqdm(loader, desc="audio encoder", disable=not progress, leave=False):
                if batch["audio"].shape[0] == 0:
                    continue
                out = enc(batch["audio"].to(device, dtype), batch["lengths"].to(device))
                idx = torch.as_tensor(batch["index"]).long() - rows.start
                feats[idx] = _finish(out.cpu(), significant_bits)
                valid[idx] = True
        encoder.train(was_training)
        return {"features": feats, "valid": valid}

    if not use_cache:
        return compute(range(dataset.num_clips))
    key = _clips_key(encoder, dataset, dtype, significant_bits)
    if _has_pooled_frames(encoder):  # one pass fills the frames cache too
        frames_key = _clips_key(encoder, dataset, dtype, significant_bits, outputs="frames")
        return _sharded("audio", key, dataset.num_clips,
                        lambda rows: _pooled_and_frames(encoder, dataset, rows, batch_size,
                                                        device, dtype, significant_bits,
                                                        progress),
                        _cat_rows, shard, sibling=("audio-frames", frames_key))
    return _sharded("audio", key, dataset.num_clips, compute, _cat_rows, shard)


def _has_pooled_frames(encoder: nn.Module) -> bool:
    """Whether the encoder's pooled output follows exactly from its frame outputs."""
    return hasattr(encoder, "frame_embeddings") and hasattr(encoder, "pool_frames")


def _pooled_and_frames(encoder: nn.Module, dataset, rows: range, batch_size: int, device,
                       dtype: torch.dtype, significant_bits: int | None, progress: bool,
                       pooled: bool = True):
    """``(encode_clips entry, encode_clip_frames entry)`` of ``rows`` from one encoder pass.

    The pooled vector is the encoder's ``pool_frames`` of the unrounded frames, equal bit for
    bit to its ``forward`` (tested), so both entries are what the separate passes give. With
    ``pooled=False`` (an encoder without ``pool_frames``) the first entry is None.
    """
    was_training = encoder.training
    enc = encoder_in(encoder, dtype, device)
    feats = torch.zeros(len(rows), encoder.out_dim)
    parts: list[tuple[torch.Tensor, torch.Tensor]] = []
    order: list[torch.Tensor] = []
    loader = DataLoader(torch.utils.data.Subset(dataset, rows), batch_size=batch_size,
                        shuffle=False, collate_fn=dataset.collate_fn)
    from tqdm import tqdm

    with torch.no_grad():
        for batch in tqdm(loader, desc="audio encoder (pooled + frames)" if pooled
                          else "audio encoder (frames)", disable=not progress, leave=False):
            if batch["audio"].shape[0] == 0:
                continue
            frames, lengths = enc.frame_embeddings(batch["audio"].to(device, dtype),
                                                   batch["lengths"].to(device))
            idx = torch.as_tensor(batch["index"]).long() - rows.start
            if pooled:
                feats[idx] = _finish(enc.pool_frames(frames, lengths).cpu(), significant_bits)
            parts.append((_finish(frames.cpu(), significant_bits), lengths.cpu().long()))
            order.append(idx)
    encoder.train(was_training)
    frames_entry = _frames_entry(parts, order, len(rows), encoder.out_dim)
    if not pooled:
        return None, frames_entry
    return {"features": feats, "valid": frames_entry["valid"].clone()}, frames_entry


def _frames_entry(parts, order, n_rows: int, dim: int) -> dict[str, torch.Tensor]:
    """The ``audio-frames`` cache entry of ``n_rows`` rows from batches in ``order``."""
    n_ok = sum(len(i) for i in order)
    values, lengths = pad_sequences(parts, n_ok, dim)
    frames = torch.zeros(n_rows, values.shape[1], dim)
    frame_lengths = torch.zeros(n_rows, dtype=torch.long)
    valid = torch.zeros(n_rows, dtype=torch.bool)
    if order:
        idx = torch.cat(order)
        frames[idx], frame_lengths[idx], valid[idx] = values, lengths, True
    return {"frames": frames, "lengths": frame_lengths, "valid": valid}


def encode_texts(encoder: nn.Module, texts: Sequence[str], *, batch_size: int = 64,
                 device: torch.device | str = "cpu", progress: bool = False,
                 use_cache: bool = True, dtype: torch.dtype = torch.float64,
                 significant_bits: int | None = 16) -> torch.Tensor:
    """Encoder outputs (M, D) float32 for caption texts (in order).

    ``dtype`` and ``significant_bits`` as in :func:`encode_clips`.
    """
    texts = list(texts)

    def compute() -> dict[str, torch.Tensor]:
        was_training = encoder.training
        enc = encoder_in(encoder, dtype, device)
        out = []
        from tqdm import tqdm

        with torch.no_grad():
            for i in tqdm(range(0, len(texts), batch_size), desc="text encoder",
                          disable=not progress, leave=False):
                out.append(_finish(enc(texts[i:i + batch_size]).cpu(), significant_bits))
        encoder.train(was_training)
        return {"features": torch.cat(out) if out else torch.zeros(0, encoder.out_dim)}

    if not use_cache:
        return compute()["features"]
    key = {"encoder": encoder_fingerprint(encoder), "texts": texts,
           "precision": _precision_key(dtype, significant_bits)}
    return cached("text", key, compute)["features"]


def pad_sequences(parts: list[tuple[torch.Tensor, torch.Tensor]], total: int,
                  dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Batches ``(values [b, L_b, D], lengths [b])`` (in order) into ``[total, max L_b, D]``.

    Each batch is copied as it is into the first ``L_b`` positions (the rest is zero). The
    parts are freed as they are copied: the peak memory is at most twice the result.
    """
    width = max((v.shape[1] for v, _ in parts), default=1)
    values = torch.zeros(total, width, dim)
    lengths_out = torch.zeros(total, dtype=torch.long)
    row = 0
    while parts:
        v, lengths = parts.pop(0)
        b = v.shape[0]
        values[row:row + b, :v.shape[1]] = v
        lengths_out[row:row + b] = lengths
        row += b
    return values, lengths_out


def encode_clip_frames(encoder: nn.Module, dataset, *, batch_size: int = 16,
                       device: torch.device | str = "cpu", progress: bool = False,
                       use_cache: bool = True, dtype: torch.dtype = torch.float64,
                       significant_bits: int | None = 16,
                       shard: int | None = None) -> dict[str, torch.Tensor]:
    """Frame-level encoder outputs for every clip of a clips-view dataset (cached).

    The encoder must have ``frame_embeddings(audio, lengths) -> (frames, frame_lengths)``
    (:meth:`mltm.encoders.AisfxEncoder.frame_embeddings`). Precision as in
    :func:`encode_clips`; cache kind ``audio-frames``, sharded as in :func:`encode_clips`.

    Returns:
        ``{"frames": (N, F, D) float32, "lengths": (N,) long, "valid": (N,) bool}`` with
        ``F`` the most frames of any batch. Frames at or beyond a clip's length are padding
        (zero, except the encoder's silence frames in a partly filled last block, kept so
        that :func:`~mltm.encoders.aisfx.pool_aisfx_frames` of the cached frames matches
        the cached pooled vector to the rounding). Clips that could not be decoded have
        length 0 and ``valid`` False.

    Raises:
        TypeError: If the encoder has no frame outputs.
    """
    if dataset.view != "clips":
        raise ValueError("encode_clip_frames needs a dataset with view='clips'")
    if not hasattr(encoder, "frame_embeddings"):
        raise TypeError(f"{type(encoder).__name__} has no frame outputs (frame_embeddings); "
                        "use the aisfx audio encoder or a pooled (linear) audio head")

    def compute(rows: range) -> dict[str, torch.Tensor]:
        return _pooled_and_frames(encoder, dataset, rows, batch_size, device, dtype,
                                  significant_bits, progress, pooled=False)[1]

    if not use_cache:
        return compute(range(dataset.num_clips))
    key = _clips_key(encoder, dataset, dtype, significant_bits, outputs="frames")
    if _has_pooled_frames(encoder):  # one pass fills the pooled cache too
        pooled_key = _clips_key(encoder, dataset, dtype, significant_bits)
        return _sharded("audio-frames", key, dataset.num_clips,
                        lambda rows: _pooled_and_frames(encoder, dataset, rows, batch_size,
                                                        device, dtype, significant_bits,
                                                        progress)[::-1],
                        _cat_rows, shard, sibling=("audio", pooled_key))
    return _sharded("audio-frames", key, dataset.num_clips, compute, _cat_rows, shard)


def encode_text_tokens(encoder: nn.Module, texts: Sequence[str], *, batch_size: int = 64,
                       device: torch.device | str = "cpu", progress: bool = False,
                       use_cache: bool = True, dtype: torch.dtype = torch.float64,
                       significant_bits: int | None = 16) -> dict[str, torch.Tensor]:
    """Token-level encoder outputs for caption texts (in order; cached).

    The encoder must have ``token_embeddings(captions) -> (tokens, lengths)``
    (:meth:`mltm.encoders.TextEncoder.token_embeddings`). Precision as in
    :func:`encode_clips`; cache kind ``text-tokens``.

    Returns:
        ``{"tokens": (M, L, D) float32, "lengths": (M,) long}``, ``L`` the longest caption
        (``[CLS]`` and ``[SEP]`` included); positions at or beyond a caption's length are zero.
    """
    if not hasattr(encoder, "token_embeddings"):
        raise TypeError(f"{type(encoder).__name__} has no token outputs (token_embeddings); "
                        "use mltm.encoders.TextEncoder or a pooled (linear) text head")
    texts = list(texts)

    def compute() -> dict[str, torch.Tensor]:
        was_training = encoder.training
        enc = encoder_in(encoder, dtype, device)
        parts: list[tuple[torch.Tensor, torch.Tensor]] = []
        from tqdm import tqdm

        with torch.no_grad():
            for i in tqdm(range(0, len(texts), batch_size), desc="text encoder (tokens)",
                          disable=not progress, leave=False):
                tokens, lengths = enc.token_embeddings(texts[i:i + batch_size])
                parts.append((_finish(tokens.cpu(), significant_bits), lengths.cpu().long()))
        encoder.train(was_training)
        tokens, lengths = pad_sequences(parts, len(texts), encoder.out_dim)
        return {"tokens": tokens, "lengths": lengths}

    if not use_cache:
        return compute()
    key = {"encoder": encoder_fingerprint(encoder), "outputs": "tokens", "texts": texts,
           "precision": _precision_key(dtype, significant_bits)}
    return cached("text-tokens", key, compute)

"""Training: hybrid SGD for m-LTM and its baselines (paper Algorithm 1, eq. 8 and 11).

``python -m mltm.train --config FILE [--set key=value ...] [--out DIR] [--resume] [--debug]``

A known error (missing dataset or config, bad config key or value, bad checkpoint) prints one
line ``error: <message>`` on stderr and exits with status 2; ``--debug`` shows the traceback.

Each step draws a mini-batch of b pairs whose clips (and caption texts) are distinct, embeds
both sides, evaluates the loss, and takes one **hybrid** step: Adam on the encoders and
heads, Adam followed by the PSD projection on M (eq. 11, :meth:`MatchingLoss.project_`).
The gradient norm is clipped over all parameters, M included, as the released code does.

Two paths, chosen from the config:

* **fast** (both encoders frozen, the CI and CPU default): encoder outputs are computed once
  (:mod:`mltm.embed`, cached on disk) and only the heads and M are trained, on CPU in
  seconds. The outputs are pooled vectors for the ``linear`` heads, or padded frame and
  token sequences with their lengths for the temporal heads (``model.audio_head``,
  ``model.text_head``; :func:`encode_split`, :func:`take_rows`);
* **end-to-end** (an encoder is fine-tuned, the paper's setting): waveforms and captions go
  through the encoders every step, bfloat16 autocast on a GPU.

Every epoch: validation retrieval (ranked by the learned distance), a row in
``metrics.csv`` and ``history.json``, and an atomically written checkpoint ``last.pt``
(``best.pt`` too when the validation score improves). ``--resume`` continues from
``last.pt`` exactly: the batches of an epoch depend only on ``(seed, epoch)`` and the RNG
states are restored. At the end the best checkpoint is evaluated on the test split, ranked
both by distance and by the transductive Sinkhorn plan, into ``results.json``.

``torchrun --nproc-per-node N -m mltm.train ...`` trains data-parallel on the same global
batches, with the plan over the whole global batch (:mod:`mltm.distributed`,
``dist.global_plan``); rank 0 validates and writes every file.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import pickle
import random
import sys
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mltm import distributed
from mltm._atomic import atomic_write
from mltm._cli import add_debug_flag, run_cli
from mltm.config import TrainConfig, config_from_dict, load_config, save_config
from mltm.losses import MatchingLoss, build_loss
from mltm.model import AudioTextModel, build_encoders, build_model, check_heads
from mltm.numerics import default_dtype, tensor_digest
from mltm.ot import ConvergenceWarning
from mltm.provenance import provenance

__all__ = [
    "Trainer",
    "EvalSet",
    "build_loss_from_config",
    "load_checkpoint",
    "read_checkpoint",
    "save_checkpoint",
    "resolve_device",
    "dataset_root",
    "seed_everything",
    "CHECKPOINT_FORMAT",
    "compute_dtype",
    "feature_precision",
    "sequence_outputs",
    "take_rows",
]

#: Version 2: tensors and plain data only (read with ``torch.load(weights_only=True)``, so a
#: received checkpoint cannot run code); version 1 pickled NumPy RNG state and was read with
#: ``weights_only=False``.
CHECKPOINT_FORMAT = "mltm-checkpoint/2"


# -- small helpers --------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available; "
                         "use 'auto' or 'cpu'")
    return device


def dataset_root(name: str) -> Path:
    """A dataset directory: an existing path, else ``$MLTM_DATA/name`` (see ``dataset_dir``)."""
    p = Path(name)
    if p.is_dir():
        return p
    from mltm.data import dataset_dir

    return dataset_dir(name)


_DTYPES = {"float64": torch.float64, "float32": torch.float32}


def _parse_dtype(name: str, key: str) -> torch.dtype:
    if name not in _DTYPES:
        raise ValueError(f"config key {key}: {name!r} is not a dtype; use 'float64' or 'float32'")
    return _DTYPES[name]


def _is_fast(cfg: TrainConfig) -> bool:
    return cfg.model.freeze_audio and cfg.model.freeze_text


def compute_dtype(cfg: TrainConfig) -> torch.dtype:
    """The dtype heads, M and the loss train in: ``cfg.dtype`` on the fast path, else float32."""
    return _parse_dtype(cfg.dtype, "dtype") if _is_fast(cfg) else torch.float32


def feature_precision(cfg: TrainConfig) -> dict[str, Any]:
    """``dtype`` / ``significant_bits`` of the frozen encoders' outputs (for ``encode_*``)."""
    return {"dtype": _parse_dtype(cfg.model.feature_dtype, "model.feature_dtype"),
            "significant_bits": cfg.model.feature_bits}


def sequence_outputs(cfg: TrainConfig) -> dict[str, str]:
    """Which encoder outputs the heads take: ``audio_outputs`` ``pooled``/``frames`` and
    ``text_outputs`` ``pooled``/``tokens`` (for :func:`encode_split`)."""
    return {"audio_outputs": "pooled" if cfg.model.audio_head == "linear" else "frames",
            "text_outputs": "pooled" if cfg.model.text_head == "linear" else "tokens"}


def take_rows(values: torch.Tensor, lengths: torch.Tensor | None, index, device,
              dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rows ``index`` of cached encoder outputs, on ``device`` in ``dtype``.

    Pooled outputs (``lengths`` None) give ``(values[index], None)``; sequences give the
    rows cut to the longest of them and their lengths, ready for a temporal head.
    """
    x = values[index]
    if lengths is None:
        return x.to(device, dtype), None
    n = lengths[index]
    if n.numel():
        x = x[:, : max(int(n.max()), 1)]
    return x.to(device, dtype), n.to(device)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    """All RNG states as tensors and plain data (a checkpoint holds nothing else).

    torch (and CUDA) states are uint8 tensors; NumPy's legacy state becomes a dict of a
    list and numbers, Python's ``random`` state a list.
    """
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"name": str(name), "keys": [int(k) for k in keys], "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "python": [int(version), [int(k) for k in internal], gauss_next]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], np.asarray(n["keys"], dtype=np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def build_loss_from_config(cfg: TrainConfig, dtype: torch.dtype | None = None) -> MatchingLoss:
    """The loss a config names, with only the hyper-parameters that loss takes.

    ``dtype``: its parameters (M) are initialised in it (None: torch's default).
    """
    with default_dtype(dtype):
        return _build_loss(cfg)


def _build_loss(cfg: TrainConfig) -> MatchingLoss:
    lc = cfg.loss
    sk = {"max_iter": lc.sinkhorn_max_iter, "tol": lc.sinkhorn_tol}
    metric = {"kind": lc.metric.kind, "init": lc.metric.init, "rank": lc.metric.rank,
              "min_eigenvalue": lc.metric.min_eigenvalue}
    if lc.name in ("mltm", "mltm_partial"):
        gen = torch.Generator().manual_seed(cfg.seed)
        kw: dict[str, Any] = {"eps": lc.eps, "cost_normalization": lc.cost_normalization,
                              "sinkhorn_kwargs": sk}
        if lc.name == "mltm_partial":
            kw["mass"] = lc.mass
        return build_loss(lc.name, dim=cfg.model.joint_dim,
                          metric={**metric, "generator": gen}, **kw)
    if lc.name == "ntxent":
        return build_loss("ntxent", dim=cfg.model.joint_dim, tau=lc.tau)
    if lc.name == "triplet":
        return build_loss("triplet", dim=cfg.model.joint_dim, margin=lc.margin)
    if lc.name == "contrastive_entropic":
        return build_loss("contrastive_entropic", dim=cfg.model.joint_dim, tau=lc.tau, eps=lc.eps)
    return build_loss(lc.name, dim=cfg.model.joint_dim)  # raises with the list of names


# -- evaluation sets ------------------------------------------------------------------------


@dataclass
class EvalSet:
    """Encoder outputs of one split, ready to be projected and ranked.

    Attributes:
        audio: (N, Da) audio encoder outputs of the usable clips, or their frames
            (N, F, Da) when ``audio_lengths`` is given.
        text: (M, Dt) text encoder outputs of all their captions, or their tokens
            (M, L, Dt) when ``text_lengths`` is given.
        caption_clip: (M,) clip index of each caption.
        labels: Class label of each clip (or None).
        clip_ids: Clip ids.
        skipped: Clips dropped because their audio could not be decoded.
        audio_lengths: (N,) valid frames of each clip (None: pooled outputs).
        text_lengths: (M,) tokens of each caption (None: pooled outputs).
    """

    audio: torch.Tensor
    text: torch.Tensor
    caption_clip: torch.Tensor
    labels: list[str | None]
    clip_ids: list[str]
    skipped: int = 0
    audio_lengths: torch.Tensor | None = None
    text_lengths: torch.Tensor | None = None

    def digest(self) -> str:
        """12 hex digits naming the encoder outputs and the caption-to-clip map.

        Chapters print it before training: when two machines print different results, equal
        digests rule out the features (and everything upstream of them) as the cause.
        """
        lengths = [t for t in (self.audio_lengths, self.text_lengths) if t is not None]
        return tensor_digest(self.audio, self.text, self.caption_clip, *lengths)

    def label_groups(self) -> torch.Tensor:
        """Integer id of each clip's label (clips without a label get their own id)."""
        ids: dict[Any, int] = {}
        return torch.tensor([ids.setdefault(lab if lab is not None else ("clip", i), len(ids))
                             for i, lab in enumerate(self.labels)])


def encode_split(root: Path, split: str, audio_encoder: nn.Module, text_encoder: nn.Module, *,
                 max_seconds, device, cache: bool, progress: bool = False,
                 dtype: torch.dtype = torch.float64,
                 significant_bits: int | None = 16, audio_outputs: str = "pooled",
                 text_outputs: str = "pooled") -> EvalSet:
    """Run both encoders over a split (clips view) and build an :class:`EvalSet`.

    ``dtype`` and ``significant_bits`` set the precision of the encoder outputs
    (:func:`mltm.embed.encode_clips`; the defaults make them the same bits on every CPU).
    ``audio_outputs``: ``pooled`` or ``frames`` (:func:`mltm.embed.encode_clip_frames`);
    ``text_outputs``: ``pooled`` or ``tokens`` (:func:`mltm.embed.encode_text_tokens`).
    """
    from mltm.data import AudioCaptionDataset
    from mltm.embed import encode_clip_frames, encode_clips

    if audio_outputs not in ("pooled", "frames") or text_outputs not in ("pooled", "tokens"):
        raise ValueError(f"audio_outputs {audio_outputs!r} / text_outputs {text_outputs!r}: use "
                         "pooled/frames and pooled/tokens")

    ds = AudioCaptionDataset(root, split, frontend=audio_encoder, max_seconds=max_seconds,
                             view="clips", output="waveform", train=False)
    unreadable = ds.skip_report.total  # dropped at the header scan
    precision = {"dtype": dtype, "significant_bits": significant_bits}
    encode = encode_clips if audio_outputs == "pooled" else encode_clip_frames
    out = encode(audio_encoder, ds, device=device, progress=progress, use_cache=cache,
                 **precision)
    valid = out["valid"]
    keep = torch.nonzero(valid).flatten().tolist()
    captions, caption_clip = [], []
    for new, ci in enumerate(keep):
        for c in ds.records[ci].captions:
            captions.append(c)
            caption_clip.append(new)
    text, text_lengths = encode_captions(text_encoder, captions, text_outputs, device=device,
                                         progress=progress, use_cache=cache, **precision)
    audio_lengths = out["lengths"][valid] if audio_outputs == "frames" else None
    return EvalSet(audio=out["features" if audio_outputs == "pooled" else "frames"][valid],
                   text=text, audio_lengths=audio_lengths, text_lengths=text_lengths,
                   caption_clip=torch.tensor(caption_clip, dtype=torch.long),
                   labels=[ds.records[i].label for i in keep],
                   clip_ids=[ds.records[i].clip_id for i in keep],
                   # unreadable at the header scan + failed to decode while encoding
                   skipped=unreadable + int((~valid).sum()))


def encode_captions(text_encoder: nn.Module, captions: list[str], text_outputs: str = "pooled",
                    **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Text encoder outputs of ``captions``: ``(pooled (M, D), None)`` or, for
    ``text_outputs="tokens"``, ``(tokens (M, L, D), lengths (M,))``; ``kwargs`` go to
    :func:`mltm.embed.encode_texts` / :func:`mltm.embed.encode_text_tokens`."""
    from mltm.embed import encode_text_tokens, encode_texts

    if text_outputs == "pooled":
        return encode_texts(text_encoder, captions, **kwargs), None
    out = encode_text_tokens(text_encoder, captions, **kwargs)
    return out["tokens"], out["lengths"]


@torch.no_grad()
def project_evalset(model: AudioTextModel, es: EvalSet, device, batch_size: int = 1024):
    """Joint-space embeddings (audio (N, d), text (M, d)) of an :class:`EvalSet`.

    Computed in the heads' dtype (float64 on the portable CPU path), never below float32.
    """
    was = model.training
    model.eval()
    dtype = torch.promote_types(next(model.audio_head.parameters()).dtype, torch.float32)
    def rows(values, lengths, i):
        return take_rows(values, lengths, slice(i, i + batch_size), device, dtype)

    a = torch.cat([model.project_audio(*rows(es.audio, es.audio_lengths, i)).to(dtype)
                   for i in range(0, len(es.audio), batch_size)])
    t = torch.cat([model.project_text(*rows(es.text, es.text_lengths, i)).to(dtype)
                   for i in range(0, len(es.text), batch_size)])
    model.train(was)
    return a, t


def evaluate_embeddings(audio, text, caption_clip, loss: MatchingLoss, *, rank_by: str,
                        eps: float, clip_group=None) -> dict[str, Any]:
    """Retrieval metrics of joint embeddings ranked by the loss's cost."""
    from mltm.retrieval import modality_gap, retrieval_metrics

    with torch.no_grad():
        m = retrieval_metrics(audio, text, caption_clip.to(audio.device),
                              cost=loss.ranking_cost, rank_by=rank_by, eps=eps,
                              clip_group=(None if clip_group is None
                                          else clip_group.to(audio.device)))
    m["modality_gap"] = modality_gap(audio, text)
    return m


def r_sum(metrics: dict[str, Any]) -> float:
    """R@1 + R@5 + R@10 over both directions (the selection score)."""
    return float(sum(metrics[d][f"R@{k}"] for d in ("a2t", "t2a") for k in (1, 5, 10)))


# -- checkpoints ----------------------------------------------------------------------------


_PLAIN = (str, int, float, bool, type(None))


def _plain(value: Any, where: str = "checkpoint") -> Any:
    """``value`` as tensors and plain data only (dict/list/tuple/str/int/float/bool/None):
    what ``torch.load(weights_only=True)`` reads back without unpickling arbitrary objects.

    NumPy scalars and arrays become Python numbers and lists; ordered dicts (state dicts)
    stay ordered dicts with their ``_metadata``. Anything else raises ``TypeError``.
    """
    if isinstance(value, torch.Tensor) or type(value) in _PLAIN:
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        out = OrderedDict() if isinstance(value, OrderedDict) else {}
        for k, v in value.items():
            if type(k) not in (str, int):
                raise TypeError(f"{where}: key {k!r} is a {type(k).__name__}, not str or int")
            out[k] = _plain(v, f"{where}.{k}")
        if hasattr(value, "_metadata"):
            out._metadata = _plain(value._metadata, f"{where}._metadata")
        return out
    if isinstance(value, (list, tuple)):
        items = [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    for kind in (bool, int, float, str):  # subclasses such as enums
        if isinstance(value, kind):
            return kind(value)
    raise TypeError(f"{where} is a {type(value).__name__}: a checkpoint holds only tensors and "
                    "plain data (dict, list, tuple, str, int, float, bool, None)")


def _checkpoint_payload(cfg: TrainConfig, epoch: int, model, loss, opt, history, best, dims,
                        frozen: tuple[str, ...], world_size: int = 1) -> dict[str, Any]:
    """What a checkpoint holds: weights, optimiser and RNG state, config and history."""
    return {
        "format": CHECKPOINT_FORMAT, "config": cfg.to_dict(), "epoch": epoch,
        "model": {k: v for k, v in model.state_dict().items() if not k.startswith(frozen)},
        "loss": loss.state_dict(), "optimizer": opt.state_dict(), "rng": _rng_state(),
        "history": history, "best": best, "dims": dims, "world_size": world_size,
    }


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write a checkpoint atomically (temporary file, then rename: never half-written).

    The payload is converted to tensors and plain data (:func:`_plain`); it is written with
    ``torch.save`` and read back by :func:`read_checkpoint` with ``weights_only=True``, so
    loading a checkpoint received from elsewhere never executes pickled code.
    """
    payload = _plain(payload)
    buf = io.BytesIO()
    torch.save(payload, buf)
    with atomic_write(path, "wb") as f:
        f.write(buf.getvalue())


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw dict of an mltm checkpoint, read without executing any pickled code.

    Raises:
        FileNotFoundError: no such file.
        ValueError: ``"not an mltm checkpoint: <path>: <why>"`` for a file that is not a
            torch archive (garbage, a plain pickle), a truncated or corrupt one, one holding
            Python objects other than tensors and plain data (refused, never unpickled), or
            one of another format.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found; give the best.pt or last.pt "
                                "that python -m mltm.train wrote")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"PK\x03\x04":  # torch.save's zip archive
        raise ValueError(f"not an mltm checkpoint: {path}: not a torch zip archive (garbage, a "
                         "raw pickle or another format); use a best.pt or last.pt written by "
                         "python -m mltm.train")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        detail = next((ln.strip() for ln in str(e).splitlines()
                       if "Unsupported global" in ln or "Unsupported operand" in ln),
                      str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
        raise ValueError(f"not an mltm checkpoint: {path}: it holds pickled Python objects, "
                         f"not only tensors and plain data, and was refused without running "
                         f"them ({detail}); mltm checkpoints of format {CHECKPOINT_FORMAT!r} "
                         "never do (older ones of format 'mltm-checkpoint/1' must be "
                         "retrained)") from e
    except Exception as e:  # truncated or corrupt archive: RuntimeError, EOFError, ...
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"not an mltm checkpoint: {path}: unreadable, truncated or corrupt "
                         f"({detail})") from e
    fmt = ckpt.get("format") if isinstance(ckpt, dict) else None
    if fmt != CHECKPOINT_FORMAT:
        got = f"format {fmt!r}" if fmt is not None else "no 'format' field"
        raise ValueError(f"not an mltm checkpoint: {path}: {got}, expected format "
                         f"{CHECKPOINT_FORMAT!r}")
    return ckpt


def _frozen_prefixes(model: AudioTextModel, cfg: TrainConfig) -> tuple[str, ...]:
    out = []
    if model.audio_encoder is not None and cfg.model.freeze_audio:
        out.append("audio_encoder.")
    if model.text_encoder is not None and cfg.model.freeze_text:
        out.append("text_encoder.")
    return tuple(out)


def load_checkpoint(path: str | Path, *, device="cpu", with_encoders: bool = True):
    """Rebuild ``(config, model, loss, checkpoint dict)`` from a checkpoint.

    Frozen encoders are not stored in checkpoints; they are rebuilt from the config (their
    weights files must be where the config says). ``with_encoders=False`` returns a model
    with the heads only.
    """
    path = Path(path)
    ckpt = read_checkpoint(path)
    cfg = config_from_dict(ckpt["config"])
    dims = ckpt["dims"]
    dtype = compute_dtype(cfg)  # the heads in the dtype they were trained in
    model = build_model(cfg.model, audio_dim=dims["audio"], text_dim=dims["text"],
                        with_encoders=with_encoders, dtype=dtype)
    missing, unexpected = model.load_state_dict(ckpt["model"], strict=False)
    allowed = _frozen_prefixes(model, cfg) if with_encoders else ()
    bad_missing = [k for k in missing if not k.startswith(allowed)]
    bad_unexpected = [k for k in unexpected
                      if not k.startswith(("audio_encoder.", "text_encoder."))]
    if bad_missing or bad_unexpected:
        raise ValueError(f"{path}: checkpoint does not match its config "
                         f"(missing {bad_missing[:5]}, unexpected {bad_unexpected[:5]})")
    loss = build_loss_from_config(cfg, dtype=dtype)
    loss.load_state_dict(ckpt["loss"])
    return cfg, model.to(device), loss.to(device), ckpt


def _resume_key(config: dict[str, Any]) -> dict[str, Any]:
    """The parts of a config a resumed run must share (more epochs and progress may differ)."""
    key = json.loads(json.dumps(config_from_dict(config).to_dict()))  # fields added later: defaults
    key["optim"].pop("epochs", None)
    key.pop("progress", None)
    return key


# -- the trainer ----------------------------------------------------------------------------


class Trainer:
    """Train one config; see the module docstring.

    Args:
        config: The run's :class:`TrainConfig`.
        evalsets: Precomputed encoder outputs (``{"train": ..., "val": ..., "test": ...}``)
            to reuse across runs on the same data (fast path only); computed when absent.
        encoders: Already built ``(audio, text)`` encoders of ``config.model`` to reuse.
    """

    def __init__(self, config: TrainConfig, *, evalsets: dict[str, EvalSet] | None = None,
                 encoders: tuple[nn.Module, nn.Module] | None = None) -> None:
        self.cfg = config
        if encoders is not None:
            self._enc = encoders
        self.device = resolve_device(config.device)
        self.out = Path(config.out_dir)
        self.root = dataset_root(config.data.dataset)
        self.fast = _is_fast(config)
        self.dtype = compute_dtype(config)
        self.precision = (feature_precision(config) if self.fast
                          else {"dtype": torch.float32, "significant_bits": None})
        check_heads(config.model)  # temporal heads: frozen encoders with sequence outputs
        self.outputs = sequence_outputs(config)
        self._evalsets = dict(evalsets or {})
        if config.optim.batch_size < 2:
            raise ValueError(
                "optim.batch_size must be at least 2 (a matching loss needs negatives)"
            )
        if config.eval.select_by not in ("r_sum", "loss"):
            raise ValueError(f"eval.select_by {config.eval.select_by!r}: use 'r_sum' or 'loss'")
        if config.eval.relevance not in ("clip", "label"):
            raise ValueError(f"eval.relevance {config.eval.relevance!r}: use 'clip' or 'label'")

    # -- data -------------------------------------------------------------------------------

    def _encoders(self):
        if not hasattr(self, "_enc"):
            self._enc = build_encoders(self.cfg.model)
        return self._enc

    def evalset(self, split: str) -> EvalSet:
        """Encoder outputs of a split (cached on disk when the encoders are frozen)."""
        if split not in self._evalsets:
            audio_enc, text_enc = self._encoders()
            self._evalsets[split] = encode_split(
                self.root, getattr(self.cfg.data, f"{split}_split"), audio_enc, text_enc,
                max_seconds=self.cfg.data.max_seconds, device=self.device, cache=self.fast,
                progress=self.cfg.progress, **self.precision, **self.outputs)
        return self._evalsets[split]

    def _train_pairs(self):
        """The training pairs (with noise), as a pairs-view dataset."""
        from mltm.data import AudioCaptionDataset

        return AudioCaptionDataset(
            self.root, self.cfg.data.train_split, frontend=self._encoders()[0],
            max_seconds=self.cfg.data.max_seconds, view="pairs", output="waveform", train=True,
            noise=self.cfg.data.noise or None, noise_seed=self.cfg.data.noise_seed,
            seed=self.cfg.seed)

    # -- model ------------------------------------------------------------------------------

    def _build(self):
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        if self.fast:
            tr = self.evalset("train")
            model = build_model(cfg.model, audio_dim=tr.audio.shape[-1], text_dim=tr.text.shape[-1],
                                with_encoders=False, dtype=self.dtype)
        else:
            audio_enc, text_enc = self._encoders()
            model = AudioTextModel(audio_enc.out_dim, text_enc.out_dim,
                                   joint_dim=cfg.model.joint_dim, hidden_dim=cfg.model.hidden_dim,
                                   head_dropout=cfg.model.head_dropout,
                                   audio_encoder=audio_enc, text_encoder=text_enc)
        loss = build_loss_from_config(cfg, dtype=self.dtype if self.fast else None)
        model.to(self.device)
        loss.to(self.device)
        o = cfg.optim
        groups = [{"params": [p for n, p in model.named_parameters()
                              if p.requires_grad
                              and not n.startswith(("audio_encoder.", "text_encoder."))],
                   "lr": o.lr, "name": "heads"}]
        enc = [p for n, p in model.named_parameters()
               if p.requires_grad and n.startswith(("audio_encoder.", "text_encoder."))]
        if enc:
            groups.append({"params": enc, "lr": o.encoder_lr or o.lr, "name": "encoders"})
        metric = [p for p in loss.parameters() if p.requires_grad]
        if metric:
            groups.append({"params": metric, "lr": o.metric_lr or o.lr, "name": "metric"})
        opt = torch.optim.Adam(groups, lr=o.lr, weight_decay=o.weight_decay)
        return model, loss, opt

    # -- one epoch --------------------------------------------------------------------------

    def _batches(self, pairs_ds, epoch: int) -> list[list[int]]:
        from mltm.data import UniqueClipBatchSampler

        keys = pairs_ds.pair_keys(tuple(self.cfg.data.unique_keys))
        sampler = UniqueClipBatchSampler(keys, self.cfg.optim.batch_size, seed=self.cfg.seed,
                                         drop_last=False)
        # A final batch of one pair has no negative; drop batches shorter than 2. Under
        # torchrun each rank takes its contiguous slice of every global batch (and a batch
        # shorter than the number of processes, which would leave a rank empty, is dropped).
        shortest = max(2, distributed.get_world_size())
        return distributed.shard_batches([b for b in sampler.batches(epoch) if len(b) >= shortest])

    def _step_embeddings(self, model, pairs_ds, batch_idx, batch):
        """Joint embeddings of a batch of pairs, and their clip ids.

        Fast path: ``batch_idx`` (pair indices) into the precomputed encoder outputs (pooled
        vectors, or padded sequences with their lengths for temporal heads).
        End-to-end: ``batch``, a collated batch of waveforms and captions.
        """
        if self.fast:
            clip = torch.as_tensor(pairs_ds.pair_clip[batch_idx])
            tr = self.evalset("train")
            rows = self._clip_row[clip]
            ok = rows >= 0  # clips whose audio could not be decoded are left out
            audio = take_rows(tr.audio, tr.audio_lengths, rows[ok], self.device, self.dtype)
            text_rows = self._pair_text_row[torch.as_tensor(batch_idx)[ok]]
            text = take_rows(*self._pair_text, text_rows, self.device, self.dtype)
            return model.project_audio(*audio), model.project_text(*text), clip[ok].to(self.device)
        if batch["audio"].shape[0] == 0:  # every clip of the batch failed to decode
            return None, None, None
        amp = self.cfg.optim.amp and self.device.type == "cuda"
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=amp):
            a = model.embed_audio(batch["audio"].to(self.device), batch["lengths"].to(self.device))
            t = model.embed_text(batch["caption"])
        return a.float(), t.float(), batch["clip_index"].to(self.device)

    def _prepare_fast_pairs(self, pairs_ds):
        tr = self.evalset("train")
        # map dataset clip index -> row of the (valid-only) EvalSet
        row_of = {cid: i for i, cid in enumerate(tr.clip_ids)}
        self._clip_row = torch.tensor([row_of.get(r.clip_id, -1) for r in pairs_ds.records])
        # text features of the distinct (possibly corrupted) pair captions, and each pair's row
        uniq = sorted(set(pairs_ds.pair_captions))
        self._pair_text = encode_captions(self._encoders()[1], uniq, self.outputs["text_outputs"],
                                          device=self.device, progress=self.cfg.progress,
                                          use_cache=True, **self.precision)
        pos = {t: i for i, t in enumerate(uniq)}
        self._pair_text_row = torch.tensor([pos[t] for t in pairs_ds.pair_captions])

    # -- run --------------------------------------------------------------------------------

    def run(self, resume: bool = False) -> dict[str, Any]:
        """Train, validate every epoch, test the best checkpoint; return ``results.json``.

        Under ``torchrun`` the process group is made from its environment variables (and
        torn down at the end) and training is data-parallel (:mod:`mltm.distributed`);
        rank 0 validates and writes every file, and every rank returns the results.
        """
        self.device = distributed.device_for_rank(self.device)
        with distributed.process_group(self.device):
            return self._run(resume)

    def _run(self, resume: bool) -> dict[str, Any]:
        from tqdm import tqdm

        cfg = self.cfg
        t_start = time.perf_counter()
        seed_everything(cfg.seed)
        world, main = distributed.get_world_size(), distributed.is_main_process()
        with distributed.main_process_first():  # rank 0 fills the embedding cache
            pairs_ds = self._train_pairs()
            if self.fast:
                self._prepare_fast_pairs(pairs_ds)
            val = self.evalset("val")
        model, loss, opt = self._build()
        history: list[dict[str, Any]] = []
        best = {"epoch": -1, "score": -math.inf}
        start_epoch = 0
        self.out.mkdir(parents=True, exist_ok=True)
        last = self.out / "last.pt"
        if resume:
            if not last.is_file():
                raise FileNotFoundError(f"--resume: {last} not found; start without --resume")
            ckpt = read_checkpoint(last)
            if _resume_key(ckpt["config"]) != _resume_key(cfg.to_dict()):
                raise ValueError(f"--resume: {last} was written by a different config; "
                                 "use the same config (only optim.epochs may grow) "
                                 "or a new out_dir")
            if ckpt["epoch"] + 1 > cfg.optim.epochs:
                raise ValueError(f"--resume: {last} already holds epoch {ckpt['epoch'] + 1} of "
                                 f"{cfg.optim.epochs}; raise optim.epochs to train further")
            model.load_state_dict(ckpt["model"], strict=False)
            loss.load_state_dict(ckpt["loss"])
            opt.load_state_dict(ckpt["optimizer"])
            _set_rng_state(ckpt["rng"])
            history, best, start_epoch = ckpt["history"], ckpt["best"], ckpt["epoch"] + 1
            if not cfg.dist.global_plan and ckpt.get("world_size", 1) != world:
                raise ValueError(f"--resume: {last} was trained with per-rank plans on "
                                 f"{ckpt.get('world_size', 1)} processes; resume on as many")
        distributed.broadcast_parameters(model, loss)  # the same start on every rank
        if main:
            save_config(cfg, self.out / "config.yaml")
        frozen = _frozen_prefixes(model, cfg)
        dims = {"audio": model.audio_dim, "text": model.text_dim}
        params = [p for p in list(model.parameters()) + list(loss.parameters()) if p.requires_grad]

        epochs = tqdm(range(start_epoch, cfg.optim.epochs), desc="epochs",
                      disable=not cfg.progress or not main, initial=start_epoch,
                      total=cfg.optim.epochs)
        for epoch in epochs:
            t0 = time.perf_counter()
            model.train()
            pairs_ds.set_epoch(epoch)
            total, n_steps, unconverged, clamped = 0.0, 0, 0, 0
            projections_before = loss.projections_computed
            batches = self._batches(pairs_ds, epoch)
            if cfg.optim.max_steps_per_epoch is not None:
                batches = batches[: cfg.optim.max_steps_per_epoch]
            if self.fast:
                stream = ((idx, None) for idx in batches)
            else:  # decode and batch audio in worker processes
                loader = torch.utils.data.DataLoader(
                    pairs_ds, batch_sampler=batches, collate_fn=pairs_ds.collate_fn,
                    num_workers=cfg.data.num_workers, pin_memory=self.device.type == "cuda")
                stream = ((None, batch) for batch in loader)
            for batch_idx, batch in stream:
                a, t, clip = self._step_embeddings(model, pairs_ds, batch_idx, batch)
                if world > 1:  # the global batch (or, per-rank plans, this rank's slice)
                    a, t, clip = distributed.batch_for_loss(
                        a, t, clip, global_plan=cfg.dist.global_plan, dim=cfg.model.joint_dim)
                if a is None or a.shape[0] < 2:
                    continue
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", ConvergenceWarning)
                    value = loss(a, t, clip)
                unconverged += sum(issubclass(w.category, ConvergenceWarning) for w in caught)
                for w in caught:
                    if not issubclass(w.category, ConvergenceWarning):
                        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
                if not torch.isfinite(value):
                    raise FloatingPointError(
                        f"non-finite loss at epoch {epoch}: lower optim.lr or raise loss.eps")
                opt.zero_grad(set_to_none=True)
                value.backward()
                distributed.average_gradients(params)  # = one process on the global batch
                if cfg.optim.grad_clip:
                    nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
                opt.step()
                clamped += loss.project_()  # eq. 11: M <- Proj(F(M, grad M))
                distributed.broadcast_parameters(loss)  # the same M on every rank
                total += float(value.detach())
                n_steps += 1
            if world > 1 and not cfg.dist.global_plan:  # per-rank losses: their mean
                total, unconverged = distributed.all_reduce_sum([total / world, unconverged])
                unconverged = int(unconverged)
            if not main:  # rank 0 validates and writes; the others wait for it
                distributed.barrier()
                continue
            row: dict[str, Any] = {"epoch": epoch, "train_loss": total / max(n_steps, 1),
                                   "steps": n_steps, "sinkhorn_unconverged": unconverged,
                                   "clamped_eigenvalues": clamped,
                                   # steps whose eq. 11 projection needed the eigendecomposition
                                   "projections_computed":
                                       loss.projections_computed - projections_before}
            cost = getattr(loss, "cost", None)
            if cost is not None and cost.kind != "euclidean":
                row["metric_min_eigenvalue"] = cost.min_eigenvalue_of_matrix()
            vm = self._validate(model, loss, val)
            row.update({f"val_{d}_{k}": vm[d][k]
                        for d in ("a2t", "t2a") for k in ("R@1", "R@5", "R@10")})
            row["val_r_sum"] = r_sum(vm)
            row["val_modality_gap"] = vm["modality_gap"]
            row["seconds"] = time.perf_counter() - t0
            history.append(row)
            score = row["val_r_sum"] if cfg.eval.select_by == "r_sum" else -row["train_loss"]
            improved = score > best["score"]
            if improved:
                best = {"epoch": epoch, "score": score}
            payload = _checkpoint_payload(cfg, epoch, model, loss, opt, history, best, dims,
                                          frozen, world_size=world)
            save_checkpoint(last, payload)
            if improved:
                save_checkpoint(self.out / "best.pt", payload)
            self._write_metrics(history)
            epochs.set_postfix(loss=f"{row['train_loss']:.4f}", val_r_sum=f"{row['val_r_sum']:.1f}")
            distributed.barrier()

        results = self._test(t_start, history, best) if main else None
        return distributed.broadcast_object(results)

    def _validate(self, model, loss, es: EvalSet) -> dict[str, Any]:
        if not self.fast:
            audio_enc, text_enc = model.audio_encoder, model.text_encoder
            es = encode_split(self.root, self.cfg.data.val_split, audio_enc, text_enc,
                              max_seconds=self.cfg.data.max_seconds, device=self.device,
                              cache=False)
        a, t = project_evalset(model, es, self.device)
        group = es.label_groups() if self.cfg.eval.relevance == "label" else None
        return evaluate_embeddings(a, t, es.caption_clip, loss, rank_by="distance",
                                   eps=self.cfg.eval.plan_eps, clip_group=group)

    def _write_metrics(self, history: list[dict[str, Any]]) -> None:
        keys: list[str] = []
        for row in history:
            keys += [k for k in row if k not in keys]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys)
        w.writeheader()
        w.writerows(history)
        with atomic_write(self.out / "metrics.csv") as f:
            f.write(buf.getvalue())
        with atomic_write(self.out / "history.json") as f:
            json.dump(history, f, indent=1)

    def _test(self, t_start: float, history, best) -> dict[str, Any]:
        cfg = self.cfg
        best_path = self.out / "best.pt"
        _, model, loss, ckpt = load_checkpoint(best_path, device=self.device,
                                               with_encoders=not self.fast)
        if self.fast:
            es = self.evalset("test")
        else:
            es = encode_split(self.root, cfg.data.test_split, model.audio_encoder,
                              model.text_encoder, max_seconds=cfg.data.max_seconds,
                              device=self.device, cache=False)
        a, t = project_evalset(model, es, self.device)
        group = es.label_groups() if cfg.eval.relevance == "label" else None
        test = {rank_by: evaluate_embeddings(a, t, es.caption_clip, loss, rank_by=rank_by,
                                             eps=cfg.eval.plan_eps, clip_group=group)
                for rank_by in ("distance", "plan")}
        results = {
            "provenance": provenance(self.device, cfg.to_dict(), time.perf_counter() - t_start,
                                     world_size=distributed.get_world_size()),
            "dataset": str(self.root.name),
            "best_epoch": best["epoch"],
            "best_val": history[best["epoch"]] if 0 <= best["epoch"] < len(history) else None,
            "test": test,
            "test_clips": int(a.shape[0]),
            "test_captions": int(t.shape[0]),
            "skipped_clips": {"test": es.skipped},
        }
        with atomic_write(self.out / "results.json") as f:
            json.dump(results, f, indent=1, default=float)
        return results


# -- command line ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mltm.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="YAML config (see mltm.config)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set optim.lr=3e-4 (repeatable)")
    p.add_argument("--out", help="output directory (overrides out_dir)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    add_debug_flag(p)
    args = p.parse_args(argv)

    def body() -> int:
        overrides = list(args.set) + ([f"out_dir={args.out}"] if args.out else [])
        cfg = load_config(args.config, overrides)
        results = Trainer(cfg).run(resume=args.resume)
        d = results["test"]["distance"]
        if distributed.is_main_process():
            print(json.dumps({"out_dir": cfg.out_dir, "best_epoch": results["best_epoch"],
                              "test_a2t_R@1": d["a2t"]["R@1"], "test_t2a_R@1": d["t2a"]["R@1"]}))
        return 0

    # known errors: one line "error: ..." on stderr, exit status 2 (--debug: traceback)
    return run_cli(body, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())

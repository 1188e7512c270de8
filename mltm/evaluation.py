"""Evaluation sets: encoder outputs of a split, their joint embeddings, retrieval metrics.

An :class:`EvalSet` holds the encoder outputs of one split (pooled vectors, or padded frame and
token sequences with their lengths for the temporal heads), :func:`encode_split` computes one,
:func:`project_evalset` maps it through a model's heads and :func:`evaluate_embeddings` ranks
the joint embeddings by a loss's cost (:mod:`mltm.retrieval`). :class:`EncodedSplits` computes
each split of a dataset once under a config and keeps the encoders, so that several runs on the
same data (a chapter's losses × seeds) share them: pass its ``evalsets`` and ``encoders`` to
:class:`mltm.train.Trainer`.

Used by the training loop (:mod:`mltm.train`: validation every epoch, the test at the end) and
by ``python -m mltm.eval``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mltm.config import TrainConfig
from mltm.factory import frozen_encoders, parse_dtype
from mltm.losses import MatchingLoss
from mltm.model import AudioTextModel, build_encoders
from mltm.numerics import tensor_digest

__all__ = [
    "EvalSet",
    "EncodedSplits",
    "encode_split",
    "encode_captions",
    "project_evalset",
    "evaluate_embeddings",
    "r_sum",
    "take_rows",
    "feature_precision",
    "encoding_precision",
    "sequence_outputs",
]


def feature_precision(cfg: TrainConfig) -> dict[str, Any]:
    """``dtype`` / ``significant_bits`` of the frozen encoders' outputs (for ``encode_*``)."""
    return {"dtype": parse_dtype(cfg.model.feature_dtype, "model.feature_dtype"),
            "significant_bits": cfg.model.feature_bits}


def sequence_outputs(cfg: TrainConfig) -> dict[str, str]:
    """Which encoder outputs the heads take: ``audio_outputs`` ``pooled``/``frames`` and
    ``text_outputs`` ``pooled``/``tokens`` (for :func:`encode_split`)."""
    return {"audio_outputs": "pooled" if cfg.model.audio_head == "linear" else "frames",
            "text_outputs": "pooled" if cfg.model.text_head == "linear" else "tokens"}


def encoding_precision(cfg: TrainConfig) -> dict[str, Any]:
    """The precision encoder outputs are computed in for a config's model.

    Frozen encoders: :func:`feature_precision` (the portable cached features the heads train
    on); an encoder that is fine-tuned: float32, not rounded.
    """
    if frozen_encoders(cfg):
        return feature_precision(cfg)
    return {"dtype": torch.float32, "significant_bits": None}


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
        captions: The M caption strings, in the order of ``text`` (None: not known, as in an
            EvalSet made before they were kept); the metrics count distinct captions by them.
    """

    audio: torch.Tensor
    text: torch.Tensor
    caption_clip: torch.Tensor
    labels: list[str | None]
    clip_ids: list[str]
    skipped: int = 0
    audio_lengths: torch.Tensor | None = None
    text_lengths: torch.Tensor | None = None
    captions: list[str] | None = None

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
                   captions=captions,
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
                        eps: float, clip_group=None, evalset: EvalSet | None = None,
                        per_query: bool = False, ties: str = "expected") -> dict[str, Any]:
    """Retrieval metrics of joint embeddings ranked by the loss's cost.

    :func:`mltm.retrieval.retrieval_metrics` plus ``modality_gap``. ``evalset``, the
    :class:`EvalSet` the embeddings were projected from, lends its caption texts (the
    distinct captions are then counted by string, else by embedding row) and, with
    ``per_query``, each query's clip label and id: ``queries["a2t"]`` gets ``label`` and
    ``clip_id`` of the query clip, ``queries["t2a"]`` those of the caption's clip, next to
    the ``clip`` indices, so that a bootstrap can resample clusters of queries (a scene
    source, a class). The ``queries`` are the same for every ranking: a results file keeps
    them once per split, beside the rankings (``results["test"]["queries"]``, where
    :func:`mltm.verdicts.verdict` looks for them).

    Raises:
        ValueError: as :func:`~mltm.retrieval.retrieval_metrics`, and for an ``evalset`` whose
            ``caption_clip`` is not ``caption_clip``.
    """
    from mltm.retrieval import modality_gap, retrieval_metrics

    texts = None
    if evalset is not None:
        if not torch.equal(evalset.caption_clip.cpu().long(), caption_clip.cpu().long()):
            raise ValueError("evalset.caption_clip differs from caption_clip: pass the EvalSet "
                             "the embeddings were projected from")
        texts = getattr(evalset, "captions", None)  # None in EvalSets made before captions
    with torch.no_grad():
        m = retrieval_metrics(audio, text, caption_clip.to(audio.device),
                              cost=loss.ranking_cost, rank_by=rank_by, eps=eps,
                              clip_group=(None if clip_group is None
                                          else clip_group.to(audio.device)),
                              ties=ties, caption_texts=texts, per_query=per_query)
    if per_query and evalset is not None:
        a2t, t2a = m["queries"]["a2t"], m["queries"]["t2a"]
        a2t["label"], a2t["clip_id"] = list(evalset.labels), list(evalset.clip_ids)
        t2a["label"] = [evalset.labels[c] for c in t2a["clip"]]
        t2a["clip_id"] = [evalset.clip_ids[c] for c in t2a["clip"]]
    m["modality_gap"] = modality_gap(audio, text)
    return m


def r_sum(metrics: dict[str, Any]) -> float:
    """R@1 + R@5 + R@10 over both directions (the selection score)."""
    return float(sum(metrics[d][f"R@{k}"] for d in ("a2t", "t2a") for k in (1, 5, 10)))


class EncodedSplits:
    """The encoders of a config's model and the :class:`EvalSet` of each split, made once.

    Args:
        config: The run's config (dataset splits, encoders, feature precision and outputs).
        root: The dataset directory.
        device: Where the encoders run (may be reassigned before the first split is encoded).
        evalsets: Already computed ``{split name: EvalSet}`` to reuse (frozen encoders only).
        encoders: Already built ``(audio, text)`` encoders of ``config.model`` to reuse.
    """

    def __init__(self, config: TrainConfig, root: Path, device: torch.device, *,
                 evalsets: dict[str, EvalSet] | None = None,
                 encoders: tuple[nn.Module, nn.Module] | None = None) -> None:
        self.cfg = config
        self.root = root
        self.device = device
        self.cache = frozen_encoders(config)  # frozen encoders: outputs cached on disk
        self.precision = encoding_precision(config)
        self.outputs = sequence_outputs(config)
        self._evalsets = dict(evalsets or {})
        self._encoders = encoders

    def encoders(self) -> tuple[nn.Module, nn.Module]:
        """The ``(audio, text)`` encoders of the config's model, built on first use."""
        if self._encoders is None:
            self._encoders = build_encoders(self.cfg.model)
        return self._encoders

    def evalset(self, split: str) -> EvalSet:
        """Encoder outputs of a split (``train``, ``val`` or ``test``), computed on first use.

        Cached on disk when the encoders are frozen (:mod:`mltm.embed`).
        """
        if split not in self._evalsets:
            audio_enc, text_enc = self.encoders()
            self._evalsets[split] = encode_split(
                self.root, getattr(self.cfg.data, f"{split}_split"), audio_enc, text_enc,
                max_seconds=self.cfg.data.max_seconds, device=self.device, cache=self.cache,
                progress=self.cfg.progress, **self.precision, **self.outputs)
        return self._evalsets[split]

    def evalsets(self, splits: tuple[str, ...] = ("train", "val", "test")
                 ) -> dict[str, EvalSet]:
        """``{split: EvalSet}`` of ``splits``: with :meth:`encoders`, what runs can share."""
        return {s: self.evalset(s) for s in splits}

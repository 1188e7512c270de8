"""Batch sources: where the training loop's joint embeddings come from.

The epoch loop of :mod:`mltm.train` is the same on both paths; what differs is behind one
interface, :class:`BatchSource`:

* :class:`CachedFeatureSource` (both encoders frozen, the CI and CPU default): encoder
  outputs are computed once (:mod:`mltm.embed`, cached on disk) and only the heads and M are
  trained, on CPU in seconds. A batch is a list of pair indices into the cached outputs:
  pooled vectors for the ``linear`` heads, or padded frame and token sequences with their
  lengths for the temporal heads (:func:`mltm.evaluation.take_rows`).
* :class:`WaveformSource` (an encoder is fine-tuned, the paper's setting): waveforms and
  captions are decoded and batched in worker processes and go through the encoders every
  step, under bfloat16 autocast on a GPU; validation and test encode their split again
  with the model's (trained) encoders.

:func:`make_source` picks the source of a config; the trainer calls
:meth:`BatchSource.prepare` once per run. Each epoch, :meth:`BatchSource.batches` gives the
epoch's batches (they depend only on ``(seed, epoch)``, which is what makes ``--resume``
exact) and :meth:`BatchSource.step_embeddings` turns one into ``(audio, text, clip ids)``.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

from mltm import distributed
from mltm.checkpoint import load_checkpoint
from mltm.config import TrainConfig
from mltm.evaluation import EncodedSplits, EvalSet, encode_captions, encode_split, take_rows
from mltm.factory import compute_dtype, frozen_encoders
from mltm.model import AudioTextModel, build_model

__all__ = ["BatchSource", "CachedFeatureSource", "WaveformSource", "make_source"]


class BatchSource:
    """Training batches of one config, and the model and evaluation sets that go with them.

    Args:
        config: The run's config.
        splits: The config's encoders and encoded splits (shared with the trainer).
        device: Where the model trains.
    """

    #: Whether the model holds the encoders (and fine-tunes them) rather than heads only.
    trains_encoders: bool = False

    def __init__(self, config: TrainConfig, splits: EncodedSplits, device: torch.device) -> None:
        self.cfg = config
        self.splits = splits
        self.device = device
        self.pairs = None  # the training pairs dataset, made by prepare()

    @property
    def param_dtype(self) -> torch.dtype | None:
        """The dtype the heads and M are built in (None: torch's default)."""
        return None

    def prepare(self) -> None:
        """Make the training pairs (with noise) and whatever the batches are read from."""
        from mltm.data import AudioCaptionDataset

        self.pairs = AudioCaptionDataset(
            self.splits.root, self.cfg.data.train_split, frontend=self.splits.encoders()[0],
            max_seconds=self.cfg.data.max_seconds, view="pairs", output="waveform", train=True,
            noise=self.cfg.data.noise or None, noise_seed=self.cfg.data.noise_seed,
            seed=self.cfg.seed)

    def build_model(self) -> AudioTextModel:
        """A freshly initialised model (the caller seeds torch first)."""
        raise NotImplementedError

    def batch_indices(self, epoch: int) -> list[list[int]]:
        """Pair indices of the batches of ``epoch`` this process trains on.

        Batches of distinct clips (and caption texts, ``data.unique_keys``) drawn by
        :class:`mltm.data.UniqueClipBatchSampler` from ``(seed, epoch)``, cut to
        ``optim.max_steps_per_epoch``. A final batch of one pair has no negative: batches
        shorter than 2 are dropped. Under torchrun each rank takes its contiguous slice of
        every global batch (and a batch shorter than the number of processes, which would
        leave a rank empty, is dropped).
        """
        from mltm.data import UniqueClipBatchSampler

        keys = self.pairs.pair_keys(tuple(self.cfg.data.unique_keys))
        sampler = UniqueClipBatchSampler(keys, self.cfg.optim.batch_size, seed=self.cfg.seed,
                                         drop_last=False)
        shortest = max(2, distributed.get_world_size())
        batches = distributed.shard_batches([b for b in sampler.batches(epoch)
                                             if len(b) >= shortest])
        if self.cfg.optim.max_steps_per_epoch is not None:
            batches = batches[: self.cfg.optim.max_steps_per_epoch]
        return batches

    def batches(self, epoch: int) -> Iterable[Any]:
        """The batches of ``epoch``, each one for :meth:`step_embeddings`."""
        raise NotImplementedError

    def step_embeddings(self, model: AudioTextModel, batch: Any
                        ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """Joint embeddings ``(audio (b, d), text (b, d), clip ids (b,))`` of one batch.

        Pairs whose audio could not be decoded are left out; ``(None, None, None)`` when no
        pair of the batch is left.
        """
        raise NotImplementedError

    def validation_set(self, model: AudioTextModel) -> EvalSet:
        """The validation split's encoder outputs, for ``model`` (validated every epoch)."""
        raise NotImplementedError

    def test_set(self, model: AudioTextModel) -> EvalSet:
        """The test split's encoder outputs, for the (reloaded best) ``model``."""
        raise NotImplementedError

    def load_checkpoint(self, path) -> tuple[TrainConfig, AudioTextModel, Any, dict[str, Any]]:
        """``(config, model, loss, checkpoint)`` of a checkpoint of this run, on its device.

        The model holds the encoders only when they were trained
        (:func:`mltm.checkpoint.load_checkpoint`).
        """
        return load_checkpoint(path, device=self.device, with_encoders=self.trains_encoders)


class CachedFeatureSource(BatchSource):
    """Frozen encoders: batches are rows of the cached encoder outputs (the fast path).

    After :meth:`prepare`:

    Attributes:
        clip_row: (P,) each pair's row of the train :class:`EvalSet` (-1: audio not decoded).
        pair_text: ``(values, lengths)`` encoder outputs of the distinct pair captions
            (possibly corrupted by ``data.noise``); ``lengths`` is None for pooled outputs.
        pair_text_row: (P,) each pair's row of ``pair_text``.
    """

    @property
    def param_dtype(self) -> torch.dtype:
        """``cfg.dtype`` (float64 by default: the same bits on every CPU)."""
        return compute_dtype(self.cfg)

    def prepare(self) -> None:
        """Make the pairs, encode the train split and the distinct pair captions, then val.

        Each pair's clip maps to its row of the train :class:`EvalSet` (-1 for a clip whose
        audio could not be decoded); its caption (possibly corrupted by the noise) to its row
        of the encoded distinct captions.
        """
        super().prepare()
        tr = self.splits.evalset("train")
        # map dataset clip index -> row of the (valid-only) EvalSet
        row_of = {cid: i for i, cid in enumerate(tr.clip_ids)}
        self.clip_row = torch.tensor([row_of.get(r.clip_id, -1) for r in self.pairs.records])
        # text features of the distinct (possibly corrupted) pair captions, and each pair's row
        uniq = sorted(set(self.pairs.pair_captions))
        self.pair_text = encode_captions(self.splits.encoders()[1], uniq,
                                          self.splits.outputs["text_outputs"],
                                          device=self.device, progress=self.cfg.progress,
                                          use_cache=True, **self.splits.precision)
        pos = {t: i for i, t in enumerate(uniq)}
        self.pair_text_row = torch.tensor([pos[t] for t in self.pairs.pair_captions])
        self.splits.evalset("val")

    def build_model(self) -> AudioTextModel:
        """Heads only, sized by the cached outputs, in :attr:`param_dtype`."""
        tr = self.splits.evalset("train")
        return build_model(self.cfg.model, audio_dim=tr.audio.shape[-1],
                           text_dim=tr.text.shape[-1], with_encoders=False,
                           dtype=self.param_dtype)

    def batches(self, epoch: int) -> Iterable[list[int]]:
        """The pair indices of each batch."""
        self.pairs.set_epoch(epoch)
        return iter(self.batch_indices(epoch))

    def step_embeddings(self, model, batch):
        """The heads applied to the cached outputs of the batch's pairs."""
        clip = torch.as_tensor(self.pairs.pair_clip[batch])
        tr = self.splits.evalset("train")
        rows = self.clip_row[clip]
        ok = rows >= 0  # clips whose audio could not be decoded are left out
        dtype = self.param_dtype
        audio = take_rows(tr.audio, tr.audio_lengths, rows[ok], self.device, dtype)
        text_rows = self.pair_text_row[torch.as_tensor(batch)[ok]]
        text = take_rows(*self.pair_text, text_rows, self.device, dtype)
        return model.project_audio(*audio), model.project_text(*text), clip[ok].to(self.device)

    def validation_set(self, model):
        """The cached validation outputs (the encoders do not change)."""
        return self.splits.evalset("val")

    def test_set(self, model):
        """The cached test outputs."""
        return self.splits.evalset("test")


class WaveformSource(BatchSource):
    """Fine-tuned encoders: batches of decoded waveforms and captions (the paper's setting)."""

    trains_encoders = True

    def build_model(self) -> AudioTextModel:
        """Heads on top of the (shared) encoders, in torch's default dtype."""
        audio_enc, text_enc = self.splits.encoders()
        m = self.cfg.model
        return AudioTextModel(audio_enc.out_dim, text_enc.out_dim, joint_dim=m.joint_dim,
                              hidden_dim=m.hidden_dim, head_dropout=m.head_dropout,
                              audio_encoder=audio_enc, text_encoder=text_enc)

    def batches(self, epoch: int) -> Iterable[dict[str, Any]]:
        """Collated batches, decoded in ``data.num_workers`` worker processes."""
        self.pairs.set_epoch(epoch)
        return torch.utils.data.DataLoader(
            self.pairs, batch_sampler=self.batch_indices(epoch),
            collate_fn=self.pairs.collate_fn, num_workers=self.cfg.data.num_workers,
            pin_memory=self.device.type == "cuda")

    def step_embeddings(self, model, batch):
        """The encoders and heads on the batch (bfloat16 autocast on a GPU), as float32."""
        if batch["audio"].shape[0] == 0:  # every clip of the batch failed to decode
            return None, None, None
        amp = self.cfg.optim.amp and self.device.type == "cuda"
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=amp):
            a = model.embed_audio(batch["audio"].to(self.device),
                                  batch["lengths"].to(self.device))
            t = model.embed_text(batch["caption"])
        return a.float(), t.float(), batch["clip_index"].to(self.device)

    def _encode(self, model, split: str) -> EvalSet:
        return encode_split(self.splits.root, split, model.audio_encoder, model.text_encoder,
                            max_seconds=self.cfg.data.max_seconds, device=self.device,
                            cache=False)

    def validation_set(self, model):
        """The validation split encoded again by the model's encoders as they are now."""
        return self._encode(model, self.cfg.data.val_split)

    def test_set(self, model):
        """The test split encoded by the reloaded model's encoders."""
        return self._encode(model, self.cfg.data.test_split)


def make_source(config: TrainConfig, splits: EncodedSplits, device: torch.device) -> BatchSource:
    """:class:`CachedFeatureSource` when both encoders are frozen, else :class:`WaveformSource`."""
    cls = CachedFeatureSource if frozen_encoders(config) else WaveformSource
    return cls(config, splits, device)

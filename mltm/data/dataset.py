"""Torch dataset over a manifest: caption pairs for training, clips for evaluation.

A dataset directory (see :mod:`mltm.data.manifest`) holds ``train.jsonl``, ``val.jsonl``,
``test.jsonl`` and the audio. :class:`AudioCaptionDataset` reads one split and offers two
views:

* ``view="pairs"`` (training): one item per (clip, caption) pair. A Clotho training clip
  with 5 captions gives 5 items; use :class:`~mltm.data.sampler.UniqueClipBatchSampler` so
  that two of them never share a batch.
* ``view="clips"`` (evaluation): one item per clip, carrying all its captions. This is the
  paper's protocol: audio-to-text queries are the clips; text-to-audio queries are all
  captions (:meth:`AudioCaptionDataset.all_captions`, with
  :attr:`AudioCaptionDataset.caption_clip` giving the clip of each).

Items are dictionaries; ``output="waveform"`` gives the cropped waveform (the model applies
:class:`~mltm.data.frontend.LogMelFrontEnd` and SpecAugment on its device), and
``output="features"`` gives cropped log-mel features ``[n_mels, n_frames]`` computed on the
CPU (optionally cached on disk and SpecAugmented in training). The front-end settings and
the crop/pad policy come from the encoder (see :func:`~mltm.data.frontend.frontend_config_of`).

**Bad audio never stops an epoch.** With ``prescan=True`` (default) every file's header is
checked when the dataset is built and clips whose audio is missing, empty, not audio or
truncated are dropped and counted in :attr:`AudioCaptionDataset.skip_report`. Files that
fail later (while decoding) make ``__getitem__`` return a :class:`SkippedItem`;
:class:`AudioTextCollator` drops those and lists them in the batch's ``"skipped"`` entry,
which the training loop can add to its own :class:`~mltm.data.audio.SkipReport` (DataLoader
workers are separate processes, so the batch is the way back).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from mltm.data.audio import (
    AudioLoadError,
    SkipReport,
    crop_waveform,
    load_audio,
    pad_right,
    probe_audio,
)
from mltm.data.cache import FeatureCache
from mltm.data.frontend import HasFrontEndConfig, LogMelConfig, LogMelFrontEnd, frontend_config_of
from mltm.data.manifest import SPLITS, ClipRecord, read_manifest, resolve_audio_path
from mltm.data.noise import NoisyCorrespondence, corrupt_pairs
from mltm.data.specaugment import SpecAugment

__all__ = [
    "AudioCaptionDataset",
    "AudioTextCollator",
    "SkippedItem",
    "dataset_dir",
    "missing_dataset_message",
]


def missing_dataset_message(root: str | os.PathLike) -> str:
    """Return the error text for a dataset directory that does not exist, naming the fix."""
    return (
        f"dataset directory {root} not found: build the project's datasets with "
        "`bash data_scripts/build_all.sh ci` (or `full`), or convert a paper dataset with "
        f"`python data_scripts/prepare_audiocaps.py SRC {root}` (likewise prepare_clotho.py, "
        "prepare_esc50.py); set MLTM_DATA if your datasets live elsewhere"
    )


def dataset_dir(name: str, data_root: str | os.PathLike | None = None) -> Path:
    """Return the directory of dataset ``name``, checking that it exists.

    Args:
        name: Dataset name, e.g. ``"debsfx"``; or a path to a dataset directory.
        data_root: Parent of the datasets; default ``$MLTM_DATA``, else ``./data``.

    Raises:
        FileNotFoundError: If the directory does not exist (the message names the builder).
    """
    p = Path(name)
    if not (p.is_absolute() or p.exists()):
        base = Path(data_root if data_root is not None else os.environ.get("MLTM_DATA", "data"))
        p = base / name
    if not p.is_dir():
        raise FileNotFoundError(missing_dataset_message(p))
    return p


@dataclass(frozen=True)
class SkippedItem:
    """Stands in for an item whose audio could not be loaded.

    Attributes:
        index: Dataset index of the item.
        reason: One of :data:`mltm.data.audio.SKIP_REASONS`.
        path: The audio file.
        detail: The error message.
    """

    index: int
    reason: str
    path: str
    detail: str = ""


class AudioCaptionDataset(Dataset):
    """Audio-caption data of one split of a manifest dataset.

    Args:
        root: Dataset directory (holding ``{split}.jsonl``).
        split: ``"train"``, ``"val"`` or ``"test"``.
        frontend: The audio encoder (anything with a ``frontend_config``) or a
            :class:`LogMelConfig`; None uses the paper's settings.
        max_seconds: Clip length limit for this dataset (e.g. 30.0 for Clotho, None for no
            limit), overriding the clip policy of ``frontend`` but not its feature settings;
            ``"config"`` (default) keeps the config's ``max_seconds``.
        view: ``"pairs"`` (one item per caption) or ``"clips"`` (one item per clip).
        output: ``"waveform"`` or ``"features"`` (log-mel).
        train: Training behaviour (random crop, SpecAugment); default ``split == "train"``.
        noise: Noisy-correspondence ratio ξ in ``[0, 1)``, or a precomputed
            :class:`NoisyCorrespondence`; training split and pairs view only.
        noise_seed: Seed of the corruption (fixed for the run).
        noise_by: Keys (see :meth:`pair_keys`) in which a replacement caption's pair must
            differ from the corrupted pair (default: its clip; ``("clip", "group")`` also
            keeps captions of the same sound family out). In addition, the replacement text
            is never one of the corrupted clip's own captions, so the pair is really wrong
            even on datasets where several clips share a caption text.
        spec_augment: SpecAugment applied to features in training (``output="features"``
            only; with waveforms the model applies it after its front end).
        cache: A :class:`FeatureCache` or a cache directory (``output="features"`` only).
        seed: Seed of the random crops and masks; an item's randomness depends only on
            ``(seed, epoch, index)``, not on worker scheduling.
        prescan: Check every audio header when building and drop unusable clips.

    Raises:
        FileNotFoundError: If the directory or the split's manifest is missing (the message
            names the command that builds it).
        ValueError: On invalid options (e.g. noise on a validation split).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        *,
        frontend: LogMelConfig | HasFrontEndConfig | None = None,
        max_seconds: float | None | Literal["config"] = "config",
        view: Literal["pairs", "clips"] = "pairs",
        output: Literal["waveform", "features"] = "waveform",
        train: bool | None = None,
        noise: float | NoisyCorrespondence | None = None,
        noise_seed: int = 0,
        noise_by: tuple[str, ...] = ("clip",),
        spec_augment: SpecAugment | None = None,
        cache: FeatureCache | str | os.PathLike | None = None,
        seed: int = 0,
        prescan: bool = True,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(missing_dataset_message(self.root))
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        self.manifest_file = self.root / f"{split}.jsonl"
        if not self.manifest_file.is_file():
            present = [s for s in SPLITS if (self.root / f"{s}.jsonl").is_file()]
            raise FileNotFoundError(
                f"{self.manifest_file} not found (splits present in {self.root}: "
                f"{present or 'none'}); rebuild the dataset with "
                "`bash data_scripts/build_all.sh ci` or the matching "
                "`python data_scripts/prepare_*.py SRC OUT`"
            )
        if view not in ("pairs", "clips"):
            raise ValueError(f"view {view!r}: use 'pairs' or 'clips'")
        if output not in ("waveform", "features"):
            raise ValueError(f"output {output!r}: use 'waveform' or 'features'")
        self.split = split
        self.view = view
        self.output = output
        self.train = split == "train" if train is None else bool(train)
        self.config = frontend_config_of(frontend)
        if max_seconds != "config":
            self.config = dataclasses.replace(self.config, max_seconds=max_seconds)
        self.seed = int(seed)
        self.epoch = 0
        if output == "waveform" and spec_augment is not None:
            raise ValueError(
                "spec_augment works on features: use output='features', or apply SpecAugment "
                "in the model after its LogMelFrontEnd"
            )
        if output == "waveform" and cache is not None:
            raise ValueError("the feature cache needs output='features'")
        self.spec_augment = spec_augment
        if cache is not None and not isinstance(cache, FeatureCache):
            cache = FeatureCache(cache, self.config)
        if cache is not None and cache.config.feature_key() != self.config.feature_key():
            raise ValueError("the FeatureCache was built for other front-end settings")
        self.cache = cache
        self._frontend: LogMelFrontEnd | None = None

        self.skip_report = SkipReport()
        records = read_manifest(self.manifest_file)
        if prescan:
            kept = []
            for r in records:
                try:
                    probe_audio(resolve_audio_path(r, self.root))
                    kept.append(r)
                except AudioLoadError as e:
                    self.skip_report.add_error(e)
            records = kept
        if not records:
            raise ValueError(
                f"{self.manifest_file}: no usable clips ({self.skip_report.summary()})"
            )
        self.records: list[ClipRecord] = records

        self.pairs: list[tuple[int, int]] = [
            (ci, k) for ci, r in enumerate(records) for k in range(len(r.captions))
        ]
        #: Clip index of each pair, shape ``[num_pairs]``.
        self.pair_clip = np.array([c for c, _ in self.pairs], dtype=np.int64)
        #: Clip index of each caption in :meth:`all_captions` order (same as ``pair_clip``).
        self.caption_clip = self.pair_clip
        clean = [records[c].captions[k] for c, k in self.pairs]
        self._clean_captions = clean

        self.noise: NoisyCorrespondence | None = None
        if noise is not None and (isinstance(noise, NoisyCorrespondence) or noise > 0):
            if view != "pairs":
                raise ValueError("noisy correspondence applies to the pairs view only")
            if isinstance(noise, NoisyCorrespondence):
                if split != "train":
                    corrupt_pairs(self.pair_clip, 0.0, 0, split=split)  # raises
                if noise.num_pairs != len(self.pairs):
                    raise ValueError(
                        f"the NoisyCorrespondence covers {noise.num_pairs} pairs, the dataset "
                        f"has {len(self.pairs)}"
                    )
                self.noise = noise
            else:
                self.noise = corrupt_pairs(self.pair_keys(noise_by, clean=True), noise,
                                           noise_seed, split=split,
                                           accept=self._not_own_caption())
        #: Caption of each pair as trained on (corrupted where ``noise.corrupted``).
        self.pair_captions: list[str] = self.noise.apply(clean) if self.noise else clean

    # -- sizes and evaluation helpers -------------------------------------------------------

    @property
    def num_clips(self) -> int:
        """Number of usable clips."""
        return len(self.records)

    def __len__(self) -> int:
        return len(self.pairs) if self.view == "pairs" else len(self.records)

    def all_captions(self) -> list[str]:
        """Return every clean caption, clip by clip (the text-to-audio queries).

        ``caption_clip[i]`` is the clip of caption ``i``. Never corrupted, whatever ``noise``.
        """
        return [c for r in self.records for c in r.captions]

    def _not_own_caption(self):
        """Return ``accept(pairs, sources)``: the source's text is no caption of the pair's clip."""
        text = self.pair_keys("caption", clean=True)[:, 0]
        n_text = int(text.max()) + 1
        own = np.unique(self.pair_clip * n_text + text)  # (clip, text) codes that are correct

        def accept(pairs: np.ndarray, sources: np.ndarray) -> np.ndarray:
            return ~np.isin(self.pair_clip[pairs] * n_text + text[sources], own)

        return accept

    def pair_keys(
        self, by: tuple[str, ...] | str = ("clip",), *, clean: bool = False
    ) -> np.ndarray:
        """Return integer keys of every pair, shape ``[num_pairs, len(by)]``.

        Pass them to :class:`~mltm.data.sampler.UniqueClipBatchSampler` to keep each key
        unique within a batch, e.g. ``("clip", "caption")`` so that neither the same audio nor
        the same caption text appears twice.

        Args:
            by: Any of ``"clip"``, ``"group"``, ``"label"`` (a clip without group/label gets a
                key of its own) and ``"caption"`` (equal caption texts share a key).
            clean: Use the clean captions for ``"caption"`` (default: as trained on).
        """
        by = (by,) if isinstance(by, str) else tuple(by)
        cols = []
        for name in by:
            if name == "clip":
                cols.append(self.pair_clip)
            elif name in ("group", "label"):
                ids: dict[object, int] = {}
                per_clip = [
                    ids.setdefault(v if v is not None else ("clip", ci), len(ids))
                    for ci, v in enumerate(getattr(r, name) for r in self.records)
                ]
                cols.append(np.asarray(per_clip, dtype=np.int64)[self.pair_clip])
            elif name == "caption":
                texts = self._clean_captions if clean else self.pair_captions
                ids = {}
                cols.append(np.array([ids.setdefault(t, len(ids)) for t in texts], np.int64))
            else:
                raise ValueError(
                    f"unknown key {name!r}; use 'clip', 'group', 'label' or 'caption'"
                )
        return np.stack(cols, axis=1)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch (random crops and masks depend on ``(seed, epoch, index)``).

        With ``persistent_workers=True`` the workers keep their own copy of the dataset;
        leave that off when calling this.
        """
        self.epoch = int(epoch)

    @property
    def collate_fn(self) -> AudioTextCollator:
        """The collate function for this dataset's items and padding policy."""
        length = None
        if self.config.pad_to == "max":
            length = self.config.max_samples
            if self.output == "features":
                length = int(self.config.frames_for(length))
        return AudioTextCollator(pad_to_length=length)

    # -- items ------------------------------------------------------------------------------

    def _generator(self, index: int) -> torch.Generator:
        state = np.random.SeedSequence([self.seed, self.epoch, int(index)]).generate_state(2)
        g = torch.Generator()
        g.manual_seed(int(state[0]) << 32 | int(state[1]))
        return g

    def _features(self, path: Path) -> torch.Tensor:
        if self._frontend is None:
            self._frontend = LogMelFrontEnd(self.config)

        def compute() -> torch.Tensor:
            wave = load_audio(path, self.config.sample_rate)
            with torch.no_grad():
                return self._frontend(wave)

        if self.cache is None:
            return compute()
        return self.cache.get_or_compute(path, compute)

    def load_clip(self, clip_index: int, generator: torch.Generator | None = None):
        """Return ``(audio, length, offset)`` of a clip after the crop policy.

        ``audio`` is a waveform ``[T]`` or features ``[n_mels, n_frames]``; ``offset`` is the
        crop start in samples or frames.

        Raises:
            AudioLoadError: If the audio cannot be used.
        """
        path = resolve_audio_path(self.records[clip_index], self.root)
        mode = self.config.train_crop if self.train else self.config.eval_crop
        limit = self.config.max_samples
        if self.output == "waveform":
            audio = load_audio(path, self.config.sample_rate)
        else:
            audio = self._features(path)
            if limit is not None:
                limit = int(self.config.frames_for(limit))
        audio, offset = crop_waveform(audio, limit, mode, generator)
        length = audio.shape[-1]
        if self.output == "features" and self.train and self.spec_augment is not None:
            self.spec_augment.train()
            audio = self.spec_augment(audio, torch.tensor(length), generator=generator)
        return audio.contiguous(), length, offset

    def __getitem__(self, index: int) -> dict[str, Any] | SkippedItem:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        if self.view == "pairs":
            clip_index, caption_index = self.pairs[index]
        else:
            clip_index, caption_index = index, -1
        rec = self.records[clip_index]
        g = self._generator(index) if self.train else None
        try:
            audio, length, offset = self.load_clip(clip_index, g)
        except AudioLoadError as e:
            self.skip_report.add_error(e)
            return SkippedItem(index, e.reason, e.path, e.detail)
        item: dict[str, Any] = {
            "index": index,
            "clip_index": clip_index,
            "caption_index": caption_index,
            "clip_id": rec.clip_id,
            "label": rec.label,
            "audio": audio,
            "length": length,
            "offset": offset,
        }
        if self.view == "pairs":
            item["caption"] = self.pair_captions[index]
            item["corrupted"] = bool(self.noise.corrupted[index]) if self.noise else False
        else:
            item["captions"] = rec.captions
        return item


class AudioTextCollator:
    """Batch items of :class:`AudioCaptionDataset`, dropping :class:`SkippedItem` entries.

    Audio is zero-padded on the right to the longest item (or to ``pad_to_length``). The
    batch is a dict with tensors ``audio`` (``[B, T]`` or ``[B, n_mels, n_frames]``),
    ``lengths``, ``index``, ``clip_index``, ``caption_index``, ``offset`` and (pairs view)
    ``corrupted``; lists ``caption`` (pairs view) or ``captions`` (clips view),
    ``clip_id``, ``label``; and ``skipped``, the ``(reason, path)`` of dropped items. When
    every item failed, ``audio`` has batch size 0: skip such a batch.

    Args:
        pad_to_length: Fixed padded length (samples or frames), or None for the batch's
            longest item.
    """

    def __init__(self, pad_to_length: int | None = None) -> None:
        self.pad_to_length = pad_to_length

    def __call__(self, items: list[dict[str, Any] | SkippedItem]) -> dict[str, Any]:
        """Collate ``items`` (a list from the dataset) into one batch dict."""
        skipped = [(it.reason, it.path) for it in items if isinstance(it, SkippedItem)]
        good = [it for it in items if not isinstance(it, SkippedItem)]
        if not good:
            return {"audio": torch.zeros(0, 0), "lengths": torch.zeros(0, dtype=torch.long),
                    "index": torch.zeros(0, dtype=torch.long), "clip_index":
                    torch.zeros(0, dtype=torch.long), "skipped": skipped}
        audio, lengths = pad_right([it["audio"] for it in good], self.pad_to_length)
        batch: dict[str, Any] = {"audio": audio, "lengths": lengths, "skipped": skipped}
        for k in ("index", "clip_index", "caption_index", "offset"):
            batch[k] = torch.tensor([it[k] for it in good], dtype=torch.long)
        for k in ("clip_id", "label"):
            batch[k] = [it[k] for it in good]
        if "caption" in good[0]:
            batch["caption"] = [it["caption"] for it in good]
            batch["corrupted"] = torch.tensor([it["corrupted"] for it in good])
        else:
            batch["captions"] = [it["captions"] for it in good]
        return batch

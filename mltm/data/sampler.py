"""Batch sampler whose batches never hold two captions of the same clip.

Contrastive, triplet and OT losses treat every off-diagonal pair of a batch as a negative.
When a clip has several captions (Clotho: 5 per clip in training) and two of them land in
the same batch, the reference code scores a correct audio-caption pair as a negative (a
false negative). :class:`UniqueClipBatchSampler` prevents that. It can also keep other keys
unique (give it ``[N, K]`` keys, e.g. ``dataset.pair_keys(("clip", "caption"))``): on
datasets where different clips share a caption text, two identical captions in a batch are
false negatives too.

**Algorithm** (one epoch): shuffle all pair indices with a generator seeded by
``(seed, epoch)``; walk through them, appending each pair to the current batch unless its
clip is already there, in which case the pair waits in a queue; waiting pairs are placed
first, in order, into the next batches. Every pair is yielded exactly once per epoch.

**Remainder**: the last batch may be short, and if waiting pairs are left when the shuffled
list is exhausted (rare: it needs several captions of one clip at the very end), they form
further short batches, each still free of repeated clips. With ``drop_last=True`` every short
batch is dropped, so a few pairs (at most a batch or two) are not seen in that epoch; they
differ from epoch to epoch.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

__all__ = ["UniqueClipBatchSampler"]


class UniqueClipBatchSampler(Sampler[list[int]]):
    """Yield batches of pair indices in which all clips are distinct.

    Use it as ``DataLoader(dataset, batch_sampler=sampler, collate_fn=...)``.

    Args:
        pair_clip: Clip index of each pair (``dataset.pair_clip``), shape ``[N]``; or keys of
            shape ``[N, K]``, each column of which must be unique within a batch.
        batch_size: Pairs per batch.
        seed: Seed; batches depend only on ``(seed, epoch)``.
        shuffle: Shuffle pairs each epoch (False: keep index order, still deferring
            repeated clips).
        drop_last: Drop batches shorter than ``batch_size``.

    Each call of ``iter()`` uses the current epoch and then advances it by one; call
    :meth:`set_epoch` to choose it (e.g. when resuming).

    Raises:
        ValueError: If ``batch_size < 1``, or if ``drop_last`` and some key column has fewer
            distinct values than ``batch_size`` (no full batch is possible).
    """

    def __init__(
        self,
        pair_clip: Sequence[int] | np.ndarray,
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
    ) -> None:
        keys = np.asarray(pair_clip, dtype=np.int64)
        if keys.ndim == 1:
            keys = keys[:, None]
        if keys.ndim != 2:
            raise ValueError("pair_clip must have shape [N] or [N, K]")
        self.keys = keys
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        n_distinct = min(np.unique(keys[:, k]).size for k in range(keys.shape[1]))
        if drop_last and n_distinct < batch_size:
            raise ValueError(
                f"batch_size {batch_size} exceeds the {n_distinct} distinct clips (or keys), "
                "so with drop_last=True no batch would be yielded; lower batch_size"
            )
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.epoch = 0
        self._cache: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch used by the next ``iter()``."""
        self.epoch = int(epoch)

    def batches(self, epoch: int) -> list[list[int]]:
        """Return the batches of ``epoch`` (without advancing the epoch counter)."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        n = self.keys.shape[0]
        if self.shuffle:
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, int(epoch)]))
            order = rng.permutation(n)
        else:
            order = np.arange(n)
        keys = [tuple(row) for row in self.keys.tolist()]
        n_cols = self.keys.shape[1]
        out: list[list[int]] = []
        waiting: deque[int] = deque()
        batch: list[int] = []
        in_batch: list[set[int]] = [set() for _ in range(n_cols)]

        def clashes(j: int) -> bool:
            return any(v in seen for v, seen in zip(keys[j], in_batch, strict=True))

        def add(j: int) -> None:
            batch.append(j)
            for v, seen in zip(keys[j], in_batch, strict=True):
                seen.add(v)

        def close() -> None:
            nonlocal batch, in_batch
            out.append(batch)
            batch, in_batch = [], [set() for _ in range(n_cols)]
            # Waiting pairs go first into the new batch (those that still clash keep waiting).
            for _ in range(len(waiting)):
                j = waiting.popleft()
                if clashes(j) or len(batch) == self.batch_size:
                    waiting.append(j)
                else:
                    add(j)
            if len(batch) == self.batch_size:
                close()

        for j in order.tolist():
            if clashes(j):
                waiting.append(j)
                continue
            add(j)
            if len(batch) == self.batch_size:
                close()
        while waiting:
            close()
        if batch:
            out.append(batch)
        if self.drop_last:
            out = [b for b in out if len(b) == self.batch_size]
        self._cache = (epoch, out)
        return out

    def __iter__(self) -> Iterator[list[int]]:
        epoch = self.epoch
        self.epoch += 1
        yield from (list(b) for b in self.batches(epoch))

    def __len__(self) -> int:
        return len(self.batches(self.epoch))

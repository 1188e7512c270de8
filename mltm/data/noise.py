"""Noisy correspondence: corrupt a fraction of the training pairs, as in the paper.

The paper (§3.3, §5.2) draws, for each of the N training pairs ``(x_i, y_i)``, an independent
``z_i ~ Bernoulli(ξ)`` (the paper writes ``Binomial(N, ξ)`` for the N draws) and, where
``z_i = 1``, replaces the caption ``y_i`` by a random caption ``ỹ_i`` of the training data.
``z`` is only used to build the data, never in training. ``ξ ∈ {0.2, 0.4, 0.6}``.

This module does exactly that, with two precisions the paper leaves open:

* the replacement caption is the **original** caption of another pair drawn uniformly among
  the pairs of a **different clip** (so a corrupted pair is always wrong, and the noise rate
  is the nominal ξ in expectation; the reference code shuffles a contiguous block of the
  first ⌊ξN⌋ captions among themselves, which leaves some pairs correct and corrupts only
  the start of the CSV);
* the corruption is drawn once from ``seed`` and fixed for the whole run (as in the
  reference code), not re-drawn per epoch.

Only training data is ever corrupted: asking for another split raises an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["NoisyCorrespondence", "corrupt_pairs"]


@dataclass(frozen=True, eq=False)
class NoisyCorrespondence:
    """Which training pairs are corrupted and where their captions come from.

    Attributes:
        ratio: The corruption probability ξ.
        seed: The seed the corruption was drawn from.
        corrupted: Boolean mask, shape ``[N]``: ``z_i``.
        source: Pair index whose original caption pair ``i`` now carries, shape ``[N]``
            (``source[i] == i`` where not corrupted).
    """

    ratio: float
    seed: int
    corrupted: np.ndarray
    source: np.ndarray

    @property
    def num_pairs(self) -> int:
        """N, the number of training pairs."""
        return int(self.corrupted.shape[0])

    @property
    def num_corrupted(self) -> int:
        """Number of corrupted pairs."""
        return int(self.corrupted.sum())

    @property
    def empirical_ratio(self) -> float:
        """Fraction of pairs actually corrupted."""
        return self.num_corrupted / max(self.num_pairs, 1)

    def apply(self, captions: Sequence[str]) -> list[str]:
        """Return the captions of the noisy training set.

        Args:
            captions: The original caption of each pair, length N.
        """
        if len(captions) != self.num_pairs:
            raise ValueError(f"got {len(captions)} captions for {self.num_pairs} pairs")
        return [captions[int(j)] for j in self.source]


def corrupt_pairs(
    pair_clip: Sequence[int] | np.ndarray,
    ratio: float,
    seed: int,
    *,
    split: str = "train",
) -> NoisyCorrespondence:
    """Draw the noisy correspondence of a training set.

    Args:
        pair_clip: For each pair, the index of its clip, shape ``[N]`` (pairs of the same clip
            share audio, so a caption moved between them would still be correct).
        ratio: Corruption probability ξ, in ``[0, 1)``.
        seed: Seed of the draw; the same seed gives the same corruption.
        split: The split being corrupted. Anything but ``"train"`` is an error: validation
            and test data are never corrupted.

    Returns:
        The corruption (mask ``z`` and source pair of each caption).

    Raises:
        ValueError: On a non-train split, a ratio outside ``[0, 1)``, or when corruption is
            requested but all pairs belong to a single clip.
    """
    if split != "train":
        raise ValueError(
            f"noisy correspondence is only applied to the training split, not {split!r}: "
            "validation and test data must stay clean"
        )
    ratio = float(ratio)
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"noise ratio must be in [0, 1), got {ratio}")
    clip = np.asarray(pair_clip, dtype=np.int64)
    if clip.ndim != 1:
        raise ValueError("pair_clip must be one-dimensional")
    n = clip.shape[0]
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x6E6F697A]))
    corrupted = rng.random(n) < ratio
    source = np.arange(n, dtype=np.int64)
    idx = np.flatnonzero(corrupted)
    if idx.size:
        if np.unique(clip).size < 2:
            raise ValueError("cannot corrupt pairs: every pair belongs to the same clip")
        # Draw a source pair uniformly among all pairs; redraw those that hit the same clip.
        todo = idx
        while todo.size:
            draw = rng.integers(0, n, size=todo.size)
            ok = clip[draw] != clip[todo]
            source[todo[ok]] = draw[ok]
            todo = todo[~ok]
    corrupted.setflags(write=False)
    source.setflags(write=False)
    return NoisyCorrespondence(ratio=ratio, seed=int(seed), corrupted=corrupted, source=source)

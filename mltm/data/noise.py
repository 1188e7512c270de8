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

from collections.abc import Callable, Sequence
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
    accept: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
) -> NoisyCorrespondence:
    """Draw the noisy correspondence of a training set.

    Args:
        pair_clip: For each pair, the index of its clip, shape ``[N]`` (pairs of the same clip
            share audio, so a caption moved between them would still be correct). May also
            be ``[N, K]`` keys: the source pair must then differ from the corrupted pair in
            every column (e.g. clip and caption text, so that the caption really changes on
            datasets where several clips share a caption).
        ratio: Corruption probability ξ, in ``[0, 1)``.
        seed: Seed of the draw; the same seed gives the same corruption.
        split: The split being corrupted. Anything but ``"train"`` is an error: validation
            and test data are never corrupted.
        accept: Optional extra rule, vectorised: ``accept(pairs, sources)`` returns a boolean
            array saying whether each source may replace each pair's caption (the dataset
            uses it to refuse a text that is one of the corrupted clip's own captions).

    Returns:
        The corruption (mask ``z`` and source pair of each caption).

    Raises:
        ValueError: On a non-train split, a ratio outside ``[0, 1)``, or when a corrupted pair
            has no possible source (e.g. every pair belongs to the same clip).
    """
    if split != "train":
        raise ValueError(
            f"noisy correspondence is only applied to the training split, not {split!r}: "
            "validation and test data must stay clean"
        )
    ratio = float(ratio)
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"noise ratio must be in [0, 1), got {ratio}")
    keys = np.asarray(pair_clip, dtype=np.int64)
    if keys.ndim == 1:
        keys = keys[:, None]
    if keys.ndim != 2:
        raise ValueError("pair_clip must have shape [N] or [N, K]")
    n = keys.shape[0]
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x6E6F697A]))
    corrupted = rng.random(n) < ratio
    source = np.arange(n, dtype=np.int64)
    todo = np.flatnonzero(corrupted)
    # Draw a source pair uniformly among all pairs; redraw those that share a key. Each
    # round succeeds with probability (#valid sources)/N, so 2000 rounds only fail when a
    # pair has (almost) no valid source.
    for _ in range(2000):
        if not todo.size:
            break
        draw = rng.integers(0, n, size=todo.size)
        ok = np.all(keys[draw] != keys[todo], axis=1)
        if accept is not None:
            ok &= np.asarray(accept(todo, draw), dtype=bool)
        source[todo[ok]] = draw[ok]
        todo = todo[~ok]
    if todo.size:
        raise ValueError(
            f"cannot corrupt pair {int(todo[0])}: (almost) every other pair shares its clip "
            "or key (or is refused by `accept`), so there is no caption to replace it with"
        )
    corrupted.setflags(write=False)
    source.setflags(write=False)
    return NoisyCorrespondence(ratio=ratio, seed=int(seed), corrupted=corrupted, source=source)

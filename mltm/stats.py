"""Paired statistics for comparing two training methods: over seeds, and over test queries.

Two methods trained with the same seeds on the same data give paired results, so the
comparisons here are all paired:

* :func:`paired_seed_test` compares the per-seed values of a metric (one number per training
  run): the mean paired difference, the exact sign-flip randomisation test (every one of the
  2^n sign patterns of the n differences, for n ≤ 16) and the paired t interval. The training
  seed is the unit of replication: a claim about a method is a claim about what training it
  gives, so its evidence grows with seeds, not with test queries.
* :func:`clustered_bootstrap` compares per-query outcomes (a hit probability or a rank for each
  test query, S seeds × Q queries per method). It resamples clusters of queries (the queries of
  one clip, one scene source, one class) with replacement, the same resample for both methods
  and every seed, so the interval accounts for the test set being a sample of correlated
  queries and not of independent ones.

    seeds = paired_seed_test(mltm_r1, ntxent_r1)          # per-seed R@1, paired by seed
    seeds.mean, seeds.p_value, seeds.interval
    boot = clustered_bootstrap(mltm_hits, ntxent_hits, clusters=labels, seed=0)
    boot.statistic, boot.interval, boot.p_value

Both are deterministic: the sign-flip test is exact (or, above 16 seeds, drawn from a seeded
generator) and the bootstrap draws from ``numpy.random.default_rng(seed)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["PairedSeedTest", "paired_seed_test", "ClusteredBootstrap", "clustered_bootstrap"]

ALTERNATIVES = ("two-sided", "greater", "less")
# Resamples drawn per block: 1,000 × 2,000 cluster indices is 16 MB of int64.
_BLOCK_CELLS = 2_000_000


@dataclass(frozen=True)
class PairedSeedTest:
    """The paired comparison of two methods' per-seed values (see :func:`paired_seed_test`).

    Attributes:
        n: Number of pairs (seeds).
        mean: Mean paired difference ``mean(a - b)``.
        sd: Standard deviation of the differences (``ddof=1``; ``nan`` for one pair).
        interval: Paired t interval for the mean difference at ``confidence`` (``nan`` bounds
            for one pair).
        confidence: Confidence level of ``interval``.
        p_value: Sign-flip p-value of the requested ``alternative``.
        p_greater: One-sided p-value for ``mean(a - b) > 0``: the share of sign patterns whose
            mean is at least the observed one.
        p_less: One-sided p-value for ``mean(a - b) < 0``.
        alternative: ``"two-sided"``, ``"greater"`` or ``"less"``.
        exact: Whether all 2^n sign patterns were enumerated (otherwise drawn at random).
        n_patterns: Number of sign patterns the p-values are computed from.
    """

    n: int
    mean: float
    sd: float
    interval: tuple[float, float]
    confidence: float
    p_value: float
    p_greater: float
    p_less: float
    alternative: str
    exact: bool
    n_patterns: int

    @property
    def test(self) -> str:
        """The test's name, e.g. ``"exact sign-flip (2^5 patterns), two-sided"``."""
        how = (f"exact sign-flip (2^{self.n} patterns)" if self.exact
               else f"randomised sign-flip ({self.n_patterns:,} random patterns)")
        return f"{how}, {self.alternative}"


def _pairs(a: Sequence[float], b: Sequence[float]) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"paired values must be two 1-d sequences of the same length, got "
                         f"shapes {a.shape} and {b.shape}; pass one value per seed for each method")
    if a.size == 0:
        raise ValueError("no paired values: pass one value per seed for each method")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("paired values contain NaN or infinity; drop or fix those runs first")
    return a - b


def paired_seed_test(a: Sequence[float], b: Sequence[float], *,
                     alternative: str = "two-sided", confidence: float = 0.95,
                     max_exact: int = 16, n_random: int = 100_000,
                     seed: int = 0) -> PairedSeedTest:
    """Compare two methods' per-seed values, paired by seed.

    The sign-flip randomisation test holds the differences ``d_i = a_i - b_i`` fixed and
    asks how often a random choice of signs gives a mean at least as extreme as the observed
    one: under the null hypothesis that the methods are exchangeable within each seed, every
    sign pattern is equally likely. With n ≤ ``max_exact`` pairs all 2^n patterns are
    enumerated (the observed pattern among them), so the p-value is exact and never below
    ``2^(1-n)`` two-sided or ``2^-n`` one-sided. Above ``max_exact`` pairs, ``n_random``
    patterns are drawn from ``numpy.random.default_rng(seed)`` and the p-value is
    ``(1 + count) / (1 + n_random)``.

    The interval is the paired t interval ``mean ± t_{n-1} · sd / √n``: it assumes normal
    differences, the test does not.

    Args:
        a: The first method's value for each seed.
        b: The second method's value for the same seeds, in the same order.
        alternative: ``"two-sided"`` (``P(|T| ≥ |t|)``), ``"greater"`` (``mean(a - b) > 0``)
            or ``"less"``.
        confidence: Level of the t interval.
        max_exact: Largest number of pairs whose 2^n sign patterns are enumerated.
        n_random: Random sign patterns used above ``max_exact`` pairs.
        seed: Seed of the random sign patterns (unused when exact).

    Returns:
        The :class:`PairedSeedTest`.

    Raises:
        ValueError: the values are not two equally long 1-d sequences, are empty or not
            finite, or ``alternative`` or ``confidence`` is invalid.
    """
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    from scipy.stats import t as student_t

    d = _pairs(a, b)
    n = d.size
    mean = float(d.mean())
    if n > 1:
        sd = float(d.std(ddof=1))
        half = float(student_t.ppf(0.5 + confidence / 2, n - 1)) * sd / np.sqrt(n)
        interval = (float(mean - half), float(mean + half))
    else:
        sd, interval = float("nan"), (float("nan"), float("nan"))

    # Means of sign-flipped differences; the sums are elementwise then reduced along the row,
    # so the observed pattern (all +1) gives the same float as every other pattern's sum order.
    observed = float(d.sum() / n)
    # Float ties (e.g. d = (1, 2, 3): +1 +2 -3 and -1 -2 +3 both sum to 0) must count as
    # "as extreme": compare with a tolerance far below any real difference.
    tol = 1e-9 * (float(np.abs(d).sum()) / n + 1e-300)
    exact = n <= max_exact
    if exact:
        bits = (np.arange(2 ** n, dtype=np.int64)[:, None] >> np.arange(n)) & 1
        flipped = ((1 - 2 * bits) * d).sum(axis=1) / n
        ge = int(np.count_nonzero(flipped >= observed - tol))
        le = int(np.count_nonzero(flipped <= observed + tol))
        ab = int(np.count_nonzero(np.abs(flipped) >= abs(observed) - tol))
        total = 2 ** n
        p_greater, p_less, p_two = ge / total, le / total, ab / total
    else:
        rng = np.random.default_rng(seed)
        ge = le = ab = 0
        block = max(1, _BLOCK_CELLS // n)
        for start in range(0, n_random, block):
            m = min(block, n_random - start)
            signs = 1 - 2 * rng.integers(0, 2, size=(m, n))
            flipped = (signs * d).sum(axis=1) / n
            ge += int(np.count_nonzero(flipped >= observed - tol))
            le += int(np.count_nonzero(flipped <= observed + tol))
            ab += int(np.count_nonzero(np.abs(flipped) >= abs(observed) - tol))
        total = n_random
        p_greater, p_less, p_two = ((1 + c) / (1 + n_random) for c in (ge, le, ab))
    p_value = {"two-sided": p_two, "greater": p_greater, "less": p_less}[alternative]
    return PairedSeedTest(n=n, mean=mean, sd=sd, interval=interval, confidence=confidence,
                          p_value=float(p_value), p_greater=float(p_greater),
                          p_less=float(p_less), alternative=alternative, exact=exact,
                          n_patterns=total)


@dataclass(frozen=True)
class ClusteredBootstrap:
    """The paired clustered bootstrap of a mean difference (see :func:`clustered_bootstrap`).

    Attributes:
        statistic: Mean of ``a - b`` over all seeds and queries.
        interval: Percentile interval of the bootstrap replicates at ``confidence``.
        confidence: Level of ``interval``.
        p_value: Two-sided bootstrap p-value, ``2 · min(P*(θ* ≤ 0), P*(θ* ≥ 0))`` with the
            observed value counted among the replicates (at most 1): the smallest
            ``1 - confidence`` at which the percentile interval excludes 0.
        n_resamples: Number of bootstrap replicates.
        n_seeds: Seeds (rows) in the inputs.
        n_queries: Queries (columns) in the inputs.
        n_clusters: Distinct clusters resampled.
    """

    statistic: float
    interval: tuple[float, float]
    confidence: float
    p_value: float
    n_resamples: int
    n_seeds: int
    n_queries: int
    n_clusters: int


def clustered_bootstrap(a, b, clusters: Sequence | None = None, *, n_resamples: int = 10_000,
                        confidence: float = 0.95, seed: int = 0) -> ClusteredBootstrap:
    """Paired bootstrap of ``mean(a - b)`` over test queries, resampling whole clusters.

    ``a`` and ``b`` hold each query's outcome (a hit probability, an average precision, a rank)
    under two methods, one row per training seed, the same queries in the same order in every
    row. Each replicate draws as many clusters as there are, with replacement, and takes the
    mean of ``a - b`` over all seeds and all queries of the drawn clusters (a cluster drawn twice
    counts twice). The draw is the same for ``a`` and ``b`` and for every seed, which is what
    makes the bootstrap paired: the per-query differences are resampled, so what the two
    methods share (a query's difficulty, a seed's luck on it) cancels.

    Queries of one cluster (the captions of one clip, the scenes built from one source, one
    class) are correlated; resampling them one by one would treat them as independent and give
    too narrow an interval. Cluster sizes may differ: the replicate is the ratio of the drawn
    clusters' summed differences to their number of queries.

    Args:
        a: Outcomes of the first method, shape ``(seeds, queries)`` or ``(queries,)``.
        b: Outcomes of the second method, the same shape, paired entry by entry.
        clusters: A cluster id (any hashable, sortable value) for each query; ``None`` makes
            every query its own cluster.
        n_resamples: Number of bootstrap replicates.
        confidence: Level of the percentile interval.
        seed: Seed of the ``numpy.random.default_rng`` generator that draws the clusters.

    Returns:
        The :class:`ClusteredBootstrap`.

    Raises:
        ValueError: the shapes of ``a``, ``b`` and ``clusters`` disagree, outcomes are not
            finite, or ``n_resamples`` or ``confidence`` is invalid.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples!r}")
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim == 1 and b.ndim == 1:
        a, b = a[None], b[None]
    if a.ndim != 2 or a.shape != b.shape or a.shape[1] == 0:
        raise ValueError(f"per-query outcomes must be two arrays of shape (seeds, queries) with "
                         f"at least one query, got {np.shape(a)} and {np.shape(b)}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("per-query outcomes contain NaN or infinity; fix the runs that wrote "
                         "them")
    n_seeds, n_queries = a.shape
    if clusters is None:
        inverse = np.arange(n_queries)
    else:
        clusters = np.asarray(clusters)
        if clusters.shape != (n_queries,):
            raise ValueError(f"clusters must give one id per query ({n_queries}), got shape "
                             f"{clusters.shape}")
        inverse = np.unique(clusters, return_inverse=True)[1].reshape(-1)
    n_clusters = int(inverse.max()) + 1

    # The same cluster draw for every seed: averaging over seeds first gives the identical
    # statistic for every replicate, at 1/S of the cost.
    per_query = (a - b).mean(axis=0)
    statistic = float(per_query.mean())
    sums = np.bincount(inverse, weights=per_query, minlength=n_clusters)
    sizes = np.bincount(inverse, minlength=n_clusters).astype(np.float64)

    rng = np.random.default_rng(seed)
    replicates = np.empty(n_resamples)
    block = max(1, _BLOCK_CELLS // n_clusters)
    for start in range(0, n_resamples, block):
        stop = min(start + block, n_resamples)
        drawn = rng.integers(0, n_clusters, size=(stop - start, n_clusters))
        replicates[start:stop] = sums[drawn].sum(axis=1) / sizes[drawn].sum(axis=1)

    lo, hi = np.quantile(replicates, [0.5 - confidence / 2, 0.5 + confidence / 2])
    below = 1 + int(np.count_nonzero(replicates <= 0))
    above = 1 + int(np.count_nonzero(replicates >= 0))
    p_value = min(1.0, 2 * min(below, above) / (1 + n_resamples))
    return ClusteredBootstrap(statistic=statistic, interval=(float(lo), float(hi)),
                              confidence=confidence, p_value=p_value, n_resamples=n_resamples,
                              n_seeds=n_seeds, n_queries=n_queries, n_clusters=n_clusters)

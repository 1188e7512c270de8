"""Hubness of a ranking: how often each gallery item is some query's top match.

In a ranking by distance, a *hub* is a gallery item that is near to many queries at once: a
caption that many clips rank first (Radovanović et al. 2010). The **k-occurrence** N_k(j) of
gallery item j is the number of queries that put j in their top k; with Q queries and G
gallery items its mean is ``k·Q/G`` whatever the ranking, so hubness shows in its spread:

* :func:`k_occurrence`: N_k of every gallery item from a (Q, G) score matrix, ties shared;
* :func:`skewness`: the standardised third moment of N_k (0 for a symmetric spread; large
  and positive when a few items collect most of the top ranks);
* :func:`hub_share`: the share of all top-k slots taken by the top ``fraction`` of items;
* :func:`hubness_summary`: these numbers for one ranking, as a dict.

A ranking by a transport plan with uniform column marginals (``mltm.retrieval``,
``rank_by="plan"``) gives every gallery item the same total mass, which bounds how much of
the queries' mass it can collect; ``book/chapters/invariance.md`` compares the two rankings.
"""

from __future__ import annotations

import math

import torch

__all__ = ["k_occurrence", "skewness", "hub_share", "hubness_summary"]


def k_occurrence(scores: torch.Tensor, k: int = 1) -> torch.Tensor:
    """N_k of each gallery item: the number of queries (rows) that rank it in their top k.

    Higher scores rank first. Ties are shared: in a row whose k-th best score is tied by t
    items of which only s fit in the top k, each of the t items counts s/t. So every row
    contributes exactly k, the counts sum to ``k·Q``, and the result does not depend on
    how a sort would break the ties.

    Args:
        scores: (Q, G) float scores, one row per query (no NaN).
        k: The cut-off, 1 <= k <= G.

    Returns:
        (G,) float64 counts.

    Raises:
        ValueError: for a non-2-D or non-float ``scores``, a NaN, or ``k`` outside [1, G].
    """
    if not isinstance(scores, torch.Tensor) or scores.ndim != 2 or not scores.is_floating_point():
        raise ValueError("scores must be a 2-D float tensor (queries x gallery); got "
                         f"{type(scores).__name__} {tuple(getattr(scores, 'shape', ()))}")
    G = scores.shape[1]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= G:
        raise ValueError(f"k must be an integer in [1, {G}] (the gallery size); got {k!r}")
    if torch.isnan(scores).any():
        raise ValueError("scores contain NaN; rank finite (or -inf) scores only")
    S = scores.detach()
    kth = S.topk(k, dim=1).values[:, -1:]            # the k-th best score of each row
    above = S > kth
    tied = S == kth
    free = k - above.sum(1, keepdim=True)            # top-k slots left for the tied items
    share = free.double() / tied.sum(1, keepdim=True).double()
    return above.double().sum(0) + (tied.double() * share).sum(0)


def skewness(counts: torch.Tensor) -> float:
    """Population skewness ``E[(N - μ)³] / σ³`` of the counts (0 when all are equal).

    The hubness literature's ``S_{N_k}``; equals ``scipy.stats.skew(counts)``.
    """
    c = torch.as_tensor(counts, dtype=torch.float64).flatten()
    if c.numel() == 0:
        raise ValueError("skewness of an empty set of counts")
    d = c - c.mean()
    var = d.square().mean()
    if var == 0:
        return 0.0
    return float(d.pow(3).mean() / var.pow(1.5))


def hub_share(counts: torch.Tensor, fraction: float = 0.01) -> float:
    """Share of all occurrences held by the ``ceil(fraction · G)`` most frequent items.

    With no hubs it is close to ``fraction`` (1 % of the items hold about 1 % of the top-k
    slots); with one caption first for every query it is 1.
    """
    c = torch.as_tensor(counts, dtype=torch.float64).flatten()
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1]; got {fraction}")
    total = float(c.sum())
    if total <= 0:
        raise ValueError("hub_share needs counts with a positive total")
    top = max(1, math.ceil(fraction * c.numel()))
    return float(c.sort(descending=True).values[:top].sum()) / total


def hubness_summary(scores: torch.Tensor, k: int = 1, fraction: float = 0.01) -> dict:
    """``{"skewness", "top share", "max", "never", "mean"}`` of the k-occurrence of ``scores``.

    ``top share`` is :func:`hub_share` at ``fraction``; ``max`` the largest N_k; ``never``
    the share of gallery items that are in no query's top k; ``mean`` the mean N_k (k·Q/G).
    """
    counts = k_occurrence(scores, k)
    return {"skewness": skewness(counts), "top share": hub_share(counts, fraction),
            "max": float(counts.max()), "never": float((counts == 0).double().mean()),
            "mean": float(counts.mean())}

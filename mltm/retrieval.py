"""Audio-text retrieval evaluation: recall, ranks, mAP@k, plan ranking, zero-shot, gap, t-SNE.

Protocol (the paper's, after Mei et al. 2022; several captions per clip):

- **a2t**: every audio clip ranks all M captions; its relevant items are its own captions; its
  rank is the best (smallest) rank among them.
- **t2a**: every caption ranks all N clips; the relevant item is its clip.
- R@k is the percentage of queries whose best relevant item is in the top k; medR and meanR
  are 1-based, ``medR = floor(median(rank))`` and ``meanR = mean(rank)`` with ``rank`` the
  1-based rank, as the released code (and Mei's) compute them (they write
  ``floor(median(rank0)) + 1`` and ``mean(rank0) + 1``, the same numbers up to rounding).
- mAP@k (Mei et al.): for a query with relevant items at 1-based ranks r_1 < r_2 < ...,
  ``AP@k = sum_{j : r_j <= k} (j / r_j) / n_relevant``. For a2t with 5 GT captions this is
  divided by 5; for t2a (one GT clip) it is ``1/r_1`` if ``r_1 <= k`` else 0, i.e. MRR@k.
  Reported in percent, like the recalls.

**Two rankings.** ``rank_by="distance"`` ranks by ``-cost`` (the paper's eq. 2 rule for
contrastive models). ``rank_by="plan"`` is the paper's transductive rule (eq. 5), which the
released code uses for every m-LTM number: one N×M cost matrix between all test clips and all
captions, the entropic OT plan between uniform marginals ``a = 1/N`` and ``b = 1/M``
(:func:`mltm.ot.sinkhorn`), a2t ranks the rows of the plan and t2a its columns. The released
code runs POT's Sinkhorn for only 10 iterations (``numItermax=10``) on the cost divided by its
maximum with ``reg=0.03`` (0.05 for ESC-50); here the default is a converged plan
(``tol=1e-6``), and ``sinkhorn_kwargs=dict(max_iter=10, tol=None, cost_normalization="max")``
with ``eps=0.03`` re-creates the released rule. Ranking uses the log plan
``-C/eps + log_u_i + log_v_j`` (the solver's own scalings), which orders items exactly like the
plan but never underflows to ties at 0. At small ``eps`` (cost gaps above ~36·eps) the plan
saturates instead: a caption whose whole column mass sits on one clip gets ``P_ij = b_j``
up to rounding, so such captions tie within that clip's row and rounding orders them (as in
the reference). With cosine costs in [0, 2] this can only happen for ``eps`` below ~0.05.

**Hubness-corrected rankings** (:mod:`mltm.rankings`): ``rank_by="csls"``,
``"inverted_softmax"`` and ``"plan_reference"``; the last is the plan made inductive (the
gallery's potentials solved against reference queries, e.g. the validation split, passed in
``ranking_kwargs``), so that a query's ranking no longer depends on the other test queries.

**Ties** (equal scores: duplicated caption strings, identical embeddings, a saturated plan)
are resolved by the rule ``ties``; on tie-free scores all three rules give the same numbers
(the reference's ``argsort`` order), while with ties the reference's order is arbitrary.

- ``"expected"`` (default): every metric is its exact expectation over a uniformly random
  order of each group of tied items (McSherry & Najork 2008, "Computing information retrieval
  performance measures efficiently in the presence of tied scores", ECIR), computed in
  closed form, not by sampling. Take a query's best relevant score, ``a`` gallery items
  strictly above it and a tie group of ``t`` items at it, ``m`` of them relevant. The first
  relevant item of the group sits at position ``(t + 1)/(m + 1)`` in expectation, so the
  expected 0-based rank is ``a + (t - m)/(m + 1)``; the hit probability is
  ``P(hit@k) = 1 - C(t - m, j)/C(t, j)`` with ``j = k - a`` clipped to [0, t]. R@k is
  100 × the mean of the hit probabilities, meanR the mean of the expected 1-based ranks,
  and **medR the floored median of the expected ranks** (not the expected median, which has
  no closed form; equal to it on tie-free scores). AP@k is linear in the relevant items: a
  relevant item whose tie group has ``t`` items, ``m`` relevant, below ``a`` items of which
  ``b`` are relevant, sits at a uniform position p in 1..t of its group (rank ``a + p``) with
  a hypergeometric number of relevant items before it there, of mean
  ``(p - 1)(m - 1)/(t - 1)``, so it adds
  ``(1/t) sum_{p=1}^{min(t, k - a)} (b + 1 + (p - 1)(m - 1)/(t - 1)) / (a + p)`` to the sum
  over j/r_j.
- ``"optimistic"``: a tied relevant item comes before the tied non-relevant ones (the rank is
  the number of items scoring *strictly* higher). This package's rule before the tie-aware
  metrics; it counts every caption tied with a duplicate of the right one as a hit.
- ``"pessimistic"``: a tied relevant item comes after every tied non-relevant one.

The optimistic and pessimistic numbers bracket the expected ones. The result names the rule
(``"ties"``) and the number of distinct captions (``"num_distinct_captions"``), which is where
ties come from on sets whose captions repeat.

**Galleries beyond memory.** :func:`plan_topk` gives the same plan ranking (eq. 5) as top-k
lists without any N×M matrix: the dual potentials come from
:func:`mltm.ot.streamed_sinkhorn_potentials` (cost blocks recomputed from the embeddings,
log-sum-exp accumulated block by block), and the top k of each query's log plan
``-C_ij/eps + log_u_i + log_v_j`` are then taken block by block, so memory is
O((N + M) d + Q k) plus one block (20,000 × 100,000 at d = 64 takes a few hundred MB where
the dense plan ranking would need three 8 GB matrices). Top-k lists cannot carry a tie rule:
tied scores inside them are ordered as :func:`torch.topk` orders them (unspecified); the
returned scores show where ties are.

**Memory** is linear in the gallery plus at most one N×M cost/score matrix: the cost is built
in row chunks (:func:`pairwise_cost`, never an n×m×d tensor), turned into scores in place,
and ranked in row chunks of about 4M entries (a2t on rows, t2a on the transposed view, no
copy). With ``rank_by="plan"`` the Sinkhorn solver holds a few N×M work matrices
(its kernel and the plan) while it runs; they are freed before ranking. AudioCaps test
(957 × 4785) is 18 MB per float32 matrix; the released code's float64 N×5N×1024 cost
tensors needed ~37 GB each.
"""

from __future__ import annotations

import math
from typing import Callable, Literal, NamedTuple, Sequence

import numpy as np
import torch

from mltm.costs import cosine_distance, cosine_distance_normalized
from mltm.numerics import round_to_grid
from mltm.ot import sinkhorn_log
from mltm.ot.streamed import StreamedSinkhornResult, streamed_sinkhorn_potentials
from mltm.rankings import csls_scores, inverted_softmax_scores, plan_scores

__all__ = [
    "pairwise_cost",
    "ranks_from_scores",
    "average_precision_at_k",
    "retrieval_metrics",
    "plan_topk",
    "PlanTopK",
    "zero_shot_classification",
    "prompt_for",
    "modality_gap",
    "tsne_coordinates",
]

Cost = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
RankBy = Literal["distance", "plan", "csls", "inverted_softmax", "plan_reference"]

# Rows of a score matrix ranked at once: chunk_rows * gallery_size stays below this.
_RANK_CHUNK_ELEMENTS = 1 << 22
_DEFAULT_SINKHORN = {"tol": 1e-6, "max_iter": 100_000}

# How tied scores are ranked (see "Ties" in the module docstring).
Ties = Literal["expected", "optimistic", "pessimistic"]
_TIES = ("expected", "optimistic", "pessimistic")


def _shape(t: torch.Tensor) -> str:
    return str(tuple(t.shape))


def _check_embeddings(x, name: str, rows: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(
            f"{name} must be a torch.Tensor; got {type(x).__name__}. Use torch.as_tensor({name})."
        )
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape ({rows}, d); got shape {_shape(x)}.")
    if x.shape[0] == 0:
        raise ValueError(f"{name} must be non-empty; got shape {_shape(x)}.")
    if not x.is_floating_point():
        raise ValueError(
            f"{name} must be a float tensor; got {x.dtype}. Convert it with {name}.float()."
        )


def _check_pair(x, y, xname: str, yname: str, xrows: str, yrows: str) -> None:
    _check_embeddings(x, xname, xrows)
    _check_embeddings(y, yname, yrows)
    if x.shape[1] != y.shape[1]:
        raise ValueError(
            f"{xname} and {yname} must have the same embedding size; got d={x.shape[1]} and "
            f"d={y.shape[1]}. Project both modalities into the shared space first."
        )
    if x.device != y.device:
        raise ValueError(
            f"{xname} and {yname} must be on the same device; got {x.device} and {y.device}. "
            f"Move one with .to()."
        )


def pairwise_cost(
    cost: Cost, x: torch.Tensor, y: torch.Tensor, *, chunk_size: int = 1024
) -> torch.Tensor:
    """The full cost matrix ``cost(x, y)``, shape (n, m), computed in row chunks of ``x``.

    ``cost`` is called on ``(x[i:i+chunk_size], y)`` under :func:`torch.no_grad`, so the
    memory is the (n, m) output plus one (chunk_size, m) block (and whatever ``cost`` needs
    for one block); no n×m×d tensor is formed unless ``cost`` itself forms a chunk×m×d one.

    Args:
        cost: Callable ``(x (c, d), y (m, d)) -> (c, m)`` distances (smaller = more similar),
            e.g. :func:`mltm.costs.cosine_distance` or a learned Mahalanobis distance.
        x: Row embeddings, shape (n, d).
        y: Column embeddings, shape (m, d).
        chunk_size: Rows of ``x`` per call.

    Raises:
        ValueError: for non-2-D inputs, mismatched ``d`` or devices, a non-positive
            ``chunk_size``, or a ``cost`` returning the wrong shape or a non-float tensor.
    """
    _check_pair(x, y, "x", "y", "n", "m")
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer; got {chunk_size!r}.")
    n, m = x.shape[0], y.shape[0]
    out = None
    with torch.no_grad():
        for start in range(0, n, chunk_size):
            block = cost(x[start : start + chunk_size], y)
            rows = min(chunk_size, n - start)
            if not isinstance(block, torch.Tensor) or tuple(block.shape) != (rows, m):
                got = _shape(block) if isinstance(block, torch.Tensor) else type(block).__name__
                raise ValueError(
                    f"cost(x, y) must return a tensor of shape (x rows, y rows) = ({rows}, {m}); "
                    f"got {got}. Write the cost for 2-D inputs x (n, d), y (m, d)."
                )
            if not block.is_floating_point():
                raise ValueError(f"cost(x, y) must return a float tensor; got {block.dtype}.")
            if out is None:
                out = torch.empty(n, m, dtype=block.dtype, device=block.device)
            out[start : start + rows] = block
    return out


# ---------------------------------------------------------------------------------------------
# Ranks and average precision, with ties resolved by a rule


class _Outcomes(NamedTuple):
    """Per-query tie structure of the best relevant item, and AP@k (see :func:`_rank_core`)."""

    above: torch.Tensor  # (Q,) long: gallery items strictly above the best relevant score
    tied: torch.Tensor  # (Q,) long: items at that score, the relevant ones included
    tied_relevant: torch.Tensor  # (Q,) long: relevant items at that score (>= 1)
    ap: torch.Tensor | None  # (Q,) float64 AP@k under the rule, or None


def _check_ties(ties) -> None:
    if ties not in _TIES:
        raise ValueError(
            f"ties must be 'expected', 'optimistic' or 'pessimistic'; got {ties!r}. 'expected' "
            "averages over random tie-breaking (the default)."
        )


def _rank_core(
    scores: torch.Tensor,
    relevant_rows: Callable[[int, int], torch.Tensor],
    k: int | None,
    ties: str = "expected",
) -> _Outcomes:
    """Tie structure of each query's best relevant item and, if ``k``, AP@k, in row chunks.

    ``relevant_rows(s, e)`` returns the (e - s, G) boolean relevance of queries s..e-1.
    """
    Q, G = scores.shape
    dev = scores.device
    above = torch.empty(Q, dtype=torch.long, device=dev)
    tied = torch.empty(Q, dtype=torch.long, device=dev)
    tied_relevant = torch.empty(Q, dtype=torch.long, device=dev)
    ap = torch.empty(Q, dtype=torch.float64, device=dev) if k is not None else None
    rows = max(1, _RANK_CHUNK_ELEMENTS // max(G, 1))
    for s in range(0, Q, rows):
        e = min(Q, s + rows)
        S = scores[s:e]
        R = relevant_rows(s, e)
        if not bool(torch.isfinite(S).all()):
            raise ValueError(
                "scores contain non-finite values (NaN or inf); check the embeddings and the cost."
            )
        n_rel = R.sum(1)
        empty = (n_rel == 0).nonzero()
        if empty.numel():
            q = s + int(empty[0, 0])
            raise ValueError(
                f"query {q} has no relevant item (row {q} of relevant is all False); every "
                "query needs at least one relevant gallery item."
            )
        S_rel = S.masked_fill(~R, -math.inf)  # scores are finite: -inf marks "not relevant"
        best = S_rel.amax(1, keepdim=True)
        above[s:e] = (S > best).sum(1)
        tied[s:e] = (S == best).sum(1)
        tied_relevant[s:e] = (S_rel == best).sum(1)
        if k is not None:
            ap[s:e] = _ap_chunk(S, S_rel, n_rel, k, ties)
    return _Outcomes(above, tied, tied_relevant, ap)


def _ap_chunk(S: torch.Tensor, S_rel: torch.Tensor, n_rel: torch.Tensor, k: int,
              ties: str) -> torch.Tensor:
    """AP@k (Mei's normalisation) of a chunk of queries under the tie rule ``ties``.

    Every relevant item lies in a tie group (its score level) of ``t`` items, ``m`` of them
    relevant, below ``a`` items of which ``b`` are relevant. Placed ``i``-th among the relevant
    items of its group (i = 1..m), it has rank ``r = a + i`` (optimistic) or ``a + t - m + i``
    (pessimistic) and ``b + i`` relevant items up to it. Under random tie-breaking it sits at a
    uniform position p in 1..t of its group, with a hypergeometric number of relevant items
    before it there, of mean ``(p - 1)(m - 1)/(t - 1)``; as AP is linear in that number,
    ``E[(j/r) 1{r <= k}] = (1/t) sum_{p=1}^{min(t, k-a)} (b + 1 + (p-1)(m-1)/(t-1)) / (a + p)``
    exactly (McSherry & Najork 2008).

    Each item's term is added into column ``min(a + i, k) - 1`` of a (c, k) matrix (its
    optimistic position) and the rows are summed, which on tie-free scores (and with the
    optimistic rule on any scores) adds the same numbers in the same order as summing j/r
    over the sorted top k.
    """
    c, G = S.shape
    kk = min(k, G)
    f64 = torch.float64
    U = int(n_rel.max())
    level = S_rel.topk(U, dim=1).values  # each query's relevant scores, best first (-inf pads)
    # Only items above the k-th best score can reach the top k, so the counts of items above
    # and tied with a relevant score need only the top k, plus all items tied at the k-th.
    top = S.topk(kk, dim=1).values  # descending
    kth = top[:, -1:]
    a = (top[:, None, :] > level[:, :, None]).sum(-1)
    t = torch.where(level == kth, (S == kth).sum(1, keepdim=True),
                    (top[:, None, :] == level[:, :, None]).sum(-1))
    reachable = level >= kth  # below the k-th score: a >= k, no contribution
    ascending = level.flip(1).contiguous()
    hi = torch.searchsorted(ascending, level, right=True)
    b = U - hi  # relevant items strictly above
    m = hi - torch.searchsorted(ascending, level, right=False)  # relevant items tied
    u = torch.arange(U, device=S.device)
    valid = (u[None, :] < n_rel[:, None]) & reachable
    i = u[None, :] - b + 1  # place among the relevant items of its tie group, 1..m
    slot = a + i - 1
    if ties == "expected":
        p_max = torch.minimum((k - a).clamp(min=0), t)
        hyper = (m - 1).to(f64) / (t - 1).clamp(min=1).to(f64)
        total = torch.zeros(c, U, dtype=f64, device=S.device)
        p_top = int(p_max[valid].max()) if bool(valid.any()) else 0
        for p in range(1, p_top + 1):
            term = (b.to(f64) + 1 + (p - 1) * hyper) / (a + p).to(f64)
            total = total + torch.where(p <= p_max, term, 0.0)
        value = total / t.clamp(min=1).to(f64)
        keep = valid & (p_max > 0)
    else:
        r = a + i if ties == "optimistic" else a + t - m + i
        value = (b + i).to(f64) / r.to(f64)
        keep = valid & (r <= k)
        slot = r - 1
    value = torch.where(keep, value, 0.0)
    per_position = torch.zeros(c, kk, dtype=f64, device=S.device)
    per_position.scatter_add_(1, slot.clamp(0, kk - 1), value)
    return per_position.sum(1) / n_rel.to(f64)


def _best_rank(o: _Outcomes, ties: str) -> torch.Tensor:
    """0-based rank of the best relevant item: exact (long) or expected (float64)."""
    if ties == "optimistic":
        return o.above.clone()
    if ties == "pessimistic":
        return o.above + o.tied - o.tied_relevant
    # The first of m relevant items among t tied ones sits at (t + 1)/(m + 1) in expectation.
    return o.above.to(torch.float64) + (o.tied - o.tied_relevant).to(torch.float64) / (
        o.tied_relevant + 1
    ).to(torch.float64)


def _hit_probability(o: _Outcomes, k: int, ties: str) -> torch.Tensor:
    """P(best relevant item in the top k), float64 (Q,): 0/1 unless ties are averaged."""
    f64 = torch.float64
    if ties != "expected":
        return (_best_rank(o, ties) < k).to(f64)
    # 1 - C(t - m, j)/C(t, j) with j = k - above clipped to [0, t]: the chance that not all of
    # the first j places of the tie group go to non-relevant items. The ratio is the product
    # prod_{i<j} (t - m - i)/(t - i), exact for j = 0 (1) and j > t - m (a factor 0).
    t, m = o.tied, o.tied_relevant
    j = torch.minimum((k - o.above).clamp(min=0), t)
    miss = torch.ones(j.shape, dtype=f64, device=j.device)
    for i in range(int(j.max()) if j.numel() else 0):
        factor = (t - m - i).clamp(min=0).to(f64) / (t - i).clamp(min=1).to(f64)
        miss = miss * torch.where(i < j, factor, 1.0)
    return 1.0 - miss


def _check_scores_relevant(scores, relevant) -> None:
    if not isinstance(scores, torch.Tensor) or scores.ndim != 2:
        got = _shape(scores) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ValueError(f"scores must be a 2-D tensor of shape (Q, G); got {got}.")
    if not scores.is_floating_point():
        raise ValueError(f"scores must be a float tensor; got {scores.dtype}.")
    if not isinstance(relevant, torch.Tensor) or relevant.dtype != torch.bool:
        got = relevant.dtype if isinstance(relevant, torch.Tensor) else type(relevant).__name__
        raise ValueError(
            f"relevant must be a bool tensor; got {got}. Build it with a comparison, e.g. "
            "labels[:, None] == gallery[None, :]."
        )
    if relevant.shape != scores.shape:
        raise ValueError(
            f"relevant must have the shape of scores {_shape(scores)}; got {_shape(relevant)}."
        )


def ranks_from_scores(
    scores: torch.Tensor, relevant: torch.Tensor, *, ties: Ties = "expected"
) -> torch.Tensor:
    """0-based rank of each query's best-ranked relevant item (higher score = better).

    With ``a`` gallery items scoring strictly above the query's best relevant score and a
    tie group of ``t`` items at that score, ``m`` of them relevant:

    - ``ties="expected"`` (default): ``a + (t - m)/(m + 1)``, the mean over random
      tie-breaking (the first of m relevant items among t sits at ``(t + 1)/(m + 1)``);
    - ``"optimistic"``: ``a`` (a tied relevant item comes first);
    - ``"pessimistic"``: ``a + t - m`` (after every tied non-relevant item).

    On tie-free scores all three equal the position in a descending argsort, as in the
    reference code.

    Args:
        scores: (Q, G) float scores.
        relevant: (Q, G) bool, True where gallery item g is relevant to query q.
        ties: The tie rule.

    Returns:
        (Q,) on ``scores``' device: float64 for ``"expected"`` (fractional under ties),
        LongTensor for the other two rules.

    Raises:
        ValueError: for shape/dtype mismatches, non-finite scores, a query with no
            relevant item, or an unknown ``ties``.
    """
    _check_scores_relevant(scores, relevant)
    _check_ties(ties)
    o = _rank_core(scores, lambda s, e: relevant[s:e].to(scores.device), None)
    return _best_rank(o, ties)


def average_precision_at_k(
    scores: torch.Tensor, relevant: torch.Tensor, k: int = 10, *, ties: Ties = "expected"
) -> torch.Tensor:
    """Per-query AP@k with Mei et al.'s normalisation (the mean over queries is mAP@k).

    ``AP@k = sum_{j : r_j <= k} (j / r_j) / n_relevant`` where ``r_1 < r_2 < ...`` are the
    1-based ranks of the relevant items in the list sorted by descending score. It is divided
    by *all* relevant items, not only those in the top k: for a2t with 5 GT captions the
    divisor is 5; for t2a (one GT clip) AP@k is ``1/r_1`` if ``r_1 <= k`` else 0, i.e. the
    reciprocal rank cut at k (MRR@k).

    Ties: ``"expected"`` (default) is the exact mean of AP@k over every order of the tied
    items (McSherry & Najork 2008; the formula is in the module docstring);
    ``"optimistic"`` puts relevant items before the non-relevant items they tie with,
    ``"pessimistic"`` after them.

    Args:
        scores: (Q, G) float scores, higher = better.
        relevant: (Q, G) bool relevance.
        k: Cut-off, a positive integer.
        ties: The tie rule.

    Returns:
        Float64 tensor (Q,) in [0, 1].

    Raises:
        ValueError: as :func:`ranks_from_scores`, and for ``k < 1``.
    """
    _check_scores_relevant(scores, relevant)
    _check_k(k, "k")
    _check_ties(ties)
    return _rank_core(scores, lambda s, e: relevant[s:e].to(scores.device), k, ties).ap


def _check_k(k, name: str) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"{name} must be a positive integer; got {k!r}.")


def _check_ks(ks) -> tuple[int, ...]:
    msg = f"ks must be a sequence of positive integers, e.g. (1, 5, 10); got {ks!r}."
    try:
        ks = tuple(ks)
    except TypeError:
        raise ValueError(msg) from None
    if not ks or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in ks):
        raise ValueError(msg)
    return ks


def _per_query(o: _Outcomes, ks: Sequence[int], map_k: int, ties: str) -> dict[str, np.ndarray]:
    """Per-query outcomes as float64 arrays: ``rank`` (1-based), ``R@k`` (hit probability),
    ``AP@<map_k>`` (in [0, 1])."""
    out = {"rank": (_best_rank(o, ties).to(torch.float64) + 1).cpu().numpy()}
    for k in ks:
        out[f"R@{k}"] = _hit_probability(o, k, ties).cpu().numpy()
    out[f"AP@{map_k}"] = o.ap.cpu().numpy()
    return out


def _summary(per_query: dict[str, np.ndarray], ks: Sequence[int], map_k: int) -> dict:
    """The summary numbers, each a plain mean (``numpy.mean``) of a per-query list."""
    rank = per_query["rank"]
    out = {f"R@{k}": 100.0 * float(np.mean(per_query[f"R@{k}"])) for k in ks}
    out[f"mAP@{map_k}"] = 100.0 * float(np.mean(per_query[f"AP@{map_k}"]))
    out["medR"] = float(np.floor(np.median(rank)))
    out["meanR"] = float(np.mean(rank))
    return out


def _as_lists(per_query: dict[str, np.ndarray]) -> dict[str, list]:
    return {key: value.tolist() for key, value in per_query.items()}


# ---------------------------------------------------------------------------------------------
# Scores: distance or transport plan


#: The rankings and the ``ranking_kwargs`` keys each accepts (:mod:`mltm.rankings`).
_RANKINGS: dict[str, tuple[str, ...]] = {
    "distance": (),
    "plan": (),
    "csls": ("k", "reference_audio", "reference_text"),
    "inverted_softmax": ("reference_audio", "reference_text"),
    "plan_reference": ("reference_audio", "reference_text"),
}
#: Rankings whose scores depend on ``eps`` (reported with the metrics).
_EPS_RANKINGS = ("plan", "inverted_softmax", "plan_reference")


def _check_rank_by(rank_by) -> None:
    if rank_by not in _RANKINGS:
        names = ", ".join(repr(r) for r in _RANKINGS)
        raise ValueError(f"rank_by must be one of {names}; got {rank_by!r}.")


def _reference_costs(
    rank_by: str,
    ranking_kwargs: dict | None,
    cost: Cost | None,
    audio_emb: torch.Tensor | None,
    text_emb: torch.Tensor | None,
    chunk_size: int,
    text_name: str,
    directions: tuple[str, ...],
) -> tuple[dict, torch.Tensor | None, torch.Tensor | None]:
    """Check ``ranking_kwargs``; return its other options and the reference costs
    ``(cost(reference_audio, text_emb), cost(audio_emb, reference_text))`` (None if absent)."""
    if ranking_kwargs is None:
        ranking_kwargs = {}
    if not isinstance(ranking_kwargs, dict):
        raise ValueError(
            f"ranking_kwargs must be a dict or None; got {type(ranking_kwargs).__name__}."
        )
    allowed = _RANKINGS[rank_by]
    if ranking_kwargs and not allowed:
        raise ValueError(
            f"ranking_kwargs is used only by rank_by 'csls', 'inverted_softmax' and "
            f"'plan_reference'; got {sorted(ranking_kwargs)} with rank_by={rank_by!r}."
        )
    if "t2a" not in directions:  # zero-shot: only clips are queries
        allowed = tuple(key for key in allowed if key != "reference_text")
    unknown = [key for key in ranking_kwargs if key not in allowed]
    if unknown:
        accepted = ", ".join(repr(key) for key in allowed)
        raise ValueError(
            f"ranking_kwargs for rank_by={rank_by!r} accepts {accepted}; got unknown key "
            f"{unknown[0]!r}."
        )
    needed = ("reference_audio", "reference_text") if "t2a" in directions else (
        "reference_audio",)
    if rank_by == "plan_reference":
        missing = [key for key in needed if ranking_kwargs.get(key) is None]
        if missing:
            raise ValueError(
                f"rank_by='plan_reference' needs ranking_kwargs {list(needed)} (reference "
                f"embeddings, e.g. the validation split's); missing {missing[0]!r}. Without "
                f"references use rank_by='plan'."
            )
    options = {key: v for key, v in ranking_kwargs.items() if not key.startswith("reference_")}
    ref_audio, ref_text = ranking_kwargs.get("reference_audio"), ranking_kwargs.get(
        "reference_text")
    rows = cols = None
    if ref_audio is not None:
        _check_pair(ref_audio, text_emb, "ranking_kwargs['reference_audio']", text_name,
                    "n_ref", "M")
        rows = pairwise_cost(cost, ref_audio, text_emb, chunk_size=chunk_size)
    if ref_text is not None:
        _check_pair(audio_emb, ref_text, "audio_emb", "ranking_kwargs['reference_text']",
                    "N", "m_ref")
        cols = pairwise_cost(cost, audio_emb, ref_text, chunk_size=chunk_size)
    return options, rows, cols


def _scores_from_cost(
    C: torch.Tensor,
    rank_by: str,
    eps: float,
    sinkhorn_kwargs: dict | None,
    ranking_kwargs: dict | None = None,
    *,
    cost: Cost | None = None,
    audio_emb: torch.Tensor | None = None,
    text_emb: torch.Tensor | None = None,
    chunk_size: int = 1024,
    text_name: str = "text_emb",
    directions: tuple[str, ...] = ("a2t", "t2a"),
) -> torch.Tensor:
    """Turn the (n, m) cost into scores in place: ``-C`` or the log of the uniform-marginal plan.

    The other rankings (``"csls"``, ``"inverted_softmax"`` with ``beta = 1/eps``,
    ``"plan_reference"``) are :mod:`mltm.rankings`' functions, with ``ranking_kwargs``'
    reference embeddings turned into reference costs by ``cost``.

    Float64 scores are rounded onto a grid of ``2^-24 · max|score|`` (:func:`round_to_grid`),
    so that items whose scores differ only by rounding noise (two captions with the same
    text, whose embeddings came out of different rows of a matrix product) tie exactly on
    every CPU instead of being ordered by the last bits of a kernel.
    """
    if rank_by not in ("distance", "plan") or ranking_kwargs:
        options, rows, cols = _reference_costs(rank_by, ranking_kwargs, cost, audio_emb,
                                               text_emb, chunk_size, text_name, directions)
    if rank_by == "distance":
        return _canonical_scores(C.neg_())
    if C.dtype not in (torch.float32, torch.float64):
        C = C.float()
    if rank_by == "csls":
        return _canonical_scores(csls_scores(C, reference_rows=rows, reference_cols=cols,
                                             **options))
    if rank_by == "inverted_softmax":
        beta = 1.0 / _check_eps(eps)
        return _canonical_scores(inverted_softmax_scores(C, beta, reference_rows=rows,
                                                         reference_cols=cols))
    if rank_by == "plan_reference":
        return _canonical_scores(plan_scores(C, eps, reference_rows=rows, reference_cols=cols,
                                             sinkhorn_kwargs=sinkhorn_kwargs))
    kwargs = dict(_DEFAULT_SINKHORN)
    kwargs.update(sinkhorn_kwargs or {})
    for fixed in ("a", "b", "C", "eps"):
        if fixed in kwargs:
            raise ValueError(
                f"sinkhorn_kwargs must not set {fixed!r}: the plan ranking uses uniform marginals "
                "and the given cost; pass eps as retrieval_metrics' own argument."
            )
    if C.dtype not in (torch.float32, torch.float64):
        C = C.float()
    with torch.no_grad():
        res = sinkhorn_log(C, eps, **kwargs)
        log_u, log_v = res.log_u, res.log_v
        del res  # frees the plan; the log plan below orders items identically
        scale = float(eps)
        if kwargs.get("cost_normalization", "none") == "max":
            scale *= C.max().item()
        return _canonical_scores(C.div_(-scale).add_(log_u[:, None]).add_(log_v[None, :]))


def _check_eps(eps) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (
        eps > 0 and math.isfinite(eps)
    ):
        raise ValueError(f"eps must be a positive finite number; got {eps!r}. Use e.g. eps=0.05.")
    return float(eps)


# Grid of the float64 scores, relative to their largest magnitude: float64 noise (~1e-13
# after a solve) is ~1e-6 of a step, so near-ties are decided the same way on every CPU,
# while scores that really differ (by more than ~1e-7 of the range) keep their order.
_SCORE_GRID_BITS = 24


def _canonical_scores(S: torch.Tensor) -> torch.Tensor:
    if S.dtype != torch.float64:
        return S  # float32 noise (~1e-7) is as large as any grid that keeps the order
    return round_to_grid(S, _SCORE_GRID_BITS)


def _check_index_vector(t, name: str, length: int, length_name: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(
            f"{name} must be a torch.Tensor; got {type(t).__name__}. Use torch.as_tensor({name})."
        )
    if t.ndim != 1 or t.shape[0] != length:
        raise ValueError(
            f"{name} must have shape ({length},) = ({length_name},); got shape {_shape(t)}."
        )
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(
            f"{name} must be an integer tensor; got {t.dtype}. Convert it with {name}.long()."
        )


def retrieval_metrics(
    audio_emb: torch.Tensor,
    text_emb: torch.Tensor,
    caption_clip: torch.Tensor,
    *,
    cost: Cost = cosine_distance,
    rank_by: RankBy = "distance",
    eps: float = 0.05,
    sinkhorn_kwargs: dict | None = None,
    ranking_kwargs: dict | None = None,
    clip_group: torch.Tensor | None = None,
    ks: Sequence[int] = (1, 5, 10),
    map_k: int = 10,
    chunk_size: int = 1024,
    ties: Ties = "expected",
    caption_texts: Sequence[str] | None = None,
    per_query: bool = False,
) -> dict:
    """Audio-to-text and text-to-audio retrieval metrics (paper Tables 1-2 protocol).

    Args:
        audio_emb: (N, d) embeddings, one per clip.
        text_emb: (M, d) embeddings, one per caption, same device.
        caption_clip: (M,) integer clip index in [0, N) of each caption; every clip needs
            at least one caption.
        cost: Distance callable ``(x (n, d), y (m, d)) -> (n, m)``; default cosine distance.
        rank_by: ``"distance"``: scores = -cost. ``"plan"``: the entropic OT plan between
            uniform marginals over the N clips and M captions (paper eq. 5); a2t ranks its
            rows, t2a its columns (see the module docstring). Hubness-corrected rankings
            (:mod:`mltm.rankings`): ``"csls"`` (Conneau et al. 2018, eq. 6),
            ``"inverted_softmax"`` (Smith et al. 2017, with ``beta = 1/eps``) and
            ``"plan_reference"`` (the plan with the gallery's potentials solved against
            reference queries instead of the test queries: inductive).
        eps: Entropic regularisation for ``rank_by="plan"`` and ``"plan_reference"``, the
            temperature of ``"inverted_softmax"``, in the cost's units (``"plan"``: relative
            to its maximum with ``sinkhorn_kwargs={"cost_normalization": "max"}``).
        sinkhorn_kwargs: Extra arguments of :func:`mltm.ot.sinkhorn_log`; defaults
            ``tol=1e-6, max_iter=100000``. ``dict(max_iter=10, tol=None)`` re-creates the
            released code's 10 iterations.
        ranking_kwargs: Options of the hubness-corrected rankings. ``"reference_audio"``
            (n_ref, d) and ``"reference_text"`` (m_ref, d): reference (e.g. validation) clip
            and caption embeddings from which the gallery terms are computed (a2t's from the
            reference clips, t2a's from the reference captions), required by
            ``"plan_reference"``; without them ``"csls"`` and ``"inverted_softmax"`` compute
            them from the test queries (transductive, as their papers do). ``"k"``: CSLS's
            neighbours (default 10).
        clip_group: Optional (N,) integer group of each clip. When given, a caption is
            relevant to every clip of its clip's group (datasets whose captions are
            templated per class); otherwise only to its own clip.
        ks: Cut-offs of the recalls.
        map_k: Cut-off of mAP (Mei et al.'s definition, see :func:`average_precision_at_k`).
        chunk_size: Rows per call of ``cost`` (see :func:`pairwise_cost`).
        ties: How tied scores rank (module docstring, "Ties"): ``"expected"`` (default, the
            exact mean over random tie-breaking), ``"optimistic"`` or ``"pessimistic"``.
        caption_texts: Optional M caption strings, used only to count the distinct captions
            (and to group them in ``per_query``); without them captions are told apart by
            their embedding rows, compared exactly.
        per_query: Also return each query's outcomes (for paired statistics).

    Returns:
        ``{"a2t": {"R@1", "R@5", "R@10", "mAP@10", "medR", "meanR"}, "t2a": {...},
        "rank_by", "eps", "ties", "num_clips", "num_captions", "num_distinct_captions",
        "distinct_captions_by"}``; recalls and mAP in percent, medR and meanR 1-based.
        a2t's mAP@10 divides by the number of relevant captions (5 on AudioCaps/Clotho);
        t2a's is MRR@10 (one relevant clip per caption, unless ``clip_group`` makes more).
        ``distinct_captions_by`` is ``"text"`` or ``"embedding"``. With ``per_query``, each
        direction's dict also holds ``"per_query"``: lists of floats, one entry per query
        (a2t: the N clips, t2a: the M captions): ``rank`` (expected 1-based rank of the best
        relevant item), ``R@k`` (probability of a hit in the top k, in [0, 1]) for each k and
        ``AP@<map_k>`` (in [0, 1]); and the result holds ``"queries": {"a2t": {"clip"},
        "t2a": {"clip", "caption_group"}}``, what each query is (the layout
        :mod:`mltm.verdicts` reads): its ``clip`` index (t2a: its caption's clip) and, for
        t2a, ``caption_group`` (index of its distinct caption, first-seen order). The summary
        numbers are the plain means of the lists (``numpy.mean``): ``R@k`` and ``mAP`` times
        100, ``meanR`` the mean and ``medR`` the floored median of ``rank``.

    Memory: one N×M matrix (cost, turned into scores in place), chunked ranking, plus the
    solver's work matrices while the plan is computed (see the module docstring).

    Raises:
        ValueError: for mismatched shapes, embedding sizes or devices, ``caption_clip``
            outside [0, N), a clip without captions, an unknown ``rank_by`` or ``ties``, bad
            ``ks``, ``caption_texts`` that are not M strings, or bad solver options (the
            message names the fix).
    """
    _check_pair(audio_emb, text_emb, "audio_emb", "text_emb", "N", "M")
    N, M = audio_emb.shape[0], text_emb.shape[0]
    _check_index_vector(caption_clip, "caption_clip", M, "M")
    _check_rank_by(rank_by)
    _check_ties(ties)
    _check_caption_texts(caption_texts, M)
    ks = _check_ks(ks)
    _check_k(map_k, "map_k")
    lo, hi = int(caption_clip.min()), int(caption_clip.max())
    if lo < 0 or hi >= N:
        raise ValueError(
            f"caption_clip must hold clip indices in [0, N) = [0, {N}); got values in [{lo}, {hi}]."
        )
    counts = torch.bincount(caption_clip.cpu().long(), minlength=N)
    missing = (counts == 0).nonzero().flatten().tolist()
    if missing:
        shown = ", ".join(map(str, missing[:5])) + (", ..." if len(missing) > 5 else "")
        raise ValueError(
            f"{len(missing)} clip(s) have no caption (clip index {shown}); drop clips without "
            "captions from audio_emb (and re-index caption_clip) before evaluating."
        )
    if clip_group is not None:
        _check_index_vector(clip_group, "clip_group", N, "N")

    C = pairwise_cost(cost, audio_emb, text_emb, chunk_size=chunk_size)
    scores = _scores_from_cost(C, rank_by, eps, sinkhorn_kwargs, ranking_kwargs, cost=cost,
                               audio_emb=audio_emb, text_emb=text_emb, chunk_size=chunk_size)
    dev = scores.device
    clip_label = (clip_group if clip_group is not None else torch.arange(N)).to(dev).long()
    caption_label = clip_label[caption_clip.to(dev).long()]

    a2t = _rank_core(scores, lambda s, e: clip_label[s:e, None] == caption_label[None, :],
                     map_k, ties)
    t2a = _rank_core(scores.T, lambda s, e: caption_label[s:e, None] == clip_label[None, :],
                     map_k, ties)
    del scores, C
    a2t, t2a = _per_query(a2t, ks, map_k, ties), _per_query(t2a, ks, map_k, ties)
    caption_group, distinct_by = _distinct_captions(caption_texts, text_emb)
    out = {
        "a2t": _summary(a2t, ks, map_k),
        "t2a": _summary(t2a, ks, map_k),
        "rank_by": rank_by,
        "eps": float(eps) if rank_by in _EPS_RANKINGS else None,
        "ties": ties,
        "num_clips": N,
        "num_captions": M,
        "num_distinct_captions": int(caption_group.max()) + 1,
        "distinct_captions_by": distinct_by,
    }
    if per_query:
        out["a2t"]["per_query"], out["t2a"]["per_query"] = _as_lists(a2t), _as_lists(t2a)
        out["queries"] = {
            "a2t": {"clip": list(range(N))},
            "t2a": {"clip": caption_clip.cpu().long().tolist(),
                    "caption_group": caption_group.tolist()},
        }
    return out


def _check_caption_texts(caption_texts, M: int) -> None:
    if caption_texts is None:
        return
    if isinstance(caption_texts, str) or not hasattr(caption_texts, "__len__"):
        raise ValueError(
            f"caption_texts must be a sequence of M = {M} caption strings; got "
            f"{type(caption_texts).__name__}."
        )
    if len(caption_texts) != M:
        raise ValueError(
            f"caption_texts must hold one string per caption (M = {M}); got "
            f"{len(caption_texts)}. Pass the texts in the order of text_emb's rows."
        )
    for i, text in enumerate(caption_texts):
        if not isinstance(text, str):
            raise ValueError(f"caption_texts[{i}] must be a str; got {type(text).__name__}.")


def _distinct_captions(caption_texts, text_emb: torch.Tensor) -> tuple[np.ndarray, str]:
    """Index of each caption's distinct text (first-seen order), and what told them apart."""
    if caption_texts is not None:
        first: dict[str, int] = {}
        return np.array([first.setdefault(t, len(first)) for t in caption_texts]), "text"
    # Exact comparison of rows: equal strings whose embeddings differ in the last bits count
    # twice; pass caption_texts to count strings.
    _, inverse = torch.unique(text_emb.detach(), dim=0, return_inverse=True)
    inverse = inverse.cpu().numpy()
    first_seen = {}
    for g in inverse.tolist():
        first_seen.setdefault(g, len(first_seen))
    return np.array([first_seen[g] for g in inverse.tolist()]), "embedding"


# ---------------------------------------------------------------------------------------------
# Plan ranking for galleries beyond memory (streamed)


class PlanTopK(NamedTuple):
    """What :func:`plan_topk` returns.

    Attributes:
        indices: (Q, k) long, gallery indices of each query's top k, best first.
        scores: (Q, k) their log-plan scores ``-C_ij/eps + log_u_i + log_v_j`` (descending).
        potentials: The :class:`mltm.ot.StreamedSinkhornResult` of the solve (pass it back
            as ``potentials=`` to rank the other direction without solving again).
    """

    indices: torch.Tensor
    scores: torch.Tensor
    potentials: StreamedSinkhornResult


def plan_topk(
    audio: torch.Tensor,
    text: torch.Tensor,
    k: int,
    *,
    cost: Cost = cosine_distance,
    eps: float = 0.05,
    direction: Literal["t2a", "a2t"] = "t2a",
    tol: float | None = 1e-6,
    max_iter: int = 100_000,
    check_every: int = 1,
    block: int | None = None,
    potentials: StreamedSinkhornResult | None = None,
) -> PlanTopK:
    """Top-k gallery items per query by the transductive plan ranking (paper eq. 5), streamed.

    The ranking of :func:`retrieval_metrics` with ``rank_by="plan"`` (the entropic OT plan
    between uniform marginals over the N clips and M captions, paper eq. 3-4; a2t ranks its
    rows, t2a its columns) without materialising the N×M cost or plan: the dual potentials
    are computed by :func:`mltm.ot.streamed_sinkhorn_potentials`, then each block of queries
    gets its cost block recomputed, scored by the log plan ``-C_ij/eps + log_u_i + log_v_j``
    (what the dense ranking sorts) and cut to its top k. Memory: O((N + M) d + Q k) plus one
    cost block.

    Args:
        audio: (N, d) clip embeddings (the plan's rows).
        text: (M, d) caption embeddings (its columns), same device.
        k: Items to return per query (at most the gallery size).
        cost: ``(x (r, d), y (s, d)) -> (r, s)`` distance; :func:`mltm.costs.cosine_distance`
            (default), :func:`mltm.costs.euclidean_distance` or any callable of that form.
        eps: Entropic regularisation, in the cost's units.
        direction: ``"t2a"``: each caption ranks the clips (Q = M, gallery N); ``"a2t"``:
            each clip ranks the captions (Q = N, gallery M).
        tol, max_iter, check_every, block: Solver settings, see
            :func:`mltm.ot.streamed_sinkhorn_potentials` (``block`` also sets the queries per
            block of the ranking pass, scaled to the gallery size when not given).
        potentials: A previous result for the same embeddings, cost and eps: skips the solve.

    Returns:
        :class:`PlanTopK` ``(indices (Q, k), scores (Q, k), potentials)``. Items with equal
        scores are ordered as :func:`torch.topk` leaves them (no tie rule applies to a list;
        compare ``scores`` to find ties, and use :func:`retrieval_metrics` for tie-aware
        metrics).

    Raises:
        ValueError: for mismatched embeddings, ``k`` outside [1, gallery size], an unknown
            ``direction``, or bad solver settings.
    """
    _check_pair(audio, text, "audio", "text", "N", "M")
    if direction not in ("t2a", "a2t"):
        raise ValueError(f"direction must be 't2a' or 'a2t'; got {direction!r}.")
    N, M = audio.shape[0], text.shape[0]
    gallery = N if direction == "t2a" else M
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= gallery:
        raise ValueError(
            f"k must be an integer in [1, {gallery}] (the gallery size for {direction}); got {k!r}."
        )
    x, y, cost_fn = audio.detach(), text.detach(), cost
    if cost is cosine_distance:  # normalise once, not once per block
        x = torch.nn.functional.normalize(x, dim=-1)
        y = torch.nn.functional.normalize(y, dim=-1)
        cost_fn = cosine_distance_normalized
    if potentials is None:
        potentials = streamed_sinkhorn_potentials(
            x, y, cost_fn, eps, tol=tol, max_iter=max_iter, check_every=check_every,
            block=block,
        )
    elif potentials.log_u.shape != (N,) or potentials.log_v.shape != (M,):
        raise ValueError(
            f"potentials are for a {potentials.log_u.shape[0]} x {potentials.log_v.shape[0]} "
            f"problem; this one is {N} x {M}."
        )
    log_u, log_v, scale = potentials.log_u, potentials.log_v, float(potentials.eps)
    Q = M if direction == "t2a" else N
    rows = block if block is not None else max(1, _RANK_CHUNK_ELEMENTS // gallery)
    indices = torch.empty(Q, k, dtype=torch.long, device=audio.device)
    scores = None
    with torch.no_grad():
        for s in range(0, Q, rows):
            e = min(Q, s + rows)
            if direction == "a2t":
                S = cost_fn(x[s:e], y)
                S = S.div_(-scale).add_(log_u[s:e, None]).add_(log_v[None, :])
                top = torch.topk(S, k, dim=1)
                val, idx = top.values, top.indices
            else:
                S = cost_fn(x, y[s:e])
                S = S.div_(-scale).add_(log_u[:, None]).add_(log_v[None, s:e])
                top = torch.topk(S, k, dim=0)
                val, idx = top.values.T, top.indices.T
            if scores is None:
                scores = torch.empty(Q, k, dtype=val.dtype, device=val.device)
            scores[s:e], indices[s:e] = val, idx
    return PlanTopK(indices=indices, scores=scores, potentials=potentials)


# ---------------------------------------------------------------------------------------------
# Zero-shot classification (ESC-50, paper Table 3)


def prompt_for(class_name: str, template: str = "This is a sound of {}.") -> str:
    """The text prompt of a class: ``prompt_for("dog_bark") == "This is a sound of dog bark."``.

    Underscores become spaces; ``template`` is the paper's (§5.1) by default and must contain
    one ``{}``.
    """
    if not isinstance(template, str) or template.count("{}") != 1:
        raise ValueError(
            f"template must contain exactly one '{{}}' for the class name; got {template!r}."
        )
    return template.format(class_name.replace("_", " ").strip())


def zero_shot_classification(
    audio_emb: torch.Tensor,
    class_text_emb: torch.Tensor,
    labels: torch.Tensor,
    *,
    cost: Cost = cosine_distance,
    rank_by: RankBy = "distance",
    eps: float = 0.05,
    sinkhorn_kwargs: dict | None = None,
    ranking_kwargs: dict | None = None,
    ks: Sequence[int] = (1, 5, 10),
    map_k: int = 10,
    chunk_size: int = 1024,
    ties: Ties = "expected",
    per_query: bool = False,
) -> dict:
    """Zero-shot classification by ranking class prompts for each clip (paper Table 3).

    Each clip ranks the C class-prompt embeddings (see :func:`prompt_for`); the rank of its
    true class gives accuracy (= R@1), R@k, and "mAP@10", which with a single relevant class
    is MRR@10 = mean(1/rank if rank <= 10 else 0): the quantity the released ESC-50 code
    calls mAP10 and the paper's Table 3 reports as mAP. It is returned under both names.
    ``rank_by="plan"`` uses uniform marginals over clips and classes, as the released code
    does (which exploits ESC-50's class balance); that code's exact rule is
    ``eps=0.05, sinkhorn_kwargs=dict(max_iter=10, tol=None, cost_normalization="max")``.

    Args:
        audio_emb: (N, d) clip embeddings.
        class_text_emb: (C, d) class-prompt embeddings.
        labels: (N,) integer true class in [0, C).
        cost, rank_by, eps, sinkhorn_kwargs, ks, map_k, chunk_size, ties: as
            :func:`retrieval_metrics` (accuracy is R@1, so under ``ties="expected"`` a clip
            whose true class ties with others for first counts as a fractional hit).
        per_query: Also return ``"per_query": {"rank", "R@k", "AP@<map_k>"}``, one float per
            clip as in :func:`retrieval_metrics`, and ``"queries": {"label"}``, each clip's
            true class index.
        ranking_kwargs: As :func:`retrieval_metrics`, without ``"reference_text"`` (only
            clips are queries here): ``"reference_audio"`` fixes the class prompts' terms.

    Returns:
        ``{"accuracy", "R@1", "R@5", "R@10", "mAP@10", "MRR@10", "medR", "meanR",
        "num_clips", "num_classes", "predicted_classes", "majority_share", "rank_by", "eps",
        "ties"}``, percentages except the ranks and counts. ``predicted_classes`` is the number
        of distinct classes ranked first for some clip (the first index among tied scores);
        ``majority_share`` the accuracy of always answering the largest class.

    Raises:
        ValueError: for mismatched shapes, labels outside [0, C), unknown ``rank_by`` or
            ``ties``.
    """
    _check_pair(audio_emb, class_text_emb, "audio_emb", "class_text_emb", "N", "C")
    N, n_cls = audio_emb.shape[0], class_text_emb.shape[0]
    _check_index_vector(labels, "labels", N, "N")
    _check_rank_by(rank_by)
    _check_ties(ties)
    ks = _check_ks(ks)
    _check_k(map_k, "map_k")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= n_cls:
        raise ValueError(
            f"labels must hold class indices in [0, C) = [0, {n_cls}); got values in [{lo}, {hi}]."
        )
    C = pairwise_cost(cost, audio_emb, class_text_emb, chunk_size=chunk_size)
    scores = _scores_from_cost(C, rank_by, eps, sinkhorn_kwargs, ranking_kwargs, cost=cost,
                               audio_emb=audio_emb, text_emb=class_text_emb,
                               chunk_size=chunk_size, text_name="class_text_emb",
                               directions=("a2t",))
    dev = scores.device
    lab = labels.to(dev).long()
    classes = torch.arange(n_cls, device=dev)
    outcomes = _rank_core(scores, lambda s, e: lab[s:e, None] == classes[None, :], map_k, ties)
    clips = _per_query(outcomes, ks, map_k, ties)
    out = _summary(clips, ks, map_k)
    out = {
        "accuracy": 100.0 * float(np.mean(_hit_probability(outcomes, 1, ties).cpu().numpy())),
        **out,
        f"MRR@{map_k}": out[f"mAP@{map_k}"],
        "num_clips": N,
        "num_classes": n_cls,
        # Two yardsticks for the accuracy: a model that ranks one prompt first for (nearly)
        # every clip (a "hub") scores the share of the largest class, not 1/C.
        "predicted_classes": int(scores.argmax(1).unique().numel()),
        "majority_share": 100.0 * float(torch.bincount(lab, minlength=n_cls).max()) / N,
        "rank_by": rank_by,
        "eps": float(eps) if rank_by in _EPS_RANKINGS else None,
        "ties": ties,
    }
    if per_query:
        out["per_query"] = _as_lists(clips)
        out["queries"] = {"label": lab.cpu().tolist()}
    return out


# ---------------------------------------------------------------------------------------------
# Embedding-space diagnostics (paper Table 4, Figure 3)


def modality_gap(audio_emb: torch.Tensor, text_emb: torch.Tensor) -> float:
    """Modality gap ``||mean(audio_emb) - mean(text_emb)||_2`` (Liang et al. 2022).

    Computed on the embeddings as given. The paper (Δ_gap, §5.1, Table 4) and the released
    code compute it on **L2-normalised** embeddings (ESC-50 audio vs the 50 class prompts),
    so normalise first (``torch.nn.functional.normalize(x, dim=-1)``) to compare with it.
    The means are taken in float64.
    """
    _check_pair(audio_emb, text_emb, "audio_emb", "text_emb", "N", "M")
    diff = audio_emb.detach().double().mean(0) - text_emb.detach().double().mean(0)
    return float(torch.linalg.vector_norm(diff))


def tsne_coordinates(
    audio_emb: torch.Tensor,
    text_emb: torch.Tensor,
    *,
    perplexity: float = 30.0,
    seed: int = 0,
    metric: Literal["euclidean", "cosine"] = "euclidean",
    init: Literal["pca", "random"] = "pca",
    max_iter: int = 1000,
) -> tuple[np.ndarray, np.ndarray]:
    """2-D t-SNE of audio and text embeddings together (``sklearn.manifold.TSNE``).

    Both sets are embedded in one run on their concatenation, so the coordinates share one
    map. ``perplexity`` is clipped to ``(N + M - 1) / 3`` when larger (t-SNE needs
    ``3 * perplexity`` neighbours, and sklearn a perplexity below the sample count); the
    released code plots with perplexity 2. ``random_state=seed`` makes the result
    deterministic; with the default PCA initialisation the map hardly depends on the seed,
    with ``init="random"`` it does. ``metric="cosine"`` embeds by cosine distance.

    Returns:
        ``(audio_xy (N, 2), text_xy (M, 2))`` float arrays.
    """
    from sklearn.manifold import TSNE

    _check_pair(audio_emb, text_emb, "audio_emb", "text_emb", "N", "M")
    if metric not in ("euclidean", "cosine"):
        raise ValueError(f"metric must be 'euclidean' or 'cosine'; got {metric!r}.")
    if init not in ("pca", "random"):
        raise ValueError(f"init must be 'pca' or 'random'; got {init!r}.")
    if not perplexity > 0:
        raise ValueError(f"perplexity must be positive; got {perplexity!r}.")
    N = audio_emb.shape[0]
    X = torch.cat([audio_emb.detach(), text_emb.detach()]).double().cpu().numpy()
    n = X.shape[0]
    if n < 4:
        raise ValueError(f"t-SNE needs at least 4 points in total; got {n}.")
    p = min(float(perplexity), (n - 1) / 3)
    xy = TSNE(
        n_components=2, perplexity=p, metric=metric, init=init, random_state=seed, max_iter=max_iter
    ).fit_transform(X)
    return xy[:N], xy[N:]

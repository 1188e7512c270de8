"""The gauge invariance of entropic OT behind m-LTM's ranking (book/chapters/invariance.md).

Adding per-item terms to the cost, C_ij -> C_ij + α_i + β_j, leaves the plan of eq. 3
unchanged (the dual potentials absorb them), so the m-LTM loss (eq. 6) has a gradient with
respect to C whose rows and columns sum to zero, and any parameter that only moves per-item
terms gets no gradient. Distance ranking reads those terms; plan ranking does not. Also the
hub-occurrence counts of :mod:`mltm.hubness`, against brute force.
"""

import itertools
import math

import numpy as np
import ot
import pytest
import scipy.stats
import torch
import torch.nn.functional as F
from torch import nn

from mltm.hubness import hub_share, hubness_summary, k_occurrence, skewness
from mltm.losses import MLTMLoss, target_plan
from mltm.metric import MahalanobisCost
from mltm.ot import sinkhorn, sinkhorn_log
from mltm.retrieval import retrieval_metrics

F64 = torch.float64
TIGHT = {"tol": 1e-13, "max_iter": 100_000}


class FixedCost(nn.Module):
    """A 'ground metric' that returns a given cost matrix: the loss as a function of C."""

    def __init__(self, C, parameter=True):
        super().__init__()
        self.C = nn.Parameter(C.clone()) if parameter else C  # else: differentiate through C
        self.dim = C.shape[1]

    def forward(self, x, y):
        return self.C


def _gauge(n, m, gen, scale=3.0):
    return scale * torch.randn(n, 1, generator=gen, dtype=F64), \
        scale * torch.randn(1, m, generator=gen, dtype=F64)


# -- the plan (eq. 3) -------------------------------------------------------------------------


@pytest.mark.parametrize("shape,eps", [((7, 9), 0.1), ((12, 12), 0.05), ((5, 3), 1.0)])
def test_plan_unchanged_by_per_item_terms(shape, eps, gen):
    C = torch.rand(shape, generator=gen, dtype=F64)
    alpha, beta = _gauge(*shape, gen)
    res = sinkhorn_log(C, eps, **TIGHT)
    shifted = sinkhorn_log(C + alpha + beta, eps, **TIGHT)
    assert torch.allclose(shifted.plan, res.plan, rtol=0, atol=1e-12)
    # ...and POT, an independent solver, agrees on the shifted problem.
    n, m = shape
    P_pot = ot.sinkhorn(np.full(n, 1 / n), np.full(m, 1 / m), (C + alpha + beta).numpy(), eps,
                        method="sinkhorn_log", numItermax=100_000, stopThr=1e-14)
    assert np.allclose(P_pot, res.plan.numpy(), rtol=0, atol=1e-10)
    # The potentials absorb the terms: log u shifts by α/ε, log v by β/ε (up to one constant).
    du = shifted.log_u - res.log_u - alpha[:, 0] / eps
    dv = shifted.log_v - res.log_v - beta[0] / eps
    assert torch.allclose(du, du.mean().expand_as(du), atol=1e-8)
    assert torch.allclose(dv, -du.mean().expand_as(dv), atol=1e-8)


def test_plan_changes_under_a_non_gauge_perturbation(gen):
    # The check above can fail: a perturbation that is not of the form α_i + β_j moves the plan.
    C = torch.rand(6, 6, generator=gen, dtype=F64)
    u, v = torch.randn(6, generator=gen, dtype=F64), torch.randn(6, generator=gen, dtype=F64)
    E = 0.5 * torch.outer(u - u.mean(), v - v.mean())  # an interaction: no per-item part
    assert (sinkhorn(C + E, 0.1, **TIGHT) - sinkhorn(C, 0.1, **TIGHT)).abs().max() > 1e-3


def test_k_iterations_absorb_column_terms_exactly_but_not_row_terms(gen):
    # mltm.ot.sinkhorn updates v (columns) first: after any number of iterations a column term
    # β_j is absorbed exactly, a row term α_i only in the limit. (The factorial of the chapter
    # trains on such plans.)
    C = torch.rand(8, 8, generator=gen, dtype=F64)
    alpha, beta = _gauge(8, 8, gen, scale=0.3)
    for k in (1, 3):
        P = sinkhorn(C, 0.1, tol=None, max_iter=k)
        assert torch.allclose(sinkhorn(C + beta, 0.1, tol=None, max_iter=k), P, atol=1e-14)
        assert (sinkhorn(C + alpha, 0.1, tol=None, max_iter=k) - P).abs().max() > 1e-4
    loss = MLTMLoss(FixedCost(C), eps=0.1, normalization="softmax")
    x = torch.zeros(8, 1, dtype=F64)
    base = float(loss(x, x).detach())
    loss.cost.C.data += beta
    assert math.isclose(float(loss(x, x).detach()), base, rel_tol=1e-13)
    loss.cost.C.data += alpha
    assert abs(float(loss(x, x).detach()) - base) > 1e-4


# -- the gradient of the loss (eq. 6) ---------------------------------------------------------


@pytest.mark.parametrize("clip_ids", [None, torch.tensor([0, 0, 1, 2, 2, 2, 3])])
def test_loss_gradient_is_target_minus_plan_and_sums_to_zero(clip_ids, gen):
    b, eps = 7, 0.1
    C = torch.rand(b, b, generator=gen, dtype=F64)
    loss = MLTMLoss(FixedCost(C), eps=eps, sinkhorn_kwargs=TIGHT)
    x = torch.zeros(b, 1, dtype=F64)
    loss(x, x, clip_ids).backward()
    G = loss.cost.C.grad
    P = sinkhorn(C, eps, **TIGHT)
    # L(C) = <π̂, log π̂> + (<π̂, C> - OT_ε(C)) / ε, and ∂OT_ε/∂C = π_ε: G = (π̂ - π_ε) / ε.
    assert torch.allclose(G, (target_plan(b, clip_ids, dtype=F64) - P) / eps, atol=1e-9)
    assert G.sum(1).abs().max() < 1e-9 and G.sum(0).abs().max() < 1e-9
    assert G.abs().max() > 1.0  # not trivially zero


def test_loss_gradient_matches_finite_differences(gen):
    b, eps = 4, 0.5
    C = torch.rand(b, b, generator=gen, dtype=F64)
    x = torch.zeros(b, 1, dtype=F64)

    def f(C):
        return MLTMLoss(FixedCost(C, parameter=False), eps=eps,
                        sinkhorn_kwargs={"tol": 1e-12, "max_iter": 10_000})(x, x)

    assert torch.autograd.gradcheck(f, (C.clone().requires_grad_(),), fast_mode=True)


def test_loss_is_constant_along_gauge_directions(gen):
    b = 6
    C = torch.rand(b, b, generator=gen, dtype=F64)
    alpha, beta = _gauge(b, b, gen)
    x = torch.zeros(b, 1, dtype=F64)
    loss = MLTMLoss(FixedCost(C), eps=0.1, sinkhorn_kwargs=TIGHT)
    values = []
    for t in (0.0, 0.5, 2.0):
        loss.cost.C.data = C + t * (alpha + beta)
        values.append(float(loss(x, x).detach()))
    assert max(values) - min(values) < 1e-10


class ShiftedCost(nn.Module):
    """A Mahalanobis cost with per-item parameters: a modality shift δ of every audio
    embedding, and per-item offsets ``a·w_a`` (one per clip) and ``t·w_t`` (one per caption)."""

    def __init__(self, d, squared, gen):
        super().__init__()
        self.metric = MahalanobisCost(d, "full", init="paper", squared=squared,
                                      generator=torch.Generator().manual_seed(3), dtype=F64)
        self.delta = nn.Parameter(0.1 * torch.randn(d, generator=gen, dtype=F64))
        self.w_audio = nn.Parameter(torch.randn(d, generator=gen, dtype=F64))
        self.w_text = nn.Parameter(torch.randn(d, generator=gen, dtype=F64))
        self.dim = d

    def forward(self, x, y):
        return (self.metric(x + self.delta, y) + (x @ self.w_audio)[:, None]
                + (y @ self.w_text)[None, :])


def test_per_item_parameters_get_no_gradient(gen):
    b, d = 8, 5
    x = F.normalize(torch.randn(b, d, generator=gen, dtype=F64), dim=-1)
    y = F.normalize(x + 0.7 * torch.randn(b, d, generator=gen, dtype=F64), dim=-1)
    # Squared Mahalanobis cost: (x+δ-y)ᵀM(x+δ-y) = (x-y)ᵀM(x-y) + 2δᵀMx + δᵀMδ - 2δᵀMy, so δ
    # and the offsets only add per-item terms: zero gradient, while M and the embeddings get one.
    cost = ShiftedCost(d, squared=True, gen=gen)
    loss = MLTMLoss(cost, eps=0.5, sinkhorn_kwargs=TIGHT)
    x.requires_grad_()
    loss(x, y).backward()
    for p in (cost.delta, cost.w_audio, cost.w_text):
        assert p.grad.abs().max() < 1e-9
    assert cost.metric.M.grad.abs().max() > 1e-3 and x.grad.abs().max() > 1e-3
    # The paper's cost is the square root (eq. 9): there a shift is no longer exactly a
    # per-item term and gets a (small) gradient; the offsets still get none.
    cost = ShiftedCost(d, squared=False, gen=gen)
    MLTMLoss(cost, eps=0.5, sinkhorn_kwargs=TIGHT)(x.detach(), y).backward()
    assert cost.delta.grad.abs().max() > 1e-6
    assert cost.w_audio.grad.abs().max() < 1e-9 and cost.w_text.grad.abs().max() < 1e-9


# -- the two rankings -------------------------------------------------------------------------


def test_caption_offset_changes_distance_ranking_not_plan_ranking(gen):
    N, per, d = 12, 3, 6
    audio = F.normalize(torch.randn(N, d, generator=gen, dtype=F64), dim=-1)
    caption_clip = torch.arange(N).repeat_interleave(per)
    text = F.normalize(audio[caption_clip] + 0.8 * torch.randn(N * per, d, generator=gen,
                                                               dtype=F64), dim=-1)
    offset = 0.5 * torch.randn(N * per, generator=gen, dtype=F64)
    metric = MahalanobisCost(d, "euclidean", dtype=F64)

    def with_offset(x, y):  # called on (x rows, all captions): the offset is per column
        return metric(x, y) + offset[None, :]

    kw = dict(eps=0.05, sinkhorn_kwargs={"tol": 1e-12})
    plain = {r: retrieval_metrics(audio, text, caption_clip, cost=metric, rank_by=r, **kw)
             for r in ("distance", "plan")}
    shifted = {r: retrieval_metrics(audio, text, caption_clip, cost=with_offset, rank_by=r, **kw)
               for r in ("distance", "plan")}
    assert shifted["plan"]["a2t"] == plain["plan"]["a2t"]
    assert shifted["plan"]["t2a"] == plain["plan"]["t2a"]
    assert shifted["distance"]["a2t"] != plain["distance"]["a2t"]
    # t2a ranks clips for one caption: a caption's own offset is constant there.
    assert shifted["distance"]["t2a"] == plain["distance"]["t2a"]
    # The log plans differ by a per-column constant only, so every row's order is the same.
    C = metric(audio, text)
    logp = lambda C: (lambda r: -C / 0.05 + r.log_u[:, None] + r.log_v[None, :])(  # noqa: E731
        sinkhorn_log(C, 0.05, tol=1e-12, max_iter=100_000))
    diff = logp(C + offset[None, :]) - logp(C)
    assert torch.allclose(diff, diff[:1].expand_as(diff), atol=1e-7)


# -- hub occurrence (mltm.hubness) ------------------------------------------------------------


def _brute_force_k_occurrence(S, k):
    """Mean N_k over every tie-breaking order of the gallery (all permutations)."""
    Q, G = S.shape
    total = np.zeros(G)
    perms = list(itertools.permutations(range(G)))
    for perm in perms:
        priority = np.empty(G)
        priority[list(perm)] = np.arange(G)
        for q in range(Q):
            order = sorted(range(G), key=lambda j: (-S[q, j], priority[j]))
            total[order[:k]] += 1
    return total / len(perms)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_k_occurrence_shares_ties_like_random_tie_breaking(k, gen):
    S = torch.randint(0, 3, (6, 5), generator=gen).double()  # many ties
    assert np.allclose(k_occurrence(S, k).numpy(), _brute_force_k_occurrence(S.numpy(), k))
    assert math.isclose(float(k_occurrence(S, k).sum()), k * S.shape[0])


def test_k_occurrence_without_ties_is_argmax_count(gen):
    S = torch.randn(50, 7, generator=gen, dtype=F64)
    expected = torch.bincount(S.argmax(1), minlength=7).double()
    assert torch.equal(k_occurrence(S, 1), expected)


def test_skewness_and_hub_share(gen):
    counts = torch.poisson(torch.full((200,), 2.0, dtype=F64), generator=gen)
    assert math.isclose(skewness(counts), float(scipy.stats.skew(counts.numpy())), rel_tol=1e-12)
    assert skewness(torch.full((5,), 3.0)) == 0.0
    c = torch.tensor([10.0, 0, 0, 5, 5] + [0] * 95)
    assert hub_share(c, 0.01) == 0.5 and hub_share(c, 0.03) == 1.0
    assert hub_share(torch.cat([c, torch.zeros(50)]), 0.01) == 0.75  # ceil(1.5) = 2 items
    hub = torch.full((4, 6), -1.0)
    hub[:, 2] = 0.0  # every query ranks item 2 first
    summary = hubness_summary(hub, 1)
    assert summary["max"] == 4 and summary["top share"] == 1.0
    assert math.isclose(summary["never"], 5 / 6) and math.isclose(summary["mean"], 4 / 6)


def test_hubness_bad_input():
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 3\]"):
        k_occurrence(torch.zeros(2, 3), 4)
    with pytest.raises(ValueError, match="2-D float tensor"):
        k_occurrence(torch.zeros(3, dtype=torch.long), 1)
    with pytest.raises(ValueError, match="NaN"):
        k_occurrence(torch.tensor([[0.0, float("nan")]]), 1)
    with pytest.raises(ValueError, match="fraction"):
        hub_share(torch.ones(3), 0.0)

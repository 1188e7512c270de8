"""Streamed plan ranking (plan_topk): equal to the dense plan ranking of retrieval_metrics."""

import re

import pytest
import torch

import mltm.retrieval as retrieval
from mltm.ot import sinkhorn_log
from mltm.costs import cosine_distance, euclidean_distance
from mltm.retrieval import pairwise_cost, plan_topk

F64 = torch.float64


def _gallery(gen, n=40, captions=5, d=12, dtype=F64):
    audio = torch.randn(n, d, generator=gen, dtype=dtype)
    text = (audio.repeat_interleave(captions, 0)
            + 0.8 * torch.randn(n * captions, d, generator=gen, dtype=dtype))
    return audio, text


def _dense_scores(audio, text, cost, eps, **kwargs):
    """The scores retrieval_metrics(rank_by="plan") ranks: its own internal function, before
    the float64 tie grid (``_canonical_scores``), which needs the whole matrix's range and so
    has no streamed counterpart; the grid only merges scores closer than 2^-24 of the range."""
    C = pairwise_cost(cost, audio, text)
    grid = retrieval._canonical_scores
    retrieval._canonical_scores = lambda S: S
    try:
        return retrieval._scores_from_cost(C, "plan", eps, kwargs or None)
    finally:
        retrieval._canonical_scores = grid


@pytest.mark.parametrize("cost,eps", [(cosine_distance, 0.05), (euclidean_distance, 0.3)])
@pytest.mark.parametrize("direction", ["t2a", "a2t"])
@pytest.mark.parametrize("block", [None, 7])
def test_topk_equals_dense_plan_ranking(cost, eps, direction, block, gen):
    audio, text = _gallery(gen)
    S = _dense_scores(audio, text, cost, eps)  # tol 1e-6, check_every 10: the defaults
    k = 10
    res = plan_topk(audio, text, k, cost=cost, eps=eps, direction=direction, check_every=10,
                    block=block)
    ref = torch.topk(S if direction == "a2t" else S.T, k, dim=1)
    assert torch.equal(res.indices, ref.indices)  # same items, same order
    torch.testing.assert_close(res.scores, ref.values, rtol=0, atol=1e-10)
    # The full ordering too: k = the gallery size.
    full = plan_topk(audio, text, S.shape[0 if direction == "t2a" else 1], cost=cost, eps=eps,
                     direction=direction, potentials=res.potentials)
    assert torch.equal(full.indices,
                       torch.argsort(S if direction == "a2t" else S.T, dim=1, descending=True))


def test_topk_equals_sinkhorn_on_the_dense_cost_converged(gen):
    audio, text = _gallery(gen, 30, 3)
    C = cosine_distance(audio, text)
    dense = sinkhorn_log(C, 0.05, tol=1e-12, max_iter=100_000)
    logP = -C / 0.05 + dense.log_u[:, None] + dense.log_v[None, :]
    res = plan_topk(audio, text, 5, eps=0.05, direction="t2a", tol=1e-12)
    assert torch.equal(res.indices, torch.topk(logP.T, 5, dim=1).indices)
    # The plan's column argmax is the top-1 (ranking by the plan itself, not only its log).
    assert torch.equal(res.indices[:, 0], dense.plan.argmax(0))


def test_custom_cost_callable_and_reused_potentials(gen):
    audio, text = _gallery(gen, 25, 2)
    L = torch.randn(12, 12, generator=gen, dtype=F64) / 4 + torch.eye(12, dtype=F64)

    def maha(x, y):
        return torch.cdist(x @ L, y @ L)

    S = _dense_scores(audio, text, maha, 0.5)
    t2a = plan_topk(audio, text, 4, cost=maha, eps=0.5, direction="t2a", check_every=10)
    a2t = plan_topk(audio, text, 4, cost=maha, eps=0.5, direction="a2t", potentials=t2a.potentials)
    assert torch.equal(t2a.indices, torch.topk(S.T, 4, dim=1).indices)
    assert torch.equal(a2t.indices, torch.topk(S, 4, dim=1).indices)
    assert a2t.potentials is t2a.potentials


def test_float32(gen):
    audio, text = _gallery(gen, 50, 5, 16, torch.float32)
    S = _dense_scores(audio, text, cosine_distance, 0.05)
    res = plan_topk(audio, text, 10, eps=0.05, check_every=10)
    assert res.scores.dtype == torch.float32
    ref = torch.topk(S.T, 10, dim=1)
    # float32: the orders agree except where two scores are within rounding of each other.
    agree = (res.indices == ref.indices).all(1).float().mean().item()
    assert agree > 0.97
    torch.testing.assert_close(res.scores, ref.values, rtol=0, atol=1e-4)


@pytest.mark.parametrize(
    "kwargs,msg",
    [
        (dict(k=0), "k must be an integer in [1, 20]"),
        (dict(k=201, direction="a2t"), "k must be an integer in [1, 200]"),
        (dict(direction="both"), "direction must be 't2a' or 'a2t'; got 'both'."),
    ],
)
def test_validation(kwargs, msg, gen):
    audio, text = _gallery(gen, 20, 10)
    args = dict(k=3)
    args.update(kwargs)
    with pytest.raises(ValueError, match=re.escape(msg)):
        plan_topk(audio, text, **args)

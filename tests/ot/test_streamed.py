"""Streamed Sinkhorn over embeddings: the dense solver's iterates without the dense matrix."""

import warnings

import ot
import pytest
import torch

from mltm.ot import ConvergenceWarning, sinkhorn_log, streamed_sinkhorn_potentials
from mltm.costs import cosine_distance, euclidean_distance

F64 = torch.float64


def _data(gen, n=60, m=150, d=8, dtype=F64):
    return (torch.randn(n, d, generator=gen, dtype=dtype),
            torch.randn(m, d, generator=gen, dtype=dtype))


def _simplex(n, gen):
    w = torch.rand(n, generator=gen, dtype=F64) + 0.1
    return w / w.sum()


@pytest.mark.parametrize("cost,eps", [(cosine_distance, 0.05), (euclidean_distance, 0.3),
                                      (euclidean_distance, 0.03)])
@pytest.mark.parametrize("block", [1, 7, 1000])
@pytest.mark.parametrize("check_every", [1, 10])
def test_same_iterates_as_dense_log_solver(cost, eps, block, check_every, gen):
    x, y = _data(gen)
    C = cost(x, y)
    dense = sinkhorn_log(C, eps, tol=1e-9, max_iter=100_000, check_every=check_every,
                         backend="torch")
    res = streamed_sinkhorn_potentials(x, y, cost, eps, block=block, tol=1e-9, max_iter=100_000,
                                       check_every=check_every)
    assert res.n_iter == dense.n_iter
    torch.testing.assert_close(res.log_u, dense.log_u, rtol=0, atol=1e-10)
    torch.testing.assert_close(res.log_v, dense.log_v, rtol=0, atol=1e-10)
    torch.testing.assert_close(res.f, eps * dense.log_u, rtol=0, atol=1e-11)
    assert res.marginal_error == pytest.approx(dense.marginal_error.item(), rel=1e-6)


def test_uneven_marginals_match_pot(gen):
    x, y = _data(gen, 30, 45)
    a, b = _simplex(30, gen), _simplex(45, gen)
    res = streamed_sinkhorn_potentials(x, y, euclidean_distance, 0.2, a, b, block=4, tol=1e-12,
                                       max_iter=100_000)
    C = euclidean_distance(x, y)
    P = torch.exp((res.f[:, None] + res.g[None, :] - C) / 0.2)
    P_pot = ot.sinkhorn(a, b, C, 0.2, method="sinkhorn_log", stopThr=1e-14, numItermax=100_000)
    torch.testing.assert_close(P, P_pot, rtol=0, atol=1e-12)
    torch.testing.assert_close(P.sum(1), a, rtol=0, atol=1e-13)


def test_wide_cost_range_takes_the_exact_branches(gen):
    # One far-away row: its row sum of exp(-C/eps + log v) underflows (exact block), and the
    # costs span ~900 nats; the iterates still equal the dense log-domain solver's.
    x, y = _data(gen, 20, 30, 4)
    x[3] += 40.0
    C = euclidean_distance(x, y)
    dense = sinkhorn_log(C, 0.05, tol=1e-9, max_iter=100_000, check_every=1, backend="torch")
    res = streamed_sinkhorn_potentials(x, y, euclidean_distance, 0.05, block=6, tol=1e-9,
                                       max_iter=100_000)
    assert res.n_iter == dense.n_iter
    P = torch.exp(-C / 0.05 + res.log_u[:, None] + res.log_v[None, :])
    torch.testing.assert_close(P, dense.plan, rtol=0, atol=1e-12)


def test_float32_close_to_float64(gen):
    x, y = _data(gen, 80, 200, 16)
    r64 = streamed_sinkhorn_potentials(x, y, cosine_distance, 0.05, tol=1e-10)
    r32 = streamed_sinkhorn_potentials(x.float(), y.float(), cosine_distance, 0.05, block=9,
                                       tol=1e-6)
    assert r32.log_u.dtype == torch.float32 and r32.marginal_error < 1e-6
    C = cosine_distance(x, y)
    P64 = torch.exp(-C / 0.05 + r64.log_u[:, None] + r64.log_v[None, :])
    P32 = torch.exp(-C / 0.05 + r32.log_u.double()[:, None] + r32.log_v.double()[None, :])
    # As accurate as the dense float32 solver (log potentials of ~20 nats carry ~1e-6 rounding).
    dense32 = sinkhorn_log(C.float(), 0.05, tol=1e-6, check_every=1, backend="torch").plan.double()
    assert (P32 - P64).abs().max().item() <= 3 * (dense32 - P64).abs().max().item() + 1e-9


def test_fixed_iterations_and_warning(gen):
    x, y = _data(gen, 10, 12)
    res = streamed_sinkhorn_potentials(x, y, euclidean_distance, 0.1, tol=None, max_iter=3)
    assert res.n_iter == 3 and res.marginal_error is None
    dense = sinkhorn_log(euclidean_distance(x, y), 0.1, tol=None, max_iter=3)
    torch.testing.assert_close(res.log_u, dense.log_u, rtol=0, atol=1e-12)
    with pytest.warns(ConvergenceWarning):
        streamed_sinkhorn_potentials(x, y, euclidean_distance, 0.01, tol=1e-14, max_iter=2)


@pytest.mark.parametrize(
    "kwargs,msg",
    [
        (dict(eps=0.0), "eps must be a positive finite number"),
        (dict(block=0), "block must be a positive integer"),
        (dict(tol=-1.0), "tol must be a positive number or None"),
        (dict(a=torch.ones(10, dtype=F64)), "a must sum to 1"),
        (dict(b=torch.ones(3, dtype=F64) / 3), r"b must have shape \(12,\)"),
        (dict(cost_fn=lambda x, y: x @ y.T[:, :5]), r"cost_fn\(x_block, y\) must return shape"),
    ],
)
def test_validation(kwargs, msg, gen):
    x, y = _data(gen, 10, 12)
    args = dict(cost_fn=euclidean_distance, eps=0.1)
    args.update(kwargs)
    with warnings.catch_warnings(), pytest.raises(ValueError, match=msg):
        streamed_sinkhorn_potentials(x, y, **args)

"""Partial OT: plans against POT's entropic_partial_wasserstein, feasibility, limits, grads."""

import ot
import pytest
import torch

from mltm.ot import partial_sinkhorn, partial_sinkhorn_log, sinkhorn

F64 = torch.float64


def _pot_partial(C, eps, mass, a, b, n_iter, method):
    # POT 0.9.7.post1's torch path raises TypeError for a Python-float mass with
    # method="sinkhorn_log" (it calls nx.log(m)): pass a tensor. Its stopThr=1e-100 default
    # never fires, so numItermax is the exact iteration count.
    m = torch.tensor(mass, dtype=C.dtype)
    return ot.partial.entropic_partial_wasserstein(a, b, C, eps, m=m, numItermax=n_iter,
                                                   method=method)


@pytest.mark.parametrize("method", ["sinkhorn_log", "sinkhorn"])
@pytest.mark.parametrize("n,m,mass", [(8, 8, 0.8), (6, 11, 0.5), (12, 7, 0.95)])
def test_same_iterations_match_pot(method, n, m, mass, gen):
    C = torch.rand(n, m, generator=gen, dtype=F64)
    a = torch.full((n,), 1 / n, dtype=F64)
    b = torch.full((m,), 1 / m, dtype=F64)
    for k in (1, 7, 60):
        P = partial_sinkhorn(C, 0.1, mass, tol=None, max_iter=k)
        torch.testing.assert_close(P, _pot_partial(C, 0.1, mass, a, b, k, method),
                                   rtol=0, atol=1e-14)


def test_converged_plan_matches_pot_with_weights(gen):
    C = torch.rand(9, 6, generator=gen, dtype=F64)
    a = torch.rand(9, generator=gen, dtype=F64) + 0.2
    b = torch.rand(6, generator=gen, dtype=F64) + 0.2
    a, b = a / a.sum() * 1.3, b / b.sum()  # unnormalised weights are allowed here
    P = partial_sinkhorn(C, 0.05, 0.7, a, b, tol=1e-13, max_iter=20_000)
    torch.testing.assert_close(P, _pot_partial(C, 0.05, 0.7, a, b, 5000, "sinkhorn_log"),
                               rtol=0, atol=1e-12)


def test_feasibility(gen):
    C = torch.rand(40, 40, generator=gen, dtype=F64)
    res = partial_sinkhorn_log(C, 0.05, 0.6, tol=1e-12, max_iter=10_000)
    P = res.plan
    assert res.error.item() < 1e-12
    assert P.sum().item() == pytest.approx(0.6, abs=1e-14)
    assert (P.sum(1) <= 1 / 40 + 1e-12).all() and (P.sum(0) <= 1 / 40 + 1e-12).all()


def test_full_mass_is_the_balanced_problem(gen):
    C = torch.rand(10, 10, generator=gen, dtype=F64)
    P = partial_sinkhorn(C, 0.1, 1.0, tol=1e-13, max_iter=50_000)
    torch.testing.assert_close(P, sinkhorn(C, 0.1, tol=1e-13), rtol=0, atol=1e-10)


def test_partial_plan_drops_the_outliers(gen):
    # Six matched pairs plus two outlier rows far from every column: with mass 6/8 the plan
    # transports (almost) nothing from the outliers.
    C = torch.rand(8, 8, generator=gen, dtype=F64) + 1.0
    C[torch.arange(6), torch.arange(6)] = 0.0
    C[6:, :] = 10.0
    P = partial_sinkhorn(C, 0.05, 6 / 8, tol=1e-9, max_iter=10_000)
    assert P[6:].sum().item() < 1e-20
    torch.testing.assert_close(torch.diagonal(P)[:6], torch.full((6,), 1 / 8, dtype=F64),
                               rtol=0, atol=1e-9)


def test_batched_equals_looped_with_per_problem_mass(gen):
    C = torch.rand(3, 7, 9, generator=gen, dtype=F64)
    mass = torch.tensor([0.3, 0.6, 0.9], dtype=F64)
    P = partial_sinkhorn(C, 0.05, mass, tol=1e-12, max_iter=5000)
    for k in range(3):
        Pk = partial_sinkhorn(C[k], 0.05, mass[k].item(), tol=1e-12, max_iter=5000)
        torch.testing.assert_close(P[k], Pk, rtol=0, atol=1e-12)


def test_float32_small_eps_is_stable(gen):
    C = 1 + 0.7 * torch.rand(64, 64, generator=gen)
    P = partial_sinkhorn(C, 0.01, 0.8, tol=None, max_iter=300)
    assert torch.isfinite(P).all()
    assert P.sum().item() == pytest.approx(0.8, rel=1e-5)


def test_gradcheck_unrolled(gen):
    C = torch.rand(4, 5, generator=gen, dtype=F64).requires_grad_()
    W = torch.randn(4, 5, generator=gen, dtype=F64)
    assert torch.autograd.gradcheck(
        lambda C: (partial_sinkhorn(C, 0.2, 0.7, tol=1e-12) * W).sum(), (C,))


def test_keeps_dtype_device_and_shape(device, gen):
    C = torch.rand(2, 5, 7, generator=gen).to(device)
    P = partial_sinkhorn(C, 0.1, 0.5)
    assert P.shape == C.shape and P.dtype == C.dtype and P.device == C.device


def test_float32_tolerance_is_reachable_and_meaningful(gen):
    # The stopping test works in mass units, so a 1e-6 tolerance is met in float32 at b = 256
    # and the plan it stops at is within 1e-6 of the float64 solution.
    x = torch.nn.functional.normalize(torch.randn(256, 64, generator=gen, dtype=F64), dim=-1)
    y = torch.nn.functional.normalize(x + 0.3 * torch.randn(256, 64, generator=gen, dtype=F64),
                                      dim=-1)
    C = torch.cdist(x, y)
    ref = partial_sinkhorn(C, 0.05, 0.8, tol=1e-14, max_iter=20_000)
    res = partial_sinkhorn_log(C.float(), 0.05, 0.8, tol=1e-6)
    assert res.n_iter < 1000 and res.error.item() < 1e-6
    assert (res.plan.double() - ref).abs().max().item() < 1e-6

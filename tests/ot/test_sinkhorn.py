"""Balanced Sinkhorn: plans against POT (float64), closed forms, marginals, batching, options."""

import importlib
import warnings

import numpy as np
import ot
import pytest
import torch

from mltm.ot import ConvergenceWarning, sinkhorn, sinkhorn_log

F64 = torch.float64


def _rand_simplex(n, gen, batch=None):
    shape = (n,) if batch is None else (batch, n)
    x = torch.rand(shape, generator=gen, dtype=F64) + 0.1
    return x / x.sum(-1, keepdim=True)


def _pot_plan(C, eps, a, b):
    return ot.sinkhorn(a, b, C, eps, method="sinkhorn_log", stopThr=1e-14, numItermax=100_000)


@pytest.mark.parametrize("n,m,eps", [(7, 9, 0.05), (12, 5, 0.2), (30, 30, 0.03)])
def test_plan_matches_pot_sinkhorn_log(n, m, eps, gen):
    C = torch.rand(n, m, generator=gen, dtype=F64)
    a, b = _rand_simplex(n, gen), _rand_simplex(m, gen)
    P = sinkhorn(C, eps, a, b, tol=1e-13, max_iter=100_000)
    torch.testing.assert_close(P, _pot_plan(C, eps, a, b), rtol=0, atol=1e-12)


def test_uniform_marginals_by_default(gen):
    C = torch.rand(6, 4, generator=gen, dtype=F64)
    P = sinkhorn(C, 0.1, tol=1e-13)
    torch.testing.assert_close(P.sum(1), torch.full((6,), 1 / 6, dtype=F64), rtol=0, atol=1e-13)
    torch.testing.assert_close(P.sum(0), torch.full((4,), 1 / 4, dtype=F64), rtol=0, atol=1e-13)


def test_rows_exact_and_columns_within_tol(gen):
    C = torch.rand(50, 70, generator=gen)
    a, b = _rand_simplex(50, gen).float(), _rand_simplex(70, gen).float()
    res = sinkhorn_log(C, 0.05, a, b, tol=1e-6)
    P = res.plan
    torch.testing.assert_close(P.sum(1), a, rtol=1e-5, atol=1e-7)
    assert torch.linalg.vector_norm(P.sum(0) - b).item() < 1e-6
    assert res.marginal_error.item() < 1e-6
    # The reported error is the real one, not an estimate; in float32 both are sums of 50
    # rounded terms, so they agree only to float32 rounding (~1e-8, and which way depends on
    # the CPU's summation order), hence the absolute slack and the float64 check below.
    assert res.marginal_error.item() == pytest.approx(
        torch.linalg.vector_norm(P.sum(0) - b).item(), rel=1e-2, abs=1e-7)
    a64, b64 = a.double() / a.double().sum(), b.double() / b.double().sum()
    res64 = sinkhorn_log(C.double(), 0.05, a64, b64, tol=1e-9)
    err64 = torch.linalg.vector_norm(res64.plan.sum(0) - b64).item()
    assert res64.marginal_error.item() == pytest.approx(err64, rel=1e-6, abs=1e-15)


def test_large_eps_tends_to_independent_coupling(gen):
    C = torch.rand(5, 8, generator=gen, dtype=F64)
    a, b = _rand_simplex(5, gen), _rand_simplex(8, gen)
    P = sinkhorn(C, 1e8, a, b, tol=1e-13)
    torch.testing.assert_close(P, torch.outer(a, b), rtol=0, atol=1e-9)


def test_small_eps_recovers_the_optimal_assignment(gen):
    # A cost whose unique optimal assignment is a known permutation.
    n = 8
    perm = torch.randperm(n, generator=gen)
    C = torch.rand(n, n, generator=gen, dtype=F64) + 1.0
    C[torch.arange(n), perm] = 0.0
    P = sinkhorn(C, 0.01, tol=1e-12, max_iter=10_000)
    expected = torch.zeros(n, n, dtype=F64)
    expected[torch.arange(n), perm] = 1 / n
    torch.testing.assert_close(P, expected, rtol=0, atol=1e-10)
    # And it agrees with POT's exact network-simplex solution.
    G = ot.emd(torch.full((n,), 1 / n, dtype=F64), torch.full((n,), 1 / n, dtype=F64), C)
    torch.testing.assert_close(P, G, rtol=0, atol=1e-10)


def test_batched_equals_looped(gen):
    C = torch.rand(4, 10, 13, generator=gen, dtype=F64)
    a, b = _rand_simplex(10, gen, batch=4), _rand_simplex(13, gen, batch=4)
    P = sinkhorn(C, 0.05, a, b, tol=1e-12)
    for k in range(4):
        torch.testing.assert_close(P[k], sinkhorn(C[k], 0.05, a[k], b[k], tol=1e-12),
                                   rtol=0, atol=1e-12)


def test_batched_with_shared_marginal(gen):
    C = torch.rand(3, 6, 6, generator=gen, dtype=F64)
    a = _rand_simplex(6, gen)
    P = sinkhorn(C, 0.1, a, tol=1e-12)
    torch.testing.assert_close(P.sum(-1), a.expand(3, 6), rtol=0, atol=1e-13)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_keeps_dtype_device_and_shape(dtype, device, gen):
    C = torch.rand(2, 5, 7, generator=gen, dtype=dtype).to(device)
    P = sinkhorn(C, 0.1)
    assert P.shape == C.shape and P.dtype == dtype and P.device == C.device
    assert sinkhorn(C[0], 0.1).shape == (5, 7)


@pytest.mark.filterwarnings("ignore:Sinkhorn did not converge:UserWarning")
def test_fixed_iterations_run_exactly_max_iter(gen):
    C = torch.rand(6, 6, generator=gen, dtype=F64)
    res = sinkhorn_log(C, 0.05, tol=None, max_iter=37)
    assert res.n_iter == 37
    assert res.marginal_error is None and res.error_history == []
    # Fixed iterations equal POT's same number of iterations (POT checks at 0, 10, ...; a
    # threshold of 0 never stops it).
    u = torch.full((6,), 1 / 6, dtype=F64)
    Pp = ot.sinkhorn(u, u, C, 0.05, method="sinkhorn_log", stopThr=0.0, numItermax=37)
    torch.testing.assert_close(res.plan, Pp, rtol=0, atol=1e-15)


def test_tolerance_is_checked_every_check_every(gen):
    C = torch.rand(40, 40, generator=gen, dtype=F64)
    res = sinkhorn_log(C, 0.02, tol=1e-9, check_every=7, max_iter=5000)
    iters = [i for i, _ in res.error_history]
    assert iters == list(range(7, res.n_iter + 1, 7))
    errs = [e.item() for _, e in res.error_history]
    assert errs[-1] < 1e-9 <= errs[-2]


def test_convergence_warning_when_max_iter_too_small(gen):
    C = torch.rand(30, 30, generator=gen, dtype=F64)
    with pytest.warns(ConvergenceWarning,
                      match=r"did not reach tol=1e-12 in max_iter=3 iterations"):
        sinkhorn(C, 0.01, tol=1e-12, max_iter=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sinkhorn(C, 0.01, tol=None, max_iter=3)  # fixed iterations: nothing to warn about


def test_cost_normalization_max_matches_manual_division(gen):
    C = (torch.rand(3, 6, 5, generator=gen, dtype=F64) * 7).requires_grad_()
    W = torch.randn(3, 6, 5, generator=gen, dtype=F64)
    P = sinkhorn(C, 0.05, cost_normalization="max", tol=1e-12)
    Cn = C / C.amax(dim=(-2, -1), keepdim=True)
    P_ref = sinkhorn(Cn, 0.05, tol=1e-12)
    torch.testing.assert_close(P, P_ref, rtol=0, atol=1e-14)
    g = torch.autograd.grad((P * W).sum(), C)[0]
    g_ref = torch.autograd.grad((P_ref * W).sum(), C)[0]
    torch.testing.assert_close(g, g_ref)


@pytest.mark.parametrize("grad", ["implicit", "unroll"])
def test_float32_small_eps_is_stable(grad, gen):
    # Costs in [1, 1.7] at eps = 0.01: exp(-C/eps) underflows to 0 in float32 (POT's plain
    # Sinkhorn returns an all-zero plan here); the log domain does not.
    C = (1 + 0.7 * torch.rand(64, 64, generator=gen)).requires_grad_()
    K = torch.exp(-C.detach() / 0.01)
    assert (K == 0).float().mean() > 0.9  # the premise: the kernel has (mostly) underflowed
    P = sinkhorn(C, 0.01, tol=None, max_iter=200, grad=grad)
    assert torch.isfinite(P).all() and P.sum().item() == pytest.approx(1.0, abs=1e-5)
    torch.testing.assert_close(P.sum(1), torch.full((64,), 1 / 64), rtol=1e-4, atol=0)
    loss = -torch.log(torch.diagonal(P)).mean()
    (g,) = torch.autograd.grad(loss, C)
    assert torch.isfinite(loss) and torch.isfinite(g).all()


def test_pot_exp_domain_underflows_where_we_do_not(gen):
    # Documents the failure this package avoids: same problem as above, POT's default method.
    C = 1 + 0.7 * torch.rand(64, 64, generator=gen)
    u = torch.full((64,), 1 / 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        P_pot = ot.sinkhorn(u, u, C, 0.01)
    assert P_pot.sum().item() == 0.0 or not torch.isfinite(P_pot).all()
    assert sinkhorn(C, 0.01, tol=None, max_iter=50).sum().item() == pytest.approx(1.0, abs=1e-5)


def test_numpy_marginals_are_accepted(gen):
    C = torch.rand(4, 4, generator=gen, dtype=F64)
    a = np.array([0.1, 0.2, 0.3, 0.4])
    P = sinkhorn(C, 0.1, a, tol=1e-12)
    torch.testing.assert_close(P.sum(1), torch.from_numpy(a), rtol=0, atol=1e-12)


@pytest.mark.parametrize("tol,max_iter", [(1e-6, 5000), (None, 137)])
@pytest.mark.parametrize("case", ["embeddings", "underflowing-f32", "batched-f64", "wide-range"])
def test_absorbed_iteration_equals_log_domain_iteration(case, tol, max_iter, gen):
    # The matrix-vector ("absorbed") CPU path must run the same iteration as the log-sum-exp
    # path: same iteration count, same plan up to rounding, including where exp(-C/eps)
    # underflows and where re-absorption is needed (costs spanning 5/0.01 = 500 nats).
    if case == "embeddings":
        x = torch.nn.functional.normalize(torch.randn(128, 32, generator=gen), dim=-1)
        C, eps = torch.cdist(x, torch.nn.functional.normalize(
            x + 0.3 * torch.randn(128, 32, generator=gen), dim=-1)), 0.05
    elif case == "underflowing-f32":
        C, eps = 1 + 0.7 * torch.rand(64, 64, generator=gen), 0.01
    elif case == "batched-f64":
        C, eps = torch.rand(3, 30, 50, generator=gen, dtype=F64), 0.02
    else:
        C, eps = 5 * torch.rand(40, 300, generator=gen), 0.01
    with torch.no_grad():
        fast = sinkhorn_log(C, eps, tol=tol, max_iter=max_iter, backend="absorbed")
        ref = sinkhorn_log(C, eps, tol=tol, max_iter=max_iter, backend="torch")
    assert fast.n_iter == ref.n_iter
    atol = 1e-15 if C.dtype == F64 else 2e-7
    torch.testing.assert_close(fast.plan, ref.plan, rtol=0, atol=atol)
    if tol is not None:
        assert fast.marginal_error.max().item() < tol


def test_auto_backend_on_cpu_is_absorbed_without_grad_and_torch_with_grad(gen, monkeypatch):
    # `mltm.ot.sinkhorn` the attribute is the function; fetch the module by name.
    sk = importlib.import_module("mltm.ot.sinkhorn")

    calls = []
    for name in ("_iterate_kernel", "_iterate_absorbed", "_iterate_torch"):
        original = getattr(sk, name)
        monkeypatch.setattr(sk, name,
                            lambda *a, _o=original, _n=name, **k: calls.append(_n) or _o(*a, **k))
    C = torch.rand(8, 8, generator=gen).requires_grad_()
    sk.sinkhorn(C, 0.1)  # implicit: the forward runs without autograd
    sk.sinkhorn(C, 0.1, grad="unroll")
    sk.sinkhorn(C, 0.1, backend="kernel")  # the kernel-domain path is opt-in
    # A cost range of 50 / 0.1 = 500 nats would underflow exp(-(C - min C)/eps): the
    # stabilised log-domain path runs instead.
    sk.sinkhorn(50 * C, 0.1, max_iter=3, tol=None, backend="kernel")
    assert calls == ["_iterate_absorbed", "_iterate_torch", "_iterate_kernel", "_iterate_absorbed"]


@pytest.mark.parametrize("grad", ["implicit", "unroll"])
def test_fixed_iterations_compile_without_graph_breaks(grad, gen):
    # tol=None must need no host synchronisation: torch.compile(fullgraph=True) refuses any
    # .item() or data-dependent branch, so this fails if the fixed-iteration path has one.
    C = torch.rand(16, 16, generator=gen)
    solve = torch.compile(
        lambda C: sinkhorn(C, 0.1, tol=None, max_iter=25, grad=grad), fullgraph=True,
        backend="eager"
    )
    torch.testing.assert_close(solve(C), sinkhorn(C, 0.1, tol=None, max_iter=25),
                               rtol=1e-5, atol=1e-8)

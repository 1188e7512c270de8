"""The CPU kernel-domain forward (``backend="kernel"``, opt-in; "auto" keeps the log domain):
same plan, scalings, stopping iteration and implicit gradient as the log-domain path."""

import importlib
import warnings

import ot
import pytest
import torch

from mltm.ot import sinkhorn_log

F64 = torch.float64
sk = importlib.import_module("mltm.ot.sinkhorn")


def _rand_simplex(shape, gen):
    x = torch.rand(shape, generator=gen, dtype=F64) + 0.1
    return x / x.sum(-1, keepdim=True)


def _embedding_cost(n, m, gen, batch=None, dtype=F64):
    shape = (n, 32) if batch is None else (batch, n, 32)
    x = torch.nn.functional.normalize(torch.randn(shape, generator=gen, dtype=dtype), dim=-1)
    yshape = (m, 32) if batch is None else (batch, m, 32)
    y = torch.nn.functional.normalize(torch.randn(yshape, generator=gen, dtype=dtype), dim=-1)
    return torch.cdist(x, y)


def _loss(P, W):
    return (P * W).sum() - torch.log(torch.diagonal(P, dim1=-2, dim2=-1)).mean()


def _solve_and_grad(C, eps, a, b, backend, tol=1e-12):
    Cg = C.detach().clone().requires_grad_()
    res = sinkhorn_log(Cg, eps, a, b, tol=tol, max_iter=100_000, backend=backend)
    W = torch.linspace(-1, 1, C.numel(), dtype=C.dtype).reshape(C.shape)
    (g,) = torch.autograd.grad(_loss(res.plan, W), Cg)
    return res, g


CASES = {
    "square": lambda gen: (_embedding_cost(40, 40, gen), 0.05, None, None),
    "wide-uneven": lambda gen: (_embedding_cost(20, 60, gen), 0.05,
                                _rand_simplex(20, gen), _rand_simplex(60, gen)),
    "tall-uneven": lambda gen: (torch.rand(50, 15, generator=gen, dtype=F64), 0.03,
                                _rand_simplex(50, gen), _rand_simplex(15, gen)),
    "batched": lambda gen: (_embedding_cost(25, 30, gen, batch=3), 0.05, None, None),
    "batched-uneven": lambda gen: (torch.rand(4, 12, 18, generator=gen, dtype=F64), 0.02,
                                   _rand_simplex((4, 12), gen), _rand_simplex((4, 18), gen)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_kernel_path_equals_log_path_plan_potentials_gradient(case, gen):
    C, eps, a, b = CASES[case](gen)
    assert sk._kernel_is_safe((C / -eps).reshape(-1, *C.shape[-2:]))[0]
    fast, g_fast = _solve_and_grad(C, eps, a, b, "kernel")
    ref, g_ref = _solve_and_grad(C, eps, a, b, "torch")
    assert fast.n_iter == ref.n_iter
    torch.testing.assert_close(fast.plan, ref.plan, rtol=0, atol=1e-10)
    # Not only the plan: the scalings themselves (no constant shift between the paths).
    torch.testing.assert_close(fast.log_u, ref.log_u, rtol=0, atol=1e-10)
    torch.testing.assert_close(fast.log_v, ref.log_v, rtol=0, atol=1e-10)
    torch.testing.assert_close(g_fast, g_ref, rtol=0, atol=1e-10 * g_ref.abs().max().item())


@pytest.mark.parametrize("tol,max_iter", [(1e-6, 5000), (None, 37), (1e-9, 5000)])
def test_kernel_path_stops_at_the_same_iteration(tol, max_iter, gen):
    C = _embedding_cost(30, 45, gen)
    with torch.no_grad():
        fast = sinkhorn_log(C, 0.05, tol=tol, max_iter=max_iter, backend="kernel")
        ref = sinkhorn_log(C, 0.05, tol=tol, max_iter=max_iter, backend="torch")
    assert fast.n_iter == ref.n_iter
    assert [i for i, _ in fast.error_history] == [i for i, _ in ref.error_history]
    for (_, e1), (_, e2) in zip(fast.error_history, ref.error_history):
        torch.testing.assert_close(e1, e2, rtol=1e-8, atol=1e-15)


def test_kernel_path_is_opt_in_on_cpu(gen, monkeypatch):
    calls = []
    original = sk._iterate_kernel
    monkeypatch.setattr(sk, "_iterate_kernel", lambda *a, **k: calls.append(1) or original(*a, **k))
    C = _embedding_cost(16, 16, gen).requires_grad_()
    sinkhorn_log(C, 0.05).plan.sum().backward()  # auto: the absorbed log-domain path
    assert calls == []
    sinkhorn_log(C, 0.05, backend="kernel").plan.sum().backward()
    assert calls == [1]


def test_large_cost_range_falls_back_and_matches_pot(gen, monkeypatch):
    # (max C - min C)/eps = 5/0.01 = 500 nats: exp(-(C - min C)/eps) underflows in float64's
    # direct-kernel limit (80), so the stabilised log-domain path runs; the plan still matches POT.
    calls = []
    for name in ("_iterate_kernel", "_iterate_absorbed"):
        original = getattr(sk, name)
        monkeypatch.setattr(sk, name,
                            lambda *a, _o=original, _n=name, **k: calls.append(_n) or _o(*a, **k))
    C = 5 * torch.rand(20, 30, generator=gen, dtype=F64)
    a, b = _rand_simplex(20, gen), _rand_simplex(30, gen)
    res = sinkhorn_log(C, 0.01, a, b, tol=1e-12, max_iter=100_000, backend="kernel")
    assert calls == ["_iterate_absorbed"]
    P_pot = ot.sinkhorn(a, b, C, 0.01, method="sinkhorn_log", stopThr=1e-14, numItermax=100_000)
    torch.testing.assert_close(res.plan, P_pot, rtol=0, atol=1e-11)


def test_float32_range_limit_falls_back(gen, monkeypatch):
    # float32's direct-kernel limit is 30 nats: a range of 40 takes the stabilised path too.
    calls = []
    original = sk._iterate_absorbed
    monkeypatch.setattr(sk, "_iterate_absorbed",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    C = torch.rand(24, 24, generator=gen)
    C = (C - C.min()) / (C.max() - C.min())
    with torch.no_grad():
        fast = sinkhorn_log(C, 0.025, tol=1e-6, backend="kernel")
        ref = sinkhorn_log(C, 0.025, tol=1e-6, backend="torch")
    assert calls == [1]
    torch.testing.assert_close(fast.plan, ref.plan, rtol=1e-5, atol=1e-9)  # float32 floor


def test_runtime_blow_up_rolls_back_to_the_log_path(gen, monkeypatch):
    # Scalings that leave the hard limit between two checks (forced by a tiny limit) roll the
    # chunk back and hand over to the stabilised path: the result is still the log path's.
    monkeypatch.setitem(sk._KERNEL_LIMITS, F64, (80.0, 0.5, 1.0))
    calls = []
    original = sk._iterate_absorbed
    monkeypatch.setattr(sk, "_iterate_absorbed",
                        lambda *a, **k: (calls.append(k.get("init") is not None)
                                         or original(*a, **k)))
    C = torch.rand(3, 20, 25, generator=gen, dtype=F64)
    with torch.no_grad():
        fast = sinkhorn_log(C, 0.05, tol=1e-10, max_iter=5000, backend="kernel")
        ref = sinkhorn_log(C, 0.05, tol=1e-10, max_iter=5000, backend="torch")
    assert calls == [True]
    assert fast.n_iter == ref.n_iter
    torch.testing.assert_close(fast.plan, ref.plan, rtol=0, atol=1e-12)
    torch.testing.assert_close(fast.log_u, ref.log_u, rtol=0, atol=1e-10)


def test_absorption_keeps_the_iterates(gen, monkeypatch):
    # A soft limit of 1 nat absorbs at nearly every check; nothing changes but rounding.
    monkeypatch.setitem(sk._KERNEL_LIMITS, F64, (80.0, 1.0, 400.0))
    C = _embedding_cost(30, 20, gen)
    with torch.no_grad():
        fast = sinkhorn_log(C, 0.03, tol=1e-11, max_iter=5000, backend="kernel", check_every=3)
        ref = sinkhorn_log(C, 0.03, tol=1e-11, max_iter=5000, backend="torch", check_every=3)
    assert fast.n_iter == ref.n_iter
    torch.testing.assert_close(fast.plan, ref.plan, rtol=0, atol=1e-12)
    torch.testing.assert_close(fast.log_v, ref.log_v, rtol=0, atol=1e-10)


def test_float32_kernel_path_close_to_float64(gen):
    C = _embedding_cost(64, 64, gen)
    with torch.no_grad():
        ref = sinkhorn_log(C, 0.05, tol=1e-12, max_iter=10_000, backend="torch").plan
        fast = sinkhorn_log(C.float(), 0.05, tol=1e-6, backend="kernel").plan
    assert (fast.double() - ref).abs().max().item() < 1e-7
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ConvergenceWarning at an ordinary tolerance
        sinkhorn_log(C.float(), 0.05, tol=1e-6, backend="kernel")

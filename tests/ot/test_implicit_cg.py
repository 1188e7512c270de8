"""The conjugate-gradient implicit backward (``solver="cg"``, taken by ``backend="kernel"`` on
the CPU): same gradient as the dense solve, used where it is cheap (the m-LTM loss), handing
over to the dense solve (and its pseudo-inverse) where it is not."""

import importlib

import ot
import pytest
import torch

from mltm.ot import sinkhorn, sinkhorn_log, sinkhorn_plan_vjp

F64 = torch.float64
implicit = importlib.import_module("mltm.ot.implicit")


def _mltm_loss(P):
    return -torch.log(torch.diagonal(P, dim1=-2, dim2=-1)).mean()


def _rand_simplex(shape, gen):
    x = torch.rand(shape, generator=gen, dtype=F64) + 0.1
    return x / x.sum(-1, keepdim=True)


def _embedding_cost(n, m, gen, batch=None, noise=0.5):
    lead = () if batch is None else (batch,)
    x = torch.nn.functional.normalize(torch.randn(*lead, n, 32, generator=gen, dtype=F64), dim=-1)
    k = min(n, m)
    y = torch.randn(*lead, m, 32, generator=gen, dtype=F64)
    y[..., :k, :] = x[..., :k, :] + noise * y[..., :k, :]  # matched pairs on the diagonal
    return torch.cdist(x, torch.nn.functional.normalize(y, dim=-1))


@pytest.fixture
def cg_calls(monkeypatch):
    """Records, per call of the CG solver, whether it returned a solution (True) or handed
    over to the dense solve (False)."""
    calls = []
    original = implicit._solve_schur_cg
    monkeypatch.setattr(implicit, "_solve_schur_cg",
                        lambda *a: (lambda y: calls.append(y is not None) or y)(original(*a)))
    return calls


def _plan_and_upstream(C, eps, a, b, tol, W=None):
    P = sinkhorn(C, eps, a, b, tol=tol, max_iter=100_000)
    P = P.reshape(-1, *P.shape[-2:]).detach()
    Pg = P.clone().requires_grad_()
    loss = _mltm_loss(Pg) if W is None else (Pg * W).sum()
    (G,) = torch.autograd.grad(loss, Pg)
    return P, G


def _assert_vjps_equal(P, G, eps, rtol):
    dense = sinkhorn_plan_vjp(P, G, eps)
    cg = sinkhorn_plan_vjp(P, G, eps, solver="cg")
    gC, gC_ref = cg[0], dense[0]
    assert ((gC - gC_ref).norm() / gC_ref.norm()).item() < rtol
    # dL/da, dL/db: same gauge (sum over the smaller side is 0); for the m-LTM loss they are
    # ~0 and ~-1, so compare on the scale of the larger.
    scale = max(dense[1].abs().max().item(), dense[2].abs().max().item())
    for x, y in zip(cg[1:], dense[1:]):
        assert (x - y).abs().max().item() < rtol * scale


# (cost, a, b, whether CG should finish on its own). The m-LTM loss's right-hand side is
# small only for square problems with uniform marginals (H = -I/b has the marginals' sums);
# otherwise it is O(1) and a float64 solve hands over to the dense one.
CASES = {
    "square": lambda gen: (_embedding_cost(64, 64, gen), None, None, True),
    "batched": lambda gen: (_embedding_cost(40, 40, gen, batch=3), None, None, True),
    "wide-uneven": lambda gen: (_embedding_cost(30, 70, gen), _rand_simplex(30, gen),
                                _rand_simplex(70, gen), False),
    "tall": lambda gen: (_embedding_cost(70, 30, gen), None, None, False),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("tol", [1e-6, 1e-11])
def test_cg_equals_dense_on_the_mltm_loss(case, tol, gen, cg_calls):
    C, a, b, cg_finishes = CASES[case](gen)
    P, G = _plan_and_upstream(C, 0.05, a, b, tol)
    _assert_vjps_equal(P, G, 0.05, 1e-11)
    assert cg_calls == [cg_finishes]


@pytest.mark.parametrize("dtype,rtol", [(F64, 1e-11), (torch.float32, 5e-6)])
def test_cg_equals_dense_for_a_general_upstream_gradient(dtype, rtol, gen, cg_calls):
    # A random G: its right-hand side is O(1), so CG either converges (float32 needs about
    # ten iterations) or hands over to the dense solve; either way the same gradient.
    C = _embedding_cost(96, 96, gen).to(dtype)
    W = torch.randn(1, 96, 96, generator=gen, dtype=F64).to(dtype)
    P, G = _plan_and_upstream(C, 0.05, None, None, 1e-6 if dtype == torch.float32 else 1e-12, W)
    _assert_vjps_equal(P, G, 0.05, rtol)
    assert len(cg_calls) == 1


def test_cg_iterations_are_needed_in_float64_and_reach_the_reference(gen, monkeypatch):
    # At tol 1e-6 the m-LTM right-hand side is ~1e-7 of its scale, far from float64 rounding:
    # the answer y = 0 alone would be 1e-7 off, the iterations bring it to ~1e-15.
    iters = []
    original = implicit._cg_one
    monkeypatch.setattr(implicit.torch, "dot",
                        lambda *a, _d=torch.dot: iters.append(1) or _d(*a))
    C = _embedding_cost(128, 128, gen)
    P, G = _plan_and_upstream(C, 0.05, None, None, 1e-6)
    y = original(P[0], P[0].sum(-1), P[0].sum(-2), (G * P)[0].sum(-1), (G * P)[0].sum(-2),
                 implicit._CG_RTOL[F64])
    assert y is not None and len(iters) > 3
    H = (G * P)[0]
    shortcut = (-H - P[0]) / 0.05  # y_row = 0, y_col = -1: exact only at exact convergence
    dense = sinkhorn_plan_vjp(P, G, 0.05)[0][0]
    cg = sinkhorn_plan_vjp(P, G, 0.05, solver="cg")[0][0]
    C2 = C.clone().requires_grad_()
    (g_ref,) = torch.autograd.grad(
        _mltm_loss(sinkhorn(C2, 0.05, tol=1e-13, max_iter=100_000, grad="unroll")), C2)
    rel = lambda g: ((g - g_ref).norm() / g_ref.norm()).item()  # noqa: E731
    assert rel(shortcut) > 1e-8
    assert rel(cg) < 1e-8 and abs(rel(cg) - rel(dense)) < 1e-12
    assert ((cg - dense).norm() / dense.norm()).item() < 1e-12


@pytest.mark.parametrize("shape", [(4, 6), (6, 4), (2, 5, 5)])
def test_gradcheck_kernel_backend(shape, gen):
    C = torch.rand(shape, generator=gen, dtype=F64).requires_grad_()
    W = torch.randn(shape, generator=gen, dtype=F64)

    def f(C):
        return (sinkhorn(C, 0.2, tol=1e-12, max_iter=10_000, backend="kernel") * W).sum()

    assert torch.autograd.gradcheck(f, (C,))


def test_gradcheck_kernel_backend_mltm_loss_and_marginals(gen, cg_calls):
    C = _embedding_cost(6, 6, gen).requires_grad_()
    ta = torch.randn(6, generator=gen, dtype=F64).requires_grad_()
    tb = torch.randn(6, generator=gen, dtype=F64).requires_grad_()

    def f(C, ta, tb):
        P = sinkhorn(C, 0.1, torch.softmax(ta, 0), torch.softmax(tb, 0), tol=1e-13,
                     max_iter=10_000, backend="kernel")
        return _mltm_loss(P)

    assert torch.autograd.gradcheck(f, (C, ta, tb))
    assert cg_calls and all(cg_calls)


def test_kernel_backend_gradient_matches_pot_autodiff(gen, cg_calls):
    C = _embedding_cost(48, 48, gen)
    a = torch.full((48,), 1 / 48, dtype=F64)
    C1, C2 = C.clone().requires_grad_(), C.clone().requires_grad_()
    (g,) = torch.autograd.grad(
        _mltm_loss(sinkhorn(C1, 0.05, tol=1e-12, max_iter=10_000, backend="kernel")), C1)
    P_pot = ot.sinkhorn(a, a, C2, 0.05, method="sinkhorn_log", stopThr=1e-13, numItermax=10_000)
    (g_pot,) = torch.autograd.grad(_mltm_loss(P_pot), C2)
    assert cg_calls == [True]
    assert ((g - g_pot).norm() / g_pot.norm()).item() < 1e-9


def test_kernel_backend_float32_gradient_at_float32_floor(gen):
    C64 = _embedding_cost(128, 128, gen, noise=0.7)
    C2 = C64.clone().requires_grad_()
    (g_ref,) = torch.autograd.grad(
        _mltm_loss(sinkhorn(C2, 0.05, tol=1e-13, max_iter=10_000, grad="unroll")), C2)
    C32 = C64.float().requires_grad_()
    (g32,) = torch.autograd.grad(_mltm_loss(sinkhorn(C32, 0.05, tol=1e-6, backend="kernel")), C32)
    C32b = C64.float().requires_grad_()
    (g_dense,) = torch.autograd.grad(_mltm_loss(sinkhorn(C32b, 0.05, tol=1e-6)), C32b)
    rel = lambda g: ((g.double() - g_ref).norm() / g_ref.norm()).item()  # noqa: E731
    assert rel(g32) < 1e-5
    assert rel(g32) < 3 * rel(g_dense) + 1e-7


@pytest.mark.parametrize("loss", ["mltm", "weighted"])
def test_permutation_plan(loss, gen, cg_calls):
    # As in test_implicit: a float32 plan that is a permutation up to underflow makes S
    # singular (M M^T = I). Its right-hand side is then 0 for any G (each row and column
    # holds one entry), so CG stops before its first iteration with the exact answer, which
    # is the unrolled float64 gradient (~0).
    C64 = torch.rand(12, 12, generator=gen, dtype=F64) + 10.0 * (1 - torch.eye(12, dtype=F64))
    W = torch.randn(12, 12, generator=gen, dtype=F64)
    f = _mltm_loss if loss == "mltm" else (lambda P: (P * W.to(P.dtype)).sum())
    C = C64.float().requires_grad_()
    P = sinkhorn(C, 0.05, tol=1e-6, max_iter=1000, backend="kernel")
    assert (P.detach() * (1 - torch.eye(12)) == 0).all()
    (g,) = torch.autograd.grad(f(P), C)
    assert torch.isfinite(g).all()
    assert cg_calls == [True]
    C2 = C64.clone().requires_grad_()
    (g_ref,) = torch.autograd.grad(
        f(sinkhorn(C2, 0.05, tol=1e-13, max_iter=10_000, grad="unroll")), C2)
    torch.testing.assert_close(g.double(), g_ref, atol=1e-6, rtol=0)


def test_hand_over_is_the_dense_solve_with_its_pseudo_inverse(gen, monkeypatch):
    # When CG gives up, the result is the dense solver's, bit for bit: here on the singular
    # permutation plan, where the dense solve needs the pseudo-inverse.
    pinv_calls = []
    pinv = torch.linalg.pinv
    monkeypatch.setattr(implicit.torch.linalg, "pinv",
                        lambda *a, **k: pinv_calls.append(1) or pinv(*a, **k))
    monkeypatch.setattr(implicit, "_cg_one", lambda *a: None)
    C = (torch.rand(12, 12, generator=gen) + 10.0 * (1 - torch.eye(12)))
    P = sinkhorn(C, 0.05, tol=1e-6, max_iter=1000)[None]
    G = torch.randn(1, 12, 12, generator=gen)
    cg = sinkhorn_plan_vjp(P, G, 0.05, solver="cg")
    n_pinv = len(pinv_calls)
    dense = sinkhorn_plan_vjp(P, G, 0.05)
    assert n_pinv == 1 and len(pinv_calls) == 2
    for x, y in zip(cg, dense):
        assert torch.equal(x, y)


def test_block_diagonal_plan_kernel_backend_equals_unrolled(gen):
    C = torch.rand(10, 10, generator=gen, dtype=F64)
    C[:5, 5:] += 50.0
    C[5:, :5] += 50.0
    C1, C2 = C.clone().requires_grad_(), C.clone().requires_grad_()
    P = sinkhorn(C1, 0.05, tol=1e-13, max_iter=10_000, backend="kernel")
    assert (P.detach()[:5, 5:] == 0).all()
    (g,) = torch.autograd.grad(_mltm_loss(P), C1)
    (g_unr,) = torch.autograd.grad(
        _mltm_loss(sinkhorn(C2, 0.05, tol=1e-13, max_iter=10_000, grad="unroll")), C2)
    assert ((g - g_unr).norm() / g_unr.norm()).item() < 1e-8


def test_default_backend_keeps_the_dense_solve(gen, monkeypatch):
    calls = []
    monkeypatch.setattr(implicit, "_solve_schur_cg", lambda *a: calls.append(1))
    C = _embedding_cost(16, 16, gen).requires_grad_()
    _mltm_loss(sinkhorn(C, 0.05)).backward()  # "auto": dense, the recorded numbers
    assert calls == []
    _mltm_loss(sinkhorn_log(C, 0.05, backend="kernel").plan).backward()
    assert calls == [1]


def test_unknown_solver_is_rejected(gen):
    P = torch.full((1, 3, 3), 1 / 9, dtype=F64)
    with pytest.raises(ValueError, match="solver must be"):
        sinkhorn_plan_vjp(P, P, 0.1, solver="lu")

"""Gradients through the balanced plan: gradcheck, implicit vs unrolled, memory."""

import pytest
import torch

from mltm.ot import sinkhorn, sinkhorn_plan_vjp
from mltm.profiling import saved_tensor_bytes

F64 = torch.float64


def _mltm_loss(P):
    """The m-LTM loss up to a constant: -mean_i log P_ii = KL(I/b || P) - log b."""
    return -torch.log(torch.diagonal(P, dim1=-2, dim2=-1)).mean()


@pytest.mark.parametrize("shape", [(4, 6), (6, 4), (2, 5, 5)])
@pytest.mark.parametrize("grad", ["implicit", "unroll"])
def test_gradcheck_cost(shape, grad, gen):
    C = torch.rand(shape, generator=gen, dtype=F64).requires_grad_()
    W = torch.randn(shape, generator=gen, dtype=F64)
    f = lambda C: (sinkhorn(C, 0.2, tol=1e-12, max_iter=10_000, grad=grad) * W).sum()  # noqa: E731
    assert torch.autograd.gradcheck(f, (C,))


def test_gradcheck_marginals(gen):
    # Marginals live on the simplex: parametrise them by a softmax so the gradient is unique.
    C = torch.rand(4, 5, generator=gen, dtype=F64)
    ta = torch.randn(4, generator=gen, dtype=F64).requires_grad_()
    tb = torch.randn(5, generator=gen, dtype=F64).requires_grad_()
    W = torch.randn(4, 5, generator=gen, dtype=F64)

    def f(ta, tb):
        P = sinkhorn(C, 0.3, torch.softmax(ta, 0), torch.softmax(tb, 0), tol=1e-13, max_iter=10_000)
        return (P * W).sum()

    assert torch.autograd.gradcheck(f, (ta, tb))


def test_implicit_equals_unrolled_on_the_mltm_loss(gen):
    # b = 64 embeddings-like costs, the paper's eps; float64 so the comparison is exact.
    x = torch.nn.functional.normalize(torch.randn(64, 16, generator=gen, dtype=F64), dim=-1)
    y = torch.nn.functional.normalize(x + 0.5 * torch.randn(64, 16, generator=gen, dtype=F64),
                                      dim=-1)
    C = torch.cdist(x, y).requires_grad_()
    g_imp = torch.autograd.grad(_mltm_loss(sinkhorn(C, 0.05, tol=1e-13, max_iter=10_000)), C)[0]
    g_unr = torch.autograd.grad(
        _mltm_loss(sinkhorn(C, 0.05, tol=1e-13, max_iter=10_000, grad="unroll")), C
    )[0]
    rel = (g_imp - g_unr).norm() / g_unr.norm()
    assert rel.item() < 1e-9


def test_float32_implicit_gradient_reaches_float32_floor(gen):
    x = torch.nn.functional.normalize(torch.randn(128, 32, generator=gen, dtype=F64), dim=-1)
    y = torch.nn.functional.normalize(x + 0.7 * torch.randn(128, 32, generator=gen, dtype=F64),
                                      dim=-1)
    C64 = torch.cdist(x, y).requires_grad_()
    g_ref = torch.autograd.grad(_mltm_loss(sinkhorn(C64, 0.05, tol=1e-13, max_iter=10_000)), C64)[0]
    C32 = C64.detach().float().requires_grad_()
    g32 = torch.autograd.grad(_mltm_loss(sinkhorn(C32, 0.05, tol=1e-6)), C32)[0]
    assert ((g32.double() - g_ref).norm() / g_ref.norm()).item() < 1e-5


def test_vjp_transposed_problem_is_consistent(gen):
    # Solving on the smaller side must not depend on which side is smaller.
    C = torch.rand(5, 9, generator=gen, dtype=F64)
    P = sinkhorn(C, 0.1, tol=1e-13)
    G = torch.randn(5, 9, generator=gen, dtype=F64)
    gC, ga, gb = sinkhorn_plan_vjp(P[None], G[None], 0.1)
    gCt, gat, gbt = sinkhorn_plan_vjp(P.T[None], G.T[None], 0.1)
    torch.testing.assert_close(gC[0], gCt[0].T)
    # Marginal gradients agree up to the (+t, -t) shift that leaves the plan unchanged.
    shift = (ga - gbt).mean()
    torch.testing.assert_close(ga - shift, gbt)
    torch.testing.assert_close(gb + shift, gat)


def test_implicit_backward_state_is_one_plan_whatever_the_iterations(gen):
    C = torch.rand(256, 256, generator=gen).requires_grad_()
    sizes = []
    for n_iter in (20, 200):
        _, nbytes = saved_tensor_bytes(lambda: sinkhorn(C, 0.05, tol=None, max_iter=n_iter))
        sizes.append(nbytes)
    assert sizes[0] == sizes[1] == 256 * 256 * 4  # exactly the float32 plan
    _, unrolled = saved_tensor_bytes(
        lambda: sinkhorn(C, 0.05, tol=None, max_iter=20, grad="unroll"))
    assert unrolled > 20 * 256 * 256 * 4  # unrolling keeps at least one n x m tensor per iteration



def test_permutation_plan_in_float32_takes_the_pseudo_inverse_and_matches_unrolled(
        gen, monkeypatch):
    # The failure that stopped a training run: every clip far closer to its own caption, so
    # the float32 plan is a permutation up to underflow (off-diagonal exp(-200) = 0). Each
    # row of the Schur complement is then zero, S is singular and torch.linalg.solve used to
    # raise "The solver failed because the input matrix is singular".
    import mltm.ot.implicit as implicit

    calls = []
    pinv = torch.linalg.pinv
    monkeypatch.setattr(implicit.torch.linalg, "pinv",
                        lambda *a, **k: calls.append(1) or pinv(*a, **k))
    C64 = torch.rand(12, 12, generator=gen, dtype=F64) + 10.0 * (1 - torch.eye(12, dtype=F64))
    C = C64.float().requires_grad_()
    P = sinkhorn(C, 0.05, tol=1e-6, max_iter=1000)
    assert (P.detach() * (1 - torch.eye(12)) == 0).all()
    g = torch.autograd.grad(_mltm_loss(P), C)[0]
    assert calls, "the singular system did not take the pseudo-inverse path"
    assert torch.isfinite(g).all()
    # The exact gradient (float64, unrolled: the plan is a permutation up to e^-200) is ~0.
    C2 = C64.clone().requires_grad_()
    g_ref = torch.autograd.grad(
        _mltm_loss(sinkhorn(C2, 0.05, tol=1e-13, max_iter=10_000, grad="unroll")), C2)[0]
    torch.testing.assert_close(g.double(), g_ref, atol=1e-6, rtol=0)


def test_block_diagonal_plan_gradient_equals_unrolled(gen):
    # Two groups 50 apart: the cross-group entries underflow even in float64, so the support
    # splits in two blocks, each with its own (+t, -t) shift. The gradient must not see it.
    C = torch.rand(10, 10, generator=gen, dtype=F64)
    C[:5, 5:] += 50.0
    C[5:, :5] += 50.0
    C.requires_grad_()
    P = sinkhorn(C, 0.05, tol=1e-13, max_iter=10_000)
    assert (P.detach()[:5, 5:] == 0).all()
    g_imp = torch.autograd.grad(_mltm_loss(P), C)[0]
    C2 = C.detach().clone().requires_grad_()
    g_unr = torch.autograd.grad(
        _mltm_loss(sinkhorn(C2, 0.05, tol=1e-13, max_iter=10_000, grad="unroll")), C2)[0]
    assert ((g_imp - g_unr).norm() / g_unr.norm()).item() < 1e-8

"""The released code's exp-domain Sinkhorn (mltm.ot.released): POT bit for bit, and where
float32 breaks, against the closed forms of the first half-step."""

import math
import warnings

import ot
import pytest
import torch
import torch.nn.functional as F

from mltm.losses import MLTMLoss
from mltm.metric import MahalanobisCost
from mltm.ot.released import (
    NumericalErrorWarning,
    released_cost,
    released_mltm_loss,
    released_sinkhorn,
)

LOG_F32_MAX = math.log(torch.finfo(torch.float32).max)  # 88.72: e^t overflows above it
# Half the smallest float32 subnormal: anything below rounds to 0.
LOG_F32_ZERO = math.log(2.0**-150)


def _uniform(n, dtype):
    return torch.ones(n, dtype=dtype) / n


def _pot(a, b, C, eps, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ot.sinkhorn(a, b, C, eps, method="sinkhorn", log=True, **kw)


def _same(x, y):
    """Equal bit for bit, NaN where the other is NaN."""
    return torch.equal(torch.isnan(x), torch.isnan(y)) and torch.equal(
        torch.nan_to_num(x), torch.nan_to_num(y))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("eps", [0.1, 0.03, 0.02, 0.01, 0.005])
def test_plan_and_unrolled_gradient_equal_pot(dtype, eps, gen):
    # Costs in [0.7, 1] after the released C / C.max(): the regime of a batch at initialisation,
    # where float32 breaks at the small eps (the last ones also fire POT's safeguard).
    n = 24
    C = 0.7 + 0.3 * torch.rand(n, n, generator=gen, dtype=dtype)
    C = (C / C.max()).requires_grad_()
    a = _uniform(n, dtype)
    P_pot, log = _pot(a, a, C, eps)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NumericalErrorWarning)
        res = released_sinkhorn(a, a, C, eps)
    assert _same(res.plan, P_pot)
    assert res.n_iter == log["niter"] + 1
    loss_pot = -torch.log(torch.diagonal(P_pot)).sum()
    loss = -torch.log(torch.diagonal(res.plan)).sum()
    (g_pot,) = torch.autograd.grad(loss_pot, C)
    (g,) = torch.autograd.grad(loss, C)
    assert _same(g, g_pot)


def test_float64_converges_where_float32_runs_to_the_cap(gen):
    n = 32
    C64 = torch.rand(n, n, generator=gen, dtype=torch.float64)
    C64 = C64 / C64.max()
    a64 = _uniform(n, torch.float64)
    r64 = released_sinkhorn(a64, a64, C64, 0.05)
    assert r64.converged and r64.n_iter < 1000 and r64.marginal_error < 1e-9
    r32 = released_sinkhorn(a64.float(), a64.float(), C64.float(), 0.05)
    # The 1e-9 threshold is below float32 resolution of the marginals (1/32 * 6e-8).
    assert not r32.converged and r32.n_iter == 1000 and r32.numerical_error_at is None
    torch.testing.assert_close(r32.plan.double(), r64.plan, rtol=0, atol=1e-7)


# A constant cost c: POT's first half-step gives x = e^{-c/eps} and v = (1/m) e^{c/eps}; the
# plan is uniform after it (the error check at iteration 0 stops the loop in exact arithmetic).
@pytest.mark.parametrize("c,eps", [(0.85, 0.01), (0.90, 0.01), (0.95, 0.01), (0.99, 0.01),
                                   (0.95, 0.02), (0.5, 0.005), (0.3, 0.01)])
def test_forward_safeguard_and_underflow_follow_the_closed_form(c, eps):
    n = 32
    C = torch.full((n, n), c, dtype=torch.float32)
    a = _uniform(n, torch.float32)
    t = c / eps
    overflow = t - math.log(n) > LOG_F32_MAX          # v = (1/m) e^{c/eps} is inf
    zero_plan = -t - 2 * math.log(n) < LOG_F32_ZERO   # K / (n m) rounds to 0
    assert abs(t - math.log(n) - LOG_F32_MAX) > 0.5    # the cases are not at the boundary
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = released_sinkhorn(a, a, C, eps)
    fired = [w for w in caught if issubclass(w.category, NumericalErrorWarning)]
    assert (res.numerical_error_at == 0) == overflow == bool(fired)
    if overflow:
        # POT returns the initial scalings: the plan is K / (n m), all 0 where it underflows
        assert str(fired[0].message) == "Warning: numerical errors at iteration 0"
        assert bool((res.plan == 0).all()) == zero_plan
        loss, _ = released_mltm_loss_from_plan(res.plan)
        assert bool(torch.isnan(loss)) == zero_plan  # 0 * log 0 = NaN in the released sum
    else:
        # subnormal kernels (c/eps > 87.3) keep ~14 bits: the plan is uniform to 1e-3
        torch.testing.assert_close(res.plan, torch.full((n, n), 1 / n**2), rtol=1e-3, atol=0)


def released_mltm_loss_from_plan(plan):
    """The released loss sum(-pi_hat * log(pi)) on a given plan."""
    b = plan.shape[0]
    return torch.sum(-torch.eye(b) / b * torch.log(plan)), None


@pytest.mark.parametrize("c,eps", [(0.80, 0.02), (0.85, 0.02), (0.95, 0.02), (1.0, 0.02),
                                   (0.5, 0.01), (0.6, 0.01), (1.0, 0.03), (0.9, 0.01)])
def test_backward_overflow_follows_the_closed_form(c, eps):
    # Autograd differentiates v = b / x as -grad * (v / x) = -grad * e^{2c/eps} / m: it
    # overflows float32 once 2c/eps - log m > 88.72, while the forward is still finite.
    n = 32
    C = torch.full((n, n), c, dtype=torch.float32, requires_grad=True)
    a = _uniform(n, torch.float32)
    t = c / eps
    assert t - math.log(n) < LOG_F32_MAX  # forward stays finite: no safeguard
    predicted = 2 * t - math.log(n) > LOG_F32_MAX
    assert abs(2 * t - math.log(n) - LOG_F32_MAX) > 0.5
    # stop_thr=0: both dtypes unroll all 1000 iterations, so their gradients compare
    res = released_sinkhorn(a, a, C, eps, stop_thr=0.0)
    assert res.numerical_error_at is None and bool(torch.isfinite(res.plan).all())
    (g32,) = torch.autograd.grad(-torch.log(torch.diagonal(res.plan)).sum(), C)
    assert (not bool(torch.isfinite(g32).all())) == predicted
    # float64 has the same formulas with thresholds 709.78: finite here, and equal to float32
    # wherever float32 stayed finite.
    C64 = C.detach().double().requires_grad_()
    r64 = released_sinkhorn(a.double(), a.double(), C64, eps, stop_thr=0.0)
    (g64,) = torch.autograd.grad(-torch.log(torch.diagonal(r64.plan)).sum(), C64)
    assert bool(torch.isfinite(g64).all())
    if not predicted:
        torch.testing.assert_close(g32.double(), g64, rtol=1e-3, atol=1e-3 * g64.abs().max())


def test_released_cost_is_the_released_einsum(gen):
    b, d = 6, 10
    audio = F.normalize(torch.randn(b, d, generator=gen, dtype=torch.float64), dim=-1)
    text = F.normalize(torch.randn(b, d, generator=gen, dtype=torch.float64), dim=-1)
    A = torch.rand(d, d, generator=gen, dtype=torch.float64)
    M = 0.5 * (A + A.T) + torch.eye(d, dtype=torch.float64)
    audio.requires_grad_()
    # released code (tools/loss.py): rows captions, columns clips, only diag(M) is read, and
    # the maximum is not detached
    D = audio.unsqueeze(0).repeat(b, 1, 1) - text.unsqueeze(1).repeat(1, b, 1)
    ref = torch.sqrt(torch.einsum("ijk,ikj,kk->ij", D, D.transpose(1, 2), M))
    ref = ref / ref.max()
    got = released_cost(audio, text, torch.diagonal(M))
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    R = torch.rand(b, b, generator=gen, dtype=torch.float64)
    (g_ref,) = torch.autograd.grad((ref * R).sum(), audio)
    (g,) = torch.autograd.grad((got * R).sum(), audio)
    torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12)
    audio = audio.detach()
    # ... and the library's diagonal metric, transposed (rows clips there)
    cost = MahalanobisCost(d, "diagonal", dtype=torch.float64)
    with torch.no_grad():
        cost.weight.copy_(torch.diagonal(M))
    lib = cost(audio, text).T
    torch.testing.assert_close(released_cost(audio, text, torch.diagonal(M)), lib / lib.max(),
                               rtol=1e-10, atol=1e-10)


def test_released_loss_is_nan_at_eps_001_where_the_stable_loss_is_finite(gen):
    # A batch like the start of training: unit embeddings from two unrelated maps in 1024-d,
    # so that every normalised cost is close to 1 (here >= 0.9, so c/eps >= 90 at eps 0.01).
    b, d = 32, 1024
    audio = F.normalize(torch.randn(b, d, generator=gen), dim=-1).requires_grad_()
    text = F.normalize(torch.randn(b, d, generator=gen), dim=-1)
    w = torch.ones(d)
    C = released_cost(audio.detach(), text, w)
    colmin = C.min(0).values
    assert colmin.max() / 0.01 - math.log(b) > LOG_F32_MAX  # closed form: v overflows
    loss, res = released_mltm_loss(audio, text, w, 0.01)
    assert res.numerical_error_at == 0 and bool(torch.isnan(loss))
    # the largest cost (1 after C / C.max()) gives K / (n m) = e^{-100} / 1024: 0 in float32
    assert 1 / 0.01 + 2 * math.log(b) > -LOG_F32_ZERO
    assert bool((res.plan == 0).any())
    (g,) = torch.autograd.grad(loss, audio)
    assert bool(torch.isnan(g).any())
    # The library's log-domain loss on the same batch, float64: finite loss and gradient.
    audio64 = audio.detach().double().requires_grad_()
    lib = MLTMLoss(MahalanobisCost(d, "diagonal", dtype=torch.float64), eps=0.01,
                   cost_normalization="max", sinkhorn_kwargs={"tol": 1e-9, "max_iter": 10_000})
    lib_loss = lib(audio64, text.double())
    (g64,) = torch.autograd.grad(lib_loss, audio64)
    assert bool(torch.isfinite(lib_loss)) and bool(torch.isfinite(g64).all())
    # ... and the released exp-domain loss in float64, same value up to the constant log b
    loss64, res64 = released_mltm_loss(audio64.detach(), text.double(), w.double(), 0.01)
    assert res64.numerical_error_at is None and res64.converged
    torch.testing.assert_close(loss64 - math.log(b), lib_loss.detach(), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("call,message", [
    (lambda: released_sinkhorn(_uniform(3, torch.float64), _uniform(4, torch.float64),
                               torch.rand(3, 5, dtype=torch.float64), 0.1),
     "marginals must have shapes (3,) and (5,) for a cost of shape (3, 5); got (3,) and (4,)"),
    (lambda: released_sinkhorn(_uniform(3, torch.float64), _uniform(3, torch.float64),
                               torch.rand(3, 3, dtype=torch.float64), 0.0),
     "reg must be positive; got 0.0"),
    (lambda: released_sinkhorn(_uniform(3, torch.float64), _uniform(3, torch.float64),
                               torch.rand(2, 3, 3, dtype=torch.float64), 0.1),
     "released_sinkhorn needs one (n, m) cost matrix; got shape (2, 3, 3)"),
    (lambda: released_cost(torch.rand(4, 3), torch.rand(4, 3), torch.rand(4)),
     "released_cost needs audio and text of one shape (b, d) and a weight of shape (d,); "
     "got (4, 3), (4, 3) and (4,)"),
])
def test_bad_input_is_named(call, message):
    with pytest.raises(ValueError) as err:
        call()
    assert str(err.value) == message

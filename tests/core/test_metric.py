"""MahalanobisCost against brute force, the PSD projection against closed forms."""

import pytest
import torch

from mltm.metric import (
    MahalanobisCost,
    is_feasible,
    project_psd,
    project_psd_if_needed,
    safe_sqrt,
    singular_value_clamp,
)
from mltm.profiling import saved_tensor_bytes


def brute_force(x, y, M, squared=False):
    out = torch.empty(x.shape[0], y.shape[0], dtype=x.dtype)
    for i in range(x.shape[0]):
        for j in range(y.shape[0]):
            d = x[i] - y[j]
            v = d @ M @ d
            out[i, j] = v if squared else v.clamp_min(0).sqrt()
    return out


def random_psd(d, gen, rank=None):
    A = torch.randn(d, rank or d, generator=gen, dtype=torch.float64)
    return A @ A.T / d


@pytest.mark.parametrize("kind", ["full", "lowrank", "diagonal", "euclidean"])
@pytest.mark.parametrize("squared", [False, True])
def test_cost_equals_brute_force(kind, squared):
    g = torch.Generator().manual_seed(0)
    d = 12
    cost = MahalanobisCost(d, kind, rank=5 if kind == "lowrank" else None, squared=squared,
                           dtype=torch.float64, generator=g)
    with torch.no_grad():
        if kind == "full":
            cost.M.copy_(random_psd(d, g))
        elif kind == "diagonal":
            cost.weight.copy_(torch.rand(d, generator=g, dtype=torch.float64) + 0.1)
        elif kind == "lowrank":
            cost.L.copy_(torch.randn(d, 5, generator=g, dtype=torch.float64))
    x = torch.randn(7, d, generator=g, dtype=torch.float64)
    y = torch.randn(9, d, generator=g, dtype=torch.float64)
    expected = brute_force(x, y, cost.matrix.detach(), squared)
    torch.testing.assert_close(cost(x, y), expected, rtol=1e-10, atol=1e-10)


def test_euclidean_equals_cdist_and_batched_equals_looped():
    g = torch.Generator().manual_seed(1)
    cost = MahalanobisCost(16, "euclidean")
    x, y = torch.randn(3, 5, 16, generator=g), torch.randn(3, 6, 16, generator=g)
    batched = cost(x, y)
    assert batched.shape == (3, 5, 6)
    for k in range(3):
        torch.testing.assert_close(batched[k], torch.cdist(x[k], y[k]), rtol=1e-5, atol=1e-5)


def test_gradcheck_full_metric():
    g = torch.Generator().manual_seed(2)
    d = 5
    cost = MahalanobisCost(d, "full", dtype=torch.float64)
    with torch.no_grad():
        cost.M.copy_(random_psd(d, g) + torch.eye(d, dtype=torch.float64))
    x = torch.randn(4, d, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(3, d, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, y, M: _with_M(cost, M)(x, y),
                                    (x, y, cost.M.detach().clone().requires_grad_()))


def _with_M(cost, M):
    def f(x, y):
        return torch.func.functional_call(cost, {"M": M}, (x, y))
    return f


def test_safe_sqrt_gradient_is_zero_not_nan_at_coincident_points():
    cost = MahalanobisCost(4, "full", dtype=torch.float64)
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    y = x.detach().clone().requires_grad_()  # x_i == y_i: zero distances on the diagonal
    C = cost(x, y)
    assert torch.all(C.diagonal() == 0)
    C.sum().backward()
    for t in (x.grad, y.grad, cost.M.grad):
        assert torch.isfinite(t).all()
    # and plain sqrt would have produced NaN here
    z = torch.zeros(1, requires_grad=True)
    torch.sqrt(z).backward()
    assert not torch.isfinite(z.grad).all()
    w = torch.zeros(1, requires_grad=True)
    safe_sqrt(w).backward()
    assert w.grad.item() == 0.0


def test_no_pairwise_difference_tensor_is_saved():
    b, d = 128, 256
    cost = MahalanobisCost(d, "full")
    x, y = torch.randn(b, d, requires_grad=True), torch.randn(b, d, requires_grad=True)
    _, saved = saved_tensor_bytes(lambda: cost(x, y).sum())
    # a b x b x d float32 difference tensor alone would be 16.8 MB
    assert saved < 0.1 * b * b * d * 4, saved


def test_project_psd_closed_forms():
    # diagonal matrix: projection clamps the diagonal
    D = torch.diag(torch.tensor([3.0, -2.0, 0.5, -1e-3], dtype=torch.float64))
    P, clamped = project_psd(D)
    torch.testing.assert_close(P, torch.diag(torch.tensor([3.0, 0.0, 0.5, 0.0],
                                                          dtype=torch.float64)))
    assert clamped == 2
    # a PSD matrix is unchanged; the projection is idempotent; the result is symmetric PSD
    g = torch.Generator().manual_seed(3)
    S = random_psd(8, g)
    torch.testing.assert_close(project_psd(S)[0], S, rtol=1e-12, atol=1e-12)
    A = torch.randn(8, 8, generator=g, dtype=torch.float64)
    P, _ = project_psd(A)
    assert torch.equal(P, P.T)
    assert torch.linalg.eigvalsh(P)[0] >= -1e-12
    torch.testing.assert_close(project_psd(P)[0], P, rtol=1e-10, atol=1e-10)
    # nearest in Frobenius norm: no random PSD matrix is closer to A
    best = torch.linalg.norm(A - P)
    for _ in range(200):
        Q = P + 0.05 * random_psd(8, g, rank=2)
        assert torch.linalg.norm(A - Q) >= best - 1e-12
    # a positive floor gives a positive definite matrix
    P, _ = project_psd(A, min_eigenvalue=0.1)
    assert torch.linalg.eigvalsh(P)[0] >= 0.1 - 1e-12


def test_released_svd_projection_is_a_no_op_on_an_indefinite_matrix():
    g = torch.Generator().manual_seed(4)
    A = torch.rand(64, 64, generator=g, dtype=torch.float64)
    M0 = 0.5 * (A + A.T) + torch.eye(64, dtype=torch.float64)  # the paper/released init
    assert torch.linalg.eigvalsh(M0)[0] < -0.5  # indefinite
    out = singular_value_clamp(M0)
    assert torch.linalg.norm(out - M0) < 1e-10 * torch.linalg.norm(M0)
    assert torch.linalg.eigvalsh(0.5 * (out + out.T))[0] < -0.5  # still indefinite
    fixed, clamped = project_psd(M0)
    assert clamped > 10 and torch.linalg.eigvalsh(fixed)[0] >= -1e-10


def test_paper_init_is_projected_for_full_and_kept_for_diagonal():
    g = torch.Generator().manual_seed(5)
    full = MahalanobisCost(64, "full", init="paper", generator=g, dtype=torch.float64)
    assert full.min_eigenvalue_of_matrix() >= -1e-10
    diag = MahalanobisCost(64, "diagonal", init="paper", generator=torch.Generator().manual_seed(5))
    assert torch.all((diag.weight >= 1) & (diag.weight < 2))
    ident = MahalanobisCost(8, "full")
    torch.testing.assert_close(ident.matrix, torch.eye(8))


def test_project_step_keeps_full_and_diagonal_feasible():
    full = MahalanobisCost(6, "full", dtype=torch.float64)
    with torch.no_grad():
        full.M.sub_(3 * torch.eye(6, dtype=torch.float64))  # an optimiser step gone negative
    assert full.min_eigenvalue_of_matrix() < 0
    assert full.project_() == 6
    assert full.min_eigenvalue_of_matrix() >= -1e-12
    diag = MahalanobisCost(6, "diagonal")
    with torch.no_grad():
        diag.weight[:2] = -1.0
    assert diag.project_() == 2 and torch.all(diag.weight >= 0)


@pytest.fixture
def eigh_calls(monkeypatch):
    """Count the calls of ``torch.linalg.eigh`` (the eigendecomposition of eq. 11)."""
    calls = []
    real = torch.linalg.eigh

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.linalg, "eigh", counting)
    return calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("floor", [0.0, 0.05])
def test_projected_step_skips_eigh_when_m_is_feasible(dtype, floor, eigh_calls):
    g = torch.Generator().manual_seed(11)
    d = 32
    S = (random_psd(d, g) + (floor + 0.1) * torch.eye(d, dtype=torch.float64)).to(dtype)
    assert torch.linalg.eigvalsh(S.double())[0] > floor
    assert is_feasible(S, floor)
    out, clamped, computed = project_psd_if_needed(S, floor)
    assert not computed and clamped == 0 and not eigh_calls
    assert out.dtype == dtype and torch.equal(out, S)  # unchanged, bit for bit
    # the same as always projecting, to the rounding of the eigendecomposition
    ref, ref_clamped = project_psd(S, floor)
    assert ref_clamped == 0
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(out, ref, rtol=tol, atol=tol)
    # through the module: M unchanged, the counters say the eigendecomposition was skipped
    cost = MahalanobisCost(d, "full", min_eigenvalue=floor, dtype=dtype)
    eigh_calls.clear()
    with torch.no_grad():
        cost.M.copy_(S)
    assert cost.project_() == 0 and not eigh_calls
    assert torch.equal(cost.M, S)
    assert (cost.projections_computed, cost.projections_skipped) == (0, 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("floor", [0.0, 0.05])
def test_projected_step_equals_eigh_projection_when_m_is_not_feasible(dtype, floor, eigh_calls):
    g = torch.Generator().manual_seed(12)
    d = 32
    A = torch.randn(d, d, generator=g, dtype=torch.float64).to(dtype)  # indefinite, asymmetric
    assert not is_feasible(A, floor)
    ref, ref_clamped = project_psd(A, floor)
    eigh_calls.clear()
    out, clamped, computed = project_psd_if_needed(A, floor)
    assert computed and len(eigh_calls) == 1
    assert torch.equal(out, ref) and clamped == ref_clamped > 0
    assert (torch.linalg.eigvalsh(out.double())[0]
            >= floor - (1e-12 if dtype == torch.float64 else 1e-5))
    cost = MahalanobisCost(d, "full", min_eigenvalue=floor, dtype=dtype)
    with torch.no_grad():
        cost.M.copy_(A)
    assert cost.project_() == ref_clamped and torch.equal(cost.M, ref)
    assert (cost.projections_computed, cost.projections_skipped) == (1, 0)
    # forced: always the eigendecomposition, same result
    with torch.no_grad():
        cost.M.copy_(A)
    assert cost.project_(force=True) == ref_clamped and torch.equal(cost.M, ref)
    assert cost.projections_computed == 2


@pytest.mark.parametrize("floor", [0.0, 0.05])
def test_projected_step_on_the_boundary(floor):
    """λ_min == min_eigenvalue: Cholesky of the shifted matrix fails, eigh runs, M stays put."""
    g = torch.Generator().manual_seed(13)
    d = 16
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    evals = torch.linspace(floor, 2.0, d, dtype=torch.float64)
    evals[:3] = floor  # a triple eigenvalue exactly on the floor
    S = (Q * evals) @ Q.T
    S = 0.5 * (S + S.T)
    out, clamped, computed = project_psd_if_needed(S, floor)
    ref, _ = project_psd(S, floor)
    torch.testing.assert_close(out, ref if computed else S, rtol=0, atol=0)
    torch.testing.assert_close(out, S, rtol=1e-12, atol=1e-12)  # already feasible
    # just outside: one eigenvalue below the floor is always projected
    evals[0] = floor - 1e-3
    S2 = (Q * evals) @ Q.T
    out2, clamped2, computed2 = project_psd_if_needed(S2, floor)
    assert computed2 and clamped2 >= 1
    assert torch.linalg.eigvalsh(out2)[0] >= floor - 1e-12


def test_projected_steps_of_a_training_run_match_always_projecting():
    """Adam steps on a full M, projected the cheap way and the eigh way: same trajectory."""
    d = 24
    runs = []
    for force in (False, True):
        torch.manual_seed(0)
        cost = MahalanobisCost(d, "full", dtype=torch.float64)
        opt = torch.optim.Adam(cost.parameters(), lr=0.05)
        x, y = torch.randn(40, d, dtype=torch.float64), torch.randn(40, d, dtype=torch.float64)
        for _ in range(30):
            opt.zero_grad()
            (cost(x, y).diagonal().mean() - cost(x, y).mean()).backward()
            opt.step()
            cost.project_(force=force)
        runs.append(cost)
    cheap, always = runs
    assert 0 < cheap.projections_computed < 30  # both paths ran
    torch.testing.assert_close(cheap.M, always.M, rtol=1e-9, atol=1e-9)


def test_lowrank_identity_init_has_euclidean_scale():
    g = torch.Generator().manual_seed(6)
    cost = MahalanobisCost(256, "lowrank", rank=64, generator=g)
    x = torch.randn(512, 256, generator=g)
    ratio = (cost(x[:256], x[256:]).detach() / torch.cdist(x[:256], x[256:])).mean()
    assert abs(float(ratio) - 1) < 0.1


@pytest.mark.parametrize("kwargs,message", [
    (dict(dim=4, kind="cosine"),
     "unknown metric kind 'cosine'; choose one of ('full', 'lowrank', 'diagonal', 'euclidean')"),
    (dict(dim=4, init="random"), "unknown init 'random'; choose one of ('identity', 'paper')"),
    (dict(dim=4, kind="lowrank"), "kind='lowrank' needs rank in [1, dim=4], got rank=None"),
    (dict(dim=4, kind="full", rank=2), "rank is only used with kind='lowrank' (got kind='full')"),
    (dict(dim=0), "dim must be positive, got 0"),
])
def test_constructor_errors(kwargs, message):
    with pytest.raises(ValueError) as e:
        MahalanobisCost(**kwargs)
    assert str(e.value) == message


def test_dimension_mismatch_error():
    with pytest.raises(ValueError) as e:
        MahalanobisCost(8)(torch.zeros(2, 8), torch.zeros(2, 6))
    assert str(e.value) == "embeddings have dimension 8 and 6, the metric was built for dim=8"

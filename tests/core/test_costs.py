"""Pairwise costs (mltm.costs): brute force over explicit b×b×d differences in float64, the same
bits as the formulas they replaced, and no (n, m, d) tensor."""

from __future__ import annotations

import pytest
import torch

from mltm.costs import (
    cosine_distance,
    cosine_distance_normalized,
    euclidean_distance,
    mahalanobis_distance,
    safe_sqrt,
    squared_euclidean_distance,
    squared_mahalanobis_distance,
)
from mltm.metric import MahalanobisCost
from mltm.profiling import saved_tensor_bytes

F64 = torch.float64


def points(n=9, m=7, d=5, seed=0, dtype=F64, batch=()):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*batch, n, d, generator=g, dtype=dtype),
            torch.randn(*batch, m, d, generator=g, dtype=dtype))


def psd(d=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(d, d, generator=g, dtype=F64)
    return A @ A.T + 0.1 * torch.eye(d, dtype=F64)


# -- brute force: the explicit (n, m, d) differences, float64 ---------------------------------


def brute_sq_mahalanobis(x, y, M):
    diff = x[..., :, None, :] - y[..., None, :, :]  # (..., n, m, d)
    return torch.einsum("...ijk,kl,...ijl->...ij", diff, M, diff)


def test_cosine_against_brute_force():
    x, y = points()
    want = torch.empty(x.shape[0], y.shape[0], dtype=F64)
    for i in range(x.shape[0]):
        for j in range(y.shape[0]):
            want[i, j] = 1 - (x[i] @ y[j]) / (x[i].norm() * y[j].norm())
    torch.testing.assert_close(cosine_distance(x, y), want, rtol=0, atol=1e-14)
    xn, yn = (torch.nn.functional.normalize(t, dim=-1) for t in (x, y))
    torch.testing.assert_close(cosine_distance_normalized(xn, yn), want, rtol=0, atol=1e-14)


@pytest.mark.parametrize("n,m", [(9, 7), (40, 31)])  # torch.cdist's two code paths
def test_euclidean_against_brute_force(n, m):
    x, y = points(n, m)
    want = (x[:, None, :] - y[None, :, :]).pow(2).sum(-1).sqrt()
    torch.testing.assert_close(euclidean_distance(x, y), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(squared_euclidean_distance(x, y), want ** 2,
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["full", "diagonal", "identity"])
def test_mahalanobis_against_brute_force(kind):
    x, y = points(batch=(3,))
    M = {"full": psd(), "diagonal": torch.rand(5, dtype=F64) + 0.5, "identity": None}[kind]
    dense = {"full": M, "identity": torch.eye(5, dtype=F64)}.get(kind)
    if kind == "diagonal":
        dense = torch.diag(M)
    want = brute_sq_mahalanobis(x, y, dense)
    got = squared_mahalanobis_distance(x, y, M)
    assert got.shape == (3, 9, 7)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(mahalanobis_distance(x, y, M), want.sqrt(), rtol=1e-12, atol=1e-12)


def test_squared_distances_are_clamped_and_sqrt_has_zero_gradient_at_coincident_points():
    x = torch.randn(4, 3, dtype=F64, requires_grad=True)
    d2 = squared_mahalanobis_distance(x, x.detach())
    assert (d2 >= 0).all()
    mahalanobis_distance(x, x.detach()).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert torch.equal(safe_sqrt(torch.tensor([0.0, -1e-20, 4.0])), torch.tensor([0.0, 0.0, 2.0]))


# -- the same bits as the code they replaced ----------------------------------------------------


def old_cosine_distance(x, y):  # mltm.retrieval.cosine_distance before mltm.costs
    xn = torch.nn.functional.normalize(x, dim=-1)
    yn = torch.nn.functional.normalize(y, dim=-1)
    return 1.0 - xn @ yn.transpose(-2, -1)


def old_squared_distance(cost, x, y):  # MahalanobisCost.squared_distance before mltm.costs
    if cost.kind == "lowrank":
        x, y = x @ cost.L.to(x.dtype), y @ cost.L.to(y.dtype)
        Mx, My = x, y
    elif cost.kind == "full":
        M = cost.matrix.to(x.dtype)
        Mx, My = x @ M, y @ M
    elif cost.kind == "diagonal":
        w = cost.weight.to(x.dtype)
        Mx, My = x * w, y * w
    else:
        Mx, My = x, y
    xx = (Mx * x).sum(-1).unsqueeze(-1)
    yy = (My * y).sum(-1).unsqueeze(-2)
    xy = Mx @ y.transpose(-1, -2)
    return (xx + yy - 2.0 * xy).clamp_min(0.0)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_cosine_is_bit_identical_to_the_old_formula(dtype):
    x, y = points(64, 80, 16, dtype=dtype)
    assert torch.equal(cosine_distance(x, y), old_cosine_distance(x, y))
    assert torch.equal(euclidean_distance(x, y), torch.cdist(x, y))


@pytest.mark.parametrize("kind", ["full", "lowrank", "diagonal", "euclidean"])
@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("batch", [(), (2,)])
def test_mahalanobis_cost_is_bit_identical_to_the_old_formula(kind, squared, batch):
    g = torch.Generator().manual_seed(5)
    cost = MahalanobisCost(16, kind, rank=4 if kind == "lowrank" else None, init="paper",
                           squared=squared, generator=g, dtype=F64)
    with torch.no_grad():  # move M off its initial value
        for p in cost.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=g, dtype=F64))
    for dtype in (torch.float32, F64):
        x, y = points(33, 21, 16, dtype=dtype, batch=batch)
        old = old_squared_distance(cost, x, y)
        assert torch.equal(cost.squared_distance(x, y), old)
        assert torch.equal(cost(x, y), old if squared else safe_sqrt(old))


def test_mahalanobis_cost_delegates_to_the_functional_form():
    cost = MahalanobisCost(8, "full", init="paper", generator=torch.Generator().manual_seed(0),
                           dtype=F64)
    x, y = points(6, 5, 8)
    assert torch.equal(cost(x, y), mahalanobis_distance(x, y, cost.matrix))


# -- memory: O(n·m + (n + m)·d), never an (n, m, d) tensor ------------------------------------


@pytest.mark.parametrize("fn", [cosine_distance, squared_euclidean_distance,
                                lambda x, y: mahalanobis_distance(x, y, psd(64))])
def test_no_pairwise_difference_tensor_is_saved(fn):
    n, m, d = 128, 96, 64
    x, y = points(n, m, d)
    x.requires_grad_()
    _, saved = saved_tensor_bytes(lambda: fn(x, y).sum())
    assert saved < n * m * d * 8 / 4  # an (n, m, d) float64 tensor would be 6.3 MB

"""Losses against hand-computed cases and POT; the implicit-gradient training step."""

import math

import numpy as np
import ot
import pytest
import torch
import torch.nn.functional as F

from mltm.losses import (
    ContrastiveEntropicLoss,
    MLTMLoss,
    NTXentLoss,
    PartialMLTMLoss,
    TripletLoss,
    build_loss,
    target_plan,
)
from mltm.metric import MahalanobisCost

f64 = torch.float64


def unit(t):
    return F.normalize(t, dim=-1)


def pair(b=6, d=8, seed=0, noise=0.5):
    g = torch.Generator().manual_seed(seed)
    a = unit(torch.randn(b, d, generator=g, dtype=f64))
    t = unit(a + noise * torch.randn(b, d, generator=g, dtype=f64))
    return a, t


def tight():
    return {"tol": 1e-12, "max_iter": 20000}


def test_mltm_two_point_closed_form():
    # x = y = {0, 1} on a line: C = [[0,1],[1,0]]. The 2x2 plan with uniform marginals is
    # [[p, q], [q, p]] with p/q = exp(1/eps), so KL(I/2 || pi) = log(1 + exp(-1/eps)).
    for eps in (0.1, 0.5, 2.0):
        loss = MLTMLoss(MahalanobisCost(1, "euclidean", dtype=f64), eps=eps,
                        sinkhorn_kwargs=tight())
        x = torch.tensor([[0.0], [1.0]], dtype=f64)
        assert math.isclose(float(loss(x, x.clone())), math.log1p(math.exp(-1 / eps)),
                            rel_tol=1e-10)


def test_mltm_equals_kl_with_pot_plan():
    a, t = pair()
    cost = MahalanobisCost(8, "full", init="paper", generator=torch.Generator().manual_seed(1),
                           dtype=f64)
    loss = MLTMLoss(cost, eps=0.05, sinkhorn_kwargs=tight())
    C = cost(a, t).detach().numpy()
    b = C.shape[0]
    P = ot.sinkhorn(np.full(b, 1 / b), np.full(b, 1 / b), C, 0.05, method="sinkhorn_log",
                    numItermax=20000, stopThr=1e-13)
    expected = -np.log(np.diag(P)).mean() - math.log(b)  # KL(I/b || P)
    assert math.isclose(float(loss(a, t).detach()), expected, rel_tol=1e-8)


def test_mltm_is_zero_only_for_the_identity_plan_and_max_normalisation_is_scale_free():
    a, t = pair()
    loss = MLTMLoss(MahalanobisCost(8, "euclidean", dtype=f64), eps=0.05, sinkhorn_kwargs=tight())
    assert float(loss(a, t)) > 0
    far = MLTMLoss(MahalanobisCost(8, "euclidean", dtype=f64), eps=1e-3, sinkhorn_kwargs=tight())
    assert float(far(a, a.clone())) < 1e-10  # distances 0 on the diagonal, >0 elsewhere
    norm = MLTMLoss(MahalanobisCost(8, "euclidean", dtype=f64), eps=0.05,
                    cost_normalization="max", sinkhorn_kwargs=tight())
    assert math.isclose(float(norm(a, t)), float(norm(3 * a, 3 * t)), rel_tol=1e-9)


def test_partial_mltm_equals_kl_with_pot_partial_plan():
    a, t = pair(seed=3)
    cost = MahalanobisCost(8, "euclidean", dtype=f64)
    loss = PartialMLTMLoss(cost, mass=0.7, eps=0.1,
                           sinkhorn_kwargs={"tol": 1e-13, "max_iter": 50000})
    C = cost(a, t).detach().numpy()
    b = C.shape[0]
    P = ot.partial.entropic_partial_wasserstein(np.full(b, 1 / b), np.full(b, 1 / b), C, reg=0.1,
                                                m=0.7, numItermax=50000, stopThr=1e-15)
    assert math.isclose(P.sum(), 0.7, rel_tol=1e-9)
    expected = -np.log(np.diag(P)).mean() - math.log(b)
    assert math.isclose(float(loss(a, t)), expected, rel_tol=1e-7)


def test_target_plan_with_repeated_clips_is_a_coupling():
    P = target_plan(5, torch.tensor([0, 0, 1, 2, 2]), dtype=f64)
    torch.testing.assert_close(P.sum(0), torch.full((5,), 0.2, dtype=f64))
    torch.testing.assert_close(P.sum(1), torch.full((5,), 0.2, dtype=f64))
    assert P[0, 1] == P[0, 0] == 0.1 and P[0, 2] == 0
    torch.testing.assert_close(target_plan(3, dtype=f64), torch.eye(3, dtype=f64) / 3)


def ntxent_by_hand(a, t, tau, clip_ids=None):
    b = a.shape[0]
    S = (unit(a) @ unit(t).T / tau).tolist()
    same = [[clip_ids is not None and clip_ids[i] == clip_ids[j] for j in range(b)]
            for i in range(b)]
    total = 0.0
    for i in range(b):
        row = [math.exp(S[i][k]) for k in range(b) if k == i or not same[i][k]]
        col = [math.exp(S[k][i]) for k in range(b) if k == i or not same[k][i]]
        total += -(S[i][i] - math.log(sum(row))) - (S[i][i] - math.log(sum(col)))
    return total / (2 * b)


def test_ntxent_by_hand_with_and_without_repeated_clips():
    a, t = pair(b=5, seed=4)
    assert math.isclose(float(NTXentLoss(0.07)(a, t)), ntxent_by_hand(a, t, 0.07), rel_tol=1e-10)
    ids = [0, 0, 1, 2, 2]
    got = float(NTXentLoss(0.1)(a, t, torch.tensor(ids)))
    assert math.isclose(got, ntxent_by_hand(a, t, 0.1, ids), rel_tol=1e-10)
    assert not math.isclose(got, ntxent_by_hand(a, t, 0.1), rel_tol=1e-3)


def test_triplet_hardest_negative_by_hand():
    a, t = pair(b=4, seed=5, noise=1.0)
    S = (unit(a) @ unit(t).T).tolist()
    m, b = 0.2, 4
    total = 0.0
    for i in range(b):
        total += max(0.0, m - S[i][i] + max(S[i][j] for j in range(b) if j != i))
        total += max(0.0, m - S[i][i] + max(S[k][i] for k in range(b) if k != i))
    assert math.isclose(float(TripletLoss(m)(a, t)), total / b, rel_tol=1e-10)
    # a batch of well-separated pairs has no violated hinge
    e = torch.eye(4, dtype=f64)
    assert float(TripletLoss(0.2)(e, e.clone())) == 0.0


def test_contrastive_entropic_is_ntxent_plus_negative_entropy():
    a, t = pair(b=6, seed=6)
    nt = float(NTXentLoss(0.07)(a, t))
    assert math.isclose(float(ContrastiveEntropicLoss(0.07, eps=0.0)(a, t)), nt, rel_tol=1e-12)
    S = unit(a) @ unit(t).T / 0.07
    neg_h = sum(0.5 * (F.softmax(L, 1) * F.log_softmax(L, 1)).sum(1).mean() for L in (S, S.T))
    got = float(ContrastiveEntropicLoss(0.07, eps=0.1)(a, t))
    assert math.isclose(got, nt + 0.1 * float(neg_h), rel_tol=1e-10)


def one_training_step(grad):
    torch.manual_seed(0)
    heads = torch.nn.ModuleDict({"a": torch.nn.Linear(10, 8), "t": torch.nn.Linear(12, 8)}).double()
    loss = MLTMLoss(MahalanobisCost(8, "full", dtype=f64), eps=0.1,
                    sinkhorn_kwargs=({"grad": grad, "tol": 1e-13, "max_iter": 5000}
                                     if grad == "implicit"
                                     else {"grad": grad, "tol": None, "max_iter": 3000}))
    g = torch.Generator().manual_seed(1)
    xa = torch.randn(16, 10, generator=g, dtype=f64)
    xt = torch.randn(16, 12, generator=g, dtype=f64)
    opt = torch.optim.SGD(list(heads.parameters()) + list(loss.parameters()), lr=0.5)
    value = loss(unit(heads["a"](xa)), unit(heads["t"](xt)))
    opt.zero_grad()
    value.backward()
    opt.step()
    loss.project_()
    return ([p.detach().clone() for p in list(heads.parameters()) + list(loss.parameters())],
            float(value.detach()))


def test_implicit_training_step_equals_unrolled():
    p_imp, v_imp = one_training_step("implicit")
    p_unr, v_unr = one_training_step("unroll")
    assert math.isclose(v_imp, v_unr, rel_tol=1e-10)
    for a, b in zip(p_imp, p_unr):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_metric_stays_psd_under_training():
    torch.manual_seed(0)
    cost = MahalanobisCost(6, "full", init="paper", generator=torch.Generator().manual_seed(0))
    loss = MLTMLoss(cost, eps=0.05, sinkhorn_kwargs={"tol": None, "max_iter": 50})
    opt = torch.optim.Adam(loss.parameters(), lr=0.5)  # large steps push M out of the cone
    g = torch.Generator().manual_seed(2)
    outside = 0
    for _ in range(20):
        a = unit(torch.randn(12, 6, generator=g))
        t = unit(a + 0.3 * torch.randn(12, 6, generator=g))
        opt.zero_grad()
        loss(a, t).backward()
        opt.step()
        outside += cost.min_eigenvalue_of_matrix() < -1e-6
        loss.project_()
        assert cost.min_eigenvalue_of_matrix() >= -1e-5
    assert outside > 0  # the projection did real work


@pytest.mark.parametrize("cls", [MLTMLoss, PartialMLTMLoss, NTXentLoss, TripletLoss,
                                 ContrastiveEntropicLoss])
def test_shape_errors(cls):
    loss = cls(dim=4) if cls in (MLTMLoss, PartialMLTMLoss) else cls()
    with pytest.raises(ValueError) as e:
        loss(torch.zeros(3, 4), torch.zeros(2, 4))
    assert str(e.value) == ("audio (3, 4) and text (2, 4) must have the same shape: "
                            "row i of each is pair i of the batch")
    with pytest.raises(ValueError) as e:
        loss(torch.zeros(1, 4), torch.zeros(1, 4))
    assert str(e.value) == "a matching loss needs a batch of at least 2 pairs (b >= 2, eq. 6)"


def test_build_loss_errors_and_names():
    with pytest.raises(ValueError) as e:
        build_loss("infonce", dim=4)
    assert str(e.value) == ("unknown loss 'infonce'; choose one of "
                            "['contrastive_entropic', 'mltm', "
                            "'mltm_partial', 'ntxent', 'triplet']")
    with pytest.raises(ValueError) as e:
        build_loss("ntxent", dim=4, metric={"kind": "full"})
    assert str(e.value) == "loss 'ntxent' has no ground metric; remove the metric settings"
    loss = build_loss("mltm_partial", dim=4, metric={"kind": "diagonal"}, mass=0.8)
    assert loss.mass == 0.8 and loss.cost.kind == "diagonal"

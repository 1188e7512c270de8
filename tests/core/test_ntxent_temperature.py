"""NT-Xent with a learned temperature (CLIP's log-scale): gradients, clamp, optimiser, config."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mltm.config import config_from_dict
from mltm.factory import build_loss_from_config, build_optimizer
from mltm.losses import NTXentLoss, build_loss
from mltm.numerics import default_dtype

f64 = torch.float64


def pair(b=6, d=8, seed=0, noise=0.7):
    g = torch.Generator().manual_seed(seed)
    a = F.normalize(torch.randn(b, d, generator=g, dtype=f64), dim=-1)
    t = F.normalize(a + noise * torch.randn(b, d, generator=g, dtype=f64), dim=-1)
    return a, t


def learned(tau=0.07):
    with default_dtype(f64):
        return NTXentLoss(tau, learnable_temperature=True)


def test_starts_at_log_inverse_tau_and_matches_the_fixed_loss_there():
    loss = learned()
    assert loss.logit_scale.dtype == f64 and loss.logit_scale.requires_grad
    assert loss.logit_scale.item() == math.log(1 / 0.07)
    assert loss.temperature == pytest.approx(0.07, rel=1e-15)
    a, t = pair()
    assert torch.allclose(loss(a, t), NTXentLoss(0.07)(a, t), rtol=1e-13, atol=0)


def test_gradient_of_the_log_scale_is_exact():
    """gradcheck (central finite differences) and the closed form of eq. 1's derivative:
    with S = s·cos and s = exp(θ), dL/dθ = s/2 · [mean_i (Σ_j P_ij c_ij - c_ii) + the same
    over the columns], P the row-softmax of S (a2t) and of Sᵀ (t2a)."""
    a, t = pair()
    clip = torch.tensor([0, 0, 1, 2, 3, 3])  # same-clip pairs leave the denominators
    loss = learned()
    with torch.no_grad():
        loss.logit_scale.fill_(1.7)  # away from the start: a generic point
    theta = torch.tensor(1.7, dtype=f64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda th: _with_scale(loss, th)(a, t, clip), (theta,))

    (grad,) = torch.autograd.grad(loss(a, t, clip), loss.logit_scale)
    c = a @ t.T
    s = math.exp(1.7)
    other = (clip[:, None] == clip[None, :]) & ~torch.eye(6, dtype=torch.bool)
    S = (s * c).masked_fill(other, float("-inf"))
    rows = (S.softmax(1) * c.masked_fill(other, 0)).sum(1) - c.diagonal()
    cols = (S.T.softmax(1) * c.T.masked_fill(other, 0)).sum(1) - c.diagonal()
    closed = 0.5 * s * (rows.mean() + cols.mean())
    assert torch.allclose(grad, closed, rtol=1e-12, atol=1e-14)


def _with_scale(loss: NTXentLoss, theta: torch.Tensor) -> NTXentLoss:
    """A copy of ``loss`` whose log-scale is the (differentiable) tensor ``theta``."""
    clone = NTXentLoss(loss.tau, learnable_temperature=True)
    del clone.logit_scale
    clone.logit_scale = theta
    return clone


def test_clamp_keeps_the_scale_between_one_and_one_hundred():
    loss = learned()
    for value, clamped, expect in ((math.log(250.0), 1, math.log(100.0)), (-0.3, 1, 0.0),
                                   (2.0, 0, 2.0), (math.log(100.0), 0, math.log(100.0))):
        with torch.no_grad():
            loss.logit_scale.fill_(value)
        assert loss.project_() == clamped, value
        assert loss.logit_scale.item() == expect, value
    assert NTXentLoss(0.07).project_() == 0


def test_fixed_temperature_has_no_parameter_and_is_eq_1():
    loss = NTXentLoss(0.07)
    assert list(loss.parameters()) == [] and loss.state_dict() == {} and loss.temperature == 0.07
    a, t = pair()
    S = (a @ t.T) / (a.norm(dim=1)[:, None] * t.norm(dim=1)[None, :]) / 0.07
    target = torch.arange(6)
    expect = 0.5 * (F.cross_entropy(S, target) + F.cross_entropy(S.T, target))
    assert torch.allclose(loss(a, t), expect, rtol=1e-14, atol=0)


def test_bad_settings_name_the_fix():
    with pytest.raises(ValueError) as e:
        NTXentLoss(0.005, learnable_temperature=True)
    assert str(e.value) == ("tau 0.005 is below 1/100, the smallest learnable temperature; "
                            "start from a larger tau (CLIP: 0.07)")
    cfg = config_from_dict({"loss": {"name": "triplet", "learnable_temperature": True}})
    with pytest.raises(ValueError) as e:
        build_loss_from_config(cfg)
    assert str(e.value) == ("loss.learnable_temperature applies to loss.name 'ntxent' only, not "
                            "'triplet'; remove it or set loss.name=ntxent")
    assert isinstance(build_loss("ntxent", dim=4, learnable_temperature=True).logit_scale,
                      torch.nn.Parameter)


def test_optimiser_steps_the_temperature_with_the_heads_without_weight_decay():
    cfg = config_from_dict({"loss": {"name": "ntxent", "learnable_temperature": True},
                            "optim": {"lr": 0.01, "weight_decay": 0.1}})
    loss = build_loss_from_config(cfg, dtype=f64)
    assert loss.logit_scale.dtype == f64
    model = torch.nn.Linear(3, 3)
    opt = build_optimizer(cfg.optim, model, loss)
    groups = {g["name"]: g for g in opt.param_groups}
    assert sorted(groups) == ["heads", "temperature"]
    assert groups["temperature"]["params"] == [loss.logit_scale]
    assert groups["temperature"]["lr"] == groups["heads"]["lr"] == 0.01
    assert groups["temperature"]["weight_decay"] == 0.0 and groups["heads"]["weight_decay"] == 0.1
    default = build_optimizer(config_from_dict({}).optim, model, build_loss_from_config(
        config_from_dict({"loss": {"name": "ntxent"}})))
    assert [g["name"] for g in default.param_groups] == ["heads"]

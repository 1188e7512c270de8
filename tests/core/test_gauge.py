"""The gauge-fixed and half-step variants of MLTMLoss (loss.gauge, loss.normalization) and
their config fields: the default is the paper's loss bit for bit, and every option computes
what its docstring says (against hand-written formulas, F.cross_entropy, finite differences)."""

import math

import pytest
import torch
import torch.nn.functional as F

from mltm.config import config_from_dict
from mltm.factory import build_loss_from_config
from mltm.losses import MLTMLoss, PartialMLTMLoss, _kl_to_target, target_plan
from mltm.metric import MahalanobisCost
from mltm.ot import sinkhorn

F64 = torch.float64
TIGHT = {"tol": 1e-12, "max_iter": 20_000}


def batch(b=6, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = F.normalize(torch.randn(b, d, generator=g, dtype=F64), dim=-1)
    t = F.normalize(a + 0.6 * torch.randn(b, d, generator=g, dtype=F64), dim=-1)
    return a, t


def metric(d=5, seed=1):
    return MahalanobisCost(d, "full", init="paper", generator=torch.Generator().manual_seed(seed),
                           dtype=F64)


def loss_of(**kw):
    return MLTMLoss(metric(), eps=0.1, sinkhorn_kwargs=TIGHT, **kw)


def value_and_grads(loss, a, t, clip_ids=None):
    a, t = a.clone().requires_grad_(), t.clone().requires_grad_()
    value = loss(a, t, clip_ids)
    value.backward()
    return value.detach(), a.grad, t.grad, loss.cost.M.grad


# -- the default is today's loss --------------------------------------------------------------


def test_default_is_the_paper_loss_bit_for_bit():
    a, t = batch()
    plain = MLTMLoss(metric(), eps=0.1, sinkhorn_kwargs=TIGHT)
    explicit = loss_of(gauge="none", gauge_weight=3.0, normalization="sinkhorn")
    for x, y in zip(value_and_grads(plain, a, t), value_and_grads(explicit, a, t)):
        assert torch.equal(x, y)
    # ...and the formula of eq. 6 written out: KL(π̂ ‖ sinkhorn(C)).
    C = plain.cost(a, t)
    by_hand = _kl_to_target(sinkhorn(C, 0.1, **TIGHT), target_plan(6, dtype=F64))
    assert torch.equal(plain(a, t).detach(), by_hand.detach())
    assert set(plain.state_dict()) == {"cost.M"}  # no new buffers: old checkpoints load


def test_default_config_builds_the_same_loss():
    cfg = config_from_dict({"model": {"joint_dim": 5}, "loss": {"name": "mltm"}})
    loss = build_loss_from_config(cfg, dtype=F64)
    assert (loss.gauge, loss.normalization) == ("none", "sinkhorn")
    assert loss.sinkhorn_kwargs == {"max_iter": 1000, "tol": 1e-6}  # no "grad" key added
    assert set(loss.state_dict()) == {"cost.M"}


# -- each option ------------------------------------------------------------------------------


@pytest.mark.parametrize("gauge", ["centre", "penalty", "infonce", "infonce_a2t"])
@pytest.mark.parametrize("normalization", ["sinkhorn", "softmax"])
def test_every_option_gives_a_scalar_with_finite_gradients(gauge, normalization):
    a, t = batch()
    loss = loss_of(gauge=gauge, gauge_weight=0.5, normalization=normalization)
    value, ga, gt, gM = value_and_grads(loss, a, t, torch.tensor([0, 0, 1, 2, 3, 4]))
    assert value.shape == () and torch.isfinite(value)
    for g in (ga, gt, gM):
        assert g.shape in {(6, 5), (5, 5)} and torch.isfinite(g).all() and g.abs().max() > 0


def test_penalty_adds_the_squared_per_item_effects():
    a, t = batch()
    w = 2.5
    loss = loss_of(gauge="penalty", gauge_weight=w)
    C = loss.cost(a, t).detach().numpy()
    row = C.mean(1) - C.mean()
    col = C.mean(0) - C.mean()
    expected = float(loss_of()(a, t).detach()) + w * ((row**2).mean() + (col**2).mean())
    assert math.isclose(float(loss(a, t).detach()), expected, rel_tol=1e-12)
    # zero on a cost with no per-item part (a pure interaction), positive otherwise
    u, v = torch.randn(6, dtype=F64), torch.randn(6, dtype=F64)
    interaction = torch.outer(u - u.mean(), v - v.mean())
    assert float(loss.gauge_term(interaction)) < 1e-30
    assert float(loss.gauge_term(interaction + torch.arange(6.0, dtype=F64))) > 1.0


@pytest.mark.parametrize("gauge", ["infonce", "infonce_a2t"])
def test_infonce_adds_the_cross_entropy_on_the_same_cost(gauge):
    a, t = batch()
    loss = loss_of(gauge=gauge, gauge_weight=0.7)
    logits = loss.cost(a, t).detach() / -0.1
    target = torch.arange(6)
    ce = F.cross_entropy(logits, target)
    if gauge == "infonce":
        ce = 0.5 * (ce + F.cross_entropy(logits.T, target))
    expected = float(loss_of()(a, t).detach()) + 0.7 * float(ce)
    assert math.isclose(float(loss(a, t).detach()), expected, rel_tol=1e-12)
    # same-clip captions are not negatives: masked out of the denominators
    clip_ids = torch.tensor([0, 0, 1, 2, 3, 4])
    masked = logits.clone()
    masked[0, 1] = masked[1, 0] = -math.inf
    ce = F.cross_entropy(masked, target)
    if gauge == "infonce":
        ce = 0.5 * (ce + F.cross_entropy(masked.T, target))
    expected = float(loss_of()(a, t, clip_ids).detach()) + 0.7 * float(ce)
    assert math.isclose(float(loss(a, t, clip_ids).detach()), expected, rel_tol=1e-12)


def test_infonce_gives_a_signal_to_caption_offsets_that_the_plan_loss_does_not():
    a, t = batch()
    offset = torch.zeros(6, dtype=F64, requires_grad=True)

    class OffsetCost(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner, self.dim = metric(), 5

        def forward(self, x, y):
            return self.inner(x, y) + offset[None, :]

    for gauge, expect_signal in (("none", False), ("infonce_a2t", True), ("infonce", True)):
        offset.grad = None
        MLTMLoss(OffsetCost(), eps=0.1, sinkhorn_kwargs=TIGHT, gauge=gauge)(a, t).backward()
        assert (offset.grad.abs().max() > 1e-3) == expect_signal, gauge


def test_centre_removes_the_modality_gap_from_the_loss():
    a, t = batch()
    loss = loss_of(gauge="centre")
    loss.eval()  # no running-mean update
    shift = torch.tensor([0.3, -1.0, 2.0, 0.5, 0.0], dtype=F64)
    def value(loss, x):
        return float(loss(x, t).detach())

    assert math.isclose(value(loss, a + shift), value(loss, a), rel_tol=1e-10)
    assert not math.isclose(value(loss_of(), a + shift), value(loss_of(), a), rel_tol=1e-3)
    # both sides are centred: the paper's loss on the centred embeddings
    centred = float(loss_of()(a - a.mean(0), t - t.mean(0)).detach())
    assert math.isclose(value(loss, a), centred, rel_tol=1e-12)


def test_centre_keeps_running_means_for_ranking():
    a, t = batch()
    loss = loss_of(gauge="centre")
    assert set(loss.state_dict()) == {"cost.M", "audio_mean", "text_mean", "means_seen"}
    loss(a, t)  # training mode, grad enabled: the first batch sets the means
    assert torch.allclose(loss.audio_mean, a.mean(0)) and torch.allclose(loss.text_mean, t.mean(0))
    a2, t2 = batch(seed=5)
    loss(a2, t2)  # then an exponential moving average
    assert torch.allclose(loss.audio_mean, 0.9 * a.mean(0) + 0.1 * a2.mean(0))
    with torch.no_grad():
        loss(a, t)  # evaluation (no grad): no update
    loss.eval()
    loss(a, t)
    assert int(loss.means_seen) == 2
    # ranking uses the stored means, whatever the gallery
    ranked = loss.ranking_cost(a[:2], t)
    assert torch.allclose(ranked, loss.cost(a[:2] - loss.audio_mean, t - loss.text_mean))
    # and they survive a state-dict round trip (checkpoints)
    fresh = loss_of(gauge="centre")
    fresh.load_state_dict(loss.state_dict())
    assert torch.equal(fresh.ranking_cost(a, t), loss.ranking_cost(a, t))


def test_softmax_normalization_is_the_text_to_audio_cross_entropy():
    a, t = batch()
    loss = loss_of(normalization="softmax")
    logits = loss.cost(a, t).detach() / -0.1
    ce_t2a = F.cross_entropy(logits.T, torch.arange(6))
    assert math.isclose(float(loss(a, t).detach()), float(ce_t2a), rel_tol=1e-12)
    # It is the first half-step of mltm.ot.sinkhorn: columns sum to 1/m exactly.
    P = loss.half_step_plan(loss.cost(a, t).detach())
    assert torch.allclose(P.sum(0), torch.full((6,), 1 / 6, dtype=F64), atol=1e-15)


def test_k_iteration_training_unrolls_a_fixed_number_of_iterations():
    cfg = config_from_dict({"model": {"joint_dim": 5}, "loss": {
        "name": "mltm", "sinkhorn_tol": None, "sinkhorn_max_iter": 3, "sinkhorn_grad": "unroll",
        "metric": {"kind": "euclidean"}}})
    loss = build_loss_from_config(cfg, dtype=F64)
    assert loss.sinkhorn_kwargs == {"max_iter": 3, "tol": None, "grad": "unroll"}
    a, t = batch()
    C = loss.cost(a, t)
    plan = sinkhorn(C, 0.05, tol=None, max_iter=3, grad="unroll")
    expected = _kl_to_target(plan, target_plan(6, dtype=F64))
    assert torch.equal(loss(a, t), expected)

    def f(a):
        return loss(a, t)

    assert torch.autograd.gradcheck(f, (a.clone().requires_grad_(),), fast_mode=True)


# -- config and errors ------------------------------------------------------------------------


def test_config_fields_reach_the_loss():
    cfg = config_from_dict({"model": {"joint_dim": 5}, "loss": {
        "name": "mltm", "gauge": "infonce_a2t", "gauge_weight": "2", "normalization": "softmax"}})
    loss = build_loss_from_config(cfg)
    assert (loss.gauge, loss.gauge_weight, loss.normalization) == ("infonce_a2t", 2.0, "softmax")


def test_bad_options_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown gauge 'center'; choose one of"):
        MLTMLoss(dim=4, gauge="center")
    with pytest.raises(ValueError, match="gauge_weight must be >= 0"):
        MLTMLoss(dim=4, gauge="penalty", gauge_weight=-1)
    with pytest.raises(ValueError, match="unknown normalization 'rows'"):
        MLTMLoss(dim=4, normalization="rows")
    partial = config_from_dict({"model": {"joint_dim": 5},
                                "loss": {"name": "mltm_partial", "gauge": "penalty"}})
    with pytest.raises(ValueError, match="loss.gauge applies to loss.name=mltm only"):
        build_loss_from_config(partial)
    grad = config_from_dict({"model": {"joint_dim": 5}, "loss": {"sinkhorn_grad": "autograd"}})
    with pytest.raises(ValueError, match="loss.sinkhorn_grad 'autograd': use 'implicit' or"):
        build_loss_from_config(grad)
    # the partial loss keeps working with the defaults
    default_partial = config_from_dict({"model": {"joint_dim": 5},
                                        "loss": {"name": "mltm_partial"}})
    assert isinstance(build_loss_from_config(default_partial), PartialMLTMLoss)

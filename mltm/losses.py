"""Matching losses: m-LTM (balanced and partial) and the paper's baselines.

One interface: ``loss(audio, text, clip_ids=None) -> scalar``, where ``audio`` and ``text``
are the (b, d) joint-space embeddings of a mini-batch of b pairs (row i of each is pair i)
and ``clip_ids`` (optional, (b,)) names each pair's clip. When two pairs of a batch share a
clip (Clotho has 5 captions per clip), their cross pairs are *true* matches, not negatives:
every loss here uses ``clip_ids`` to say so (the released code ignores it, see
``../shared/notes/reference-code.md`` §2 and §5). With ``clip_ids=None`` every pair is its
own clip, the paper's setting.

Every loss also exposes :attr:`MatchingLoss.ranking_cost`, the distance retrieval ranks by
after training (the learned metric for m-LTM, ``1 - cos`` for the contrastive baselines),
and :meth:`MatchingLoss.project_`, the projected-gradient step of the hybrid SGD (a no-op
for losses without a constrained parameter).

========================  ===========================================================
:class:`MLTMLoss`         KL(π̂ ‖ π_ε) under a Mahalanobis cost (eq. 6, 10)
:class:`PartialMLTMLoss`  KL(π̂ ‖ π_{s,ε}) with partial OT of mass s (eq. 12-13)
:class:`NTXentLoss`       symmetric InfoNCE on cosine / τ (eq. 1)
:class:`TripletLoss`      bidirectional hinge with the hardest negative (VSE++)
:class:`ContrastiveEntropicLoss`  NT-Xent + ε · negative entropy of the ranking (eq. 14)
========================  ===========================================================
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mltm.costs import cosine_distance
from mltm.metric import MahalanobisCost
from mltm.ot import partial_sinkhorn, sinkhorn

__all__ = [
    "MatchingLoss",
    "MLTMLoss",
    "PartialMLTMLoss",
    "NTXentLoss",
    "TripletLoss",
    "ContrastiveEntropicLoss",
    "target_plan",
    "same_clip_mask",
    "build_loss",
    "LOSSES",
]


def same_clip_mask(b: int, clip_ids: torch.Tensor | None, device=None) -> torch.Tensor:
    """Boolean (b, b) matrix, True where pairs i and j come from the same clip.

    With ``clip_ids=None`` it is the identity: every pair is its own clip.
    """
    if clip_ids is None:
        return torch.eye(b, dtype=torch.bool, device=device)
    clip_ids = torch.as_tensor(clip_ids, device=device)
    if clip_ids.shape != (b,):
        raise ValueError(
            f"clip_ids must have shape ({b},) (one id per pair), got {tuple(clip_ids.shape)}"
        )
    return clip_ids[:, None] == clip_ids[None, :]


def target_plan(b: int, clip_ids: torch.Tensor | None = None, *, dtype=None, device=None):
    """The empirical matching π̂ of eq. 4/6: ``π̂_ii = 1/b`` and 0 elsewhere.

    When several pairs share a clip, each row spreads its mass 1/b uniformly over the
    captions of its clip, so that π̂ is still a coupling of the uniform marginals
    (rows and columns sum to 1/b) and same-clip captions are not pushed apart.
    """
    same = same_clip_mask(b, clip_ids, device).to(dtype or torch.get_default_dtype())
    return same / (same.sum(1, keepdim=True) * b)


def _check_pair(audio: torch.Tensor, text: torch.Tensor) -> int:
    if audio.ndim != 2 or text.ndim != 2:
        raise ValueError(
            f"audio and text embeddings must be (b, d) matrices, got shapes "
            f"{tuple(audio.shape)} and {tuple(text.shape)}"
        )
    if audio.shape != text.shape:
        raise ValueError(
            f"audio {tuple(audio.shape)} and text {tuple(text.shape)} must have the same "
            "shape: row i of each is pair i of the batch"
        )
    if audio.shape[0] < 2:
        raise ValueError("a matching loss needs a batch of at least 2 pairs (b >= 2, eq. 6)")
    return audio.shape[0]


def _kl_to_target(plan: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """KL(π̂ ‖ π) = Σ_{π̂>0} π̂ log(π̂ / π); plan entries are floored at the dtype's tiny.

    The floor only matters once a true pair's plan entry underflows, where the loss is
    already huge; it keeps the value finite instead of inf.
    """
    support = target > 0
    tiny = torch.finfo(plan.dtype).tiny
    t = target[support]
    return (t * (t.log() - plan[support].clamp_min(tiny).log())).sum()


class MatchingLoss(nn.Module):
    """Base class: ``forward(audio, text, clip_ids=None) -> scalar``."""

    #: Name used by :func:`build_loss` and in configs.
    name: str = ""

    def ranking_cost(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Distance used to rank a gallery after training (smaller is better)."""
        return cosine_distance(x, y)

    def project_(self) -> int:
        """Projected-gradient step on constrained parameters; returns #clamped values."""
        return 0

    @property
    def projections_computed(self) -> int:
        """How many projected steps (eq. 11) ran a full eigendecomposition so far."""
        return 0


class MLTMLoss(MatchingLoss):
    """The m-LTM loss: KL(π̂ ‖ π_ε) under a learned ground cost (eq. 6, 7 and 10).

    ``C = cost(audio, text)`` (rows audio, columns text), π_ε is the entropic OT plan of C
    between uniform measures (eq. 3, :func:`mltm.ot.sinkhorn`), and the loss is the KL
    divergence from the empirical matching π̂ (:func:`target_plan`). With π̂ = I/b it is
    ``-(1/b) Σ_i log π_ii - log b``: zero exactly when the plan is the identity matching.
    (The released code returns ``-(1/b) Σ log π_ii``, the same up to the constant log b.)

    Gradients reach the cost (and through it the encoders and M) by implicit
    differentiation of the plan (default) or by unrolling the iterations. At a converged
    plan the gradient with respect to C is ``(π̂ - π_ε)/ε``, whose rows and columns sum to
    zero: the loss is blind to any per-item part ``α_i + β_j`` of the cost (the *gauge* of
    eq. 3, ``book/chapters/invariance.md``). ``gauge`` adds an optional term that gives
    those parts a training signal; ``normalization`` replaces the converged plan by one
    Sinkhorn half-step (a softmax).

    Args:
        cost: The ground metric (default: Euclidean on ``dim``-dimensional embeddings;
            give a :class:`MahalanobisCost` to learn M, eq. 9).
        eps: Entropic regularisation ε (paper: 0.05, Table 8; released config: 0.03).
        dim: Embedding dimension for the default Euclidean cost.
        cost_normalization: ``"none"`` (the paper) or ``"max"`` (the released code divides
            the batch cost by its maximum, gradients through the max).
        sinkhorn_kwargs: Extra keywords for the solver (``tol``, ``max_iter``, ``grad``...);
            ``{"tol": None, "max_iter": k, "grad": "unroll"}`` trains on the plan after k
            Sinkhorn iterations (each updates the column scaling, then the row scaling).
        gauge: ``"none"`` (the paper; the default, unchanged), or a gauge-fixing variant:
            ``"centre"``: each modality's embeddings are centred on their batch mean before
            the cost (the modality gap drops out of the loss), and :meth:`ranking_cost`
            centres with the running means of training (momentum 0.1);
            ``"penalty"``: adds ``gauge_weight · (mean_i r_i² + mean_j s_j²)``, the squared
            norm of the batch cost's per-item terms (row effects ``r_i = mean_j C_ij - mean C``,
            column effects ``s_j = mean_i C_ij - mean C``);
            ``"infonce"``: adds ``gauge_weight`` times the symmetric InfoNCE on ``-C/ε``
            (the mean of the audio→text and text→audio cross-entropies on the same cost);
            ``"infonce_a2t"``: the same with the audio→text (row) cross-entropy only.
        gauge_weight: Weight of the ``penalty`` and ``infonce`` terms (>= 0).
        normalization: ``"sinkhorn"`` (the plan of eq. 3, default) or ``"softmax"``: one
            Sinkhorn half-step instead of the plan, the first one :func:`mltm.ot.sinkhorn`
            takes (columns: ``π_ij = b_j softmax_i(-C_ij/ε)``), so the loss is the
            text→audio cross-entropy on ``-C/ε``.
    """

    name = "mltm"
    #: The gauge-fixing variants of ``gauge``.
    GAUGES = ("none", "centre", "penalty", "infonce", "infonce_a2t")
    #: The normalisations of ``normalization``.
    NORMALIZATIONS = ("sinkhorn", "softmax")
    #: Momentum of the running means kept by ``gauge="centre"``.
    CENTRE_MOMENTUM = 0.1

    def __init__(
        self,
        cost: MahalanobisCost | None = None,
        *,
        eps: float = 0.05,
        dim: int | None = None,
        cost_normalization: str = "none",
        sinkhorn_kwargs: dict[str, Any] | None = None,
        gauge: str = "none",
        gauge_weight: float = 1.0,
        normalization: str = "sinkhorn",
    ) -> None:
        super().__init__()
        if eps <= 0:
            raise ValueError(f"eps must be positive, got {eps}")
        if gauge not in self.GAUGES:
            raise ValueError(f"unknown gauge {gauge!r}; choose one of {self.GAUGES}")
        if not gauge_weight >= 0:
            raise ValueError(f"gauge_weight must be >= 0, got {gauge_weight}")
        if normalization not in self.NORMALIZATIONS:
            raise ValueError(f"unknown normalization {normalization!r}; choose one of "
                             f"{self.NORMALIZATIONS}")
        if cost is None:
            if dim is None:
                raise ValueError("give a cost (e.g. MahalanobisCost(d)) or dim for Euclidean")
            cost = MahalanobisCost(dim, kind="euclidean")
        self.cost = cost
        self.eps = float(eps)
        self.cost_normalization = cost_normalization
        self.sinkhorn_kwargs = dict(sinkhorn_kwargs or {})
        self.gauge = gauge
        self.gauge_weight = float(gauge_weight)
        self.normalization = normalization
        if gauge == "centre":
            # Buffers only for this variant: the state dict of every other loss is unchanged.
            first = next(iter(cost.parameters()), None)
            dtype = first.dtype if first is not None else torch.get_default_dtype()
            self.register_buffer("audio_mean", torch.zeros(cost.dim, dtype=dtype))
            self.register_buffer("text_mean", torch.zeros(cost.dim, dtype=dtype))
            self.register_buffer("means_seen", torch.zeros((), dtype=torch.long))

    def ranking_cost(self, x, y):
        """The learned ground cost ``cost(x, y)``: galleries are ranked by the trained metric.

        With ``gauge="centre"`` each side is first centred on the running mean of its
        modality over training (inductive: the gallery's own mean is not used).
        """
        if self.gauge == "centre":
            x, y = x - self.audio_mean.to(x.dtype), y - self.text_mean.to(y.dtype)
        return self.cost(x, y)

    def project_(self) -> int:
        """Project M back onto the PSD cone (eq. 11); returns #clamped values (0 if no M)."""
        return self.cost.project_() if isinstance(self.cost, MahalanobisCost) else 0

    @property
    def projections_computed(self) -> int:
        """How many projected steps ran a full eigendecomposition so far (0 if no M)."""
        return self.cost.projections_computed if isinstance(self.cost, MahalanobisCost) else 0

    def plan(self, C: torch.Tensor) -> torch.Tensor:
        """Transport plan of a batch cost matrix."""
        return sinkhorn(C, self.eps, cost_normalization=self.cost_normalization,
                        **self.sinkhorn_kwargs)

    def half_step_plan(self, C: torch.Tensor) -> torch.Tensor:
        """The first Sinkhorn half-step from zero scalings: ``π_ij = b_j softmax_i(-C_ij/ε)``.

        Columns sum to ``b = 1/m`` exactly, rows do not; ``cost_normalization`` applies.
        """
        if self.cost_normalization == "max":
            C = C / C.max()
        return torch.softmax(C / -self.eps, dim=-2) / C.shape[-1]

    def _update_means(self, audio: torch.Tensor, text: torch.Tensor) -> None:
        with torch.no_grad():
            m = self.CENTRE_MOMENTUM if int(self.means_seen) > 0 else 1.0
            self.audio_mean.lerp_(audio.detach().mean(0).to(self.audio_mean.dtype), m)
            self.text_mean.lerp_(text.detach().mean(0).to(self.text_mean.dtype), m)
            self.means_seen += 1

    def gauge_term(self, C: torch.Tensor, clip_ids=None) -> torch.Tensor:
        """The added term of ``gauge`` (``penalty`` or ``infonce*``) on the batch cost C,
        before its weight; 0 for the other variants."""
        if self.gauge == "penalty":
            row = C.mean(1) - C.mean()
            col = C.mean(0) - C.mean()
            return (row.square().mean() + col.square().mean())
        if self.gauge in ("infonce", "infonce_a2t"):
            b = C.shape[0]
            logits = C / -self.eps
            other = same_clip_mask(b, clip_ids, C.device) & ~torch.eye(
                b, dtype=torch.bool, device=C.device)
            logits = logits.masked_fill(other, float("-inf"))
            target = torch.arange(b, device=C.device)
            a2t = F.cross_entropy(logits, target)
            if self.gauge == "infonce_a2t":
                return a2t
            return 0.5 * (a2t + F.cross_entropy(logits.T, target))
        return C.new_zeros(())

    def forward(self, audio, text, clip_ids=None):
        """KL(π̂ ‖ π_ε) between the empirical matching and the plan of the batch cost
        (plus ``gauge_weight`` times :meth:`gauge_term` for a gauge-fixed variant)."""
        b = _check_pair(audio, text)
        if self.gauge == "centre":
            if self.training and torch.is_grad_enabled():
                self._update_means(audio, text)
            audio, text = audio - audio.mean(0), text - text.mean(0)
        C = self.cost(audio, text)
        pi = self.plan(C) if self.normalization == "sinkhorn" else self.half_step_plan(C)
        loss = _kl_to_target(pi, target_plan(b, clip_ids, dtype=pi.dtype, device=pi.device))
        if self.gauge in ("penalty", "infonce", "infonce_a2t"):
            loss = loss + self.gauge_weight * self.gauge_term(C, clip_ids)
        return loss


class PartialMLTMLoss(MLTMLoss):
    """m-LTM with partial OT for noisy correspondence (eq. 12-13).

    The plan transports only a mass ``s`` ≤ 1 with ``π1 ≤ a`` and ``πᵀ1 ≤ b``
    (:func:`mltm.ot.partial_sinkhorn`), so rows of corrupted pairs can be left (partly)
    unmatched instead of forcing mass onto a wrong caption. The loss is still KL(π̂ ‖ π) to
    the full empirical matching.

    Args:
        mass: Transported mass s in (0, 1] (released config 0.95; the paper's Figure 2
            ablates 0.6-0.9).
        Other arguments as :class:`MLTMLoss`.
    """

    name = "mltm_partial"

    def __init__(self, cost=None, *, mass: float = 0.95, eps=0.05, dim=None,
                 cost_normalization="none", sinkhorn_kwargs=None) -> None:
        super().__init__(cost, eps=eps, dim=dim, cost_normalization=cost_normalization,
                         sinkhorn_kwargs=sinkhorn_kwargs)
        if not 0 < mass <= 1:
            raise ValueError(f"mass must be in (0, 1], got {mass}")
        self.mass = float(mass)

    def plan(self, C):
        """Partial transport plan of a batch cost matrix (total mass ``self.mass``)."""
        return partial_sinkhorn(C, self.eps, self.mass, cost_normalization=self.cost_normalization,
                                **self.sinkhorn_kwargs)


class NTXentLoss(MatchingLoss):
    """Symmetric InfoNCE / NT-Xent on cosine similarities (paper eq. 1).

    ``S = cos(audio, text) / τ``; the loss is the mean of the audio→text and text→audio
    cross-entropies with the diagonal as target (eq. 1 sums over the batch; the mean only
    rescales the learning rate). Same-clip off-diagonal pairs are removed from the
    denominators when ``clip_ids`` is given (the released code's mask has no effect).

    With ``learnable_temperature=True`` the temperature is learned as in CLIP (Radford et
    al. 2021, §2.5): ``S = cos(audio, text) · exp(logit_scale)`` with the parameter
    ``logit_scale`` initialised to log(1/τ) and clamped to [0, log 100] by :meth:`project_`
    after every optimiser step (as OpenCLIP does), so the scale 1/τ stays in [1, 100]. The
    clamp is outside the forward pass, so the gradient of ``logit_scale`` is the exact
    derivative of the loss.

    Args:
        tau: Temperature τ (released code: fixed 0.07); the starting value when learned.
        learnable_temperature: Learn log(1/τ) (default False: τ fixed).
    """

    name = "ntxent"

    #: Upper bound of the learned scale 1/τ (CLIP: "clipped to prevent scaling the logits by
    #: more than 100").
    MAX_LOGIT_SCALE = 100.0

    def __init__(self, tau: float = 0.07, *, learnable_temperature: bool = False) -> None:
        super().__init__()
        if tau <= 0:
            raise ValueError(f"tau must be positive, got {tau}")
        if learnable_temperature and tau < 1.0 / self.MAX_LOGIT_SCALE:
            raise ValueError(f"tau {tau} is below 1/{self.MAX_LOGIT_SCALE:g}, the smallest "
                             "learnable temperature; start from a larger tau (CLIP: 0.07)")
        self.tau = float(tau)
        self.learnable_temperature = bool(learnable_temperature)
        if self.learnable_temperature:
            self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / self.tau)))

    @property
    def temperature(self) -> float:
        """The current temperature τ (``1 / exp(logit_scale)`` when learned)."""
        if self.learnable_temperature:
            return float(torch.exp(-self.logit_scale.detach()))
        return self.tau

    def logits(self, audio, text, clip_ids=None) -> torch.Tensor:
        """``S = cos(audio, text) / τ`` with same-clip off-diagonal pairs set to -inf."""
        b = audio.shape[0]
        if self.learnable_temperature:
            S = (1.0 - cosine_distance(audio, text)) * self.logit_scale.exp()
        else:
            S = (1.0 - cosine_distance(audio, text)) / self.tau
        other_positive = same_clip_mask(b, clip_ids, S.device) & ~torch.eye(
            b, dtype=torch.bool, device=S.device)
        return S.masked_fill(other_positive, float("-inf"))

    def project_(self) -> int:
        """Clamp a learned ``logit_scale`` to [0, log 100] (CLIP); returns #clamped values."""
        if not self.learnable_temperature:
            return 0
        with torch.no_grad():
            v = self.logit_scale.item()
            lo, hi = 0.0, math.log(self.MAX_LOGIT_SCALE)
            if lo <= v <= hi:
                return 0
            self.logit_scale.clamp_(lo, hi)
            return 1

    def forward(self, audio, text, clip_ids=None):
        """Mean of the audio→text and text→audio cross-entropies of :meth:`logits`."""
        b = _check_pair(audio, text)
        S = self.logits(audio, text, clip_ids)
        target = torch.arange(b, device=S.device)
        return 0.5 * (F.cross_entropy(S, target) + F.cross_entropy(S.T, target))


class TripletLoss(MatchingLoss):
    """Bidirectional triplet hinge with the hardest negative (VSE++; Mei et al. 2022).

    With ``S = cos(audio, text)``: for each audio i, ``[m - S_ii + max_{j ∉ clip(i)} S_ij]_+``
    and for each caption i, ``[m - S_ii + max_{k ∉ clip(i)} S_ki]_+``; the loss is their sum
    divided by b, as in the released code.

    Args:
        margin: Hinge margin (0.2).
    """

    name = "triplet"

    def __init__(self, margin: float = 0.2) -> None:
        super().__init__()
        self.margin = float(margin)

    def forward(self, audio, text, clip_ids=None):
        """Sum of the two hardest-negative hinges, divided by the batch size b."""
        b = _check_pair(audio, text)
        S = 1.0 - cosine_distance(audio, text)
        pos = S.diagonal()
        negatives = S.masked_fill(same_clip_mask(b, clip_ids, S.device), float("-inf"))
        hardest_text = negatives.max(dim=1).values  # per audio
        hardest_audio = negatives.max(dim=0).values  # per caption
        # A batch in which every pair shares one clip has no negative: no hinge.
        cost_a = (self.margin - pos + hardest_text).clamp_min(0).nan_to_num(0.0, neginf=0.0)
        cost_t = (self.margin - pos + hardest_audio).clamp_min(0).nan_to_num(0.0, neginf=0.0)
        return (cost_a.sum() + cost_t.sum()) / b


class ContrastiveEntropicLoss(NTXentLoss):
    """Contrastive loss with an entropic regulariser on the ranking matrix (eq. 14).

    ``L = L_CL + ε · L_ent(R)``. The paper does not spell out ``L_ent``; we read it as the
    entropic-OT regulariser applied to the ranking matrix of eq. 2: R is the row-softmax of
    ``S/τ`` (audio→text, and the column-softmax for text→audio) and
    ``L_ent(R) = mean_i Σ_j R_ij log R_ij`` (the negative entropy), averaged over both
    directions. Minimising it keeps the rankings from collapsing onto one item, a label-
    smoothing-like effect.

    Args:
        tau: Temperature of the contrastive part.
        eps: Weight ε of the entropic term (paper Table 7: 0.05, 0.1, 0.5).
    """

    name = "contrastive_entropic"

    def __init__(self, tau: float = 0.07, eps: float = 0.05) -> None:
        super().__init__(tau)
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.eps = float(eps)

    def forward(self, audio, text, clip_ids=None):
        """``L_CL + ε · L_ent(R)``: the NT-Xent loss plus ε times the ranking's negative entropy."""
        b = _check_pair(audio, text)
        S = self.logits(audio, text, clip_ids)
        target = torch.arange(b, device=S.device)
        cl = 0.5 * (F.cross_entropy(S, target) + F.cross_entropy(S.T, target))
        neg_entropy = 0.0
        for logits in (S, S.T):
            logp = F.log_softmax(logits, dim=1)
            p = logp.exp()
            neg_entropy = neg_entropy + 0.5 * (p * logp.nan_to_num(0.0, neginf=0.0)).sum(1).mean()
        return cl + self.eps * neg_entropy


#: Loss classes by config name.
LOSSES: dict[str, type[MatchingLoss]] = {
    cls.name: cls
    for cls in (MLTMLoss, PartialMLTMLoss, NTXentLoss, TripletLoss, ContrastiveEntropicLoss)
}


def build_loss(name: str, *, dim: int, metric: dict[str, Any] | None = None,
               **kwargs: Any) -> MatchingLoss:
    """Build a loss by name (``mltm``, ``mltm_partial``, ``ntxent``, ``triplet``,
    ``contrastive_entropic``).

    Args:
        name: Loss name.
        dim: Joint embedding dimension (for the ground metric of the m-LTM losses).
        metric: Keywords of :class:`MahalanobisCost` for the m-LTM losses (e.g.
            ``{"kind": "full", "init": "identity"}``); ignored by name-checking for others.
        **kwargs: Keywords of the loss class (``eps``, ``mass``, ``tau``,
            ``learnable_temperature`` (``ntxent``), ``margin``...).
    """
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}")
    cls = LOSSES[name]
    if issubclass(cls, MLTMLoss):
        return cls(MahalanobisCost(dim, **(metric or {})), **kwargs)
    if metric:
        raise ValueError(f"loss {name!r} has no ground metric; remove the metric settings")
    return cls(**kwargs)


"""The released code's Sinkhorn and m-LTM loss, re-created to study its numerics (Table 8).

The authors' released trainer (``v-manhlt3/m-LTM-Audio-Text-Retrieval``,
``tools/loss.py::MahalalobisLoss.forward``; ``../shared/notes/reference-code.md`` §2) computes

* the cost ``C_ij = sqrt(sum_k M_kk (a_j,k - t_i,k)^2)`` (rows captions, columns clips: its
  ``einsum("ijk,ikj,kk->ij", D, Dᵀ, M)`` reads only diag(M)), divided by its maximum
  (``C / C.max()``, not detached);
* the plan ``ot.sinkhorn(a, b, C, reg=ε)`` of POT 0.9.0 with its defaults: method
  ``"sinkhorn"`` (:func:`released_sinkhorn`, POT's ``sinkhorn_knopp``): the paper's
  Algorithm 2 on the scalings ``u, v`` and the kernel ``K = exp(-C/ε)`` themselves (the
  *exp domain*), at most 1,000 iterations, stopping threshold 1e-9 on the column marginal
  (checked every 10 iterations), in the dtype of ``C`` (float32 on the GPU), with gradients
  by autograd through every iteration (*unrolled*);
* the loss ``sum(-π̂ ∘ log π)`` with ``π̂ = I/B`` (:func:`released_mltm_loss`), the KL of eq. 10
  up to the constant ``log B``, summed over the *whole* matrix.

Where it breaks in float32 (closed forms; ``m`` is the number of columns, and POT starts from
``u = 1/n``): ``e^{-t}`` is subnormal for ``t > 87.3`` and 0 for ``t > 103.97``, and
``e^{t}`` overflows for ``t > 88.72``. The first half-step is ``v_j = b_j / Σ_i K_ij u_i``,
about ``e^{c_j/ε}`` with ``c_j`` the smallest cost of column ``j``; so

* **forward**: ``v`` overflows once ``c_j/ε > 88.72`` (possible only for ε < 1/88.72 ≈ 0.0113
  once ``C ≤ 1``); POT then *returns the previous scalings* (``u = 1/n``, ``v = 1/m`` at the
  first iteration) with a warning, so the plan is ``K/(nm)``, which underflows to exactly 0
  where ``C_ij/ε + log(nm) > 103.97``; and ``0 · log 0 = NaN`` makes the loss NaN;
* **backward**: autograd differentiates ``v = b / x`` as ``-grad · (v / x)``, and
  ``v / x ≈ e^{2 c_j/ε} / m`` overflows once ``2 c_j/ε - log m > 88.72``, i.e. for
  ``ε < 2 c_j / (88.72 + log m)``: with ``c_j ≤ 1`` and ``m = 256`` (the released batch) for
  ε < 0.0212, with ``m = 32`` for ε < 0.0217; the gradient then holds inf and NaN.

So with the cost divided by its maximum, ε = 0.01 and 0.02 can fail and ε ≥ 0.03 cannot (at
the start of training, when all normalised costs are close to 1, they do fail). In float64
the same thresholds are ``709.78`` and ``745.13``: nothing happens at any ε of Table 8.
:func:`mltm.ot.sinkhorn` (log domain, implicit gradient) has none of these failure modes.

Use these only to reproduce the released behaviour; train with :class:`mltm.losses.MLTMLoss`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

__all__ = [
    "ReleasedSinkhornResult",
    "released_sinkhorn",
    "released_cost",
    "released_mltm_loss",
    "NumericalErrorWarning",
]


class NumericalErrorWarning(UserWarning):
    """POT's "numerical errors at iteration k": the exp-domain iteration over- or underflowed."""


@dataclass
class ReleasedSinkhornResult:
    """What :func:`released_sinkhorn` computed.

    Attributes:
        plan: ``diag(u) K diag(v)``, shape (n, m), differentiable (unrolled autograd).
        n_iter: Iterations run (the index of the breaking iteration + 1, as POT counts).
        numerical_error_at: The iteration at which ``K^T u`` had a zero or ``u``/``v`` a NaN
            or inf, so that the previous scalings were returned (POT's safeguard), or None.
        marginal_error: ``||π^T 1 - b||_2`` at the last check (every 10 iterations), or None
            when no check ran.
        converged: Whether the marginal error fell below ``stop_thr``.
    """

    plan: torch.Tensor
    n_iter: int
    numerical_error_at: int | None
    marginal_error: float | None
    converged: bool


def released_sinkhorn(a: torch.Tensor, b: torch.Tensor, C: torch.Tensor, reg: float, *,
                      num_iter_max: int = 1000, stop_thr: float = 1e-9,
                      warn: bool = True) -> ReleasedSinkhornResult:
    """POT 0.9.0's ``ot.sinkhorn(a, b, C, reg)`` (``method="sinkhorn"``), operation for operation.

    The same tensor operations in the same order as POT's ``ot.bregman.sinkhorn_knopp`` with
    a torch backend (``K = exp(C / -reg)``, ``Kp = (1/a)[:, None] K``, then ``v = b / (Kᵀu)``,
    ``u = 1 / (Kp v)``, the safeguard, the check every 10 iterations), so that plans and
    autograd gradients match POT's bit for bit in float32 and float64; in addition it says
    whether and where the safeguard fired. Paper Algorithm 2; the released code calls it
    from ``tools/loss.py`` with the defaults ``numItermax=1000, stopThr=1e-9``.

    Args:
        a: (n,) row marginal.
        b: (m,) column marginal.
        C: (n, m) cost (the released code passes ``C / C.max()``).
        reg: Entropic regularisation ε.
        num_iter_max: Iteration cap (POT's ``numItermax``; 1000 at the released HEAD, 100 at
            the submission commit).
        stop_thr: Stopping threshold on ``||π^T 1 - b||_2`` (POT's ``stopThr``).
        warn: Warn (:class:`NumericalErrorWarning`) when the safeguard fires, as POT does.

    Raises:
        ValueError: shapes that do not match, or a non-positive ``reg`` or ``num_iter_max``.
    """
    if C.ndim != 2:
        raise ValueError(f"released_sinkhorn needs one (n, m) cost matrix; got shape "
                         f"{tuple(C.shape)}")
    n, m = C.shape
    if a.shape != (n,) or b.shape != (m,):
        raise ValueError(f"marginals must have shapes ({n},) and ({m},) for a cost of shape "
                         f"{tuple(C.shape)}; got {tuple(a.shape)} and {tuple(b.shape)}")
    if not reg > 0:
        raise ValueError(f"reg must be positive; got {reg}")
    if not isinstance(num_iter_max, int) or num_iter_max < 1:
        raise ValueError(f"num_iter_max must be a positive integer; got {num_iter_max!r}")
    u = torch.ones(n, dtype=C.dtype, device=C.device) / n
    v = torch.ones(m, dtype=C.dtype, device=C.device) / m
    K = torch.exp(C / (-reg))
    Kp = (1 / a).reshape(-1, 1) * K
    err: torch.Tensor | None = None
    error_at = None
    converged = False
    ii = -1
    for ii in range(num_iter_max):
        uprev, vprev = u, v
        KtransposeU = torch.matmul(K.T, u)
        v = b / KtransposeU
        u = 1.0 / torch.matmul(Kp, v)
        if (torch.any(KtransposeU == 0) or torch.any(torch.isnan(u)) or torch.any(torch.isnan(v))
                or torch.any(torch.isinf(u)) or torch.any(torch.isinf(v))):
            # POT: "we have reached the machine precision, come back to previous solution"
            if warn:
                warnings.warn(f"Warning: numerical errors at iteration {ii}",
                              NumericalErrorWarning, stacklevel=2)
            u, v = uprev, vprev
            error_at = ii
            break
        if ii % 10 == 0:
            tmp2 = torch.einsum("i,ij,j->j", u, K, v)
            err = torch.linalg.norm(tmp2 - b)
            if err < stop_thr:
                converged = True
                break
    plan = u.reshape((-1, 1)) * K * v.reshape((1, -1))
    return ReleasedSinkhornResult(plan=plan, n_iter=ii + 1, numerical_error_at=error_at,
                                  marginal_error=None if err is None else float(err.detach()),
                                  converged=converged)


def released_cost(audio: torch.Tensor, text: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The released m-LTM cost: ``sqrt(Σ_k w_k (a_j,k - t_i,k)^2)`` divided by its maximum.

    Rows are captions and columns clips, as in ``MahalalobisLoss.forward``; the pairwise
    differences are formed explicitly (a (b, b, d) tensor) and the maximum is not detached.
    ``weight`` is diag(M) (the only part of M the released einsum reads; eq. 9 with a diagonal
    M). The square root's gradient is infinite at a zero distance, as in the released code.
    """
    if audio.ndim != 2 or audio.shape != text.shape or weight.shape != (audio.shape[1],):
        raise ValueError(f"released_cost needs audio and text of one shape (b, d) and a weight "
                         f"of shape (d,); got {tuple(audio.shape)}, {tuple(text.shape)} and "
                         f"{tuple(weight.shape)}")
    diff = audio.unsqueeze(0) - text.unsqueeze(1)  # diff[i, j] = a_j - t_i
    C = torch.sqrt((diff * diff * weight).sum(-1))
    return C / C.max()


def released_mltm_loss(audio: torch.Tensor, text: torch.Tensor, weight: torch.Tensor,
                       eps: float, *, num_iter_max: int = 1000, stop_thr: float = 1e-9
                       ) -> tuple[torch.Tensor, ReleasedSinkhornResult]:
    """The released m-LTM loss ``sum(-π̂ ∘ log π)`` (eq. 10 up to ``log b``) and its solve.

    :func:`released_cost`, then :func:`released_sinkhorn` with uniform marginals, then the
    loss summed over the whole b×b matrix with ``π̂ = I/b``: an off-diagonal plan entry that
    underflowed to 0 contributes ``0 · (-inf) = NaN``, as in the released code. Everything
    runs in the dtype of the embeddings (float32 in the released runs). The solver's
    :class:`NumericalErrorWarning` is not raised here; read ``numerical_error_at``.

    Returns:
        ``(loss, result)``: the scalar loss (autograd through every iteration) and the
        solver's :class:`ReleasedSinkhornResult`.
    """
    C = released_cost(audio, text, weight)
    bsz = C.shape[0]
    a = torch.ones(bsz, dtype=C.dtype, device=C.device) / bsz
    res = released_sinkhorn(a, a.clone(), C, eps, num_iter_max=num_iter_max, stop_thr=stop_thr,
                            warn=False)
    pi_hat = torch.eye(bsz, dtype=C.dtype, device=C.device) / bsz
    return torch.sum(-pi_hat * torch.log(res.plan)), res

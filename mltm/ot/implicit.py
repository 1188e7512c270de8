"""Implicit differentiation of the entropic OT plan.

At the solution of the entropic problem (paper eq. 3) the plan is
``P = exp(-C/eps + u_i + v_j)`` with the optimality conditions ``P 1 = a`` and
``P^T 1 = b``. Differentiating these conditions gives, for a loss ``L(P)`` with upstream
gradient ``G = dL/dP`` and ``H = G * P``,

.. math::

    \\begin{pmatrix} \\mathrm{diag}(P1) & P \\\\ P^\\top & \\mathrm{diag}(P^\\top 1) \\end{pmatrix}
    \\begin{pmatrix} y_1 \\\\ y_2 \\end{pmatrix}
    = \\begin{pmatrix} H 1 \\\\ H^\\top 1 \\end{pmatrix},
    \\qquad
    \\frac{\\partial L}{\\partial C} = \\frac{-H + P \\circ (y_1 \\oplus y_2)}{\\varepsilon},
    \\quad \\frac{\\partial L}{\\partial a} = y_1, \\quad \\frac{\\partial L}{\\partial b} = y_2 .

The system is singular along ``(1, -1)`` (adding a constant to ``u`` and removing it from
``v`` leaves ``P`` unchanged). It is reduced to the smaller side by a Schur complement,
``S = diag(P1) - P diag(1/P^T 1) P^T``, whose null vector ``1`` is removed with a rank-one
term, and solved densely (``solver="dense"``, the default). The backward keeps only ``P``
(O(n m), independent of the number of iterations) and is exact when the forward has
converged.

``solver="cg"`` solves the same system by conjugate gradients started from ``y_1 = 0``
(:func:`_solve_schur_cg`): two matrix-vector products with ``P`` per iteration instead of
forming ``S`` (a k^3 product) and factorising it. It pays off when the right-hand side is
already small, which is the m-LTM loss's case: for ``L = -mean_i log P_ii`` with uniform
marginals ``H = -I/b``, whose row and column sums are ``-a`` and ``-b``, so ``y_1 = 0``,
``y_2 = -1`` and ``dL/dC = (I/b - P)/eps`` at exact convergence; at a finite tolerance the
right-hand side is of the order of the marginal error and a few iterations reach rounding.
When the iteration would need many steps (a general ``G``, a nearly singular ``S``) it hands
over to the dense solve, whose result it then returns unchanged.

See the chapter "Entropic optimal transport and the Sinkhorn algorithm" for a derivation
and a check against unrolled autograd.
"""

from __future__ import annotations

from typing import Literal

import torch

__all__ = ["sinkhorn_plan_vjp"]


def _solve_schur(S: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """Solve ``S y = rhs`` batch-wise; singular elements get the minimum-norm solution.

    ``S`` is singular beyond its null vector ``1`` when the support of the plan splits into
    several connected blocks: each block has its own ``(+t, -t)`` shift that leaves the plan
    unchanged. This happens when training has made the plan (numerically) a permutation,
    e.g. small ε, well-separated embeddings, float32. The right-hand side is orthogonal to
    those shifts, so the minimum-norm (pseudo-inverse) solution is a valid one, and the
    gradient with respect to ``C`` does not depend on which solution is used.
    """
    y, info = torch.linalg.solve_ex(S, rhs.unsqueeze(-1))
    y = y.squeeze(-1)
    bad = (info != 0) | ~torch.isfinite(y).all(-1)
    if bool(bad.any()):
        S64, r64 = S[bad].double(), rhs[bad].double()
        y_pinv = (torch.linalg.pinv(S64, hermitian=True, rtol=1e-10)
                  @ r64.unsqueeze(-1)).squeeze(-1)
        y = y.clone()
        y[bad] = y_pinv.to(y.dtype)
    return y


# Conjugate gradients on the Schur complement (solver="cg"):
# - stop once ||residual|| <= _CG_RTOL * scale, the scale being the size of the two terms of
#   the right-hand side before they cancel (a few units of the dtype's rounding);
# - at most _CG_MAX_ITER iterations; as soon as the mean rate so far projects past that
#   budget, hand over to the dense solve (a general G at b = 256 in float64 needs ~20).
_CG_RTOL = {torch.float32: 4e-7, torch.float64: 4e-15}
_CG_MAX_ITER = 16


def _cg_one(P, row, col, h_row, h_col, rtol):
    """Conjugate gradients for one problem (2-D ``P``); ``y_row`` or ``None``. Lean on
    purpose: at b = 256 an iteration is two matrix-vector products and a dozen vector
    operations, whose dispatch costs as much as the products."""
    d = row.clamp_min(torch.finfo(P.dtype).tiny).rsqrt()
    q = row.sqrt()
    q.div_(torch.linalg.vector_norm(q))
    PT = P.T
    inv_col = col.reciprocal()

    def apply(x):  # (I - M M^T + q q^T) x with M = diag(d) P diag(col)^-1/2
        t = torch.mv(PT, d * x).mul_(inv_col)
        return torch.mv(P, t).mul_(d).neg_().add_(x).add_(q, alpha=torch.dot(q, x).item())

    p_h_col = torch.mv(P, h_col * inv_col)
    rhs = torch.sub(h_row, p_h_col).mul_(d)
    # The size of the two terms before they cancel.
    scale = torch.linalg.vector_norm(d * h_row) + torch.linalg.vector_norm(d * p_h_col)
    tol = rtol * scale.item()
    z = torch.zeros_like(rhs)
    r, p = rhs.clone(), rhs.clone()
    rs = torch.dot(r, r).item()
    res0 = res = rs**0.5
    k = 0
    while not res <= tol:
        if not res < float("inf") or k == _CG_MAX_ITER:
            return None
        if k > 0:
            # CG's rate varies from step to step: project with the mean rate so far.
            rate = (res / res0) ** (1.0 / k)
            if not rate < 1.0 or res * rate ** (_CG_MAX_ITER - k) > tol:
                return None  # too slow for the budget: the dense solve is cheaper
        Ap = apply(p)
        pAp = torch.dot(p, Ap).item()
        if not pAp > 0.0:  # singular direction (a split support): the dense solve handles it
            return None
        alpha = rs / pAp
        z.add_(p, alpha=alpha)
        r.add_(Ap, alpha=-alpha)
        rs_new = torch.dot(r, r).item()
        p.mul_(rs_new / rs).add_(r)
        rs = rs_new
        res = rs**0.5
        k += 1
    if k > 0:
        # The recursive residual can drift from the true one below the rounding floor.
        if not torch.linalg.vector_norm(rhs - apply(z)).item() <= 4.0 * tol:
            return None
    y_row = z.mul_(d)
    return y_row.sub_(y_row.mean())


def _solve_schur_cg(
    P: torch.Tensor, row: torch.Tensor, col: torch.Tensor, h_row: torch.Tensor,
    h_col: torch.Tensor,
) -> torch.Tensor | None:
    """``y_row`` with ``S y_row = h_row - P diag(1/col) h_col`` by conjugate gradients.

    ``S = diag(row) - P diag(1/col) P^T`` is never formed. The system is Jacobi-scaled,
    ``z = sqrt(row) * y_row``, to ``(I - M M^T + q q^T) z = rhs / sqrt(row)`` with
    ``M = diag(row)^-1/2 P diag(col)^-1/2``: ``M M^T`` has eigenvalues in [0, 1], the top
    one (``q = sqrt(row)/||sqrt(row)||``, the gauge direction) is moved to 1 by the rank-one
    term, and the rest are set by the plan's mixing (Sinkhorn's own convergence rate), so a
    converging forward gives a well-conditioned system. Started from ``z = 0``: for the m-LTM
    loss the right-hand side is of the order of the forward's marginal error, and float32
    often stops before the first iteration. The problems of a batch are solved one by one
    (each stops at its own iteration).

    Returns ``y_row`` (B, k) with ``sum(y_row) = 0`` (the dense solve's gauge), or ``None``
    when an iteration does not reach its tolerance within its budget (or meets a
    non-finite value or a singular direction), for the caller to solve densely.
    """
    rtol = _CG_RTOL[P.dtype]
    ys = []
    for i in range(P.shape[0]):
        y = _cg_one(P[i], row[i], col[i], h_row[i], h_col[i], rtol)
        if y is None:
            return None
        ys.append(y)
    return torch.stack(ys)


def sinkhorn_plan_vjp(
    P: torch.Tensor, G: torch.Tensor, eps: float, *, solver: Literal["dense", "cg"] = "dense"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Vector-Jacobian product of the entropic OT plan by implicit differentiation.

    Args:
        P: Converged plan, shape (B, n, m).
        G: Upstream gradient dL/dP, shape (B, n, m).
        eps: Entropic regularisation used to compute ``P``.
        solver: How the Schur-complement system is solved. ``"dense"`` (default): form it
            and factorise it (a pseudo-inverse where it is singular). ``"cg"``: conjugate
            gradients from ``y = 0`` (:func:`_solve_schur_cg`), handing over to the dense
            solve when they would need many iterations; faster for losses whose system is
            nearly solved by ``y = 0``, such as the m-LTM loss. Both agree to rounding.

    Returns:
        ``(dL/dC, dL/da, dL/db)`` with shapes (B, n, m), (B, n) and (B, m). The marginal
        gradients are defined up to the constant shift ``(+t, -t)`` (the marginals live on
        the simplex); the one returned has ``sum(dL/da) = 0`` on the smaller side.
    """
    if solver not in ("dense", "cg"):
        raise ValueError(f"solver must be 'dense' or 'cg'; got {solver!r}.")
    transpose = P.shape[-2] > P.shape[-1]
    if transpose:  # work on the smaller side: the Schur complement is min(n, m) squared
        P, G = P.transpose(-2, -1), G.transpose(-2, -1)
    H = G * P
    row = P.sum(-1)  # (B, k), k = smaller side
    col = P.sum(-2)  # (B, l)
    h_row = H.sum(-1)
    h_col = H.sum(-2)
    # A column whose mass underflowed (a near-permutation plan in float32) carries no
    # gradient; keep it from turning 0/0 into NaN.
    col = col.clamp_min(torch.finfo(P.dtype).tiny)
    y_row = _solve_schur_cg(P, row, col, h_row, h_col) if solver == "cg" else None
    if y_row is None:
        P_over_col = P / col.unsqueeze(-2)
        S = torch.diag_embed(row) - P_over_col @ P.transpose(-2, -1)
        k = S.shape[-1]
        # Rank-one term on the null vector 1 with eigenvalue mean(row): keeps S well
        # conditioned and selects the solution with sum(y_row) = 0 (the right-hand side is
        # orthogonal to 1).
        S = S + (row.mean(-1) / k)[:, None, None]
        rhs = h_row - (P_over_col @ h_col.unsqueeze(-1)).squeeze(-1)
        y_row = _solve_schur(S, rhs)
    y_col = (h_col - (P.transpose(-2, -1) @ y_row.unsqueeze(-1)).squeeze(-1)) / col
    # (P * (y_row + y_col) - H) / eps, in place: the same operations in the same order.
    grad_C = (y_row.unsqueeze(-1) + y_col.unsqueeze(-2)).mul_(P).sub_(H).div_(eps)
    if transpose:
        return grad_C.transpose(-2, -1), y_col, y_row
    return grad_C, y_row, y_col

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
term, and solved densely. The backward keeps only ``P`` (O(n m), independent of the number
of iterations) and is exact when the forward has converged.

See the chapter "Entropic optimal transport and the Sinkhorn algorithm" for a derivation
and a check against unrolled autograd.
"""

from __future__ import annotations

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


def sinkhorn_plan_vjp(
    P: torch.Tensor, G: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Vector-Jacobian product of the entropic OT plan by implicit differentiation.

    Args:
        P: Converged plan, shape (B, n, m).
        G: Upstream gradient dL/dP, shape (B, n, m).
        eps: Entropic regularisation used to compute ``P``.

    Returns:
        ``(dL/dC, dL/da, dL/db)`` with shapes (B, n, m), (B, n) and (B, m). The marginal
        gradients are defined up to the constant shift ``(+t, -t)`` (the marginals live on
        the simplex); the one returned has ``sum(dL/da) = 0`` on the smaller side.
    """
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
    P_over_col = P / col.unsqueeze(-2)
    S = torch.diag_embed(row) - P_over_col @ P.transpose(-2, -1)
    k = S.shape[-1]
    # Rank-one term on the null vector 1 with eigenvalue mean(row): keeps S well conditioned
    # and selects the solution with sum(y_row) = 0 (the right-hand side is orthogonal to 1).
    S = S + (row.mean(-1) / k)[:, None, None]
    rhs = h_row - (P_over_col @ h_col.unsqueeze(-1)).squeeze(-1)
    y_row = _solve_schur(S, rhs)
    y_col = (h_col - (P.transpose(-2, -1) @ y_row.unsqueeze(-1)).squeeze(-1)) / col
    grad_C = (P * (y_row.unsqueeze(-1) + y_col.unsqueeze(-2)) - H) / eps
    if transpose:
        return grad_C.transpose(-2, -1), y_col, y_row
    return grad_C, y_row, y_col

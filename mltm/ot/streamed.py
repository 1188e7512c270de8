"""Streamed Sinkhorn over embeddings: entropic OT between galleries too large for one matrix.

The balanced entropic problem (paper eq. 3) between ``N`` points ``x`` and ``M`` points ``y``
with cost ``C_ij = cost(x_i, y_j)`` is solved by the Sinkhorn iteration (paper eq. 4, the
log-domain form of :mod:`mltm.ot.sinkhorn`)

.. math::

    \\log v_j \\leftarrow \\log b_j - \\operatorname{LSE}_i(-C_{ij}/\\varepsilon + \\log u_i),
    \\qquad
    \\log u_i \\leftarrow \\log a_i - \\operatorname{LSE}_j(-C_{ij}/\\varepsilon + \\log v_j),

without ever holding ``C``: it is recomputed from the embeddings in blocks of rows, so the
memory is the embeddings, the ``N + M`` potentials and one block (O((N + M) d) plus one
block), and each iteration costs one pass over the blocks. The result is the pair of dual
potentials ``f = eps log u`` and ``g = eps log v``; the plan is
``P_ij = exp((f_i + g_j - C_ij) / eps)`` and the transductive plan ranking (paper eq. 5)
ranks by its log, ``(f_i + g_j - C_ij) / eps`` (:func:`mltm.retrieval.plan_topk`).

One pass per iteration: within a block of rows the row update needs all ``M`` columns
(present), and the block's contribution to the next column update is accumulated as the
block goes by. Each block is stabilised by the current column potential, i.e. the kernel
``E_ij = exp(-C_ij/eps + log v_j)`` has columns that carried mass ``b_j`` at the last update
(Schmitzer's absorption, done for free because the block is recomputed anyway). Its row
sums give the new ``u`` (``u_i = a_i / sum_j E_ij``) and ``E^T (a / E 1)`` the column sums of
the plan ``(u_new, v)``, whose distance to ``b`` is the convergence test (POT's, as in
:func:`mltm.ot.sinkhorn_log`) and from which the new ``v`` follows. Only matrix-vector
products and one ``exp`` per entry are needed; a block whose row sums under- or overflow
(a poor start, a very wide cost range) is redone with exact log-sum-exp, and so is the
column update when a column sum underflows, so the iterates are those of the dense
log-domain solver up to rounding, with the same stopping iteration for ``check_every=1``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch

from mltm.ot.sinkhorn import ConvergenceWarning

__all__ = ["streamed_sinkhorn_potentials", "StreamedSinkhornResult", "default_block_rows"]

CostFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# Entries of one cost block when ``block`` is not given (16 MB in float32): large enough that
# the matrix product of a block re-reads ``y`` rarely, small enough to stay in a large cache.
_BLOCK_ELEMENTS = 1 << 22


@dataclass
class StreamedSinkhornResult:
    """What :func:`streamed_sinkhorn_potentials` computed.

    Attributes:
        log_u: Log row scaling, shape (N,); the row potential is ``f = eps * log_u``.
        log_v: Log column scaling, shape (M,); ``g = eps * log_v``. The plan is
            ``exp(-C_ij/eps + log_u_i + log_v_j) = exp((f_i + g_j - C_ij) / eps)``, whose
            rows sum to ``a`` exactly and whose columns sum to ``b`` within
            ``marginal_error``.
        eps: The regularisation used.
        n_iter: Iterations run (one iteration updates v then u, as in ``sinkhorn_log``).
        marginal_error: ``||P^T 1 - b||_2`` at the last check (``None`` if no check ran).
        error_history: ``(iteration, error)`` at every check.
    """

    log_u: torch.Tensor
    log_v: torch.Tensor
    eps: float
    n_iter: int
    marginal_error: float | None
    error_history: list[tuple[int, float]] = field(default_factory=list)

    @property
    def f(self) -> torch.Tensor:
        """Row dual potential ``eps * log_u`` (N,), in the cost's units."""
        return self.eps * self.log_u

    @property
    def g(self) -> torch.Tensor:
        """Column dual potential ``eps * log_v`` (M,), in the cost's units."""
        return self.eps * self.log_v


def default_block_rows(m: int, block_elements: int = _BLOCK_ELEMENTS) -> int:
    """Rows per block so that one (rows, m) block has about ``block_elements`` entries."""
    return max(1, block_elements // max(1, m))


def _check_marginal(w, name: str, size: int, dtype, device) -> torch.Tensor:
    if w is None:
        return torch.full((size,), -math.log(size), dtype=torch.float64, device=device)
    w = torch.as_tensor(w, device=device)
    if w.ndim != 1 or w.shape[0] != size:
        raise ValueError(f"{name} must have shape ({size},); got shape {tuple(w.shape)}.")
    w = w.to(torch.float64)
    if not bool(torch.isfinite(w).all()) or bool((w <= 0).any()):
        raise ValueError(f"{name} must be finite and strictly positive.")
    if abs(float(w.sum()) - 1.0) > 1e-5:
        raise ValueError(
            f"{name} must sum to 1 (got {float(w.sum()):.6g}); normalise it with "
            f"{name} / {name}.sum()."
        )
    return w.log()


def streamed_sinkhorn_potentials(
    x: torch.Tensor,
    y: torch.Tensor,
    cost_fn: CostFn,
    eps: float,
    a: torch.Tensor | None = None,
    b: torch.Tensor | None = None,
    *,
    block: int | None = None,
    tol: float | None = 1e-6,
    max_iter: int = 1000,
    check_every: int = 1,
) -> StreamedSinkhornResult:
    """Dual potentials of entropic OT (paper eq. 3-4) with the cost streamed block by block.

    Same iteration and stopping rule as :func:`mltm.ot.sinkhorn_log` on the dense cost
    ``cost_fn(x, y)``, without materialising it: memory O((N + M) d) plus one
    ``(block, M)`` cost block (and the temporaries ``cost_fn`` needs for it).

    Args:
        x: Row embeddings (N, d), e.g. audio clips.
        y: Column embeddings (M, d), e.g. captions; same device.
        cost_fn: ``(x_block (r, d), y (M, d)) -> (r, M)`` cost block, smaller = more
            similar, e.g. :func:`mltm.costs.cosine_distance`. Called under ``no_grad``.
        eps: Entropic regularisation ε > 0, in the cost's units.
        a: Row marginal (N,), positive, summing to 1. Default uniform.
        b: Column marginal (M,), positive, summing to 1. Default uniform.
        block: Rows of ``x`` per cost block; default about 4M entries per block.
        tol: Stop once ``||P^T 1 - b||_2 < tol`` (rows are exact after each iteration).
            The check is free (it uses the pass the iteration makes anyway). ``None``: run
            ``max_iter`` iterations.
        max_iter: Maximum number of iterations; each is one pass over all blocks.
        check_every: Iterations between checks (1: every pass; the dense solver's default
            is 10, use that to reproduce its iteration count exactly).

    Returns:
        :class:`StreamedSinkhornResult` with the potentials ``f``, ``g`` (and the log
        scalings ``log_u = f / eps``, ``log_v = g / eps``) in the cost's dtype, the iteration
        count and the marginal errors.

    Raises:
        ValueError: for non-2-D or mismatched embeddings, a bad ``eps``, ``block``, ``tol``
            or marginals, or a ``cost_fn`` returning the wrong shape.

    Warns:
        ConvergenceWarning: ``tol`` not reached within ``max_iter`` iterations.
    """
    for t, name in ((x, "x"), (y, "y")):
        if not isinstance(t, torch.Tensor) or t.ndim != 2 or 0 in t.shape:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a non-empty 2-D tensor (n, d); got {got}.")
    if x.shape[1] != y.shape[1] or x.device != y.device:
        raise ValueError(
            f"x and y must share the embedding size and device; got d={x.shape[1]} on "
            f"{x.device} and d={y.shape[1]} on {y.device}."
        )
    if isinstance(eps, torch.Tensor):
        eps = float(eps)
    if not isinstance(eps, (int, float)) or not 0 < eps < math.inf:
        raise ValueError(f"eps must be a positive finite number; got {eps!r}.")
    if tol is not None and not (isinstance(tol, (int, float)) and tol > 0):
        raise ValueError(f"tol must be a positive number or None; got {tol!r}.")
    for val, name in ((max_iter, "max_iter"), (check_every, "check_every")):
        if not isinstance(val, int) or isinstance(val, bool) or val < 1:
            raise ValueError(f"{name} must be a positive integer; got {val!r}.")
    N, M = x.shape[0], y.shape[0]
    if block is None:
        block = default_block_rows(M)
    if not isinstance(block, int) or isinstance(block, bool) or block < 1:
        raise ValueError(f"block must be a positive integer (rows per block); got {block!r}.")
    eps = float(eps)
    device = x.device
    log_a64 = _check_marginal(a, "a", N, None, device)
    log_b64 = _check_marginal(b, "b", M, None, device)
    starts = list(range(0, N, block))

    def cost_block(s: int) -> torch.Tensor:
        e = min(N, s + block)
        C = cost_fn(x[s:e], y)
        if not isinstance(C, torch.Tensor) or tuple(C.shape) != (e - s, M):
            got = tuple(C.shape) if isinstance(C, torch.Tensor) else type(C).__name__
            raise ValueError(
                f"cost_fn(x_block, y) must return shape ({e - s}, {M}); got {got}."
            )
        if C.dtype not in (torch.float32, torch.float64):
            C = C.float()
        return C

    with torch.no_grad():
        C0 = cost_block(0)
        dtype = C0.dtype
        log_a, log_b = log_a64.to(dtype), log_b64.to(dtype)
        a_w = log_a.exp()
        tiny = torch.finfo(dtype).tiny
        ulp = torch.finfo(dtype).eps
        # A row (column) sum below this could be missing mass from entries that underflowed.
        row_floor = M * tiny / ulp
        col_floor = N * tiny / ulp
        neg_inv_eps = -1.0 / eps

        def blocks():
            for s in starts:
                yield s, min(N, s + block), (C0 if s == 0 and C0 is not None else cost_block(s))

        def column_lse(log_u: torch.Tensor) -> torch.Tensor:
            """Exact LSE_i(-C_ij/eps + log u_i) by online max/sum over the row blocks."""
            run_max = torch.full((M,), -math.inf, dtype=dtype, device=device)
            run_sum = torch.zeros(M, dtype=dtype, device=device)
            for s, e, C in blocks():
                Z = C.mul_(neg_inv_eps).add_(log_u[s:e, None])
                bmax = Z.amax(0)
                new_max = torch.maximum(run_max, bmax)
                ref = torch.where(torch.isfinite(new_max), new_max, torch.zeros_like(new_max))
                run_sum.mul_((run_max - ref).exp_()).add_(Z.sub_(ref).exp_().sum(0))
                run_max = new_max
            return run_max + run_sum.log()

        # Iteration 0, first half: v from u = 1 (log-domain, exact).
        log_u = torch.zeros(N, dtype=dtype, device=device)
        log_v = log_b - column_lse(log_u)
        C0 = None  # the first block was consumed (overwritten) by the first pass
        history: list[tuple[int, float]] = []
        err_value = None
        it = 0
        while it < max_iter:
            # One pass: u from v (row sums of the stabilised block), and the column sums of
            # the plan (u_new, v) for the check and the next v.
            col = torch.zeros(M, dtype=torch.float64, device=device)
            new_log_u = torch.empty_like(log_u)
            for s, e, C in blocks():
                # E_ij = exp(-C_ij/eps + log v_j): rows sum to a_i / u_new_i, and
                # (a / E 1)^T E are the column sums of the plan (u_new, v). Two fused passes
                # over the block (add, exp) plus two matrix-vector products.
                E = torch.add(log_v[None, :], C, alpha=neg_inv_eps, out=C).exp_()
                S = E.sum(1)
                if not bool(((S >= row_floor) & (S < math.inf)).all()):
                    # Row sums under/overflowed: exact log-sum-exp for this block.
                    Z = cost_block(s).mul_(neg_inv_eps).add_(log_v[None, :])
                    lu = log_a[s:e] - torch.logsumexp(Z, dim=1)
                    new_log_u[s:e] = lu
                    col += Z.add_(lu[:, None]).exp_().sum(0).double()
                    continue
                new_log_u[s:e] = log_a[s:e] - S.log()
                col += ((a_w[s:e] / S).unsqueeze(0) @ E).squeeze(0).double()
            log_u = new_log_u
            it += 1
            if tol is not None and (it % check_every == 0 or it == max_iter):
                err_value = float(torch.linalg.vector_norm(col - log_b64.exp()))
                history.append((it, err_value))
                if err_value < tol or it == max_iter:
                    break
            if it == max_iter:
                break
            # v from the column sums of plan (u_new, v_old): v_new = v_old * b / col.
            if bool((col >= col_floor).all()):
                log_v = log_v + (log_b64 - col.log()).to(dtype)
            else:  # a column sum underflowed: exact column log-sum-exp (one more pass)
                log_v = log_b - column_lse(log_u)
        if tol is not None and err_value is not None and not err_value < tol:
            warnings.warn(
                f"streamed sinkhorn did not reach tol={tol:g} in max_iter={max_iter} "
                f"iterations (marginal error {err_value:.3g}); raise max_iter or eps.",
                ConvergenceWarning,
                stacklevel=2,
            )
    return StreamedSinkhornResult(
        log_u=log_u, log_v=log_v, eps=eps, n_iter=it, marginal_error=err_value,
        error_history=history,
    )

"""Batched log-domain Sinkhorn for entropic optimal transport (paper eq. 3, Algorithm 2).

The entropic problem between marginals ``a`` (n) and ``b`` (m) with cost ``C`` (n, m) is

.. math::

    \\pi_\\varepsilon = \\arg\\min_{\\pi \\ge 0,\\ \\pi 1 = a,\\ \\pi^\\top 1 = b}
        \\langle \\pi, C \\rangle - \\varepsilon H(\\pi),
    \\qquad H(\\pi) = -\\sum_{ij} \\pi_{ij} \\log \\pi_{ij} .

Its solution is ``pi = diag(e^u) K diag(e^v)`` with ``K = exp(-C/eps)``. The paper's
Algorithm 2 alternates ``u = a / (K v)`` and ``v = b / (K^T u)`` on the scalings themselves;
in float32 ``K`` underflows to exactly 0 once ``C/eps`` exceeds ~104 (e.g. costs in [1, 1.7]
at eps = 0.01), which gives an all-zero plan. Here the same iteration runs on the log
scalings with log-sum-exp, which never underflows:

.. math::

    v \\leftarrow \\log b - \\operatorname{LSE}_i(-C_{ij}/\\varepsilon + u_i), \\qquad
    u \\leftarrow \\log a - \\operatorname{LSE}_j(-C_{ij}/\\varepsilon + v_j).

``v`` is updated first so the row marginal is exact after every iteration; convergence is
measured on the column marginal, ``||pi^T 1 - b||_2`` (POT's stopping criterion), computed
from the log-sum-exp that the next ``v`` update needs anyway.

Where no autograd graph is recorded (the forward of the implicit gradient, inference) the
same iterates are computed faster: on a CPU by the stabilised absorbed iteration, or (opt-in,
``backend="kernel"``) by Algorithm 2 itself on ``K = exp(-(C - min C)/eps)`` when its range is
safe (:func:`_iterate_kernel`, matrix-vector products, checks every ``check_every``
iterations, absorption and rollback to the stabilised path), else by the stabilised absorbed
iteration (:func:`_iterate_absorbed`); on a GPU by fused kernels. On a CPU
``backend="kernel"`` also takes the conjugate-gradient implicit backward
(``sinkhorn_plan_vjp(..., solver="cg")``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Literal

import torch

from mltm.ot._problem import CostNormalization, Problem, being_traced, prepare_problem
from mltm.ot.implicit import sinkhorn_plan_vjp

__all__ = ["sinkhorn", "sinkhorn_log", "SinkhornResult", "ConvergenceWarning"]

GradMode = Literal["implicit", "unroll"]
Backend = Literal["auto", "torch", "kernel", "absorbed", "cuda_graph"]


class ConvergenceWarning(UserWarning):
    """A solver stopped at ``max_iter`` before reaching its tolerance."""


@dataclass
class SinkhornResult:
    """What :func:`sinkhorn_log` computed.

    Attributes:
        plan: Transport plan, same shape as ``C``.
        log_u: Log row scaling, shape (B, n) or (n,).
        log_v: Log column scaling, shape (B, m) or (m,). ``plan = exp(-C/eps + log_u + log_v)``
            (with ``C`` after optional normalisation).
        n_iter: Number of iterations run.
        marginal_error: ``||plan^T 1 - b||_2`` per problem at the last check (shape (B,) or
            ()), or ``None`` when ``tol`` is ``None`` (no check was made).
        error_history: The marginal errors at every check, as (iteration, error) pairs.
    """

    plan: torch.Tensor
    log_u: torch.Tensor
    log_v: torch.Tensor
    n_iter: int
    marginal_error: torch.Tensor | None
    error_history: list[tuple[int, torch.Tensor]] = field(default_factory=list)


def _check_iteration_args(tol, max_iter, check_every, grad=None, backend=None):
    if tol is not None and not (isinstance(tol, (int, float)) and tol > 0):
        raise ValueError(f"tol must be a positive number or None (fixed iterations); got {tol!r}.")
    if not isinstance(max_iter, int) or isinstance(max_iter, bool) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive integer; got {max_iter!r}.")
    if not isinstance(check_every, int) or isinstance(check_every, bool) or check_every < 1:
        raise ValueError(f"check_every must be a positive integer; got {check_every!r}.")
    if grad is not None and grad not in ("implicit", "unroll"):
        raise ValueError(f"grad must be 'implicit' or 'unroll'; got {grad!r}.")
    if backend is not None and backend not in ("auto", "torch", "kernel", "absorbed", "cuda_graph"):
        raise ValueError(
            "backend must be 'auto', 'torch', 'kernel', 'absorbed' or 'cuda_graph'; "
            f"got {backend!r}."
        )


def _column_error(s: torch.Tensor, log_v: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """||P^T 1 - b||_2 per problem, from the column log-sum-exp ``s`` (P^T 1 = exp(s + v))."""
    return torch.linalg.vector_norm(torch.exp(s + log_v) - torch.exp(log_b), dim=-1)


def _iterate_torch(
    logK: torch.Tensor,
    log_a: torch.Tensor,
    log_b: torch.Tensor,
    tol: float | None,
    max_iter: int,
    check_every: int,
    init=None,
):
    """The plain-torch iteration; differentiable by autograd when grad is enabled.

    ``init = (log_u, log_v, it, history)`` continues from the state after ``it`` iterations.
    """
    B, n, m = logK.shape
    if init is None:
        log_u = torch.zeros(B, n, dtype=logK.dtype, device=logK.device)
        log_v = torch.zeros(B, m, dtype=logK.dtype, device=logK.device)
        history: list[tuple[int, torch.Tensor]] = []
        it = 0
    else:
        log_u, log_v, it, history = init
    it_start = it  # a continued run's state at `it` was checked already
    # Both half-steps reduce along contiguous rows: a transposed copy makes the column
    # log-sum-exp ~20 % faster on the CPU than reducing over the strided dimension.
    logKT = logK.transpose(-2, -1).contiguous()
    err = None
    while it < max_iter:
        s = torch.logsumexp(logKT + log_u.unsqueeze(-2), dim=-1)
        if tol is not None and it > it_start and it % check_every == 0:
            # The plan after `it` iterations, checked for free from this iteration's LSE.
            err = _column_error(s, log_v, log_b).detach()
            history.append((it, err))
            if err.max().item() < tol:
                break
        log_v = log_b - s
        log_u = log_a - torch.logsumexp(logK + log_v.unsqueeze(-2), dim=-1)
        it += 1
    if tol is not None and (not history or history[-1][0] != it):
        s = torch.logsumexp(logKT + log_u.unsqueeze(-2), dim=-1)
        err = _column_error(s, log_v, log_b).detach()
        history.append((it, err))
    return log_u, log_v, it, err, history


def _iterate_absorbed(
    logK, log_a, log_b, tol, max_iter, check_every, tau: float = 30.0, init=None
):
    """The same log-domain iteration with the scalings absorbed into a stabilised kernel.

    The log scalings are split as ``u = alpha + u~`` and ``v = beta + v~``, with the kernel
    ``K~ = exp(-C/eps + alpha + beta)`` (after an absorption it is the current plan, so its
    relevant entries are far from under- and overflow). Each half-step is then a
    matrix-vector product with ``K~`` instead of a log-sum-exp over ``C``:
    ``v~ = log b - log(K~^T e^{u~})``, ``u~ = log a - log(K~ e^{v~})`` (Schmitzer 2019, Peyré
    and Cuturi 2019 §4.4). Whenever ``|u~|`` or ``|v~|`` exceeds ``tau`` or a sum underflows,
    the scalings are absorbed again (one exp pass) and the half-step is redone in the log
    domain, so the iterates are those of :func:`_iterate_torch` up to rounding. Used without
    autograd on the CPU when the kernel of :func:`_iterate_kernel` would underflow, and as
    its fallback.

    ``init = (log_u, log_v, it, history)`` continues from the state after ``it`` iterations
    (whose convergence check, if due, was already made) instead of starting from zero.
    """
    B, n, m = logK.shape
    if init is None:
        log_u0 = torch.zeros(B, n, dtype=logK.dtype, device=logK.device)
        it0, history = 0, []
    else:
        log_u0, _, it0, history = init
    # One iteration in the log domain, then absorb: K~ is the plan after that iteration.
    beta = log_b - torch.logsumexp(logK + log_u0.unsqueeze(-1), dim=-2)
    alpha = log_a - torch.logsumexp(logK + beta.unsqueeze(-2), dim=-1)
    K = torch.exp(logK + alpha.unsqueeze(-1) + beta.unsqueeze(-2))
    ut, vt = torch.zeros_like(alpha), torch.zeros_like(beta)
    b_exp = torch.exp(log_b)
    err, prev_err = None, None
    it = it0 + 1
    while it < max_iter:
        col = (K.transpose(-2, -1) @ torch.exp(ut).unsqueeze(-1)).squeeze(-1)  # P^T 1 * e^{-v~}
        if tol is not None and it % check_every == 0:
            err = torch.linalg.vector_norm(torch.exp(vt) * col - b_exp, dim=-1)
            history.append((it, err))
            worst_err = err.max().item()
            if worst_err < tol:
                break
            if prev_err is not None and not worst_err < prev_err:
                # Stalled at the rounding floor of the products: let the log path decide.
                init = (alpha + ut, beta + vt, it, history)
                return _iterate_torch(logK, log_a, log_b, tol, max_iter, check_every, init=init)
            prev_err = worst_err
        vt_new = log_b - torch.log(col)
        ut_new = log_a - torch.log((K @ torch.exp(vt_new).unsqueeze(-1)).squeeze(-1))
        worst = torch.maximum(ut_new.abs().amax(), vt_new.abs().amax())
        if not worst.item() < tau:  # also true for NaN (a column or row sum underflowed)
            # Re-absorb the current scalings and redo this iteration in the log domain.
            alpha, beta = alpha + ut, beta + vt
            beta = log_b - torch.logsumexp(logK + alpha.unsqueeze(-1), dim=-2)
            alpha = log_a - torch.logsumexp(logK + beta.unsqueeze(-2), dim=-1)
            K = torch.exp(logK + alpha.unsqueeze(-1) + beta.unsqueeze(-2))
            ut, vt = torch.zeros_like(alpha), torch.zeros_like(beta)
        else:
            ut, vt = ut_new, vt_new
        it += 1
    log_u, log_v = alpha + ut, beta + vt
    if tol is not None and (not history or history[-1][0] != it):
        s = torch.logsumexp(logK + log_u.unsqueeze(-1), dim=-2)
        err = _column_error(s, log_v, log_b)
        history.append((it, err))
    return log_u, log_v, it, err, history


# Kernel-domain iteration (:func:`_iterate_kernel`), per dtype:
# - direct: largest cost range (max C - min C) / eps for which K = exp(-(C - min C)/eps) is
#   used as is: no entry leaves the normal range and the scalings stay far from overflow;
# - soft: at a check, scalings spanning more than this many nats (max|log u~| + max|log v~|)
#   are absorbed into the kernel (one exp pass), so the kernel stays close to the plan;
# - hard: beyond this (or on a non-finite value) the chunk since the last check is rolled back
#   and the stabilised log-domain path takes over. Below it, kernel entries that underflowed
#   (< e^-87 in float32) could only carry plan mass below e^(-87 + hard): e^-37 ~ 1e-16.
_KERNEL_LIMITS = {torch.float32: (30.0, 30.0, 50.0), torch.float64: (80.0, 100.0, 400.0)}


def _kernel_is_safe(logK: torch.Tensor) -> tuple[bool, torch.Tensor]:
    """Whether the kernel-domain path may start from ``exp(logK - max logK)``; also the max."""
    if logK.shape[0] == 1:  # one global reduction is ~10x faster than a per-problem one
        lo, hi = torch.aminmax(logK)
        lo, hi = lo.view(1), hi.view(1)
    else:
        lo, hi = logK.amin(dim=(-2, -1)), logK.amax(dim=(-2, -1))
    direct = _KERNEL_LIMITS[logK.dtype][0]
    return bool((hi - lo).max().item() <= direct), hi


def _iterate_kernel(logK, log_a, log_b, tol, max_iter, check_every, logK_max=None, plan_out=None):
    """The Sinkhorn iteration on the scalings themselves (paper Algorithm 2), checked in chunks.

    ``u = a / (K v)``, ``v = b / (K^T u)`` with ``K = exp(-(C - min C)/eps)`` (the caller has
    checked with :func:`_kernel_is_safe` that ``K`` neither underflows nor drives the
    scalings to overflow): each half-step is one matrix-vector product and one division,
    written into preallocated buffers, with no log, exp or host synchronisation. Every
    ``check_every`` iterations (and at the end) one synchronisation reads the marginal error
    (from the product the next half-step needs anyway, as in :func:`_iterate_torch`) and the
    span of the scalings: spans above the soft limit are absorbed into the kernel
    (``K <- diag(u) K diag(v)``, Schmitzer's stabilisation, exact up to rounding); a span
    above the hard limit or a non-finite value (a sum underflowed) rolls the iterations
    since the last check back and hands over to :func:`_iterate_absorbed`, which checks
    every iteration. The iterates are those of the log-domain path up to rounding, with the
    same stopping iteration.

    When it finishes in the kernel domain and ``plan_out`` is a dict, ``plan_out["plan"]``
    is set to ``diag(u) K diag(v)``: the plan whose column error was measured (in float32,
    ``exp(-C/eps + log u + log v)`` re-rounds the exponent, ~1e-6 relative per entry).
    """
    B, n, m = logK.shape
    _, soft, hard = _KERNEL_LIMITS[logK.dtype]
    if logK_max is None:
        logK_max = logK.flatten(1).amax(-1)
    # log_u = alpha + log u, log_v = beta + log v, K = exp(logK + alpha + beta). The shift
    # -max logK goes to beta, so that the start log_u = 0 and every later iterate equal the
    # log-domain path's (not only the plan: the scalings too, not up to a constant).
    alpha = torch.zeros(B, n, dtype=logK.dtype, device=logK.device)
    beta = (-logK_max).unsqueeze(-1).expand(B, m).clone()
    K = torch.sub(logK, logK_max.view(B, 1, 1)).exp_()
    a, b = torch.exp(log_a).contiguous(), torch.exp(log_b).contiguous()
    u = torch.ones(B, n, dtype=logK.dtype, device=logK.device)
    v = torch.ones(B, m, dtype=logK.dtype, device=logK.device)
    row, col = torch.empty_like(u), torch.empty_like(v)

    # K^T u is computed as the row vector u^T K: no transposed copy of K (a strided copy
    # costs more than the products it would speed up at these sizes).
    if B == 1:
        K2, u2, v2, row2, col2 = K[0], u[0], v[0], row[0], col[0]
        u_row, col_row = u2.unsqueeze(0), col2.unsqueeze(0)

        def kt_u():
            torch.mm(u_row, K2, out=col_row)

        def k_v():
            torch.mv(K2, v2, out=row2)
    else:
        u3, v3, row3, col3 = u.unsqueeze(-2), v.unsqueeze(-1), row.unsqueeze(-1), col.unsqueeze(-2)

        def kt_u():
            torch.bmm(u3, K, out=col3)

        def k_v():
            torch.bmm(K, v3, out=row3)

    history: list[tuple[int, torch.Tensor]] = []
    err, prev_err = None, None
    it = 0
    ckpt = (u.clone(), v.clone(), 0)
    kt_u()
    while True:
        # `col` holds K^T u for the current u: the plan's column sums are v * col.
        stop_at = min(max_iter, (it // check_every + 1) * check_every)
        while it < stop_at:
            torch.div(b, col, out=v)
            k_v()
            torch.div(a, row, out=u)
            kt_u()
            it += 1
        checking = tol is not None and it % check_every == 0
        lu, lv = torch.log(u), torch.log(v)
        span = (lu.abs().amax(-1) + lv.abs().amax(-1)).max()
        if checking or it >= max_iter and tol is not None:
            err = torch.linalg.vector_norm(v * col - b, dim=-1)
            span_value, err_value = torch.stack([span, err.max()]).tolist()
        else:
            span_value, err_value = span.item(), None
        if not span_value <= hard:  # also for NaN
            u0, v0, it0 = ckpt
            init = (alpha + torch.log(u0), beta + torch.log(v0), it0, history)
            return _iterate_absorbed(logK, log_a, log_b, tol, max_iter, check_every, init=init)
        if err_value is not None:
            history.append((it, err))
            if err_value < tol:
                break
            if it < max_iter and prev_err is not None and not err_value < prev_err:
                # The error stopped decreasing: rounding floor of the products (a tol below
                # the dtype's precision). The log-domain path has its own floor; let it decide.
                init = (alpha + lu, beta + lv, it, history)
                return _iterate_torch(logK, log_a, log_b, tol, max_iter, check_every, init=init)
            prev_err = err_value
        if it >= max_iter:
            break
        if span_value > soft:  # absorb: K <- diag(u) K diag(v), u = v = 1
            alpha, beta = alpha + lu, beta + lv
            torch.exp(logK + alpha.unsqueeze(-1) + beta.unsqueeze(-2), out=K)
            col.mul_(v)  # K_new^T 1 = v * (K^T u)
            u.fill_(1.0)
            v.fill_(1.0)
        ckpt = (u.clone(), v.clone(), it)
    if plan_out is not None:
        plan_out["plan"] = K.mul_(u.unsqueeze(-1)).mul_(v.unsqueeze(-2))
    return alpha + torch.log(u), beta + torch.log(v), it, err, history


def _use_cuda_graph(logK: torch.Tensor, backend: Backend) -> bool:
    if backend == "cuda_graph":
        if not logK.is_cuda:
            raise ValueError("backend='cuda_graph' needs C on a CUDA device; "
                             "use backend='auto' or 'torch'.")
        return True
    # auto: the fused path only pays off on CUDA, and only without autograd (it is a forward).
    return backend == "auto" and logK.is_cuda and not torch.is_grad_enabled()


def _iterate(logK, log_a, log_b, tol, max_iter, check_every, backend, plan_out=None):
    """Run the iterations on the chosen backend; ``plan_out`` as in :func:`_iterate_kernel`."""
    # Inside torch.compile or a user's graph capture only plain tensor ops are allowed.
    if being_traced(logK):
        return _iterate_torch(logK, log_a, log_b, tol, max_iter, check_every)
    if _use_cuda_graph(logK, backend):
        from mltm.ot import _cuda

        return _cuda.iterate(logK, log_a, log_b, tol, max_iter, check_every)
    # The kernel-domain path is opt-in for now: "auto" keeps the stabilised log-domain
    # iteration on the CPU, so that the recorded runs and goldens keep their numbers.
    if backend == "kernel":
        safe, logK_max = _kernel_is_safe(logK)
        if safe:
            return _iterate_kernel(
                logK, log_a, log_b, tol, max_iter, check_every, logK_max, plan_out
            )
        # Cost range too wide for exp(-(C - min C)/eps): the stabilised log-domain path.
        return _iterate_absorbed(logK, log_a, log_b, tol, max_iter, check_every)
    if backend == "absorbed" or (backend == "auto" and not logK.is_cuda
                                 and not torch.is_grad_enabled()):
        return _iterate_absorbed(logK, log_a, log_b, tol, max_iter, check_every)
    return _iterate_torch(logK, log_a, log_b, tol, max_iter, check_every)


class _ImplicitSinkhorn(torch.autograd.Function):
    """Forward: Sinkhorn without autograd. Backward: :func:`sinkhorn_plan_vjp`."""

    @staticmethod
    def forward(ctx, C, log_a, log_b, eps, tol, max_iter, check_every, backend, info):
        with torch.no_grad():
            logK = C / -eps
            plan_out: dict = {}
            log_u, log_v, n_iter, err, history = _iterate(
                logK, log_a, log_b, tol, max_iter, check_every, backend, plan_out
            )
            P = plan_out.get("plan")
            if P is None:
                P = torch.exp(logK + log_u.unsqueeze(-1) + log_v.unsqueeze(-2))
        info.update(log_u=log_u, log_v=log_v, n_iter=n_iter, err=err, history=history)
        ctx.save_for_backward(P)
        ctx.eps = eps
        # The opt-in kernel path also takes the iterative backward on the CPU (one host read
        # per iteration); "auto" keeps the dense solve, so that the recorded runs and goldens
        # keep their numbers.
        ctx.vjp_solver = "cg" if backend == "kernel" and not C.is_cuda else "dense"
        return P

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, G):
        (P,) = ctx.saved_tensors
        grad_C, grad_a, grad_b = sinkhorn_plan_vjp(P, G, ctx.eps, solver=ctx.vjp_solver)
        # The function takes log-marginals: d/dlog a = a * d/da, with a = P 1 at the solution.
        grad_log_a = grad_a * P.sum(-1) if ctx.needs_input_grad[1] else None
        grad_log_b = grad_b * P.sum(-2) if ctx.needs_input_grad[2] else None
        return grad_C, grad_log_a, grad_log_b, None, None, None, None, None, None


def sinkhorn_log(
    C: torch.Tensor,
    eps: float,
    a: torch.Tensor | None = None,
    b: torch.Tensor | None = None,
    *,
    tol: float | None = 1e-6,
    max_iter: int = 1000,
    check_every: int = 10,
    grad: GradMode = "implicit",
    cost_normalization: CostNormalization = "none",
    backend: Backend = "auto",
) -> SinkhornResult:
    """Solve entropic OT (paper eq. 3) by log-domain Sinkhorn; return plan and diagnostics.

    Same arguments as :func:`sinkhorn`; returns a :class:`SinkhornResult` with the plan, the
    log scalings, the number of iterations and the marginal error history.
    """
    _check_iteration_args(tol, max_iter, check_every, grad, backend)
    prob: Problem = prepare_problem(C, eps, a, b, cost_normalization=cost_normalization)
    if grad == "implicit":
        info: dict = {}
        P = _ImplicitSinkhorn.apply(
            prob.C, prob.log_a, prob.log_b, float(eps), tol, max_iter, check_every, backend, info
        )
        log_u, log_v, n_iter, err, history = (
            info["log_u"], info["log_v"], info["n_iter"], info["err"], info["history"]
        )
    else:
        logK = prob.C / -eps
        if torch.is_grad_enabled():
            log_u, log_v, n_iter, err, history = _iterate_torch(
                logK, prob.log_a, prob.log_b, tol, max_iter, check_every
            )
            P = None
        else:
            plan_out = {}
            log_u, log_v, n_iter, err, history = _iterate(
                logK, prob.log_a, prob.log_b, tol, max_iter, check_every, backend, plan_out
            )
            P = plan_out.get("plan")
        if P is None:
            P = torch.exp(logK + log_u.unsqueeze(-1) + log_v.unsqueeze(-2))
    if tol is not None and err is not None and n_iter >= max_iter and prob.host_checks:
        worst = err.max().item()
        if not worst < tol:
            warnings.warn(
                f"sinkhorn did not reach tol={tol:g} in max_iter={max_iter} iterations "
                f"(marginal error {worst:.3g}); raise max_iter or eps, or normalise the cost.",
                ConvergenceWarning,
                stacklevel=3,
            )
    return SinkhornResult(
        plan=prob.unbatch(P),
        log_u=prob.unbatch(log_u),
        log_v=prob.unbatch(log_v),
        n_iter=n_iter,
        marginal_error=None if err is None else prob.unbatch(err),
        error_history=[(i, prob.unbatch(e)) for i, e in history],
    )


def sinkhorn(
    C: torch.Tensor,
    eps: float,
    a: torch.Tensor | None = None,
    b: torch.Tensor | None = None,
    *,
    tol: float | None = 1e-6,
    max_iter: int = 1000,
    check_every: int = 10,
    grad: GradMode = "implicit",
    cost_normalization: CostNormalization = "none",
    backend: Backend = "auto",
) -> torch.Tensor:
    """Entropic optimal transport plan (paper eq. 3) by batched log-domain Sinkhorn.

    .. math::

        \\pi_\\varepsilon = \\arg\\min_{\\pi 1 = a,\\ \\pi^\\top 1 = b}
            \\langle \\pi, C \\rangle + \\varepsilon \\sum_{ij} \\pi_{ij} \\log \\pi_{ij}

    Args:
        C: Cost, shape (n, m) or batched (B, n, m); float32 or float64. The solver runs on
            ``C``'s device.
        eps: Entropic regularisation ε > 0, in the units of ``C`` (or relative to its
            maximum with ``cost_normalization="max"``).
        a: Source marginal, shape (n,) or (B, n), positive, summing to 1. Default uniform.
        b: Target marginal, shape (m,) or (B, m), positive, summing to 1. Default uniform.
        tol: Stop once ``||pi^T 1 - b||_2 < tol`` for every problem of the batch (rows are
            exact after each iteration). Checked every ``check_every`` iterations from the
            log-sum-exp the iteration computes anyway, at the price of one host
            synchronisation per check. ``None``: run exactly ``max_iter`` iterations with no
            host synchronisation (capturable in a CUDA graph or by ``torch.compile``).
        max_iter: Maximum number of iterations (one iteration updates v then u).
        check_every: Iterations between convergence checks.
        grad: How gradients reach ``C`` (and ``a``, ``b``) through the plan.
            ``"implicit"`` (default) differentiates the optimality conditions
            (:mod:`mltm.ot.implicit`): the backward keeps only the plan, O(n·m) memory
            whatever the number of iterations, and is exact at convergence.
            ``"unroll"`` backpropagates through every iteration (memory grows with the
            iterations; use it for a few fixed iterations or unconverged plans).
        cost_normalization: ``"none"`` (default) or ``"max"``: divide each problem's cost by
            its maximum before solving, as the reference implementation does
            (``M / M.max()``, gradients flow through the maximum). ε is then relative to
            the largest cost, which keeps conditioning fixed as a learned metric grows.
        backend: How the iterations run when no autograd graph is recorded (the implicit
            forward, inference). ``"torch"``: log-sum-exp over ``C`` every half-step (forces
            the log domain). ``"kernel"``: the paper's Algorithm 2 on the scalings,
            ``u = a / (K v)``, ``v = b / (K^T u)`` with ``K = exp(-(C - min C)/eps)``, one
            matrix-vector product per half-step and one host synchronisation per
            ``check_every`` iterations; used when ``(max C - min C)/eps`` is at most 30
            (float32) or 80 (float64), otherwise (and after a numerical blow-up, rolled back
            to the last check) ``"absorbed"`` takes over. On the CPU ``"kernel"`` also
            selects the conjugate-gradient implicit backward
            (``sinkhorn_plan_vjp(..., solver="cg")``), which for the m-LTM loss skips the
            dense Schur-complement solve (same gradient to rounding). ``"absorbed"``: the
            log-domain iteration with the scalings absorbed into a stabilised kernel and
            checked every iteration, for any cost range. ``"cuda_graph"``: fused Triton
            kernels replayed from a CUDA graph. ``"auto"`` (default): ``cuda_graph`` on a GPU,
            ``absorbed`` on a CPU with the dense backward (``kernel`` is opt-in: about 2x
            faster forward and a faster backward, not yet the default so the recorded runs
            keep their numbers). All give the log-domain iterates up to rounding
            (same plan, scalings and stopping iteration). Unrolled gradients always use
            ``"torch"``.

    Returns:
        The plan, same shape, dtype and device as ``C``.

    Raises:
        ValueError: for non-finite ``C``, ``eps <= 0``, negative/zero marginals or marginals
            not summing to 1, shape mismatches, or invalid options (the message names the
            fix). Value checks read the inputs back once; they are skipped while a CUDA graph
            is captured or ``torch.compile`` traces.

    Warns:
        ConvergenceWarning: ``tol`` was not reached within ``max_iter`` iterations.

    Example:
        >>> C = torch.rand(4, 5, dtype=torch.float64)
        >>> P = sinkhorn(C, eps=0.1)
        >>> torch.allclose(P.sum(1), torch.full((4,), 0.25, dtype=torch.float64))
        True
    """
    return sinkhorn_log(
        C, eps, a, b, tol=tol, max_iter=max_iter, check_every=check_every, grad=grad,
        cost_normalization=cost_normalization, backend=backend,
    ).plan

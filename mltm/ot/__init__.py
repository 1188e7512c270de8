"""Optimal transport solvers for m-LTM: batched, log-domain, GPU-resident.

- :func:`sinkhorn` / :func:`sinkhorn_log`: entropic OT (paper eq. 3), gradients through the
  plan by implicit differentiation (default) or unrolling.
- :func:`partial_sinkhorn` / :func:`partial_sinkhorn_log`: entropic partial OT (paper
  eq. 13) by Bregman projections with O(n + m) Dykstra state.
- :func:`sinkhorn_plan_vjp`: the implicit backward on its own.
"""

from mltm.ot.implicit import sinkhorn_plan_vjp
from mltm.ot.partial import PartialSinkhornResult, partial_sinkhorn, partial_sinkhorn_log
from mltm.ot.sinkhorn import ConvergenceWarning, SinkhornResult, sinkhorn, sinkhorn_log

__all__ = [
    "sinkhorn",
    "sinkhorn_log",
    "SinkhornResult",
    "partial_sinkhorn",
    "partial_sinkhorn_log",
    "PartialSinkhornResult",
    "sinkhorn_plan_vjp",
    "ConvergenceWarning",
]

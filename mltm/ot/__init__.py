"""Optimal transport solvers for m-LTM: batched, log-domain, GPU-resident.

- :func:`sinkhorn` / :func:`sinkhorn_log`: entropic OT (paper eq. 3), gradients through the
  plan by implicit differentiation (default) or unrolling.
- :func:`partial_sinkhorn` / :func:`partial_sinkhorn_log`: entropic partial OT (paper
  eq. 13) by Bregman projections with O(n + m) Dykstra state.
- :func:`streamed_sinkhorn_potentials`: the same Sinkhorn (paper eq. 3-4) between two sets of
  embeddings with the cost recomputed block by block, O((N + M) d) memory plus one block; it
  returns the dual potentials (for galleries whose N×M cost does not fit in memory).
- :func:`sinkhorn_plan_vjp`: the implicit backward on its own.
"""

from mltm.ot.implicit import sinkhorn_plan_vjp
from mltm.ot.partial import PartialSinkhornResult, partial_sinkhorn, partial_sinkhorn_log
from mltm.ot.sinkhorn import ConvergenceWarning, SinkhornResult, sinkhorn, sinkhorn_log
from mltm.ot.streamed import StreamedSinkhornResult, streamed_sinkhorn_potentials

__all__ = [
    "sinkhorn",
    "sinkhorn_log",
    "SinkhornResult",
    "partial_sinkhorn",
    "partial_sinkhorn_log",
    "PartialSinkhornResult",
    "streamed_sinkhorn_potentials",
    "StreamedSinkhornResult",
    "sinkhorn_plan_vjp",
    "ConvergenceWarning",
]

"""Input checking and normalisation shared by the solvers.

Every public solver funnels its inputs through :func:`prepare_problem`, so the error
messages (which name the problem and the fix) are the same everywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

__all__ = ["Problem", "prepare_problem", "being_traced", "CostNormalization"]

CostNormalization = Literal["none", "max"]

# Marginals are probability vectors; their sum is checked to this relative tolerance
# (float32 sums of 5k entries carry ~1e-6 rounding).
_SUM_RTOL = {torch.float32: 1e-5, torch.float64: 1e-10}


@dataclass
class Problem:
    """A (batched) OT problem in the solvers' canonical form.

    Attributes:
        C: Cost, shape (B, n, m), float32 or float64.
        log_a: Log of the source marginal, shape (B, n).
        log_b: Log of the target marginal, shape (B, m).
        batched: Whether the caller passed a batch (so results keep the leading dim).
        host_checks: Whether values may be read back to the host (not while traced).
    """

    C: torch.Tensor
    log_a: torch.Tensor
    log_b: torch.Tensor
    batched: bool
    host_checks: bool

    def unbatch(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.batched else x.squeeze(0)


def being_traced(t: torch.Tensor) -> bool:
    """Whether torch.compile is tracing or a CUDA graph is being captured on ``t``'s device.

    Reading a tensor back to the host is illegal during capture and breaks the graph of
    torch.compile, so value checks, warnings and the fast iteration paths step aside then.
    """
    return torch.compiler.is_compiling() or (t.is_cuda and torch.cuda.is_current_stream_capturing())


def _all_finite(t: torch.Tensor) -> bool:
    with torch.no_grad():  # isfinite is composite (abs, ==): keep it out of the autograd graph
        # A NaN or inf entry makes the sum NaN or inf, so a finite sum proves every entry
        # finite; it is one fast reduction, where isfinite(t).all() is a slow two-pass
        # composite on the CPU (~0.2 ms at 256 x 256, more than a Sinkhorn solve). A sum that
        # overflowed from finite entries is told apart by the exact test.
        if t.is_floating_point() and bool(torch.isfinite(t.sum())):
            return True
        return bool(torch.isfinite(t).all())


def _fmt_shape(t: torch.Tensor) -> str:
    return str(tuple(t.shape))


def _prepare_marginal(
    x, name: str, size: int, side: str, C: torch.Tensor, check_values: bool, sum_to_one: bool
) -> torch.Tensor:
    B = C.shape[0]
    if x is None:
        return torch.full((B, size), -math.log(size), dtype=C.dtype, device=C.device)
    x = torch.as_tensor(x, dtype=C.dtype, device=C.device)
    if x.ndim == 1:
        if x.shape[0] != size:
            raise ValueError(
                f"{name} has shape {_fmt_shape(x)} but C has {size} {side}; "
                f"{name} must have shape ({size},) or (B, {size})."
            )
        x = x.expand(B, size)
    elif x.ndim == 2:
        if x.shape[1] != size or x.shape[0] not in (1, B):
            raise ValueError(
                f"{name} has shape {_fmt_shape(x)} but C has batch size {B} and {size} {side}; "
                f"{name} must have shape ({size},) or ({B}, {size})."
            )
        x = x.expand(B, size)
    else:
        raise ValueError(
            f"{name} must be a vector of shape ({size},) or a batch of shape (B, {size}); "
            f"got shape {_fmt_shape(x)}."
        )
    if check_values:
        if not _all_finite(x):
            raise ValueError(
                f"{name} contains non-finite values (NaN or inf); pass finite weights."
            )
        if bool((x < 0).any()):
            raise ValueError(
                f"{name} has negative entries (min {x.min().item():.3g}); marginals must be "
                "non-negative weights."
            )
        if bool((x == 0).any()):
            raise ValueError(
                f"{name} has zero entries; the log-domain solvers need strictly positive "
                f"marginals: drop the zero-mass points from C (and from {name}) instead."
            )
        if sum_to_one:
            sums = x.sum(-1)
            if not bool(torch.allclose(sums, torch.ones_like(sums), rtol=0,
                                       atol=_SUM_RTOL[C.dtype])):
                worst = sums[(sums - 1).abs().argmax()].item()
                raise ValueError(
                    f"{name} must sum to 1 (got {worst:.6g}); normalise it with "
                    f"{name} / {name}.sum(-1, keepdim=True)."
                )
    return x.log()


def prepare_problem(
    C: torch.Tensor,
    eps: float,
    a=None,
    b=None,
    *,
    cost_normalization: CostNormalization = "none",
    marginals_sum_to_one: bool = True,
) -> Problem:
    """Check the inputs of a solver and bring them to canonical batched form.

    Raises:
        ValueError: naming the problem and the fix, for a cost that is not a float32/64
            tensor of shape (n, m) or (B, n, m), non-finite costs, ``eps <= 0``, marginals of
            the wrong shape, with negative or zero entries, or (balanced problems) not summing
            to 1, and an unknown ``cost_normalization``.
    """
    if not isinstance(C, torch.Tensor):
        raise ValueError(
            f"C must be a torch.Tensor; got {type(C).__name__}. Use torch.as_tensor(C)."
        )
    if C.ndim not in (2, 3):
        raise ValueError(
            f"C must have shape (n, m) or (B, n, m); got shape {_fmt_shape(C)}."
        )
    if C.dtype not in (torch.float32, torch.float64):
        raise ValueError(
            f"C must be float32 or float64; got {C.dtype}. Convert it with C.float() "
            "(half precision is too coarse for the log-domain iterations)."
        )
    if 0 in C.shape:
        raise ValueError(f"C must be non-empty; got shape {_fmt_shape(C)}.")
    if isinstance(eps, torch.Tensor):
        eps = float(eps)
    if not isinstance(eps, (int, float)) or not eps > 0 or eps != eps or eps == float("inf"):
        raise ValueError(f"eps must be a positive finite number; got {eps!r}. Use e.g. eps=0.05.")
    if cost_normalization not in ("none", "max"):
        raise ValueError(
            f"cost_normalization must be 'none' or 'max'; got {cost_normalization!r}."
        )
    batched = C.ndim == 3
    if not batched:
        C = C.unsqueeze(0)
    check_values = not being_traced(C)
    if check_values and not _all_finite(C):
        raise ValueError(
            "C contains non-finite values (NaN or inf); check the embeddings and the cost "
            "computation that produced it."
        )
    if cost_normalization == "max":
        # The reference implementation divides by the batch maximum (not detached), which makes
        # eps relative to the largest cost; here each problem of a batch uses its own maximum.
        cmax = C.amax(dim=(-2, -1), keepdim=True)
        if check_values and bool((cmax <= 0).any()):
            raise ValueError(
                "cost_normalization='max' needs a positive maximum cost in every problem; "
                "got a problem whose costs are all <= 0."
            )
        C = C / cmax
    _, n, m = C.shape
    log_a = _prepare_marginal(a, "a", n, "rows", C, check_values, marginals_sum_to_one)
    log_b = _prepare_marginal(b, "b", m, "columns", C, check_values, marginals_sum_to_one)
    return Problem(C=C, log_a=log_a, log_b=log_b, batched=batched, host_checks=check_values)

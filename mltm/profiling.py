"""Measure what autograd keeps for the backward pass.

Used by the tests, the benchmark and the book to compare the implicit and unrolled
gradients of the OT solvers without relying on allocator statistics (which the CPU lacks).
"""

from __future__ import annotations

from typing import Callable, TypeVar

import torch

__all__ = ["saved_tensor_bytes"]

T = TypeVar("T")


def saved_tensor_bytes(fn: Callable[[], T]) -> tuple[T, int]:
    """Run ``fn()`` and count the bytes of the tensors autograd saves for its backward.

    Tensors that share a storage are counted once. Only tensors saved by operations recorded
    while ``fn`` runs are counted (leaf inputs that an operation saves are counted too, since
    autograd keeps them alive for the backward).

    Returns:
        ``(fn(), nbytes)``.
    """
    seen: dict[tuple[int, torch.dtype], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen[(storage.data_ptr(), t.dtype)] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values())

"""Pairwise ground costs: cosine, Euclidean and Mahalanobis (paper eq. 1-2, §3.1 and eq. 9).

Every cost is a function ``(x (..., n, d), y (..., m, d)) -> (..., n, m)``, and none of them
builds the (n, m, d) tensor of pairwise differences that the released code materialises
(three b×b×1024 tensors per training step, N×5N×1024 float64 tensors in evaluation). They
are computed through matrix products instead, in O(n·m + (n + m)·d) memory:

* :func:`cosine_distance`: ``1 - cos(x_i, y_j)``, the similarity ``s`` of the contrastive
  objective and of retrieval (eq. 1-2), as a distance;
* :func:`euclidean_distance`: ``‖x_i - y_j‖₂``, the plain L2 ground metric of §3.1;
* :func:`squared_mahalanobis_distance` / :func:`mahalanobis_distance`: the Mahalanobis
  ground metric of eq. 9, ``(x_i - y_j)ᵀ M (x_i - y_j)`` (and its square root) with M a full
  d×d matrix, a diagonal or the identity (:func:`squared_euclidean_distance`), expanded as
  ``xᵀMx + yᵀMy − 2 xᵀMy``.

:class:`mltm.metric.MahalanobisCost` holds the learned M (its parameterisations and the PSD
projection of eq. 11) and delegates the pairwise formula to this module; the losses
(:mod:`mltm.losses`) and the ranking code (:mod:`mltm.retrieval`) take their costs from here.
"""

from __future__ import annotations

import torch

__all__ = [
    "cosine_distance",
    "cosine_distance_normalized",
    "euclidean_distance",
    "squared_euclidean_distance",
    "squared_mahalanobis_distance",
    "mahalanobis_distance",
    "safe_sqrt",
]


def safe_sqrt(x: torch.Tensor, tiny: float | None = None) -> torch.Tensor:
    """``sqrt(max(x, 0))`` whose gradient is 0 (not inf/NaN) where ``x <= tiny``.

    ``torch.where`` alone is not enough: the unselected branch's gradient is multiplied by
    0, and ``0 * inf = NaN``. So the square root is taken of ``max(x, tiny)``, which has a
    finite derivative everywhere, and the result is masked afterwards.
    """
    if tiny is None:
        tiny = torch.finfo(x.dtype).tiny ** 0.5 if x.is_floating_point() else 1e-30
    positive = x > tiny
    return torch.where(positive, x.clamp_min(tiny).sqrt(), torch.zeros_like(x))


def cosine_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``1 - cos(x_i, y_j)``, shape (n, m), in [0, 2]. Zero vectors count as orthogonal.

    ``1 - s(x, y)`` for the cosine similarity ``s`` of the contrastive loss and of
    retrieval (paper eq. 1-2): both sides are normalised, then one matrix product.
    """
    xn = torch.nn.functional.normalize(x, dim=-1)
    yn = torch.nn.functional.normalize(y, dim=-1)
    return 1.0 - xn @ yn.transpose(-2, -1)


def cosine_distance_normalized(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``1 - x yᵀ`` for rows already of unit norm: :func:`cosine_distance` without normalising.

    For costs evaluated block by block (:func:`mltm.retrieval.plan_topk`): the rows are
    normalised once, not once per block. The subtraction is done in place (``addmm`` into
    ones is slower on the CPU: it first copies the ones into the output).
    """
    P = x @ y.transpose(-2, -1)
    return torch.sub(torch.ones((), dtype=P.dtype, device=P.device), P, out=P)


def euclidean_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``‖x_i - y_j‖₂``, shape (..., n, m): the L2 ground metric ``d`` of paper §3.1.

    :func:`torch.cdist`, which never holds the (n, m, d) differences either: beyond 25 rows it
    expands the square as matrix products, below it runs one kernel over the pairs.
    """
    return torch.cdist(x, y)


def squared_mahalanobis_distance(x: torch.Tensor, y: torch.Tensor,
                                 M: torch.Tensor | None = None) -> torch.Tensor:
    """``(x_i - y_j)ᵀ M (x_i - y_j)`` for all pairs, clamped at 0; shape (..., n, m).

    The square of the Mahalanobis ground metric of paper eq. 9, expanded as
    ``xᵀMx + yᵀMy − 2 xᵀMy``: two matrix products, O(n·d² + n·m·d) time and O(n·m + n·d)
    memory, never the (n, m, d) differences. The expansion can come out slightly negative
    through cancellation, so it is clamped at 0.

    Args:
        x: (..., n, d) points.
        y: (..., m, d) points, in the same dtype.
        M: A (d, d) matrix (used as given: symmetric and PSD for a metric), a (d,) vector of
            diagonal weights, or None for the identity (:func:`squared_euclidean_distance`).
    """
    if M is None:
        Mx, My = x, y
    elif M.ndim == 1:
        Mx, My = x * M, y * M
    else:
        Mx, My = x @ M, y @ M
    xx = (Mx * x).sum(-1).unsqueeze(-1)  # (..., n, 1)
    yy = (My * y).sum(-1).unsqueeze(-2)  # (..., 1, m)
    xy = Mx @ y.transpose(-1, -2)  # (..., n, m)
    return (xx + yy - 2.0 * xy).clamp_min(0.0)


def mahalanobis_distance(x: torch.Tensor, y: torch.Tensor,
                         M: torch.Tensor | None = None) -> torch.Tensor:
    """The Mahalanobis ground metric of paper eq. 9, ``sqrt((x_i - y_j)ᵀ M (x_i - y_j))``.

    :func:`squared_mahalanobis_distance` under a square root whose gradient is 0, not NaN,
    where two points coincide (:func:`safe_sqrt`). ``M`` as there.
    """
    return safe_sqrt(squared_mahalanobis_distance(x, y, M))


def squared_euclidean_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``‖x_i - y_j‖₂²`` for all pairs, clamped at 0: the Mahalanobis form with M = I.

    The expanded ``‖x‖² + ‖y‖² − 2 xᵀy`` (the ``euclidean`` kind of
    :class:`mltm.metric.MahalanobisCost`); not bit-equal to ``euclidean_distance(x, y)**2``.
    """
    return squared_mahalanobis_distance(x, y, None)

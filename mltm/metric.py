"""The Mahalanobis ground metric of m-LTM (paper §3.2, eq. 9-11).

.. math::

    c_M(x, y) = \\sqrt{(x - y)^\\top M (x - y)}, \\qquad M \\succeq 0 \\quad (9)

:class:`MahalanobisCost` is the ground cost the m-LTM loss transports under, and the distance
retrieval ranks by. It comes in four parameterisations (``kind``):

* ``"full"``: a full symmetric d×d matrix M, kept positive semi-definite by **projected
  gradient** (eq. 11): after each optimiser step, :meth:`MahalanobisCost.project_` maps M to
  the nearest PSD matrix in Frobenius norm, ``U diag(max(λ, λ_min)) Uᵀ`` from the
  eigendecomposition of the symmetric part. This is the paper's intent. The
  eigendecomposition (~9d³ flops) runs only when needed: a Cholesky factorisation (~d³/3)
  first checks whether M is still feasible, in which case the projection is the identity
  (:func:`project_psd_if_needed`). The paper's own
  formula (and the released code) clamps the *singular* values of an SVD instead, which are
  never negative, so it returns M unchanged: :func:`singular_value_clamp` re-creates it.
* ``"lowrank"``: M = L Lᵀ with L of shape d×r; PSD by construction, no projection needed.
* ``"diagonal"``: M = diag(w), w ≥ 0 after projection. This is what the released code
  effectively learns: its ``einsum("ijk,ikj,kk->ij", ...)`` reads only diag(M)
  (``../shared/notes/reference-code.md`` §2).
* ``"euclidean"``: M = I, no parameters (the plain L2 ground metric of §3.1).

**Cost without a b×b×d tensor.** The released code materialises the pairwise differences
(three b×b×1024 tensors in training and N×5N×1024 float64 tensors in evaluation). Here the
squared distance is expanded, ``xᵀMx + yᵀMy − 2 xᵀMy`` (:mod:`mltm.costs`, which holds the
pairwise formulas; this module holds M), which is two matrix products:
O(b·d² + b²·d) time and O(b² + b·d) memory. The expansion can come out slightly negative
through cancellation; it is clamped at 0, and the square root has a **safe gradient**: 0 where
the distance is 0 (x = y), instead of the infinite derivative of ``sqrt`` at 0 that would turn
the whole gradient into NaN.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from mltm.costs import safe_sqrt, squared_mahalanobis_distance

__all__ = [
    "MahalanobisCost",
    "project_psd",
    "project_psd_if_needed",
    "is_feasible",
    "singular_value_clamp",
    "safe_sqrt",
    "MetricKind",
]

MetricKind = Literal["full", "lowrank", "diagonal", "euclidean"]
MetricInit = Literal["identity", "paper"]

_KINDS = ("full", "lowrank", "diagonal", "euclidean")
_INITS = ("identity", "paper")


def _symmetric_part(A: torch.Tensor) -> torch.Tensor:
    """``(A + Aᵀ)/2``, bit for bit, through a contiguous (tiled) transpose: adding the
    strided view ``A.T`` directly is several times slower for a large d×d matrix."""
    return (A + A.T.contiguous()) * 0.5


def project_psd(M: torch.Tensor, min_eigenvalue: float = 0.0) -> tuple[torch.Tensor, int]:
    """Project a square matrix onto ``{M = Mᵀ, λ_min(M) ≥ min_eigenvalue}``.

    The Frobenius-nearest PSD matrix to A is obtained from the symmetric part
    ``S = (A + Aᵀ)/2 = U diag(λ) Uᵀ`` by clamping the eigenvalues: ``U diag(max(λ, λ_min)) Uᵀ``
    (Higham, 1988). This is the projection the paper's projected gradient step (eq. 11)
    needs.

    Returns:
        The projected matrix (same dtype; the eigendecomposition runs in float64 for
        accuracy when the input is float32) and the number of clamped eigenvalues.
    """
    if M.ndim != 2 or M.shape[0] != M.shape[1]:
        raise ValueError(f"project_psd needs a square matrix, got shape {tuple(M.shape)}")
    work = M.detach().to(torch.float64)
    sym = _symmetric_part(work)
    evals, evecs = torch.linalg.eigh(sym)
    clamped = int((evals < min_eigenvalue).sum())
    evals = evals.clamp_min(min_eigenvalue)
    out = (evecs * evals) @ evecs.T
    out = _symmetric_part(out)  # exact symmetry despite rounding
    return out.to(M.dtype), clamped


def is_feasible(M: torch.Tensor, min_eigenvalue: float = 0.0) -> bool:
    """Whether the symmetric part S of M has ``λ_min(S) > min_eigenvalue``, without eigh.

    One Cholesky factorisation of ``S − min_eigenvalue·I`` (``torch.linalg.cholesky_ex``, in
    float64 like :func:`project_psd`): it succeeds (``info == 0``) exactly when that matrix
    is positive definite, up to the factorisation's backward error of order ``d·u·‖S‖``
    (u = 2⁻⁵³), which is below the rounding of the eigendecomposition itself and far below
    float32 resolution. It costs about d³/3 flops against roughly 9d³ for ``eigh``. A matrix
    on the boundary (``λ_min == min_eigenvalue``: PSD but singular after the shift) usually
    fails the test, so the caller falls back to the eigendecomposition, which is correct.
    """
    if M.ndim != 2 or M.shape[0] != M.shape[1]:
        raise ValueError(f"is_feasible needs a square matrix, got shape {tuple(M.shape)}")
    return _cholesky_succeeds(_symmetric_part(M.detach()), min_eigenvalue)


def _cholesky_succeeds(S: torch.Tensor, min_eigenvalue: float) -> bool:
    shifted = S.to(torch.float64, copy=True)
    if min_eigenvalue:
        shifted.diagonal().sub_(min_eigenvalue)
    _, info = torch.linalg.cholesky_ex(shifted)
    return int(info) == 0


def project_psd_if_needed(M: torch.Tensor, min_eigenvalue: float = 0.0
                          ) -> tuple[torch.Tensor, int, bool]:
    """:func:`project_psd`, skipping the eigendecomposition when M is already feasible.

    The projection of eq. 11 is the identity (up to symmetrisation) on matrices whose
    symmetric part already has ``λ_min ≥ min_eigenvalue``; :func:`is_feasible` certifies
    that with one Cholesky factorisation, so in a training run where M stays inside the PSD
    cone the projected step costs a Cholesky instead of an ``eigh``.

    Returns:
        ``(projected, clamped, computed)``: the projected matrix (``(M + Mᵀ)/2`` when the
        eigendecomposition was skipped), the number of clamped eigenvalues (0 when skipped)
        and whether the eigendecomposition ran.
    """
    if M.ndim != 2 or M.shape[0] != M.shape[1]:
        raise ValueError(f"project_psd needs a square matrix, got shape {tuple(M.shape)}")
    sym = _symmetric_part(M.detach())
    if _cholesky_succeeds(sym, min_eigenvalue):
        return sym, 0, False
    projected, clamped = project_psd(M, min_eigenvalue)
    return projected, clamped, True


def singular_value_clamp(M: torch.Tensor) -> torch.Tensor:
    """The released code's (and the paper's §3.2 formula's) "PSD projection".

    ``U, S, V = SVD(M); M ← U diag(max(0, σ)) Vᵀ``. Singular values are never negative,
    so this reconstructs M unchanged (to rounding) and never makes an indefinite M positive
    semi-definite. Kept only to demonstrate that; use :func:`project_psd`.
    """
    U, S, Vh = torch.linalg.svd(torch.nan_to_num(M.detach()), full_matrices=False)
    return (U * S.clamp_min(0)) @ Vh


class MahalanobisCost(nn.Module):
    """Learnable Mahalanobis ground cost ``c_M(x, y) = sqrt((x-y)ᵀ M (x-y))`` (eq. 9).

    Args:
        dim: Embedding dimension d (1024 in the paper).
        kind: ``"full"`` (d×d PSD M, projected gradient), ``"lowrank"`` (M = L Lᵀ, L d×r),
            ``"diagonal"`` (M = diag(w), w ≥ 0), ``"euclidean"`` (M = I, no parameters).
        rank: r for ``kind="lowrank"``.
        init: ``"identity"`` (M = I: starts as the Euclidean distance) or ``"paper"``
            (App. A.1: M = ½(A + Aᵀ) + I with A ~ U[0, 1)^{d×d}, as the released code draws
            it; this matrix is indefinite, so ``kind="full"`` projects it onto the PSD cone
            at construction; ``kind="diagonal"`` keeps its diagonal, in [1, 2), which is what
            the released code trains; ``kind="lowrank"`` keeps its top-r PSD factor).
        squared: Return squared distances ``(x-y)ᵀM(x-y)`` instead of distances. The paper
            (and the released code) transport under the distance, not its square.
        min_eigenvalue: Eigenvalue floor of the projection (0: PSD; > 0: positive definite,
            as eq. 10 asks).
        generator: Random generator for ``init="paper"`` and the low-rank initialisation.
        dtype: Parameter dtype (default: torch's default dtype).

    Shapes:
        ``forward(x, y)``: x (n, d), y (m, d) → (n, m); or batched (B, n, d), (B, m, d) →
        (B, n, m).
    """

    def __init__(
        self,
        dim: int,
        kind: MetricKind = "full",
        *,
        rank: int | None = None,
        init: MetricInit = "identity",
        squared: bool = False,
        min_eigenvalue: float = 0.0,
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if kind not in _KINDS:
            raise ValueError(f"unknown metric kind {kind!r}; choose one of {_KINDS}")
        if init not in _INITS:
            raise ValueError(f"unknown init {init!r}; choose one of {_INITS}")
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        if kind == "lowrank":
            if rank is None or not 0 < rank <= dim:
                raise ValueError(
                    f"kind='lowrank' needs rank in [1, dim={dim}], got rank={rank}"
                )
        elif rank is not None:
            raise ValueError(f"rank is only used with kind='lowrank' (got kind={kind!r})")
        if min_eigenvalue < 0:
            raise ValueError(f"min_eigenvalue must be >= 0, got {min_eigenvalue}")
        self.dim = int(dim)
        self.kind: MetricKind = kind
        self.rank = rank
        self.init = init
        self.squared = bool(squared)
        self.min_eigenvalue = float(min_eigenvalue)
        dtype = dtype or torch.get_default_dtype()
        self._dtype = dtype

        M0 = self._initial_matrix(init, generator) if kind != "euclidean" else None
        if kind == "full":
            M0, _ = project_psd(M0, self.min_eigenvalue)
            self.M = nn.Parameter(M0.to(dtype))
        elif kind == "diagonal":
            self.weight = nn.Parameter(torch.diagonal(M0).clone().to(dtype))
        elif kind == "lowrank":
            self.L = nn.Parameter(self._lowrank_factor(M0, rank, init, generator).to(dtype))

    # -- initialisation ---------------------------------------------------------------------

    def _initial_matrix(self, init: str, generator: torch.Generator | None) -> torch.Tensor:
        d = self.dim
        eye = torch.eye(d, dtype=torch.float64)
        if init == "identity":
            return eye
        A = torch.rand(d, d, generator=generator, dtype=torch.float64)
        return 0.5 * (A + A.T) + eye

    @staticmethod
    def _lowrank_factor(M0, rank, init, generator) -> torch.Tensor:
        d = M0.shape[0]
        if init == "identity":
            # A random r-dimensional orthonormal frame scaled so E||x L||^2 = ||x||^2 for
            # isotropic x: the distance starts at the scale of the Euclidean one.
            G = torch.randn(d, rank, generator=generator, dtype=torch.float64)
            Q, _ = torch.linalg.qr(G)
            return Q * math.sqrt(d / rank)
        evals, evecs = torch.linalg.eigh(0.5 * (M0 + M0.T))
        top = evals[-rank:].clamp_min(0)
        return evecs[:, -rank:] * top.sqrt()

    # -- the matrix -------------------------------------------------------------------------

    @property
    def matrix(self) -> torch.Tensor:
        """M as a d×d tensor (for inspection; the forward never forms it for low rank)."""
        if self.kind == "full":
            return 0.5 * (self.M + self.M.T)
        if self.kind == "diagonal":
            return torch.diag(self.weight)
        if self.kind == "lowrank":
            return self.L @ self.L.T
        return torch.eye(self.dim, dtype=self._dtype)

    #: Number of times :meth:`project_` ran the full eigendecomposition (``kind="full"``).
    projections_computed: int = 0
    #: Number of times :meth:`project_` found M feasible and skipped it.
    projections_skipped: int = 0

    @torch.no_grad()
    def project_(self, *, force: bool = False) -> int:
        """Projected-gradient step (eq. 11): map the parameters back to the constraint set.

        Call after every ``optimizer.step()``. ``full``: eigenvalue clamp of the symmetric
        part (:func:`project_psd`), computed only when a Cholesky test finds M outside
        ``{λ_min ≥ min_eigenvalue}`` (:func:`project_psd_if_needed`; ``force=True`` always
        runs the eigendecomposition). The result is the same either way; the counters
        :attr:`projections_computed` and :attr:`projections_skipped` say which path ran.
        ``diagonal``: ``w ← max(w, λ_min)``; ``lowrank`` and ``euclidean``: nothing to do.
        Returns the number of clamped eigenvalues (or weights).
        """
        if self.kind == "full":
            if force:
                projected, clamped = project_psd(self.M, self.min_eigenvalue)
                computed = True
            else:
                projected, clamped, computed = project_psd_if_needed(self.M, self.min_eigenvalue)
            if computed:
                self.projections_computed += 1
            else:
                self.projections_skipped += 1
            self.M.copy_(projected)
            return clamped
        if self.kind == "diagonal":
            clamped = int((self.weight < self.min_eigenvalue).sum())
            self.weight.clamp_(min=self.min_eigenvalue)
            return clamped
        return 0

    def min_eigenvalue_of_matrix(self) -> float:
        """Smallest eigenvalue of M (float64), e.g. to check that M stayed PSD."""
        M = self.matrix.detach().to(torch.float64)
        return float(torch.linalg.eigvalsh(0.5 * (M + M.T))[0])

    # -- the cost ---------------------------------------------------------------------------

    def squared_distance(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``(x_i - y_j)ᵀ M (x_i - y_j)`` for all pairs, clamped at 0; shape (..., n, m).

        The square of eq. 9 with this module's M, by
        :func:`mltm.costs.squared_mahalanobis_distance` (no (n, m, d) tensor).
        """
        if x.shape[-1] != self.dim or y.shape[-1] != self.dim:
            raise ValueError(
                f"embeddings have dimension {x.shape[-1]} and {y.shape[-1]}, the metric was "
                f"built for dim={self.dim}"
            )
        if x.ndim != y.ndim or x.ndim not in (2, 3):
            raise ValueError(
                f"x and y must both be (n, d) or both (B, n, d); got shapes "
                f"{tuple(x.shape)} and {tuple(y.shape)}"
            )
        if self.kind == "lowrank":  # M = L Lᵀ: the Euclidean distance between x L and y L
            x, y = x @ self.L.to(x.dtype), y @ self.L.to(y.dtype)
            M = None
        elif self.kind == "full":
            M = self.matrix.to(x.dtype)
        elif self.kind == "diagonal":
            M = self.weight.to(x.dtype)
        else:
            M = None
        return squared_mahalanobis_distance(x, y, M)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The cost matrix: :meth:`squared_distance`, or its square root unless ``squared``."""
        d2 = self.squared_distance(x, y)
        return d2 if self.squared else safe_sqrt(d2)

    def extra_repr(self) -> str:
        """The settings shown by ``repr(module)``: dim, kind, rank, init and squared."""
        r = f", rank={self.rank}" if self.kind == "lowrank" else ""
        return f"dim={self.dim}, kind={self.kind!r}{r}, init={self.init!r}, squared={self.squared}"

"""Hubness-corrected rankings: CSLS, inverted softmax and the plan with reference potentials.

Every function maps an (n, m) cost ``C`` between n clips (rows) and m captions (columns),
smaller = more similar, to an (n, m) score matrix, higher = better, that serves **both**
directions at once: a2t ranks a row (a clip query against the caption gallery), t2a a column
(a caption query against the clip gallery). Each score is the sum of a pair term, a gallery
term per column and a gallery term per row; within a row the row term is a constant, within
a column the column term is, so each direction is ranked by exactly its own rule below. With
``S = -C`` the similarity:

- :func:`csls_scores`, CSLS (Conneau et al. 2018, "Word translation without parallel data",
  §2.3 eq. 6, ``CSLS(x, y) = 2 cos(x, y) - r_T(x) - r_S(y)``):
  ``2 S_ij - r_i - r_j``, with ``r_i`` the mean of row i's k largest similarities (its k
  nearest captions) and ``r_j`` the mean of column j's k largest (its k nearest clips).
- :func:`inverted_softmax_scores`, the inverted softmax (Smith et al. 2017, "Offline
  bilingual word vectors, orthogonal transformations and the inverted softmax", §3): a2t
  ranks by ``log P_ij = beta S_ij - log sum_i' exp(beta S_i'j)``, each gallery caption's
  column of ``exp(beta S)`` normalised over the clips; t2a by the same with each gallery
  clip's row normalised over the captions. With ``beta = 1/eps`` this is the first half-step
  of the plan's Sinkhorn iteration from ``u = 0`` (:mod:`mltm.ot.sinkhorn`).
- :func:`plan_scores`, the log of the entropic plan (paper eq. 3-5):
  ``-C_ij/eps + log u_i + log v_j``. a2t ranks by ``-C_ij/eps + log v_j``, t2a by
  ``-C_ij/eps + log u_i``.

**Transductive or inductive.** The gallery terms (``r_j``, the column normaliser, ``log v_j``
for a2t; their row counterparts for t2a) are computed from a set of *queries*. By default
(``reference_rows=None`` / ``reference_cols=None``) that set is the test queries themselves,
the rows (columns) of ``C``: the rule of the two papers above and the paper's transductive
eq. 5, where one query's ranking depends on every other test query. Given a reference (e.g.
validation clips for a2t, validation captions for t2a) they are computed from it instead, so a
test query's ranking depends only on the gallery and itself:

- ``reference_rows`` (n_ref, m): cost from n_ref reference clips to the m test captions.
  It replaces the test clips in every column term (used by a2t).
- ``reference_cols`` (n, m_ref): cost from the n test clips to m_ref reference captions.
  It replaces the test captions in every row term (used by t2a).

**What the plan with a reference estimates.** :func:`plan_scores` with ``reference_rows``
solves Sinkhorn between the reference clips (uniform marginal ``1/n_ref``) and the test
captions (marginal ``b``, uniform by default): the solution's column scalings ``log v_j``
(``eps log v_j`` is caption j's dual potential, its "price") are estimated from the
reference clips instead of the test clips, i.e. the test queries are assumed to be drawn
from the reference distribution and ``b`` is assumed to be the gallery's true marginal.
A test clip x is then scored by ``-c(x, y_j)/eps + log v_j``, the log of the conditional
plan ``pi(j | x)`` that the entropic solution extends to a new point (the c-transform of the
potentials, up to x's own normaliser); no Sinkhorn is solved with the test queries. With
the test set itself as the reference it is the transductive plan (tested).

**Invariance to per-item cost terms** ``C_ij -> C_ij + alpha_i + beta_j`` (a2t; t2a swaps the
roles): the plan (with or without a reference, when the reference's cost carries the same
``beta_j``) is invariant to both, since the solution absorbs them into its scalings. The
inverted softmax removes the gallery term ``beta_j`` exactly but not ``alpha``: another query's
``alpha_i'`` reweights it in the column's normaliser. CSLS removes only half of ``beta_j`` (the
pair term counts twice, ``r_j`` once) and none of ``alpha``. Distance ranking removes ``alpha_i``
only. All four are checked numerically in ``tests/core/test_rankings.py``.
"""

from __future__ import annotations

import math

import torch

from mltm.ot import sinkhorn_log

__all__ = ["csls_scores", "inverted_softmax_scores", "plan_scores"]

_DEFAULT_SINKHORN = {"tol": 1e-6, "max_iter": 100_000}


def _shape(t) -> str:
    return str(tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__


def _check_cost(C: torch.Tensor) -> None:
    if not isinstance(C, torch.Tensor) or C.ndim != 2:
        raise ValueError(f"C must be a 2-D cost tensor of shape (n, m); got {_shape(C)}.")
    if C.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"C must be float32 or float64; got {C.dtype}. Convert it with C.float().")
    if 0 in C.shape:
        raise ValueError(f"C must be non-empty; got shape {_shape(C)}.")
    if not bool(torch.isfinite(C).all()):
        raise ValueError("C contains non-finite values (NaN or inf); check the embeddings and the "
                         "cost that produced it.")


def _check_references(C: torch.Tensor, reference_rows, reference_cols) -> None:
    n, m = C.shape
    for name, ref, axis, want in (("reference_rows", reference_rows, 1, f"(n_ref, {m})"),
                                  ("reference_cols", reference_cols, 0, f"({n}, m_ref)")):
        if ref is None:
            continue
        if not isinstance(ref, torch.Tensor) or ref.ndim != 2 or ref.shape[axis] != C.shape[axis]:
            raise ValueError(
                f"{name} must be a cost tensor of shape {want} (C is {n} x {m}); got "
                f"{_shape(ref)}."
            )
        if 0 in ref.shape:
            raise ValueError(f"{name} must be non-empty; got shape {_shape(ref)}.")
        if ref.dtype != C.dtype or ref.device != C.device:
            raise ValueError(
                f"{name} must have C's dtype and device ({C.dtype}, {C.device}); got "
                f"({ref.dtype}, {ref.device})."
            )
        if not bool(torch.isfinite(ref).all()):
            raise ValueError(f"{name} contains non-finite values (NaN or inf).")


def _column_source(C, reference_rows):
    """The cost whose rows are the queries of the column (gallery caption) terms."""
    return C if reference_rows is None else reference_rows


def _row_source(C, reference_cols):
    """The cost whose columns are the queries of the row (gallery clip) terms."""
    return C if reference_cols is None else reference_cols


def csls_scores(
    C: torch.Tensor,
    *,
    k: int = 10,
    reference_rows: torch.Tensor | None = None,
    reference_cols: torch.Tensor | None = None,
) -> torch.Tensor:
    """CSLS scores ``2 S_ij - r_i - r_j`` with ``S = -C`` (Conneau et al. 2018, eq. 6).

    ``r_j`` (caption j's hubness, used by a2t) is the mean of the k largest similarities of
    column j over the test clips, or over the reference clips of ``reference_rows``; ``r_i``
    (clip i's, used by t2a) the mean of the k largest of row i over the test captions or the
    reference captions of ``reference_cols``. Conneau et al. take k = 10.

    Args:
        C: (n, m) cost, float32 or float64.
        k: Neighbours in each hubness term, at most the number of items they are taken from.
        reference_rows: Optional (n_ref, m) cost from reference clips to the captions.
        reference_cols: Optional (n, m_ref) cost from the clips to reference captions.

    Returns:
        (n, m) scores in ``C``'s dtype; a2t ranks rows, t2a columns (module docstring).

    Raises:
        ValueError: for a bad ``C`` or reference (shape, dtype, device, non-finite values)
            or a ``k`` that is not an integer in [1, number of neighbours].
    """
    _check_cost(C)
    _check_references(C, reference_rows, reference_cols)
    cols_from, rows_from = _column_source(C, reference_rows), _row_source(C, reference_cols)
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive integer; got {k!r}.")
    for count, what in ((cols_from.shape[0], "clips (rows of C or reference_rows)"),
                        (rows_from.shape[1], "captions (columns of C or reference_cols)")):
        if k > count:
            raise ValueError(
                f"k={k} exceeds the {count} {what} that the hubness terms average over; "
                f"pass k <= {count}."
            )
    # The k nearest = the k smallest costs; r = mean similarity = -mean cost.
    r_col = -torch.topk(cols_from, k, dim=0, largest=False).values.mean(0)  # (m,)
    r_row = -torch.topk(rows_from, k, dim=1, largest=False).values.mean(1)  # (n,)
    return (-2.0 * C) - r_row[:, None] - r_col[None, :]


def _check_positive(value, name: str, example: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
        value > 0 and math.isfinite(value)
    ):
        raise ValueError(f"{name} must be a positive finite number; got {value!r}. Use e.g. "
                         f"{example}.")
    return float(value)


def inverted_softmax_scores(
    C: torch.Tensor,
    beta: float,
    *,
    reference_rows: torch.Tensor | None = None,
    reference_cols: torch.Tensor | None = None,
) -> torch.Tensor:
    """Inverted-softmax scores (Smith et al. 2017, §3), both directions in one matrix.

    ``score_ij = beta S_ij - LSE_i'(beta S_i'j) - LSE_j'(beta S_ij')`` with ``S = -C`` and LSE
    the log-sum-exp: in row i (a2t) it is ``log(exp(beta S_ij) / sum_i' exp(beta S_i'j))``,
    the inverted softmax with each caption's column normalised over the clips, plus a
    constant; in column j (t2a) the same with each clip's row normalised over the captions.
    The column normaliser runs over the clips of ``reference_rows`` when given, the row
    normaliser over the captions of ``reference_cols`` (the set size only adds a constant).

    Args:
        C: (n, m) cost, float32 or float64.
        beta: Inverse temperature (Smith et al. choose it on training pairs); ``1/eps`` makes
            the a2t scores the first Sinkhorn half-step of the plan at ``eps``.
        reference_rows: Optional (n_ref, m) cost from reference clips to the captions.
        reference_cols: Optional (n, m_ref) cost from the clips to reference captions.

    Returns:
        (n, m) scores in ``C``'s dtype.

    Raises:
        ValueError: for a bad ``C`` or reference, or a ``beta`` that is not positive and finite.
    """
    _check_cost(C)
    _check_references(C, reference_rows, reference_cols)
    beta = _check_positive(beta, "beta", "beta=20.0")
    cols_from, rows_from = _column_source(C, reference_rows), _row_source(C, reference_cols)
    col_norm = torch.logsumexp(cols_from * -beta, dim=0)  # (m,)
    row_norm = torch.logsumexp(rows_from * -beta, dim=1)  # (n,)
    return (C * -beta) - col_norm[None, :] - row_norm[:, None]


def plan_scores(
    C: torch.Tensor,
    eps: float,
    *,
    a: torch.Tensor | None = None,
    b: torch.Tensor | None = None,
    reference_rows: torch.Tensor | None = None,
    reference_cols: torch.Tensor | None = None,
    sinkhorn_kwargs: dict | None = None,
) -> torch.Tensor:
    """Log-plan scores ``-C_ij/eps + log u_i + log v_j`` (paper eq. 3-5), optionally inductive.

    Without references this is the transductive plan of :func:`mltm.retrieval.retrieval_metrics`
    (``rank_by="plan"``), here with any marginals: ``(u, v)`` are the Sinkhorn scalings of the
    problem between the clips (marginal ``a``) and the captions (marginal ``b``), both uniform
    by default. With ``reference_rows`` (n_ref, m), ``log v`` comes instead from the problem
    between the reference clips (uniform) and the captions (``b``); with ``reference_cols``
    (n, m_ref), ``log u`` from the problem between the clips (``a``) and the reference
    captions (uniform). See the module docstring for what is estimated.

    Args:
        C: (n, m) cost, float32 or float64, in the units of ``eps``.
        eps: Entropic regularisation ε > 0.
        a: Optional (n,) marginal of the clips (positive, summing to 1); default uniform.
        b: Optional (m,) marginal of the captions; default uniform.
        reference_rows: Optional (n_ref, m) cost from reference clips to the captions.
        reference_cols: Optional (n, m_ref) cost from the clips to reference captions.
        sinkhorn_kwargs: Solver settings of :func:`mltm.ot.sinkhorn_log` (``tol``,
            ``max_iter``, ``check_every``, ``backend``); default ``tol=1e-6,
            max_iter=100000``.

    Returns:
        (n, m) scores in ``C``'s dtype.

    Raises:
        ValueError: for a bad ``C`` or reference, and (from the solver) bad ``eps``,
            marginals or solver settings; for ``sinkhorn_kwargs`` that set the cost, ``eps``,
            the marginals or ``cost_normalization`` (normalise ``C`` yourself: a reference's
            maximum and the test cost's differ).
    """
    _check_cost(C)
    _check_references(C, reference_rows, reference_cols)
    kwargs = dict(_DEFAULT_SINKHORN)
    for key in sinkhorn_kwargs or {}:
        if key in ("C", "eps", "a", "b", "cost_normalization"):
            raise ValueError(
                f"sinkhorn_kwargs must not set {key!r}: pass the cost and eps as arguments, the "
                "marginals as a= and b=, and divide C by its scale yourself."
            )
    kwargs.update(sinkhorn_kwargs or {})
    with torch.no_grad():
        log_u = log_v = None
        if reference_rows is None or reference_cols is None:
            res = sinkhorn_log(C, eps, a, b, **kwargs)
            log_u, log_v = res.log_u, res.log_v
        if reference_rows is not None:
            log_v = sinkhorn_log(reference_rows, eps, None, b, **kwargs).log_v
        if reference_cols is not None:
            log_u = sinkhorn_log(reference_cols, eps, a, None, **kwargs).log_u
        return (C / -float(eps)) + log_u[:, None] + log_v[None, :]

"""Hubness-corrected rankings (mltm.rankings) and their rank_by options in mltm.retrieval.

Closed forms on tiny matrices, the definitions computed independently (numpy, POT), the
invariances to per-item cost terms C_ij + alpha_i + beta_j that theory predicts (and the
ones it does not), the inductive property (a query's ranking does not depend on the other
test queries), and exact error messages.
"""

import math
import re
import warnings

import numpy as np
import ot
import pytest
import torch

from mltm.costs import cosine_distance
from mltm.ot import sinkhorn_log
from mltm.rankings import csls_scores, inverted_softmax_scores, plan_scores
from mltm.retrieval import retrieval_metrics, zero_shot_classification

F64 = torch.float64


def _raises(msg):
    return pytest.raises(ValueError, match=re.escape(msg))


def _cost(n, m, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.rand(n, m, generator=g, dtype=F64)


def _shift(n, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n, generator=g, dtype=F64)


def _row_constant(diff, atol=1e-9):
    """True when every row of ``diff`` is constant: both matrices rank each row (a2t) alike."""
    return bool(torch.allclose(diff, diff[:, :1].expand_as(diff), atol=atol, rtol=0))


def _col_constant(diff, atol=1e-9):
    """Every column constant: both matrices rank each column (t2a) alike."""
    return _row_constant(diff.T, atol)


def _row_orders_differ(a, b):
    return not torch.equal(torch.argsort(a, dim=1), torch.argsort(b, dim=1))


# ---------------------------------------------------------------------------------------------
# CSLS (Conneau et al. 2018, eq. 6)


def test_csls_hand_computed():
    # S = -C = [[0, -1], [-2, -0.5]]; k = 1: r_rows = (0, -0.5), r_cols = (0, -0.5).
    C = torch.tensor([[0.0, 1.0], [2.0, 0.5]], dtype=F64)
    want = torch.tensor([[0.0, -1.5], [-3.5, 0.0]], dtype=F64)
    assert torch.equal(csls_scores(C, k=1), want)


def _csls_loops(C, k, ref_rows=None, ref_cols=None):
    """Eq. 6 with explicit loops over sorted neighbour lists (numpy)."""
    C = C.numpy()
    rows_src = C if ref_cols is None else ref_cols.numpy()
    cols_src = C if ref_rows is None else ref_rows.numpy()
    n, m = C.shape
    out = np.zeros((n, m))
    for i in range(n):
        r_i = np.mean(sorted(-rows_src[i], reverse=True)[:k])
        for j in range(m):
            r_j = np.mean(sorted(-cols_src[:, j], reverse=True)[:k])
            out[i, j] = 2 * (-C[i, j]) - r_i - r_j
    return out


@pytest.mark.parametrize("k", [1, 3, 5])
def test_csls_matches_loops_with_and_without_references(k):
    C = _cost(6, 7, 0)
    ref_rows, ref_cols = _cost(5, 7, 1), _cost(6, 9, 2)
    np.testing.assert_allclose(csls_scores(C, k=k).numpy(), _csls_loops(C, k), atol=1e-12)
    got = csls_scores(C, k=k, reference_rows=ref_rows, reference_cols=ref_cols)
    np.testing.assert_allclose(got.numpy(), _csls_loops(C, k, ref_rows, ref_cols), atol=1e-12)
    # The references matter (the check above is not the transductive one in disguise).
    assert not torch.allclose(got, csls_scores(C, k=k))


def test_csls_removes_half_of_a_per_gallery_shift_and_no_per_query_shift():
    C, beta, alpha = _cost(6, 8, 3), _shift(8, 4), _shift(6, 5)
    base = csls_scores(C, k=3)
    shifted = csls_scores(C + beta[None, :], k=3)
    # a2t: the shifted scores rank each row as csls(C) - beta_j (half of the shift stays) ...
    assert _row_constant(shifted - (base - beta[None, :]))
    # ... so not as csls(C).
    assert not _row_constant(shifted - base, atol=1e-3)
    assert _row_orders_differ(shifted, base)
    # A per-query shift moves every column's hubness r_j unevenly: a2t changes as well.
    assert not _row_constant(csls_scores(C + alpha[:, None], k=3) - base, atol=1e-3)


# ---------------------------------------------------------------------------------------------
# Inverted softmax (Smith et al. 2017)


@pytest.mark.parametrize("beta", [1.0, 20.0])
def test_inverted_softmax_equals_its_definition(beta):
    C = _cost(5, 6, 6)
    S = -C.numpy()
    E = np.exp(beta * S)
    a2t = np.log(E / E.sum(0, keepdims=True))  # each caption's column normalised over clips
    t2a = np.log(E / E.sum(1, keepdims=True))  # each clip's row normalised over captions
    got = inverted_softmax_scores(C, beta)
    assert _row_constant(got - torch.from_numpy(a2t))
    assert _col_constant(got - torch.from_numpy(t2a))
    # With references the normalisers run over the reference queries instead.
    ref_rows, ref_cols = _cost(4, 6, 7), _cost(5, 3, 8)
    Er, Ec = np.exp(-beta * ref_rows.numpy()), np.exp(-beta * ref_cols.numpy())
    got = inverted_softmax_scores(C, beta, reference_rows=ref_rows, reference_cols=ref_cols)
    assert _row_constant(got - torch.from_numpy(np.log(E / Er.sum(0, keepdims=True))))
    assert _col_constant(got - torch.from_numpy(np.log(E / Ec.sum(1, keepdims=True))))
    assert not _row_constant(got - torch.from_numpy(a2t), atol=1e-6)


def test_inverted_softmax_is_the_first_sinkhorn_half_step():
    # From u = 0, Sinkhorn's first update is v = log b - LSE_i(-C_ij/eps): a2t by
    # -C/eps + v ranks like the inverted softmax at beta = 1/eps.
    C, eps = _cost(5, 7, 9), 0.1
    v1 = sinkhorn_log(C, eps, max_iter=1, tol=None, backend="torch").log_v
    assert _row_constant(inverted_softmax_scores(C, 1 / eps) - (-C / eps + v1[None, :]))
    v_conv = sinkhorn_log(C, eps, tol=1e-12, max_iter=10_000).log_v  # not the converged plan
    assert not _row_constant(inverted_softmax_scores(C, 1 / eps) - (-C / eps + v_conv),
                             atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Plan scores (paper eq. 3-5), transductive and with reference potentials


def test_plan_two_by_two_closed_form():
    # Uniform 2x2 marginals: P = [[p, 1/2 - p], [1/2 - p, p]] with
    # p / (1/2 - p) = t = exp(-(C11 + C22 - C12 - C21) / (2 eps)), so p = t / (2 (1 + t)).
    C = torch.tensor([[0.1, 0.7], [0.4, 0.2]], dtype=F64)
    eps = 0.3
    t = math.exp(-(0.1 + 0.2 - 0.7 - 0.4) / (2 * eps))
    p = t / (2 * (1 + t))
    want = torch.tensor([[p, 0.5 - p], [0.5 - p, p]], dtype=F64)
    got = plan_scores(C, eps, sinkhorn_kwargs={"tol": 1e-14})
    torch.testing.assert_close(got.exp(), want, atol=1e-12, rtol=0)


@pytest.mark.parametrize("marginals", ["uniform", "given"])
def test_plan_scores_are_the_log_of_pots_plan(marginals):
    C = _cost(6, 9, 10)
    g = torch.Generator().manual_seed(11)
    a = b = None
    a_np, b_np = np.full(6, 1 / 6), np.full(9, 1 / 9)
    if marginals == "given":
        a, b = torch.rand(6, generator=g, dtype=F64) + 0.2, torch.rand(9, generator=g, dtype=F64)
        a, b = a / a.sum(), (b + 0.2) / (b + 0.2).sum()
        a_np, b_np = a.numpy(), b.numpy()
    P = ot.sinkhorn(a_np, b_np, C.numpy(), 0.05, method="sinkhorn_log", stopThr=1e-14,
                    numItermax=100_000)
    got = plan_scores(C, 0.05, a=a, b=b, sinkhorn_kwargs={"tol": 1e-13})
    np.testing.assert_allclose(got.numpy(), np.log(P), atol=1e-8)


def test_plan_with_the_test_set_as_reference_is_the_transductive_plan():
    C = _cost(7, 10, 12)
    trans = plan_scores(C, 0.05)
    ref = plan_scores(C, 0.05, reference_rows=C, reference_cols=C)
    torch.testing.assert_close(ref, trans, atol=1e-12, rtol=0)
    # Through retrieval_metrics: every metric of both directions is the same.
    g = torch.Generator().manual_seed(13)
    audio = torch.randn(8, 6, generator=g, dtype=F64)
    cc = torch.arange(8).repeat_interleave(3)
    text = audio[cc] + 1.5 * torch.randn(24, 6, generator=g, dtype=F64)
    want = retrieval_metrics(audio, text, cc, rank_by="plan", eps=0.05)
    got = retrieval_metrics(audio, text, cc, rank_by="plan_reference", eps=0.05,
                            ranking_kwargs={"reference_audio": audio, "reference_text": text})
    assert got["a2t"] == want["a2t"] and got["t2a"] == want["t2a"]
    assert got["rank_by"] == "plan_reference" and got["eps"] == 0.05
    # The case is informative: the plan does not rank like the distance here.
    dist = retrieval_metrics(audio, text, cc)
    assert dist["a2t"] != want["a2t"] or dist["t2a"] != want["t2a"]


def test_plan_with_one_reference_clip_has_a_closed_form():
    # One reference clip carries all the mass: P_1j = b_j, so log v_j = C_1j/eps + log b_j
    # + const and test clip i ranks the captions by (C_1j - C_ij) / eps + log b_j.
    C, ref, eps = _cost(4, 6, 14), _cost(1, 6, 15), 0.2
    b = torch.arange(1, 7, dtype=F64)
    b = b / b.sum()
    got = plan_scores(C, eps, b=b, reference_rows=ref)
    assert _row_constant(got - ((ref - C) / eps + b.log()[None, :]))


def test_plan_reference_ranking_ignores_the_other_test_queries():
    C, ref_rows, ref_cols = _cost(8, 10, 16), _cost(6, 10, 17), _cost(8, 5, 18)
    full = plan_scores(C, 0.05, reference_rows=ref_rows, reference_cols=ref_cols)
    keep = torch.tensor([0, 2, 3, 7])
    sub = plan_scores(C[keep], 0.05, reference_rows=ref_rows, reference_cols=ref_cols[keep])
    assert _row_constant(full[keep] - sub)  # a2t of the kept clips: unchanged
    keep_t = torch.tensor([1, 4, 5, 9])
    sub_t = plan_scores(C[:, keep_t], 0.05, reference_rows=ref_rows[:, keep_t],
                        reference_cols=ref_cols)
    assert _col_constant(full[:, keep_t] - sub_t)  # t2a of the kept captions: unchanged
    # The transductive plan does depend on the other queries.
    trans, trans_sub = plan_scores(C, 0.05), plan_scores(C[keep], 0.05)
    assert not _row_constant(trans[keep] - trans_sub, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Invariance to per-item cost terms C_ij + alpha_i + beta_j


def test_invariance_to_per_item_cost_terms():
    n, m, eps = 7, 9, 0.1
    C = _cost(n, m, 19)
    alpha, beta = _shift(n, 20, 0.5), _shift(m, 21, 0.5)
    ref_rows, ref_cols = _cost(5, m, 22), _cost(n, 4, 23)
    alpha_ref, beta_ref = _shift(5, 24, 0.5), _shift(4, 25, 0.5)
    Cs = C + alpha[:, None] + beta[None, :]
    # The reference costs carry the same per-item terms of the items they share with C.
    ref_rows_s = ref_rows + alpha_ref[:, None] + beta[None, :]
    ref_cols_s = ref_cols + alpha[:, None] + beta_ref[None, :]
    kw = {"sinkhorn_kwargs": {"tol": 1e-12}}

    # The plan removes both terms in both directions, transductive or with references.
    base, shifted = plan_scores(C, eps, **kw), plan_scores(Cs, eps, **kw)
    assert _row_constant(shifted - base, 1e-7) and _col_constant(shifted - base, 1e-7)
    base = plan_scores(C, eps, reference_rows=ref_rows, reference_cols=ref_cols, **kw)
    shifted = plan_scores(Cs, eps, reference_rows=ref_rows_s, reference_cols=ref_cols_s, **kw)
    assert _row_constant(shifted - base, 1e-7) and _col_constant(shifted - base, 1e-7)

    # Distance: a2t removes the per-query alpha only; t2a the per-query beta only.
    assert _row_constant(-(C + alpha[:, None]) + C)
    assert not _row_constant(-(C + beta[None, :]) + C, atol=1e-3)
    assert not _col_constant(-(C + alpha[:, None]) + C, atol=1e-3)

    # Inverted softmax: the gallery term goes (column normaliser), the query term does not
    # (another query's alpha_i' reweights the normaliser).
    isf = inverted_softmax_scores(C, 1 / eps)
    assert _row_constant(inverted_softmax_scores(C + beta[None, :], 1 / eps) - isf)
    assert _col_constant(inverted_softmax_scores(C + alpha[:, None], 1 / eps) - isf)
    assert not _row_constant(inverted_softmax_scores(C + alpha[:, None], 1 / eps) - isf, 1e-3)
    # With references the test queries' alpha leaves the normaliser: a2t is invariant to it,
    # but not to the reference queries' own terms.
    isf = inverted_softmax_scores(C, 1 / eps, reference_rows=ref_rows)
    assert _row_constant(
        inverted_softmax_scores(C + alpha[:, None], 1 / eps, reference_rows=ref_rows) - isf)
    assert not _row_constant(inverted_softmax_scores(
        C, 1 / eps, reference_rows=ref_rows + alpha_ref[:, None]) - isf, 1e-3)


# ---------------------------------------------------------------------------------------------
# retrieval_metrics and zero-shot options


def _ranks_of(scores, relevant):
    """0-based best rank per query by a full sort (scores tie-free here)."""
    out = []
    for q in range(scores.shape[0]):
        order = torch.argsort(scores[q], descending=True)
        out.append(int(relevant[q, order].nonzero()[0, 0]))
    return torch.tensor(out)


@pytest.mark.parametrize("rank_by", ["csls", "inverted_softmax", "plan_reference"])
def test_retrieval_metrics_rank_by_the_new_scores(rank_by):
    g = torch.Generator().manual_seed(26)
    N, d = 10, 6
    audio = torch.randn(N, d, generator=g, dtype=F64)
    cc = torch.arange(N).repeat_interleave(3)
    text = audio[cc] + 1.5 * torch.randn(3 * N, d, generator=g, dtype=F64)
    ref_audio = torch.randn(7, d, generator=g, dtype=F64)
    ref_text = ref_audio.repeat_interleave(2, 0) + torch.randn(14, d, generator=g, dtype=F64)
    refs = {"reference_audio": ref_audio, "reference_text": ref_text}
    got = retrieval_metrics(audio, text, cc, rank_by=rank_by, eps=0.1,
                            ranking_kwargs={**refs, **({"k": 4} if rank_by == "csls" else {})})
    C = cosine_distance(audio, text)
    rows, cols = cosine_distance(ref_audio, text), cosine_distance(audio, ref_text)
    S = {"csls": lambda: csls_scores(C, k=4, reference_rows=rows, reference_cols=cols),
         "inverted_softmax": lambda: inverted_softmax_scores(C, 10.0, reference_rows=rows,
                                                             reference_cols=cols),
         "plan_reference": lambda: plan_scores(C, 0.1, reference_rows=rows,
                                               reference_cols=cols)}[rank_by]()
    rel = torch.arange(N)[:, None] == cc[None, :]
    a2t, t2a = _ranks_of(S, rel), _ranks_of(S.T, rel.T)
    for direction, ranks in (("a2t", a2t), ("t2a", t2a)):
        for k in (1, 5, 10):
            assert got[direction][f"R@{k}"] == pytest.approx(100 * float((ranks < k).double()
                                                                         .mean()))
        assert got[direction]["meanR"] == pytest.approx(float(ranks.double().mean()) + 1)
    assert got["rank_by"] == rank_by
    assert got["eps"] == (None if rank_by == "csls" else 0.1)
    # The option re-ranks: not the distance ranking in disguise.
    assert retrieval_metrics(audio, text, cc)["a2t"] != got["a2t"]


def test_zero_shot_with_reference_clips():
    g = torch.Generator().manual_seed(27)
    classes = torch.randn(4, 5, generator=g, dtype=F64)
    labels = torch.arange(4).repeat(3)
    audio = classes[labels] + 1.2 * torch.randn(12, 5, generator=g, dtype=F64)
    ref = classes[torch.arange(4).repeat(2)] + torch.randn(8, 5, generator=g, dtype=F64)
    got = zero_shot_classification(audio, classes, labels, rank_by="plan_reference",
                                   ranking_kwargs={"reference_audio": ref})
    S = plan_scores(cosine_distance(audio, classes), 0.05,
                    reference_rows=cosine_distance(ref, classes))
    assert got["accuracy"] == pytest.approx(100 * float((S.argmax(1) == labels).double().mean()))
    assert got["rank_by"] == "plan_reference" and got["eps"] == 0.05


# ---------------------------------------------------------------------------------------------
# Bad input


def test_bad_scores_inputs():
    C = _cost(3, 4, 28)
    with _raises("C must be a 2-D cost tensor of shape (n, m); got (4,)."):
        csls_scores(C[0])
    with _raises("C must be float32 or float64; got torch.int64. Convert it with C.float()."):
        inverted_softmax_scores(C.long(), 1.0)
    bad = C.clone()
    bad[1, 2] = math.nan
    with _raises("C contains non-finite values (NaN or inf); check the embeddings and the cost "
                 "that produced it."):
        plan_scores(bad, 0.1)
    with _raises("k must be a positive integer; got 0."):
        csls_scores(C, k=0)
    with _raises("k=10 exceeds the 3 clips (rows of C or reference_rows) that the hubness terms "
                 "average over; pass k <= 3."):
        csls_scores(C)
    with _raises("k=4 exceeds the 2 captions (columns of C or reference_cols) that the hubness "
                 "terms average over; pass k <= 2."):
        csls_scores(_cost(5, 4, 29), k=4, reference_cols=_cost(5, 2, 30))
    with _raises("reference_rows must be a cost tensor of shape (n_ref, 4) (C is 3 x 4); got "
                 "(2, 5)."):
        csls_scores(C, k=1, reference_rows=_cost(2, 5, 31))
    with _raises("reference_cols must be a cost tensor of shape (3, m_ref) (C is 3 x 4); got "
                 "(4, 3)."):
        plan_scores(C, 0.1, reference_cols=_cost(4, 3, 32))
    with _raises("reference_rows must have C's dtype and device (torch.float64, cpu); got "
                 "(torch.float32, cpu)."):
        inverted_softmax_scores(C, 1.0, reference_rows=_cost(2, 4, 33).float())
    with _raises("beta must be a positive finite number; got 0. Use e.g. beta=20.0."):
        inverted_softmax_scores(C, 0)
    with _raises("sinkhorn_kwargs must not set 'cost_normalization': pass the cost and eps as "
                 "arguments, the marginals as a= and b=, and divide C by its scale yourself."):
        plan_scores(C, 0.1, sinkhorn_kwargs={"cost_normalization": "max"})
    with _raises("eps must be a positive finite number; got -1.0. Use e.g. eps=0.05."):
        plan_scores(C, -1.0)


def test_bad_ranking_kwargs():
    g = torch.Generator().manual_seed(34)
    audio = torch.randn(4, 3, generator=g, dtype=F64)
    cc = torch.tensor([0, 1, 2, 3, 0, 1])
    text = torch.randn(6, 3, generator=g, dtype=F64)
    with _raises("ranking_kwargs is used only by rank_by 'csls', 'inverted_softmax' and "
                 "'plan_reference'; got ['k'] with rank_by='plan'."):
        retrieval_metrics(audio, text, cc, rank_by="plan", ranking_kwargs={"k": 3})
    with _raises("ranking_kwargs for rank_by='inverted_softmax' accepts 'reference_audio', "
                 "'reference_text'; got unknown key 'beta'."):
        retrieval_metrics(audio, text, cc, rank_by="inverted_softmax",
                          ranking_kwargs={"beta": 3.0})
    with _raises("rank_by='plan_reference' needs ranking_kwargs ['reference_audio', "
                 "'reference_text'] (reference embeddings, e.g. the validation split's); missing "
                 "'reference_text'. Without references use rank_by='plan'."):
        retrieval_metrics(audio, text, cc, rank_by="plan_reference",
                          ranking_kwargs={"reference_audio": audio})
    with _raises("ranking_kwargs['reference_audio'] and text_emb must have the same embedding "
                 "size; got d=2 and d=3. Project both modalities into the shared space first."):
        retrieval_metrics(audio, text, cc, rank_by="csls",
                          ranking_kwargs={"k": 2, "reference_audio": audio[:, :2]})
    with _raises("ranking_kwargs must be a dict or None; got list."):
        retrieval_metrics(audio, text, cc, rank_by="csls", ranking_kwargs=[("k", 2)])
    with _raises("eps must be a positive finite number; got 0.0. Use e.g. eps=0.05."):
        retrieval_metrics(audio, text, cc, rank_by="inverted_softmax", eps=0.0)
    with _raises("ranking_kwargs for rank_by='csls' accepts 'k', 'reference_audio'; got unknown "
                 "key 'reference_text'."):
        zero_shot_classification(audio, text[:3], torch.tensor([0, 1, 2, 0]), rank_by="csls",
                                 ranking_kwargs={"k": 2, "reference_text": text})
    with _raises("rank_by='plan_reference' needs ranking_kwargs ['reference_audio'] (reference "
                 "embeddings, e.g. the validation split's); missing 'reference_audio'."):
        zero_shot_classification(audio, text[:3], torch.tensor([0, 1, 2, 0]),
                                 rank_by="plan_reference")


def test_float32_costs_score_in_float32():
    C = _cost(5, 6, 35).float()
    for scores in (csls_scores(C, k=2), inverted_softmax_scores(C, 5.0),
                   plan_scores(C, 0.1, sinkhorn_kwargs={"tol": 1e-5})):
        assert scores.dtype == torch.float32 and bool(torch.isfinite(scores).all())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ConvergenceWarning at the default tolerance
        plan_scores(C.double(), 0.1)

"""Tie-aware retrieval metrics: the expected rule against brute force over every tie-breaking
order, the optimistic/pessimistic bracket, tie-free invariance, per-query outcomes, distinct
captions, and bad ``ties`` values."""

import itertools
import json
import math
import re
from fractions import Fraction

import numpy as np
import pytest
import torch

import mltm.retrieval as retrieval
from mltm.retrieval import (
    average_precision_at_k,
    ranks_from_scores,
    retrieval_metrics,
    zero_shot_classification,
)

F64 = torch.float64
KS = (1, 2, 3, 5)
MAP_K = 4


def _raises(msg):
    return pytest.raises(ValueError, match=re.escape(msg))


# ---------------------------------------------------------------------------------------------
# Brute force: every order of the gallery that sorts the scores descending, in exact fractions.


def _orders(row):
    """Every permutation of range(G) that lists ``row`` by descending score (all tie-breaks)."""
    return [p for p in itertools.permutations(range(len(row)))
            if all(row[p[i]] >= row[p[i + 1]] for i in range(len(p) - 1))]


def _outcome(order, rel, ks, k_ap):
    """(0-based best rank, {k: hit}, AP@k_ap with Mei's normalisation) of one order."""
    hits = [r for r, g in enumerate(order, start=1) if rel[g]]
    ap = sum(Fraction(j, r) for j, r in enumerate(hits, start=1) if r <= k_ap) / len(hits)
    return hits[0] - 1, {k: int(hits[0] <= k) for k in ks}, ap


def _brute(scores, rel, ks=KS, k_ap=MAP_K):
    """Per-query exact (expected, optimistic, pessimistic) outcomes by enumeration."""
    out = {"expected": [], "optimistic": [], "pessimistic": []}
    for row, r in zip(scores.tolist(), rel.tolist()):
        runs = [_outcome(o, r, ks, k_ap) for o in _orders(row)]
        n = len(runs)
        out["expected"].append((sum(Fraction(x[0]) for x in runs) / n,
                                {k: Fraction(sum(x[1][k] for x in runs), n) for k in ks},
                                sum(x[2] for x in runs) / n))
        G = len(row)
        # Optimistic: relevant first among equal scores; pessimistic: relevant last.
        opt = sorted(range(G), key=lambda g: (-row[g], not r[g], g))
        pes = sorted(range(G), key=lambda g: (-row[g], r[g], g))
        out["optimistic"].append(_outcome(opt, r, ks, k_ap))
        out["pessimistic"].append(_outcome(pes, r, ks, k_ap))
    return out


def _integer_case(seed, N=4, per_clip=(1, 3), levels=3):
    """Integer scores (many ties) for N clips with 1-3 captions each; t2a galleries are N
    clips, a2t galleries the M captions (several relevant)."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(per_clip[0], per_clip[1] + 1, (N,), generator=g)
    cc = torch.arange(N).repeat_interleave(counts)
    cc = cc[torch.randperm(len(cc), generator=g)]
    S = torch.randint(0, levels, (N, len(cc)), generator=g).to(F64)
    return S, cc


def _lookup(S):
    """A cost whose 1-d "embeddings" index the rows/columns of -S (so scores = S)."""
    return lambda x, y: -S[x[:, 0].long()][:, y[:, 0].long()]


def _metrics(S, cc, **kw):
    N, M = S.shape
    return retrieval_metrics(torch.arange(N, dtype=F64)[:, None],
                             torch.arange(M, dtype=F64)[:, None], cc, cost=_lookup(S),
                             ks=KS, map_k=MAP_K, **kw)


def _assert_per_query(got, want):
    """per_query lists of one direction against brute-force (rank0, hits, ap) tuples."""
    for q, (rank0, hits, ap) in enumerate(want):
        assert got["rank"][q] == pytest.approx(float(rank0 + 1), rel=1e-14, abs=1e-14), q
        for k in KS:
            assert got[f"R@{k}"][q] == pytest.approx(float(hits[k]), rel=1e-14, abs=1e-14), (q, k)
        assert got[f"AP@{MAP_K}"][q] == pytest.approx(float(ap), rel=1e-14, abs=1e-14), q


# ---------------------------------------------------------------------------------------------
# The three rules against brute force


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ties", ["expected", "optimistic", "pessimistic"])
def test_retrieval_metrics_match_every_tie_breaking_order(seed, ties):
    S, cc = _integer_case(seed)
    N, M = S.shape
    rel = (torch.arange(N)[:, None] == cc[None, :])
    got = _metrics(S, cc, ties=ties, per_query=True)
    assert got["ties"] == ties
    a2t_want = _brute(S, rel)[ties]  # several relevant captions per clip
    t2a_want = _brute(S.T, rel.T)[ties]  # one relevant clip per caption
    _assert_per_query(got["a2t"]["per_query"], a2t_want)
    _assert_per_query(got["t2a"]["per_query"], t2a_want)
    # The summary is the mean of the brute-force outcomes.
    for d, want in (("a2t", a2t_want), ("t2a", t2a_want)):
        ranks1 = [float(w[0] + 1) for w in want]
        assert got[d]["meanR"] == pytest.approx(float(np.mean(ranks1)), rel=1e-14)
        assert got[d]["medR"] == math.floor(np.median(ranks1))
        for k in KS:
            assert got[d][f"R@{k}"] == pytest.approx(
                100 * float(sum(w[1][k] for w in want) / len(want)), rel=1e-14, abs=1e-12)
        assert got[d][f"mAP@{MAP_K}"] == pytest.approx(
            100 * float(sum(w[2] for w in want) / len(want)), rel=1e-14, abs=1e-12)


def test_the_integer_cases_have_ties_that_matter():
    # Guards the test above against vacuity: the rules disagree on these cases.
    strict = {}
    for seed in range(6):
        S, cc = _integer_case(seed)
        exp, opt = _metrics(S, cc), _metrics(S, cc, ties="optimistic")
        pes = _metrics(S, cc, ties="pessimistic")
        for d in ("a2t", "t2a"):
            for key, sign in (("R@1", 1), ("R@3", 1), ("meanR", -1), (f"mAP@{MAP_K}", 1)):
                o, e, p = (sign * m[d][key] for m in (opt, exp, pes))
                assert o >= e >= p
                strict[d, key] = strict.get((d, key), False) or o > e > p
    assert all(strict.values())


@pytest.mark.parametrize("seed", range(4))
def test_rank_and_ap_functions_match_brute_force(seed):
    # Arbitrary relevance (1 to 4 relevant items per row), 6 gallery items, scores in 0..2.
    g = torch.Generator().manual_seed(100 + seed)
    S = torch.randint(0, 3, (8, 6), generator=g).to(F64)
    rel = torch.rand(8, 6, generator=g) < 0.4
    rel[torch.arange(8), torch.randint(0, 6, (8,), generator=g)] = True
    want = _brute(S, rel, ks=(1,), k_ap=3)
    for ties in ("expected", "optimistic", "pessimistic"):
        ranks = ranks_from_scores(S, rel, ties=ties)
        assert ranks.dtype == (F64 if ties == "expected" else torch.long)
        ap = average_precision_at_k(S, rel, 3, ties=ties)
        for q, (rank0, _, ap_q) in enumerate(want[ties]):
            assert float(ranks[q]) == pytest.approx(float(rank0), rel=1e-14, abs=1e-14)
            assert float(ap[q]) == pytest.approx(float(ap_q), rel=1e-14, abs=1e-14)


def test_optimistic_and_pessimistic_bracket_expected():
    g = torch.Generator().manual_seed(7)
    S = torch.randint(0, 4, (300, 40), generator=g).to(F64)  # large tie groups
    rel = torch.rand(300, 40, generator=g) < 0.1
    rel[:, 0] = True
    r = {t: ranks_from_scores(S, rel, ties=t).double() for t in retrieval._TIES}
    ap = {t: average_precision_at_k(S, rel, 10, ties=t) for t in retrieval._TIES}
    assert bool((r["optimistic"] <= r["expected"]).all())
    assert bool((r["expected"] <= r["pessimistic"]).all())
    assert bool((ap["optimistic"] >= ap["expected"]).all())
    assert bool((ap["expected"] >= ap["pessimistic"]).all())
    assert bool((r["optimistic"] < r["expected"]).any())
    assert bool((ap["optimistic"] > ap["expected"]).any())


def test_large_tie_group_against_closed_forms():
    # One query: 2 items above, then a tie group of t = 12 items with m = 3 relevant, then one
    # relevant item below. Too many orders to enumerate (12!); the positions of the relevant
    # items in the group are a uniform 3-subset of 1..12 (220 of them), enumerated here.
    a, t, m, k = 2, 12, 3, 9
    row = [5.0] * a + [3.0] * t + [1.0]
    rel = [False] * a + [True] * m + [False] * (t - m) + [True]
    S, R = torch.tensor([row], dtype=F64), torch.tensor([rel])
    n_rel = m + 1
    subsets = list(itertools.combinations(range(1, t + 1), m))
    e_rank, e_hit, e_ap = Fraction(0), {kk: Fraction(0) for kk in KS + (k,)}, Fraction(0)
    for pos in subsets:
        ranks = [a + p for p in pos] + [a + t + 1]
        e_rank += Fraction(ranks[0] - 1, len(subsets))
        for kk in e_hit:
            e_hit[kk] += Fraction(int(ranks[0] <= kk), len(subsets))
        e_ap += sum(Fraction(j, r) for j, r in enumerate(ranks, 1) if r <= k) / n_rel / len(subsets)
    assert e_rank == a + Fraction(t - m, m + 1)  # the closed forms of the module docstring
    for kk in e_hit:
        j = min(max(kk - a, 0), t)
        assert e_hit[kk] == 1 - Fraction(math.comb(t - m, j), math.comb(t, j))
    assert float(ranks_from_scores(S, R)[0]) == pytest.approx(float(e_rank), rel=1e-15)
    assert float(average_precision_at_k(S, R, k)[0]) == pytest.approx(float(e_ap), rel=1e-14)
    o = retrieval._rank_core(S, lambda s, e: R, None)
    for kk in e_hit:
        assert float(retrieval._hit_probability(o, kk, "expected")[0]) == pytest.approx(
            float(e_hit[kk]), rel=1e-15, abs=1e-15)
    assert 0 < e_hit[3] < e_hit[5] < 1  # cut-offs inside the tie group


# ---------------------------------------------------------------------------------------------
# Tie-free scores: the three rules agree, bit for bit, and equal the former (optimistic) code


def _former_rank_core(scores, rel, k):
    """The ranking code before the tie rules (argsort, relevant first among ties)."""
    best = scores.masked_fill(~rel, -math.inf).amax(1)
    ranks = (scores > best[:, None]).sum(1)
    kk = min(k, scores.shape[1])
    o1 = torch.argsort(rel.to(torch.uint8), dim=1, descending=True, stable=True)
    o2 = torch.argsort(scores.gather(1, o1), dim=1, descending=True, stable=True)[:, :kk]
    top = rel.gather(1, o1.gather(1, o2))
    hits = top.cumsum(1).to(F64)
    pos = torch.arange(1, kk + 1, dtype=F64)
    return ranks, ((hits / pos) * top).sum(1) / rel.sum(1).to(F64)


@pytest.mark.parametrize("seed", range(3))
def test_tie_free_scores_give_the_same_numbers_under_every_rule(seed):
    g = torch.Generator().manual_seed(200 + seed)
    N = 20
    cc = torch.arange(N).repeat_interleave(torch.randint(1, 6, (N,), generator=g))
    audio = torch.randn(N, 6, generator=g, dtype=F64)
    text = audio[cc] + 2.0 * torch.randn(len(cc), 6, generator=g, dtype=F64)
    res = {t: retrieval_metrics(audio, text, cc, per_query=True, ties=t) for t in retrieval._TIES}
    for t in retrieval._TIES:
        assert res[t].pop("ties") == t
    assert res["expected"] == res["optimistic"] == res["pessimistic"]
    # ... and the former code's numbers: ranks and AP bit for bit.
    scores = retrieval._scores_from_cost(retrieval.pairwise_cost(retrieval.cosine_distance,
                                                                 audio, text), "distance", 0.0,
                                         None)
    rel = torch.arange(N)[:, None] == cc[None, :]
    for d, S, R in (("a2t", scores, rel), ("t2a", scores.T, rel.T)):
        ranks, ap = _former_rank_core(S, R, 10)
        pq = res["expected"][d]["per_query"]
        assert pq["rank"] == (ranks + 1).double().tolist()
        assert pq["AP@10"] == ap.tolist()
        r = ranks.numpy()
        summary = res["expected"][d]
        for k in (1, 5, 10):
            assert summary[f"R@{k}"] == 100.0 * float(np.mean(r < k))
        assert summary["medR"] == float(np.floor(np.median(r)) + 1)
        # The former code took torch's mean and mean(rank0) + 1: equal up to rounding.
        assert summary["mAP@10"] == pytest.approx(100.0 * float(ap.mean()), rel=1e-15)
        assert summary["meanR"] == pytest.approx(float(r.mean() + 1), rel=1e-15)
        assert 0 < summary["R@1"] < 100


def test_optimistic_rule_is_the_former_code_on_tied_scores():
    S, cc = _integer_case(3, N=6)
    rel = torch.arange(6)[:, None] == cc[None, :]
    for scores, R in ((S, rel), (S.T.contiguous(), rel.T.contiguous())):
        ranks, ap = _former_rank_core(scores, R, 4)
        assert ranks_from_scores(scores, R, ties="optimistic").tolist() == ranks.tolist()
        assert average_precision_at_k(scores, R, 4, ties="optimistic").tolist() == ap.tolist()


# ---------------------------------------------------------------------------------------------
# Per-query outcomes and distinct captions


def test_per_query_means_reproduce_the_summary_exactly():
    S, cc = _integer_case(11, N=7)
    got = _metrics(S, cc, per_query=True)
    assert json.loads(json.dumps(got)) == got  # JSON-serialisable, and round-trips
    N, M = S.shape
    for d, n in (("a2t", N), ("t2a", M)):
        lists = got[d]["per_query"]
        assert sorted(lists) == sorted(["rank", f"AP@{MAP_K}"] + [f"R@{k}" for k in KS])
        assert all(len(v) == n for v in lists.values())
        assert all(len(v) == n for v in got["queries"][d].values())
        for k in KS:
            assert got[d][f"R@{k}"] == 100.0 * float(np.mean(lists[f"R@{k}"]))
            assert all(0.0 <= h <= 1.0 for h in lists[f"R@{k}"])
        assert got[d][f"mAP@{MAP_K}"] == 100.0 * float(np.mean(lists[f"AP@{MAP_K}"]))
        assert got[d]["meanR"] == float(np.mean(lists["rank"]))
        assert got[d]["medR"] == float(np.floor(np.median(lists["rank"])))
    assert got["queries"]["a2t"] == {"clip": list(range(N))}
    assert got["queries"]["t2a"]["clip"] == cc.tolist()
    plain = _metrics(S, cc)
    assert "queries" not in plain and "per_query" not in plain["a2t"]
    assert plain["a2t"] == {key: v for key, v in got["a2t"].items() if key != "per_query"}


def test_chunked_tie_aware_ranking_equals_one_chunk(monkeypatch):
    S, cc = _integer_case(12, N=9)
    whole = _metrics(S, cc, per_query=True)
    monkeypatch.setattr(retrieval, "_RANK_CHUNK_ELEMENTS", 7)  # one query row per chunk
    assert _metrics(S, cc, per_query=True) == whole


def test_distinct_captions_by_text_and_by_embedding():
    g = torch.Generator().manual_seed(5)
    audio = torch.randn(3, 4, generator=g, dtype=F64)
    base = torch.randn(3, 4, generator=g, dtype=F64)
    text = base[[0, 1, 0, 2, 1, 0]]  # 3 distinct rows among 6 captions
    cc = torch.tensor([0, 0, 1, 1, 2, 2])
    by_emb = retrieval_metrics(audio, text, cc, per_query=True)
    assert by_emb["num_distinct_captions"] == 3 and by_emb["distinct_captions_by"] == "embedding"
    assert by_emb["queries"]["t2a"]["caption_group"] == [0, 1, 0, 2, 1, 0]
    texts = ["a dog", "rain", "a dog", "wind", "rain", "a cat"]  # 4 strings
    by_text = retrieval_metrics(audio, text, cc, caption_texts=texts, per_query=True)
    assert by_text["num_distinct_captions"] == 4 and by_text["distinct_captions_by"] == "text"
    assert by_text["queries"]["t2a"]["caption_group"] == [0, 1, 0, 2, 1, 3]
    # Rows that differ in the last bit are different embeddings.
    text2 = text.clone()
    text2[2, 0] = torch.nextafter(text2[2, 0], torch.tensor(math.inf, dtype=F64))
    assert retrieval_metrics(audio, text2, cc)["num_distinct_captions"] == 4


def test_a_duplicated_caption_is_no_free_hit():
    # Clip i's caption is e_i; clip 1 has a second caption identical to clip 0's. Clip 0 then
    # sees its own caption tied with clip 1's copy: a hit optimistically, half a hit expected.
    audio = torch.eye(3, dtype=F64)
    text = audio[[0, 1, 2, 0]]
    cc = torch.tensor([0, 1, 2, 1])
    got = {t: retrieval_metrics(audio, text, cc, ties=t) for t in retrieval._TIES}
    assert got["optimistic"]["a2t"]["R@1"] == 100.0
    assert got["expected"]["a2t"]["R@1"] == pytest.approx(100 * 2.5 / 3, rel=1e-15)
    assert got["pessimistic"]["a2t"]["R@1"] == pytest.approx(100 * 2 / 3, rel=1e-15)
    # t2a has no tie (the copy's clip 1 is plainly second): 3 of 4 under every rule.
    assert {got[t]["t2a"]["R@1"] for t in got} == {75.0}
    assert got["expected"]["num_distinct_captions"] == 3


# ---------------------------------------------------------------------------------------------
# Zero-shot and bad values


def test_zero_shot_with_tied_prompts():
    # Classes 0 and 1 have the same prompt embedding: a clip of class 0 next to that prompt
    # is right with probability 1/2 (expected), always (optimistic), never (pessimistic).
    prompts = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=F64)
    audio = torch.tensor([[1.0, 0.1], [0.1, 1.0]], dtype=F64)
    labels = torch.tensor([0, 2])
    acc = {t: zero_shot_classification(audio, prompts, labels, ties=t, per_query=True)
           for t in retrieval._TIES}
    assert [acc[t]["accuracy"] for t in ("optimistic", "expected", "pessimistic")] == [
        100.0, 75.0, 50.0]
    assert acc["expected"]["per_query"]["R@1"] == [0.5, 1.0]
    assert acc["expected"]["per_query"]["rank"] == [1.5, 1.0]
    assert acc["expected"]["queries"] == {"label": [0, 2]}
    assert acc["expected"]["MRR@10"] == 100 * (0.75 + 1) / 2
    assert acc["expected"]["ties"] == "expected"


def test_bad_ties_value():
    msg = ("ties must be 'expected', 'optimistic' or 'pessimistic'; got 'random'. 'expected' "
           "averages over random tie-breaking (the default).")
    audio, text, cc = torch.randn(3, 4), torch.randn(5, 4), torch.tensor([0, 0, 1, 2, 2])
    with _raises(msg):
        retrieval_metrics(audio, text, cc, ties="random")
    with _raises(msg):
        zero_shot_classification(audio, text, torch.tensor([0, 1, 2]), ties="random")
    rel = torch.ones(2, 3, dtype=torch.bool)
    with _raises(msg):
        ranks_from_scores(torch.rand(2, 3), rel, ties="random")
    with _raises(msg):
        average_precision_at_k(torch.rand(2, 3), rel, ties="random")
    with _raises("ties must be 'expected', 'optimistic' or 'pessimistic'; got None."):
        retrieval_metrics(audio, text, cc, ties=None)


def test_bad_caption_texts():
    audio, text, cc = torch.randn(3, 4), torch.randn(5, 4), torch.tensor([0, 0, 1, 2, 2])
    with _raises("caption_texts must hold one string per caption (M = 5); got 4. Pass the "
                 "texts in the order of text_emb's rows."):
        retrieval_metrics(audio, text, cc, caption_texts=["a", "b", "c", "d"])
    with _raises("caption_texts[2] must be a str; got int."):
        retrieval_metrics(audio, text, cc, caption_texts=["a", "b", 3, "d", "e"])
    with _raises("caption_texts must be a sequence of M = 5 caption strings; got str."):
        retrieval_metrics(audio, text, cc, caption_texts="abcde")


def test_tie_aware_metrics_on_every_device(device):
    # Duplicated caption rows tie in a2t; the numbers do not depend on the device.
    g = torch.Generator().manual_seed(21)
    audio = torch.randn(12, 5, generator=g, dtype=F64)
    base = torch.randn(20, 5, generator=g, dtype=F64)
    text = base[torch.randint(0, 20, (42,), generator=g)]
    cc = torch.arange(12).repeat_interleave(torch.tensor([3, 4] * 6))
    want = retrieval_metrics(audio, text, cc, per_query=True)
    got = retrieval_metrics(audio.to(device), text.to(device), cc.to(device), per_query=True)
    assert got["num_distinct_captions"] == want["num_distinct_captions"] < 42
    for d in ("a2t", "t2a"):
        lists, want_lists = got[d].pop("per_query"), want[d].pop("per_query")
        assert got[d] == pytest.approx(want[d], rel=1e-12)
        for key in want_lists:
            assert lists[key] == pytest.approx(want_lists[key], rel=1e-12, abs=1e-15)
    assert got["queries"] == want["queries"]
    opt = retrieval_metrics(audio, text, cc, ties="optimistic")
    assert opt["a2t"]["mAP@10"] > want["a2t"]["mAP@10"]  # the duplicates do tie

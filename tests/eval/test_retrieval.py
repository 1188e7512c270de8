"""Retrieval evaluation: metrics against brute-force loops, hand-computed cases, plan ranking
against POT, chunking, zero-shot, modality gap, t-SNE, and input validation."""

import math
import re
import warnings

import numpy as np
import ot
import pytest
import torch

import mltm.retrieval as retrieval
from mltm.costs import cosine_distance, euclidean_distance
from mltm.retrieval import (
    average_precision_at_k,
    modality_gap,
    pairwise_cost,
    prompt_for,
    ranks_from_scores,
    retrieval_metrics,
    tsne_coordinates,
    zero_shot_classification,
)

F64 = torch.float64


def _raises(msg):
    return pytest.raises(ValueError, match=re.escape(msg))


# ---------------------------------------------------------------------------------------------
# Brute-force oracle: loops over queries, a full argsort per query, numpy only.


def _brute_ranks_ap(scores, rel, k=10):
    """0-based best ranks and Mei's AP@k per query, by sorting every row."""
    ranks, aps = [], []
    for q in range(scores.shape[0]):
        order = np.argsort(-scores[q], kind="stable")
        hit_positions = [p + 1 for p, g in enumerate(order) if rel[q, g]]  # 1-based, ascending
        ranks.append(hit_positions[0] - 1)
        ap = 0.0
        for j, r in enumerate(hit_positions, start=1):
            if r <= k:
                ap += j / r
        aps.append(ap / len(hit_positions))
    return np.array(ranks), np.array(aps)


def _brute_summary(ranks, aps, ks=(1, 5, 10)):
    out = {f"R@{k}": 100.0 * sum(1 for r in ranks if r < k) / len(ranks) for k in ks}
    out["mAP@10"] = 100.0 * float(np.mean(aps))
    out["medR"] = math.floor(np.median(ranks)) + 1
    out["meanR"] = float(np.mean(ranks)) + 1
    return out


def _np_cosine(a, t):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    t = t / np.linalg.norm(t, axis=1, keepdims=True)
    return 1.0 - a @ t.T


def _brute_metrics(scores, caption_clip, clip_group=None):
    """Both directions from an (N, M) score matrix (higher = better)."""
    N, M = scores.shape
    group = np.arange(N) if clip_group is None else np.asarray(clip_group)
    rel = np.zeros((N, M), dtype=bool)
    for i in range(N):
        for j in range(M):
            rel[i, j] = group[i] == group[caption_clip[j]]
    a2t = _brute_summary(*_brute_ranks_ap(scores, rel))
    t2a = _brute_summary(*_brute_ranks_ap(scores.T, rel.T))
    return a2t, t2a


def _data(seed, layout, N=15, d=8, noise=2.5):
    g = torch.Generator().manual_seed(seed)
    if layout == "five":
        caption_clip = torch.arange(N).repeat_interleave(5)
    else:  # 1 to 5 captions per clip
        counts = torch.randint(1, 6, (N,), generator=g)
        caption_clip = torch.arange(N).repeat_interleave(counts)
    caption_clip = caption_clip[torch.randperm(len(caption_clip), generator=g)]
    audio = torch.randn(N, d, generator=g, dtype=F64)
    text = audio[caption_clip] + noise * torch.randn(len(caption_clip), d, generator=g, dtype=F64)
    return audio, text, caption_clip


def _assert_metrics_equal(got, want):
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key


# ---------------------------------------------------------------------------------------------
# Metrics against brute force


@pytest.mark.parametrize("layout", ["five", "variable"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_distance_metrics_match_brute_force(seed, layout):
    audio, text, cc = _data(seed, layout)
    got = retrieval_metrics(audio, text, cc)
    scores = -_np_cosine(audio.numpy(), text.numpy())
    a2t, t2a = _brute_metrics(scores, cc.numpy())
    _assert_metrics_equal(got["a2t"], a2t)
    _assert_metrics_equal(got["t2a"], t2a)
    assert got["num_clips"] == 15 and got["num_captions"] == len(cc)
    assert got["rank_by"] == "distance"
    # The metrics are not all trivial (the check would be vacuous at R@1 = 100).
    assert 0 < got["a2t"]["R@1"] < 100 and 0 < got["t2a"]["R@1"] < 100
    assert got["a2t"]["medR"] > 1 or got["t2a"]["medR"] > 1


@pytest.mark.parametrize("seed", [0, 1])
def test_euclidean_cost_matches_brute_force(seed):
    audio, text, cc = _data(seed, "variable")
    got = retrieval_metrics(audio, text, cc, cost=euclidean_distance)
    a, t = audio.numpy(), text.numpy()
    dist = np.sqrt(((a[:, None, :] - t[None, :, :]) ** 2).sum(-1))
    a2t, t2a = _brute_metrics(-dist, cc.numpy())
    _assert_metrics_equal(got["a2t"], a2t)
    _assert_metrics_equal(got["t2a"], t2a)


@pytest.mark.parametrize("seed", [0, 3])
def test_rank_and_ap_functions_match_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(40, 60, generator=g, dtype=F64)
    rel = torch.rand(40, 60, generator=g) < 0.1
    rel[torch.arange(40), torch.randint(0, 60, (40,), generator=g)] = True
    ranks, aps = _brute_ranks_ap(scores.numpy(), rel.numpy(), k=10)
    assert ranks_from_scores(scores, rel).tolist() == ranks.tolist()
    got10 = average_precision_at_k(scores, rel, k=10)
    torch.testing.assert_close(got10, torch.from_numpy(aps), rtol=0, atol=1e-14)
    _, aps3 = _brute_ranks_ap(scores.numpy(), rel.numpy(), k=3)
    got3 = average_precision_at_k(scores, rel, k=3)
    torch.testing.assert_close(got3, torch.from_numpy(aps3), rtol=0, atol=1e-14)


def test_chunked_ranking_equals_one_chunk(monkeypatch):
    audio, text, cc = _data(4, "variable", N=30)
    whole = retrieval_metrics(audio, text, cc)
    monkeypatch.setattr(retrieval, "_RANK_CHUNK_ELEMENTS", 7)  # one query row per chunk
    assert retrieval_metrics(audio, text, cc) == whole


# ---------------------------------------------------------------------------------------------
# Hand-computed cases


def _lookup_cost(D):
    """A cost that reads a prescribed matrix: embeddings are 1-d row/column indices."""
    D = torch.as_tensor(D, dtype=F64)
    return lambda x, y: D[x[:, 0].long()][:, y[:, 0].long()]


def test_tiny_case_by_hand():
    # 2 clips, 3 captions: captions 0 and 1 belong to clip 0, caption 2 to clip 1.
    D = [[0.30, 0.35, 0.10],
         [0.20, 0.40, 0.60]]
    audio = torch.tensor([[0.0], [1.0]], dtype=F64)
    text = torch.tensor([[0.0], [1.0], [2.0]], dtype=F64)
    cc = torch.tensor([0, 0, 1])
    got = retrieval_metrics(audio, text, cc, cost=_lookup_cost(D))
    # a2t. Clip 0 orders captions 2, 0, 1: relevant at ranks 2 and 3, AP = (1/2 + 2/3) / 2.
    # Clip 1 orders 0, 1, 2: relevant at rank 3, AP = 1/3.
    assert got["a2t"] == pytest.approx(
        {"R@1": 0.0, "R@5": 100.0, "R@10": 100.0, "mAP@10": 100 * (7 / 12 + 1 / 3) / 2,
         "medR": 2.0, "meanR": 2.5}
    )
    # t2a. Caption 0: clip 1 (0.2) before clip 0 (0.3), rank 2; caption 1: clip 0 first, rank 1;
    # caption 2: clip 0 (0.1) before clip 1 (0.6), rank 2. 0-based ranks [1, 0, 1]: median 1.
    assert got["t2a"] == pytest.approx(
        {"R@1": 100 / 3, "R@5": 100.0, "R@10": 100.0, "mAP@10": 100 * (1 / 2 + 1 + 1 / 2) / 3,
         "medR": 2.0, "meanR": 5 / 3}
    )


def test_medr_floors_the_median_of_an_even_count():
    # Two a2t queries with 0-based ranks [0, 1] (median 0.5): medR = floor(0.5) + 1 = 1, as in
    # the reference code (np.median + 1 would give 1.5).
    D = [[0.1, 0.9, 0.5],
         [0.1, 0.2, 0.3]]
    cc = torch.tensor([0, 1, 1])
    got = retrieval_metrics(torch.tensor([[0.0], [1.0]]), torch.tensor([[0.0], [1.0], [2.0]]), cc,
                            cost=_lookup_cost(D))
    # a2t: clip 0 ranks caption 0 first (rank 0); clip 1 ranks 0, 1, 2: best relevant rank 1.
    assert got["a2t"]["medR"] == 1.0 and got["a2t"]["meanR"] == 1.5
    # t2a ranks: caption 0 -> tie 0.1/0.1 (a hit with probability 1/2 under random
    # tie-breaking, always under the optimistic rule), caption 1 -> clip 1 (0.2 < 0.9): 0,
    # caption 2 -> clip 1 (0.3 < 0.5): 0.
    assert got["t2a"]["R@1"] == pytest.approx(100 * 2.5 / 3, rel=1e-15)
    optimistic = retrieval_metrics(torch.tensor([[0.0], [1.0]]),
                                   torch.tensor([[0.0], [1.0], [2.0]]), cc,
                                   cost=_lookup_cost(D), ties="optimistic")
    assert optimistic["t2a"]["R@1"] == 100.0


def test_optimistic_ties():
    scores = torch.tensor([[1.0, 1.0, 0.5, 1.0],
                           [1.0, 1.0, 0.5, 1.0]])
    rel = torch.tensor([[False, True, False, False],
                        [False, True, True, False]])
    opt = {"ties": "optimistic"}
    # The relevant item ties with two others at the top: rank 0 (count of strictly better).
    assert ranks_from_scores(scores, rel, **opt).tolist() == [0, 0]
    # AP: a relevant item comes before the non-relevant items it ties with.
    # Row 1 order: rel(1.0), non(1.0), non(1.0), rel(0.5) -> (1/1 + 2/4) / 2.
    torch.testing.assert_close(average_precision_at_k(scores, rel, k=10, **opt),
                               torch.tensor([1.0, 0.75], dtype=F64))
    # k cuts the second relevant item off: (1/1) / 2.
    torch.testing.assert_close(average_precision_at_k(scores, rel, k=3, **opt),
                               torch.tensor([1.0, 0.5], dtype=F64))
    # By default the rank is the mean over the 3! orders of the tie: (3 + 1)/(1 + 1) - 1 = 1,
    # and AP@10 the mean of 1/1, 1/2, 1/3 (row 0) and of (1/p + 2/4)/2 over p = 1..3 (row 1).
    assert ranks_from_scores(scores, rel).tolist() == [1.0, 1.0]
    torch.testing.assert_close(average_precision_at_k(scores, rel, k=10),
                               torch.tensor([11 / 18, (11 / 18 + 0.5) / 2], dtype=F64))


def test_ap_with_a_single_relevant_item_is_reciprocal_rank_cut_at_k():
    g = torch.Generator().manual_seed(5)
    scores = torch.randn(50, 30, generator=g, dtype=F64)
    target = torch.randint(0, 30, (50,), generator=g)
    rel = torch.zeros(50, 30, dtype=torch.bool)
    rel[torch.arange(50), target] = True
    rank1 = ranks_from_scores(scores, rel) + 1
    mrr = torch.where(rank1 <= 10, 1.0 / rank1.double(), torch.zeros((), dtype=F64))
    torch.testing.assert_close(average_precision_at_k(scores, rel, 10), mrr, rtol=0, atol=1e-15)


# ---------------------------------------------------------------------------------------------
# Plan ranking against POT


def _pot_metrics(audio, text, cc, eps, **pot_kwargs):
    C = _np_cosine(audio.numpy(), text.numpy())
    N, M = C.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # POT warns when 10 iterations do not converge
        P = ot.sinkhorn(np.full(N, 1 / N), np.full(M, 1 / M), C, eps, **pot_kwargs)
    return _brute_metrics(P, cc.numpy()), P


@pytest.mark.parametrize("layout", ["five", "variable"])
def test_plan_ranking_matches_converged_pot(layout):
    audio, text, cc = _data(6, layout, N=12)
    got = retrieval_metrics(audio, text, cc, rank_by="plan", eps=0.05)
    (a2t, t2a), _ = _pot_metrics(audio, text, cc, 0.05, method="sinkhorn_log", stopThr=1e-13,
                                 numItermax=100_000)
    _assert_metrics_equal(got["a2t"], a2t)
    _assert_metrics_equal(got["t2a"], t2a)
    assert got["rank_by"] == "plan" and got["eps"] == 0.05
    # The plan re-ranks: it is not the distance ranking in disguise on this case.
    by_distance = retrieval_metrics(audio, text, cc)
    assert by_distance["a2t"] != got["a2t"] or by_distance["t2a"] != got["t2a"]


def test_ten_iterations_match_pot_ten_iterations():
    # The released rule: POT's default (Knopp) Sinkhorn stopped after 10 iterations.
    audio, text, cc = _data(7, "five", N=12)
    eps = 0.02
    got = retrieval_metrics(audio, text, cc, rank_by="plan", eps=eps,
                            sinkhorn_kwargs=dict(max_iter=10, tol=None))
    (a2t, t2a), P10 = _pot_metrics(audio, text, cc, eps, method="sinkhorn", numItermax=10,
                                   stopThr=0.0)
    _assert_metrics_equal(got["a2t"], a2t)
    _assert_metrics_equal(got["t2a"], t2a)
    # The case is informative: 10 iterations are far from converged and rank differently.
    assert np.abs(P10.sum(0) - 1 / len(cc)).max() > 1e-4
    converged = retrieval_metrics(audio, text, cc, rank_by="plan", eps=eps)
    assert converged["a2t"] != got["a2t"] or converged["t2a"] != got["t2a"]


def test_released_rule_with_max_normalised_cost():
    audio, text, cc = _data(8, "five", N=10)
    got = retrieval_metrics(audio, text, cc, rank_by="plan", eps=0.03,
                            sinkhorn_kwargs=dict(max_iter=10, tol=None, cost_normalization="max"))
    C = _np_cosine(audio.numpy(), text.numpy())
    N, M = C.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        P = ot.sinkhorn(np.full(N, 1 / N), np.full(M, 1 / M), C / C.max(), 0.03, numItermax=10,
                        stopThr=0.0)
    a2t, t2a = _brute_metrics(P, cc.numpy())
    _assert_metrics_equal(got["a2t"], a2t)
    _assert_metrics_equal(got["t2a"], t2a)


def test_plan_scores_stay_ordered_where_the_float32_plan_underflows():
    # At eps = 0.002 most float32 plan entries underflow to exactly 0 and would all tie; the
    # log plan that ranking uses keeps them apart, in the order of the float64 log plan.
    audio, text, _ = _data(9, "five", N=10)
    kw = dict(max_iter=300, tol=None)
    C32 = cosine_distance(audio.float(), text.float())
    zero = retrieval.sinkhorn_log(C32, 0.002, **kw).plan == 0
    assert zero.float().mean() > 0.5
    s32 = retrieval._scores_from_cost(C32.clone(), "plan", 0.002, kw).double()
    s64 = retrieval._scores_from_cost(cosine_distance(audio, text), "plan", 0.002, kw)
    for i in range(len(audio)):
        a, b = s32[i][zero[i]], s64[i][zero[i]]
        assert a.unique().numel() == a.numel()  # no ties among the underflowed entries
        da, db = a[:, None] - a[None, :], b[:, None] - b[None, :]
        clear = db.abs() > 1e-2  # pairs the float64 log plan separates by more than rounding
        assert bool((torch.sign(da[clear]) == torch.sign(db[clear])).all())


# ---------------------------------------------------------------------------------------------
# Perfect and random embeddings


@pytest.mark.parametrize("rank_by", ["distance", "plan"])
def test_perfect_embeddings(rank_by, device):
    g = torch.Generator().manual_seed(10)
    audio = torch.randn(40, 16, generator=g)
    cc = torch.arange(40).repeat_interleave(5)
    got = retrieval_metrics(audio.to(device), audio[cc].to(device), cc, rank_by=rank_by)
    for direction in ("a2t", "t2a"):
        m = got[direction]
        assert m["R@1"] == m["R@5"] == m["R@10"] == m["mAP@10"] == 100.0
        assert m["medR"] == 1.0 and m["meanR"] == 1.0


def test_random_embeddings_give_chance_recall():
    g = torch.Generator().manual_seed(11)
    N = 400
    cc = torch.arange(N).repeat_interleave(5)
    audio, text = torch.randn(N, 32, generator=g), torch.randn(5 * N, 32, generator=g)
    got = retrieval_metrics(audio, text, cc)
    chance_a2t = 100 * (1 - math.comb(5 * N - 5, 10) / math.comb(5 * N, 10))  # any of 5 in top 10
    chance_t2a = 100 * 10 / N
    assert abs(got["a2t"]["R@10"] - chance_a2t) < 4.0
    assert abs(got["t2a"]["R@10"] - chance_t2a) < 2.0
    assert abs(got["t2a"]["meanR"] - (N + 1) / 2) < 0.1 * N


# ---------------------------------------------------------------------------------------------
# clip_group relevance


def test_clip_group_relevance_matches_brute_force():
    audio, text, cc = _data(12, "variable", N=12)
    group = torch.tensor([0, 1, 2, 0, 1, 2, 3, 3, 0, 4, 4, 2])
    got = retrieval_metrics(audio, text, cc, clip_group=group)
    a2t, t2a = _brute_metrics(-_np_cosine(audio.numpy(), text.numpy()), cc.numpy(), group.numpy())
    _assert_metrics_equal(got["a2t"], a2t)
    _assert_metrics_equal(got["t2a"], t2a)
    assert got["a2t"] != retrieval_metrics(audio, text, cc)["a2t"]


def test_clip_group_makes_same_class_clips_interchangeable():
    # Two clips per class with identical audio; templated captions equal their class audio.
    base = torch.eye(3, dtype=F64)
    audio = base[[0, 0, 1, 1, 2, 2]]
    cc = torch.tensor([0, 1, 2, 3, 4, 5])
    text = audio[cc]
    grouped = retrieval_metrics(audio, text, cc, clip_group=torch.tensor([0, 0, 1, 1, 2, 2]))
    # Grouped: every query's relevant items (both clips / both captions of its class) are the
    # top two, so all metrics are perfect.
    for direction in ("a2t", "t2a"):
        assert grouped[direction]["R@1"] == grouped[direction]["mAP@10"] == 100.0
        assert grouped[direction]["meanR"] == 1.0
    # Plain: each query's single relevant item ties with the other clip's (caption's) item;
    # optimistic tie-breaking still puts it first, random tie-breaking half of the time.
    plain = retrieval_metrics(audio, text, cc, ties="optimistic")
    assert plain["a2t"]["R@1"] == plain["t2a"]["R@1"] == plain["t2a"]["mAP@10"] == 100.0
    plain = retrieval_metrics(audio, text, cc)
    assert plain["a2t"]["R@1"] == plain["t2a"]["R@1"] == 50.0
    assert plain["t2a"]["mAP@10"] == 75.0 and plain["t2a"]["meanR"] == 1.5


# ---------------------------------------------------------------------------------------------
# pairwise_cost


def test_pairwise_cost_chunked_equals_unchunked():
    g = torch.Generator().manual_seed(13)
    x, y = torch.randn(23, 5, generator=g, dtype=F64), torch.randn(17, 5, generator=g, dtype=F64)
    calls = []

    def strict_sq_dist(a, b):
        # Only valid for 2-D inputs: a (c, d), b (m, d). A 3-D chunk×m×d input would fail here.
        assert a.ndim == 2 and b.ndim == 2
        calls.append((tuple(a.shape), tuple(b.shape)))
        return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)

    full = pairwise_cost(strict_sq_dist, x, y, chunk_size=1000)
    assert calls == [((23, 5), (17, 5))]
    calls.clear()
    chunked = pairwise_cost(strict_sq_dist, x, y, chunk_size=5)
    assert calls == [((5, 5), (17, 5))] * 4 + [((3, 5), (17, 5))]
    torch.testing.assert_close(chunked, full, rtol=0, atol=0)
    torch.testing.assert_close(full, torch.cdist(x, y) ** 2, rtol=1e-12, atol=1e-12)


def test_pairwise_cost_records_no_graph():
    M = torch.nn.Parameter(torch.eye(4))
    x = torch.randn(6, 4, requires_grad=True)
    C = pairwise_cost(lambda a, b: ((a @ M)[:, None] - b[None]).norm(dim=-1), x,
                      torch.randn(3, 4), chunk_size=2)
    assert C.shape == (6, 3) and not C.requires_grad


def test_cosine_distance_builtin():
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    y = torch.tensor([[3.0, 0.0], [-1.0, 0.0], [1.0, 1.0]])
    want = torch.tensor([[0.0, 2.0, 1 - 1 / math.sqrt(2)], [1.0, 1.0, 1 - 1 / math.sqrt(2)]])
    torch.testing.assert_close(cosine_distance(x, y), want)


# ---------------------------------------------------------------------------------------------
# Zero-shot classification


def test_zero_shot_constructed_case():
    class_text = torch.eye(4, dtype=F64)
    # Cosine to e_c is the c-th component / norm, so each row's class order is by component.
    audio = torch.tensor([[1.0, 0.5, 0.2, 0.0],   # label 0: order 0,1,2,3 -> rank 1
                          [0.9, 0.3, 0.0, 1.0],   # label 1: order 3,0,1,2 -> rank 3
                          [0.0, 0.0, 1.0, 0.0],   # label 2: rank 1 (others tie below)
                          [0.5, 1.0, 0.8, 0.1]],  # label 3: order 1,2,0,3 -> rank 4
                         dtype=F64)
    labels = torch.tensor([0, 1, 2, 3])
    got = zero_shot_classification(audio, class_text, labels, ks=(1, 3, 5))
    assert got["accuracy"] == got["R@1"] == 50.0
    assert got["R@3"] == 75.0 and got["R@5"] == 100.0
    assert got["mAP@10"] == got["MRR@10"] == pytest.approx(100 * (1 + 1 / 3 + 1 + 1 / 4) / 4)
    assert got["medR"] == 2.0 and got["meanR"] == 2.25
    assert got["num_clips"] == 4 and got["num_classes"] == 4 and got["rank_by"] == "distance"
    assert got["predicted_classes"] == 4 and got["majority_share"] == 25.0
    # A hub: one prompt first for every clip; the labels have a 3-of-4 majority class.
    hub = zero_shot_classification(audio + torch.tensor([0.0, 0.0, 0.0, 9.0], dtype=F64),
                                   class_text, torch.tensor([3, 3, 3, 0]))
    assert (hub["predicted_classes"] == 1 and hub["majority_share"] == 75.0
            and hub["accuracy"] == 75.0)


@pytest.mark.parametrize("rank_by", ["distance", "plan"])
def test_zero_shot_matches_brute_force(rank_by):
    g = torch.Generator().manual_seed(14)
    n_cls, N = 12, 60
    class_text = torch.randn(n_cls, 8, generator=g, dtype=F64)
    labels = torch.randint(0, n_cls, (N,), generator=g)
    audio = class_text[labels] + 1.2 * torch.randn(N, 8, generator=g, dtype=F64)
    kw = dict(max_iter=10, tol=None) if rank_by == "plan" else None
    got = zero_shot_classification(audio, class_text, labels, rank_by=rank_by, eps=0.05,
                                   sinkhorn_kwargs=kw)
    C = _np_cosine(audio.numpy(), class_text.numpy())
    if rank_by == "plan":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scores = ot.sinkhorn(np.full(N, 1 / N), np.full(n_cls, 1 / n_cls), C, 0.05,
                                 numItermax=10, stopThr=0.0)
    else:
        scores = -C
    rel = labels.numpy()[:, None] == np.arange(n_cls)[None, :]
    ranks, aps = _brute_ranks_ap(scores, rel)
    want = _brute_summary(ranks, aps)
    assert got["accuracy"] == pytest.approx(want["R@1"])
    for key in ("R@1", "R@5", "R@10", "mAP@10", "medR", "meanR"):
        assert got[key] == pytest.approx(want[key], rel=1e-12), key
    mrr10 = 100 * np.mean([1 / (r + 1) if r < 10 else 0.0 for r in ranks])
    assert got["MRR@10"] == pytest.approx(mrr10)
    assert 0 < got["accuracy"] < 100
    assert got["predicted_classes"] == len(np.unique(np.asarray(scores).argmax(1)))
    assert got["majority_share"] == pytest.approx(100 * np.bincount(labels.numpy()).max() / N)


def test_prompt_for():
    assert prompt_for("dog_bark") == "This is a sound of dog bark."
    assert prompt_for("vacuum_cleaner", "a {} sound") == "a vacuum cleaner sound"
    with _raises("template must contain exactly one '{}' for the class name; got 'no slot'."):
        prompt_for("dog", "no slot")


# ---------------------------------------------------------------------------------------------
# Modality gap and t-SNE


def test_modality_gap_of_a_shifted_cloud_is_the_shift():
    g = torch.Generator().manual_seed(15)
    cloud = torch.randn(50, 6, generator=g, dtype=F64)
    shift = torch.tensor([0.3, -0.4, 0.0, 1.2, 0.0, 0.0], dtype=F64)
    assert modality_gap(cloud, cloud + shift) == pytest.approx(1.3, abs=1e-12)
    # Different sample counts: only the centroids matter.
    sym = torch.cat([cloud, -cloud])  # centred at 0
    assert modality_gap(sym + shift, cloud[:7] - cloud[:7].mean(0)) == pytest.approx(1.3, abs=1e-12)
    assert modality_gap(cloud, cloud) == 0.0


def test_tsne_shapes_and_determinism():
    g = torch.Generator().manual_seed(16)
    audio, text = torch.randn(8, 10, generator=g), torch.randn(12, 10, generator=g) + 2
    a1, t1 = tsne_coordinates(audio, text, seed=0, max_iter=250)  # perplexity 30 clipped to 19/3
    a2, t2 = tsne_coordinates(audio, text, seed=0, max_iter=250)
    assert a1.shape == (8, 2) and t1.shape == (12, 2)
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(t1, t2)
    # With a random initialisation the seed matters, and fixes the result.
    r1, _ = tsne_coordinates(audio, text, seed=1, init="random", max_iter=250)
    r2, _ = tsne_coordinates(audio, text, seed=1, init="random", max_iter=250)
    r3, _ = tsne_coordinates(audio, text, seed=2, init="random", max_iter=250)
    np.testing.assert_array_equal(r1, r2)
    assert not np.array_equal(r1, r3)
    ac, tc = tsne_coordinates(audio, text, perplexity=2, metric="cosine", max_iter=250)
    assert ac.shape == (8, 2) and tc.shape == (12, 2) and np.isfinite(ac).all()


# ---------------------------------------------------------------------------------------------
# Bad inputs


def _ok():
    audio = torch.randn(3, 4)
    text = torch.randn(5, 4)
    cc = torch.tensor([0, 0, 1, 2, 2])
    return audio, text, cc


def test_mismatched_embedding_size():
    audio, _, cc = _ok()
    with _raises("audio_emb and text_emb must have the same embedding size; got d=4 and d=3. "
                 "Project both modalities into the shared space first."):
        retrieval_metrics(audio, torch.randn(5, 3), cc)


def test_caption_clip_out_of_range():
    audio, text, _ = _ok()
    with _raises("caption_clip must hold clip indices in [0, N) = [0, 3); got values in [0, 3]."):
        retrieval_metrics(audio, text, torch.tensor([0, 1, 2, 3, 1]))
    with _raises("caption_clip must hold clip indices in [0, N) = [0, 3); got values in [-1, 2]."):
        retrieval_metrics(audio, text, torch.tensor([0, 1, 2, -1, 1]))


def test_clip_without_caption():
    audio, text, _ = _ok()
    with _raises("1 clip(s) have no caption (clip index 2); drop clips without captions from "
                 "audio_emb (and re-index caption_clip) before evaluating."):
        retrieval_metrics(audio, text, torch.tensor([0, 0, 1, 1, 0]))


def test_unknown_rank_by():
    audio, text, cc = _ok()
    with _raises("rank_by must be one of 'distance', 'plan', 'csls', 'inverted_softmax', "
                 "'plan_reference'; got 'cosine'."):
        retrieval_metrics(audio, text, cc, rank_by="cosine")
    with _raises("rank_by must be one of 'distance', 'plan', 'csls', 'inverted_softmax', "
                 "'plan_reference'; got 'sinkhorn'."):
        zero_shot_classification(audio, text, torch.tensor([0, 1, 2]), rank_by="sinkhorn")


def test_caption_clip_shape_and_dtype():
    audio, text, cc = _ok()
    with _raises("caption_clip must have shape (5,) = (M,); got shape (4,)."):
        retrieval_metrics(audio, text, cc[:4])
    with _raises("caption_clip must be an integer tensor; got torch.float32. "
                 "Convert it with caption_clip.long()."):
        retrieval_metrics(audio, text, cc.float())
    with _raises("clip_group must have shape (3,) = (N,); got shape (2,)."):
        retrieval_metrics(audio, text, cc, clip_group=torch.tensor([0, 1]))


def test_embedding_shapes():
    audio, text, cc = _ok()
    with _raises("audio_emb must have shape (N, d); got shape (3, 4, 1)."):
        retrieval_metrics(audio[..., None], text, cc)
    with _raises("text_emb must be a float tensor; got torch.int64. "
                 "Convert it with text_emb.float()."):
        retrieval_metrics(audio, text.long(), cc)


def test_bad_cost_and_options():
    audio, text, cc = _ok()
    with _raises("cost(x, y) must return a tensor of shape (x rows, y rows) = (3, 5); got (5, 3). "
                 "Write the cost for 2-D inputs x (n, d), y (m, d)."):
        retrieval_metrics(audio, text, cc, cost=lambda x, y: cosine_distance(y, x))
    with _raises("ks must be a sequence of positive integers, e.g. (1, 5, 10); got (0, 5)."):
        retrieval_metrics(audio, text, cc, ks=(0, 5))
    with _raises("sinkhorn_kwargs must not set 'b'"):
        retrieval_metrics(audio, text, cc, rank_by="plan", sinkhorn_kwargs={"b": torch.ones(5) / 5})
    with _raises("eps must be a positive finite number; got -1.0. Use e.g. eps=0.05."):
        retrieval_metrics(audio, text, cc, rank_by="plan", eps=-1.0)
    with _raises("chunk_size must be a positive integer; got 0."):
        pairwise_cost(cosine_distance, audio, text, chunk_size=0)


def test_rank_inputs():
    with _raises("query 1 has no relevant item (row 1 of relevant is all False); every query "
                 "needs at least one relevant gallery item."):
        ranks_from_scores(torch.rand(2, 3),
                          torch.tensor([[True, False, False], [False, False, False]]))
    with _raises("relevant must have the shape of scores (2, 3); got (3, 2)."):
        ranks_from_scores(torch.rand(2, 3), torch.ones(3, 2, dtype=torch.bool))
    with _raises("scores contain non-finite values (NaN or inf); "
                 "check the embeddings and the cost."):
        average_precision_at_k(torch.tensor([[float("nan"), 1.0]]), torch.tensor([[True, False]]))
    with _raises("k must be a positive integer; got 0."):
        average_precision_at_k(torch.rand(2, 3), torch.ones(2, 3, dtype=torch.bool), k=0)


def test_zero_shot_labels_out_of_range():
    with _raises("labels must hold class indices in [0, C) = [0, 4); got values in [0, 4]."):
        zero_shot_classification(torch.randn(3, 5), torch.randn(4, 5), torch.tensor([0, 4, 1]))


def test_float64_scores_that_differ_by_rounding_noise_tie():
    # Two captions with the same text whose embeddings came out of different rows of a matrix
    # product differ in the last bits; on another CPU the order of those bits flips. After
    # the score grid (mltm.numerics.round_to_grid) they tie exactly, so the rank is the same
    # whichever copy came out larger.
    g = torch.Generator().manual_seed(3)
    audio = torch.nn.functional.normalize(torch.randn(4, 8, generator=g, dtype=torch.float64),
                                          dim=-1)
    text = torch.nn.functional.normalize(torch.randn(6, 8, generator=g, dtype=torch.float64),
                                         dim=-1)
    text[4] = text[5] = audio[0]  # caption 4 is clip 0's best caption, and caption 5 ties with it
    caption_clip = torch.tensor([0, 1, 2, 3, 0, 1])  # captions 4 and 5: same text, two clips
    results = []
    for sign in (1.0, -1.0):
        t = text.clone()
        t[5, 0] += sign * 2.0**-50
        results.append(retrieval_metrics(audio, t, caption_clip, rank_by="distance"))
    assert results[0] == results[1]

"""mltm.verdicts: claims judged on synthetic and recorded Records: holds, reversed, undecided,
with the reasons and the errors a misstated claim gets."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from mltm.records import Records
from mltm.verdicts import Claim, verdict, verdict_table

REPO = Path(__file__).resolve().parents[2]
KEYS = ("dataset", "loss", "eps", "seed")
CLAIM = Claim("m-LTM beats NT-Xent on a2t R@1 (plan)", a={"loss": "m-LTM"},
              b={"loss": "NT-Xent"}, metric="R@1", direction="a2t", ranking="plan",
              reference="Table 2")
N_QUERIES, N_LABELS = 400, 40


def results(hits: np.ndarray, *, labels=None, clips=None) -> dict:
    """A run's results with a2t R@1 (plan) from per-query hit probabilities ``hits``."""
    n = hits.size
    block = {"R@1": 100.0 * float(np.mean(hits)), "R@5": 50.0,
             "per_query": {"R@1": [float(h) for h in hits], "rank": [1.0] * n}}
    test = {"distance": {"a2t": {"R@1": 1.0}}, "plan": {"a2t": block, "modality_gap": 0.5},
            "queries": {"a2t": {
                "clip": list(range(n)) if clips is None else clips,
                "label": [f"class{q % N_LABELS}" for q in range(n)] if labels is None else labels}}}
    return {"test": test, "best_epoch": 3}


def make_records(effect: float, seeds=range(5), *, per_query=True, rng_seed=0,
                 seeds_b=None) -> Records:
    """m-LTM and NT-Xent runs on one dataset; m-LTM's hit probability is ``effect`` higher on
    every query (plus query, class and seed noise that both methods share in part)."""
    rng = np.random.default_rng(rng_seed)
    difficulty = np.clip(rng.normal(0.4, 0.15, N_LABELS)[np.arange(N_QUERIES) % N_LABELS]
                         + rng.normal(0, 0.1, N_QUERIES), 0.05, 0.95)
    rec = Records(provenance={"config": {"name": "test"}})
    for loss, shift, run_seeds in (("m-LTM", effect / 2, seeds),
                                   ("NT-Xent", -effect / 2, seeds if seeds_b is None else seeds_b)):
        for seed in run_seeds:
            p = np.clip(difficulty + shift + np.random.default_rng(1000 + seed).normal(0, 0.02)
                        + rng.normal(0, 0.05, N_QUERIES), 0, 1)
            rec.add(("debsfx", loss, 0.05, seed), results(p) if per_query
                    else {"test": {"plan": {"a2t": {"R@1": 100 * float(p.mean())}}}})
    return rec


def test_clear_effect_with_five_seeds_holds():
    rec = make_records(0.08)
    v = verdict(rec, CLAIM, KEYS)
    assert v.verdict == "holds" and v.reason == "" and v.caveat == ""
    assert v.n_seeds == 5 and v.n_queries == N_QUERIES and v.n_clusters == N_LABELS
    # every seed favours m-LTM: the exact one-sided sign-flip p is 1/2^5
    assert v.p_value == 1 / 32
    per_seed = [rec.runs[("debsfx", "m-LTM", 0.05, s)]["test"]["plan"]["a2t"]["R@1"]
                - rec.runs[("debsfx", "NT-Xent", 0.05, s)]["test"]["plan"]["a2t"]["R@1"]
                for s in range(5)]
    assert v.effect == pytest.approx(np.mean(per_seed), abs=1e-12)
    assert 0 < v.interval[0] < v.effect < v.interval[1]
    assert v.bootstrap.statistic * 100 == pytest.approx(v.effect, abs=1e-9)
    assert re.fullmatch(r"holds: \+\d\.\d points \(95% CI \+\d\.\d to \+\d\.\d, "
                        r"clustered bootstrap over 400 queries in 40 clusters; exact one-sided "
                        r"sign-flip p = 0\.0312, 5 seeds\)", str(v)), str(v)
    assert "clustered bootstrap over 400 queries in 40 clusters by label" in v.test


def test_reversed_effect_is_reversed_and_the_opposite_claim_holds():
    rec = make_records(-0.08)
    v = verdict(rec, CLAIM, KEYS)
    assert v.verdict == "reversed" and v.effect < 0 and v.interval[1] < 0
    assert v.p_value == 1 / 32
    opposite = Claim("NT-Xent beats m-LTM", a=CLAIM.a, b=CLAIM.b, sign=-1)
    assert verdict(rec, opposite, KEYS).verdict == "holds"


def test_three_seeds_are_undecided_with_the_reason():
    v = verdict(make_records(0.08, seeds=range(3)), CLAIM, KEYS)
    assert v.verdict == "undecided" and v.n_seeds == 3
    assert v.reason == "fewer than 5 seeds (3); seed-level p = 0.125 ≥ 0.05"
    assert str(v).startswith("undecided (fewer than 5 seeds (3); seed-level p = 0.125 ≥ 0.05): +")
    # min_seeds is a parameter; with 3 seeds the exact test still cannot reach 0.05
    assert verdict(make_records(0.08, seeds=range(3)), CLAIM, KEYS, min_seeds=3).reason == (
        "3 seeds cannot give p < 0.05 (smallest exact p 0.125); seed-level p = 0.125 ≥ 0.05")


def test_no_effect_is_undecided():
    # The methods' runs are the same six outcome vectors, NT-Xent's shifted by one seed: the
    # per-seed differences vary but sum to zero, as do the per-query ones.
    rng = np.random.default_rng(4)
    outcomes = [rng.uniform(0.2, 0.6, N_QUERIES) for _ in range(6)]
    rec = Records()
    for seed in range(6):
        rec.add(("d", "m-LTM", 0.05, seed), results(outcomes[seed]))
        rec.add(("d", "NT-Xent", 0.05, seed), results(outcomes[(seed + 1) % 6]))
    v = verdict(rec, CLAIM, KEYS)
    assert v.verdict == "undecided" and abs(v.effect) < 1e-12
    assert v.p_value > 0.5 and v.reason.startswith("no difference between the methods over seeds")
    assert v.seed_test.sd > 1  # the seeds do differ: it is the mean that is zero


def test_seeds_agreeing_on_an_effect_carried_by_few_classes_is_undecided():
    # Every seed gains 10 points, but the gain comes from 6 of 10 classes winning and 4 losing
    # everything: over classes the mean difference is not resolved.
    labels = [f"c{q // 20}" for q in range(200)]
    win = np.repeat([1.0, 1, 1, 1, 1, 1, 0, 0, 0, 0], 20)
    rec = Records()
    for seed in range(6):
        rec.add(("d", "m-LTM", 0.05, seed), results(win * 0.9 + 0.05, labels=labels))
        rec.add(("d", "NT-Xent", 0.05, seed), results((1 - win) * 0.9 + 0.05 + 0.001 * seed,
                                                      labels=labels))
    v = verdict(rec, CLAIM, KEYS)
    assert v.p_value == 1 / 64 and v.n_clusters == 10
    assert v.verdict == "undecided"
    assert re.fullmatch(r"the query-level interval \(.+ to .+\) includes 0", v.reason), v.reason
    # clustered by clip (each query its own cluster) the same data decide: the clusters matter
    assert verdict(rec, CLAIM, KEYS, cluster_by="clip").verdict == "holds"


def test_missing_per_query_data_gives_a_seed_level_verdict_and_says_so():
    rec = make_records(0.08, per_query=False)
    v = verdict(rec, CLAIM, KEYS)
    assert v.verdict == "holds" and v.n_queries is None and v.n_clusters is None
    assert v.caveat == ("query-level interval unavailable: no run records per-query outcomes "
                        "('test/plan/a2t/per_query/R@1')")
    a = [rec.runs[("debsfx", "m-LTM", 0.05, s)]["test"]["plan"]["a2t"]["R@1"] for s in range(5)]
    b = [rec.runs[("debsfx", "NT-Xent", 0.05, s)]["test"]["plan"]["a2t"]["R@1"] for s in range(5)]
    ci = sps.ttest_rel(a, b).confidence_interval()
    assert v.interval == pytest.approx((ci.low, ci.high), abs=1e-12)
    assert v.test == "exact sign-flip over 5 seeds (one-sided); paired t interval over seeds"
    assert str(v).endswith("paired t over 5 seeds; exact one-sided sign-flip p = 0.0312, "
                           "5 seeds); query-level interval unavailable: no run records "
                           "per-query outcomes ('test/plan/a2t/per_query/R@1')")


def test_metric_without_a_per_query_counterpart_is_judged_on_seeds():
    gap = Claim("m-LTM has the smaller gap", a=CLAIM.a, b=CLAIM.b, metric="modality_gap",
                direction=None, sign=-1)
    v = verdict(make_records(0.08), gap, KEYS)
    assert v.effect == 0 and v.verdict == "undecided"
    assert v.caveat == "query-level interval unavailable: modality_gap has no per-query counterpart"


def test_mismatched_seeds_name_the_missing_runs():
    rec = make_records(0.08, seeds=range(5), seeds_b=[0, 1, 2, 5])
    with pytest.raises(ValueError, match=re.escape(
            "cannot pair m-LTM with NT-Xent by dataset, eps, seed: NT-Xent has no run for "
            "(dataset='debsfx', eps=0.05, seed=3), (dataset='debsfx', eps=0.05, seed=4) "
            "(m-LTM has); m-LTM has no run for (dataset='debsfx', eps=0.05, seed=5) "
            "(NT-Xent has)")):
        verdict(rec, CLAIM, KEYS)
    fixed = Claim("fixed", a={"loss": "m-LTM", "dataset": "debsfx", "eps": 0.05},
                  b={"loss": "NT-Xent", "dataset": "debsfx", "eps": 0.05})
    with pytest.raises(ValueError, match=re.escape(
            "cannot pair m-LTM with NT-Xent by seed: NT-Xent has no run for seed=3, seed=4 "
            "(m-LTM has); m-LTM has no run for seed=5 (NT-Xent has)")):
        verdict(rec, fixed, KEYS)


def test_free_key_fields_pair_runs_and_average_within_a_seed():
    # Keys (loss, heads, seed): a claim over both heads pairs by (heads, seed) and compares
    # each seed's mean over the heads.
    rng = np.random.default_rng(3)
    rec = Records()
    expected = []
    for seed in range(5):
        diffs = []
        for heads in ("linear", "attention"):
            pa, pb = rng.uniform(0.3, 0.6, N_QUERIES), rng.uniform(0.1, 0.3, N_QUERIES)
            rec.add(("m-LTM", heads, seed), results(pa))
            rec.add(("NT-Xent", heads, seed), results(pb))
            diffs.append(100 * (pa.mean() - pb.mean()))
        expected.append(np.mean(diffs))
    v = verdict(rec, CLAIM, ("loss", "heads", "seed"))
    assert v.verdict == "holds" and v.n_seeds == 5
    assert v.seed_test.mean == pytest.approx(np.mean(expected), abs=1e-9)
    assert v.seed_test.sd == pytest.approx(np.std(expected, ddof=1), abs=1e-9)
    del rec.runs[("m-LTM", "attention", 4)], rec.runs[("NT-Xent", "attention", 4)]
    with pytest.raises(ValueError, match=re.escape(
            "seed 4 has no runs for heads='attention', which other seeds have")):
        verdict(rec, CLAIM, ("loss", "heads", "seed"))
    # a field fixed on one side only leaves the other side ambiguous
    with pytest.raises(ValueError, match=re.escape(
            "m-LTM matches runs ('m-LTM', 'linear', 0) and ('m-LTM', 'attention', 0), which "
            "differ only in ['heads'], fixed for the other method; name 'heads' in m-LTM's "
            "filter too")):
        verdict(rec, Claim("x", a={"loss": "m-LTM"}, b={"loss": "NT-Xent", "heads": "linear"}),
                ("loss", "heads", "seed"))


@pytest.mark.parametrize("claim,keys,message", [
    (Claim("x", a={"method": "m-LTM"}, b={"method": "NT-Xent"}), KEYS,
     "claim 'x' filters on 'method', which is not a key field; the key fields are "
     "('dataset', 'loss', 'eps', 'seed')"),
    (Claim("x", a={"loss": "m-LTM"}, b={"loss": "triplet"}), KEYS,
     "no recorded run matches {'loss': 'triplet'}; the recorded values are "
     "{'loss': ['NT-Xent', 'm-LTM']}"),
    (Claim("x", a={"loss": "m-LTM", "seed": 0}, b={"loss": "NT-Xent", "seed": 0}), KEYS,
     "claim 'x' fixes the seed field 'seed'; runs are paired by seed"),
    (CLAIM, ("dataset", "loss", "seed"), "run key ('debsfx', 'm-LTM', 0.05, 0) has 4 parts, "
                                         "but 3 names were given"),
    (Claim("x", a={"loss": "m-LTM"}, b={"loss": "NT-Xent"}, direction="t2a"), KEYS,
     "run ('debsfx', 'm-LTM', 0.05, 0) has no 'test/plan/t2a' in its results"),
    (Claim("x", a={"loss": "m-LTM"}, b={"loss": "NT-Xent"}, metric="R@50"), KEYS,
     "run ('debsfx', 'm-LTM', 0.05, 0) has no numeric 'R@50' under 'test/plan/a2t'"),
])
def test_misstated_claims_are_named(claim, keys, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        verdict(make_records(0.08), claim, keys)


def test_claim_rejects_bad_sign_and_identical_sides():
    with pytest.raises(ValueError, match=re.escape("sign must be +1 (A higher) or -1")):
        Claim("x", a={"loss": "m-LTM"}, b={"loss": "NT-Xent"}, sign=0)
    with pytest.raises(ValueError, match="a and b are the same filter"):
        Claim("x", a={"loss": "m-LTM"}, b={"loss": "m-LTM"})


def test_paired_runs_on_different_queries_are_an_error():
    rec = make_records(0.08)
    queries = rec.runs[("debsfx", "NT-Xent", 0.05, 2)]["test"]["queries"]["a2t"]
    queries["clip"] = queries["clip"][::-1]
    with pytest.raises(ValueError, match=re.escape(
            "runs ('debsfx', 'm-LTM', 0.05, 2) and ('debsfx', 'NT-Xent', 0.05, 2) were evaluated "
            "on different test queries")):
        verdict(rec, CLAIM, KEYS)


def test_two_sided_needs_six_seeds():
    rec = make_records(0.08)
    v = verdict(rec, CLAIM, KEYS, two_sided=True)
    assert v.verdict == "undecided" and v.p_value == 2 / 32
    assert v.reason.startswith("5 seeds cannot give p < 0.05 (smallest exact p 0.0625)")
    assert verdict(make_records(0.08, seeds=range(6)), CLAIM, KEYS,
                   two_sided=True).verdict == "holds"


def test_cluster_by_chooses_the_query_metadata():
    rec = make_records(0.08)
    assert verdict(rec, CLAIM, KEYS, cluster_by="clip").n_clusters == N_QUERIES
    assert verdict(rec, CLAIM, KEYS, cluster_by=None).n_clusters == N_QUERIES
    v = verdict(rec, CLAIM, KEYS, cluster_by="scene")
    assert v.bootstrap is None and v.caveat == (
        "query-level interval unavailable: no query metadata 'scene' to cluster by "
        "(test/queries)")


def test_verdict_table_has_one_row_per_claim():
    rec = make_records(0.08)
    claims = [CLAIM, Claim("R@5 equal", a=CLAIM.a, b=CLAIM.b, metric="R@5")]
    table = verdict_table(rec, claims, KEYS)
    assert list(table["claim"]) == [c.label for c in claims]
    assert list(table["verdict"]) == ["holds", "undecided"]
    first = verdict(rec, CLAIM, KEYS)
    assert table.loc[0, "p_value"] == first.p_value
    assert (table.loc[0, "ci_low"], table.loc[0, "ci_high"]) == first.interval
    assert table.loc[0, "reference"] == "Table 2" and table.loc[0, "n_clusters"] == N_LABELS


def test_an_unfinished_recording_is_judged_on_the_seeds_both_sides_have():
    rec = make_records(0.08, seeds=range(5), seeds_b=[0, 1, 2, 5])
    v = verdict(rec, CLAIM, KEYS, incomplete="intersect")
    assert v.n_seeds == 3 and v.verdict == "undecided"
    assert v.reason.startswith("fewer than 5 seeds (3)")
    assert v.caveat == "3 unpaired runs left out (recording incomplete)"
    only = Records(provenance=rec.provenance)
    for key, res in rec.runs.items():
        if key[-1] in (0, 1, 2):
            only.add(key, res)
    same = verdict(only, CLAIM, KEYS)
    assert (same.effect, same.interval, same.p_value) == (v.effect, v.interval, v.p_value)
    # a seed is kept only when both sides have every stratum of it (here: both heads)
    two = Records()
    for key, res in rec.runs.items():
        for heads in ("pooled", "attention"):
            if not (key[1] == "NT-Xent" and key[-1] == 1 and heads == "attention"):
                two.add((*key[:-1], heads, key[-1]), res)
    v2 = verdict(two, CLAIM, ("dataset", "loss", "eps", "heads", "seed"), incomplete="intersect")
    # kept: seeds 0 and 2, both heads, both sides (8 of 17 runs)
    assert v2.n_seeds == 2 and "9 unpaired runs left out" in v2.caveat
    with pytest.raises(ValueError, match="incomplete='maybe': use 'raise' or 'intersect'"):
        verdict(rec, CLAIM, KEYS, incomplete="maybe")
    with pytest.raises(ValueError, match="nothing to compare yet"):
        verdict(make_records(0.08, seeds=[0, 1], seeds_b=[2, 3]), CLAIM, KEYS,
                incomplete="intersect")

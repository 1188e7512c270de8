"""mltm.claims: the paper's claims built from records, judged, and shown compactly."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mltm.claims import (CLAIM_BUILDERS, chosen_lr, compact, invariance_claims, judge,
                         mahalanobis_claims, noisy_claims, retrieval_claims, table8_claims,
                         zeroshot_claims)
from mltm.records import Records

LR = {"triplet": 1e-4, "NT-Xent": 3e-3, "contrastive + entropic": 1e-3, "m-LTM": 3e-4}


def metrics(value: float) -> dict:
    block = {"R@1": value, "R@5": value + 10}
    return {r: {"a2t": dict(block), "t2a": dict(block), "modality_gap": value / 100}
            for r in ("distance", "plan")}


def retrieval_records(seeds=range(5)) -> Records:
    rec = Records(provenance={"config": {"name": "cpu", "dataset": "S", "other": "I"}})
    rec.extra["lr_grid"] = [{"method": m, "lr": lr, "chosen": True, "val_r_sum": 1.0}
                            for m, lr in LR.items()]
    rec.extra["lr_grid"].append({"method": "m-LTM", "lr": 1e-3, "chosen": False, "val_r_sum": 0.5})
    for seed in seeds:
        for i, (m, lr) in enumerate(LR.items()):
            # m-LTM's value is 10 + seed; the baselines' 5 + i: m-LTM ahead on every seed
            value = 10.0 + seed if m == "m-LTM" else 5.0 + i
            rec.add(("S", m, 0.05, lr, seed), {"test": metrics(value),
                                               "transfer": metrics(value / 2)})
            if m != "contrastive + entropic":
                rec.add(("I", m, 0.05, lr, seed), {"test": metrics(value),
                                                   "transfer": metrics(value / 3)})
        rec.add(("S", "m-LTM", 0.1, LR["m-LTM"], seed), {"test": metrics(8.0)})
    rec.add(("S", "m-LTM", 0.05, 1e-3, 0), {"test": metrics(0.0)})  # a grid run: never paired
    return rec


def test_retrieval_claims_cover_every_table_and_judge_them():
    rec = retrieval_records()
    claims = retrieval_claims(rec)
    sizes = {g: len(c) for g, c in claims.groups.items()}
    assert sizes == {"Tables 2, 7": 12, "Table 2, second set": 4, "Table 4": 3,
                     "Tables 6, 8": 2, "Table 9": 8}
    tables = judge(claims, rec)
    t27 = tables["Tables 2, 7"].set_index("claim")
    row = t27.loc["S: m-LTM > NT-Xent, a2t R@1, plan"]
    # m-LTM 10..14, NT-Xent 6: mean difference 6, every seed ahead, exact p = 1/32
    assert row["verdict"] == "holds" and math.isclose(row["effect"], 6.0)
    assert math.isclose(row["p_value"], 1 / 32) and row["n_seeds"] == 5
    assert t27.loc["S: m-LTM > triplet, t2a R@1, distance", "reference"] == "Table 2"
    assert t27.loc["S: m-LTM > contrastive + entropic, t2a R@1, plan", "reference"] == "Table 7"
    # the gap claim has sign -1: m-LTM's larger gap is the reverse of the paper's claim
    gap = tables["Table 4"].set_index("claim").loc["S: m-LTM's gap < triplet's"]
    assert gap["verdict"] == "reversed" and gap["effect"] > 0
    eps = tables["Tables 6, 8"].set_index("claim")
    assert list(eps.index) == ["S: m-LTM at ε = 0.05 > at ε = 0.1, t2a R@1, plan",
                               "S: m-LTM at ε = 0.05 > at ε = 0.1, a2t R@1, plan"]
    assert eps["reference"].tolist() == ["Table 6", "Table 6"]
    t9 = tables["Table 9"].set_index("claim")
    # trained on I (m-LTM 10..14, NT-Xent 6), tested on S at a third of the value: (12 - 6) / 3
    assert math.isclose(t9.loc["I→S: m-LTM > NT-Xent, a2t R@1, plan", "effect"], 2.0)


def test_an_unfinished_recording_is_judged_on_its_complete_seeds():
    rec = retrieval_records(seeds=range(5))
    partial = Records(provenance=rec.provenance, extra=rec.extra)
    for key, res in rec.runs.items():
        if not (key[1] == "NT-Xent" and key[-1] >= 3):
            partial.add(key, res)
    row = judge(retrieval_claims(partial), partial)["Tables 2, 7"].set_index("claim").loc[
        "S: m-LTM > NT-Xent, a2t R@1, plan"]
    assert row["n_seeds"] == 3 and row["verdict"] == "undecided"
    assert row["reason"].startswith("fewer than 5 seeds (3)")
    assert "left out (recording incomplete)" in row["caveat"]


def test_claims_need_the_chosen_learning_rates():
    rec = retrieval_records()
    rec.extra.pop("lr_grid")
    with pytest.raises(ValueError, match="has not chosen its learning rates yet"):
        retrieval_claims(rec)
    assert chosen_lr(retrieval_records()) == LR


def test_zero_shot_mahalanobis_and_noisy_claims_name_their_runs():
    zs = Records(extra={"lr_grid": [{"method": m, "lr": 1e-3, "chosen": True}
                                    for m in ("triplet", "NT-Xent", "m-LTM")]})
    for m in ("triplet", "NT-Xent", "m-LTM"):
        zs.add((m, 1e-3, 0), {"zeroshot": {"Tux Paint": {}, "EduSounds": {}}})
    groups = zeroshot_claims(zs).groups
    assert len(groups["Table 3"]) == 8 and len(groups["Table 4"]) == 4
    assert groups["Table 3"][0].path == ("zeroshot", "Tux Paint", "metrics", "plan")

    mah = Records()
    for v in ("Euclidean", "diagonal", "full"):
        mah.add((v, 0), {})
    labels = [c.label for c in mahalanobis_claims(mah).groups["Table 6 (metric)"]]
    assert labels[:2] == ["diagonal > Euclidean, t2a R@1, plan",
                          "diagonal > Euclidean, a2t R@1, plan"] and len(labels) == 8

    noisy = Records()
    for xi in (0.2, 0.4):
        for m in ("m-LTM", "NT-Xent", "triplet", "m-LTM + POT (s=0.8)", "m-LTM + POT (s=0.6)"):
            noisy.add((xi, m, 0), {})
    g = noisy_claims(noisy).groups
    assert len(g["Table 5"]) == 2 * 2 * 3 and len(g["Figure 2"]) == 2 * 2 * 2
    assert g["Table 5"][0].a == {"xi": 0.2, "method": "m-LTM + POT (s=0.8)"}


def test_invariance_claims_judge_the_recorded_analysis():
    rec = Records()
    models = ("NT-Xent", "m-LTM (full M)", "m-LTM (M = I)", "centre", "penalty",
              "softmax (half-step)")
    for seed in range(5):
        for i, m in enumerate(models):
            # centre 2 + seed points above plain m-LTM by distance a2t; penalty 1 point below;
            # the half-step 0.5 above on t2a on every seed; m-LTM gaps 0.1 below NT-Xent's
            a2t = {"centre": 12.0 + seed, "penalty": 9.0}.get(m, 10.0)
            t2a = 10.5 if m == "softmax (half-step)" else 10.0
            gap = 0.5 if m == "NT-Xent" else 0.4
            rec.add((m, seed), {"analysis": {
                "recall": {"distance": {"a2t": a2t, "t2a": t2a}, "plan": {"a2t": 1.0, "t2a": 1.0}},
                "gap": {"final": {"gap": gap}, "init": {"gap": 1.0}}}})
    claims = invariance_claims(rec)
    assert CLAIM_BUILDERS["invariance"] is invariance_claims
    assert [c.label for c in claims.groups["gauge fixing"]] == [
        "centre: a2t R@1 by distance above plain m-LTM",
        "penalty: a2t R@1 by distance above plain m-LTM"]  # only the variants recorded
    assert len(claims.groups["training normalisation"]) == 1
    tables = judge(claims, rec)
    gauge = tables["gauge fixing"].set_index("claim")
    assert gauge["verdict"].tolist() == ["holds", "reversed"]
    assert gauge["effect"].tolist() == pytest.approx([4.0, -1.0])  # mean of 2 + seed; -1
    assert gauge["p_value"].iloc[0] == pytest.approx(1 / 32)  # all five seeds agree
    norm = tables["training normalisation"]
    assert norm["verdict"].tolist() == ["holds"] and norm["effect"].iloc[0] == pytest.approx(0.5)
    gap = tables["Table 4 (gap)"]
    assert gap["verdict"].tolist() == ["holds", "holds"]  # sign -1: a smaller gap is the claim
    assert gap["effect"].tolist() == pytest.approx([-0.1, -0.1])
    assert set(gap["reference"]) == {"Table 4"}


def test_compact_shows_na_where_one_seed_gives_no_interval():
    rec = retrieval_records(seeds=[0])
    t = compact(judge(retrieval_claims(rec), rec)["Table 4"])
    assert set(t["95% CI"]) == {"n/a"} and set(t["seeds"]) == {1}
    assert all(w.startswith("fewer than 5 seeds (1)") for w in t["why undecided"])
    assert not np.isnan(t["effect"]).any()


def test_table8_claims_score_a_non_finite_model_at_chance():
    chance = {"a2t": {"R@1": 1.25}, "t2a": {"R@1": 1.25}}
    rec = Records()
    for seed in range(5):
        for eps in (0.01, 0.05):
            if eps == 0.01:  # the float64 released arm runs in the collapse region only
                rec.add(("released-f64", eps, seed), {"test": {"plan": {
                    "a2t": {"R@1": 15.0}, "t2a": {"R@1": 15.0}}}, "chance": chance})
            # released float32 collapses at 0.01 (no test metrics) and trains at 0.05
            rec.add(("released-f32", eps, seed), {"test": {} if eps == 0.01 else {
                "plan": {"a2t": {"R@1": 15.0 + seed}, "t2a": {"R@1": 14.0}}}, "chance": chance})
            rec.add(("stable-max", eps, seed), {"test": {"plan": {
                "a2t": {"R@1": 16.0}, "t2a": {"R@1": 14.0 + seed}}}, "chance": chance})
    claims = table8_claims(rec)
    t = judge(claims, rec)["Table 8 (numerics)"].set_index("claim")
    assert list(t.index) == [f"ε=0.01: {w} f64 > released f32, {d} R@1"
                             for w in ("released", "log-domain") for d in ("t2a", "a2t")]
    row = t.loc["ε=0.01: log-domain f64 > released f32, a2t R@1"]
    assert row["verdict"] == "holds" and math.isclose(row["effect"], 16.0 - 1.25)
    assert math.isclose(t.loc["ε=0.01: released f64 > released f32, t2a R@1", "effect"],
                        15.0 - 1.25)
    # ε = 0.05 is outside the collapse region (no float64 released run there): no claim
    assert not any("0.05" in c for c in t.index)
    assert rec.runs["released-f32", 0.01, 0]["test"] == {}  # the records are not changed

"""EvalSet caption texts and evaluate_embeddings' per-query outcomes with their metadata."""

from __future__ import annotations

import dataclasses
import json
import pickle

import numpy as np
import pytest
import torch

from mltm.data import read_manifest
from mltm.evaluation import EvalSet, evaluate_embeddings
from mltm.losses import build_loss
from mltm.train import Trainer

from tests.core.test_train import small_config

F64 = torch.float64


def _toy_evalset() -> EvalSet:
    # 3 clips (2 labelled "dog", 1 "rain"), 5 captions, one caption text used twice.
    return EvalSet(audio=torch.zeros(3, 2), text=torch.zeros(5, 2),
                   caption_clip=torch.tensor([0, 0, 1, 2, 2]), labels=["dog", "dog", "rain"],
                   clip_ids=["c0", "c1", "c2"],
                   captions=["a dog barks", "barking", "a dog barks", "rain", "rain falls"])


def _embeddings(seed=0, d=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, d, generator=g, dtype=F64), torch.randn(5, d, generator=g, dtype=F64)


def test_per_query_outcomes_carry_clip_labels_and_ids():
    es = _toy_evalset()
    audio, text = _embeddings()
    loss = build_loss("ntxent", dim=4)
    m = evaluate_embeddings(audio, text, es.caption_clip, loss, rank_by="distance", eps=0.05,
                            evalset=es, per_query=True)
    assert m["num_distinct_captions"] == 4 and m["distinct_captions_by"] == "text"
    assert m["ties"] == "expected"
    a2t, t2a = m["queries"]["a2t"], m["queries"]["t2a"]
    assert a2t["clip"] == [0, 1, 2] and a2t["label"] == ["dog", "dog", "rain"]
    assert a2t["clip_id"] == ["c0", "c1", "c2"]
    assert t2a["clip"] == [0, 0, 1, 2, 2] and t2a["label"] == ["dog", "dog", "dog", "rain", "rain"]
    assert t2a["clip_id"] == ["c0", "c0", "c1", "c2", "c2"]
    assert t2a["caption_group"] == [0, 1, 0, 2, 3]
    for d, n in (("a2t", 3), ("t2a", 5)):
        assert len(m[d]["per_query"]["rank"]) == n
        assert m[d]["R@1"] == 100.0 * float(np.mean(m[d]["per_query"]["R@1"]))
    json.dumps(m)  # the whole result is JSON-serialisable
    # Without per_query: no lists; without an EvalSet: distinct captions by embedding row.
    plain = evaluate_embeddings(audio, text, es.caption_clip, loss, rank_by="distance", eps=0.05)
    assert "queries" not in plain and plain["distinct_captions_by"] == "embedding"
    assert plain["num_distinct_captions"] == 5
    for d in ("a2t", "t2a"):
        assert plain[d] == {key: v for key, v in m[d].items() if key != "per_query"}


def test_evalset_must_match_caption_clip():
    es = _toy_evalset()
    audio, text = _embeddings()
    with pytest.raises(ValueError, match="evalset.caption_clip differs from caption_clip: pass "
                                         "the EvalSet the embeddings were projected from"):
        evaluate_embeddings(audio, text, torch.tensor([0, 1, 1, 2, 2]), build_loss("ntxent", dim=4),
                            rank_by="distance", eps=0.05, evalset=es)


def test_an_evalset_without_captions_still_evaluates():
    # An EvalSet pickled before it kept caption texts has no "captions" attribute: unpickled,
    # it reads the class default (None) and the distinct captions are counted by embedding.
    old = _toy_evalset()
    del old.__dict__["captions"]
    es = pickle.loads(pickle.dumps(old))
    assert es.captions is None
    audio, text = _embeddings(1)
    m = evaluate_embeddings(audio, text, es.caption_clip, build_loss("triplet", dim=4),
                            rank_by="plan", eps=0.1, evalset=es, per_query=True)
    assert m["distinct_captions_by"] == "embedding"
    assert m["queries"]["t2a"]["label"][2] == "dog"
    assert dataclasses.replace(es, audio=es.audio).captions is None


def test_encode_split_keeps_the_caption_texts(data_root, tmp_path):
    # The debsfx-ci test split: caption texts in manifest order, one per text row; on DebSFX
    # captions repeat, so the strings are fewer than the captions.
    es = Trainer(small_config(data_root, tmp_path)).evalset("test")
    records = {r.clip_id: r for r in read_manifest(data_root / "debsfx-ci" / "test.jsonl")}
    want = [c for cid in es.clip_ids for c in records[cid].captions]
    assert es.captions == want and len(es.captions) == es.text.shape[0]
    assert es.caption_clip.tolist() == [i for i, cid in enumerate(es.clip_ids)
                                        for _ in records[cid].captions]
    g = torch.Generator().manual_seed(0)
    proj_a = torch.randn(es.audio.shape[-1], 8, generator=g, dtype=F64)
    proj_t = torch.randn(es.text.shape[-1], 8, generator=g, dtype=F64)
    m = evaluate_embeddings(es.audio.double() @ proj_a, es.text.double() @ proj_t,
                            es.caption_clip, build_loss("ntxent", dim=8), rank_by="distance",
                            eps=0.05, evalset=es, per_query=True)
    assert m["num_distinct_captions"] == len(set(es.captions)) < len(es.captions)
    assert m["queries"]["a2t"]["clip_id"] == es.clip_ids


def test_per_query_outcomes_feed_the_verdict_helper():
    # Results laid out as a trainer would store them (queries once per split, beside the
    # rankings) are what mltm.verdicts reads: its bootstrap runs over every a2t query,
    # clustered by label, and its effect is the difference of the summary R@1.
    from mltm.records import Records
    from mltm.verdicts import Claim, verdict

    es = _toy_evalset()
    loss = build_loss("ntxent", dim=4)
    rec = Records(provenance={"config": {"name": "test"}})
    r1 = {}
    for method, noise in (("good", 0.3), ("bad", 3.0)):
        for seed in range(5):
            g = torch.Generator().manual_seed(seed)
            audio = torch.randn(3, 4, generator=g, dtype=F64)
            text = audio[es.caption_clip] + noise * torch.randn(5, 4, generator=g, dtype=F64)
            m = evaluate_embeddings(audio, text, es.caption_clip, loss, rank_by="distance",
                                    eps=0.05, evalset=es, per_query=True)
            queries = m.pop("queries")
            rec.add(("toy", method, seed), {"test": {"distance": m, "queries": queries}})
            r1[method, seed] = m["a2t"]["R@1"]
    claim = Claim("good beats bad", a={"method": "good"}, b={"method": "bad"}, metric="R@1",
                  direction="a2t", ranking="distance")
    v = verdict(rec, claim, key_names=("dataset", "method", "seed"), n_resamples=200)
    assert v.n_queries == 3 and v.n_clusters == 2 and v.caveat == ""
    assert v.effect == pytest.approx(np.mean([r1["good", s] - r1["bad", s] for s in range(5)]))

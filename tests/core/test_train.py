"""Training and evaluation end to end on the CI dataset (fast path: frozen encoders)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from mltm.config import TrainConfig, config_from_dict, load_config, save_config
from mltm.eval import main as eval_main
from mltm.train import Trainer, load_checkpoint

from tests._assets import REPO, require
from tests.core.conftest import debsfx_ci_config


def small_config(data_root: Path, out: Path, **overrides) -> TrainConfig:
    return debsfx_ci_config(data_root, out, epochs=6, **overrides, loss={
        "name": "mltm", "eps": 0.05, "sinkhorn_tol": 1e-5, "metric": {"kind": "full"}})


@pytest.fixture(scope="module")
def shared_evalsets(data_root, tmp_path_factory):
    """Encoder outputs of train/val/test computed once for the module (and cached on disk)."""
    t = Trainer(small_config(data_root, tmp_path_factory.mktemp("warm")))
    return {s: t.evalset(s) for s in ("train", "val", "test")}, t.encoders()


def run(cfg, shared, resume=False):
    evalsets, encoders = shared
    return Trainer(cfg, evalsets=evalsets, encoders=encoders).run(resume=resume)


def test_config_yaml_round_trip_and_errors(tmp_path):
    cfg = config_from_dict({"loss": {"name": "ntxent", "metric": {"kind": "diagonal"}},
                            "optim": {"lr": "1e-3"}})
    assert cfg.optim.lr == 1e-3 and cfg.loss.metric.kind == "diagonal"
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg
    assert load_config(tmp_path / "c.yaml",
                       ["optim.batch_size=16", "loss.eps=0.1"]).optim.batch_size == 16
    with pytest.raises(ValueError) as e:
        config_from_dict({"optim": {"learning_rate": 1}})
    assert str(e.value) == ("unknown config key(s) optim.learning_rate; valid keys of optim: amp, "
                            "batch_size, encoder_lr, epochs, grad_clip, lr, max_steps_per_epoch, "
                            "metric_lr, weight_decay")
    with pytest.raises(ValueError) as e:
        config_from_dict({"optim": {"lr": "fast"}})
    assert str(e.value) == "config key optim.lr: expected float, got 'fast'"


def chance_a2t_r1(es) -> float:
    counts = torch.bincount(es.caption_clip).double()
    return float((counts / len(es.caption_clip)).mean()) * 100


def test_end_to_end_loss_falls_and_recall_beats_chance(data_root, shared_evalsets, tmp_path):
    res = run(small_config(data_root, tmp_path), shared_evalsets)
    hist = json.loads((tmp_path / "history.json").read_text())
    assert len(hist) == 6 and hist[-1]["train_loss"] < 0.8 * hist[0]["train_loss"]
    test_es = shared_evalsets[0]["test"]
    n_clips = test_es.audio.shape[0]
    for rank_by in ("distance", "plan"):
        m = res["test"][rank_by]
        assert m["a2t"]["R@1"] > 4 * chance_a2t_r1(test_es), (rank_by, m["a2t"])
        assert m["t2a"]["R@1"] > 2.5 * 100 / n_clips, (rank_by, m["t2a"])
        assert m["t2a"]["R@10"] > 3 * 1000 / n_clips
    assert res["provenance"]["commit"] and res["provenance"]["device"]
    assert (tmp_path / "metrics.csv").read_text().count("\n") == 7  # header + 6 epochs
    cfg, model, loss, ckpt = load_checkpoint(tmp_path / "best.pt", with_encoders=False)
    assert ckpt["epoch"] == res["best_epoch"] and cfg.loss.metric.kind == "full"
    assert loss.cost.min_eigenvalue_of_matrix() >= -1e-5  # M stayed PSD


def test_resume_continues_exactly(data_root, shared_evalsets, tmp_path):
    straight = tmp_path / "straight"
    run(small_config(data_root, straight, **{"optim.epochs": 4}), shared_evalsets)
    split = tmp_path / "split"
    run(small_config(data_root, split, **{"optim.epochs": 2}), shared_evalsets)
    run(small_config(data_root, split, **{"optim.epochs": 4}), shared_evalsets, resume=True)
    a = torch.load(straight / "last.pt", weights_only=False)
    b = torch.load(split / "last.pt", weights_only=False)
    assert a["epoch"] == b["epoch"] == 3
    for part in ("model", "loss"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert strip(a["history"]) == strip(b["history"])
    with pytest.raises(ValueError) as e:
        run(small_config(data_root, split, **{"optim.epochs": 4, "optim.lr": 0.1}), shared_evalsets,
            resume=True)
    assert "was written by a different config" in str(e.value)


@pytest.mark.parametrize("name", ["mltm_partial", "ntxent", "triplet", "contrastive_entropic"])
def test_every_baseline_trains(name, data_root, shared_evalsets, tmp_path):
    res = run(small_config(data_root, tmp_path, **{"loss.name": name, "optim.epochs": 2}),
              shared_evalsets)
    hist = json.loads((tmp_path / "history.json").read_text())
    assert all(math.isfinite(r["train_loss"]) for r in hist)
    assert res["test"]["distance"]["t2a"]["R@10"] > 0


def test_eval_cli_matches_training_results_and_zero_shot(data_root, shared_evalsets, tmp_path,
                                                         capsys):
    res = run(small_config(data_root, tmp_path / "run", **{"optim.epochs": 2}), shared_evalsets)
    out = tmp_path / "eval.json"
    assert eval_main(["--checkpoint", str(tmp_path / "run" / "best.pt"), "--manifest",
                      str(data_root / "debsfx-ci" / "test.jsonl"), "--out", str(out)]) == 0
    ev = json.loads(out.read_text())
    for rank_by in ("distance", "plan"):  # best.pt: the checkpoint the distance ranking chose
        for d in ("a2t", "t2a"):
            for k in ("R@1", "R@5", "R@10", "medR"):
                assert math.isclose(ev["metrics"][rank_by][d][k],
                                    res["test_cross"]["distance_selected"][rank_by][d][k],
                                    rel_tol=1e-6), (rank_by, d, k)
    zs = tmp_path / "zs.json"
    require(data_root / "tuxpaint-zs" / "test.jsonl", "the tuxpaint-zs dataset")
    assert eval_main(["--checkpoint", str(tmp_path / "run" / "best.pt"), "--manifest",
                      str(data_root / "tuxpaint-zs" / "test.jsonl"), "--zeroshot", "--tsne",
                      "--out", str(zs)]) == 0
    z = json.loads(zs.read_text())
    assert z["metrics"]["distance"]["num_classes"] == len(z["classes"]) > 10
    assert 0 <= z["metrics"]["plan"]["accuracy"] <= 100
    assert len(z["tsne"]["audio"]) == z["num_clips"] and len(z["tsne"]["text"]) == len(z["classes"])
    assert '"task": "zeroshot"' in capsys.readouterr().out


def test_zero_shot_per_query_outcomes_feed_a_clustered_verdict(data_root, shared_evalsets,
                                                                 tmp_path):
    from mltm.eval import evaluate_checkpoint
    from mltm.records import Records
    from mltm.verdicts import Claim, verdict

    require(data_root / "tuxpaint-zs" / "test.jsonl", "the tuxpaint-zs dataset")
    manifest = data_root / "tuxpaint-zs" / "test.jsonl"
    rec = Records()
    for name in ("mltm", "ntxent"):
        run(small_config(data_root, tmp_path / name, **{"optim.epochs": 1, "loss.name": name}),
            shared_evalsets)
        z = evaluate_checkpoint(tmp_path / name / "best.pt", manifest, zeroshot=True,
                                per_query=True, device="cpu")
        plain = evaluate_checkpoint(tmp_path / name / "best.pt", manifest, zeroshot=True,
                                    device="cpu")
        for r in ("distance", "plan"):
            hits = z["metrics"][r]["per_query"]["R@1"]
            assert len(hits) == z["num_clips"]
            # the accuracy is the mean of the clips' expected hits, and unchanged by per_query
            assert math.isclose(100 * sum(hits) / len(hits), z["metrics"][r]["accuracy"],
                                rel_tol=1e-9)
            assert z["metrics"][r]["accuracy"] == plain["metrics"][r]["accuracy"]
        assert z["metrics"]["queries"]["label"] == [
            json.loads(line)["label"] for line in manifest.read_text().splitlines()]
        rec.add((name, 0), {"zeroshot": {"tux": z}})
    v = verdict(rec, Claim("m-LTM > NT-Xent zero-shot", a={"loss": "mltm"}, b={"loss": "ntxent"},
                           metric="accuracy", direction=None, ranking="plan",
                           split=("zeroshot", "tux", "metrics")),
                ("loss", "seed"), min_seeds=1)
    assert v.caveat == "" and v.n_clusters == len(set(rec.runs["mltm", 0]["zeroshot"]["tux"]
                                                      ["metrics"]["queries"]["label"]))
    acc = {n: rec.runs[n, 0]["zeroshot"]["tux"]["metrics"]["plan"]["accuracy"]
           for n in ("mltm", "ntxent")}
    assert math.isclose(v.effect, acc["mltm"] - acc["ntxent"], abs_tol=1e-9)


def test_bad_checkpoint_is_rejected(tmp_path):
    bad = tmp_path / "x.pt"
    torch.save({"weights": 1}, bad)
    with pytest.raises(ValueError) as e:
        load_checkpoint(bad)
    assert str(e.value) == (f"not an mltm checkpoint: {bad}: no 'format' field, expected format "
                            f"'mltm-checkpoint/2'")


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_parse(path):
    cfg = load_config(path)
    assert cfg.loss.name == "mltm" and cfg.optim.batch_size >= 2


def test_end_to_end_fine_tuning_path_runs(data_root, tmp_path):
    """The paper's setting (encoders fine-tuned) on waveforms, cut to two steps on a CPU."""
    cfg = small_config(data_root, tmp_path, **{
        "model.freeze_audio": False, "model.freeze_text": False, "optim.batch_size": 4,
        "optim.epochs": 1, "optim.max_steps_per_epoch": 2, "data.max_seconds": 1.0})
    before = {k: v.clone() for k, v in Trainer(cfg).encoders()[0].state_dict().items()}
    res = Trainer(cfg).run()
    ckpt = torch.load(tmp_path / "last.pt", weights_only=False)
    assert ckpt["history"][0]["steps"] == 2
    tuned = {k[len("audio_encoder."):]: v for k, v in ckpt["model"].items()
             if k.startswith("audio_encoder.")}
    assert tuned, "fine-tuned encoder weights must be in the checkpoint"
    assert any(not torch.equal(tuned[k], before[k]) for k in tuned if k in before)
    assert math.isfinite(res["test"]["plan"]["a2t"]["R@1"])

"""Selection by the reported ranking, the learned NT-Xent temperature in training, and the
share of capped Sinkhorn solves (debsfx-ci, fast path)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from mltm.checkpoint import read_checkpoint
from mltm.evaluation import evaluate_embeddings, project_evalset
from mltm.train import Selection, Trainer, load_checkpoint, summary
from tests.core.conftest import debsfx_ci_config

RANKINGS = ("distance", "plan")


def config(data_root: Path, out: Path, **overrides):
    return debsfx_ci_config(data_root, out, loss={"name": "ntxent"}, epochs=3, **overrides)


@pytest.fixture(scope="module")
def shared(data_root, tmp_path_factory):
    t = Trainer(config(data_root, tmp_path_factory.mktemp("warm")))
    return {"evalsets": t.evalsets(), "encoders": t.encoders()}


def column(ranking: str) -> str:
    return "val_r_sum" if ranking == "distance" else f"val_{ranking}_r_sum"


def first_argmax(values) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))


# -- Selection alone ------------------------------------------------------------------------


def test_selection_keeps_the_first_best_epoch_of_each_ranking():
    sel = Selection("r_sum", ["distance", "plan"])
    best = sel.initial()
    rows = [{"epoch": 0, "train_loss": 3.0, "val_r_sum": 10.0, "val_plan_r_sum": 50.0},
            {"epoch": 1, "train_loss": 2.0, "val_r_sum": 30.0, "val_plan_r_sum": 40.0},
            {"epoch": 2, "train_loss": 1.0, "val_r_sum": 30.0, "val_plan_r_sum": 60.0}]
    assert [sel.update(best, r) for r in rows] == [["distance", "plan"], ["distance"], ["plan"]]
    assert best == {"distance": {"epoch": 1, "score": 30.0}, "plan": {"epoch": 2, "score": 60.0}}
    assert sel.files("distance") == ("best_distance.pt", "best.pt")
    assert sel.files("plan") == ("best_plan.pt",)
    assert sel.selector_of("plan") == "plan" and sel.test_rankings() == RANKINGS
    only_plan = Selection("r_sum", ["plan"])
    assert only_plan.files("plan") == ("best_plan.pt", "best.pt")
    assert only_plan.selector_of("distance") == "plan"
    by_loss = Selection("loss", ["distance", "plan"])
    best = by_loss.initial()
    for r in rows:
        by_loss.update(best, r)
    assert best == {"loss": {"epoch": 2, "score": -1.0}} and by_loss.files("loss") == ("best.pt",)
    assert by_loss.selector_of("distance") == by_loss.selector_of("plan") == "loss"


@pytest.mark.parametrize("select_by, rankings, message", [
    ("recall", ["distance"], "eval.select_by 'recall': use 'r_sum' or 'loss'"),
    ("r_sum", [], "eval.rankings []: give a non-empty list of rankings, e.g. [distance, plan]"),
    ("r_sum", "plan", "eval.rankings 'plan': give a non-empty list of rankings, e.g. "
                      "[distance, plan]"),
    ("r_sum", ["distance", "cosine"], "eval.rankings: unknown ranking(s) 'cosine'; use any of "
                                      "distance, plan, csls, inverted_softmax"),
    ("r_sum", ["plan_reference"], "eval.rankings: unknown ranking(s) 'plan_reference'; use any "
                                  "of distance, plan, csls, inverted_softmax"),
    ("r_sum", ["plan", "plan"], "eval.rankings ['plan', 'plan'] names a ranking twice; list "
                                "each once"),
])
def test_bad_selection_settings_name_the_fix(select_by, rankings, message):
    with pytest.raises(ValueError) as e:
        Selection(select_by, rankings)
    assert str(e.value) == message


def test_checkpoints_from_before_per_ranking_selection():
    legacy = {"epoch": 3, "score": 42.0}
    path = Path("runs/x/last.pt")
    assert Selection("r_sum", ["distance"]).from_checkpoint(legacy, path) == {"distance": legacy}
    assert Selection("loss", ["distance", "plan"]).from_checkpoint(legacy, path) == {
        "loss": legacy}
    with pytest.raises(ValueError) as e:
        Selection("r_sum", ["distance", "plan"]).from_checkpoint(legacy, path)
    assert str(e.value) == (f"--resume: {path} was written before per-ranking selection "
                            "(eval.rankings) and cannot say which epoch the rankings plan "
                            "select; retrain in a new out_dir")


# -- training runs --------------------------------------------------------------------------


def without_per_query(metrics: dict) -> dict:
    """A ranking's test metrics as ``test_cross`` keeps them: the summaries, no per-query lists."""
    return {k: {kk: vv for kk, vv in v.items() if kk != "per_query"} if isinstance(v, dict)
            else v for k, v in metrics.items()}


def test_each_ranking_is_tested_with_the_checkpoint_it_selected(data_root, shared, tmp_path):
    cfg = config(data_root, tmp_path)
    res = Trainer(cfg, **shared).run()
    hist = json.loads((tmp_path / "history.json").read_text())
    epochs = {r: first_argmax([row[column(r)] for row in hist]) for r in RANKINGS}
    assert epochs["distance"] != epochs["plan"], "pick a seed whose rankings select differently"
    test_es = shared["evalsets"]["test"]
    for r in RANKINGS:
        sel = res["selection"][r]
        assert sel == {"selected_by": r, "best_epoch": epochs[r], "checkpoint": f"best_{r}.pt"}
        _, model, loss, ckpt = load_checkpoint(tmp_path / sel["checkpoint"], with_encoders=False)
        assert ckpt["epoch"] == epochs[r]
        a, t = project_evalset(model, test_es, "cpu")
        for ranking in RANKINGS:  # every ranking of this checkpoint, evaluated afresh
            again = evaluate_embeddings(a, t, test_es.caption_clip, loss, rank_by=ranking,
                                        eps=cfg.eval.plan_eps, evalset=test_es, per_query=True)
            queries = again.pop("queries")
            # test_cross keeps the summaries; the reported entry keeps the per-query outcomes
            assert res["test_cross"][f"{r}_selected"][ranking] == without_per_query(again), \
                (r, ranking)
            if ranking == r:
                assert res["test"][r] == again and res["test"]["queries"] == queries
    assert res["test"]["plan"] != res["test_cross"]["distance_selected"]["plan"]
    best = read_checkpoint(tmp_path / "best.pt")  # best.pt: the distance-selected checkpoint
    assert best["epoch"] == res["best_epoch"] == epochs["distance"]
    assert res["best_val"] == hist[epochs["distance"]]
    assert read_checkpoint(tmp_path / "last.pt")["best"] == {
        r: {"epoch": epochs[r], "score": hist[epochs[r]][column(r)]} for r in RANKINGS}
    assert res["sinkhorn"] is None  # NT-Xent solves no plan
    assert summary(res)["plan_best_epoch"] == epochs["plan"]
    assert summary(res)["test_plan_a2t_R@1"] == res["test"]["plan"]["a2t"]["R@1"]


def test_selection_by_loss_shares_one_checkpoint(data_root, shared, tmp_path):
    res = Trainer(config(data_root, tmp_path, **{"eval.select_by": "loss"}), **shared).run()
    hist = json.loads((tmp_path / "history.json").read_text())
    epoch = first_argmax([-row["train_loss"] for row in hist])
    assert not (tmp_path / "best_distance.pt").exists() and not (tmp_path / "best_plan.pt").exists()
    assert read_checkpoint(tmp_path / "best.pt")["epoch"] == epoch == res["best_epoch"]
    for r in RANKINGS:
        assert res["selection"][r] == {"selected_by": "loss", "best_epoch": epoch,
                                       "checkpoint": "best.pt"}
        assert without_per_query(res["test"][r]) == res["test_cross"]["loss_selected"][r]
        assert len(res["test"][r]["a2t"]["per_query"]["R@1"]) == res["test_clips"]
    assert "val_plan_r_sum" in hist[0]  # every ranking is still validated and recorded


def test_only_the_listed_rankings_are_validated(data_root, shared, tmp_path):
    res = Trainer(config(data_root, tmp_path, **{"eval.rankings": ["plan"], "optim.epochs": 1}),
                  **shared).run()
    row = json.loads((tmp_path / "history.json").read_text())[0]
    assert "val_plan_r_sum" in row and "val_r_sum" not in row and "val_a2t_R@1" not in row
    assert sorted(p.name for p in tmp_path.glob("best*.pt")) == ["best.pt", "best_plan.pt"]
    assert res["selection"]["distance"] == {"selected_by": "plan", "best_epoch": 0,
                                            "checkpoint": "best_plan.pt"}


def test_learned_temperature_trains_and_resumes_exactly(data_root, shared, tmp_path):
    over = {"loss.learnable_temperature": True, "optim.lr": 3e-3}
    straight, split = tmp_path / "straight", tmp_path / "split"
    res = Trainer(config(data_root, straight, **over), **shared).run()
    Trainer(config(data_root, split, **over, **{"optim.epochs": 1}), **shared).run()
    res_split = Trainer(config(data_root, split, **over), **shared).run(resume=True)

    hist = json.loads((straight / "history.json").read_text())
    last = read_checkpoint(straight / "last.pt")
    scale = last["loss"]["logit_scale"]
    assert hist[-1]["temperature"] == float(torch.exp(-scale))
    assert len({row["temperature"] for row in hist} | {0.07}) == 4  # it moved every epoch
    _, _, loss, _ = load_checkpoint(straight / "best_plan.pt", with_encoders=False)
    assert loss.learnable_temperature and loss.logit_scale.dtype == torch.float64

    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    for name in ("last.pt", "best_distance.pt", "best_plan.pt", "best.pt"):
        a, b = read_checkpoint(straight / name), read_checkpoint(split / name)
        assert a["epoch"] == b["epoch"] and a["best"] == b["best"], name
        assert strip(a["history"]) == strip(b["history"]), name
        for part in ("model", "loss"):
            assert a[part].keys() == b[part].keys()
            assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), (name, part)
        assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
        for i, state in a["optimizer"]["state"].items():
            assert all(torch.equal(v, b["optimizer"]["state"][i][k]) for k, v in state.items())
    for key in ("test", "test_cross", "selection"):
        assert res[key] == res_split[key], key


@pytest.mark.parametrize("max_iter, share", [(2, 1.0), (100_000, 0.0)])
def test_share_of_capped_sinkhorn_solves(data_root, shared, tmp_path, max_iter, share):
    cfg = config(data_root, tmp_path, **{
        "loss.name": "mltm", "loss.sinkhorn_max_iter": max_iter, "loss.sinkhorn_tol": 1e-9,
        "optim.epochs": 2, "optim.max_steps_per_epoch": 2})
    res = Trainer(cfg, **shared).run()
    hist = json.loads((tmp_path / "history.json").read_text())
    assert [row["steps"] for row in hist] == [2, 2]
    assert res["sinkhorn"] == {"max_iter": max_iter, "tol": 1e-9, "solves": 4,
                               "capped": round(4 * share), "capped_share": share}
    assert summary(res)["sinkhorn_capped_share"] == share
    assert math.isfinite(res["test"]["plan"]["a2t"]["R@1"])

"""mltm.experiments: encode once, run a grid resumably, record, tabulate, show beside a record."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from mltm.experiments import (
    EncodedDataset,
    Experiment,
    RepoPaths,
    encode_dataset,
    evaluate_selected,
    initial_model,
    records_frame,
    repo_paths,
    train_config,
    training_pairs,
)
from mltm.checkpoint import read_checkpoint
from mltm.records import Records
from mltm.train import build_loss_from_config

from tests._assets import REPO

SETTINGS = {"dataset": "debsfx-ci", "seeds": (0, 1), "epochs": 2}
KEY_NAMES = ("dataset", "method", "seed")


def config(data_root: Path, loss: str = "ntxent", seed: int = 0, **data):
    return train_config(data_root / "debsfx-ci", loss={"name": loss, "eps": 0.05,
                                                       "sinkhorn_max_iter": 30},
                        seed=seed, joint_dim=16, hidden_dim=32, batch_size=32, epochs=2,
                        data=data or None)


@pytest.fixture(scope="module")
def encoded(data_root) -> EncodedDataset:
    return encode_dataset(config(data_root))


def fake_repo(tmp_path: Path, data_root: Path) -> RepoPaths:
    (tmp_path / "_toc.yml").write_text("root: intro\n")
    return RepoPaths(root=tmp_path, data=data_root)


# -- paths and configs -------------------------------------------------------------------------


def test_repo_paths_finds_the_root_from_a_chapter_folder_and_honours_mltm_data(monkeypatch,
                                                                             tmp_path):
    monkeypatch.delenv("MLTM_DATA", raising=False)
    paths = repo_paths(REPO / "book" / "chapters")
    assert paths == RepoPaths(root=REPO, data=REPO / "data")
    assert paths.results == REPO / "results"
    monkeypatch.setenv("MLTM_DATA", str(tmp_path))
    assert repo_paths(REPO / "book" / "golden").data == tmp_path


def test_repo_paths_outside_a_repository_says_so(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        repo_paths(tmp_path)
    assert str(e.value) == (f"no _toc.yml in {tmp_path.resolve()} or any folder above it: run "
                            "the chapter from inside the mltm repository")


def test_train_config_is_the_fast_path_without_progress_bar(tmp_path):
    cfg = train_config(tmp_path, loss={"name": "mltm", "metric": {"kind": "diagonal"}}, seed=3,
                       joint_dim=8, hidden_dim=16, batch_size=4, epochs=1, lr=5e-4,
                       data={"noise": 0.2, "noise_seed": 0})
    assert cfg.data.dataset == str(tmp_path) and cfg.data.noise == 0.2
    assert cfg.loss.metric.kind == "diagonal" and cfg.optim.lr == 5e-4 and cfg.seed == 3
    assert cfg.model.freeze_audio and cfg.model.freeze_text and cfg.progress is False


def test_encode_dataset_refuses_fine_tuned_encoders(data_root):
    cfg = config(data_root)
    cfg.model.freeze_audio = False
    with pytest.raises(ValueError) as e:
        encode_dataset(cfg)
    assert str(e.value) == ("encode_dataset needs frozen encoders (model.freeze_audio and "
                            "model.freeze_text); a fine-tuned encoder's outputs change every "
                            "step")


# -- the grid runner ---------------------------------------------------------------------------


def test_run_records_after_every_run_and_a_second_execution_resumes(data_root, encoded,
                                                                    tmp_path, monkeypatch):
    paths = fake_repo(tmp_path, data_root)
    lines = []
    exp = Experiment("grid", "cpu", SETTINGS, paths=paths, log=lines.append)
    assert exp.records_path == tmp_path / "results" / "grid" / "cpu" / "records.json.gz"
    assert exp.runs_dir == tmp_path / "_build" / "runs" / "grid" / "cpu"
    first = exp.run(("debsfx-ci", "NT-Xent", 0), config(data_root), encoded,
                    evaluate=lambda out: {"files": sorted(p.name for p in out.glob("*.pt"))})
    # best.pt (a copy of best_distance.pt), one best checkpoint per validated ranking, last.pt
    assert first["files"] == ["best.pt", "best_distance.pt", "best_plan.pt", "last.pt"]
    assert (exp.run_dir(("debsfx-ci", "NT-Xent", 0)) / "results.json").is_file()
    saved = Records.load(exp.records_path)  # saved after the first run already
    assert list(saved.runs) == [("debsfx-ci", "NT-Xent", 0)]
    assert saved.runs[("debsfx-ci", "NT-Xent", 0)]["test"] == first["test"]
    assert len(saved.histories[("debsfx-ci", "NT-Xent", 0)]) == 2
    exp.run(("debsfx-ci", "m-LTM", 0), config(data_root, "mltm"), encoded)
    assert re.fullmatch(r"debsfx-ci m-LTM 0: best epoch \d, \d+\.\d s", lines[-1])

    exp.finish()  # the first execution's wall time: two trainings, seconds
    first_wall = Records.load(exp.records_path).provenance["wall_time_s"]
    assert first_wall > 0.5

    # An interrupted experiment started again: recorded keys are not trained again.
    def refuse(self, cfg):
        raise AssertionError("a recorded run was trained again")

    monkeypatch.setattr(EncodedDataset, "train", refuse)
    again = Experiment("grid", "cpu", SETTINGS, paths=paths, log=lines.append)
    assert list(again.records.runs) == [("debsfx-ci", "NT-Xent", 0), ("debsfx-ci", "m-LTM", 0)]
    assert again.run(("debsfx-ci", "NT-Xent", 0), config(data_root), encoded) == saved.runs[
        ("debsfx-ci", "NT-Xent", 0)]
    assert lines[-1] == "debsfx-ci NT-Xent 0: already recorded, not trained again"
    assert [r["commit"] for r in again.records.provenance["resumed"]] == [
        exp.records.provenance["commit"]]
    assert again.finish() == exp.records_path
    # a resumed recording's wall time adds this execution's (a fraction of a second) to the
    # earlier one's
    assert Records.load(exp.records_path).provenance["wall_time_s"] >= first_wall


def test_evaluate_selected_on_the_runs_own_data_is_its_test_result(data_root, encoded, tmp_path):
    # evaluated on the dataset it was trained on, each ranking's selected checkpoint gives back
    # the run's own recorded test metrics and per-query outcomes, in the same layout
    exp = Experiment("grid", "cpu", SETTINGS, paths=fake_repo(tmp_path, data_root))
    key = ("debsfx-ci", "m-LTM", 0)
    res = exp.run(key, config(data_root, "mltm"), encoded,
                  evaluate=lambda out: {"again": evaluate_selected(out, encoded)})
    again, test = res["again"], res["test"]
    assert set(again) == {"distance", "plan", "queries"}
    assert again["queries"] == test["queries"]
    for r in ("distance", "plan"):
        for d in ("a2t", "t2a"):
            assert again[r][d]["R@1"] == pytest.approx(test[r][d]["R@1"], abs=1e-9)
            for name, values in test[r][d]["per_query"].items():  # rank, hit@k, AP per query
                assert again[r][d]["per_query"][name] == pytest.approx(values), (r, d, name)
    (exp.run_dir(key) / "best_plan.pt").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(
            "best_plan.pt does not exist: the run did not select a checkpoint by 'plan'; "
            "add it to eval.rankings and retrain")):
        evaluate_selected(exp.run_dir(key), encoded)


def test_a_missing_checkpoint_is_retrained_from_the_record_and_checked(data_root, encoded,
                                                                        tmp_path):
    paths = fake_repo(tmp_path, data_root)
    exp = Experiment("grid", "cpu", SETTINGS, paths=paths, log=None)
    key = ("debsfx-ci", "m-LTM", 0)
    exp.run(key, config(data_root, "mltm"), encoded)
    first = read_checkpoint(exp.run_dir(key) / "best_plan.pt")["model"]
    shutil.rmtree(exp.run_dir(key))  # recorded elsewhere: the records are here, the files not
    lines = []
    again = Experiment("grid", "cpu", SETTINGS, paths=paths, log=lines.append)
    path = again.checkpoint(key, encoded, "best_plan.pt")
    assert path == again.run_dir(key) / "best_plan.pt"
    assert lines == ["debsfx-ci m-LTM 0: best_plan.pt is not on this machine; retraining the "
                     "recorded run"]
    second = read_checkpoint(path)["model"]
    assert all(torch.equal(first[k], second[k]) for k in first)  # the same weights, bit for bit
    assert again.checkpoint(key, encoded, "last.pt").is_file() and len(lines) == 1  # not again
    # a record that retraining does not reproduce is named, with the numbers that differ
    shutil.rmtree(again.run_dir(key))
    again.records.runs[key]["test"]["plan"]["a2t"]["R@1"] += 1.0
    with pytest.raises(RuntimeError, match=re.escape(
            f"retraining run {key!r} did not reproduce its record (recorded, now: "
            "{'plan a2t R@1': (")) as err:
        again.checkpoint(key, encoded)
    assert str(err.value).endswith("re-record the experiment on this machine")
    with pytest.raises(KeyError, match="is not recorded; train it with Experiment.run first"):
        again.checkpoint(("debsfx-ci", "NT-Xent", 9), encoded)


def test_wall_time_is_saved_with_every_run_and_survives_an_interruption(data_root, encoded,
                                                                          tmp_path):
    paths = fake_repo(tmp_path, data_root)
    exp = Experiment("grid", "cpu", SETTINGS, paths=paths, log=None)
    exp.run(("debsfx-ci", "NT-Xent", 0), config(data_root), encoded)  # then "killed": no finish()
    saved = Records.load(exp.records_path)
    run_time = saved.runs[("debsfx-ci", "NT-Xent", 0)]["provenance"]["wall_time_s"]
    assert saved.provenance["wall_time_s"] >= run_time - 0.05 > 0  # stored to 0.1 s
    # a record written before saves kept the wall time: its runs' own times count, and it says so
    del saved.provenance["wall_time_s"]
    saved.save(exp.records_path)
    again = Experiment("grid", "cpu", SETTINGS, paths=paths, log=None)
    assert again.records.provenance["wall_time_from"].startswith(
        "the recorded runs' training times for the executions before ")
    again.finish()
    assert Records.load(exp.records_path).provenance["wall_time_s"] >= run_time - 0.05


def test_resuming_with_other_settings_is_refused(data_root, tmp_path):
    paths = fake_repo(tmp_path, data_root)
    exp = Experiment("grid", "cpu", SETTINGS, paths=paths, log=None)
    exp.save()
    with pytest.raises(ValueError) as e:
        Experiment("grid", "cpu", {**SETTINGS, "epochs": 3}, paths=paths, log=None)
    assert str(e.value) == (
        f"{exp.records_path} was written with other settings ({{'name': 'cpu', 'dataset': "
        "'debsfx-ci', 'seeds': [0, 1], 'epochs': 2}, now {'name': 'cpu', 'dataset': "
        "'debsfx-ci', 'seeds': (0, 1), 'epochs': 3}); move it away to start afresh")


def test_resuming_with_more_seeds_keeps_the_recorded_runs(data_root, tmp_path):
    paths = fake_repo(tmp_path, data_root)
    exp = Experiment("grid", "cpu", SETTINGS, paths=paths, log=None)
    exp.records.add(("debsfx-ci", "NT-Xent", 0), {"best_epoch": 1})
    exp.save()
    more = Experiment("grid", "cpu", {**SETTINGS, "seeds": (0, 1, 2, 3)}, paths=paths, log=None)
    assert list(more.records.runs) == [("debsfx-ci", "NT-Xent", 0)]
    assert more.records.provenance["config"]["seeds"] == [0, 1, 2, 3]
    assert more.records.provenance["resumed"][-1]["seeds_added"] == [2, 3]
    # fewer seeds, other seeds, or more seeds with another change: refused
    for other in ({**SETTINGS, "seeds": (0,)}, {**SETTINGS, "seeds": (1, 0, 2)},
                  {**SETTINGS, "seeds": (0, 1, 2), "epochs": 3}):
        with pytest.raises(ValueError, match="was written with other settings"):
            Experiment("grid", "cpu", other, paths=paths, log=None)


def test_ci_runs_are_not_recorded_and_their_folder_is_removed(data_root, encoded, tmp_path):
    exp = Experiment("grid", "ci", SETTINGS, paths=fake_repo(tmp_path, data_root), log=None)
    assert exp.records_path is None and exp.runs_dir.is_dir()
    exp.run(("debsfx-ci", "NT-Xent", 0), config(data_root), encoded)
    assert exp.finish() is None
    assert not exp.runs_dir.exists() and not (tmp_path / "results").exists()


def test_views_are_this_execution_then_the_recorded_run(data_root, tmp_path):
    paths = fake_repo(tmp_path, data_root)
    exp = Experiment("grid", "ci", SETTINGS, paths=paths, log=None)
    [live] = exp.views()
    assert (live.label, live.short, live.title) == ("ours, this execution (config 'ci')",
                                                    "ours, this execution (ci)", "this execution")
    assert live.records is exp.records and live.settings == {"name": "ci", **SETTINGS}
    recorded = Experiment("grid", "cpu", {**SETTINGS, "seeds": (0, 1, 2)}, paths=paths, log=None)
    recorded.records.extra["sizes"] = {"clips": 64}
    recorded.finish()
    live, rec = exp.views()
    assert rec.label == f"ours, {Records.load(recorded.records_path).label()}"
    assert rec.label.startswith("ours, recorded run: config 'cpu' on ")
    assert (rec.short, rec.title, rec.live) == ("ours, recorded (cpu, 3 seeds)", "recorded run",
                                                False)
    assert rec.extra == {"sizes": {"clips": 64}} and rec.settings["seeds"] == [0, 1, 2]
    assert recorded.views()[0].live and len(recorded.views()) == 1  # recording: no recorded view
    exp.finish()


# -- tables ------------------------------------------------------------------------------------


def test_records_frame_rows_are_the_records_nested_metrics(data_root, encoded, tmp_path):
    exp = Experiment("grid", "ci", SETTINGS, paths=fake_repo(tmp_path, data_root), log=None)
    for seed in (0, 1):
        exp.run(("debsfx-ci", "NT-Xent", seed), config(data_root, seed=seed), encoded)
    path = exp.records.save(tmp_path / "records.json")
    exp.finish()
    for records in (exp.records, Records.load(path)):  # live and after a JSON round trip
        frame = records_frame(records, KEY_NAMES)
        assert list(frame.columns) == [*KEY_NAMES, "split", "ranking", "direction", "metric",
                                       "value"]
        expected = 0
        for key, results in records.runs.items():
            for ranking, block in results["test"].items():
                if ranking == "queries":  # the test queries' metadata, no metric
                    assert set(block) == {"a2t", "t2a"}
                    continue
                expected += 1  # the modality gap
                for d in ("a2t", "t2a"):
                    numbers = {m: v for m, v in block[d].items() if m != "per_query"}
                    assert len(block[d]["per_query"]["R@1"]) > 0  # lists: not frame rows
                    expected += len(numbers)
                    for metric, value in numbers.items():
                        row = frame[(frame.seed == key[2]) & (frame.ranking == ranking)
                                    & (frame.direction == d) & (frame.metric == metric)]
                        assert row.value.tolist() == [value]
                gap = frame[(frame.seed == key[2]) & (frame.ranking == ranking)
                            & (frame.metric == "modality_gap")]
                assert gap.direction.tolist() == ["both"]
                assert gap.value.tolist() == [block["modality_gap"]]
        assert len(frame) == expected
        assert set(frame.split) == {"test"} and set(frame.dataset) == {"debsfx-ci"}
        assert set(frame.metric) >= {"R@1", "R@5", "R@10", "mAP@10", "medR", "modality_gap"}


def test_records_frame_other_splits_and_wrong_key_names(tmp_path):
    rec = Records()
    block = {"plan": {"a2t": {"R@1": 10.0}, "t2a": {"R@1": 5.0}, "rank_by": "plan"}}
    rec.add(("x", 0), {"test": block, "transfer": {"plan": {"a2t": {"R@1": 1.0}}}})
    frame = records_frame(rec, ("dataset", "seed"),
                          splits={"test": lambda r: r["test"], "other": lambda r: r["transfer"]})
    assert frame[["split", "direction", "value"]].values.tolist() == [
        ["test", "a2t", 10.0], ["test", "t2a", 5.0], ["other", "a2t", 1.0]]
    with pytest.raises(ValueError) as e:
        records_frame(rec, ("dataset", "method", "seed"))
    assert str(e.value) == ("run key ('x', 0) has 2 parts, but 3 names were given: "
                            "('dataset', 'method', 'seed')")


# -- what the chapters score -------------------------------------------------------------------


def test_training_pairs_are_the_noisy_pairs_a_run_trains_on(data_root, encoded):
    pairs = training_pairs(encoded, config(data_root, noise=0.4, noise_seed=0))
    ds = pairs.dataset
    n = len(ds.pair_clip)
    assert pairs.audio.shape[0] == pairs.text.shape[0] == pairs.valid.shape[0] == n
    assert 0.3 < ds.noise.empirical_ratio < 0.5 and ds.noise.num_pairs == n
    train = encoded.evalsets["train"]
    row = {cid: i for i, cid in enumerate(train.clip_ids)}
    for i in (0, n // 2, n - 1):
        clip_id = ds.records[ds.pair_clip[i]].clip_id
        assert torch.equal(pairs.audio[i], train.audio[row[clip_id]])
        assert pairs.labels[i] == train.labels[row[clip_id]]
    # a caption's feature does not depend on which pair holds it
    same = [i for i in range(n) if ds.pair_captions[i] == ds.pair_captions[0]]
    assert all(torch.equal(pairs.text[i], pairs.text[0]) for i in same)
    clean = training_pairs(encoded, config(data_root))
    assert clean.dataset.noise is None or clean.dataset.noise.num_corrupted == 0
    assert torch.equal(clean.audio, pairs.audio)


def test_initial_model_is_seeded_like_a_run(data_root, encoded):
    cfg = config(data_root, "mltm", seed=2)
    model, loss = initial_model(encoded, cfg)
    again, loss_again = initial_model(encoded, cfg)
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    reference = build_loss_from_config(cfg, dtype=torch.float64)
    assert torch.equal(loss.cost.matrix, reference.cost.matrix)
    other, _ = initial_model(encoded, config(data_root, "mltm", seed=3))
    assert not torch.equal(next(iter(other.state_dict().values())),
                           next(iter(model.state_dict().values())))
    assert json.dumps(sorted(model.state_dict())) == json.dumps(sorted(again.state_dict()))


def test_grid_settings_are_fresh_dicts_and_unknown_configurations_are_named():
    from mltm.experiments import GRID_SIZES, grid_settings

    ci = grid_settings("ci", "debsfx-ci")
    assert list(ci) == ["dataset", "joint", "hidden", "batch", "epochs", "seeds", "max_iter"]
    assert ci["dataset"] == "debsfx-ci" and ci["seeds"] == (0,) and ci["max_iter"] == 30
    ci["joint"] = 1
    assert GRID_SIZES["ci"]["joint"] == 64  # the shared sizes are not changed through a copy
    with pytest.raises(ValueError, match=r"unknown chapter configuration 'gpu'; use one of "
                                         r"\['ci', 'cpu', 'full'\]"):
        grid_settings("gpu", "debsfx")


def test_best_val_r_sum_takes_the_best_epoch_under_the_best_ranking():
    from mltm.experiments import best_val_r_sum

    history = [{"val_r_sum": 10.0, "val_plan_r_sum": 12.0},
               {"val_r_sum": 15.0, "val_plan_r_sum": 11.0},
               {"val_r_sum": 9.0, "val_plan_r_sum": 14.0}]
    assert best_val_r_sum(history) == 15.0
    assert best_val_r_sum(history, ("plan",)) == 14.0
    assert best_val_r_sum(history, ("distance",)) == 15.0
    with pytest.raises(ValueError, match="no val_csls_r_sum: the run did not validate"):
        best_val_r_sum(history, ("csls",))
    with pytest.raises(ValueError, match="no epoch"):
        best_val_r_sum([])


def test_select_on_ladder_extends_a_grid_whose_best_is_on_its_edge():
    from mltm.experiments import select_on_ladder

    ladder = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
    calls = []

    def peaked(at):
        def score(x):
            calls.append(x)
            return -abs(ladder.index(x) - ladder.index(at))
        return score

    best, scores = select_on_ladder(peaked(1e-3), ladder, (3e-4, 1e-3, 3e-3))
    assert best == 1e-3 and list(scores) == [3e-4, 1e-3, 3e-3] and len(calls) == 3
    calls.clear()
    best, scores = select_on_ladder(peaked(1e-4), ladder, (3e-4, 1e-3, 3e-3))
    assert best == 1e-4 and list(scores) == [1e-4, 3e-4, 1e-3, 3e-3] and calls[-1] == 1e-4
    best, scores = select_on_ladder(peaked(1e-2), ladder, (3e-4, 1e-3, 3e-3))
    assert best == 1e-2 and list(scores) == [3e-4, 1e-3, 3e-3, 1e-2]  # the ladder's end
    assert select_on_ladder(peaked(1e-4), ladder, (1e-3,)) == (1e-3, {1e-3: -2.0})
    with pytest.raises(ValueError, match="not on the ladder"):
        select_on_ladder(peaked(1e-3), ladder, (2e-3,))
    with pytest.raises(ValueError, match="consecutive"):
        select_on_ladder(peaked(1e-3), ladder, (1e-4, 1e-3))

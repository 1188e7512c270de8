"""Plan ranking's sensitivity to wrong marginals, against distance and the inductive rankings.

The transductive plan (paper eq. 5, ``rank_by="plan"``) assumes uniform marginals: every
test clip holds as many captions as every other, and every clip of the gallery has its
captions among the queries. This script trains one model per loss on ``debsfx-scenes-ci``
(pooled linear heads on frozen encoders, 5 epochs), embeds the test and validation splits,
and ranks perturbed test sets by every ranking of :mod:`mltm.rankings`:

- ``all captions``: the test split as it is (5 captions per clip; one draw).
- ``1-5 captions per clip``: each clip keeps a random 1 to 5 of its captions (uniform), so
  the plan's uniform clip marginal is wrong; the oracle plan uses the true counts.
- ``captions of half the clips``: the captions of a random half of the clips only; t2a ranks
  all clips (half of them have no caption among the queries), a2t is scored on the clips
  with captions (the others stay in the plan as queries).
- ``half the clips, all captions``: a random half of the clips, every caption; a2t ranks
  all captions (half are distractors), t2a is scored on the captions of the present clips.

Rankings: ``distance``; ``plan`` (uniform marginals, the paper's); ``plan, oracle
marginals`` (the true marginals of the perturbed set, ``a_i`` proportional to clip i's
present captions and ``b_j`` to whether caption j's clip is present, zeros floored at
1e-9 of the mass: it knows the answer's structure, an upper bound, not a method);
``plan_reference`` (inductive: the gallery's potentials solved against the validation
split's clips and captions, 40 and 200 on the CI set); ``plan_reference, train`` (the same
against the training split, 7x larger but seen in training: does a reference that covers the
gallery better help?); ``csls`` and ``inverted_softmax`` (beta = 1/eps) computed from
the test queries (transductive, as their papers) and from the validation split
(``..., reference``). Five perturbation draws (seeds 0-4) per scenario; mean ± sd over the
draws, and of each ranking's paired difference to ``plan`` on the same draw. One trained
model per loss (training seed 0): the spread is that of the perturbation, not of training.

    .venv/bin/python scripts/plan_sensitivity.py            # train, measure, record, print
    .venv/bin/python scripts/plan_sensitivity.py --report   # print the recorded table

Writes ``results/plan_sensitivity/<config>/records.json`` atomically (with provenance).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from mltm._atomic import atomic_write  # noqa: E402
from mltm.checkpoint import load_checkpoint  # noqa: E402
from mltm.config import config_from_dict  # noqa: E402
from mltm.evaluation import project_evalset  # noqa: E402
from mltm.experiments import encode_dataset  # noqa: E402
from mltm.provenance import provenance  # noqa: E402
from mltm.rankings import csls_scores, inverted_softmax_scores, plan_scores  # noqa: E402
from mltm.retrieval import pairwise_cost, ranks_from_scores  # noqa: E402

SETTINGS = {
    "ci": dict(dataset="debsfx-scenes-ci", epochs=5, batch=64, train_seed=0,
               draws=(0, 1, 2, 3, 4), eps=0.05, csls_k=10, losses=("mltm", "ntxent")),
}
LOSS_NAMES = {"mltm": "m-LTM", "ntxent": "NT-Xent"}
SCENARIOS = ("all captions", "1-5 captions per clip", "captions of half the clips",
             "half the clips, all captions")
RANKINGS = ("distance", "plan", "plan, oracle marginals", "plan_reference",
            "plan_reference, train", "csls",
            "csls, reference", "inverted_softmax", "inverted_softmax, reference")
KS = (1, 5, 10)
#: Mass of the items an oracle marginal gives none (Sinkhorn needs positive marginals).
ORACLE_FLOOR = 1e-9


def make_config(settings: dict, loss: str, out: Path):
    """The scene_heads CI configuration with pooled linear heads, ``settings["epochs"]``."""
    data_root = Path(os.environ.get("MLTM_DATA") or REPO / "data")
    return config_from_dict({
        "data": {"dataset": str(data_root / settings["dataset"])},
        "model": {"audio_encoder": "aisfx", "text_pooling": "cls", "freeze_audio": True,
                  "freeze_text": True, "joint_dim": 128, "hidden_dim": 256,
                  "audio_head": "linear", "text_head": "linear"},
        "loss": {"name": loss, "eps": settings["eps"], "sinkhorn_tol": 1e-5,
                 "metric": {"kind": "full", "init": "identity"}},
        "optim": {"lr": 1e-3, "batch_size": settings["batch"], "epochs": settings["epochs"],
                  "grad_clip": 2.0},
        "eval": {"select_by": "r_sum", "plan_eps": settings["eps"], "relevance": "clip"},
        "seed": settings["train_seed"], "out_dir": str(out), "progress": False,
    })


def perturb(scenario: str, caption_clip: torch.Tensor, n_clips: int, seed: int):
    """``(clips, captions)``: the indices of the test clips and captions a draw keeps."""
    g = torch.Generator().manual_seed(seed)
    all_clips, all_caps = torch.arange(n_clips), torch.arange(len(caption_clip))
    if scenario == "all captions":
        return all_clips, all_caps
    if scenario == "1-5 captions per clip":
        keep = []
        for clip in range(n_clips):
            own = (caption_clip == clip).nonzero().flatten()
            count = int(torch.randint(1, len(own) + 1, (1,), generator=g))
            keep.append(own[torch.randperm(len(own), generator=g)[:count]])
        return all_clips, torch.cat(keep).sort().values
    half = torch.randperm(n_clips, generator=g)[: n_clips // 2].sort().values
    if scenario == "captions of half the clips":
        return all_clips, all_caps[torch.isin(caption_clip, half)]
    if scenario == "half the clips, all captions":
        return half, all_caps
    raise ValueError(f"unknown scenario {scenario!r}")


def oracle_marginals(relevant: torch.Tensor):
    """The true plan's marginals: mass 1/pairs on each (clip, own caption) pair present."""
    a = relevant.sum(1).double()
    b = relevant.any(0).double()
    a, b = a / a.sum(), b / b.sum()
    a, b = a.clamp_min(ORACLE_FLOOR), b.clamp_min(ORACLE_FLOOR)
    return a / a.sum(), b / b.sum()


def all_scores(C, ref_rows, ref_cols, train_rows, train_cols, relevant, eps: float,
               k: int) -> dict:
    """Every ranking's (n, m) scores of one perturbed test set."""
    a, b = oracle_marginals(relevant)
    beta = 1.0 / eps
    return {
        "distance": -C,
        "plan": plan_scores(C, eps),
        "plan, oracle marginals": plan_scores(C, eps, a=a, b=b),
        "plan_reference": plan_scores(C, eps, reference_rows=ref_rows, reference_cols=ref_cols),
        "plan_reference, train": plan_scores(C, eps, reference_rows=train_rows,
                                             reference_cols=train_cols),
        "csls": csls_scores(C, k=k),
        "csls, reference": csls_scores(C, k=k, reference_rows=ref_rows,
                                       reference_cols=ref_cols),
        "inverted_softmax": inverted_softmax_scores(C, beta),
        "inverted_softmax, reference": inverted_softmax_scores(
            C, beta, reference_rows=ref_rows, reference_cols=ref_cols),
    }


def metrics(scores: torch.Tensor, relevant: torch.Tensor) -> dict:
    """R@k and mean rank of the queries (rows) that have a relevant item."""
    has = relevant.any(1)
    ranks = ranks_from_scores(scores[has], relevant[has]).double()
    out = {f"R@{k}": 100.0 * float((ranks < k).double().mean()) for k in KS}
    out["meanR"] = float(ranks.mean()) + 1
    out["queries"] = int(has.sum())
    out["gallery"] = int(scores.shape[1])
    return out


def measure(audio, text, caption_clip, val, train, cost, settings) -> list[dict]:
    """Metrics of every ranking, scenario and draw; ``val``, ``train``: (audio, text)."""
    C_full = pairwise_cost(cost, audio, text)
    ref_rows_full = pairwise_cost(cost, val[0], text)  # validation clips -> test captions
    ref_cols_full = pairwise_cost(cost, audio, val[1])  # test clips -> validation captions
    train_rows_full = pairwise_cost(cost, train[0], text)
    train_cols_full = pairwise_cost(cost, audio, train[1])
    rows = []
    for scenario in SCENARIOS:
        draws = (0,) if scenario == "all captions" else settings["draws"]
        for seed in draws:
            clips, caps = perturb(scenario, caption_clip, len(audio), seed)
            C = C_full[clips][:, caps]
            relevant = clips[:, None] == caption_clip[caps][None, :]
            scores = all_scores(C, ref_rows_full[:, caps], ref_cols_full[clips],
                                train_rows_full[:, caps], train_cols_full[clips], relevant,
                                settings["eps"], settings["csls_k"])
            for ranking, S in scores.items():
                rows.append({"scenario": scenario, "seed": seed, "ranking": ranking,
                             "clips": len(clips), "captions": len(caps),
                             "a2t": metrics(S, relevant), "t2a": metrics(S.T, relevant.T)})
    return rows


def _mean_sd(values: list[float]) -> dict:
    """Mean and sample sd over draws (sd None for a single draw)."""
    return {"mean": statistics.fmean(values),
            "sd": statistics.stdev(values) if len(values) > 1 else None}


def summarise(rows: list[dict]) -> list[dict]:
    """Mean ± sd over draws of every metric, and of the paired difference to ``plan`` (the
    same draw ranked by both)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["loss"], r["scenario"], r["ranking"]), []).append(r)
    out = []
    for (loss, scenario, ranking), rs in groups.items():
        plan = {r["seed"]: r for r in groups[(loss, scenario, "plan")]}
        entry = {"loss": loss, "scenario": scenario, "ranking": ranking, "draws": len(rs)}
        for d in ("a2t", "t2a"):
            for key in [f"R@{k}" for k in KS] + ["meanR"]:
                entry[f"{d} {key}"] = _mean_sd([r[d][key] for r in rs])
                entry[f"{d} {key} - plan"] = _mean_sd(
                    [r[d][key] - plan[r["seed"]][d][key] for r in rs])
        out.append(entry)
    return out


def _cell(stat: dict) -> str:
    sd = "" if stat["sd"] is None else f" ± {stat['sd']:.2f}"
    return f"{stat['mean']:>7.2f}{sd:<7}"


def print_table(record: dict) -> None:
    cols = ("a2t R@1", "a2t R@10", "t2a R@1", "t2a R@10", "a2t R@1 - plan", "t2a R@1 - plan")
    for loss in record["settings"]["losses"]:
        name = LOSS_NAMES[loss]
        for scenario in SCENARIOS:
            entries = [e for e in record["summary"]
                       if e["loss"] == name and e["scenario"] == scenario]
            if not entries:
                continue
            print(f"\n{name}, {scenario} ({entries[0]['draws']} draw(s), mean ± sd)")
            print(f"{'ranking':<29}" + "".join(f"{c:>15}" for c in cols))
            for e in entries:
                print(f"{e['ranking']:<29}" + "".join(f"{_cell(e[c]):>15}" for c in cols))
    p = record["provenance"]
    print(f"\n{p['commit']}, {p['date']}, {p['device']}, {p.get('wall_time_s')} s wall, "
          f"{record.get('cpu_time_s')} s CPU")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", choices=sorted(SETTINGS), default="ci")
    ap.add_argument("--report", action="store_true", help="print the recorded table and exit")
    args = ap.parse_args(argv)
    settings = dict(SETTINGS[args.config])
    path = REPO / "results" / "plan_sensitivity" / args.config / "records.json"
    if args.report:
        print_table(json.loads(path.read_text()))
        return 0
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    t0, cpu0 = time.perf_counter(), time.process_time()
    runs_dir = REPO / "_build" / "runs" / "plan_sensitivity" / args.config
    data = None
    models, rows = {}, []
    for loss in settings["losses"]:
        out = runs_dir / loss
        if out.exists():
            shutil.rmtree(out)  # a fresh run, never a resumed one
        cfg = make_config(settings, loss, out)
        data = data or encode_dataset(cfg)  # the encoder outputs are the same for every loss
        t_train = time.perf_counter()
        res = data.train(cfg)
        _, model, loss_fn, _ = load_checkpoint(out / "best.pt", with_encoders=False)
        test, val = data.evalsets["test"], data.evalsets["val"]
        audio, text = project_evalset(model, test, "cpu")
        val_audio, val_text = project_evalset(model, val, "cpu")
        train = project_evalset(model, data.evalsets["train"], "cpu")
        with torch.no_grad():
            measured = measure(audio, text, test.caption_clip.long(), (val_audio, val_text),
                               train, loss_fn.ranking_cost, settings)
        # The unperturbed distance ranking is the trainer's own test number.
        full = next(r for r in measured
                    if r["scenario"] == "all captions" and r["ranking"] == "distance")
        for d in ("a2t", "t2a"):
            want = res["test"]["distance"][d]["R@1"]
            if abs(full[d]["R@1"] - want) > 1e-9:
                raise RuntimeError(f"{d} R@1 by distance {full[d]['R@1']} != the trainer's {want}")
        name = LOSS_NAMES[loss]
        rows += [{"loss": name, **r} for r in measured]
        models[name] = {"config": cfg.to_dict(), "best_epoch": res["best_epoch"],
                        "test": res["test"], "train_seconds": time.perf_counter() - t_train,
                        "test_clips": int(audio.shape[0]), "test_captions": int(text.shape[0]),
                        "val_clips": int(val_audio.shape[0]),
                        "val_captions": int(val_text.shape[0]),
                        "train_clips": int(train[0].shape[0]),
                        "train_captions": int(train[1].shape[0])}
        print(f"{name}: best epoch {res['best_epoch']}, "
              f"{time.perf_counter() - t_train:.0f} s", flush=True)
    record = {
        "provenance": provenance("cpu", {"name": args.config, **{
            k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}},
            time.perf_counter() - t0),
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()},
        "scenarios": list(SCENARIOS),
        "rankings": list(RANKINGS),
        "oracle_floor": ORACLE_FLOOR,
        "cpu_time_s": round(time.process_time() - cpu0, 1),
        "models": models,
        "summary": summarise(rows),
        "rows": rows,
    }
    with atomic_write(path) as f:
        json.dump(record, f, indent=1)
    print_table(record)
    print(f"{path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

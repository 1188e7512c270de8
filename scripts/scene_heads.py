"""Can the features represent a scene? Pooled linear heads against temporal heads on DebSFX scenes.

The CPU path trains heads on frozen encoder outputs. A linear head on one pooled vector per
clip cannot tell "a dog barks, then a door slams" from the reverse; the temporal heads
(``model.audio_head`` / ``model.text_head`` = ``attention`` or ``transformer``) see aisfx's
frame embeddings and MiniLM's token outputs. This script trains each head pair with NT-Xent
and with m-LTM on a scene set and records the test retrieval by distance and by plan, one run
per (loss, heads, seed), into ``results/scene_heads/<config>/records.json`` (mltm.records),
after every run: it is resumable run by run (a recorded run is not trained again).

    .venv/bin/python scripts/scene_heads.py --config ci            # debsfx-scenes-ci
    .venv/bin/python scripts/scene_heads.py --config full          # debsfx-scenes (10,000 scenes)
    .venv/bin/python scripts/scene_heads.py --config ci --report   # the table of what is recorded
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from mltm.config import config_from_dict  # noqa: E402
from mltm.provenance import provenance  # noqa: E402
from mltm.records import Records  # noqa: E402
from mltm.train import Trainer  # noqa: E402

#: (audio head, text head) pairs compared; the first is the paper's pooled linear head.
HEADS = {"pooled linear": ("linear", "linear"),
         "attention pooling": ("attention", "attention"),
         "transformer + attention": ("transformer", "attention")}
LOSSES = {"NT-Xent": "ntxent", "m-LTM": "mltm"}
SETTINGS = {
    "ci": dict(dataset="debsfx-scenes-ci", epochs=15, batch=64, seeds=(0, 1, 2)),
    # 35,000 training pairs: 8 epochs are 2,190 steps (ci: 15 x 23). The frozen encoders run
    # in float32 here: 0.22 s a clip against 1.18 s in float64 (measured on this 2-core CPU),
    # 37 min instead of 3.3 h for the 10,000 scenes; the features are still rounded to 16
    # bits, but are not guaranteed the same bits on another CPU (a recorded run, not a golden).
    "full": dict(dataset="debsfx-scenes", epochs=8, batch=128, seeds=(0, 1, 2),
                 feature_dtype="float32"),
}


def make_config(settings: dict, loss: str, heads: tuple[str, str], seed: int, out: Path):
    data_root = Path(os.environ.get("MLTM_DATA") or REPO / "data")
    return config_from_dict({
        "data": {"dataset": str(data_root / settings["dataset"])},
        "model": {"audio_encoder": "aisfx", "text_pooling": "cls", "freeze_audio": True,
                  "freeze_text": True, "joint_dim": 128, "hidden_dim": 256,
                  "audio_head": heads[0], "text_head": heads[1], "temporal_dim": 128,
                  "feature_dtype": settings.get("feature_dtype", "float64")},
        "loss": {"name": loss, "eps": 0.05, "sinkhorn_tol": 1e-5,
                 "metric": {"kind": "full", "init": "identity"}},
        "optim": {"lr": 1e-3, "batch_size": settings["batch"], "epochs": settings["epochs"],
                  "grad_clip": 2.0},
        "eval": {"select_by": "r_sum", "plan_eps": 0.05, "relevance": "clip"},
        "seed": seed, "out_dir": str(out), "progress": False,
    })


def report(rec: Records) -> None:
    import pandas as pd

    rows = []
    for (loss, heads, seed), res in rec.runs.items():
        for rank_by in ("distance", "plan"):
            m = res["test"][rank_by]
            rows.append({"loss": loss, "heads": heads, "ranking": rank_by, "seed": seed,
                         **{f"{d} R@{k}": m[d][f"R@{k}"] for d in ("a2t", "t2a") for k in (1, 10)}})
    df = pd.DataFrame(rows)
    if df.empty:
        print("nothing recorded yet")
        return
    cols = [c for c in df.columns if "R@" in c]
    agg = df.groupby(["loss", "ranking", "heads"], sort=False)[cols].agg(["mean", "std"])
    agg.columns = [f"{c} {s}" for c, s in agg.columns]
    n = df.groupby(["loss", "ranking", "heads"], sort=False).seed.nunique().rename("seeds")
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(pd.concat([n, agg.round(2)], axis=1).to_string())
    print(rec.label())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", choices=sorted(SETTINGS), default="ci")
    ap.add_argument("--seeds", type=int, nargs="*", help="default: the config's seeds")
    ap.add_argument("--epochs", type=int, help="override the config's epochs")
    ap.add_argument("--report", action="store_true", help="print the recorded table and exit")
    args = ap.parse_args(argv)
    settings = dict(SETTINGS[args.config])
    if args.epochs:
        settings["epochs"] = args.epochs
    if args.seeds:
        settings["seeds"] = tuple(args.seeds)
    path = REPO / "results" / "scene_heads" / args.config / "records.json"
    rec = Records.load(path) if path.exists() else Records(provenance=provenance(
        "cpu", {"name": args.config, **{k: list(v) if isinstance(v, tuple) else v
                                        for k, v in settings.items()}, "heads": HEADS}))
    if args.report:
        report(rec)
        return 0
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    runs_dir = REPO / "_build" / "runs" / "scene_heads" / args.config
    t_all = time.perf_counter()
    for seed in settings["seeds"]:  # cheapest heads first: a seed's pairs complete early
        for head_name, heads in HEADS.items():
            for loss_name, loss in LOSSES.items():
                key = (loss_name, head_name, seed)
                if key in rec.runs:
                    continue
                out = runs_dir / f"{loss}-{heads[0]}-{heads[1]}-seed{seed}"
                if out.exists():
                    shutil.rmtree(out)  # a fresh run, never a half-finished one resumed
                t0 = time.perf_counter()
                res = Trainer(make_config(settings, loss, heads, seed, out)).run()
                history = __import__("json").loads((out / "history.json").read_text())
                rec.add(key, res, history)
                rec.provenance["wall_time_s"] = round(
                    rec.provenance.get("wall_time_s", 0) + time.perf_counter() - t0, 1)
                rec.save(path)
                p = res["test"]["plan"]
                print(f"{loss_name:<8} {head_name:<24} seed {seed}: "
                      f"best epoch {res['best_epoch']}, "
                      f"plan a2t R@1 {p['a2t']['R@1']:.2f} t2a R@1 {p['t2a']['R@1']:.2f}, "
                      f"{time.perf_counter() - t0:.0f} s", flush=True)
    print(f"done in {time.perf_counter() - t_all:.0f} s; {path.relative_to(REPO)}")
    report(rec)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

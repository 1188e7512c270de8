"""Evaluate a checkpoint: retrieval or zero-shot classification, written as JSON.

``python -m mltm.eval --checkpoint CKPT --manifest DIR/test.jsonl [--zeroshot] [--out FILE]``

A known error (missing or bad checkpoint, unreadable manifest) prints one line
``error: <message>`` on stderr and exits with status 2; ``--debug`` shows the traceback.

* **Retrieval** (default; the paper's protocol with several captions per clip): R@1/5/10,
  mAP@10, median and mean rank for audio→text and text→audio, ranked by the learned
  distance **and** by the transductive Sinkhorn plan between the whole test audio set and
  caption set (paper eq. 5, what the released code reports), each labelled; plus the
  modality gap ‖mean(audio) − mean(text)‖ (Table 4).
* **Zero-shot** (``--zeroshot``, Table 3): each clip's label is a class; the prompts
  ``"This is a sound of {class}."`` are the gallery; accuracy (= R@1), R@5, R@10 and
  mAP@10 (= MRR@10 with one relevant class, the quantity the released code calls mAP),
  ranked by distance and by plan; the modality gap between prompts and audio.
* ``--tsne``: t-SNE coordinates of the audio and text (or prompt) embeddings, for figures.

Memory is linear in the gallery plus one N×M cost (or plan) matrix.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from mltm._atomic import atomic_write
from mltm._cli import add_debug_flag, run_cli
from mltm.checkpoint import load_checkpoint
from mltm.evaluation import (
    encode_captions,
    encode_split,
    encoding_precision,
    evaluate_embeddings,
    project_evalset,
    sequence_outputs,
)
from mltm.factory import frozen_encoders, resolve_device
from mltm.provenance import provenance

__all__ = ["evaluate_checkpoint", "main"]


def _manifest_parts(manifest: str | Path) -> tuple[Path, str]:
    p = Path(manifest)
    if not p.is_file():
        raise FileNotFoundError(f"manifest {p} not found; give a split file such as "
                                "data/debsfx-ci/test.jsonl")
    if p.suffix != ".jsonl":
        raise ValueError(f"manifest {p} must be a split file named <split>.jsonl")
    return p.parent, p.stem


def evaluate_checkpoint(checkpoint: str | Path, manifest: str | Path, *, zeroshot: bool = False,
                        rank_by: tuple[str, ...] = ("distance", "plan"), eps: float | None = None,
                        relevance: str = "clip", template: str = "This is a sound of {}.",
                        tsne: bool = False, device: str = "auto",
                        per_query: bool = False) -> dict[str, Any]:
    """Evaluate ``checkpoint`` on one manifest split; return the results dict.

    ``per_query``: each ranking's metrics also hold every query's outcomes (``per_query``:
    expected rank, R@k hit probabilities, AP) and ``metrics["queries"]`` the query metadata
    (zero-shot: each clip's class name and id; retrieval: as :func:`evaluate_embeddings`), the
    layout :func:`mltm.verdicts.verdict` reads for its clustered bootstrap.
    """
    from mltm.retrieval import modality_gap, prompt_for, tsne_coordinates, zero_shot_classification

    t0 = time.perf_counter()
    dev = resolve_device(device)
    root, split = _manifest_parts(manifest)  # before the (slower) checkpoint and encoders
    cfg, model, loss, ckpt = load_checkpoint(checkpoint, device=dev)
    eps = cfg.eval.plan_eps if eps is None else eps
    frozen = frozen_encoders(cfg)
    # frozen encoders: the precision the model was trained on (the portable cached features)
    precision = encoding_precision(cfg)
    es = encode_split(root, split, model.audio_encoder, model.text_encoder,
                      max_seconds=cfg.data.max_seconds, device=dev, cache=frozen, **precision,
                      **sequence_outputs(cfg))
    audio, text = project_evalset(model, es, dev)
    out: dict[str, Any] = {
        "checkpoint": str(checkpoint), "manifest": str(manifest), "epoch": ckpt["epoch"],
        "loss": cfg.loss.name, "num_clips": int(audio.shape[0]), "skipped_clips": es.skipped,
    }
    if zeroshot:
        if any(lab is None for lab in es.labels):
            raise ValueError(f"--zeroshot needs a label on every clip of {manifest}")
        classes = sorted(set(es.labels))
        prompts = [prompt_for(c, template) for c in classes]
        feats, lengths = encode_captions(model.text_encoder, prompts,
                                         sequence_outputs(cfg)["text_outputs"], device=dev,
                                         use_cache=frozen, **precision)
        with torch.no_grad():
            model.eval()
            class_emb = model.project_text(feats.to(dev, audio.dtype),
                                           None if lengths is None else lengths.to(dev))
            class_emb = class_emb.to(audio.dtype)
        labels = torch.tensor([classes.index(lab) for lab in es.labels], device=dev)
        out["task"] = "zeroshot"
        out["classes"] = classes
        out["prompts_template"] = template
        with torch.no_grad():
            out["metrics"] = {r: zero_shot_classification(audio, class_emb, labels,
                                                          cost=loss.ranking_cost, rank_by=r,
                                                          eps=eps, per_query=per_query)
                              for r in rank_by}
        if per_query:
            for m in list(out["metrics"].values()):
                m.pop("queries", None)
            out["metrics"]["queries"] = {"label": list(es.labels), "clip_id": list(es.clip_ids)}
        out["modality_gap"] = modality_gap(audio, class_emb)
        if tsne:
            axy, txy = tsne_coordinates(audio.cpu(), class_emb.cpu())
            out["tsne"] = {"audio": axy.tolist(), "text": txy.tolist(),
                           "audio_labels": es.labels, "text_labels": classes}
    else:
        group = es.label_groups() if relevance == "label" else None
        out["task"] = "retrieval"
        out["relevance"] = relevance
        out["metrics"] = {r: evaluate_embeddings(audio, text, es.caption_clip, loss, rank_by=r,
                                                 eps=eps, clip_group=group, evalset=es,
                                                 per_query=per_query)
                          for r in rank_by}
        if per_query:
            out["metrics"]["queries"] = [m.pop("queries", None)
                                         for m in list(out["metrics"].values())][0]
        out["modality_gap"] = modality_gap(audio, text)
        if tsne:
            axy, txy = tsne_coordinates(audio.cpu(), text.cpu())
            out["tsne"] = {"audio": axy.tolist(), "text": txy.tolist(),
                           "audio_labels": es.labels,
                           "text_clip": es.caption_clip.tolist()}
    out["provenance"] = provenance(dev, None, time.perf_counter() - t0)
    return out


def main(argv: list[str] | None = None) -> int:
    """Command line of ``python -m mltm.eval``; returns the exit status (2 on a known error)."""
    p = argparse.ArgumentParser(prog="python -m mltm.eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--manifest", required=True,
                   help="a split manifest, e.g. data/debsfx-ci/test.jsonl")
    p.add_argument("--zeroshot", action="store_true", help="zero-shot classification by label")
    p.add_argument("--rank-by", choices=["distance", "plan", "both"], default="both")
    p.add_argument("--eps", type=float, default=None,
                   help="ε of the plan ranking (default: config)")
    p.add_argument("--relevance", choices=["clip", "label"], default="clip")
    p.add_argument("--template", default="This is a sound of {}.")
    p.add_argument("--tsne", action="store_true", help="add t-SNE coordinates")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", help="output JSON (default: print only)")
    add_debug_flag(p)
    args = p.parse_args(argv)
    # known errors: one line "error: ..." on stderr, exit status 2 (--debug: traceback)
    return run_cli(lambda: _run(args), debug=args.debug)


def _run(args: argparse.Namespace) -> int:
    rank_by = ("distance", "plan") if args.rank_by == "both" else (args.rank_by,)
    res = evaluate_checkpoint(args.checkpoint, args.manifest, zeroshot=args.zeroshot,
                              rank_by=rank_by, eps=args.eps, relevance=args.relevance,
                              template=args.template, tsne=args.tsne, device=args.device)
    text = json.dumps(res, indent=1, default=float)
    if args.out:
        with atomic_write(args.out) as f:
            f.write(text)
    summary = {r: ({k: v for k, v in m.items() if k in ("accuracy", "R@5", "R@10")}
                   if args.zeroshot else {d: m[d]["R@1"] for d in ("a2t", "t2a")})
               for r, m in res["metrics"].items()}
    print(json.dumps({"task": res["task"], "R@1/accuracy": summary,
                      "modality_gap": res["modality_gap"], "out": args.out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

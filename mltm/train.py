"""Training: hybrid SGD for m-LTM and its baselines (paper Algorithm 1, eq. 8 and 11).

``python -m mltm.train --config FILE [--set key=value ...] [--out DIR] [--resume] [--debug]``

A known error (missing dataset or config, bad config key or value, bad checkpoint) prints one
line ``error: <message>`` on stderr and exits with status 2; ``--debug`` shows the traceback.

Each step draws a mini-batch of b pairs whose clips (and caption texts) are distinct, embeds
both sides, evaluates the loss, and takes one **hybrid** step: Adam on the encoders and
heads, Adam followed by the PSD projection on M (eq. 11, :meth:`MatchingLoss.project_`).
The gradient norm is clipped over all parameters, M included, as the released code does.

Two paths, chosen from the config, behind one batch source (:mod:`mltm.sources`):

* **fast** (both encoders frozen, the CI and CPU default,
  :class:`~mltm.sources.CachedFeatureSource`): encoder outputs are computed once
  (:mod:`mltm.embed`, cached on disk) and only the heads and M are trained, on CPU in
  seconds. The outputs are pooled vectors for the ``linear`` heads, or padded frame and
  token sequences with their lengths for the temporal heads (``model.audio_head``,
  ``model.text_head``; :func:`mltm.evaluation.encode_split`);
* **end-to-end** (an encoder is fine-tuned, the paper's setting,
  :class:`~mltm.sources.WaveformSource`): waveforms and captions go through the encoders
  every step, bfloat16 autocast on a GPU.

This module holds the epoch loop (:class:`Trainer`) and the command line. The loss and
optimiser come from :mod:`mltm.factory`, the evaluation sets and metrics from
:mod:`mltm.evaluation`, the checkpoints from :mod:`mltm.checkpoint`; their public names are
importable from here too.

Every epoch: validation retrieval (ranked by the learned distance), a row in
``metrics.csv`` and ``history.json``, and an atomically written checkpoint ``last.pt``
(``best.pt`` too when the validation score improves). ``--resume`` continues from
``last.pt`` exactly: the batches of an epoch depend only on ``(seed, epoch)`` and the RNG
states are restored. At the end the best checkpoint is evaluated on the test split, ranked
both by distance and by the transductive Sinkhorn plan, into ``results.json``.

``torchrun --nproc-per-node N -m mltm.train ...`` trains data-parallel on the same global
batches, with the plan over the whole global batch (:mod:`mltm.distributed`,
``dist.global_plan``); rank 0 validates and writes every file.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mltm import distributed
from mltm._atomic import atomic_write
from mltm._cli import add_debug_flag, run_cli
from mltm.checkpoint import (
    CHECKPOINT_FORMAT,
    checkpoint_payload,
    frozen_prefixes,
    load_checkpoint,
    read_checkpoint,
    resume_from,
    save_checkpoint,
)
from mltm.config import TrainConfig, load_config, save_config
from mltm.evaluation import (
    EncodedSplits,
    EvalSet,
    encode_captions,
    encode_split,
    evaluate_embeddings,
    feature_precision,
    project_evalset,
    r_sum,
    sequence_outputs,
    take_rows,
)
from mltm.factory import (
    build_loss_from_config,
    build_optimizer,
    compute_dtype,
    dataset_root,
    resolve_device,
    seed_everything,
)
from mltm.model import check_heads
from mltm.ot import ConvergenceWarning
from mltm.provenance import provenance
from mltm.sources import BatchSource, make_source

__all__ = [
    "Trainer",
    "main",
    # re-exported from mltm.evaluation, mltm.checkpoint and mltm.factory (chapters import them
    # from here)
    "EvalSet",
    "encode_split",
    "encode_captions",
    "project_evalset",
    "evaluate_embeddings",
    "r_sum",
    "take_rows",
    "feature_precision",
    "sequence_outputs",
    "CHECKPOINT_FORMAT",
    "load_checkpoint",
    "read_checkpoint",
    "save_checkpoint",
    "build_loss_from_config",
    "compute_dtype",
    "resolve_device",
    "dataset_root",
    "seed_everything",
]


class Trainer:
    """Train one config; see the module docstring.

    Args:
        config: The run's :class:`TrainConfig`.
        evalsets: Precomputed encoder outputs (``{"train": ..., "val": ..., "test": ...}``)
            to reuse across runs on the same data (fast path only); computed when absent.
        encoders: Already built ``(audio, text)`` encoders of ``config.model`` to reuse.

    Runs on the same data share their inputs through :meth:`evalsets` and :meth:`encoders`::

        first = Trainer(cfg)
        shared = {"evalsets": first.evalsets(), "encoders": first.encoders()}
        results = [Trainer(c, **shared).run() for c in configs]
    """

    def __init__(self, config: TrainConfig, *, evalsets: dict[str, EvalSet] | None = None,
                 encoders: tuple[nn.Module, nn.Module] | None = None) -> None:
        self.cfg = config
        self.device = resolve_device(config.device)
        self.out = Path(config.out_dir)
        self.root = dataset_root(config.data.dataset)
        compute_dtype(config)  # a bad dtype fails here, before any work
        self.splits = EncodedSplits(config, self.root, self.device, evalsets=evalsets,
                                    encoders=encoders)
        check_heads(config.model)  # temporal heads: frozen encoders with sequence outputs
        if config.optim.batch_size < 2:
            raise ValueError(
                "optim.batch_size must be at least 2 (a matching loss needs negatives)"
            )
        if config.eval.select_by not in ("r_sum", "loss"):
            raise ValueError(f"eval.select_by {config.eval.select_by!r}: use 'r_sum' or 'loss'")
        if config.eval.relevance not in ("clip", "label"):
            raise ValueError(f"eval.relevance {config.eval.relevance!r}: use 'clip' or 'label'")

    # -- inputs shared across runs ----------------------------------------------------------

    def encoders(self) -> tuple[nn.Module, nn.Module]:
        """The ``(audio, text)`` encoders of the config's model (built on first use)."""
        return self.splits.encoders()

    def evalset(self, split: str) -> EvalSet:
        """Encoder outputs of a split (cached on disk when the encoders are frozen)."""
        return self.splits.evalset(split)

    def evalsets(self, splits: tuple[str, ...] = ("train", "val", "test")
                 ) -> dict[str, EvalSet]:
        """``{split: EvalSet}``: with :meth:`encoders`, what other runs on the data can reuse."""
        return self.splits.evalsets(splits)

    # -- run --------------------------------------------------------------------------------

    def run(self, resume: bool = False) -> dict[str, Any]:
        """Train, validate every epoch, test the best checkpoint; return ``results.json``.

        Under ``torchrun`` the process group is made from its environment variables (and
        torn down at the end) and training is data-parallel (:mod:`mltm.distributed`);
        rank 0 validates and writes every file, and every rank returns the results.
        """
        self.device = self.splits.device = distributed.device_for_rank(self.device)
        with distributed.process_group(self.device):
            return self._run(resume)

    def _run(self, resume: bool) -> dict[str, Any]:
        from tqdm import tqdm

        cfg = self.cfg
        t_start = time.perf_counter()
        seed_everything(cfg.seed)
        world, main = distributed.get_world_size(), distributed.is_main_process()
        source = make_source(cfg, self.splits, self.device)
        with distributed.main_process_first():  # rank 0 fills the embedding cache
            source.prepare()
        model, loss, opt = self._build(source)
        history: list[dict[str, Any]] = []
        best = {"epoch": -1, "score": -math.inf}
        start_epoch = 0
        self.out.mkdir(parents=True, exist_ok=True)
        last = self.out / "last.pt"
        if resume:
            history, best, start_epoch = resume_from(last, cfg, model, loss, opt, world)
        distributed.broadcast_parameters(model, loss)  # the same start on every rank
        if main:
            save_config(cfg, self.out / "config.yaml")
        frozen = frozen_prefixes(model, cfg)
        dims = {"audio": model.audio_dim, "text": model.text_dim}
        params = [p for p in list(model.parameters()) + list(loss.parameters()) if p.requires_grad]

        epochs = tqdm(range(start_epoch, cfg.optim.epochs), desc="epochs",
                      disable=not cfg.progress or not main, initial=start_epoch,
                      total=cfg.optim.epochs)
        for epoch in epochs:
            t0 = time.perf_counter()
            model.train()
            total, n_steps, unconverged, clamped = 0.0, 0, 0, 0
            projections_before = loss.projections_computed
            for batch in source.batches(epoch):
                a, t, clip = source.step_embeddings(model, batch)
                if world > 1:  # the global batch (or, per-rank plans, this rank's slice)
                    a, t, clip = distributed.batch_for_loss(
                        a, t, clip, global_plan=cfg.dist.global_plan, dim=cfg.model.joint_dim)
                if a is None or a.shape[0] < 2:
                    continue
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", ConvergenceWarning)
                    value = loss(a, t, clip)
                unconverged += sum(issubclass(w.category, ConvergenceWarning) for w in caught)
                for w in caught:
                    if not issubclass(w.category, ConvergenceWarning):
                        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
                if not torch.isfinite(value):
                    raise FloatingPointError(
                        f"non-finite loss at epoch {epoch}: lower optim.lr or raise loss.eps")
                opt.zero_grad(set_to_none=True)
                value.backward()
                distributed.average_gradients(params)  # = one process on the global batch
                if cfg.optim.grad_clip:
                    nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
                opt.step()
                clamped += loss.project_()  # eq. 11: M <- Proj(F(M, grad M))
                distributed.broadcast_parameters(loss)  # the same M on every rank
                total += float(value.detach())
                n_steps += 1
            if world > 1 and not cfg.dist.global_plan:  # per-rank losses: their mean
                total, unconverged = distributed.all_reduce_sum([total / world, unconverged])
                unconverged = int(unconverged)
            if not main:  # rank 0 validates and writes; the others wait for it
                distributed.barrier()
                continue
            row: dict[str, Any] = {"epoch": epoch, "train_loss": total / max(n_steps, 1),
                                   "steps": n_steps, "sinkhorn_unconverged": unconverged,
                                   "clamped_eigenvalues": clamped,
                                   # steps whose eq. 11 projection needed the eigendecomposition
                                   "projections_computed":
                                       loss.projections_computed - projections_before}
            cost = getattr(loss, "cost", None)
            if cost is not None and cost.kind != "euclidean":
                row["metric_min_eigenvalue"] = cost.min_eigenvalue_of_matrix()
            vm = self._validate(model, loss, source.validation_set(model))
            row.update({f"val_{d}_{k}": vm[d][k]
                        for d in ("a2t", "t2a") for k in ("R@1", "R@5", "R@10")})
            row["val_r_sum"] = r_sum(vm)
            row["val_modality_gap"] = vm["modality_gap"]
            row["seconds"] = time.perf_counter() - t0
            history.append(row)
            score = row["val_r_sum"] if cfg.eval.select_by == "r_sum" else -row["train_loss"]
            improved = score > best["score"]
            if improved:
                best = {"epoch": epoch, "score": score}
            payload = checkpoint_payload(cfg, epoch, model, loss, opt, history, best, dims,
                                          frozen, world_size=world)
            save_checkpoint(last, payload)
            if improved:
                save_checkpoint(self.out / "best.pt", payload)
            self._write_metrics(history)
            epochs.set_postfix(loss=f"{row['train_loss']:.4f}", val_r_sum=f"{row['val_r_sum']:.1f}")
            distributed.barrier()

        results = self._test(source, t_start, history, best) if main else None
        return distributed.broadcast_object(results)

    def training_source(self) -> BatchSource:
        """The config's prepared batch source: its training pairs (noise included) and, on the
        fast path, their encoder outputs (:class:`mltm.sources.CachedFeatureSource`)."""
        source = make_source(self.cfg, self.splits, self.device)
        source.prepare()
        return source

    def initial_state(self):
        """``(model, loss, optimiser)`` as a run of this config starts: seeded from
        ``config.seed``, before the first step. The model needs no training pairs, so the
        source is not prepared (no pair captions are encoded)."""
        return self._build(make_source(self.cfg, self.splits, self.device))

    def _build(self, source: BatchSource):
        """A freshly seeded model (from the source), its loss and the hybrid optimiser."""
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        model = source.build_model()
        loss = build_loss_from_config(cfg, dtype=source.param_dtype)
        model.to(self.device)
        loss.to(self.device)
        return model, loss, build_optimizer(cfg.optim, model, loss)

    def _validate(self, model, loss, es: EvalSet) -> dict[str, Any]:
        a, t = project_evalset(model, es, self.device)
        group = es.label_groups() if self.cfg.eval.relevance == "label" else None
        return evaluate_embeddings(a, t, es.caption_clip, loss, rank_by="distance",
                                   eps=self.cfg.eval.plan_eps, clip_group=group, evalset=es)

    def _write_metrics(self, history: list[dict[str, Any]]) -> None:
        keys: list[str] = []
        for row in history:
            keys += [k for k in row if k not in keys]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys)
        w.writeheader()
        w.writerows(history)
        with atomic_write(self.out / "metrics.csv") as f:
            f.write(buf.getvalue())
        with atomic_write(self.out / "history.json") as f:
            json.dump(history, f, indent=1)

    def _test(self, source: BatchSource, t_start: float, history, best) -> dict[str, Any]:
        cfg = self.cfg
        _, model, loss, ckpt = source.load_checkpoint(self.out / "best.pt")
        es = source.test_set(model)
        a, t = project_evalset(model, es, self.device)
        group = es.label_groups() if cfg.eval.relevance == "label" else None
        # per-query outcomes (expected hit probabilities, ranks, AP) for paired statistics
        # (mltm.verdicts); the query metadata (clip, label) is the same for both rankings
        test = {rank_by: evaluate_embeddings(a, t, es.caption_clip, loss, rank_by=rank_by,
                                             eps=cfg.eval.plan_eps, clip_group=group,
                                             evalset=es, per_query=True)
                for rank_by in ("distance", "plan")}
        test["queries"] = test["distance"].pop("queries")
        test["plan"].pop("queries")
        results = {
            "provenance": provenance(self.device, cfg.to_dict(), time.perf_counter() - t_start,
                                     world_size=distributed.get_world_size()),
            "dataset": str(self.root.name),
            "best_epoch": best["epoch"],
            "best_val": history[best["epoch"]] if 0 <= best["epoch"] < len(history) else None,
            "test": test,
            "test_clips": int(a.shape[0]),
            "test_captions": int(t.shape[0]),
            "skipped_clips": {"test": es.skipped},
        }
        with atomic_write(self.out / "results.json") as f:
            json.dump(results, f, indent=1, default=float)
        return results


# -- command line ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Command line of ``python -m mltm.train``; returns the exit status (2 on a known error)."""
    p = argparse.ArgumentParser(prog="python -m mltm.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="YAML config (see mltm.config)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set optim.lr=3e-4 (repeatable)")
    p.add_argument("--out", help="output directory (overrides out_dir)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    add_debug_flag(p)
    args = p.parse_args(argv)

    def body() -> int:
        overrides = list(args.set) + ([f"out_dir={args.out}"] if args.out else [])
        cfg = load_config(args.config, overrides)
        results = Trainer(cfg).run(resume=args.resume)
        d = results["test"]["distance"]
        if distributed.is_main_process():
            print(json.dumps({"out_dir": cfg.out_dir, "best_epoch": results["best_epoch"],
                              "test_a2t_R@1": d["a2t"]["R@1"], "test_t2a_R@1": d["t2a"]["R@1"]}))
        return 0

    # known errors: one line "error: ..." on stderr, exit status 2 (--debug: traceback)
    return run_cli(body, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())

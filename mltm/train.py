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

Every epoch: validation retrieval under each ranking of ``eval.rankings`` (default: by the
learned distance and by the transductive Sinkhorn plan), a row in ``metrics.csv`` and
``history.json``, and an atomically written checkpoint ``last.pt``. Model selection uses the
ranking a table reports (:class:`Selection`): with ``eval.select_by: r_sum`` each ranking keeps
its own best checkpoint (``best_distance.pt``, ``best_plan.pt``) and is tested with it, so
m-LTM's plan numbers come from the epoch the plan ranking chose, not from the epoch its
(degenerate) distance ranking chose; ``best.pt`` is a copy of the first ranking's
(``best_distance.pt`` by default, what ``best.pt`` always was). With ``select_by: loss`` every
ranking shares ``best.pt``. ``--resume`` continues from ``last.pt`` exactly: the batches of an
epoch depend only on ``(seed, epoch)`` and the RNG states are restored. At the end each
ranking is evaluated on the test split with the checkpoint it selected, into
``results.json`` (:meth:`Trainer.run` lists its keys).

``torchrun --nproc-per-node N -m mltm.train ...`` trains data-parallel on the same global
batches, with the plan over the whole global batch (:mod:`mltm.distributed`,
``dist.global_plan``); rank 0 validates and writes every file.
"""

from __future__ import annotations

import argparse
import copy
import csv
import io
import json
import math
import sys
import time
import typing
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
from mltm.losses import MatchingLoss, NTXentLoss
from mltm.model import check_heads
from mltm.ot import ConvergenceWarning
from mltm.provenance import provenance
from mltm.retrieval import RankBy
from mltm.sources import BatchSource, make_source

__all__ = [
    "Trainer",
    "Selection",
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


#: Rankings the test split is always evaluated under (besides ``eval.rankings``).
TEST_RANKINGS = ("distance", "plan")


def _history_prefix(ranking: str) -> str:
    """Prefix of a ranking's validation columns: ``val_`` for distance (the columns it always
    had: ``val_r_sum``, ``val_a2t_R@1``, ...), ``val_<ranking>_`` for the others."""
    return "val_" if ranking == "distance" else f"val_{ranking}_"


class Selection:
    """Model selection on validation, one best checkpoint per selection criterion.

    The criteria (*selectors*) are the rankings of ``eval.rankings`` when ``eval.select_by``
    is ``r_sum`` (a ranking's score is its validation R@1+R@5+R@10 over both directions, the
    history column ``val_r_sum`` for distance and ``val_<ranking>_r_sum`` for the others), or
    the single criterion ``loss`` (minus the epoch's mean training loss) shared by every
    ranking. The state ``{selector: {"epoch", "score"}}`` is what a checkpoint stores as
    ``best``.

    Files: ``best_<ranking>.pt`` per ranking, and ``best.pt``, a copy of the first
    selector's (``best_distance.pt`` by default; the only best file under ``loss``).

    Args:
        select_by: ``r_sum`` or ``loss`` (``eval.select_by``).
        rankings: The validated rankings (``eval.rankings``), checked: a non-empty list of
            distinct rankings :func:`mltm.retrieval.retrieval_metrics` knows.
    """

    def __init__(self, select_by: str, rankings: list[str]) -> None:
        if select_by not in ("r_sum", "loss"):
            raise ValueError(f"eval.select_by {select_by!r}: use 'r_sum' or 'loss'")
        # rankings computed from the split alone (plan_reference needs reference embeddings)
        known = tuple(r for r in typing.get_args(RankBy) if r != "plan_reference")
        if (not isinstance(rankings, (list, tuple)) or not rankings
                or not all(isinstance(r, str) for r in rankings)):
            raise ValueError(f"eval.rankings {rankings!r}: give a non-empty list of rankings, "
                             f"e.g. [distance, plan]")
        unknown = [r for r in rankings if r not in known]
        if unknown:
            raise ValueError(f"eval.rankings: unknown ranking(s) {', '.join(map(repr, unknown))}; "
                             f"use any of {', '.join(known)}")
        if len(set(rankings)) != len(rankings):
            raise ValueError(f"eval.rankings {list(rankings)!r} names a ranking twice; "
                             "list each once")
        self.select_by = select_by
        self.rankings = tuple(rankings)
        self.selectors = self.rankings if select_by == "r_sum" else ("loss",)

    def initial(self) -> dict[str, dict[str, Any]]:
        """The state before the first epoch: no best epoch for any selector."""
        return {s: {"epoch": -1, "score": -math.inf} for s in self.selectors}

    def from_checkpoint(self, best: dict[str, Any], path: Path) -> dict[str, dict[str, Any]]:
        """The state a checkpoint stored; one written before per-ranking selection (a single
        ``{"epoch", "score"}``) is read as the ``loss`` criterion's or as ``distance``'s.

        Raises:
            ValueError: an older checkpoint selected by distance ``r_sum`` cannot say which
                epoch the other rankings would have selected.
        """
        if "epoch" in best and "score" in best:  # before per-ranking selection
            if self.selectors in (("loss",), ("distance",)):
                return {self.selectors[0]: dict(best)}
            raise ValueError(f"--resume: {path} was written before per-ranking selection "
                             f"(eval.rankings) and cannot say which epoch the rankings "
                             f"{', '.join(s for s in self.selectors if s != 'distance')} "
                             "select; retrain in a new out_dir")
        if set(best) != set(self.selectors):
            raise ValueError(f"--resume: {path} selects by {sorted(best)}, this config by "
                             f"{sorted(self.selectors)}; use the same eval settings")
        return {s: dict(best[s]) for s in self.selectors}

    def scores(self, row: dict[str, Any]) -> dict[str, float]:
        """Each selector's score of an epoch's history row (larger is better)."""
        if self.select_by == "loss":
            return {"loss": -row["train_loss"]}
        return {r: row[_history_prefix(r) + "r_sum"] for r in self.rankings}

    def update(self, best: dict[str, dict[str, Any]], row: dict[str, Any]) -> list[str]:
        """Record the row's epoch as best for every selector it improves (strictly: a tie
        keeps the earlier epoch); return those selectors."""
        improved = []
        for s, score in self.scores(row).items():
            if score > best[s]["score"]:
                best[s] = {"epoch": row["epoch"], "score": score}
                improved.append(s)
        return improved

    def files(self, selector: str) -> tuple[str, ...]:
        """The checkpoint files a selector's best epoch is written to."""
        if self.select_by == "loss":
            return ("best.pt",)
        own = f"best_{selector}.pt"
        return (own, "best.pt") if selector == self.selectors[0] else (own,)

    def selector_of(self, ranking: str) -> str:
        """The selector whose checkpoint a ranking is tested with: the ranking itself when it
        selects, else the first selector (``loss``, or the first of ``eval.rankings``)."""
        return ranking if ranking in self.selectors else self.selectors[0]

    def test_rankings(self) -> tuple[str, ...]:
        """The rankings tested: ``eval.rankings``, then distance and plan if not among them."""
        return tuple(dict.fromkeys(self.rankings + TEST_RANKINGS))


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
        self.selection = Selection(config.eval.select_by, config.eval.rankings)
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
        """Train, validate every epoch, test the best checkpoints; return ``results.json``.

        Its keys: ``test`` (``{ranking: metrics}``, each ranking evaluated with the checkpoint
        it selected), ``selection`` (``{ranking: {"selected_by", "best_epoch",
        "checkpoint"}}``: which criterion chose that checkpoint, its epoch and file),
        ``test_cross`` (``{"<selector>_selected": {ranking: metrics}}``: every ranking with
        every selected checkpoint, to show what selection changes), ``best_epoch`` and
        ``best_val`` (the epoch of ``best.pt`` and its history row), ``sinkhorn`` (the
        training solves: ``max_iter``, ``tol``, ``solves``, ``capped`` and ``capped_share``,
        the share stopped at the cap; None for losses without a plan), ``provenance``,
        ``dataset``, ``test_clips``, ``test_captions`` and ``skipped_clips``.

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
        best = self.selection.initial()
        start_epoch = 0
        self.out.mkdir(parents=True, exist_ok=True)
        last = self.out / "last.pt"
        if resume:
            history, best, start_epoch = resume_from(last, cfg, model, loss, opt, world)
            best = self.selection.from_checkpoint(best, last)
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
            vm = self.evaluate(model, loss, source.validation_set(model),
                               self.selection.rankings)
            for ranking, m in vm.items():
                prefix = _history_prefix(ranking)
                row.update({f"{prefix}{d}_{k}": m[d][k]
                            for d in ("a2t", "t2a") for k in ("R@1", "R@5", "R@10")})
                row[f"{prefix}r_sum"] = r_sum(m)
            row["val_modality_gap"] = next(iter(vm.values()))["modality_gap"]  # any ranking's
            if isinstance(loss, NTXentLoss) and loss.learnable_temperature:
                row["temperature"] = loss.temperature  # τ after the epoch's last step
            row["seconds"] = time.perf_counter() - t0
            history.append(row)
            improved = self.selection.update(best, row)
            payload = checkpoint_payload(cfg, epoch, model, loss, opt, history, best, dims,
                                          frozen, world_size=world)
            save_checkpoint(last, payload)
            for name in dict.fromkeys(f for s in improved for f in self.selection.files(s)):
                save_checkpoint(self.out / name, payload)
            self._write_metrics(history)
            first = _history_prefix(self.selection.rankings[0]) + "r_sum"
            epochs.set_postfix(loss=f"{row['train_loss']:.4f}", **{first: f"{row[first]:.1f}"})
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

    def evaluate(self, model, loss: MatchingLoss, es: EvalSet, rankings: tuple[str, ...],
                 per_query: bool = False) -> dict[str, dict[str, Any]]:
        """``{ranking: retrieval metrics}`` of a model on an :class:`EvalSet` (validation every
        epoch, and the test split of each selected checkpoint): the embeddings are projected
        once and ranked under each ranking (``plan``: one Sinkhorn solve at
        ``eval.plan_eps``), with the config's relevance (``eval.relevance``). ``per_query``
        adds each query's outcomes and the query metadata
        (:func:`mltm.retrieval.retrieval_metrics`)."""
        a, t = project_evalset(model, es, self.device)
        group = es.label_groups() if self.cfg.eval.relevance == "label" else None
        return {r: evaluate_embeddings(a, t, es.caption_clip, loss, rank_by=r,
                                       eps=self.cfg.eval.plan_eps, clip_group=group,
                                       evalset=es, per_query=per_query)
                for r in rankings}

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
        """Evaluate every ranking with the checkpoint it selected; write ``results.json``."""
        cfg, sel = self.cfg, self.selection
        rankings = sel.test_rankings()
        cross: dict[str, dict[str, Any]] = {}
        tested: dict[int, dict[str, Any]] = {}  # by epoch: selectors that chose one epoch share
        for s in sel.selectors:
            epoch, name = best[s]["epoch"], sel.files(s)[0]
            if epoch not in tested:
                _, model, loss, _ = source.load_checkpoint(self.out / name)
                es = source.test_set(model)
                tested[epoch] = self.evaluate(model, loss, es, rankings, per_query=True)
            cross[f"{s}_selected"] = tested[epoch]
        selection = {r: {"selected_by": sel.selector_of(r),
                         "best_epoch": best[sel.selector_of(r)]["epoch"],
                         "checkpoint": sel.files(sel.selector_of(r))[0]} for r in rankings}
        # per-query outcomes (for mltm.verdicts' paired statistics) are kept for the reported
        # entries only, the query metadata (clip, label; the same test set) once
        test = {r: copy.deepcopy(cross[f"{selection[r]['selected_by']}_selected"][r])
                for r in rankings}
        queries = [m.pop("queries", None) for m in test.values()][0]
        test["queries"] = queries
        for entry in cross.values():
            for m in entry.values():
                m.pop("queries", None)
                for d in ("a2t", "t2a"):
                    m.get(d, {}).pop("per_query", None)
        first = best[sel.selectors[0]]["epoch"]
        results = {
            "provenance": provenance(self.device, cfg.to_dict(), time.perf_counter() - t_start,
                                     world_size=distributed.get_world_size()),
            "dataset": str(self.root.name),
            "best_epoch": first,  # the epoch of best.pt
            "best_val": history[first] if 0 <= first < len(history) else None,
            "selection": selection,
            "test": test,
            "test_cross": cross,
            "sinkhorn": self._sinkhorn_summary(history),
            "test_clips": int(es.audio.shape[0]),
            "test_captions": int(es.text.shape[0]),
            "skipped_clips": {"test": es.skipped},
        }
        with atomic_write(self.out / "results.json") as f:
            json.dump(results, f, indent=1, default=float)
        return results

    def _sinkhorn_summary(self, history: list[dict[str, Any]]) -> dict[str, Any] | None:
        """The training solves of the run: how many stopped at ``loss.sinkhorn_max_iter``
        before reaching ``loss.sinkhorn_tol`` (None for a loss that solves no plan)."""
        lc = self.cfg.loss
        if lc.name not in ("mltm", "mltm_partial"):
            return None
        # per-rank plans: every rank solves its own plan and the capped counts are summed
        per_rank = distributed.get_world_size() > 1 and not self.cfg.dist.global_plan
        solves = sum(r["steps"] for r in history) * (distributed.get_world_size()
                                                      if per_rank else 1)
        capped = sum(r["sinkhorn_unconverged"] for r in history)
        return {"max_iter": lc.sinkhorn_max_iter, "tol": lc.sinkhorn_tol, "solves": solves,
                "capped": capped, "capped_share": capped / solves if solves else 0.0}


# -- command line ---------------------------------------------------------------------------


def summary(results: dict[str, Any]) -> dict[str, Any]:
    """The one-line summary ``python -m mltm.train`` prints: per ranking the best epoch that
    selected its checkpoint and its test R@1, and the share of training Sinkhorn solves that
    stopped at the iteration cap (None for losses without a plan)."""
    out: dict[str, Any] = {"out_dir": results["provenance"]["config"]["out_dir"],
                           "best_epoch": results["best_epoch"]}
    for r in results["selection"]:
        m = results["test"][r]
        out[f"{r}_best_epoch"] = results["selection"][r]["best_epoch"]
        out[f"test_{r}_a2t_R@1"] = m["a2t"]["R@1"]
        out[f"test_{r}_t2a_R@1"] = m["t2a"]["R@1"]
    sk = results.get("sinkhorn")
    out["sinkhorn_capped_share"] = None if sk is None else sk["capped_share"]
    return out



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
        if distributed.is_main_process():
            print(json.dumps(summary(results)))
        return 0

    # known errors: one line "error: ..." on stderr, exit status 2 (--debug: traceback)
    return run_cli(body, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())

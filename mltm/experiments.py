"""Experiment grids for the book's chapters: encode once, train many runs, record, tabulate.

The experiment chapters train grids of runs (losses × seeds × ε, noise levels × masses, metric
variants) on frozen encoders, then show this execution beside a recorded run. This module does
that orchestration, so a chapter keeps only what it teaches (which runs, which tables):

    paths = repo_paths()                                   # repository root and data folder
    data = encode_dataset(train_config(paths.data / "debsfx-ci", ...))  # encoder outputs, once
    exp = Experiment("retrieval", config, SETTINGS, paths=paths)
    for seed in SETTINGS["seeds"]:
        exp.run(("debsfx-ci", "m-LTM", 0.05, seed), make_config(...), data)  # trained, recorded
    exp.finish()
    for view in exp.views():                               # this execution, the recorded run
        records_frame(view.records, ("dataset", "method", "eps", "seed"))  # a tidy table

* :func:`encode_dataset` computes (or loads from the feature cache) the encoder outputs of the
  train/val/test splits once; every run of the grid trains on them.
* :class:`Experiment` runs one key at a time into a fresh directory, adds the results and the
  history to its :class:`~mltm.records.Records` and saves them atomically after every run; a
  key already recorded (an interrupted run started again) is not trained again.
* :func:`records_frame` turns records into a tidy :class:`pandas.DataFrame`, one row per
  run × split × ranking × direction × metric, with the key parts as named columns.
* :meth:`Experiment.views` gives this execution and the recorded run of the same experiment
  (``results/<experiment>/<config>/records.json``) as :class:`View` objects with their labels.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from mltm.config import TrainConfig, config_from_dict
from mltm.provenance import provenance
from mltm.records import Records, load_records, records_file
from mltm.train import EvalSet, Trainer, _history_prefix

__all__ = [
    "GRID_SIZES",
    "grid_settings",
    "RepoPaths",
    "repo_paths",
    "train_config",
    "EncodedDataset",
    "encode_dataset",
    "TrainingPairs",
    "training_pairs",
    "initial_model",
    "evaluate_selected",
    "best_val_r_sum",
    "select_on_ladder",
    "Experiment",
    "View",
    "records_frame",
    "SPLITS",
]

#: The splits a grid's runs are trained and evaluated on.
SPLITS = ("train", "val", "test")


# -- where things are -------------------------------------------------------------------------


@dataclass(frozen=True)
class RepoPaths:
    """Where a chapter finds the repository and the built datasets.

    Attributes:
        root: The repository root (the folder holding ``_toc.yml``).
        data: The datasets: ``$MLTM_DATA`` when set, else ``root / "data"``.
    """

    root: Path
    data: Path

    @property
    def results(self) -> Path:
        """``root / "results"``: the recorded runs, one folder per experiment."""
        return self.root / "results"


def repo_paths(start: str | os.PathLike | None = None) -> RepoPaths:
    """The repository root above ``start`` (default: the working directory) and the data folder.

    A chapter runs from ``book/chapters`` (papermill) or ``book/golden`` (nbval); both lie
    below the root, which is the first folder up that holds ``_toc.yml``.

    Raises:
        FileNotFoundError: no folder from ``start`` upwards holds ``_toc.yml``.
    """
    here = Path(start if start is not None else Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "_toc.yml").is_file():
            data = os.environ.get("MLTM_DATA")
            return RepoPaths(root=folder, data=Path(data) if data else folder / "data")
    raise FileNotFoundError(f"no _toc.yml in {here} or any folder above it: run the chapter "
                            "from inside the mltm repository")


#: Run sizes shared by the book's grid chapters, by chapter configuration: joint space, head
#: width, batch, epochs, seeds and the Sinkhorn iteration cap of training (``ci``: CI on a CPU;
#: ``cpu``: the recorded runs; ``full``: a GPU).
GRID_SIZES: dict[str, dict[str, Any]] = {
    "ci": dict(joint=64, hidden=128, batch=32, epochs=6, seeds=(0,), max_iter=30),
    "cpu": dict(joint=256, hidden=512, batch=64, epochs=10, seeds=(0, 1, 2), max_iter=1000),
    "full": dict(joint=256, hidden=512, batch=64, epochs=20, seeds=(0, 1, 2), max_iter=1000),
}


def grid_settings(config: str, dataset: str) -> dict[str, Any]:
    """``{"dataset": dataset, **GRID_SIZES[config]}``: a grid chapter's settings (a fresh dict).

    Raises:
        ValueError: ``config`` is not one of :data:`GRID_SIZES`.
    """
    if config not in GRID_SIZES:
        raise ValueError(f"unknown chapter configuration {config!r}; use one of "
                         f"{sorted(GRID_SIZES)}")
    return {"dataset": dataset, **GRID_SIZES[config]}


def train_config(dataset: str | os.PathLike, *, loss: dict[str, Any], seed: int,
                 joint_dim: int, hidden_dim: int, batch_size: int, epochs: int,
                 lr: float = 1e-3, data: dict[str, Any] | None = None,
                 model: dict[str, Any] | None = None, eval: dict[str, Any] | None = None,
                 out_dir: str | os.PathLike = "runs/experiment") -> TrainConfig:
    """The config of one run of a chapter's grid: frozen encoders (the fast path), no progress bar.

    Args:
        dataset: The dataset folder.
        loss: The ``loss`` section (name, ε, Sinkhorn settings, metric; see :mod:`mltm.config`).
        seed: The run's seed.
        joint_dim: The joint embedding space's dimension.
        hidden_dim: The projection heads' hidden width.
        batch_size: Pairs per mini-batch.
        epochs: Training epochs.
        lr: Adam's learning rate.
        data: More keys of the ``data`` section (``noise``, ``noise_seed``, ...).
        model: More keys of the ``model`` section (``feature_dtype``, heads, ...).
        eval: Keys of the ``eval`` section (``rankings``, ``plan_eps``, ...).
        out_dir: Where the run writes; :meth:`Experiment.run` gives each run its own folder.
    """
    return config_from_dict({
        "data": {"dataset": str(dataset), **(data or {})},
        "model": {"joint_dim": joint_dim, "hidden_dim": hidden_dim, **(model or {})},
        "loss": loss,
        "optim": {"lr": lr, "batch_size": batch_size, "epochs": epochs},
        **({"eval": eval} if eval else {}),
        "out_dir": str(out_dir), "progress": False, "seed": seed,
    })


# -- encoding a dataset once ------------------------------------------------------------------


@dataclass
class EncodedDataset:
    """A dataset's frozen-encoder outputs, computed once and shared by every run of a grid.

    Attributes:
        root: The dataset folder.
        evalsets: Encoder outputs of each split (``train``, ``val``, ``test``).
        encoders: The built ``(audio, text)`` encoders that produced them.
    """

    root: Path
    evalsets: dict[str, EvalSet]
    encoders: tuple[nn.Module, nn.Module]

    @property
    def name(self) -> str:
        """The dataset's folder name (``debsfx-ci``, ``instruments-mini``, ...)."""
        return self.root.name

    def trainer(self, config: TrainConfig) -> Trainer:
        """A :class:`~mltm.train.Trainer` of ``config`` on these encoder outputs."""
        return Trainer(config, evalsets=self.evalsets, encoders=self.encoders)

    def train(self, config: TrainConfig) -> dict[str, Any]:
        """Train ``config`` from scratch into ``config.out_dir`` (emptied first); its results."""
        out = Path(config.out_dir)
        if out.exists():
            shutil.rmtree(out)  # a fresh run, never a resumed one
        return self.trainer(config).run()

    def sizes(self, split: str = "test") -> dict[str, int]:
        """``{"clips": N, "captions": M}`` of a split."""
        es = self.evalsets[split]
        return {"clips": int(es.audio.shape[0]), "captions": int(es.text.shape[0])}


def encode_dataset(config: TrainConfig) -> EncodedDataset:
    """Encode the train, val and test splits of ``config``'s dataset with its frozen encoders.

    The outputs depend on the dataset and the ``model`` section only (encoders, feature
    precision, pooled or sequence outputs), so one encoding serves every loss, seed and ε of
    a grid. They are cached on disk (:mod:`mltm.embed`): a second call loads them.

    Raises:
        ValueError: ``config`` fine-tunes an encoder (outputs change every step).
    """
    if not (config.model.freeze_audio and config.model.freeze_text):
        raise ValueError("encode_dataset needs frozen encoders (model.freeze_audio and "
                         "model.freeze_text); a fine-tuned encoder's outputs change every step")
    trainer = Trainer(config)
    evalsets = {split: trainer.evalset(split) for split in SPLITS}
    return EncodedDataset(root=trainer.root, evalsets=evalsets, encoders=trainer.encoders())


@dataclass
class TrainingPairs:
    """The training pairs of a config as its run sees them (noise included), with features.

    Attributes:
        dataset: The pairs view of the training split; ``dataset.noise`` records which pairs
            were corrupted (``data.noise`` of the config).
        audio: (P, Da) encoder output of each pair's clip (zeros where ``valid`` is False).
        text: (P, Dt) encoder output of each pair's (possibly corrupted) caption.
        valid: (P,) whether the pair's clip could be decoded (the runs train on these only).
        labels: Class label of each pair's clip (None where unknown or not decoded).
    """

    dataset: Any
    audio: torch.Tensor
    text: torch.Tensor
    valid: torch.Tensor
    labels: list[str | None]


def training_pairs(data: EncodedDataset, config: TrainConfig) -> TrainingPairs:
    """The noisy training pairs of ``config`` and their encoder outputs, as its run trains on them.

    The same pairs, corruptions and text features as :meth:`mltm.train.Trainer.run` on the fast
    path, so a chapter can score plans on exactly what a model was trained on.
    """
    source = data.trainer(config).training_source()
    pairs, text, text_row = source.pairs, source.pair_text[0], source.pair_text_row
    rows = source.clip_row[torch.as_tensor(pairs.pair_clip)]
    valid = rows >= 0
    train = data.evalsets["train"]
    audio = torch.zeros((len(rows), *train.audio.shape[1:]), dtype=train.audio.dtype)
    audio[valid] = train.audio[rows[valid]]
    labels = [train.labels[r] if r >= 0 else None for r in rows.tolist()]
    return TrainingPairs(dataset=pairs, audio=audio, text=text[text_row], valid=valid,
                         labels=labels)


def initial_model(data: EncodedDataset, config: TrainConfig,
                  device: str | torch.device = "cpu") -> tuple[nn.Module, nn.Module]:
    """``(model, loss)`` of ``config`` at initialisation, on ``device``: the weights and M a run
    starts from (seeded as :meth:`mltm.train.Trainer.run` seeds them)."""
    model, loss, _ = data.trainer(config).initial_state()
    return model.to(device), loss.to(device)


def best_val_r_sum(history: list[dict[str, Any]],
                   rankings: Iterable[str] = ("distance", "plan")) -> float:
    """The best validation R-sum of a run over its epochs, under the best of ``rankings``.

    The score a chapter's learning-rate grid compares: each loss gets the rate at which it
    does best on validation under either ranking (history columns ``val_r_sum`` for distance,
    ``val_<ranking>_r_sum`` for the others).

    Raises:
        ValueError: the history has no epoch, or lacks a ranking's column (the run did not
            validate by it: add it to ``eval.rankings``).
    """
    if not history:
        raise ValueError("the run's history has no epoch to score")
    columns = [_history_prefix(r) + "r_sum" for r in rankings]  # the trainer's column names
    missing = [c for c in columns if c not in history[0]]
    if missing:
        raise ValueError(f"the history has no {', '.join(missing)}: the run did not validate by "
                         f"that ranking; add it to eval.rankings")
    return max(float(row[c]) for row in history for c in columns)


def select_on_ladder(score: Callable[[float], float], ladder: Iterable[float],
                     start: Iterable[float]) -> tuple[float, dict[float, float]]:
    """The value of ``ladder`` with the highest ``score``, searched outward from ``start``.

    A learning-rate grid whose best value lies on its edge has not bracketed the optimum. So
    the values ``start`` (consecutive rungs of the ordered ``ladder``) are scored first, and
    while the best one is the lowest (highest) scored rung and the ladder goes further, the next
    rung below (above) is scored too. A single start value is never extended.

    Returns:
        ``(best value, {value: score})`` of every value scored, in ladder order. Ties keep the
        lower rung.

    Raises:
        ValueError: ``start`` is empty, or holds values not on the ladder or not consecutive.
    """
    ladder, start = list(ladder), list(start)
    if not start:
        raise ValueError("select_on_ladder: start is empty; give at least one ladder value")
    missing = [x for x in start if x not in ladder]
    if missing:
        raise ValueError(f"select_on_ladder: start values {missing} are not on the ladder {ladder}")
    lo, hi = ladder.index(start[0]), ladder.index(start[-1])
    if ladder[lo:hi + 1] != start:
        raise ValueError(f"select_on_ladder: start {start} must be consecutive rungs of {ladder}")
    scores = {x: float(score(x)) for x in start}
    while len(start) > 1:
        best = max(ladder[lo:hi + 1], key=lambda x: scores[x])
        if best == ladder[lo] and lo > 0:
            lo -= 1
            scores[ladder[lo]] = float(score(ladder[lo]))
        elif best == ladder[hi] and hi < len(ladder) - 1:
            hi += 1
            scores[ladder[hi]] = float(score(ladder[hi]))
        else:
            break
    tried = ladder[lo:hi + 1]
    return max(tried, key=lambda x: scores[x]), {x: scores[x] for x in tried}


def evaluate_selected(run_dir: str | os.PathLike, data: EncodedDataset, *, split: str = "test",
                      rankings: Iterable[str] = ("distance", "plan"),
                      per_query: bool = True) -> dict[str, Any]:
    """Each ranking's metrics on ``data``'s ``split`` with the checkpoint that ranking selected.

    For evaluating a trained run on another dataset (cross-set transfer, Table 9) as the run's
    own test is evaluated: ranking ``r`` uses ``run_dir/best_<r>.pt`` (the checkpoint selected
    on validation by ``r``), the run's plan ε and relevance, and expected ranks under random
    tie-breaking. The result has the layout of ``results["test"]`` (``{ranking: metrics,
    "queries": ...}`` with ``per_query``), so :func:`mltm.verdicts.verdict` reads it with
    ``Claim(split=...)`` naming where it is stored.

    Raises:
        FileNotFoundError: the run has no ``best_<ranking>.pt`` (trained without that ranking
            in ``eval.rankings``).
    """
    from mltm.checkpoint import load_checkpoint
    from mltm.evaluation import evaluate_embeddings, project_evalset

    es = data.evalsets[split]
    out: dict[str, Any] = {}
    for r in rankings:
        path = Path(run_dir) / f"best_{r}.pt"
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist: the run did not select a checkpoint "
                                    f"by {r!r}; add it to eval.rankings and retrain")
        cfg, model, loss, _ = load_checkpoint(path, with_encoders=False)
        group = es.label_groups() if cfg.eval.relevance == "label" else None
        with torch.no_grad():
            a, t = project_evalset(model, es, "cpu")
            out[r] = evaluate_embeddings(a, t, es.caption_clip, loss, rank_by=r,
                                         eps=cfg.eval.plan_eps, clip_group=group, evalset=es,
                                         per_query=per_query)
    if per_query:
        out["queries"] = [m.pop("queries", None) for m in out.values()][0]
    return out


# -- a grid of runs ---------------------------------------------------------------------------


def _slug(part: Any) -> str:
    text = "".join(c if c.isalnum() or c in ".-" else "-" for c in str(part))
    return text.strip("-") or "-"


def _normalised(value: Any) -> Any:
    """``value`` as JSON reads it back (tuples become lists), to compare settings."""
    return json.loads(json.dumps(value, default=float))


def _added_seeds(before: Any, now: Any) -> list | None:
    """The seeds ``now`` adds to ``before`` when the two settings differ only by those (the
    recorded seeds first, in order); otherwise None."""
    if not (isinstance(before, dict) and isinstance(now, dict)):
        return None
    old, new = before.get("seeds"), now.get("seeds")
    if (not isinstance(old, list) or not isinstance(new, list) or len(new) <= len(old)
            or new[:len(old)] != old):
        return None
    if {k: v for k, v in before.items() if k != "seeds"} != {k: v for k, v in now.items()
                                                             if k != "seeds"}:
        return None
    return new[len(old):]


def _reproduced(results: dict[str, Any]) -> dict[str, Any]:
    """What a retrained run must give back: its selected epochs and test R@k (rounded to
    1e-9, below any metric's resolution and above the rounding of a JSON round trip)."""
    out: dict[str, Any] = {"best_epoch": results.get("best_epoch")}
    for name, sel in (results.get("selection") or {}).items():
        out[f"selection {name}"] = sel.get("best_epoch")
    for ranking, block in (results.get("test") or {}).items():
        if ranking == "queries" or not isinstance(block, dict):
            continue
        for direction, metrics in block.items():
            if isinstance(metrics, dict):
                for k, v in metrics.items():
                    if k.startswith("R@") and isinstance(v, (int, float)):
                        out[f"{ranking} {direction} {k}"] = round(float(v), 9)
    return out


class Experiment:
    """One experiment of a chapter under one configuration: its runs, records and views.

    Args:
        name: The experiment (``results/<name>/`` holds its recorded runs).
        config: The chapter configuration (``"ci"``, ``"cpu"``, ``"full"``).
        settings: The chapter's settings for that configuration; stored in the provenance.
        paths: Where the repository is (default :func:`repo_paths`).
        record: Write ``results/<name>/<config>/records.json`` (default: every configuration
            except ``"ci"``, whose runs are CI's regression test and are not recorded).
        device: Named in the provenance (default: CUDA when present, else CPU).
        log: Where a line per run goes (default :func:`print`; None: silent).

    With ``record``, checkpoints go to ``_build/runs/<name>/<config>/`` and an existing
    records file is resumed: its runs are kept and not trained again. Settings that only add
    seeds after the recorded ones (``seeds: [0, 1, 2]`` → ``[0, 1, 2, 3, 4]``) resume too, and
    the provenance notes the seeds added. Otherwise they go to a
    temporary folder that :meth:`finish` removes.

    Raises:
        ValueError: the records file to resume was written with other settings.
    """

    def __init__(self, name: str, config: str, settings: dict[str, Any], *,
                 paths: RepoPaths | None = None, record: bool | None = None,
                 device: str | None = None, log: Callable[[str], Any] | None = print) -> None:
        self.name, self.config = name, config
        self.paths = paths or repo_paths()
        self.record = config != "ci" if record is None else record
        self.log = log or (lambda line: None)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._start = time.perf_counter()
        self._earlier_wall_s = 0.0
        prov = provenance(device, {"name": config, **settings})
        if self.record:
            # an existing records.json is resumed; new records are written gzip-compressed
            self.records_path: Path | None = records_file(self.paths.results / name / config)
            self.runs_dir = self.paths.root / "_build" / "runs" / name / config
        else:
            self.records_path = None
            self.runs_dir = Path(tempfile.mkdtemp(prefix=f"mltm-{name}-"))
        if self.records_path is not None and self.records_path.exists():
            records = Records.load(self.records_path)
            before = _normalised(records.provenance.get("config"))
            now = _normalised(prov["config"])
            resumed = {k: prov[k] for k in ("commit", "date", "device")}
            added = _added_seeds(before, now)
            if added:  # more seeds of the same grid: the recorded runs stay valid
                records.provenance["config"] = now
                resumed["seeds_added"] = added
            elif before != now:
                raise ValueError(f"{self.records_path} was written with other settings "
                                 f"({records.provenance.get('config')!r}, now "
                                 f"{prov['config']!r}); move it away to start afresh")
            records.provenance.setdefault("resumed", []).append(resumed)
            # the wall time of the executions before this one (each save adds this one's); a
            # record from before saves kept it (an execution stopped before finish()) counts
            # its runs' own training times instead, and says so
            earlier = records.provenance.get("wall_time_s")
            if earlier is None and records.runs:
                earlier = sum(float(r.get("provenance", {}).get("wall_time_s") or 0.0)
                              for r in records.runs.values())
                records.provenance["wall_time_from"] = (
                    "the recorded runs' training times for the executions before "
                    f"{prov['date'][:10]} (stopped before saving their wall time)")
            self._earlier_wall_s = float(earlier or 0.0)
        else:
            records = Records(provenance=prov)
        self.records = records

    def run_dir(self, key: Iterable) -> Path:
        """The folder of a run's checkpoints, history and results (one level per key part)."""
        return self.runs_dir.joinpath(*(_slug(p) for p in key))

    def run(self, key: Iterable, config: TrainConfig, data: EncodedDataset, *,
            evaluate: Callable[[Path], dict[str, Any]] | None = None) -> dict[str, Any]:
        """Train one run of the grid from scratch, record it and save the records; its results.

        Args:
            key: The run's key in the records (e.g. ``("debsfx", "m-LTM", 0.05, 0)``).
            config: Its config; ``out_dir`` is replaced by :meth:`run_dir`.
            data: The encoder outputs it trains on (:func:`encode_dataset`).
            evaluate: Called with the run's folder after training; the dict it returns is
                merged into the recorded results (e.g. zero-shot evaluations of ``best.pt``).

        A key that is already recorded is not trained again: its recorded results are returned.
        """
        key = tuple(key)
        if key in self.records.runs:
            self.log(f"{' '.join(map(str, key))}: already recorded, not trained again")
            return self.records.runs[key]
        out = self.run_dir(key)
        start = time.perf_counter()
        results = data.train(dataclasses.replace(config, out_dir=str(out)))
        if evaluate is not None:
            results = {**results, **evaluate(out)}
        history = json.loads((out / "history.json").read_text())
        self.records.add(key, results, history)
        self.save()  # after every run: an interruption loses nothing
        self.log(f"{' '.join(map(str, key))}: best epoch {results['best_epoch']}, "
                 f"{time.perf_counter() - start:.1f} s")
        return results

    def checkpoint(self, key: Iterable, data: EncodedDataset, which: str = "best.pt") -> Path:
        """A recorded run's checkpoint file, retrained from its record when it is not here.

        Records are committed, checkpoints are not: a chapter resumed from records written on
        another machine (or in a removed worktree) has the runs' results but not their files.
        A missing file is made again by retraining the run from the config in its record
        (``out_dir`` set to :meth:`run_dir`, the dataset to ``data``'s), and the retrained
        run's selected epochs and test R@k must equal the recorded ones (seeded CPU runs are
        deterministic), so the checkpoint is the one whose numbers the record holds.

        Args:
            key: The run's key in the records.
            data: The encoder outputs the run trained on (:func:`encode_dataset`).
            which: The file (``best.pt``, ``best_plan.pt``, ``last.pt``, ...).

        Raises:
            KeyError: ``key`` is not recorded.
            RuntimeError: the retrained run does not reproduce its record.
        """
        key = tuple(key)
        path = self.run_dir(key) / which
        if path.is_file():
            return path
        if key not in self.records.runs:
            raise KeyError(f"run {key!r} is not recorded; train it with Experiment.run first")
        recorded = self.records.runs[key]
        raw = dict(recorded["provenance"]["config"])
        raw["data"] = {**raw["data"], "dataset": str(data.root)}
        self.log(f"{' '.join(map(str, key))}: {which} is not on this machine; retraining the "
                 f"recorded run")
        again = data.train(dataclasses.replace(config_from_dict(raw), out_dir=str(path.parent)))
        now, then = _reproduced(again), _reproduced(recorded)
        if now != then:
            diff = {k: (then[k], now.get(k)) for k in then if now.get(k) != then[k]}
            raise RuntimeError(f"retraining run {key!r} did not reproduce its record (recorded, "
                               f"now: {diff}); re-record the experiment on this machine")
        if not path.is_file():
            raise FileNotFoundError(f"the retrained run {key!r} wrote no {which}")
        return path

    def save(self) -> Path | None:
        """Write the records atomically (recording experiments only), with the wall time so
        far (summed over a resumed recording's executions); the path written."""
        if self.records_path is None:
            return None
        self._store_wall_time()
        return self.records.save(self.records_path)

    def _store_wall_time(self) -> None:
        self.records.provenance["wall_time_s"] = round(
            self._earlier_wall_s + time.perf_counter() - self._start, 1)

    def finish(self) -> Path | None:
        """Store the wall time (summed over the executions of a resumed recording) and save
        (recording), or remove the temporary run folders."""
        self._store_wall_time()
        if not self.record:
            shutil.rmtree(self.runs_dir, ignore_errors=True)
        return self.save()

    def recorded(self) -> Records | None:
        """The recorded run shown beside this execution: ``results/<name>/`` (``full``, then
        ``cpu``) when this execution is not itself recording, else None."""
        if self.record:
            return None
        return load_records(self.paths.results / self.name)

    def views(self) -> list["View"]:
        """This execution, then the recorded run when there is one (see :class:`View`)."""
        views = [View(label=f"ours, this execution (config {self.config!r})",
                      short=f"ours, this execution ({self.config})", records=self.records,
                      live=True)]
        rec = self.recorded()
        if rec is not None:
            seeds = rec.provenance.get("config", {}).get("seeds", ())
            views.append(View(label=f"ours, {rec.label()}",
                              short=f"ours, recorded ({rec.config}, {len(seeds)} seeds)",
                              records=rec, live=False))
        return views


@dataclass
class View:
    """One of the runs a chapter shows: this execution or a recorded run.

    Attributes:
        label: The long label: ``ours, this execution (config 'ci')`` or ``ours, recorded
            run: config 'cpu' on <device>, commit <sha>, <date>, <minutes> min``.
        short: A short label for table columns.
        records: Its runs, histories, provenance and extra arrays.
        live: True for this execution, False for a recorded run.
    """

    label: str
    short: str
    records: Records
    live: bool = True
    _frames: dict = field(default_factory=dict, repr=False)

    @property
    def settings(self) -> dict[str, Any]:
        """The chapter settings that produced the runs (the provenance's ``config``)."""
        return self.records.provenance["config"]

    @property
    def extra(self) -> dict[str, Any]:
        """Experiment-specific data recorded with the runs."""
        return self.records.extra

    @property
    def title(self) -> str:
        """``"this execution"`` or ``"recorded run"``, for figure titles."""
        return "this execution" if self.live else "recorded run"

    def frame(self, key_names: Iterable[str]) -> "Any":
        """:func:`records_frame` of the view's records (computed once per key names)."""
        key_names = tuple(key_names)
        if key_names not in self._frames:
            self._frames[key_names] = records_frame(self.records, key_names)
        return self._frames[key_names]


# -- tables -----------------------------------------------------------------------------------


def records_frame(records: Records, key_names: Iterable[str], *,
                  splits: dict[str, Callable[[dict], dict]] | None = None):
    """A tidy :class:`pandas.DataFrame` of the runs' test metrics.

    One row per run × split × ranking × direction × metric, with columns ``*key_names``,
    ``split``, ``ranking`` (``distance``/``plan``), ``direction`` (``a2t``/``t2a``),
    ``metric`` (``R@1``, ``mAP@10``, ``medR``, ...) and ``value``; a ranking's modality gap is
    the metric ``modality_gap`` with direction ``both``.

    Args:
        records: The runs.
        key_names: A name for each part of the run keys.
        splits: Where each split's metrics are in a run's results, as ``{split: function}``
            returning ``{ranking: {direction: {metric: value}}}`` (default: the ``test`` entry).

    Raises:
        ValueError: a key has more or fewer parts than ``key_names``.
    """
    import pandas as pd

    key_names = tuple(key_names)
    splits = splits or {"test": lambda results: results["test"]}
    rows = []
    for key, results in records.runs.items():
        if len(key) != len(key_names):
            raise ValueError(f"run key {key!r} has {len(key)} parts, but {len(key_names)} names "
                             f"were given: {key_names!r}")
        named = dict(zip(key_names, key))
        for split, where in splits.items():
            for ranking, block in where(results).items():
                for direction, metrics in block.items():
                    if direction == "modality_gap":
                        rows.append({**named, "split": split, "ranking": ranking,
                                     "direction": "both", "metric": "modality_gap",
                                     "value": float(metrics)})
                    if not isinstance(metrics, dict):
                        continue
                    for metric, value in metrics.items():
                        if isinstance(value, (int, float)) and not isinstance(value, bool):
                            rows.append({**named, "split": split, "ranking": ranking,
                                         "direction": direction, "metric": metric,
                                         "value": float(value)})
    columns = [*key_names, "split", "ranking", "direction", "metric", "value"]
    return pd.DataFrame(rows, columns=columns)

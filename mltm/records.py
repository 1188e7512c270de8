"""Recorded experiment runs: one JSON file per experiment and configuration.

A chapter that trains many runs (losses × seeds × ε × noise levels) writes one
``records.json`` holding, for every run, its key (e.g. ``("debsfx", "m-LTM", 0.05, 0)``), its
``results.json`` and its ``history.json``, plus any experiment-specific arrays (detection
scores, t-SNE coordinates) and the provenance of the whole run (commit, config, device, date,
wall time). The rendered book reads these files, so the numbers of a long run recorded once
(on a GPU, or the largest CPU run that fits) appear in every later build without re-training.

    rec = Records(provenance=provenance(device, settings))
    rec.add(("debsfx", "m-LTM", 0.05, 0), results, history)
    rec.save(REPO / "results" / "retrieval" / "cpu" / "records.json")
    ...
    rec = load_records(REPO / "results" / "retrieval")      # the best recorded configuration
    rec.runs[("debsfx", "m-LTM", 0.05, 0)]["test"]["plan"]["t2a"]["R@1"]
"""

from __future__ import annotations

import gzip
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from mltm._atomic import atomic_write

__all__ = ["Records", "load_records", "records_file", "RECORD_FORMAT", "CONFIG_PREFERENCE"]

RECORD_FORMAT = "mltm-records/1"
# Which recorded configuration a chapter shows when several exist: the paper-size GPU run
# first, then the largest CPU run.
CONFIG_PREFERENCE = ("full", "cpu")


def _key(key: Iterable) -> tuple:
    key = tuple(key)
    for part in key:
        if not isinstance(part, (str, int, float, bool)) and part is not None:
            raise TypeError(f"record key parts must be str, int, float, bool or None, got "
                            f"{type(part).__name__} in {key!r}")
    return key


@dataclass
class Records:
    """The runs of one experiment under one configuration, with provenance."""

    provenance: dict[str, Any] = field(default_factory=dict)
    runs: dict[tuple, dict] = field(default_factory=dict)
    histories: dict[tuple, list] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def add(self, key: Iterable, results: dict, history: list | None = None) -> None:
        """Record one run's results (and per-epoch history) under ``key``; a key is added once."""
        key = _key(key)
        if key in self.runs:
            raise KeyError(f"run {key!r} is already recorded; each run is recorded once")
        self.runs[key] = results
        if history is not None:
            self.histories[key] = history

    @property
    def config(self) -> str | None:
        """The chapter configuration that produced the records (``"full"``, ``"cpu"``, ...)."""
        cfg = self.provenance.get("config")
        return cfg.get("name") if isinstance(cfg, dict) else None

    def label(self) -> str:
        """A one-line description for table captions: configuration, device, commit, date."""
        p = self.provenance
        return (f"recorded run: config {self.config!r} on {p.get('device', '?')}, "
                f"commit {str(p.get('commit', '?'))[:10]}, {str(p.get('date', '?'))[:10]}"
                + (f", {p['wall_time_s'] / 60:.0f} min" if p.get("wall_time_s") else ""))

    def to_json(self) -> dict:
        """The records as a JSON-ready dict (format, provenance, runs, extra)."""
        return {"format": RECORD_FORMAT, "provenance": self.provenance,
                "runs": [{"key": list(k), "results": r, "history": self.histories.get(k)}
                         for k, r in self.runs.items()],
                "extra": self.extra}

    def save(self, path: str | Path) -> Path:
        """Write atomically (a reader never sees half a file); a path ending in ``.gz`` is
        gzip-compressed (records with per-query outcomes are large and compress ~10x)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_json(), indent=None, separators=(",", ":"), default=float)
        if path.suffix == ".gz":
            # mtime=0: the same records give the same bytes (no spurious diffs in git)
            with atomic_write(path, "wb") as f:
                f.write(gzip.compress(text.encode(), mtime=0))
        else:
            with atomic_write(path) as f:
                f.write(text)
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Records":
        """Read a ``records.json`` written by :meth:`save`; a file of another format raises."""
        path = Path(path)
        try:
            data = path.read_bytes()
            raw = json.loads(gzip.decompress(data) if path.suffix == ".gz" else data)
        except (gzip.BadGzipFile, EOFError, zlib.error) as err:
            raise ValueError(f"{path} is not a complete gzip file ({err}); re-run the "
                             f"experiment that writes it") from None
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON ({err}); re-run the experiment that "
                             f"writes it") from None
        if not isinstance(raw, dict) or raw.get("format") != RECORD_FORMAT:
            found = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
            raise ValueError(f"{path} is not an mltm records file (format {found!r}, expected "
                             f"{RECORD_FORMAT!r})")
        rec = cls(provenance=raw["provenance"], extra=raw.get("extra", {}), path=path)
        for item in raw["runs"]:
            rec.add(item["key"], item["results"], item.get("history"))
        return rec


def load_records(experiment_dir: str | Path,
                 prefer: Iterable[str] = CONFIG_PREFERENCE) -> Records | None:
    """The records of the first configuration in ``prefer`` that has a ``records.json`` (or
    ``records.json.gz``) under ``experiment_dir/<config>/``, or ``None`` when the experiment has
    not been recorded."""
    experiment_dir = Path(experiment_dir)
    for config in prefer:
        path = records_file(experiment_dir / config)
        if path.exists():
            return Records.load(path)
    return None


def records_file(folder: str | Path) -> Path:
    """The records file of a configuration folder: ``records.json`` when it exists, else
    ``records.json.gz`` (the name new records are written under)."""
    folder = Path(folder)
    plain = folder / "records.json"
    return plain if plain.exists() else folder / "records.json.gz"

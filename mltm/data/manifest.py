"""Dataset manifests: one JSON line per audio clip, with its captions and provenance.

A dataset directory holds one manifest per split, ``train.jsonl``, ``val.jsonl`` and
``test.jsonl`` (a zero-shot set may have only ``test.jsonl``), the audio files under it, and a
``LICENSE.md`` (or other attribution file). Each line of a manifest is one
:class:`ClipRecord` as a JSON object, for example::

    {"clip_id": "dog_01", "audio_path": "audio/dog_01.flac",
     "captions": ["a dog barks twice"], "label": "dog", "group": "dog",
     "source": "0ad-data 0.0.26", "license": "CC-BY-SA-3.0", "duration": 2.1}

``audio_path`` is relative to the directory that holds the manifest file (an absolute path
is also allowed). Every clip has 1 to 5 non-empty captions (AudioCaps training clips have one,
its val/test clips and all Clotho clips have five).

Validate a built dataset from the shell with::

    python -m mltm.data.manifest validate data/debsfx/*.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from mltm._atomic import atomic_write

__all__ = [
    "MAX_CAPTIONS",
    "SPLITS",
    "ClipRecord",
    "ManifestProblem",
    "manifest_path",
    "read_manifest",
    "resolve_audio_path",
    "validate_manifest",
    "write_manifest",
]

#: The most captions a clip may carry (the AudioCaps/Clotho evaluation protocol uses 5).
MAX_CAPTIONS = 5
#: Split names, in the order they are conventionally built.
SPLITS = ("train", "val", "test")

_REQUIRED = ("clip_id", "audio_path", "captions")


@dataclass(frozen=True)
class ClipRecord:
    """One audio clip of a dataset and its captions.

    Attributes:
        clip_id: Unique identifier of the clip within its manifest.
        audio_path: Path of the audio file, relative to the directory holding the manifest
            (an absolute path is also allowed).
        captions: 1 to 5 non-empty captions.
        label: Class label, when the dataset has one (ESC-50 category, SFX family).
        group: Sound family or source identifier; clips sharing a group must land in the same
            split (leak-free splits, e.g. ESC-50's ``src_file``).
        source: Where the clip comes from, e.g. ``"0ad-data 0.0.26"``, ``"AudioCaps"``.
        license: License of the audio, e.g. ``"CC-BY-SA-3.0"``.
        duration: Length in seconds, when known.
        meta: Optional dataset-specific JSON object (e.g. the event list of a mixed scene);
            omitted from the JSON line when ``None`` and not part of the record's hash.
    """

    clip_id: str
    audio_path: str
    captions: tuple[str, ...]
    label: str | None = None
    group: str | None = None
    source: str = ""
    license: str = ""
    duration: float | None = None
    meta: dict | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        # Accept lists (e.g. from JSON) but store an immutable, hashable tuple.
        if not isinstance(self.captions, tuple):
            object.__setattr__(self, "captions", tuple(self.captions))
        problems = _record_problems(self)
        if problems:
            raise ValueError(f"invalid ClipRecord {self.clip_id!r}: " + "; ".join(problems))

    def to_json(self) -> str:
        """Return the record as one line of JSON (no trailing newline)."""
        d = asdict(self)
        d["captions"] = list(self.captions)
        if d["meta"] is None:
            del d["meta"]
        return json.dumps(d, ensure_ascii=False)


@dataclass(frozen=True)
class ManifestProblem:
    """One problem found by :func:`validate_manifest`.

    Attributes:
        line: 1-based line number in the manifest (0 for problems with the file itself).
        clip_id: The clip concerned, when it could be read.
        message: What is wrong, and how to fix it when that is not obvious.
    """

    line: int
    clip_id: str | None
    message: str

    def __str__(self) -> str:
        cid = f" [{self.clip_id}]" if self.clip_id is not None else ""
        return f"line {self.line}{cid}: {self.message}"


def manifest_path(root: str | os.PathLike, split: str) -> Path:
    """Return the manifest file of ``split`` in the dataset directory ``root``.

    Args:
        root: Dataset directory.
        split: One of ``"train"``, ``"val"``, ``"test"``.

    Raises:
        ValueError: If ``split`` is not a known split name.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return Path(root) / f"{split}.jsonl"


def resolve_audio_path(record: ClipRecord, manifest_dir: str | os.PathLike) -> Path:
    """Return the absolute location of a record's audio file.

    Args:
        record: The clip.
        manifest_dir: Directory holding the manifest the record came from.
    """
    p = Path(record.audio_path)
    return p if p.is_absolute() else Path(manifest_dir) / p


def _record_problems(r: ClipRecord) -> list[str]:
    """Return the problems of a record's field values (empty when valid)."""
    out = []
    if not isinstance(r.clip_id, str) or not r.clip_id.strip():
        out.append("clip_id must be a non-empty string")
    if not isinstance(r.audio_path, str) or not r.audio_path.strip():
        out.append("audio_path must be a non-empty string")
    caps = r.captions
    if not isinstance(caps, tuple) or not all(isinstance(c, str) for c in caps):
        out.append("captions must be a list of strings")
    else:
        if not 1 <= len(caps) <= MAX_CAPTIONS:
            out.append(f"has {len(caps)} captions; expected 1 to {MAX_CAPTIONS}")
        for k, c in enumerate(caps):
            if not c.strip():
                out.append(f"caption {k} is empty")
    for name in ("label", "group"):
        v = getattr(r, name)
        if v is not None and not isinstance(v, str):
            out.append(f"{name} must be a string or null")
    for name in ("source", "license"):
        if not isinstance(getattr(r, name), str):
            out.append(f"{name} must be a string")
    d = r.duration
    if d is not None and (isinstance(d, bool) or not isinstance(d, (int, float)) or d < 0):
        out.append("duration must be a non-negative number or null")
    if r.meta is not None and not isinstance(r.meta, dict):
        out.append("meta must be a JSON object or null")
    return out


_FIELD_NAMES = tuple(f.name for f in fields(ClipRecord))


def _parse_line(text: str) -> tuple[ClipRecord | None, str | None, list[str]]:
    """Parse one manifest line: return ``(record or None, clip_id or None, problems)``."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        return None, None, [f"not valid JSON ({e.msg} at column {e.colno})"]
    if not isinstance(obj, dict):
        return None, None, [f"expected a JSON object, got {type(obj).__name__}"]
    cid = obj.get("clip_id") if isinstance(obj.get("clip_id"), str) else None
    problems = []
    missing = [k for k in _REQUIRED if k not in obj]
    if missing:
        problems.append(f"missing field(s) {', '.join(missing)}")
    unknown = sorted(set(obj) - set(_FIELD_NAMES))
    if unknown:
        problems.append(f"unknown field(s) {', '.join(unknown)}; known: {', '.join(_FIELD_NAMES)}")
    if problems:
        return None, cid, problems
    caps = obj["captions"]
    if not isinstance(caps, list):
        return None, cid, ["captions must be a JSON list of strings"]
    try:
        rec = ClipRecord(**{**obj, "captions": tuple(caps)})
    except ValueError:
        # Collect the field problems without the constructor's prefix.
        rec = object.__new__(ClipRecord)
        for k in _FIELD_NAMES:
            default = ClipRecord.__dataclass_fields__[k].default
            object.__setattr__(rec, k, obj.get(k, default))
        object.__setattr__(rec, "captions", tuple(caps))
        return None, cid, _record_problems(rec)
    return rec, cid, []


def write_manifest(records: Iterable[ClipRecord], path: str | os.PathLike) -> None:
    """Write records as a JSONL manifest, atomically.

    The file is written to a temporary file in the same directory and then moved into place
    with :func:`os.replace`, so a reader never sees a half-written manifest.

    Args:
        records: The clips, in the order to write them.
        path: Destination, e.g. ``data/debsfx/train.jsonl``. Parent directories are created.

    Raises:
        ValueError: If two records share a ``clip_id`` (nothing is written).
        TypeError: If an element is not a :class:`ClipRecord`.
    """
    path = Path(path)
    records = list(records)
    seen: dict[str, int] = {}
    for i, r in enumerate(records):
        if not isinstance(r, ClipRecord):
            raise TypeError(f"record {i} is a {type(r).__name__}, not a ClipRecord")
        if r.clip_id in seen:
            raise ValueError(
                f"duplicate clip_id {r.clip_id!r} (records {seen[r.clip_id]} and {i}) while "
                f"writing {path}; clip ids must be unique within a manifest"
            )
        seen[r.clip_id] = i
    with atomic_write(path) as f:
        for r in records:
            f.write(r.to_json())
            f.write("\n")


def _manifest_lines(path: Path) -> Iterable[tuple[int, str | None, str | None]]:
    """``(lineno, text, error)`` of each line; ``error`` when it is not UTF-8 text."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                yield lineno, raw.decode("utf-8"), None
            except UnicodeDecodeError as e:
                yield lineno, None, (f"not UTF-8 text ({e.reason} at byte {e.start}); "
                                     "a manifest is UTF-8 JSON, one record a line")


def read_manifest(path: str | os.PathLike) -> list[ClipRecord]:
    """Read a JSONL manifest.

    Blank lines are ignored. Audio files are not checked (see :func:`validate_manifest`).

    Args:
        path: The manifest file.

    Returns:
        The records, in file order.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: On the first malformed line or duplicate ``clip_id``; the message names
            the file and the line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} not found")
    out: list[ClipRecord] = []
    seen: dict[str, int] = {}
    for lineno, text, undecodable in _manifest_lines(path):
        if undecodable:
            raise ValueError(f"{path}:{lineno}: {undecodable}")
        if not text.strip():
            continue
        rec, cid, problems = _parse_line(text)
        if problems:
            who = f" (clip {cid!r})" if cid else ""
            raise ValueError(f"{path}:{lineno}{who}: " + "; ".join(problems))
        assert rec is not None
        if rec.clip_id in seen:
            raise ValueError(
                f"{path}:{lineno}: duplicate clip_id {rec.clip_id!r} "
                f"(first on line {seen[rec.clip_id]})"
            )
        seen[rec.clip_id] = lineno
        out.append(rec)
    return out


def validate_manifest(
    path: str | os.PathLike, *, check_audio: bool = True
) -> list[ManifestProblem]:
    """List every problem of a manifest, one entry per problem row.

    Checks: JSON syntax, required and unknown fields, 1 to 5 non-empty captions, field types,
    duplicate ``clip_id``, and (when ``check_audio``) that each audio file exists and that
    :func:`soundfile.info` can read its header. An empty manifest is also a problem.

    Args:
        path: The manifest file.
        check_audio: Also check the audio files (slower: opens each file's header).

    Returns:
        The problems, in line order; empty when the manifest is valid.
    """
    path = Path(path)
    if not path.is_file():
        return [ManifestProblem(0, None, f"manifest {path} not found")]
    problems: list[ManifestProblem] = []
    seen: dict[str, int] = {}
    n_records = 0
    if check_audio:
        import soundfile as sf
    for lineno, text, undecodable in _manifest_lines(path):
        if undecodable:
            n_records += 1
            problems.append(ManifestProblem(lineno, None, undecodable))
            continue
        if not text.strip():
            continue
        n_records += 1
        rec, cid, msgs = _parse_line(text)
        if cid is not None:
            if cid in seen:
                msgs = msgs + [f"duplicate clip_id (first on line {seen[cid]})"]
            else:
                seen[cid] = lineno
        if rec is not None and check_audio:
            audio = resolve_audio_path(rec, path.parent)
            if not audio.is_file():
                msgs = msgs + [f"audio file {audio} not found"]
            else:
                try:
                    info = sf.info(str(audio))
                    if info.frames <= 0:
                        msgs = msgs + [f"audio file {audio} has no samples"]
                except Exception as e:  # soundfile raises LibsndfileError/RuntimeError
                    msgs = msgs + [f"audio file {audio} is unreadable: {e}"]
        for m in msgs:
            problems.append(ManifestProblem(lineno, cid, m))
    if n_records == 0:
        problems.append(ManifestProblem(0, None, f"manifest {path} has no records"))
    return problems


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mltm.data.manifest", description="Check dataset manifests."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    v = sub.add_parser("validate", help="list every problem row; exit 1 if any")
    v.add_argument("paths", nargs="+", help="manifest files (.jsonl) or dataset directories")
    v.add_argument("--no-audio", action="store_true", help="skip the audio file checks")
    from mltm._cli import add_debug_flag, run_cli

    add_debug_flag(v)
    args = parser.parse_args(argv)
    # problems found: listed, exit 1; an error (e.g. an unreadable file): one line
    # "error: ..." on stderr, exit 2 (--debug: traceback)
    return run_cli(lambda: _validate(args), debug=args.debug)


def _validate(args: argparse.Namespace) -> int:
    files: list[Path] = []
    for p in map(Path, args.paths):
        if p.is_dir():
            found = sorted(q for q in p.glob("*.jsonl"))
            if not found:
                print(f"{p}: no *.jsonl manifest in this directory")
                return 1
            files.extend(found)
        else:
            files.append(p)
    total = 0
    for p in files:
        probs = validate_manifest(p, check_audio=not args.no_audio)
        for prob in probs:
            print(f"{p}: {prob}")
        total += len(probs)
        if not probs:
            print(f"{p}: ok")
    if total:
        print(f"{total} problem(s) in {len(files)} manifest(s)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main())

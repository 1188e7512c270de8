"""Converters from the official releases of AudioCaps, Clotho v2 and ESC-50 to manifests.

Each converter reads a release folder ``SRC`` and writes the project's layout to ``OUT``
(see :mod:`mltm.data.manifest`): ``OUT/{train,val,test}.jsonl`` and ``OUT/LICENSE.md``. The
audio is **referenced in place**, not copied: ``audio_path`` is the path of the file relative
to ``OUT`` (or absolute with ``absolute_paths=True``). The releases are large (AudioCaps
≈ 50k clips), their files are already in a format :mod:`soundfile` reads, and resampling
happens when loading, so a copy would only double the disk use. Keep ``SRC`` where it is
(or use absolute paths) after converting.

Every referenced file's header is checked (:func:`~mltm.data.audio.probe_audio`); missing
or unusable files are skipped and listed in the returned :class:`ConversionReport`, never
fatal. A CSV whose header is not the official one is an error that names the expected
header.

Command-line front ends: ``python data_scripts/prepare_audiocaps.py SRC OUT`` (likewise
``prepare_clotho.py`` and ``prepare_esc50.py``).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import soundfile as sf

from mltm._atomic import atomic_write
from mltm.data.audio import AudioLoadError, probe_audio
from mltm.data.manifest import MAX_CAPTIONS, ClipRecord, write_manifest

__all__ = [
    "AUDIOCAPS_HEADER",
    "CLOTHO_HEADER",
    "ESC50_HEADER",
    "ConversionReport",
    "prepare_audiocaps",
    "prepare_clotho",
    "prepare_esc50",
]

AUDIOCAPS_HEADER = ("audiocap_id", "youtube_id", "start_time", "caption")
CLOTHO_HEADER = ("file_name", "caption_1", "caption_2", "caption_3", "caption_4", "caption_5")
ESC50_HEADER = ("filename", "fold", "target", "category", "esc10", "src_file", "take")

#: Clotho's split folders and CSV suffixes, mapped to the project's split names.
CLOTHO_SPLITS = {"development": "train", "validation": "val", "evaluation": "test"}
AUDIO_EXTENSIONS = (".wav", ".flac")


@dataclass
class ConversionReport:
    """What a converter wrote and skipped.

    Attributes:
        out_dir: The dataset directory written.
        clips: Clips written, per split.
        pairs: Audio-caption pairs written, per split.
        skipped: Per split, ``(reason, path)`` of every clip left out (reasons as in
            :data:`mltm.data.audio.SKIP_REASONS`; ``"missing"`` for audio not found).
        notes: Other remarks (e.g. clips with more than 5 captions cut to 5).
    """

    out_dir: Path
    clips: dict[str, int] = field(default_factory=dict)
    pairs: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def num_skipped(self, split: str | None = None, reason: str | None = None) -> int:
        """Number of clips skipped (in one split and/or for one reason)."""
        splits = [split] if split else list(self.skipped)
        return sum(
            1 for s in splits for r, _ in self.skipped.get(s, []) if reason in (None, r)
        )

    def summary(self, max_paths: int = 5) -> str:
        """Return a human-readable report: clips per split, then skipped files."""
        lines = [f"wrote {self.out_dir}"]
        for s, n in self.clips.items():
            lines.append(f"  {s}: {n} clips, {self.pairs[s]} audio-caption pairs")
        for s, items in self.skipped.items():
            if not items:
                continue
            by_reason: dict[str, list[str]] = {}
            for r, p in items:
                by_reason.setdefault(r, []).append(p)
            for r, ps in by_reason.items():
                more = f" ... (+{len(ps) - max_paths} more)" if len(ps) > max_paths else ""
                lines.append(f"  {s}: skipped {len(ps)} clip(s), audio {r}: "
                             f"{', '.join(ps[:max_paths])}{more}")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


def _read_csv(path: Path, expected: Sequence[str], dataset: str) -> list[dict[str, str]]:
    """Read a CSV whose header must contain ``expected`` (in order); return its rows."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: SRC must be the {dataset} release folder (expected a CSV with "
            f"header `{','.join(expected)}` at this place)"
        )
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            header = []
        if header[: len(expected)] != list(expected):
            raise ValueError(
                f"{path}: header `{','.join(header)}` is not the {dataset} header; expected "
                f"`{','.join(expected)}`. Check that SRC is the official {dataset} release."
            )
        rows = []
        for lineno, row in enumerate(reader, start=2):
            if not row or not any(c.strip() for c in row):
                continue
            if len(row) < len(expected):
                raise ValueError(
                    f"{path}:{lineno}: {len(row)} columns, expected {len(expected)} "
                    f"(`{','.join(expected)}`)"
                )
            rows.append({k: row[i] for i, k in enumerate(header) if i < len(row)})
    return rows


def _usable_duration(path: Path | None, skipped: list[tuple[str, str]],
                     expected: Path | None = None) -> float | None:
    """Duration of a usable audio file; otherwise record ``(reason, path)`` and return None."""
    if path is None or not path.is_file():
        skipped.append(("missing", str(expected if path is None else path)))
        return None
    try:
        probe_audio(path)
        info = sf.info(str(path))
    except AudioLoadError as e:
        skipped.append((e.reason, str(path)))
        return None
    return info.frames / info.samplerate


def _ref(path: Path, out: Path, absolute: bool) -> str:
    path = path.resolve()
    return str(path) if absolute else os.path.relpath(path, out.resolve())


def _write_license(out: Path, text: str) -> None:
    with atomic_write(out / "LICENSE.md") as f:
        f.write(text)


def _finish(report: ConversionReport, split: str, records: list[ClipRecord], out: Path) -> None:
    report.clips[split] = len(records)
    report.pairs[split] = sum(len(r.captions) for r in records)
    if records:
        write_manifest(records, out / f"{split}.jsonl")
    else:
        report.notes.append(f"{split}: no usable clip, {split}.jsonl not written")


def _index_dir(d: Path) -> dict[str, Path]:
    """Map file names in ``d`` (non-recursive) to paths; empty when ``d`` does not exist."""
    if not d.is_dir():
        return {}
    return {e.name: Path(e.path) for e in os.scandir(d) if e.is_file()}


# -- AudioCaps -------------------------------------------------------------------------------


def _audiocaps_names(youtube_id: str, start_time: str) -> list[str]:
    """Candidate file stems for one AudioCaps clip, in lookup order."""
    stems = [youtube_id, f"Y{youtube_id}"]
    start = start_time.strip()
    try:
        s = float(start)
        starts = [str(int(s))] if s.is_integer() else []
        starts += [start, f"{s:.3f}", str(int(s * 1000))]
    except ValueError:
        starts = [start]
    for st in dict.fromkeys(starts):
        stems += [f"{youtube_id}_{st}", f"Y{youtube_id}_{st}"]
    return [stem + ext for stem in stems for ext in AUDIO_EXTENSIONS]


def prepare_audiocaps(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    splits: Iterable[str] = ("train", "val", "test"),
    absolute_paths: bool = False,
) -> ConversionReport:
    """Convert an AudioCaps release to manifests.

    Layout of ``src``: ``{train,val,test}.csv`` with header
    ``audiocap_id,youtube_id,start_time,caption``, and the downloaded audio. AudioCaps ships
    no audio (clips are YouTube segments), so the local naming varies; for each row the
    converter looks, in this order, in ``src/audio/{split}/``, ``src/{split}/``,
    ``src/waveforms/{split}/`` and ``src/audio/`` for
    ``{youtube_id}``, ``Y{youtube_id}``, ``{youtube_id}_{start}`` or ``Y{youtube_id}_{start}``
    (``start`` as in the CSV, as an integer number of seconds, with 3 decimals, or in ms),
    each with ``.wav`` or ``.flac``.

    Rows are grouped by ``youtube_id`` into one clip (train: 1 caption per clip; val/test: 5
    captions per clip). A clip with more than 5 rows keeps its first 5 captions (noted in the
    report).

    Args:
        src: The release folder.
        out: The dataset directory to write.
        splits: Splits to convert.
        absolute_paths: Store absolute audio paths instead of paths relative to ``out``.

    Returns:
        What was written and skipped.

    Raises:
        FileNotFoundError: If a split's CSV is missing.
        ValueError: If a CSV header is not AudioCaps'.
    """
    src, out = Path(src), Path(out)
    splits = list(splits)
    tables = {s: _read_csv(src / f"{s}.csv", AUDIOCAPS_HEADER, "AudioCaps") for s in splits}
    out.mkdir(parents=True, exist_ok=True)
    report = ConversionReport(out)
    for split, rows in tables.items():
        dirs = [src / "audio" / split, src / split, src / "waveforms" / split, src / "audio"]
        index = [_index_dir(d) for d in dirs]
        groups: dict[str, list[dict[str, str]]] = {}
        for row in rows:
            groups.setdefault(row["youtube_id"].strip(), []).append(row)
        records, skipped, cut = [], [], 0
        for yid, grp in groups.items():
            captions = tuple(c for c in (r["caption"].strip() for r in grp) if c)
            if not captions:
                report.notes.append(f"{split}: clip {yid} has no non-empty caption, skipped")
                continue
            if len(captions) > MAX_CAPTIONS:
                cut += 1
                captions = captions[:MAX_CAPTIONS]
            path = None
            for name in _audiocaps_names(yid, grp[0]["start_time"]):
                path = next((ix[name] for ix in index if name in ix), None)
                if path is not None:
                    break
            duration = _usable_duration(path, skipped,
                                        expected=src / "audio" / split / f"{yid}.wav")
            if duration is None:
                continue
            records.append(ClipRecord(
                clip_id=yid, audio_path=_ref(path, out, absolute_paths), captions=captions,
                group=yid, source="AudioCaps", license="see LICENSE.md", duration=duration,
            ))
        if cut:
            report.notes.append(f"{split}: {cut} clip(s) had more than 5 captions; kept 5")
        report.skipped[split] = skipped
        _finish(report, split, records, out)
    _write_license(out, _AUDIOCAPS_LICENSE.format(src=src.resolve()))
    return report


_AUDIOCAPS_LICENSE = """# AudioCaps (converted by mltm)

Captions: AudioCaps (Kim, Kim, Lee and Kim, NAACL 2019), https://github.com/cdjkim/audiocaps,
released under the MIT license.
Audio: 10-second YouTube segments from AudioSet (Gemmeke et al., ICASSP 2017); the rights
remain with the uploaders. The audio is not copied here: the manifests reference the files
under `{src}`.
"""


# -- Clotho ----------------------------------------------------------------------------------


def prepare_clotho(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    absolute_paths: bool = False,
) -> ConversionReport:
    """Convert a Clotho v2 release to manifests.

    Layout of ``src``: ``clotho_captions_{development,validation,evaluation}.csv`` with header
    ``file_name,caption_1,caption_2,caption_3,caption_4,caption_5`` and the audio in
    ``src/{development,validation,evaluation}/<file_name>``. development → ``train``,
    validation → ``val``, evaluation → ``test``; every clip has 5 captions (empty ones are
    dropped).

    Args:
        src: The release folder.
        out: The dataset directory to write.
        absolute_paths: Store absolute audio paths instead of paths relative to ``out``.

    Returns:
        What was written and skipped.

    Raises:
        FileNotFoundError: If a captions CSV is missing.
        ValueError: If a CSV header is not Clotho's.
    """
    src, out = Path(src), Path(out)
    tables = {
        part: _read_csv(src / f"clotho_captions_{part}.csv", CLOTHO_HEADER, "Clotho v2")
        for part in CLOTHO_SPLITS
    }
    out.mkdir(parents=True, exist_ok=True)
    report = ConversionReport(out)
    for part, rows in tables.items():
        split = CLOTHO_SPLITS[part]
        records, skipped = [], []
        for row in rows:
            name = row["file_name"].strip()
            captions = tuple(c for c in (row[k].strip() for k in CLOTHO_HEADER[1:]) if c)
            if not captions:
                report.notes.append(f"{split}: {name} has no non-empty caption, skipped")
                continue
            path = src / part / name
            duration = _usable_duration(path, skipped)
            if duration is None:
                continue
            records.append(ClipRecord(
                clip_id=name, audio_path=_ref(path, out, absolute_paths), captions=captions,
                source="Clotho v2", license="see LICENSE.md", duration=duration,
            ))
        report.skipped[split] = skipped
        _finish(report, split, records, out)
    _write_license(out, _CLOTHO_LICENSE.format(src=src.resolve()))
    return report


_CLOTHO_LICENSE = """# Clotho v2 (converted by mltm)

Clotho (Drossos, Lipping and Virtanen, ICASSP 2020), https://zenodo.org/records/4783391.
Audio from Freesound under each file's Creative Commons license (CC0, CC-BY or CC-BY-NC;
see the release's `clotho_metadata_*.csv`); captions under the Tampere University license of
the release. The audio is not copied here: the manifests reference the files under `{src}`.
"""


# -- ESC-50 ----------------------------------------------------------------------------------


def prepare_esc50(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    folds: Iterable[int] = (1, 2, 3, 4, 5),
    template: str = "This is a sound of {category}",
    absolute_paths: bool = False,
) -> ConversionReport:
    """Convert ESC-50 to a zero-shot manifest ``OUT/test.jsonl``.

    Layout of ``src``: ``meta/esc50.csv`` with header
    ``filename,fold,target,category,esc10,src_file,take`` and ``audio/<filename>``.

    Each clip gets one caption, ``template`` filled with its category (underscores become
    spaces: ``crying_baby`` → "This is a sound of crying baby", the paper's prompt, §5.1);
    ``label`` is the category as in the CSV and ``group`` the Freesound ``src_file``.

    The default is all five folds (2,000 clips): a zero-shot model trains on none of them, so
    the usual zero-shot protocol (CLAP, AudioCLIP, Wav2CLIP) scores every clip. The paper
    instead evaluates on "the test set" of 400 clips, i.e. one of ESC-50's five folds, without
    saying which (nor does the reference code); ``folds=(5,)`` takes the last fold, the usual
    held-out one.

    Args:
        src: The release folder (``ESC-50-master``).
        out: The dataset directory to write.
        folds: Folds to include (default all five).
        template: Caption template with a ``{category}`` field.
        absolute_paths: Store absolute audio paths instead of paths relative to ``out``.

    Returns:
        What was written and skipped.

    Raises:
        FileNotFoundError: If ``meta/esc50.csv`` is missing.
        ValueError: If its header is not ESC-50's, a fold is not in 1..5, or the template has
            no ``{category}`` field.
    """
    src, out = Path(src), Path(out)
    folds = sorted(set(int(f) for f in folds))
    if not folds or any(f not in range(1, 6) for f in folds):
        raise ValueError(f"ESC-50 folds are 1 to 5, got {folds}")
    if "{category}" not in template:
        raise ValueError(f"template {template!r} needs a {{category}} field")
    rows = _read_csv(src / "meta" / "esc50.csv", ESC50_HEADER, "ESC-50")
    out.mkdir(parents=True, exist_ok=True)
    report = ConversionReport(out)
    records, skipped = [], []
    for row in rows:
        try:
            fold = int(row["fold"])
        except ValueError:
            raise ValueError(f"{src / 'meta' / 'esc50.csv'}: fold {row['fold']!r} is not an "
                             "integer") from None
        if fold not in folds:
            continue
        name = row["filename"].strip()
        category = row["category"].strip()
        path = src / "audio" / name
        duration = _usable_duration(path, skipped)
        if duration is None:
            continue
        records.append(ClipRecord(
            clip_id=Path(name).stem, audio_path=_ref(path, out, absolute_paths),
            captions=(template.format(category=category.replace("_", " ")),),
            label=category, group=row["src_file"].strip(), source="ESC-50",
            license="CC-BY-NC-3.0", duration=duration,
        ))
    report.skipped["test"] = skipped
    report.notes.append(f"folds {folds}")
    _finish(report, "test", records, out)
    _write_license(out, _ESC50_LICENSE.format(src=src.resolve(), folds=folds))
    return report


_ESC50_LICENSE = """# ESC-50 (converted by mltm), folds {folds}

ESC-50: Dataset for Environmental Sound Classification (K. J. Piczak, ACM Multimedia 2015),
https://github.com/karolpiczak/ESC-50. Clips from Freesound, released under
Creative Commons Attribution-NonCommercial 3.0 (CC BY-NC 3.0); see the release's
LICENSE for the attribution of every clip. The audio is not copied here: the manifest
references the files under `{src}`.
"""


def _cli(prog: str, description: str, argv: Sequence[str] | None, convert, extra=None) -> int:
    """Shared argparse front end of the ``data_scripts/prepare_*.py`` scripts."""
    import argparse

    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("src", help="the official release folder")
    parser.add_argument("out", help="dataset directory to write (e.g. data/audiocaps)")
    parser.add_argument("--absolute-paths", action="store_true",
                        help="store absolute audio paths instead of paths relative to OUT")
    if extra:
        extra(parser)
    args = parser.parse_args(argv)
    try:
        report = convert(args)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}")
        return 2
    print(report.summary())
    return 0

"""Write a zero-shot classification set in ESC-50's exact layout (shared by the zero-shot builders).

Used by ``build_tuxpaint_zeroshot.py`` and ``build_edusounds_zeroshot.py``. A builder lists its
source files as :class:`SourceClip` s (file on disk, class, ESC-50 ``src_file``, source and
licence) and calls :func:`write_esc50_set`, which

* de-duplicates byte-identical files (the first one in the given order is kept),
* decodes each file with :func:`mltm.data.audio.load_audio` (mix-down and resampling in
  float64, rounded once: the same samples on every CPU), drops silent ones, zero-pads or cuts
  to 5 s, scales peaks above 0.999 down and writes 44.1 kHz mono 16-bit WAV,
* writes ``esc50/meta/esc50.csv`` with ESC-50's header (all clips in one fold, ``target`` =
  index of the class in alphabetical order, file name ``{fold}-{src_file}-{take}-{target}.wav``),
* converts the layout with :func:`mltm.data.converters.prepare_esc50` (the code that converts
  the real ESC-50) and corrects each record's ``source`` and ``license``.

Files that are missing, duplicated, undecodable or silent are counted in the returned stats.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

ESC50_HEADER = ("filename", "fold", "target", "category", "esc10", "src_file", "take")
ESC_SR = 44100
ESC_SECONDS = 5.0
FOLD = 5
TEMPLATE = "This is a sound of {category}"


@dataclass(frozen=True)
class SourceClip:
    """One source file of a zero-shot set.

    Attributes:
        path: The file to decode (any format libsndfile reads).
        category: ESC-50-style class (lower-case snake_case).
        src_file: ESC-50's ``src_file`` column; also the clip's group. Must not contain
            ``-`` or ``,`` (they delimit ESC-50 file names and CSV fields).
        source: The manifest's ``source`` field (e.g. ``"qabcs-data 2.0.0-1"``).
        license: The manifest's ``license`` field (e.g. ``"GPL-3+"``).
    """

    path: Path
    category: str
    src_file: str
    source: str
    license: str


def check_class_name(cls: str, where: str) -> None:
    """ValueError naming *where* unless *cls* is lower-case snake_case."""
    if not cls.replace("_", "").isalnum() or cls != cls.lower():
        raise ValueError(f"{where}: class {cls!r} must be lower-case snake_case")


def read_table_rows(path: Path, columns: tuple[str, ...]) -> list[tuple[int, list[str]]]:
    """``(line number, fields)`` of a tab-separated table with the named *columns*.

    Blank lines and lines starting with ``#`` are ignored. Raises ValueError naming the file
    and line on a row with another number of fields or an empty field.
    """
    out = []
    for n, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        cols = [c.strip() for c in line.split("\t")]
        if len(cols) != len(columns) or not all(cols):
            raise ValueError(f"{path}:{n}: expected '{'<TAB>'.join(columns)}' "
                             f"({len(columns)} tab-separated fields), got {line!r}")
        out.append((n, cols))
    return out


def load_class_table(path: Path) -> dict[str, str]:
    """Read a two-column ``key<TAB>class`` table (the Tux Paint table: stamp -> class).

    Raises ValueError naming the file and line on a malformed row, a class that is not
    lower-case snake_case, or a key listed twice.
    """
    out: dict[str, str] = {}
    for n, (key, cls) in read_table_rows(path, ("stamp", "class")):
        check_class_name(cls, f"{path}:{n}")
        if key in out:
            raise ValueError(f"{path}:{n}: stamp {key!r} listed twice")
        out[key] = cls
    return out


def esc50_csv(rows: list[dict]) -> str:
    """``meta/esc50.csv`` text (ESC-50's header, ``\\n`` line ends) of the given rows."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=ESC50_HEADER, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    return buf.getvalue()


def transcode_clips(clips: list[SourceClip], audio_dir: Path, *, fold: int = FOLD,
                    desc: str = "transcode") -> tuple[list[dict], list[SourceClip], Counter]:
    """Decode, de-duplicate and write *clips* as ESC-50 WAVs into *audio_dir*.

    Returns the CSV rows, the clips kept (same order) and the filter counts (``missing``,
    ``duplicate``, ``skipped_<reason>``, ``skipped_unreadable``, ``skipped_silent``,
    ``cut_to_5s``). Byte-identical files are kept once (the first in *clips*' order).
    """
    import soundfile as sf
    from tqdm import tqdm

    from data_scripts import buildlib as bl
    from mltm.data.audio import AudioLoadError, load_audio

    classes = sorted({c.category for c in clips})
    target = {c: k for k, c in enumerate(classes)}
    stats: Counter = Counter()
    seen: set[str] = set()
    names: set[str] = set()
    n_len = int(ESC_SECONDS * ESC_SR)
    rows, kept = [], []
    for clip in tqdm(clips, desc=desc, unit="clip"):
        if "-" in clip.src_file or "," in clip.src_file:
            raise ValueError(f"src_file {clip.src_file!r} contains '-' or ','; "
                             "ESC-50 file names and CSV fields would not parse")
        check_class_name(clip.category, str(clip.path))
        src = Path(clip.path)
        if not src.is_file():
            stats["missing"] += 1
            continue
        digest = hashlib.md5(src.read_bytes()).hexdigest()
        if digest in seen:
            stats["duplicate"] += 1
            continue
        seen.add(digest)
        try:
            wave = load_audio(src, ESC_SR).numpy()
        except AudioLoadError as e:
            stats[f"skipped_{e.reason}"] += 1
            continue
        except Exception:
            stats["skipped_unreadable"] += 1
            continue
        if bl.rms(wave) < bl.SILENCE_RMS:
            stats["skipped_silent"] += 1
            continue
        if wave.size > n_len:
            stats["cut_to_5s"] += 1
        out = np.zeros(n_len, dtype=np.float32)
        out[: min(n_len, wave.size)] = wave[:n_len]
        peak = float(np.max(np.abs(out)))
        if peak > 0.999:
            out *= 0.999 / peak
        name = f"{fold}-{clip.src_file}-A-{target[clip.category]}.wav"
        if name in names:
            raise ValueError(f"two clips would both be written as {name}; make their src_file "
                             "unique")
        names.add(name)
        sf.write(str(audio_dir / name), out, ESC_SR, subtype="PCM_16")
        rows.append(dict(filename=name, fold=fold, target=target[clip.category],
                         category=clip.category, esc10="False", src_file=clip.src_file, take="A"))
        kept.append(clip)
    return rows, kept, stats


def write_esc50_set(tmp: Path, clips: list[SourceClip], *, fold: int = FOLD,
                    template: str = TEMPLATE,
                    desc: str = "transcode") -> tuple[list[dict], Counter]:
    """Write ``tmp/esc50/{audio,meta}`` and ``tmp/test.jsonl`` from *clips*.

    ``LICENSE.md`` and ``BUILD_INFO.json`` are the caller's (they name its packages). Returns
    the CSV rows and the filter counts. Raises RuntimeError when no clip could be used or
    when the ESC-50 converter skips a clip it wrote.
    """
    from mltm.data.converters import prepare_esc50
    from mltm.data.manifest import read_manifest, write_manifest

    audio_dir = tmp / "esc50" / "audio"
    audio_dir.mkdir(parents=True)
    rows, kept, stats = transcode_clips(clips, audio_dir, fold=fold, desc=desc)
    if not rows:
        raise RuntimeError(f"none of the {len(clips)} listed sounds could be used; check the "
                           "class table against the package")
    (tmp / "esc50" / "meta").mkdir()
    (tmp / "esc50" / "meta" / "esc50.csv").write_text(esc50_csv(rows))
    # The same converter that turns the real ESC-50 into a manifest.
    report = prepare_esc50(tmp / "esc50", tmp, folds=(fold,), template=template)
    if report.num_skipped():
        raise RuntimeError(f"the ESC-50 converter skipped clips it should read: {report.summary()}")
    # It labels clips as ESC-50 (CC-BY-NC-3.0); correct source and licence.
    by_id = {Path(r["filename"]).stem: c for r, c in zip(rows, kept)}
    recs = [replace(r, source=by_id[r.clip_id].source, license=by_id[r.clip_id].license)
            for r in read_manifest(tmp / "test.jsonl")]
    write_manifest(recs, tmp / "test.jsonl")
    return rows, stats

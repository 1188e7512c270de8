"""Build a small zero-shot classification set in the ESC-50 layout from Tux Paint's stamp sounds.

Source (Recipe B of ``shared/notes/offline-assets.md``): ``tuxpaint-stamps-default``
(GPL-2). Of its ~7,900 Ogg files only ~108 are real sound effects (the rest are spoken
descriptions ``*_desc*`` and localised names ``*_xx``/``*_xx_YY``); the hand-written table
``data_scripts/rules/tuxpaint_classes.tsv`` keeps the acoustically unambiguous ones and maps
each stamp to an ESC-50-style class (ESC-50's own category names where one fits).

Output (``$MLTM_DATA/tuxpaint-zs``)::

    esc50/meta/esc50.csv     ESC-50's exact header: filename,fold,target,category,esc10,src_file,take
    esc50/audio/*.wav        44.1 kHz mono 16-bit, 5 s (zero-padded / cut), like ESC-50
    test.jsonl               written by mltm.data.converters.prepare_esc50 (the same code
                             that converts the real ESC-50), prompt "This is a sound of {class}"
    LICENSE.md, BUILD_INFO.json

All clips are in fold 5, the fold the ESC-50 converter uses by default (the paper's 400-clip
test fold); ``target`` is the index of the class in alphabetical order; ``src_file`` is the
stamp name (ESC-50 uses the Freesound id), ``take`` is ``A``, ``esc10`` ``False``; file names
follow ESC-50's ``{fold}-{src_file}-{take}-{target}.wav``. Byte-identical sounds are kept once;
files that cannot be decoded are skipped and counted in ``BUILD_INFO.json``.

Usage: ``python data_scripts/build_tuxpaint_zeroshot.py [--out DIR] [--force]``
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data_scripts import buildlib as bl  # noqa: E402
from data_scripts.debian import copyright_text, data_root, fetch_deb, unpack  # noqa: E402

BUILDER_VERSION = 2  # 2: mix-down and resampling in float64 (the same samples on every CPU)
PACKAGE = "tuxpaint-stamps-default"
TABLE = Path(__file__).resolve().parent / "rules" / "tuxpaint_classes.tsv"
STAMPS = "usr/share/tuxpaint/stamps"
ESC50_HEADER = ("filename", "fold", "target", "category", "esc10", "src_file", "take")
ESC_SR = 44100
ESC_SECONDS = 5.0
FOLD = 5
TEMPLATE = "This is a sound of {category}"


def load_table(path: Path = TABLE) -> dict[str, str]:
    """stamp path (no extension) -> class; ValueError naming the line on a bad row."""
    out = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        cols = line.split("\t")
        if len(cols) != 2 or not cols[0].strip() or not cols[1].strip():
            raise ValueError(f"{path}:{n}: expected 'stamp<TAB>class', got {line!r}")
        stamp, cls = cols[0].strip(), cols[1].strip()
        if not cls.replace("_", "").isalnum() or cls != cls.lower():
            raise ValueError(f"{path}:{n}: class {cls!r} must be lower-case snake_case")
        if stamp in out:
            raise ValueError(f"{path}:{n}: stamp {stamp!r} listed twice")
        out[stamp] = cls
    return out


def esc50_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=ESC50_HEADER, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    return buf.getvalue()


def build(out: Path | None = None, *, force: bool = False) -> Path:
    from tqdm import tqdm

    from mltm.data.audio import AudioLoadError, load_audio
    from mltm.data.converters import prepare_esc50
    from mltm.data.manifest import read_manifest, write_manifest

    out = Path(out) if out else data_root() / "tuxpaint-zs"
    t0 = time.time()
    table = load_table()
    pkg = fetch_deb(PACKAGE)
    settings = dict(builder="tuxpaint-zs", version=BUILDER_VERSION, package=pkg.version,
                    table_sha256=hashlib.sha256(TABLE.read_bytes()).hexdigest(),
                    sample_rate=ESC_SR, seconds=ESC_SECONDS, fold=FOLD, template=TEMPLATE)
    key = bl.settings_key(settings)
    if not force and bl.up_to_date(out, key):
        bl.log(f"[tuxpaint] {out.name} is up to date (settings {key}); nothing to do")
        return out
    # Unpack only the listed stamps (the package holds ~7,900 Ogg files, 190 MB).
    tree = unpack(pkg, [f"./{STAMPS}/{stamp}.ogg" for stamp in sorted(table)],
                  f"zs-{settings['table_sha256'][:12]}")
    classes = sorted(set(table.values()))
    target = {c: k for k, c in enumerate(classes)}
    stats: Counter = Counter()
    seen: set[str] = set()
    n_len = int(ESC_SECONDS * ESC_SR)
    with bl.AtomicDir(out) as tmp:
        audio_dir = tmp / "esc50" / "audio"
        audio_dir.mkdir(parents=True)
        rows = []
        for stamp in tqdm(sorted(table), desc="tuxpaint-zs: transcode", unit="clip"):
            src = tree / STAMPS / f"{stamp}.ogg"
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
            clip = np.zeros(n_len, dtype=np.float32)
            clip[: min(n_len, wave.size)] = wave[:n_len]
            peak = float(np.max(np.abs(clip)))
            if peak > 0.999:
                clip *= 0.999 / peak
            cls = table[stamp]
            src_file = bl.slug(Path(stamp).name).replace("-", "_")
            name = f"{FOLD}-{src_file}-A-{target[cls]}.wav"
            import soundfile as sf

            sf.write(str(audio_dir / name), clip, ESC_SR, subtype="PCM_16")
            rows.append(dict(filename=name, fold=FOLD, target=target[cls], category=cls,
                             esc10="False", src_file=src_file, take="A"))
        if not rows:
            raise RuntimeError(f"no Tux Paint sound could be used; check {TABLE} against the package")
        (tmp / "esc50" / "meta").mkdir()
        (tmp / "esc50" / "meta" / "esc50.csv").write_text(esc50_csv(rows))

        # The same converter that turns the real ESC-50 into a manifest.
        report = prepare_esc50(tmp / "esc50", tmp, folds=(FOLD,), template=TEMPLATE)
        if report.num_skipped():
            raise RuntimeError(f"the ESC-50 converter skipped clips it should read: {report.summary()}")
        # It labels clips as ESC-50 (CC-BY-NC-3.0); correct source and licence.
        recs = read_manifest(tmp / "test.jsonl")
        recs = [replace(r, source=f"{PACKAGE} {pkg.version}", license="GPL-2") for r in recs]
        write_manifest(recs, tmp / "test.jsonl")
        lic = bl.license_markdown(
            "Tux Paint zero-shot set",
            "Stamp sound effects of Tux Paint (tuxpaint-stamps-default), re-encoded to 44.1 kHz "
            "mono 5 s WAV in the ESC-50 layout by mltm's builder. GPL-2: keep this notice.",
            [dict(pkg.as_dict(), license="GPL-2", upstream="https://tuxpaint.org/")],
            {PACKAGE: copyright_text(tree, PACKAGE)})
        (tmp / "LICENSE.md").write_text(lic)
        (tmp / "esc50" / "LICENSE.md").write_text(lic)
        per_class = Counter(r["category"] for r in rows)
        info = dict(
            name=out.name, builder="data_scripts/build_tuxpaint_zeroshot.py", settings_key=key,
            settings=settings, created=bl.utc_now(), commit=bl.git_commit(),
            build_seconds=round(time.time() - t0, 1), packages=[pkg.as_dict()],
            counts=dict(clips=len(rows), classes=len(per_class), captions=len(rows),
                        test_clips=len(rows), families=len(rows)),
            per_class=dict(sorted(per_class.items())),
            total_minutes=round(len(rows) * ESC_SECONDS / 60, 2),
            filters=dict(table_rows=len(table), **stats),
            audio_bytes=bl.dir_bytes(audio_dir),
        )
        bl.write_json_atomic(tmp / bl.BUILD_INFO, info)
    bl.log(f"[tuxpaint] wrote {out} : {info['counts']} in {info['build_seconds']} s")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--size", choices=["ci", "full"], default="ci",
                    help="accepted for symmetry with the other builders; both build the same set")
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args(argv)
    build(args.out, force=args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())

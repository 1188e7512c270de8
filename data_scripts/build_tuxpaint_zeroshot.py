"""Build a small zero-shot classification set in the ESC-50 layout from Tux Paint's stamp sounds.

Source (Recipe B of ``shared/notes/offline-assets.md``): ``tuxpaint-stamps-default``
(GPL-2). Of its ~7,900 Ogg files only ~108 are real sound effects (the rest are spoken
descriptions ``*_desc*`` and localised names ``*_xx``/``*_xx_YY``); the hand-written table
``data_scripts/rules/tuxpaint_classes.tsv`` keeps the acoustically unambiguous ones and maps
each stamp to an ESC-50-style class (ESC-50's own category names where one fits).

Output (``$MLTM_DATA/tuxpaint-zs``)::

    esc50/meta/esc50.csv     ESC-50's exact header:
                             filename,fold,target,category,esc10,src_file,take
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
import hashlib
import sys
import time
from collections import Counter
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data_scripts import buildlib as bl  # noqa: E402
from data_scripts import esc50_layout as esc  # noqa: E402
from data_scripts.debian import copyright_text, data_root, fetch_deb, unpack  # noqa: E402
from data_scripts.esc50_layout import (ESC50_HEADER, ESC_SECONDS, ESC_SR, FOLD,  # noqa: E402,F401
                                       TEMPLATE, esc50_csv)

BUILDER_VERSION = 2  # 2: mix-down and resampling in float64 (the same samples on every CPU)
PACKAGE = "tuxpaint-stamps-default"
TABLE = Path(__file__).resolve().parent / "rules" / "tuxpaint_classes.tsv"
STAMPS = "usr/share/tuxpaint/stamps"


def load_table(path: Path = TABLE) -> dict[str, str]:
    """stamp path (no extension) -> class; ValueError naming the line on a bad row."""
    return esc.load_class_table(path)


def build(out: Path | None = None, *, force: bool = False) -> Path:
    """Build (or keep, when up to date) the Tux Paint zero-shot set; returns its directory."""
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
    clips = [esc.SourceClip(path=tree / STAMPS / f"{stamp}.ogg", category=table[stamp],
                            src_file=bl.slug(Path(stamp).name).replace("-", "_"),
                            source=f"{PACKAGE} {pkg.version}", license="GPL-2")
             for stamp in sorted(table)]
    with bl.AtomicDir(out) as tmp:
        rows, stats = esc.write_esc50_set(tmp, clips, fold=FOLD, template=TEMPLATE,
                                          desc="tuxpaint-zs: transcode")
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
            audio_bytes=bl.dir_bytes(tmp / "esc50" / "audio"),
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

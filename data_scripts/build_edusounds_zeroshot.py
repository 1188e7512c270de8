"""Build "EduSounds", a zero-shot classification set in the ESC-50 layout from educational programs.

Sources (Debian bookworm main; none of them is used by any training set; educational and
children's packages are reserved for zero-shot evaluation):

* ``qabcs-data`` (GPL-3+): the alphabet tutor's "noises", one real recording per picture word
  (animals, vehicles, everyday objects); its spoken words and letters are not used;
* ``scratch`` (Scratch 1.4's media library, CC-BY-SA-3.0): ``Media/Sounds/{Animal,Effects,Human}``;
* ``gcompris-qt-data`` (GPL-3/GPL-3+, Free Art, CC-BY-3.0, CC0 per file): farm animals, the
  sound-memory game's recordings and a few activity sounds, read out of its Qt resource files
  (``usr/share/gcompris-qt/rcc/*.rcc``, see :mod:`data_scripts.qt_rcc`);
* ``tuxpaint-data`` / ``tuxpaint-plugins-default`` (GPL-2+): three tool sounds (giggle, rain,
  lightning); Tux Paint's stamp sounds form the other zero-shot set, ``tuxpaint-zs``.

The hand-written table ``data_scripts/rules/edusounds_classes.tsv`` lists the files kept
(package, member, class, licence) and says what was left out and why: music, speech,
synthesized or interface sounds, names that do not say what is heard, and MP3 files.

Output (``$MLTM_DATA/edusounds-zs``), the same layout as ``tuxpaint-zs`` (both written by
:mod:`data_scripts.esc50_layout`)::

    esc50/meta/esc50.csv     ESC-50's exact header:
                             filename,fold,target,category,esc10,src_file,take
    esc50/audio/*.wav        44.1 kHz mono 16-bit, 5 s (zero-padded / cut), like ESC-50
    test.jsonl               written by mltm.data.converters.prepare_esc50, prompt
                             "This is a sound of {class}"; source and licence per clip
    LICENSE.md, BUILD_INFO.json (written last)

All clips are in fold 5; ``src_file`` is ``<package short name>_<file stem>``. Byte-identical
files are kept once (the first in (package, member) order); undecodable, silent and missing
files are skipped and counted in ``BUILD_INFO.json``.

Usage: ``python data_scripts/build_edusounds_zeroshot.py [--out DIR] [--force]``
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data_scripts import buildlib as bl  # noqa: E402
from data_scripts import esc50_layout as esc  # noqa: E402
from data_scripts.debian import copyright_text, data_root, fetch_deb, unpack  # noqa: E402
from data_scripts.qt_rcc import read_rcc_file  # noqa: E402

BUILDER_VERSION = 1
NAME = "edusounds-zs"
TABLE = Path(__file__).resolve().parent / "rules" / "edusounds_classes.tsv"
#: package -> (short name used in src_file, upstream home page)
PACKAGES = {
    "qabcs-data": ("qabcs", "https://bitbucket.org/admsasha/qabcs"),
    "scratch": ("scratch", "https://scratch.mit.edu"),
    "gcompris-qt-data": ("gcompris", "https://gcompris.net"),
    "tuxpaint-data": ("tuxpaint", "https://tuxpaint.org/"),
    "tuxpaint-plugins-default": ("tuxmagic", "https://tuxpaint.org/"),
}
RCC_SEP = "!"  # "<rcc file inside the package>!<path inside the rcc>"
LICENCES = {"GPL-2+", "GPL-3", "GPL-3+", "CC-BY-SA-3.0", "CC-BY-3.0", "CC0-1.0", "free-art"}


@dataclass(frozen=True)
class TableRow:
    """One row of the class table: which file of which package, its class and licence."""

    package: str
    member: str
    category: str
    license: str

    @property
    def rcc_parts(self) -> tuple[str, str] | None:
        """``(rcc file, path inside it)`` for a member packed in a Qt resource file, else None."""
        if RCC_SEP not in self.member:
            return None
        rcc, inner = self.member.split(RCC_SEP, 1)
        return rcc, inner


def load_table(path: Path = TABLE) -> list[TableRow]:
    """The class table's rows sorted by (package, member).

    A bad row raises ValueError naming its line.
    """
    rows, seen = [], set()
    for n, (package, member, cls, lic) in esc.read_table_rows(
            path, ("package", "member", "class", "licence")):
        where = f"{path}:{n}"
        esc.check_class_name(cls, where)
        if package not in PACKAGES:
            raise ValueError(f"{where}: package {package!r} is not one of {sorted(PACKAGES)}; "
                             "add it to PACKAGES in build_edusounds_zeroshot.py")
        if lic not in LICENCES:
            raise ValueError(f"{where}: licence {lic!r} is not one of {sorted(LICENCES)}; copy "
                             "it from the package's debian/copyright")
        if member.startswith(("/", "./")) or ".." in member.split("/"):
            raise ValueError(f"{where}: member {member!r} must be a relative path inside the "
                             "package, without a leading './'")
        if (package, member) in seen:
            raise ValueError(f"{where}: file {package} {member} listed twice")
        seen.add((package, member))
        rows.append(TableRow(package, member, cls, lic))
    return sorted(rows, key=lambda r: (r.package, r.member))


def src_file_of(row: TableRow) -> str:
    """ESC-50 ``src_file`` of a row: ``<short package name>_<file stem>`` (no '-')."""
    stem = Path(row.member.split(RCC_SEP)[-1]).stem
    return f"{PACKAGES[row.package][0]}_{bl.slug(stem).replace('-', '_')}"


def build(out: Path | None = None, *, force: bool = False) -> Path:
    """Build (or keep, when up to date) the EduSounds zero-shot set; returns its directory."""
    out = Path(out) if out else data_root() / NAME
    t0 = time.time()
    table = load_table(TABLE)
    by_pkg: dict[str, list[TableRow]] = defaultdict(list)
    for r in table:
        by_pkg[r.package].append(r)
    pkgs = {name: fetch_deb(name) for name in sorted(by_pkg)}
    table_sha = hashlib.sha256(TABLE.read_bytes()).hexdigest()
    settings = dict(builder=NAME, version=BUILDER_VERSION,
                    packages={n: p.version for n, p in pkgs.items()}, table_sha256=table_sha,
                    sample_rate=esc.ESC_SR, seconds=esc.ESC_SECONDS, fold=esc.FOLD,
                    template=esc.TEMPLATE)
    key = bl.settings_key(settings)
    if not force and bl.up_to_date(out, key):
        bl.log(f"[edusounds] {out.name} is up to date (settings {key}); nothing to do")
        return out
    trees, clips = {}, []
    with tempfile.TemporaryDirectory(prefix="edusounds-rcc-") as rcc_dir:
        for name, rows in by_pkg.items():
            members = sorted({(r.rcc_parts[0] if r.rcc_parts else r.member) for r in rows})
            trees[name] = tree = unpack(pkgs[name], [f"./{m}" for m in members],
                                        f"edu-{table_sha[:12]}")
            for r in rows:
                if r.rcc_parts:
                    rcc, inner = r.rcc_parts
                    path = Path(rcc_dir) / name / rcc / inner
                else:
                    path = tree / r.member
                clips.append(esc.SourceClip(path=path, category=r.category,
                                            src_file=src_file_of(r),
                                            source=f"{name} {pkgs[name].version}",
                                            license=r.license))
            # Sounds packed in Qt resource files are written out next to nothing else.
            for rcc in sorted({r.rcc_parts[0] for r in rows if r.rcc_parts}):
                wanted = {r.rcc_parts[1] for r in rows if r.rcc_parts and r.rcc_parts[0] == rcc}
                if not (tree / rcc).is_file():
                    continue  # counted as missing by the transcoder
                for inner, blob in read_rcc_file(tree / rcc, keep=wanted.__contains__).items():
                    dest = Path(rcc_dir) / name / rcc / inner
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(blob)
        with bl.AtomicDir(out) as tmp:
            rows_out, stats = esc.write_esc50_set(tmp, clips, desc=f"{NAME}: transcode")
            kept_src = {r["src_file"] for r in rows_out}
            pkg_lic = {n: sorted({r.license for r in rs if src_file_of(r) in kept_src})
                       for n, rs in by_pkg.items()}
            lic = bl.license_markdown(
                "EduSounds zero-shot set",
                "Sound effects of the educational programs qABCs, Scratch 1.4, GCompris and Tux "
                "Paint (Debian packages below), re-encoded to 44.1 kHz mono 5 s WAV in the "
                "ESC-50 layout by mltm's builder. Each clip's licence is in its `license` "
                "field of test.jsonl; keep this notice and the attributions below.",
                [dict(p.as_dict(), license=", ".join(pkg_lic[n]), upstream=PACKAGES[n][1])
                 for n, p in pkgs.items()],
                {n: copyright_text(trees[n], n) for n in pkgs})
            (tmp / "LICENSE.md").write_text(lic)
            (tmp / "esc50" / "LICENSE.md").write_text(lic)
            per_class = Counter(r["category"] for r in rows_out)
            src_pkg = {src_file_of(r): r.package for r in table}
            info = dict(
                name=out.name, builder="data_scripts/build_edusounds_zeroshot.py",
                settings_key=key, settings=settings, created=bl.utc_now(),
                commit=bl.git_commit(), build_seconds=round(time.time() - t0, 1),
                packages=[dict(p.as_dict(), license=", ".join(pkg_lic[n]))
                          for n, p in pkgs.items()],
                counts=dict(clips=len(rows_out), classes=len(per_class), captions=len(rows_out),
                            test_clips=len(rows_out), families=len(rows_out)),
                per_class=dict(sorted(per_class.items())),
                per_package=dict(sorted(Counter(src_pkg[r["src_file"]] for r in rows_out).items())),
                total_minutes=round(len(rows_out) * esc.ESC_SECONDS / 60, 2),
                filters=dict(table_rows=len(table), **stats),
                audio_bytes=bl.dir_bytes(tmp / "esc50" / "audio"),
            )
            bl.write_json_atomic(tmp / bl.BUILD_INFO, info)
    bl.log(f"[edusounds] wrote {out} : {info['counts']} in {info['build_seconds']} s")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, help=f"output directory (default $MLTM_DATA/{NAME})")
    ap.add_argument("--size", choices=["ci", "full"], default="ci",
                    help="accepted for symmetry with the other builders; both build the same set")
    ap.add_argument("--force", action="store_true", help="rebuild even when up to date")
    args = ap.parse_args(argv)
    build(args.out, force=args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())

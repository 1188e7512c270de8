"""Build "DebSFX": a captioned sound-effects set from the audio of four Debian game-data packages.

Sources (Recipe A of ``shared/notes/offline-assets.md``): ``0ad-data`` (CC-BY-SA-3.0),
``megaglest-data`` (CC-BY-SA-3.0 / GPL-2+), ``widelands-data`` (GPL-2+ / CC-BY-SA-3.0) and
``wesnoth-1.16-data`` (GPL-2+). ``--size ci`` uses only megaglest + wesnoth (0ad-data alone is
a 1.4 GB download).

Pipeline
--------
1. ``apt-get download`` + unpack the audio files (cached under ``$MLTM_CACHE``).
2. Map each file path to a class and 3-5 caption paraphrases with the rules table
   ``data_scripts/rules/debsfx_rules.tsv`` (first matching rule wins; named regex groups fill
   material/surface slots). Files no rule matches are dropped and counted.
3. Byte-identical files are kept once (MegaGlest ships the same ``rain.ogg`` in many tilesets).
4. Decode, mix to mono, resample to 32 kHz, write 16-bit FLAC. Files longer than
   ``--window`` seconds (ambiences: rain, wind, rivers, up to 168 s) are cut into consecutive
   non-overlapping windows of ``--window`` s, at most ``--max-windows`` per file (taken from
   the start); a trailing remainder shorter than the window is dropped. All windows of a file
   share its family, so they always land in the same split. Silent clips/windows
   (RMS < 1e-4) and undecodable files are dropped and counted.
5. Optionally cap each class at ``--max-per-class`` clips (whole families, in a seeded order).
6. Drop classes with fewer than ``--min-clips`` clips. A class with a single sound family
   can only be in one split: it stays, all in train (it teaches the model, it is not tested).
7. **Split by sound family**, never by file: a family is the file name minus its trailing
   number/variant (``mine_stone_07`` -> ``mine_stone``; Wesnoth: the first hyphen token,
   ``bow-puny-fire-miss`` -> ``bow``; 0 A.D./MegaGlest voices: the speaker's voice set), within
   its source and class. Within each class, families (largest first, ties in a seeded order)
   go to the split furthest below its target share of clips (test 20 %, val 10 %, train 70 %).

Output (``$MLTM_DATA/debsfx`` or ``debsfx-ci``): ``train/val/test.jsonl`` (mltm manifests),
``audio/*.flac``, ``LICENSE.md``, ``BUILD_INFO.json`` (written last).

The wide pool (``--size pool`` -> ``$MLTM_DATA/sfxpool``)
---------------------------------------------------------
The four sources above plus the game packages of :data:`POOL_SOURCES` (20 more; why each
candidate package was taken or rejected: ``data_scripts/rules/POOL_SOURCES.md``), with the
rules of ``rules/debsfx_rules.tsv`` followed by ``rules/sfxpool_rules.tsv``. Same pipeline, plus
one step after transcoding: **near-duplicate families**. Every decoded file gets a coarse
band-energy fingerprint (``data_scripts/audio_fingerprint.py``: 20 log bands 100 Hz-4 kHz,
32 ms frames, relative log floor); two files whose best sliding Pearson correlation is >= 0.95
(shorter >= 0.3 of the longer; prefilter on the mean band profile >= 0.97) are the same
recording re-encoded, trimmed, resampled or at another volume. Near-duplicates of one class
join their families (so the family split keeps them in one split); a near-duplicate of an
earlier file of another class is dropped and counted. ``BUILD_INFO.json`` reports the groups
(``near_duplicates``), the clips per source and the distinct source files.
The ci/full sizes do not read the pool's rules file and skip this step, so their settings key
and outputs are unchanged.

Usage: ``python data_scripts/build_debsfx.py --size {ci,full,pool} [--out DIR] [--force]``
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data_scripts import buildlib as bl  # noqa: E402
from data_scripts.audio_fingerprint import fingerprint, near_duplicate_pairs  # noqa: E402
from data_scripts.debian import (  # noqa: E402
    Package, copyright_text, data_root, fetch_deb, unpack, unpack_zip_inside,
)

BUILDER_VERSION = 2  # 2: mix-down and resampling in float64 (the same samples on every CPU)
RULES_DIR = Path(__file__).resolve().parent / "rules"
RULES_PATH = RULES_DIR / "debsfx_rules.tsv"
AUDIO_EXT = (".ogg", ".wav", ".flac")


@dataclass(frozen=True)
class SourceSpec:
    key: str            # short name used in rules and clip ids
    package: str
    root: str           # path prefix of the sound tree inside the unpacked package
    license: str
    upstream: str
    members: tuple[str, ...] = ()   # tar wildcards to unpack (default: every *.ogg / *.wav)
    zip_glob: str = ""              # the sound tree is inside this zip/pk3/wz of the package
    zip_prefix: str = "sound/"      # ... and only its members under this prefix are kept


SOURCES = {
    "0ad": SourceSpec("0ad", "0ad-data", "audio/", "CC-BY-SA-3.0", "https://play0ad.com/"),
    "megaglest": SourceSpec("megaglest", "megaglest-data", "usr/share/games/megaglest/",
                            "CC-BY-SA-3.0 / GPL-2+", "https://megaglest.org/"),
    "widelands": SourceSpec("widelands", "widelands-data", "usr/share/games/widelands/data/",
                            "GPL-2+ / CC-BY-SA-3.0", "https://www.widelands.org/"),
    "wesnoth": SourceSpec("wesnoth", "wesnoth-1.16-data", "usr/share/games/wesnoth/1.16/",
                          "GPL-2+", "https://www.wesnoth.org/"),
}

#: Sources used only by ``--size pool`` (rules in ``rules/sfxpool_rules.tsv``; why each was
#: taken or rejected: ``rules/POOL_SOURCES.md``). Educational/children's packages (tuxpaint*,
#: gcompris*, childsplay*, ktuberling, pysiogame, colobot, ...) are reserved for zero-shot
#: evaluation and must never be added here.
_G = "usr/share/games/"
POOL_SOURCES = {
    "hedgewars": SourceSpec("hedgewars", "hedgewars-data", _G + "hedgewars/Data/Sounds/",
                            "GPL-2 / CC-BY-SA-3.0", "https://www.hedgewars.org/"),
    "supertux": SourceSpec("supertux", "supertux-data", _G + "supertux2/",
                           "GPL-2+ / GPL-3+ / CC-BY-SA / CC0", "https://www.supertux.org/",
                           members=("./usr/share/games/supertux2/sounds/*",
                                    "./usr/share/games/supertux2/speech/*")),
    "stk": SourceSpec("stk", "supertuxkart-data", _G + "supertuxkart/data/sfx/",
                      "CC-BY-SA-3.0 / CC-BY-SA-4.0 / CC-BY-3.0 / CC0 / GPL",
                      "https://supertuxkart.net/",
                      members=("./usr/share/games/supertuxkart/data/sfx/*",)),
    "openarena": SourceSpec("openarena", "openarena-data", "sound/", "GPL-2+",
                            "https://openarena.ws/", zip_glob="*.pk3"),
    "openarena088": SourceSpec("openarena088", "openarena-088-data", "sound/", "GPL-2+ / GPL-2",
                               "https://openarena.ws/", zip_glob="*.pk3"),
    "warzone": SourceSpec("warzone", "warzone2100-data", "audio/", "GPL-2+ / CC-BY-SA-3.0 / CC0",
                          "https://wz2100.net/", zip_glob="*/base.wz", zip_prefix="audio/"),
    "freedink": SourceSpec("freedink", "freedink-data", _G + "dink/dink/Sound/",
                           "GPL-3+ / free (see debian/copyright)", "https://www.gnu.org/software/freedink/"),
    "lincity": SourceSpec("lincity", "lincity-ng-data", _G + "lincity-ng/sounds/", "GPL-2+",
                          "https://github.com/lincity-ng/lincity-ng"),
    "freeciv": SourceSpec("freeciv", "freeciv-data", _G + "freeciv/stdsounds/", "GPL-2+",
                          "https://www.freeciv.org/"),
    "etr": SourceSpec("etr", "extremetuxracer-data", _G + "etr/sounds/", "GPL-2+",
                      "https://sourceforge.net/projects/extremetuxracer/"),
    "scorched3d": SourceSpec("scorched3d", "scorched3d-data", _G + "scorched3d/data/globalmods/",
                             "GPL-2+ / CC-BY-SA-3.0", "http://www.scorched3d.co.uk/"),
    "lugaru": SourceSpec("lugaru", "lugaru-data", _G + "lugaru/Sounds/",
                         "CC-BY-SA-3.0 / CC-BY-SA-4.0 / GPL-2+", "https://osslugaru.gitlab.io/"),
    "flare": SourceSpec("flare", "flare-game", _G + "flare/mods/", "CC-BY-SA-3.0+ / GPL-3+",
                        "https://flarerpg.org/"),
    "minetest": SourceSpec("minetest", "minetest-data", _G + "minetest/games/minetest_game/mods/",
                           "CC-BY-SA-3.0 / CC-BY-3.0 / CC0 (per file, see debian/copyright)",
                           "https://www.minetest.net/"),
    "torcs": SourceSpec("torcs", "torcs-data", _G + "torcs/data/sound/", "GPL-2+",
                        "https://torcs.sourceforge.net/"),
    "nexuiz": SourceSpec("nexuiz", "nexuiz-data", "sound/", "GPL-2+", "https://alientrap.org/",
                         zip_glob="*/data.pk3"),
    "ufoai": SourceSpec("ufoai", "ufoai-sound", "sound/", "GPL-2+ / CC-BY-SA-3.0 / CC-BY-3.0",
                        "https://ufoai.org/", zip_glob="*/0snd.pk3"),
    "frozenbubble": SourceSpec("frozenbubble", "frozen-bubble-data", _G + "frozen-bubble/snd/",
                               "GPL-2+", "http://www.frozen-bubble.org/"),
    "cube2": SourceSpec("cube2", "cube2-data", _G + "cube2/packages/sounds/",
                        "CC-BY-3.0 / CC-BY-SA / public domain (per directory)",
                        "http://sauerbraten.org/"),
}
SOURCES.update(POOL_SOURCES)

SIZES = {
    "ci": dict(sources=["megaglest", "wesnoth"], window=10.0, max_windows=2, max_per_class=40,
               min_clips=4, name="debsfx-ci"),
    "full": dict(sources=["0ad", "megaglest", "widelands", "wesnoth"], window=10.0,
                 max_windows=6, max_per_class=0, min_clips=5, name="debsfx"),
    # The wide pool: every training source, with near-duplicate families (see
    # data_scripts/audio_fingerprint.py). Only this size reads rules/sfxpool_rules.tsv, so the
    # ci/full settings (and their rules hash) are those of debsfx_rules.tsv alone.
    "pool": dict(sources=["0ad", "megaglest", "widelands", "wesnoth", *POOL_SOURCES],
                 # min_clips 4 (full: 5): the pool keeps classes of 4 clips, e.g. frogs or
                 # minecarts in two families, which the wider source set has just begun to fill.
                 window=10.0, max_windows=6, max_per_class=0, min_clips=4, name="sfxpool",
                 rules=["debsfx_rules.tsv", "sfxpool_rules.tsv"],
                 near_duplicates=dict(threshold=0.95, min_length_ratio=0.3, prefilter=0.97)),
}
SPLIT_SHARE = {"test": 0.2, "val": 0.1, "train": 0.7}
SPLIT_TIE_ORDER = ("test", "train", "val")


# ----------------------------------------------------------------------------- rules
@dataclass(frozen=True)
class Rule:
    line: int
    source: str
    pattern: re.Pattern
    label: str | None        # None = drop
    captions: tuple[str, ...]


@dataclass
class RuleTable:
    rules: list[Rule]
    words: dict[tuple[str, str], str] = field(default_factory=dict)
    sha256: str = ""

    def match(self, source: str, relpath: str) -> tuple[Rule, dict[str, str]] | None:
        for r in self.rules:
            if r.source != source:
                continue
            m = r.pattern.search(relpath)
            if m:
                return r, {k: v for k, v in m.groupdict().items() if v is not None}
        return None

    def captions_for(self, rule: Rule, groups: dict[str, str]) -> tuple[str, ...]:
        slots = {k: self.words.get((k, v.lower()), v.lower()) for k, v in groups.items()
                 if k != "fam"}
        return tuple(c.format(**slots) for c in rule.captions)


def load_rules(path: Path = RULES_PATH) -> RuleTable:
    """Parse the rules TSV; raises ValueError naming the line on any malformed row."""
    text = Path(path).read_text(encoding="utf-8")
    rules, words = [], {}
    for n, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        cols = raw.split("\t")
        where = f"{path}:{n}"
        if cols[0] == "@word":
            if len(cols) != 4:
                raise ValueError(
                    f"{where}: @word needs 3 tab-separated fields (slot, value, words)"
                )
            words[(cols[1], cols[2].lower())] = cols[3]
            continue
        if len(cols) != 4:
            raise ValueError(f"{where}: expected 4 tab-separated columns "
                             f"(source, pattern, class, captions), got {len(cols)}")
        src, pat, label, caps = cols
        if src not in SOURCES:
            raise ValueError(f"{where}: unknown source {src!r}; expected one of {sorted(SOURCES)}")
        try:
            rx = re.compile(pat, re.IGNORECASE)
        except re.error as e:
            raise ValueError(f"{where}: bad regex {pat!r}: {e}") from None
        if label == "-":
            rules.append(Rule(n, src, rx, None, ()))
            continue
        captions = tuple(c.strip() for c in caps.split("|") if c.strip())
        if not 3 <= len(captions) <= 5:
            raise ValueError(f"{where}: class {label!r} has {len(captions)} captions; give 3 to 5 "
                             "separated by ' | '")
        slots = set(re.findall(r"{(\w+)}", caps))
        missing = slots - set(rx.groupindex)
        if missing:
            raise ValueError(f"{where}: captions use slot(s) {sorted(missing)} that the pattern "
                             "does not capture as named groups")
        rules.append(Rule(n, src, rx, label, captions))
    sha = hashlib.sha256(text.encode()).hexdigest()
    return RuleTable(rules, words, sha)


def load_rule_tables(paths: list[Path]) -> RuleTable:
    """Several rules files as one table (rules in file order; ``@word`` entries merged).

    The hash covers every file's name and text, in order.
    """
    rules, words, h = [], {}, hashlib.sha256()
    for p in paths:
        t = load_rules(p)
        rules.extend(t.rules)
        words.update(t.words)
        h.update(Path(p).name.encode() + b"\0" + Path(p).read_bytes() + b"\0")
    return RuleTable(rules, words, h.hexdigest())


_TRAILING_NUM = re.compile(r"([-_ ]?\d+[a-z]?)+$")


def family_of(source: str, relpath: str, label: str, groups: dict[str, str]) -> str:
    """The sound family (the unit of the split) of a file."""
    if "fam" in groups:
        fam = groups["fam"].lower()
    else:
        stem = Path(relpath).stem.lower()
        if source == "wesnoth":
            stem = stem.split("-")[0]
        fam = _TRAILING_NUM.sub("", stem) or stem
    return f"{source}:{label}:{fam}"


# ----------------------------------------------------------------------------- candidates
@dataclass
class Candidate:
    source: str
    relpath: str       # relative to the source's sound root
    path: Path
    label: str
    captions: tuple[str, ...]
    family: str


def list_source(spec: SourceSpec, tree: Path) -> list[tuple[str, Path]]:
    root = tree / spec.root
    if not root.is_dir():
        raise FileNotFoundError(f"{spec.package}: expected sound tree {root} is missing; "
                                f"delete {tree} from the cache and re-run")
    out = []
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix.lower() in AUDIO_EXT:
            out.append((p.relative_to(root).as_posix(), p))
    return out


def unpack_source(spec: SourceSpec) -> tuple[Package, Path]:
    pkg = fetch_deb(spec.package)
    if spec.key == "0ad":
        tree = unpack_zip_inside(pkg, "*/public.zip", lambda n: n.startswith("audio/")
                                 and not n.startswith("audio/music/")
                                 and n.lower().endswith(AUDIO_EXT), "audio")
    elif spec.zip_glob:
        prefix = spec.zip_prefix
        tree = unpack_zip_inside(pkg, spec.zip_glob, lambda n: n.lower().startswith(prefix)
                                 and n.lower().endswith(AUDIO_EXT), "audio")
    elif spec.members:
        tree = unpack(pkg, list(spec.members), "audio")
    elif spec.key == "widelands":
        tree = unpack(pkg, ["./usr/share/games/widelands/data/sound/*",
                            "./usr/share/games/widelands/data/world/critters/*.ogg"], "audio")
    else:
        tree = unpack(pkg, ["*.ogg", "*.wav"], "audio")
    return pkg, tree


def select(rules: RuleTable, sources: dict[str, tuple[SourceSpec, Path]], stats: Counter
           ) -> list[Candidate]:
    cands, seen_md5 = [], {}
    for key, (spec, tree) in sources.items():
        for rel, path in list_source(spec, tree):
            stats["files_seen"] += 1
            hit = rules.match(key, rel)
            if hit is None:
                stats["unmatched"] += 1
                continue
            rule, groups = hit
            if rule.label is None:
                stats["dropped_by_rule"] += 1
                continue
            digest = hashlib.md5(path.read_bytes()).hexdigest()
            if digest in seen_md5:
                stats["duplicate_files"] += 1
                continue
            seen_md5[digest] = rel
            cands.append(Candidate(key, rel, path, rule.label, rules.captions_for(rule, groups),
                                   family_of(key, rel, rule.label, groups)))
    return cands


# ----------------------------------------------------------------------------- split
def split_families(fam_sizes: dict[str, dict[str, int]], seed: int) -> dict[str, str]:
    """Assign every family to a split, per class; returns family -> split."""
    out = {}
    for label in sorted(fam_sizes):
        fams = fam_sizes[label]
        total = sum(fams.values())
        have = {s: 0 for s in SPLIT_SHARE}
        order = sorted(fams, key=lambda f: (-fams[f], bl.stable_hash(seed, f)))
        for f in order:
            deficit = {s: SPLIT_SHARE[s] * total - have[s] for s in SPLIT_SHARE}
            best = max(SPLIT_TIE_ORDER,
                       key=lambda s: (round(deficit[s], 9), -SPLIT_TIE_ORDER.index(s)))
            out[f] = best
            have[best] += fams[f]
    return out


# ----------------------------------------------------------------------------- near-duplicates
class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            lo, hi = sorted((ra, rb))
            self.parent[hi] = lo


def near_duplicate_families(files: list[tuple[str, str, str]], fps: list, params: dict,
                            *, progress: bool = False) -> tuple[dict[str, str], set[int], dict]:
    """Group near-identical recordings into one family.

    *files* are ``(name, label, family)`` per file, *fps* their fingerprints (same order),
    *params* the ``threshold``/``min_length_ratio``/``prefilter`` of
    :func:`audio_fingerprint.near_duplicate_pairs`. Two near-duplicates of one class put
    their whole families together (the family of the merged group is the smallest name);
    a near-duplicate of an earlier file of *another* class is dropped (one recording must not
    teach two classes, and a family must stay inside one class for the per-class split).

    Returns ``(family -> merged family, indices of dropped files, report)``.
    """
    pairs = near_duplicate_pairs(fps, progress=progress, **params)
    uf = _UnionFind()
    dropped: set[int] = set()
    file_uf = _UnionFind()
    for i, j, _ in sorted(pairs):
        if i in dropped or j in dropped:
            continue
        if files[i][1] == files[j][1]:
            uf.union(files[i][2], files[j][2])
            file_uf.union(str(i), str(j))
        else:
            dropped.add(j)
    groups: dict[str, list[int]] = defaultdict(list)
    for k in range(len(files)):
        if k not in dropped and str(k) in file_uf.parent:
            groups[file_uf.find(str(k))].append(k)
    groups = {g: m for g, m in groups.items() if len(m) > 1}
    fam_map = {f: uf.find(f) for _, _, f in files}
    merged = {f for f, g in fam_map.items() if f != g}
    cross = [sorted(m) for m in groups.values() if len({files[k][2] for k in m}) > 1]
    examples = sorted(groups.values(), key=lambda m: (-len({files[k][0].split(":")[0] for k in m}),
                                                     -len(m), files[m[0]][0]))[:10]
    report = dict(params=params, files=len(files),
                  candidate_pairs=getattr(near_duplicate_pairs, "last_candidates", None),
                  matched_pairs=len(pairs), groups=len(groups),
                  files_in_groups=sum(len(m) for m in groups.values()),
                  groups_joining_families=len(cross), families_merged_away=len(merged),
                  dropped_other_class_files=len(dropped),
                  dropped_other_class_examples=[files[k][0] for k in sorted(dropped)[:10]],
                  examples=[[files[k][0] for k in m] for m in examples])
    return fam_map, dropped, report


def merge_near_duplicates(clips: list[dict], prints: list, params: dict, tmp: Path,
                          *, progress: bool = False) -> tuple[list[dict], dict]:
    """Apply :func:`near_duplicate_families` to the transcoded clips (their windows follow)."""
    files = [(f"{c.source}:{c.relpath}", c.label, c.family) for c, _, _ in prints]
    fam_map, dropped, report = near_duplicate_families(files, [fp for _, _, fp in prints],
                                                       params, progress=progress)
    drop_bases = {prints[k][1] for k in dropped}
    kept = []
    for r in clips:
        base = re.sub(r"-w\d\d$", "", r["clip_id"])
        if base in drop_bases:
            (tmp / r["audio_path"]).unlink()
            continue
        kept.append(dict(r, group=fam_map.get(r["group"], r["group"])))
    return kept, report


# ----------------------------------------------------------------------------- build
def build(size: str, out: Path | None = None, *, force: bool = False, seed: int = 0,
          sources: list[str] | None = None, max_windows: int | None = None,
          max_per_class: int | None = None, min_clips: int | None = None,
          window: float | None = None) -> Path:
    from tqdm import tqdm

    from mltm.data.audio import AudioLoadError, load_audio
    from mltm.data.manifest import ClipRecord, write_manifest

    cfg = dict(SIZES[size])
    for k, v in dict(sources=sources, max_windows=max_windows, max_per_class=max_per_class,
                     min_clips=min_clips, window=window).items():
        if v is not None:
            cfg[k] = v
    out = Path(out) if out else data_root() / cfg["name"]
    t0 = time.time()
    rules = (load_rule_tables([RULES_DIR / f for f in cfg["rules"]]) if "rules" in cfg
             else load_rules())
    near = cfg.get("near_duplicates")  # None for ci/full: their outputs stay as they were
    specs = [SOURCES[s] for s in cfg["sources"]]
    pkgs = {s.key: fetch_deb(s.package) for s in specs}
    settings = dict(builder="debsfx", version=BUILDER_VERSION, size=size, seed=seed,
                    sample_rate=bl.SAMPLE_RATE, rules_sha256=rules.sha256,
                    packages={k: p.version for k, p in pkgs.items()},
                    **{k: v for k, v in cfg.items() if k != "name"})
    key = bl.settings_key(settings)
    if not force and bl.up_to_date(out, key):
        bl.log(f"[debsfx] {out.name} is up to date (settings {key}); nothing to do")
        return out

    trees = {}
    for spec in tqdm(specs, desc="debsfx: unpack packages", unit="pkg"):
        pkg, tree = unpack_source(spec)
        trees[spec.key] = (spec, tree)
    stats: Counter = Counter()
    cands = select(rules, trees, stats)
    bl.log(f"[debsfx] {stats['files_seen']} audio files, {len(cands)} matched a class "
           f"({stats['unmatched']} unmatched, {stats['dropped_by_rule']} dropped by rule, "
           f"{stats['duplicate_files']} byte-identical duplicates)")

    # Cap classes (whole families, seeded order) before decoding, to keep ci builds small.
    if cfg["max_per_class"]:
        by_label = defaultdict(lambda: defaultdict(list))
        for c in cands:
            by_label[c.label][c.family].append(c)
        kept = []
        for label, fams in by_label.items():
            n = 0
            for f in sorted(fams, key=lambda f: bl.stable_hash(seed, "cap", f)):
                if n >= cfg["max_per_class"]:
                    stats["capped_files"] += len(fams[f])
                    continue
                take = fams[f][: cfg["max_per_class"] - n]
                stats["capped_files"] += len(fams[f]) - len(take)
                kept.extend(take)
                n += len(take)
        cands = sorted(kept, key=lambda c: (c.source, c.relpath))

    skip = Counter()
    win_n = int(round(cfg["window"] * bl.SAMPLE_RATE))
    with bl.AtomicDir(out) as tmp:
        clips = []  # ClipRecord kwargs
        used_ids: set[str] = set()
        prints: list[tuple[Candidate, str, object]] = []  # (file, clip-id base, fingerprint)
        for c in tqdm(cands, desc=f"debsfx-{size}: transcode", unit="file"):
            try:
                wave = load_audio(c.path, bl.SAMPLE_RATE).numpy()
            except AudioLoadError as e:
                skip[e.reason] += 1
                continue
            except Exception:  # anything else a broken file can raise: count, never stop
                skip["unreadable"] += 1
                continue
            if bl.rms(wave) < bl.SILENCE_RMS:
                skip["silent"] += 1
                continue
            if wave.size > win_n:
                n_full = wave.size // win_n
                pieces = [(f"-w{k:02d}", wave[k * win_n:(k + 1) * win_n])
                          for k in range(min(n_full, cfg["max_windows"]))]
                stats["windowed_files"] += 1
            else:
                pieces = [("", wave)]
            base = bl.slug(f"{c.source}-{Path(c.relpath).with_suffix('').as_posix()}")
            if base in used_ids:  # e.g. Wesnoth ships both mace.ogg and mace.wav
                base = bl.slug(f"{c.source}-{c.relpath}")
            used_ids.add(base)
            if near is not None:
                prints.append((c, base, fingerprint(wave)))
            for suffix, piece in pieces:
                if bl.rms(piece) < bl.SILENCE_RMS:
                    skip["silent_window"] += 1
                    continue
                cid = base + suffix
                rel = f"audio/{cid}.flac"
                bl.write_flac(tmp / rel, piece)
                clips.append(dict(clip_id=cid, audio_path=rel, captions=c.captions,
                                  label=c.label, group=c.family,
                                  source=f"{SOURCES[c.source].package} {pkgs[c.source].version}",
                                  license=SOURCES[c.source].license,
                                  duration=round(piece.size / bl.SAMPLE_RATE, 4)))

        near_info = None
        if near is not None:
            clips, near_info = merge_near_duplicates(clips, prints, near, tmp, progress=True)
            stats["near_duplicate_other_class"] = near_info["dropped_other_class_files"]

        # Drop tiny classes.
        fam_sizes: dict[str, Counter] = defaultdict(Counter)
        for r in clips:
            fam_sizes[r["label"]][r["group"]] += 1
        dropped_classes = {}
        for label, fams in sorted(fam_sizes.items()):
            n = sum(fams.values())
            if n < cfg["min_clips"]:
                dropped_classes[label] = {"clips": n, "families": len(fams)}
        for r in clips:
            if r["label"] in dropped_classes:
                (tmp / r["audio_path"]).unlink()
        clips = [r for r in clips if r["label"] not in dropped_classes]
        for label in dropped_classes:
            fam_sizes.pop(label)
        if not clips:
            raise RuntimeError("no clip survived the filters; check the rules table and sources")

        assign = split_families({k: dict(v) for k, v in fam_sizes.items()}, seed)
        per_split = defaultdict(list)
        for r in clips:
            per_split[assign[r["group"]]].append(ClipRecord(**r))
        for split in ("train", "val", "test"):
            recs = sorted(per_split[split], key=lambda r: r.clip_id)
            write_manifest(recs, tmp / f"{split}.jsonl")

        used = [dict(package=s.package, version=pkgs[s.key].version, license=s.license,
                     upstream=s.upstream) for s in specs]
        (tmp / "LICENSE.md").write_text(bl.license_markdown(
            f"DebSFX ({cfg['name']})",
            "Sound effects from Debian game-data packages, transcoded to 32 kHz mono FLAC and "
            "(long ambiences) cut into windows. Captions are template paraphrases written for "
            "mltm from the file names (data_scripts/rules/debsfx_rules.tsv), not human "
            "annotations. CC-BY-SA-3.0 material stays under CC-BY-SA-3.0 and GPL-2+ material "
            "under GPL-2+: redistribute only with this attribution and under the same terms.",
            used, {s.package: copyright_text(trees[s.key][1], s.package) for s in specs}))

        durations = [r["duration"] for r in clips]
        info = dict(
            name=cfg["name"], builder="data_scripts/build_debsfx.py", settings_key=key,
            settings=settings, created=bl.utc_now(), commit=bl.git_commit(),
            build_seconds=round(time.time() - t0, 1),
            packages=[pkgs[s.key].as_dict() for s in specs],
            counts=dict(clips=len(clips), classes=len(fam_sizes),
                        **({"source_files": len({r["clip_id"].rsplit("-w", 1)[0]
                                                 if re.search(r"-w\d\d$", r["clip_id"])
                                                 else r["clip_id"] for r in clips})}
                           if near is not None else {}),
                        families=len(assign), captions=sum(len(r["captions"]) for r in clips),
                        **{f"{s}_clips": len(per_split[s]) for s in ("train", "val", "test")}),
            total_minutes=round(sum(durations) / 60, 2),
            filters=dict(stats, **{f"skipped_{k}": v for k, v in skip.items()}),
            dropped_classes=dropped_classes,
            audio_bytes=bl.dir_bytes(tmp / "audio"),
        )
        if near_info is not None:
            info["near_duplicates"] = near_info
            info["per_source_clips"] = dict(sorted(Counter(
                r["source"].split(" ")[0] for r in clips).items()))
        bl.write_json_atomic(tmp / bl.BUILD_INFO, info)
    bl.log(f"[debsfx] wrote {out} : {info['counts']} in {info['build_seconds']} s")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="ci")
    ap.add_argument("--out", type=Path, help="output directory (default $MLTM_DATA/<name>)")
    ap.add_argument("--force", action="store_true", help="rebuild even if up to date")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-windows", type=int)
    ap.add_argument("--max-per-class", type=int, help="0 = no cap")
    ap.add_argument("--min-clips", type=int)
    args = ap.parse_args(argv)
    build(args.size, args.out, force=args.force, seed=args.seed, max_windows=args.max_windows,
          max_per_class=args.max_per_class, min_clips=args.min_clips)
    return 0


if __name__ == "__main__":
    sys.exit(main())

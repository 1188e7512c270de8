"""Build "DebSFX scenes": 10 s sound scenes mixed from a captioned pool, with unique captions.

DebSFX's captions are templates per class, so retrieval on it is class recognition. AudioCaps
and Clotho clips are *scenes*: several events, in an order, with relations, and captions no
other clip shares. This builder turns a pool of single-event clips (a dataset directory in the
DebSFX manifest format: ``train/val/test.jsonl`` + audio, split by sound family) into scenes of
that kind.

What a scene is
---------------
* **1 to 4 foreground events** (:data:`EVENTS_PER_SCENE`) drawn from the pool's non-ambience
  classes. Events are grouped in *units*: one clip played once, or the same clip played two or
  more times in a row ("twice", "repeatedly"). Consecutive units either follow each other (a
  gap of at least :data:`MIN_GAP_S`) or overlap (by at least :data:`MIN_OVERLAP_S`). Each unit
  has a relative level: normal (-3..+3 dB), faint (:data:`FAINT_DB` or more below every other
  unit) or loud (:data:`LOUD_DB` or more above every other unit).
* An optional **background bed**: one clip of an ambience class (:data:`BACKGROUND_CLASSES`,
  the one table of ambience labels), from 0 s, with 0.25 s fades, 6-12 dB below the events.
* **10 s long** (:data:`SCENE_SECONDS`, the AudioCaps length), mono, the pool's sample rate,
  16-bit FLAC. An event running past the end is cut with a :data:`CUT_FADE_S` fade-out.
* **Loudness**: each event is first brought to the same RMS, then its relative level is
  applied; the mix is scaled to :data:`TARGET_RMS_DBFS` RMS, lowered where needed so its peak
  stays at or below :data:`PEAK_CEILING_DBFS` (no clipping, ever: asserted).
* **Bit-identical on every CPU**: mixing is float64 elementwise numpy; every gain is computed
  from a float64 RMS/peak and rounded to a :data:`GAIN_GRID_DB` grid before it is applied, so a
  last-bit difference in a reduction cannot change the written samples. Everything is seeded
  (``--seed``); the samples are rounded to 16 bits by the builder itself.

Captions
--------
Five per scene, from a grammar (:func:`draw_caption`): each unit is one of its pool clip's
paraphrases, with modifiers ("twice", "repeatedly", "faintly", "loudly", "at the start", "at
the end", ...), joined by relation phrases ("then", "followed by", "after", "while", "as",
"at the same time as", ...) and, with a bed, a background phrase ("in the background",
"over", ...). Every phrase is chosen from the facts derived from the *stored* event list
(:func:`scene_facts`), so captions are truthful to the metadata: "then" only where the next
unit starts after the previous one ended, "while" only where they overlap, "twice" only where
the same clip plays exactly twice, "faint" only where its level is well below the others.

**No caption string occurs for two scenes** (compared after lower-casing and dropping
punctuation), and the five captions of a scene differ: asserted at the end of the build (the
assertion names the colliding scenes). A sampled scene that cannot get five fresh captions is
dropped and another one is drawn (counted in ``BUILD_INFO.json``); when a split cannot be
filled the build stops with a message saying so.

Splits
------
A scene of split *s* uses only clips of the pool's split *s* (the pool is split by sound
family), so no source recording or family appears in two splits: asserted. Shares
:data:`SPLIT_SHARE` (70/10/20 %).

Manifest
--------
One :class:`mltm.data.manifest.ClipRecord` per scene: ``label`` is the first foreground
event's class, ``group`` its family, ``source``/``license`` the union of the events' ones, and
``meta`` holds the event list (class, clip_id, family, onset_s, duration_s, gain_db, level_db,
background, unit, cut) and the scene gain, for analyses by content.

Build guarantees (as the other builders): idempotent and cached (``BUILD_INFO.json`` records
the settings, the hash of this file and the pool's ``BUILD_INFO.json`` hash, and is written
last; a second run with the same settings returns in seconds), atomic (built in a temporary
sibling directory), undecodable pool clips skipped and counted, ``LICENSE.md`` carried from the
pool. :func:`scene_stats` summarises a built set (``data_scripts/dataset_stats.py`` adds it to
the statistics of a scene set).

Usage::

    python data_scripts/build_scenes.py --size ci     # $MLTM_DATA/debsfx-ci -> debsfx-scenes-ci
    python data_scripts/build_scenes.py --size full   # $MLTM_DATA/sfxpool  -> debsfx-scenes
    python data_scripts/build_scenes.py --pool DIR --out DIR --scenes N [--seed S] [--force]
"""

from __future__ import annotations

import argparse
import hashlib
import math
import re
import statistics
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data_scripts import buildlib as bl  # noqa: E402
from data_scripts.debian import data_root  # noqa: E402

BUILDER_VERSION = 1

#: Number of scenes of the CI size (the one constant to change; 400 gives 80 test scenes,
#: 400 test captions).
CI_SCENES = 400
#: Number of scenes of the full size.
FULL_SCENES = 10_000
SIZES = {
    "ci": dict(pool="debsfx-ci", name="debsfx-scenes-ci", scenes=CI_SCENES),
    "full": dict(pool="sfxpool", name="debsfx-scenes", scenes=FULL_SCENES),
}
SPLITS = ("train", "val", "test")
SPLIT_SHARE = {"train": 0.7, "val": 0.1, "test": 0.2}

SCENE_SECONDS = 10.0
#: Probability of 1, 2, 3, 4 foreground events. Single-event scenes are few: the grammar can
#: only give a class so many distinct one-event captions.
EVENTS_PER_SCENE = {1: 0.10, 2: 0.35, 3: 0.33, 4: 0.22}
#: Probability that a unit (when events are left) is a repetition of one clip.
REPEAT_PROB = 0.22
#: Probability that two consecutive single-play units overlap instead of following each other.
OVERLAP_PROB = 0.35
#: Probability of a background bed (when the split has an ambience clip).
BACKGROUND_PROB = 0.45
#: Probability that a scene with 2+ units has one faint unit / one loud unit.
FAINT_PROB = 0.2
LOUD_PROB = 0.1

#: Pool classes used only as background beds, never as events (labels of DebSFX's rules table
#: and of wider pools; a label not in the pool is simply unused).
BACKGROUND_CLASSES = frozenset({
    "rain", "wind", "nature_ambience", "night_ambience", "flowing_water", "river", "stream",
    "waterfall", "sea_waves", "ocean", "waves", "fire", "campfire", "fire_crackling", "crowd",
    "crowd_murmur", "crowd_cheering", "battle_ambience", "city_ambience", "town_ambience",
    "forest_ambience", "insects", "crickets", "thunderstorm", "storm", "machinery_hum",
    "cave_ambience", "swamp_ambience",
})
#: Shortest pool clip used as a bed (shorter beds would not fill the scene's background).
MIN_BED_S = 7.5
BED_FADE_S = 0.25

#: Fact thresholds (what the caption words mean).
MIN_GAP_S = 0.05          # "then": the next unit starts at least this long after the end
MIN_OVERLAP_S = 0.05      # "while": the two units overlap for at least this long
FAINT_DB = 10.0           # "faint": this many dB below every other unit
LOUD_DB = 6.0             # "loud": this many dB above every other unit
START_S = 1.0             # "at the start": the first unit starts within this
END_S = 1.0               # "at the end": the last unit ends within this of the scene's end

#: Levels (dB relative to the common event RMS) of the unit kinds, and of the bed.
NORMAL_LEVEL_DB = (-3.0, 3.0)
FAINT_LEVEL_DB = (-18.0, -13.0)
LOUD_LEVEL_DB = (9.0, 12.0)
BED_LEVEL_DB = (-12.0, -6.0)
EVENT_REF_DBFS = -20.0
TARGET_RMS_DBFS = -24.0
PEAK_CEILING_DBFS = -1.0
GAIN_GRID_DB = 0.01
CUT_FADE_S = 0.02
#: An event cut by the scene's end keeps at least this much (or all of it, if shorter).
MIN_EVENT_S = 0.3

#: Caption draws tried per scene before the scene is given up (it needs 5 fresh ones).
CAPTION_DRAWS = 60
CAPTIONS_PER_SCENE = 5
#: Scenes given up in a row before a split is declared impossible to fill.
MAX_CONSECUTIVE_REDRAWS = 2000

# ----------------------------------------------------------------------------- grammar
TWICE = ("{np} twice", "{np}, twice", "{np} two times", "{np}, and once more",
         "{np}, repeated once")
REPEATEDLY = ("{np} repeatedly", "{np} over and over", "{np} several times",
              "{np} again and again", "{np} {k} times")
# Modifiers are suffixes only, so that they compose with every relation template.
FAINT = ("{np}, faintly", "{np} faintly", "{np}, barely audible", "{np}, very quietly",
         "{np}, soft and faint")
LOUD = ("{np}, loudly", "{np} loudly", "{np}, very loud", "{np}, at high volume",
        "{np}, loud and clear")
AT_START = ("{np} at the start", "{np} at the beginning", "{np} right at the beginning",
            "{np} to begin with", "{np} at first")
AT_END = ("{np} at the end", "{np} near the end", "{np} at the very end",
          "{np} close to the end", "{np} to finish")
SEQ_JOIN = (", then ", " followed by ", ", and then ", ", after which ", ", and after that ",
            ", later ", " before ")
OVERLAP_JOIN = (" while ", " as ", " along with ", " together with ", ", at the same time as ",
                " overlapping with ")
NEUTRAL_JOIN = (" and ", ", and ", " with ")
SEQ_PAIR = ("{b} after {a}", "first {a}, then {b}", "{a}, with {b} afterwards",
            "{a}; next, {b}")
OVERLAP_PAIR = ("{b} while {a}", "{a} and {b} at the same time", "{a} and {b} together",
                "{b} as {a}", "{a} and {b} simultaneously")
BACKGROUND = ("{s}, with {bg} in the background", "{s} over {bg}",
              "{s} against a background of {bg}", "{bg} in the background as {s}",
              "{s}, {bg} throughout", "{s} with {bg} behind it",
              "{bg} in the background while {s}", "{s}; in the background, {bg}")
NUMBER_WORDS = {2: "two", 3: "three", 4: "four"}

_KEY = re.compile(r"[^a-z0-9]+")


def caption_key(caption: str) -> str:
    """The form captions are compared in for uniqueness (lower case, no punctuation)."""
    return _KEY.sub(" ", caption.lower()).strip()


# ----------------------------------------------------------------------------- pool
@dataclass
class PoolClip:
    clip_id: str
    label: str
    family: str
    captions: tuple[str, ...]
    source: str
    license: str
    wave: np.ndarray          # float32 samples as decoded (exact for 16-bit sources)
    rms: float                # float64 RMS of the whole clip


@dataclass
class Pool:
    directory: Path
    sample_rate: int
    build_info_sha256: str
    events: dict[str, dict[str, list[PoolClip]]]   # split -> class -> clips
    beds: dict[str, list[PoolClip]]                # split -> bed clips
    skipped: Counter = field(default_factory=Counter)
    clips: int = 0


def pool_build_info_sha256(pool_dir: Path) -> str:
    p = Path(pool_dir) / bl.BUILD_INFO
    if not p.is_file():
        raise FileNotFoundError(f"pool {pool_dir} is not a complete build (no {bl.BUILD_INFO}); "
                                "build it first, or pass --pool DIR of a built pool")
    return hashlib.sha256(p.read_bytes()).hexdigest()


def load_pool(pool_dir: Path, sample_rate: int | None = None) -> Pool:
    """Decode every pool clip (undecodable and silent ones are skipped and counted)."""
    from tqdm import tqdm

    from mltm.data.audio import AudioLoadError, load_audio
    from mltm.data.manifest import read_manifest, resolve_audio_path

    pool_dir = Path(pool_dir)
    sha = pool_build_info_sha256(pool_dir)
    info = bl.read_build_info(pool_dir) or {}
    sr = int(sample_rate or info.get("settings", {}).get("sample_rate") or bl.SAMPLE_RATE)
    records = {s: read_manifest(pool_dir / f"{s}.jsonl") for s in SPLITS
               if (pool_dir / f"{s}.jsonl").is_file()}
    if not records:
        raise FileNotFoundError(f"pool {pool_dir} has no train/val/test.jsonl manifest")
    family_split: dict[str, str] = {}
    for split, recs in records.items():
        for r in recs:
            fam = r.group or r.clip_id
            other = family_split.setdefault(fam, split)
            if other != split:
                raise ValueError(f"pool {pool_dir}: family {fam!r} is in splits {other} and "
                                 f"{split}; the pool must be split by family (rebuild it)")
    pool = Pool(pool_dir, sr, sha, {s: defaultdict(list) for s in SPLITS},
                {s: [] for s in SPLITS})
    total = sum(len(v) for v in records.values())
    with tqdm(total=total, desc=f"scenes: decode pool {pool_dir.name}", unit="clip") as bar:
        for split, recs in records.items():
            for r in recs:
                bar.update()
                path = resolve_audio_path(r, pool_dir)
                try:
                    wave = load_audio(path, sr).numpy()
                except AudioLoadError as e:
                    pool.skipped[e.reason] += 1
                    continue
                except Exception:  # anything else a broken file can raise: count, never stop
                    pool.skipped["unreadable"] += 1
                    continue
                level = bl.rms(wave)
                if level < bl.SILENCE_RMS:
                    pool.skipped["silent"] += 1
                    continue
                clip = PoolClip(r.clip_id, r.label or "unlabelled", r.group or r.clip_id,
                                tuple(r.captions), r.source, r.license, wave, level)
                pool.clips += 1
                if clip.label in BACKGROUND_CLASSES:
                    if wave.size >= MIN_BED_S * sr:
                        pool.beds[split].append(clip)
                    else:
                        pool.skipped["bed_too_short"] += 1
                else:
                    pool.events[split][clip.label].append(clip)
    return pool


# ----------------------------------------------------------------------------- facts
@dataclass(frozen=True)
class Unit:
    """One foreground unit of a scene: a clip played ``count`` times in a row."""

    index: int
    label: str
    clip_id: str
    count: int
    onset: float
    end: float
    level_db: float
    level: str                # "normal", "faint" or "loud"


@dataclass(frozen=True)
class SceneFacts:
    """What the captions may say about a scene, derived from its stored event list only."""

    units: tuple[Unit, ...]
    relations: tuple[str, ...]      # between unit i and i+1: "seq", "overlap" or "near"
    background: str | None          # clip_id of the bed
    at_start: bool
    at_end: bool


def scene_facts(events: list[dict], scene_seconds: float = SCENE_SECONDS) -> SceneFacts:
    """Derive the caption facts of a scene from its event list (as stored in ``meta``)."""
    fg = [e for e in events if not e["background"]]
    by_unit: dict[int, list[dict]] = defaultdict(list)
    for e in fg:
        by_unit[e["unit"]].append(e)
    raw = []
    for u, evs in sorted(by_unit.items()):
        assert len({e["clip_id"] for e in evs}) == 1, f"unit {u} mixes clips"
        onset = min(e["onset_s"] for e in evs)
        end = max(e["onset_s"] + e["duration_s"] for e in evs)
        level = statistics.fmean(e["level_db"] for e in evs)
        raw.append((u, evs[0]["class"], evs[0]["clip_id"], len(evs), onset, end, level))
    units = []
    for u, label, cid, count, onset, end, level in raw:
        others = [r[6] for r in raw if r[0] != u]
        kind = "normal"
        if others and level <= min(others) - FAINT_DB:
            kind = "faint"
        elif others and level >= max(others) + LOUD_DB:
            kind = "loud"
        units.append(Unit(u, label, cid, count, onset, end, level, kind))
    relations = []
    for a, b in zip(units, units[1:]):
        if b.onset >= a.end + MIN_GAP_S:
            relations.append("seq")
        elif min(a.end, b.end) - max(a.onset, b.onset) >= MIN_OVERLAP_S:
            relations.append("overlap")
        else:
            relations.append("near")
    beds = [e["clip_id"] for e in events if e["background"]]
    return SceneFacts(tuple(units), tuple(relations), beds[0] if beds else None,
                      bool(units) and units[0].onset <= START_S,
                      bool(units) and units[-1].end >= scene_seconds - END_S)


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def draw_caption(facts: SceneFacts, phrases: dict[str, tuple[str, ...]],
                 rng: np.random.Generator) -> str:
    """One random caption of a scene; every phrase is licensed by ``facts``.

    Args:
        facts: From :func:`scene_facts`.
        phrases: clip_id -> the pool's paraphrases of that clip (noun phrases / clauses).
        rng: The scene's random generator.
    """
    parts = []
    last = len(facts.units) - 1
    for i, u in enumerate(facts.units):
        options = phrases[u.clip_id]
        if u.level == "faint":   # "a loud elephant call" would contradict "faint"
            options = tuple(c for c in options if "loud" not in c) or options
        np_ = _pick(rng, options)
        if u.count == 2:
            np_ = _pick(rng, TWICE).format(np=np_)
        elif u.count >= 3:
            np_ = _pick(rng, REPEATEDLY).format(np=np_, k=NUMBER_WORDS.get(u.count, str(u.count)))
        # (a paraphrase may already say it: "an elephant trumpets loudly")
        if u.level == "faint" and "faint" not in np_ and rng.random() < 0.85:
            np_ = _pick(rng, FAINT).format(np=np_)
        elif u.level == "loud" and "loud" not in np_ and rng.random() < 0.85:
            np_ = _pick(rng, LOUD).format(np=np_)
        if i == 0 and facts.at_start and rng.random() < 0.4:
            np_ = _pick(rng, AT_START).format(np=np_)
        elif i == last and facts.at_end and rng.random() < 0.4:
            np_ = _pick(rng, AT_END).format(np=np_)
        parts.append(np_)
    if len(parts) == 2 and facts.relations[0] != "near" and rng.random() < 0.4:
        pair = SEQ_PAIR if facts.relations[0] == "seq" else OVERLAP_PAIR
        text = _pick(rng, pair).format(a=parts[0], b=parts[1])
    else:
        text = parts[0]
        for rel, nxt in zip(facts.relations, parts[1:]):
            join = {"seq": SEQ_JOIN, "overlap": OVERLAP_JOIN, "near": NEUTRAL_JOIN}[rel]
            text += _pick(rng, join) + nxt
    if facts.background is not None:
        bg = _pick(rng, phrases[facts.background])
        text = _pick(rng, BACKGROUND).format(s=text, bg=bg)
    return re.sub(r"\s+", " ", text).strip()


# ----------------------------------------------------------------------------- layout
def _grid(db: float) -> float:
    """Round a gain in dB to the fixed grid (so reductions' last bits cannot matter)."""
    return round(round(db / GAIN_GRID_DB) * GAIN_GRID_DB, 2)


def _db(x: float) -> float:
    return 20.0 * math.log10(x)


def _lin(db: float) -> float:
    return 10.0 ** (db / 20.0)


def draw_scene(pool: Pool, split: str, rng: np.random.Generator, stats: Counter
               ) -> list[dict] | None:
    """Sample one scene's event list (None when the draw did not fit in the scene)."""
    sr = pool.sample_rate
    n_total = int(round(SCENE_SECONDS * sr))
    classes = sorted(pool.events[split])
    n_events = int(rng.choice(list(EVENTS_PER_SCENE), p=list(EVENTS_PER_SCENE.values())))
    counts, left = [], n_events
    while left:
        c = 1
        if left >= 2 and rng.random() < REPEAT_PROB:
            c = int(rng.integers(2, min(left, 3) + 1))
        counts.append(c)
        left -= c
    if len(counts) > len(classes):
        counts = counts[: len(classes)]
    chosen = rng.choice(len(classes), size=len(counts), replace=False)
    clips = []
    for k in chosen:
        cands = pool.events[split][classes[int(k)]]
        clips.append(cands[int(rng.integers(len(cands)))])
    relations = []
    for i in range(len(counts) - 1):
        both_single = counts[i] == 1 and counts[i + 1] == 1
        relations.append("overlap" if both_single and rng.random() < OVERLAP_PROB else "seq")
    levels = [float(rng.uniform(*NORMAL_LEVEL_DB)) for _ in counts]
    if len(counts) >= 2:
        r = rng.random()
        j = int(rng.integers(len(counts)))
        if r < FAINT_PROB:
            levels[j] = float(rng.uniform(*FAINT_LEVEL_DB))
        elif r < FAINT_PROB + LOUD_PROB:
            levels[j] = float(rng.uniform(*LOUD_LEVEL_DB))

    # Onsets in samples, relative to the scene's first onset.
    # prev: (onset, end) of the previous unit; horizon: the latest end so far ("then" starts
    # after everything before it has ended).
    events, t, prev, horizon = [], 0, None, 0
    for u, (clip, count) in enumerate(zip(clips, counts)):
        n = clip.wave.size
        if prev is not None:
            if relations[u - 1] == "seq":
                t = horizon + int(rng.integers(int(0.2 * sr), int(1.5 * sr)))
            else:
                p_on, p_end = prev
                need = int(min(0.2 * sr, 0.5 * min(p_end - p_on, n)))
                hi = max(p_on + 1, p_end - max(need, int(MIN_OVERLAP_S * sr) + 1))
                t = int(rng.integers(p_on, hi))
        start = t
        for k in range(count):
            events.append(dict(unit=u, clip=clip, onset=t, n=n, level=levels[u]))
            t += n
            if k + 1 < count:
                t += int(rng.integers(int(0.1 * sr), int(0.6 * sr)))
        prev = (start, t)
        horizon = max(horizon, t)
    span = max(e["onset"] + e["n"] for e in events)
    if len(counts) == 1:  # single unit: placed at the start, the end or anywhere
        mode = _pick(rng, ("start", "end", "any"))
        slack = n_total - span
        if slack <= 0:
            shift = 0
        elif mode == "start":
            shift = int(rng.integers(0, max(1, min(slack, int(0.5 * sr)))))
        elif mode == "end":
            shift = slack - int(rng.integers(0, max(1, min(slack, int(0.5 * sr)))))
        else:
            shift = int(rng.integers(0, slack + 1))
    else:
        shift = int(rng.integers(0, max(0, n_total - span) + 1))
    out = []
    for e in events:
        onset = e["onset"] + shift
        n_use = min(e["n"], n_total - onset)
        if n_use < min(e["n"], int(MIN_EVENT_S * sr)):
            stats["redraw_did_not_fit"] += 1
            return None
        out.append(dict(e, onset=onset, n=n_use, cut=n_use < e["n"], background=False))
    if pool.beds[split] and rng.random() < BACKGROUND_PROB:
        bed = pool.beds[split][int(rng.integers(len(pool.beds[split])))]
        out.insert(0, dict(unit=-1, clip=bed, onset=0, n=min(bed.wave.size, n_total),
                           level=float(rng.uniform(*BED_LEVEL_DB)),
                           cut=bed.wave.size > n_total, background=True))
    return out


def _fade(n: int, n_fade: int) -> np.ndarray:
    """A linear ramp of ``n_fade`` samples from ~1 to ~0 (elementwise, float64)."""
    n_fade = max(1, min(n, n_fade))
    return (np.arange(n_fade, 0, -1, dtype=np.float64) - 0.5) / n_fade


def mix_scene(layout: list[dict], sample_rate: int) -> tuple[np.ndarray, list[dict], float]:
    """Mix a drawn layout into int16 samples; returns (samples, stored events, scene gain dB)."""
    n_total = int(round(SCENE_SECONDS * sample_rate))
    mix = np.zeros(n_total, dtype=np.float64)
    pre_gain_db = []
    for e in layout:
        x = e["clip"].wave[: e["n"]].astype(np.float64)
        level = bl.rms(x)
        if level < bl.SILENCE_RMS:   # the kept part of a cut clip can be silent
            level = e["clip"].rms
        g_db = _grid(EVENT_REF_DBFS - _db(level) + e["level"])
        pre_gain_db.append((g_db, level))
        if e["background"]:
            n_fade = int(BED_FADE_S * sample_rate)
            x[:n_fade] *= _fade(x.size, n_fade)[::-1]
            x[-n_fade:] *= _fade(x.size, n_fade)
        elif e["cut"]:
            n_fade = int(CUT_FADE_S * sample_rate)
            x[-n_fade:] *= _fade(x.size, n_fade)
        mix[e["onset"]: e["onset"] + x.size] += x * _lin(g_db)
    mix_rms = bl.rms(mix)
    peak = float(np.max(np.abs(mix)))
    scene_db = _grid(TARGET_RMS_DBFS - _db(mix_rms))
    ceiling_db = math.floor((PEAK_CEILING_DBFS - _db(peak)) / GAIN_GRID_DB) * GAIN_GRID_DB
    scene_db = min(scene_db, round(ceiling_db, 2))
    y = np.rint(mix * (_lin(scene_db) * 32767.0))
    assert np.max(np.abs(y)) <= 32767, "builder bug: a scene clips"
    stored = []
    for e, (g_db, level) in zip(layout, pre_gain_db):
        total_db = round(g_db + scene_db, 2)
        stored.append(dict(
            **{"class": e["clip"].label}, clip_id=e["clip"].clip_id, family=e["clip"].family,
            onset_s=e["onset"] / sample_rate, duration_s=e["n"] / sample_rate,
            gain_db=total_db, level_db=round(_db(level) + total_db, 2),
            background=e["background"], unit=e["unit"], cut=bool(e["cut"])))
    return y.astype(np.int16), stored, scene_db


# ----------------------------------------------------------------------------- build
def split_sizes(n_scenes: int) -> dict[str, int]:
    n_test = int(round(SPLIT_SHARE["test"] * n_scenes))
    n_val = int(round(SPLIT_SHARE["val"] * n_scenes))
    return {"train": n_scenes - n_test - n_val, "val": n_val, "test": n_test}


def build(size: str = "ci", out: Path | None = None, *, pool_dir: Path | None = None,
          scenes: int | None = None, seed: int = 0, force: bool = False) -> Path:
    """Build (or confirm up to date) a scene set; returns its directory."""
    import soundfile as sf
    from tqdm import tqdm

    from mltm.data.manifest import ClipRecord, write_manifest

    cfg = SIZES[size]
    pool_dir = Path(pool_dir) if pool_dir else data_root() / cfg["pool"]
    out = Path(out) if out else data_root() / cfg["name"]
    n_scenes = int(scenes if scenes is not None else cfg["scenes"])
    if n_scenes < 1:
        raise ValueError(f"--scenes must be at least 1, got {n_scenes}")
    t0 = time.time()
    settings = dict(
        builder="scenes", version=BUILDER_VERSION,
        # any change of this file (grammar, sampling, mixing) makes a new build
        builder_sha256=hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
        size=size, seed=seed, scenes=n_scenes,
        pool=pool_dir.name, pool_build_info_sha256=pool_build_info_sha256(pool_dir),
        scene_seconds=SCENE_SECONDS, split_share=SPLIT_SHARE, events_per_scene=EVENTS_PER_SCENE,
        repeat_prob=REPEAT_PROB, overlap_prob=OVERLAP_PROB, background_prob=BACKGROUND_PROB,
        faint_prob=FAINT_PROB, loud_prob=LOUD_PROB,
        background_classes=sorted(BACKGROUND_CLASSES),
        grammar_sha256=hashlib.sha256(repr((TWICE, REPEATEDLY, FAINT, LOUD, AT_START, AT_END,
                                            SEQ_JOIN, OVERLAP_JOIN, NEUTRAL_JOIN, SEQ_PAIR,
                                            OVERLAP_PAIR, BACKGROUND)).encode()).hexdigest(),
        levels=dict(normal=NORMAL_LEVEL_DB, faint=FAINT_LEVEL_DB, loud=LOUD_LEVEL_DB,
                    bed=BED_LEVEL_DB, event_ref_dbfs=EVENT_REF_DBFS,
                    target_rms_dbfs=TARGET_RMS_DBFS, peak_ceiling_dbfs=PEAK_CEILING_DBFS))
    key = bl.settings_key(settings)
    if not force and bl.up_to_date(out, key):
        bl.log(f"[scenes] {out.name} is up to date (settings {key}); nothing to do")
        return out

    pool = load_pool(pool_dir)
    sr = pool.sample_rate
    sizes = split_sizes(n_scenes)
    stats: Counter = Counter()
    used_keys: dict[str, str] = {}          # caption key -> scene id
    with bl.AtomicDir(out) as tmp:
        per_split: dict[str, list] = {}
        for s_index, split in enumerate(SPLITS):
            want = sizes[split]
            recs = []
            if want and len(pool.events[split]) == 0:
                raise RuntimeError(f"pool {pool_dir} split {split} has no usable event clip; "
                                   "use a pool with clips in every split or fewer --scenes")
            rng = np.random.default_rng([seed, s_index])
            in_a_row = 0
            with tqdm(total=want, desc=f"scenes-{split}", unit="scene") as bar:
                while len(recs) < want:
                    layout = draw_scene(pool, split, rng, stats)
                    if layout is None:
                        in_a_row += 1
                        if in_a_row > MAX_CONSECUTIVE_REDRAWS:
                            raise RuntimeError(
                                f"split {split}: scenes keep not fitting in {SCENE_SECONDS} s "
                                f"after {len(recs)} of {want}; the pool's clips are too long")
                        continue
                    # Facts from the metadata exactly as it will be stored.
                    samples, stored, scene_db = mix_scene(layout, sr)
                    facts = scene_facts(stored)
                    phrases = {e["clip"].clip_id: e["clip"].captions for e in layout}
                    fresh: dict[str, str] = {}
                    for _ in range(CAPTION_DRAWS):
                        c = draw_caption(facts, phrases, rng)
                        k = caption_key(c)
                        if k not in used_keys and k not in fresh:
                            fresh[k] = c
                            if len(fresh) == CAPTIONS_PER_SCENE:
                                break
                    if len(fresh) < CAPTIONS_PER_SCENE:
                        stats["redraw_no_fresh_captions"] += 1
                        in_a_row += 1
                        if in_a_row > MAX_CONSECUTIVE_REDRAWS:
                            raise RuntimeError(
                                f"split {split}: only {len(recs)} of {want} scenes could get "
                                f"{CAPTIONS_PER_SCENE} captions no other scene has "
                                f"({MAX_CONSECUTIVE_REDRAWS} draws in a row failed); the pool's "
                                f"split has too few classes/paraphrases for {n_scenes} scenes: "
                                "lower --scenes or use a wider pool")
                        continue
                    in_a_row = 0
                    cid = f"scene-{split}-{len(recs):05d}"
                    for k in fresh:
                        used_keys[k] = cid
                    rel = f"audio/{cid}.flac"
                    (tmp / "audio").mkdir(exist_ok=True)
                    sf.write(str(tmp / rel), samples, sr, format="FLAC", subtype="PCM_16")
                    fg = [e for e in stored if not e["background"]]
                    srcs = {e["clip"].source for e in layout}
                    lics = {e["clip"].license for e in layout}
                    recs.append(ClipRecord(
                        clip_id=cid, audio_path=rel, captions=tuple(fresh.values()),
                        label=fg[0]["class"], group=fg[0]["family"],
                        source="; ".join(sorted(srcs)), license="; ".join(sorted(lics)),
                        duration=SCENE_SECONDS,
                        meta=dict(scene_gain_db=scene_db, n_events=len(fg),
                                  background=facts.background is not None, events=stored)))
                    stats[f"events_{len(fg)}"] += 1
                    bar.update()
            per_split[split] = recs
            write_manifest(recs, tmp / f"{split}.jsonl")

        check_scene_set(per_split, pool)
        lic = (pool_dir / "LICENSE.md")
        pool_license = lic.read_text() if lic.is_file() else "(the pool has no LICENSE.md)\n"
        (tmp / "LICENSE.md").write_text(
            f"# Scenes mixed from {pool_dir.name}\n\n"
            f"Every scene of this set is a mix of clips of the pool `{pool_dir.name}`; each "
            "scene's `meta.events` lists the clips it uses, and its `source`/`license` fields "
            "name their packages and licences. The pool's attribution and licences follow "
            "and apply to the mixes (share-alike material stays under its licence).\n\n"
            + pool_license)
        info = dict(
            name=out.name, builder="data_scripts/build_scenes.py", settings_key=key,
            settings=settings, created=bl.utc_now(), commit=bl.git_commit(),
            build_seconds=round(time.time() - t0, 1),
            pool=dict(directory=str(pool_dir), clips_used=pool.clips,
                      skipped=dict(pool.skipped), sample_rate=sr,
                      event_classes={s: len(pool.events[s]) for s in SPLITS},
                      bed_clips={s: len(pool.beds[s]) for s in SPLITS}),
            counts=dict(scenes=sum(len(v) for v in per_split.values()),
                        captions=len(used_keys),
                        **{f"{s}_scenes": len(per_split[s]) for s in SPLITS}),
            draws=dict(stats),
            audio_bytes=bl.dir_bytes(tmp / "audio") if (tmp / "audio").is_dir() else 0,
        )
        bl.write_json_atomic(tmp / bl.BUILD_INFO, info)
    bl.log(f"[scenes] wrote {out} : {info['counts']} in {info['build_seconds']} s "
           f"({info['audio_bytes'] / 1e6:.1f} MB audio; redraws {dict(stats)})")
    return out


def check_scene_set(per_split: dict[str, list], pool: Pool | None = None) -> None:
    """Assert the set's guarantees: 5 distinct captions per scene, no caption shared by two
    scenes, no source clip or family in two splits (and each scene's clips from its split)."""
    owner: dict[str, str] = {}
    clip_split: dict[str, str] = {}
    fam_split: dict[str, str] = {}
    pool_split = {}
    if pool is not None:
        for s in SPLITS:
            for clips in pool.events[s].values():
                pool_split.update({c.clip_id: s for c in clips})
            pool_split.update({c.clip_id: s for c in pool.beds[s]})
    for split, recs in per_split.items():
        for r in recs:
            keys = [caption_key(c) for c in r.captions]
            assert len(keys) == CAPTIONS_PER_SCENE and len(set(keys)) == len(keys), (
                f"scene {r.clip_id} has {len(set(keys))} distinct captions, not "
                f"{CAPTIONS_PER_SCENE}: {r.captions}")
            for k in keys:
                assert k not in owner, f"caption {k!r} is used by scenes {owner[k]} and {r.clip_id}"
                owner[k] = r.clip_id
            for e in r.meta["events"]:
                for table, name in ((clip_split, e["clip_id"]), (fam_split, e["family"])):
                    other = table.setdefault(name, split)
                    assert other == split, (f"source {name!r} is used in splits {other} and "
                                            f"{split} (scene {r.clip_id})")
                if pool_split:
                    assert pool_split[e["clip_id"]] == split, (
                        f"scene {r.clip_id} of split {split} uses pool clip {e['clip_id']} of "
                        f"the pool's split {pool_split[e['clip_id']]}")


# ----------------------------------------------------------------------------- statistics
def _percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))] if s else 0.0


def _summary(recs: list) -> dict:
    caps = [c for r in recs for c in r.captions]
    words = [len(c.split()) for c in caps]
    events = [e for r in recs for e in r.meta["events"]]
    rel = Counter()
    for r in recs:
        rel.update(scene_facts(r.meta["events"]).relations)
    return dict(
        scenes=len(recs), captions=len(caps), distinct_captions=len({caption_key(c) for c in caps}),
        events_per_scene=dict(sorted(Counter(r.meta["n_events"] for r in recs).items())),
        with_background=sum(bool(r.meta["background"]) for r in recs),
        classes=len({e["class"] for e in events}),
        event_classes=len({e["class"] for e in events if not e["background"]}),
        source_clips=len({e["clip_id"] for e in events}),
        relations=dict(sorted(rel.items())),
        vocabulary=len({w for c in caps for w in caption_key(c).split()}),
        caption_words=dict(mean=round(statistics.fmean(words), 2) if words else 0,
                           p5=_percentile(words, 0.05), p50=_percentile(words, 0.5),
                           p95=_percentile(words, 0.95), max=max(words, default=0)))


def scene_stats(directory: Path) -> dict:
    """Statistics of a built scene set, overall and per split (reads the manifests only).

    ``distinct_captions`` equals ``captions`` for a valid set.
    """
    from mltm.data.manifest import read_manifest

    directory = Path(directory)
    per = {s: read_manifest(directory / f"{s}.jsonl") for s in SPLITS
           if (directory / f"{s}.jsonl").is_file()}
    allr = [r for v in per.values() for r in v]
    return dict(**_summary(allr), splits={s: _summary(v) for s, v in per.items()})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="ci")
    ap.add_argument("--pool", type=Path, help="pool dataset directory (default by --size)")
    ap.add_argument("--out", type=Path, help="output directory (default $MLTM_DATA/<name>)")
    ap.add_argument("--scenes", type=int,
                    help=f"number of scenes (ci {CI_SCENES}, full {FULL_SCENES})")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = ap.parse_args(argv)
    try:
        build(args.size, args.out, pool_dir=args.pool, scenes=args.scenes, seed=args.seed,
              force=args.force)
    except (FileNotFoundError, RuntimeError, ValueError, AssertionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

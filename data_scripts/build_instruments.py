"""Build an instrument caption set rendered from a General MIDI SoundFont (Recipe C).

Each clip is a short phrase played by one GM instrument, rendered with ``tinysoundfont`` at
32 kHz mono (4 s, 16-bit FLAC). Its captions are **compositional**: they name the instrument,
its GM family, the register, the melodic contour, the loudness, the tempo and the
articulation, in five paraphrases with different word orders, for example
"a violin playing a high rising scale loudly, fast and staccato".

Attributes of clip ``i`` are drawn from ``numpy.random.default_rng([seed, i])``, so a build
with more clips extends a smaller one (the first N clips are the same):

* instrument: one of the 116 melodic GM programs of ``rules/gm_instruments.tsv`` (the
  "sound effects" family and four duplicate names are left out), uniformly;
* register: low / middle / high = the lower/middle/upper third of the instrument's playing
  range (minus an octave for the phrase), so "high" means high *for that instrument*;
* contour: rising (major scale up an octave), falling (down an octave), arpeggio (broken
  major chord up, twice) or repeated (one pitch);
* loudness: soft / moderate / loud (MIDI velocity 45 / 80 / 115, +-5);
* tempo: slow (8 notes, 0.42 s apart) or fast (the 8-note pattern twice, 0.2 s apart);
* articulation: staccato (notes held 35 % of the gap) or legato (95 %);
* the starting pitch within the register and +-10 ms timing jitter (not captioned).

Renders whose RMS is below 1e-4 (notes outside the samples of a preset) are dropped and
counted. **Split by held-out attribute combinations**: the combination
(instrument, register, contour, loudness, tempo, articulation) is hashed with the seed, and
15 % of combinations go to test, 10 % to val, the rest to train. Captions are a function of
the combination, so no test caption string occurs in train, while every single attribute
value of a test clip is seen in training (compositional generalisation). Several clips may
share a combination (different start pitch and jitter); they share a split. The manifest's
``group`` field holds the combination.

SoundFonts: ``--size ci`` (1,200 phrases) and ``--size mini`` (its first 256 phrases, the
retrieval chapter's CI-size set) use ``timgm6mb-soundfont`` (TimGM6mb.sf2, 6 MB, GPL-2),
``--size full`` ``fluid-soundfont-gm`` (FluidR3_GM.sf2, 148 MB, MIT).

Usage:
``python data_scripts/build_instruments.py --size {ci,mini,full} [--num-clips N] [--out DIR]``
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data_scripts import buildlib as bl  # noqa: E402
from data_scripts.debian import copyright_text, data_root, fetch_deb, unpack  # noqa: E402

BUILDER_VERSION = 2  # 2: flush voices between clips
GM_TABLE = Path(__file__).resolve().parent / "rules" / "gm_instruments.tsv"
CLIP_SECONDS = 4.0

SIZES = {
    "ci": dict(package="timgm6mb-soundfont", sf2="TimGM6mb.sf2", num_clips=1200,
               name="instruments-ci", license="GPL-2", upstream="https://sourceforge.net/projects/timidity/"),
    # the first 256 phrases of "ci" (same draws): the retrieval chapter's CI-size second caption
    # set, small enough to encode in float64 within CI's time budget (instruments-ci: 4,764 s of
    # audio, about 7 minutes on 2 cores)
    "mini": dict(package="timgm6mb-soundfont", sf2="TimGM6mb.sf2", num_clips=256,
                 name="instruments-mini", license="GPL-2",
                 upstream="https://sourceforge.net/projects/timidity/"),
    "full": dict(package="fluid-soundfont-gm", sf2="FluidR3_GM.sf2", num_clips=20000,
                 name="instruments", license="MIT", upstream="http://www.hammersound.net/"),
}
SPLIT_SHARE = (("test", 0.15), ("val", 0.10), ("train", 0.75))

REGISTERS = ("low", "middle", "high")
CONTOURS = ("rising", "falling", "arpeggio", "repeated")
LOUDNESS = {"soft": 45, "moderate": 80, "loud": 115}
TEMPI = {"slow": (8, 0.42), "fast": (16, 0.20)}     # notes, seconds between onsets
ARTICULATIONS = {"staccato": 0.35, "legato": 0.95}  # held fraction of the gap
MAJOR = (0, 2, 4, 5, 7, 9, 11, 12)
ARPEGGIO = (0, 4, 7, 12, 0, 4, 7, 12)


@dataclass(frozen=True)
class Instrument:
    program: int
    name: str
    family: str
    lo: int
    hi: int


def load_gm_table(path: Path = GM_TABLE) -> list[Instrument]:
    out = []
    for n, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        c = line.split("\t")
        if len(c) != 6:
            raise ValueError(f"{path}:{n}: expected 6 tab-separated columns, got {len(c)}")
        prog, name, fam, lo, hi, use = c
        if use.strip() == "1":
            lo_i, hi_i = int(lo), int(hi)
            if hi_i - lo_i < 15:
                raise ValueError(f"{path}:{n}: range {lo}-{hi} of {name!r} is shorter than the "
                                 "octave a phrase needs plus three registers")
            out.append(Instrument(int(prog), name, fam, lo_i, hi_i))
    return out


@dataclass(frozen=True)
class Phrase:
    instrument: Instrument
    register: str
    contour: str
    loudness: str
    tempo: str
    articulation: str
    base: int                 # lowest pitch of the phrase
    velocity: int
    jitter: tuple[float, ...]

    @property
    def combination(self) -> str:
        return "|".join([self.instrument.name, self.register, self.contour, self.loudness,
                         self.tempo, self.articulation])

    def notes(self) -> list[tuple[float, float, int, int]]:
        """(onset s, offset s, key, velocity) of every note."""
        n_notes, gap = TEMPI[self.tempo]
        if self.contour == "rising":
            steps = MAJOR
        elif self.contour == "falling":
            steps = tuple(reversed(MAJOR))
        elif self.contour == "arpeggio":
            steps = ARPEGGIO
        else:
            steps = (0,) * 8
        base = self.base + (6 if self.contour == "repeated" else 0)  # centre repeated notes
        seq = (steps * (n_notes // len(steps) + 1))[:n_notes]
        hold = ARTICULATIONS[self.articulation] * gap
        out = []
        for k, s in enumerate(seq):
            t = 0.05 + k * gap + self.jitter[k]
            out.append((t, t + hold, base + s, self.velocity))
        return out


def draw_phrase(instruments: list[Instrument], seed: int, i: int) -> Phrase:
    rng = np.random.default_rng([seed, i])
    inst = instruments[int(rng.integers(len(instruments)))]
    register = REGISTERS[int(rng.integers(3))]
    contour = CONTOURS[int(rng.integers(4))]
    loud = list(LOUDNESS)[int(rng.integers(3))]
    tempo = list(TEMPI)[int(rng.integers(2))]
    art = list(ARTICULATIONS)[int(rng.integers(2))]
    top = inst.hi - 12
    edges = np.linspace(inst.lo, top, 4)
    r = REGISTERS.index(register)
    base = int(rng.integers(int(round(edges[r])),
                            max(int(round(edges[r + 1])), int(round(edges[r]))) + 1))
    vel = int(np.clip(LOUDNESS[loud] + rng.integers(-5, 6), 1, 127))
    jitter = tuple(float(x) for x in rng.uniform(-0.01, 0.01, size=16))
    return Phrase(inst, register, contour, loud, tempo, art, base, vel, jitter)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def captions(p: Phrase) -> tuple[str, ...]:
    """Five paraphrases describing every captioned attribute of *p*."""
    inst, fam = p.instrument.name, p.instrument.family
    adv = {"soft": "softly", "moderate": "at a moderate volume", "loud": "loudly"}[p.loudness]
    adj = {"soft": "quiet", "moderate": "moderately loud", "loud": "loud"}[p.loudness]
    shape = {"rising": "rising scale", "falling": "falling scale", "arpeggio": "arpeggio",
             "repeated": "repeated note"}[p.contour]
    verb = {"rising": "climb upwards", "falling": "descend step by step",
            "arpeggio": "outline a broken chord", "repeated": "repeat a single pitch"}[p.contour]
    art = {"staccato": "short detached", "legato": "smooth connected"}[p.articulation]
    tempo_adv = {"slow": "slowly", "fast": "quickly"}[p.tempo]
    fam_txt = (f"{fam} instrument" if fam not in ("synth lead", "synth pad", "synth effects")
               else fam)
    return (
        f"{_article(inst)} {inst} playing {_article(p.register)} {p.register} {shape} {adv}, "
        f"{p.tempo} and {p.articulation}",
        f"{_article(adj)} {adj} {p.tempo} {shape} on {_article(inst)} {inst} in the {p.register} "
        f"register, played {p.articulation}",
        f"{art} {p.register} notes that {verb}, played {tempo_adv} and {adv} by "
        f"{_article(inst)} {inst}",
        f"{_article(fam_txt)} {fam_txt}, {_article(inst)} {inst}, plays {_article(p.tempo)} "
        f"{p.tempo} {p.articulation} {shape} in a {p.register} range {adv}",
        f"{p.tempo} {p.articulation} {inst} notes {verb} in the {p.register} register, "
        f"{adj}",
    )


def split_of(p: Phrase, seed: int) -> str:
    u = bl.stable_hash(seed, "split", p.combination) / float(16 ** 15)
    acc = 0.0
    for name, share in SPLIT_SHARE:
        acc += share
        if u < acc:
            return name
    return "train"


class Renderer:
    """Render phrases with tinysoundfont (one synth, one loaded SoundFont, reused)."""

    def __init__(self, sf2: Path, sample_rate: int = bl.SAMPLE_RATE, gain_db: float = -6.0):
        import tinysoundfont

        self.sr = sample_rate
        self.synth = tinysoundfont.Synth(gain=gain_db, samplerate=sample_rate)
        self.sfid = self.synth.sfload(str(sf2))

    def render(self, p: Phrase, seconds: float = CLIP_SECONDS) -> np.ndarray:
        s = self.synth
        # Silence the previous clip and render its ~10 ms fade-out into the void, so no
        # sound of one clip leaks into the next (the render is then a pure function of p).
        s.sounds_off(0)
        s.control_change(0, 121, 0)  # reset all controllers
        s.generate_simple(int(0.1 * self.sr))
        s.program_select(0, self.sfid, 0, p.instrument.program)
        events = []
        for on, off, key, vel in p.notes():
            events.append((on, 1, key, vel))
            events.append((off, 0, key, 0))
        events.sort(key=lambda e: (e[0], e[1]))
        total = int(round(seconds * self.sr))
        out = np.zeros(total, dtype=np.float32)
        pos = 0

        def advance(to: int) -> None:
            nonlocal pos
            to = min(max(to, pos), total)
            if to > pos:
                buf = s.generate_simple(to - pos)
                stereo = np.frombuffer(buf, dtype=np.float32).reshape(-1, 2)
                out[pos:to] = stereo.mean(axis=1)
                pos = to

        for t, kind, key, vel in events:
            advance(int(round(t * self.sr)))
            if not 0 <= key <= 127:
                continue
            if kind == 1:
                s.noteon(0, key, vel)
            else:
                s.noteoff(0, key)
        advance(total)
        s.sounds_off(0)
        return out


def build(size: str, out: Path | None = None, *, num_clips: int | None = None, seed: int = 0,
          force: bool = False, sf2: Path | None = None) -> Path:
    from tqdm import tqdm

    from mltm.data.manifest import ClipRecord, write_manifest

    cfg = dict(SIZES[size])
    if num_clips is not None:
        if num_clips < 1:
            raise ValueError(f"--num-clips must be at least 1, got {num_clips}")
        cfg["num_clips"] = num_clips
    out = Path(out) if out else data_root() / cfg["name"]
    t0 = time.time()
    instruments = load_gm_table()
    if sf2 is None:
        pkg = fetch_deb(cfg["package"])
        tree = unpack(pkg, ["*.sf2"], "sf2")
        found = sorted(tree.rglob(cfg["sf2"]))
        if not found:
            raise FileNotFoundError(f"{cfg['sf2']} not found in {pkg.deb.name}")
        sf2, pkg_info, copyright_ = found[0], pkg.as_dict(), copyright_text(tree, pkg.name)
    else:
        pkg_info = {"package": "(local file)", "version": bl.sha256_file(sf2)[:16]}
        copyright_ = f"(local SoundFont {Path(sf2).name}; licence as given by its author)"
    settings = dict(builder="instruments", version=BUILDER_VERSION, size=size, seed=seed,
                    num_clips=cfg["num_clips"], sample_rate=bl.SAMPLE_RATE,
                    clip_seconds=CLIP_SECONDS, soundfont=pkg_info.get("version"),
                    package=pkg_info.get("package"),
                    gm_table_sha256=hashlib.sha256(GM_TABLE.read_bytes()).hexdigest())
    key = bl.settings_key(settings)
    if not force and bl.up_to_date(out, key):
        bl.log(f"[instruments] {out.name} is up to date (settings {key}); nothing to do")
        return out

    renderer = Renderer(sf2)
    stats: Counter = Counter()
    per_split: dict[str, list] = {"train": [], "val": [], "test": []}
    with bl.AtomicDir(out) as tmp:
        for i in tqdm(range(cfg["num_clips"]), desc=f"instruments-{size}: render", unit="clip",
                      mininterval=1.0):
            p = draw_phrase(instruments, seed, i)
            wave = renderer.render(p)
            level = bl.rms(wave)
            if not np.isfinite(level) or level < bl.SILENCE_RMS:
                stats["silent_renders"] += 1
                continue
            cid = f"inst-{i:06d}"
            rel = f"audio/{cid[-3:]}/{cid}.flac"   # 1000 subdirectories at most
            bl.write_flac(tmp / rel, wave)
            per_split[split_of(p, seed)].append(ClipRecord(
                clip_id=cid, audio_path=rel, captions=captions(p), label=p.instrument.name,
                group=p.combination, source=f"{pkg_info['package']} {pkg_info['version']}",
                license=cfg["license"], duration=CLIP_SECONDS))
        for split, recs in per_split.items():
            write_manifest(recs, tmp / f"{split}.jsonl")
        (tmp / "LICENSE.md").write_text(bl.license_markdown(
            f"Instrument captions ({cfg['name']})",
            f"Phrases synthesised by mltm's builder from the General MIDI SoundFont "
            f"{cfg['sf2']} ({cfg['package']}). The rendered audio derives from the SoundFont's "
            f"samples; the SoundFont's licence ({cfg['license']}) applies. Captions are "
            "generated from the rendering parameters.",
            [dict(pkg_info, license=cfg["license"], upstream=cfg["upstream"])],
            {str(pkg_info["package"]): copyright_}))
        n = sum(len(v) for v in per_split.values())
        combos = {r.group for v in per_split.values() for r in v}
        info = dict(
            name=cfg["name"], builder="data_scripts/build_instruments.py", settings_key=key,
            settings=settings, created=bl.utc_now(), commit=bl.git_commit(),
            build_seconds=round(time.time() - t0, 1), packages=[pkg_info],
            counts=dict(clips=n, classes=len({r.label for v in per_split.values() for r in v}),
                        families=len(combos), captions=5 * n,
                        **{f"{s}_clips": len(v) for s, v in per_split.items()}),
            total_minutes=round(n * CLIP_SECONDS / 60, 2),
            filters=dict(requested=cfg["num_clips"], **stats),
            audio_bytes=bl.dir_bytes(tmp / "audio"),
        )
        bl.write_json_atomic(tmp / bl.BUILD_INFO, info)
    bl.log(f"[instruments] wrote {out} : {info['counts']} in {info['build_seconds']} s")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="ci")
    ap.add_argument("--num-clips", type=int, help="clips to render (before dropping silent ones)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--sf2", type=Path, help="use this SoundFont instead of the Debian package")
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args(argv)
    build(args.size, args.out, num_clips=args.num_clips, seed=args.seed, force=args.force,
          sf2=args.sf2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

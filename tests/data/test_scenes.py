"""Tests of ``data_scripts/build_scenes.py`` on a synthetic pool of tone bursts (no network).

Each pool class is a pure tone at its own frequency, so a scene's audio can be checked against
its stored event list: the energy at a class's frequency must start at the stored onset and
have the stored level.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from data_scripts import build_scenes as bs
from data_scripts import buildlib as bl
from mltm.data.manifest import ClipRecord, read_manifest, validate_manifest, write_manifest

SR = 16000
#: class -> tone frequency (Hz); 300 Hz apart so Hann-windowed projections do not leak.
FREQS = {f"tone{k:02d}": 500 + 300 * k for k in range(12)}
BED_FREQ = 150
#: Event classes present per split (val and test hold fewer, like a real pool).
SPLIT_CLASSES = {"train": 12, "val": 8, "test": 10}
#: Caption words that claim a relation/modifier, and the fact each one requires.
SEQ_WORDS = (" then ", "followed by", " after ", "afterwards", " before ", " later ", "next,")
OVERLAP_WORDS = ("at the same time", "simultaneously", "overlapping with", "together",
                 "along with")
BED_FREE_OVERLAP_WORDS = (" while ", " as ")   # also used by background phrases
TWICE_WORDS = ("twice", "two times", "once more", "repeated once")
REPEAT_WORDS = ("repeatedly", "over and over", "several times", "again and again",
                "three times")
FAINT_WORDS = ("faint", "barely audible", "very quietly")
LOUD_WORDS = ("loudly", "very loud", "at high volume", "loud and clear")
START_WORDS = ("at the start", "at the beginning", "to begin with", "at first")
END_WORDS = ("at the end", "near the end", "at the very end", "close to the end", "to finish")


def _tone(freq: float, seconds: float, amp: float) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    x = amp * np.sin(2 * np.pi * freq * t)
    n = int(0.005 * SR)                              # 5 ms raised-cosine edges
    ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(n) / n)
    x[:n] *= ramp
    x[-n:] *= ramp[::-1]
    return x.astype(np.float32)


def make_pool(root: Path, *, broken: bool = True, classes: dict[str, int] | None = None) -> Path:
    """A pool in the DebSFX format: tones per class, two families per class and split."""
    root.mkdir(parents=True)
    (root / "audio").mkdir()
    rng = np.random.default_rng(123)
    names = list(FREQS)
    for split, n_cls in (classes or SPLIT_CLASSES).items():
        recs = []
        for cls in names[:n_cls]:
            f = FREQS[cls]
            caps = (f"a steady beep at {f} hertz", f"a pure {f} hertz tone",
                    f"a sine whistle of {f} hertz", f"a {f} hertz hum")
            for fam in range(2):
                for take in range(2):
                    cid = f"{split}-{cls}-f{fam}-{take}"
                    sf.write(str(root / "audio" / f"{cid}.flac"),
                             _tone(f, float(rng.uniform(0.4, 1.4)), float(rng.uniform(0.1, 0.5))),
                             SR, format="FLAC", subtype="PCM_16")
                    recs.append(ClipRecord(cid, f"audio/{cid}.flac", caps, label=cls,
                                           group=f"{split}:{cls}:f{fam}", source="synth 1.0",
                                           license="CC0", duration=None))
        bed = f"{split}-bed"
        sf.write(str(root / "audio" / f"{bed}.flac"), _tone(BED_FREQ, 10.0, 0.2), SR,
                 format="FLAC", subtype="PCM_16")
        recs.append(ClipRecord(bed, f"audio/{bed}.flac",
                               ("rain falling steadily", "the patter of rain", "a rainy day"),
                               label="rain", group=f"{split}:rain", source="synth 1.0",
                               license="CC0"))
        if broken and split == "train":
            (root / "audio" / "broken.flac").write_text("this is not audio")
            recs.append(ClipRecord("broken", "audio/broken.flac", ("a broken clip",),
                                   label="tone00", group="train:tone00:f0"))
        write_manifest(recs, root / f"{split}.jsonl")
    (root / "LICENSE.md").write_text("# Synthetic pool licence\nCC0 tones.\n")
    bl.write_json_atomic(root / bl.BUILD_INFO, {"settings": {"sample_rate": SR},
                                                "settings_key": "synthetic"})
    return root


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> Path:
    return make_pool(tmp_path_factory.mktemp("pool") / "pool")


@pytest.fixture(scope="module")
def scenes(pool, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("scenes") / "scenes"
    bs.build("ci", out, pool_dir=pool, scenes=300, seed=0)
    return out


def _records(d: Path) -> dict[str, list[ClipRecord]]:
    return {s: read_manifest(d / f"{s}.jsonl") for s in bs.SPLITS}


def _units(events: list[dict]) -> list[dict]:
    """Units recomputed from the raw stored events (independently of scene_facts)."""
    by = defaultdict(list)
    for e in events:
        if not e["background"]:
            by[e["unit"]].append(e)
    out = []
    for u in sorted(by):
        evs = by[u]
        out.append(dict(cls=evs[0]["class"], count=len(evs),
                        onset=min(e["onset_s"] for e in evs),
                        end=max(e["onset_s"] + e["duration_s"] for e in evs),
                        level=float(np.mean([e["level_db"] for e in evs]))))
    return out


# ----------------------------------------------------------------------------- captions
def test_five_distinct_captions_per_scene_and_none_shared(scenes):
    recs = _records(scenes)
    assert {s: len(v) for s, v in recs.items()} == {"train": 210, "val": 30, "test": 60}
    owner = {}
    for r in (r for v in recs.values() for r in v):
        keys = [bs.caption_key(c) for c in r.captions]
        assert len(keys) == 5 and len(set(keys)) == 5, r.captions
        for k in keys:
            assert k not in owner, f"{k!r} in {owner.get(k)} and {r.clip_id}"
            owner[k] = r.clip_id
    stats = bs.scene_stats(scenes)
    assert stats["scenes"] == 300 and stats["captions"] == stats["distinct_captions"] == 1500
    assert set(stats["events_per_scene"]) == {1, 2, 3, 4}
    assert stats["splits"]["test"]["captions"] == 300
    assert stats["caption_words"]["mean"] > 6 and stats["vocabulary"] > 50
    assert {"seq", "overlap"} <= set(stats["relations"])


def test_captions_are_truthful_to_the_stored_events(scenes):
    seen = defaultdict(int)
    for r in (r for v in _records(scenes).values() for r in v):
        ev = r.meta["events"]
        units = _units(ev)
        has_bed = any(e["background"] for e in ev)
        rel = []
        for a, b in zip(units, units[1:]):
            if b["onset"] >= a["end"] + bs.MIN_GAP_S:
                rel.append("seq")
            elif min(a["end"], b["end"]) - max(a["onset"], b["onset"]) >= bs.MIN_OVERLAP_S:
                rel.append("overlap")
            else:
                rel.append("near")
        facts = bs.scene_facts(ev)
        assert list(facts.relations) == rel
        assert len({u["cls"] for u in units}) == len(units)   # units have distinct classes
        for c in r.captions:
            # every unit's class is named by one of its paraphrases (the frequency)
            for u in units:
                assert str(FREQS[u["cls"]]) in c
            assert ("rain" in c) == has_bed
            padded = f" {c} "
            if any(w in padded for w in SEQ_WORDS):
                seen["seq"] += 1
                assert "seq" in rel, (c, rel)
            if any(w in c for w in OVERLAP_WORDS) or (
                    not has_bed and any(w in padded for w in BED_FREE_OVERLAP_WORDS)):
                seen["overlap"] += 1
                assert "overlap" in rel, (c, rel)
            counts = [u["count"] for u in units]
            if any(w in c for w in TWICE_WORDS):
                seen["twice"] += 1
                assert 2 in counts, (c, counts)
            if any(w in c for w in REPEAT_WORDS):
                seen["repeated"] += 1
                assert max(counts) >= 3, (c, counts)
            levels = [u["level"] for u in units]
            if any(w in c for w in FAINT_WORDS):
                seen["faint"] += 1
                assert any(lv <= min(levels[:i] + levels[i + 1:]) - bs.FAINT_DB
                           for i, lv in enumerate(levels)), (c, levels)
            if any(w in c for w in LOUD_WORDS):
                seen["loud"] += 1
                assert any(lv >= max(levels[:i] + levels[i + 1:]) + bs.LOUD_DB
                           for i, lv in enumerate(levels)), (c, levels)
            if any(w in c for w in START_WORDS):
                seen["start"] += 1
                assert units[0]["onset"] <= bs.START_S
            if any(w in c for w in END_WORDS):
                seen["end"] += 1
                assert units[-1]["end"] >= bs.SCENE_SECONDS - bs.END_S
    # every kind of claim was actually exercised
    assert set(seen) == {"seq", "overlap", "twice", "repeated", "faint", "loud", "start", "end"}


def test_too_small_a_pool_fails_with_a_clear_message(tmp_path, monkeypatch):
    pool = make_pool(tmp_path / "tiny", broken=False,
                     classes={"train": 1, "val": 1, "test": 1})
    monkeypatch.setattr(bs, "MAX_CONSECUTIVE_REDRAWS", 50)
    # one class, no beds, no repeats: a few dozen one-event captions exist in all
    monkeypatch.setattr(bs, "BACKGROUND_PROB", 0.0)
    monkeypatch.setattr(bs, "REPEAT_PROB", 0.0)
    with pytest.raises(RuntimeError, match=r"split train: only \d+ of \d+ scenes could get 5 "
                                           r"captions no other scene has.*lower --scenes"):
        bs.build("ci", tmp_path / "out", pool_dir=pool, scenes=2000)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- audio
def _amplitude(x: np.ndarray, freq: float, start: float, stop: float) -> float:
    """Amplitude of the component at ``freq`` in x[start:stop] (Hann-windowed projection)."""
    a, b = int(round(start * SR)), int(round(stop * SR))
    seg = x[a:b]
    w = np.hanning(seg.size)
    ph = np.exp(-2j * np.pi * freq * np.arange(a, b) / SR)
    return float(2 * abs(np.sum(w * seg * ph)) / np.sum(w))


def test_mix_puts_each_tone_at_its_onset_and_level(scenes):
    checked = 0
    for r in _records(scenes)["test"]:
        x, sr = sf.read(str(scenes / r.audio_path), dtype="float64")
        assert sr == SR and x.shape == (int(bs.SCENE_SECONDS * SR),)
        assert np.max(np.abs(x)) <= 10 ** (bs.PEAK_CEILING_DBFS / 20) + 1e-4
        events = r.meta["events"]
        for e in events:
            f = BED_FREQ if e["background"] else FREQS[e["class"]]
            on, dur = e["onset_s"], e["duration_s"]
            # level: the tone's RMS over the middle of the event is the stored level
            amp = _amplitude(x, f, on + 0.1 * dur, on + 0.9 * dur)
            measured_db = 20 * np.log10(amp / np.sqrt(2))
            assert measured_db == pytest.approx(e["level_db"], abs=1.0), (r.clip_id, e)
            if e["background"]:
                continue
            # onset: the frequency is present just after the onset and absent just before
            expected = np.sqrt(2) * 10 ** (e["level_db"] / 20)
            after = _amplitude(x, f, on + 0.01, on + 0.06)
            assert after > 0.5 * expected, (r.clip_id, e)
            same = [o for o in events if o["class"] == e["class"] and o is not e]
            if on >= 0.08 and not any(o["onset_s"] + o["duration_s"] > on - 0.08
                                      and o["onset_s"] < on for o in same):
                before = _amplitude(x, f, on - 0.07, on - 0.02)
                assert before < 0.1 * expected, (r.clip_id, e)
            checked += 1
    assert checked > 100


def test_gains_are_on_the_grid_and_scene_loudness_is_normalised(scenes):
    for r in _records(scenes)["val"]:
        for e in r.meta["events"]:
            assert round(e["gain_db"] * 100) == pytest.approx(e["gain_db"] * 100, abs=1e-6)
        x, _ = sf.read(str(scenes / r.audio_path), dtype="float64")
        rms_db = 20 * np.log10(np.sqrt(np.mean(x * x)))
        # at the target RMS unless the peak ceiling lowered it
        assert rms_db <= bs.TARGET_RMS_DBFS + 0.05
        peak_db = 20 * np.log10(np.max(np.abs(x)))
        assert rms_db >= bs.TARGET_RMS_DBFS - 0.05 or peak_db >= bs.PEAK_CEILING_DBFS - 0.05


# ----------------------------------------------------------------------------- splits
def test_splits_use_only_their_pool_split(scenes, pool):
    pool_split = {r.clip_id: s for s in bs.SPLITS for r in read_manifest(pool / f"{s}.jsonl")}
    pool_family = {r.clip_id: r.group for s in bs.SPLITS
                   for r in read_manifest(pool / f"{s}.jsonl")}
    fams = defaultdict(set)
    for split, recs in _records(scenes).items():
        for r in recs:
            for e in r.meta["events"]:
                assert pool_split[e["clip_id"]] == split
                assert pool_family[e["clip_id"]] == e["family"]
                fams[split].add(e["family"])
    assert not fams["train"] & fams["test"] and not fams["train"] & fams["val"]
    assert not fams["val"] & fams["test"]


def test_check_scene_set_names_the_offending_scenes(scenes):
    recs = _records(scenes)
    moved = {"train": recs["train"], "val": recs["val"], "test": recs["test"] + [recs["train"][0]]}
    with pytest.raises(AssertionError, match="scene-train-00000"):
        bs.check_scene_set(moved)
    twin = ClipRecord(**{**recs["test"][0].__dict__, "clip_id": "twin"})
    with pytest.raises(AssertionError, match=r"used by scenes scene-test-00000 and twin"):
        bs.check_scene_set({"test": [recs["test"][0], twin]})


# ----------------------------------------------------------------------------- build
def test_manifests_validate_and_carry_license_and_skips(scenes):
    for s in bs.SPLITS:
        assert validate_manifest(scenes / f"{s}.jsonl") == []
    assert "Synthetic pool licence" in (scenes / "LICENSE.md").read_text()
    info = json.loads((scenes / bl.BUILD_INFO).read_text())
    assert sum(info["pool"]["skipped"].values()) == 1          # the broken clip
    assert info["counts"]["scenes"] == 300 and info["counts"]["captions"] == 1500
    r = read_manifest(scenes / "test.jsonl")[0]
    fg = [e for e in r.meta["events"] if not e["background"]]
    assert r.label == fg[0]["class"] and r.group == fg[0]["family"] and r.duration == 10.0
    assert set(fg[0]) == {"class", "clip_id", "family", "onset_s", "duration_s", "gain_db",
                          "level_db", "background", "unit", "cut"}


def test_second_build_does_nothing_and_pool_change_rebuilds(pool, tmp_path, monkeypatch):
    out = tmp_path / "s"
    bs.build("ci", out, pool_dir=pool, scenes=40)
    stamp = (out / bl.BUILD_INFO).stat().st_mtime_ns
    monkeypatch.setattr(bs, "load_pool", lambda *a, **k: pytest.fail("must not rebuild"))
    bs.build("ci", out, pool_dir=pool, scenes=40)   # no pool read (above), no file written
    assert (out / bl.BUILD_INFO).stat().st_mtime_ns == stamp
    with pytest.raises(BaseException, match="must not rebuild"):
        bs.build("ci", out, pool_dir=pool, scenes=41)   # other settings: rebuild


def test_builds_are_bit_identical_and_seeded(pool, tmp_path):
    a = bs.build("ci", tmp_path / "a", pool_dir=pool, scenes=40, seed=3)
    b = bs.build("ci", tmp_path / "b", pool_dir=pool, scenes=40, seed=3)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file()
                   and p.name != bl.BUILD_INFO)
    assert len(files) > 40
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    c = bs.build("ci", tmp_path / "c", pool_dir=pool, scenes=40, seed=4)
    assert (a / "test.jsonl").read_bytes() != (c / "test.jsonl").read_bytes()


def test_missing_pool_is_a_one_line_error(tmp_path, capsys):
    assert bs.main(["--pool", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: pool") and "BUILD_INFO.json" in err and "\n" not in err

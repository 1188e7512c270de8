"""Tests of the stand-in dataset builders in ``data_scripts/``.

Unit tests run anywhere. The tests marked with the ``built_dataset`` fixture check the CI
builds made by ``bash data_scripts/build_all.sh ci`` (skipped when they are absent, failing
instead when ``MLTM_REQUIRE_DATA=1``).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from data_scripts import build_debsfx as dsfx
from data_scripts import build_instruments as inst
from data_scripts import build_tuxpaint_zeroshot as tux
from data_scripts import buildlib as bl
from data_scripts.debian import Package
from mltm.data.manifest import read_manifest, validate_manifest

CI_NAMES = ("debsfx-ci", "instruments-ci", "tuxpaint-zs")


# ----------------------------------------------------------------------------- rules table
@pytest.fixture(scope="module")
def rules():
    return dsfx.load_rules()


@pytest.mark.parametrize("source, relpath, label, caption_part, family", [
    ("0ad", "actor/singlesteps/fs_gravel_03.ogg", "footsteps", "footsteps on gravel",
     "0ad:footsteps:fs_gravel"),
    ("0ad", "actor/singlesteps/fs_wood_01.ogg", "footsteps", "footsteps on wooden planks",
     "0ad:footsteps:fs_wood"),
    ("0ad", "actor/human/movement/Footsteps/Foorstep_Sand_Running.ogg", "footsteps",
     "someone running on sand", "0ad:footsteps:foorstep_sand_running"),
    ("0ad", "attack/impact/arrow_metal_05.ogg", "arrow_impact", "an arrow hitting metal",
     "0ad:arrow_impact:arrow_metal"),
    ("0ad", "resource/mining/mine_stone_07.ogg", "mining", "a pickaxe striking stone",
     "0ad:mining:mine_stone"),
    ("0ad", "resource/lumbering/lumber_treeexpire_2.ogg", "tree_falling",
     "a tree falling and crashing", "0ad:tree_falling:lumber_treeexpire"),
    ("0ad", "voice/greek/civ/civ_female_attack_1.ogg", "speech_female", "a woman speaking",
     "0ad:speech_female:greek/civ/civ_female"),
    ("0ad", "ambient/water/river_raging_21.ogg", "flowing_water", "a raging river flowing",
     "0ad:flowing_water:river_raging"),
    ("wesnoth", "data/core/sounds/bow-puny-fire-miss.ogg", "bow_shot", "the twang of a bowstring",
     "wesnoth:bow_shot:bow"),
    ("wesnoth", "data/core/sounds/human-female-die-2.ogg", "woman_scream", "a female scream",
     "wesnoth:woman_scream:human"),
    ("megaglest", "tilesets/forest/sounds/rain.ogg", "rain", "the sound of rainfall",
     "megaglest:rain:rain"),
    ("megaglest", "techs/megapack/factions/norsemen/units/valkyrie/sounds/valkyrie_ack3.wav",
     "speech_female", "a female voice speaking", "megaglest:speech_female:valkyrie"),
    ("widelands", "sound/animals/coyote_01.ogg", "wolf_howl", "a coyote howling",
     "widelands:wolf_howl:coyote"),
])
def test_rules_map_known_paths(rules, source, relpath, label, caption_part, family):
    rule, groups = rules.match(source, relpath)
    assert rule.label == label
    caps = rules.captions_for(rule, groups)
    assert 3 <= len(caps) <= 5
    assert caption_part in caps
    assert all("{" not in c for c in caps)
    assert dsfx.family_of(source, relpath, label, groups) == family


@pytest.mark.parametrize("source, relpath", [
    ("wesnoth", "sounds/button.wav"),               # UI
    ("0ad", "interface/alarm/alarmvictory.ogg"),    # UI voice
    ("megaglest", "data/core/menu/music/menu_music.ogg"),
])
def test_rules_drop_non_acoustic(rules, source, relpath):
    rule, _ = rules.match(source, relpath)
    assert rule.label is None


def test_rules_unmatched_is_none(rules):
    assert rules.match("0ad", "actor/ship/ship_move_01.ogg") is None
    assert rules.match("wesnoth", "data/core/sounds/magic-holy-1.ogg") is None


def test_every_rule_fills_its_slots(rules):
    # Each captioned rule has 3-5 paraphrases and only uses slots its regex captures.
    for r in rules.rules:
        if r.label is None:
            continue
        assert 3 <= len(r.captions) <= 5, r.line
        slots = set(re.findall(r"{(\w+)}", " ".join(r.captions)))
        assert slots <= set(r.pattern.groupindex), r.line


@pytest.mark.parametrize("row, message", [
    ("0ad\tfoo\tcls", "expected 4 tab-separated columns"),
    ("doom\tfoo\tcls\ta | b | c", "unknown source 'doom'"),
    ("0ad\tfoo(\tcls\ta | b | c", "bad regex"),
    ("0ad\tfoo\tcls\tonly one | two", "has 2 captions"),
    ("0ad\tfoo\tcls\ta {surface} | b | c", "slot(s) ['surface']"),
])
def test_rules_reject_malformed_rows(tmp_path, row, message):
    p = tmp_path / "rules.tsv"
    p.write_text("# header\n" + row + "\n")
    with pytest.raises(ValueError, match=re.escape(message)) as e:
        dsfx.load_rules(p)
    assert f"{p}:2" in str(e.value)


# ----------------------------------------------------------------------------- split
def test_split_families_keeps_families_whole_and_fills_test():
    fams = {"dog": {f"f{i}": 3 + i for i in range(10)}, "cat": {"a": 5, "b": 1},
            "owl": {"only": 4}}
    assign = dsfx.split_families(fams, seed=0)
    assert set(assign) == {f for v in fams.values() for f in v}
    assert assign["only"] == "train"                     # one family: train only
    assert {assign["a"], assign["b"]} == {"train", "test"}  # two families: one held out
    dog = fams["dog"]
    share = {s: sum(n for f, n in dog.items() if assign[f] == s) / sum(dog.values())
             for s in ("train", "val", "test")}
    assert 0.1 <= share["test"] <= 0.3 and share["val"] > 0 and share["train"] >= 0.5
    assert dsfx.split_families(fams, seed=0) == assign   # deterministic


@pytest.mark.parametrize("name", ["debsfx-ci", "instruments-ci"])
def test_built_split_has_no_group_in_two_splits(built_dataset, name):
    d = built_dataset(name)
    groups = {s: {r.group for r in read_manifest(d / f"{s}.jsonl")}
              for s in ("train", "val", "test")}
    assert all(groups.values())
    assert not groups["train"] & groups["test"]
    assert not groups["train"] & groups["val"]
    assert not groups["val"] & groups["test"]


def test_debsfx_windows_of_a_file_share_a_split(built_dataset):
    d = built_dataset("debsfx-ci")
    where = {}
    for s in ("train", "val", "test"):
        for r in read_manifest(d / f"{s}.jsonl"):
            base = re.sub(r"-w\d\d$", "", r.clip_id)
            where.setdefault(base, set()).add(s)
            assert r.duration <= 10.0 + 1e-6
    assert all(len(v) == 1 for v in where.values())


def test_debsfx_test_clips_have_several_captions(built_dataset):
    recs = read_manifest(built_dataset("debsfx-ci") / "test.jsonl")
    assert recs and all(3 <= len(r.captions) <= 5 for r in recs)
    assert len({r.label for r in recs}) >= 5


# ----------------------------------------------------------------------------- all CI builds
@pytest.mark.parametrize("name", CI_NAMES)
def test_built_manifests_validate_clean(built_dataset, name):
    d = built_dataset(name)
    manifests = sorted(d.glob("*.jsonl"))
    assert manifests
    for m in manifests:
        assert validate_manifest(m, check_audio=True) == []
    info = json.loads((d / bl.BUILD_INFO).read_text())
    assert info["counts"]["clips"] == sum(len(read_manifest(m)) for m in manifests)
    assert (d / "LICENSE.md").read_text().count("debian/copyright of") >= 1


@pytest.mark.parametrize("name", CI_NAMES)
def test_built_audio_is_32k_or_esc_layout(built_dataset, name):
    d = built_dataset(name)
    rec = read_manifest(sorted(d.glob("*.jsonl"))[0])[0]
    info = sf.info(str(d / rec.audio_path))
    assert info.channels == 1
    assert info.samplerate == (44100 if name == "tuxpaint-zs" else 32000)


def test_ci_builds_are_up_to_date_noops(built_dataset, monkeypatch):
    # Re-running a builder with the same settings must not rebuild (BUILD_INFO untouched).
    d = built_dataset("debsfx-ci")
    before = (d / bl.BUILD_INFO).stat().st_mtime_ns
    monkeypatch.setattr(dsfx, "unpack_source",
                        lambda spec: pytest.fail("an up-to-date build must not unpack anything"))
    assert dsfx.build("ci", d) == d
    assert (d / bl.BUILD_INFO).stat().st_mtime_ns == before
    t = built_dataset("tuxpaint-zs")
    before = (t / bl.BUILD_INFO).stat().st_mtime_ns
    monkeypatch.setattr(tux, "unpack", lambda *a, **k: pytest.fail("must not unpack"))
    tux.build(t)
    assert (t / bl.BUILD_INFO).stat().st_mtime_ns == before


# ----------------------------------------------------------------------------- ESC-50 layout
def test_tuxpaint_esc50_layout_is_exact(built_dataset, tmp_path):
    from mltm.data.converters import prepare_esc50

    d = built_dataset("tuxpaint-zs")
    csv_text = (d / "esc50" / "meta" / "esc50.csv").read_text()
    lines = csv_text.splitlines()
    assert lines[0] == "filename,fold,target,category,esc10,src_file,take"
    rows = [ln.split(",") for ln in lines[1:]]
    targets = {}
    for fn, fold, target, category, esc10, src_file, take in rows:
        assert fn == f"{fold}-{src_file}-{take}-{target}.wav"
        assert (d / "esc50" / "audio" / fn).is_file()
        assert targets.setdefault(category, target) == target  # one target per class
    assert sorted(targets, key=lambda c: int(targets[c])) == sorted(targets)
    recs = read_manifest(d / "test.jsonl")
    assert len(recs) == len(rows)
    assert all(r.captions == (f"This is a sound of {r.label.replace('_', ' ')}",) for r in recs)
    assert all(r.license == "GPL-2" for r in recs)
    # The generic ESC-50 converter reads the layout as it reads the real ESC-50.
    report = prepare_esc50(d / "esc50", tmp_path / "again")
    assert (report.num_skipped() == 0
            and len(read_manifest(tmp_path / "again" / "test.jsonl")) == len(rows))


def test_tuxpaint_table_rejects_bad_rows(tmp_path):
    p = tmp_path / "t.tsv"
    p.write_text("animals/dog\tDog Bark\n")
    with pytest.raises(ValueError, match="snake_case"):
        tux.load_table(p)
    p.write_text("animals/dog\tdog\nanimals/dog\tdog\n")
    with pytest.raises(ValueError, match="listed twice"):
        tux.load_table(p)


# ----------------------------------------------------------------------------- atomicity
def test_atomic_dir_leaves_previous_build_on_failure(tmp_path):
    out = tmp_path / "ds"
    with bl.AtomicDir(out) as t:
        (t / "a.txt").write_text("old")
        bl.write_json_atomic(t / bl.BUILD_INFO, {"settings_key": "k1"})
    with pytest.raises(RuntimeError, match="boom"):
        with bl.AtomicDir(out) as t:
            (t / "a.txt").write_text("half")
            raise RuntimeError("boom")
    assert (out / "a.txt").read_text() == "old"
    assert bl.up_to_date(out, "k1") and not bl.up_to_date(out, "k2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]   # no temp dirs left
    with pytest.raises(RuntimeError, match="BUILD_INFO.json was not written"):
        with bl.AtomicDir(out) as t:
            (t / "a.txt").write_text("no info")
    assert (out / "a.txt").read_text() == "old"


# ----------------------------------------------------------------------------- instruments
class FakeRenderer:
    """Stands in for tinysoundfont: every third phrase renders silence."""

    calls = 0
    fail_at: int | None = None

    def __init__(self, sf2, *a, **k):
        FakeRenderer.calls = 0

    def render(self, p, seconds=inst.CLIP_SECONDS):
        FakeRenderer.calls += 1
        if FakeRenderer.fail_at is not None and FakeRenderer.calls == FakeRenderer.fail_at:
            raise KeyboardInterrupt("interrupted")
        n = int(seconds * bl.SAMPLE_RATE)
        if FakeRenderer.calls % 3 == 0:
            return np.full(n, 1e-6, dtype=np.float32)  # RMS 1e-6 < 1e-4: silent
        t = np.arange(n) / bl.SAMPLE_RATE
        return (0.1 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def test_instruments_drop_silent_renders_and_are_idempotent(tmp_path, monkeypatch):
    monkeypatch.setattr(inst, "Renderer", FakeRenderer)
    sf2 = tmp_path / "fake.sf2"
    sf2.write_bytes(b"not really a soundfont")
    out = tmp_path / "inst"
    inst.build("ci", out, num_clips=30, sf2=sf2)
    info = json.loads((out / bl.BUILD_INFO).read_text())
    assert info["filters"] == {"requested": 30, "silent_renders": 10}
    assert info["counts"]["clips"] == 20
    recs = [r for s in ("train", "val", "test") for r in read_manifest(out / f"{s}.jsonl")]
    assert len(recs) == 20 and all(len(r.captions) == 5 for r in recs)
    # Second run with the same settings: nothing rendered, nothing rewritten.
    mtime = (out / bl.BUILD_INFO).stat().st_mtime_ns
    FakeRenderer.calls = 0
    monkeypatch.setattr(inst, "Renderer", lambda *a, **k: pytest.fail("must not render again"))
    inst.build("ci", out, num_clips=30, sf2=sf2)
    assert (out / bl.BUILD_INFO).stat().st_mtime_ns == mtime


def test_instruments_interrupted_build_keeps_old_one(tmp_path, monkeypatch):
    monkeypatch.setattr(inst, "Renderer", FakeRenderer)
    sf2 = tmp_path / "fake.sf2"
    sf2.write_bytes(b"x")
    out = tmp_path / "inst"
    inst.build("ci", out, num_clips=6, sf2=sf2)
    before = (out / "train.jsonl").read_bytes() if (out / "train.jsonl").exists() else None
    FakeRenderer.fail_at = 5
    try:
        with pytest.raises(KeyboardInterrupt):
            inst.build("ci", out, num_clips=12, sf2=sf2)
    finally:
        FakeRenderer.fail_at = None
    assert json.loads((out / bl.BUILD_INFO).read_text())["settings"]["num_clips"] == 6
    assert ((out / "train.jsonl").read_bytes() if before is not None else None) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []


def test_instrument_phrases_are_seeded_and_captions_compositional():
    table = inst.load_gm_table()
    assert len(table) == 116 and all(i.family != "sound effects" for i in table)
    a = [inst.draw_phrase(table, 0, i) for i in range(50)]
    assert a == [inst.draw_phrase(table, 0, i) for i in range(50)]
    assert a != [inst.draw_phrase(table, 1, i) for i in range(50)]
    for p in a:
        caps = inst.captions(p)
        assert len(caps) == 5 and len(set(caps)) == 5
        for c in caps:   # every caption names instrument, register and tempo
            assert p.instrument.name in c and p.register in c
            assert p.tempo in c or {"slow": "slowly", "fast": "quickly"}[p.tempo] in c
        keys = [n[2] for n in p.notes()]
        assert p.instrument.lo <= min(keys) and max(keys) <= p.instrument.hi
        if p.contour == "rising":
            assert keys[:8] == sorted(keys[:8])
        if p.contour == "falling":
            assert keys[:8] == sorted(keys[:8], reverse=True)
        if p.contour == "repeated":
            assert len(set(keys)) == 1
    # held-out combinations: the split is a function of the combination only
    splits = {}
    for i in range(3000):
        p = inst.draw_phrase(table, 0, i)
        assert splits.setdefault(p.combination, inst.split_of(p, 0)) == inst.split_of(p, 0)
    share = sum(s == "test" for s in splits.values()) / len(splits)
    assert 0.1 < share < 0.2


def test_real_soundfont_render_is_audible_if_cached():
    # Renders two phrases with the real TimGM6mb SoundFont when it is in the cache.
    cache = Path(os.environ.get("MLTM_CACHE") or Path.home() / ".cache" / "mltm") / "src"
    found = sorted(cache.glob("timgm6mb-soundfont_*-sf2/**/TimGM6mb.sf2"))
    if not found:
        pytest.skip("TimGM6mb.sf2 not unpacked yet (run `bash data_scripts/build_all.sh ci`)")
    r = inst.Renderer(found[0])
    table = inst.load_gm_table()
    p = inst.draw_phrase(table, 0, 0)
    w1, w2 = r.render(p), r.render(p)
    assert w1.shape == (int(inst.CLIP_SECONDS * bl.SAMPLE_RATE),)
    assert bl.rms(w1) > 1e-3
    np.testing.assert_array_equal(w1, w2)   # no state leaks from one clip to the next


# ----------------------------------------------------------------------------- bad sources
def test_debsfx_skips_undecodable_and_silent_files(tmp_path, monkeypatch):
    """A broken source file is skipped and counted; it never stops the build."""
    spec = dsfx.SOURCES["wesnoth"]
    tree = tmp_path / "tree"
    snd = tree / spec.root / "data" / "core" / "sounds"
    snd.mkdir(parents=True)
    t = np.arange(16000) / 16000

    def tone(name, f):
        sf.write(str(snd / name), (0.3 * np.sin(2 * np.pi * f * t)).astype(np.float32), 16000)

    tone("sword-1.wav", 440)
    tone("bow.wav", 330)
    tone("crossbow.wav", 550)
    tone("mace.wav", 200)
    tone("club.wav", 250)
    tone("sword-2.wav", 660)
    b = (snd / "sword-2.wav").read_bytes()
    (snd / "sword-2.wav").write_bytes(b[: len(b) // 2])            # truncated
    (snd / "gunshot.wav").write_text("this is not audio")           # not audio
    sf.write(str(snd / "explosion.wav"), np.zeros(16000, np.float32), 16000)  # silent
    deb = tmp_path / "fake.deb"
    deb.write_bytes(b"")
    monkeypatch.setattr(dsfx, "fetch_deb", lambda name: Package(name, "9.9", deb))
    monkeypatch.setattr(dsfx, "unpack_source", lambda s: (Package(s.package, "9.9", deb), tree))
    out = tmp_path / "out"
    dsfx.build("ci", out, sources=["wesnoth"], min_clips=1, max_per_class=0)
    info = json.loads((out / bl.BUILD_INFO).read_text())
    f = info["filters"]
    assert (f["skipped_truncated"] + f.get("skipped_not_audio", 0)
            + f.get("skipped_unreadable", 0)) == 2
    assert f["skipped_silent"] == 1
    ids = {r.clip_id for s in ("train", "val", "test") for r in read_manifest(out / f"{s}.jsonl")}
    assert ids == {"wesnoth-data-core-sounds-sword-1", "wesnoth-data-core-sounds-bow",
                   "wesnoth-data-core-sounds-crossbow", "wesnoth-data-core-sounds-mace",
                   "wesnoth-data-core-sounds-club"}
    assert "(no debian/copyright found for wesnoth-1.16-data)" in (out / "LICENSE.md").read_text()


def test_atomic_dir_removes_leftovers_of_killed_builds(tmp_path):
    dead = tmp_path / ".tmp-ds-999999999"      # no such process
    dead.mkdir()
    (dead / "half.flac").write_bytes(b"x")
    with bl.AtomicDir(tmp_path / "ds") as t:
        bl.write_json_atomic(t / bl.BUILD_INFO, {})
    assert not dead.exists() and (tmp_path / "ds" / bl.BUILD_INFO).is_file()

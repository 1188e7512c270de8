"""Tests of the zero-shot set builders (ESC-50 layout) and of the zero-shot coverage report.

Unit tests use synthetic audio and fake packages (no network, no .deb). The tests taking the
``built_dataset`` fixture check the builds on disk (skipped when absent).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from data_scripts import build_edusounds_zeroshot as edu
from data_scripts import build_tuxpaint_zeroshot as tux
from data_scripts import buildlib as bl
from data_scripts import dataset_stats as ds
from data_scripts import esc50_layout as esc
from data_scripts.debian import Package
from data_scripts.qt_rcc import RccError, read_rcc, read_rcc_file, write_rcc
from mltm.data.converters import prepare_esc50
from mltm.data.manifest import read_manifest, validate_manifest

ESC50_CATEGORIES = {  # ESC-50's 50 classes
    "dog", "rooster", "pig", "cow", "frog", "cat", "hen", "insects", "sheep", "crow", "rain",
    "sea_waves", "crackling_fire", "crickets", "chirping_birds", "water_drops", "wind",
    "pouring_water", "toilet_flush", "thunderstorm", "crying_baby", "sneezing", "clapping",
    "breathing", "coughing", "footsteps", "laughing", "brushing_teeth", "snoring",
    "drinking_sipping", "door_wood_knock", "mouse_click", "keyboard_typing", "door_wood_creaks",
    "can_opening", "washing_machine", "vacuum_cleaner", "clock_alarm", "clock_tick",
    "glass_breaking", "helicopter", "chainsaw", "siren", "car_horn", "engine", "train",
    "church_bells", "airplane", "fireworks", "hand_saw"}


def _tone(path: Path, freq: float, sr: int = 22050, seconds: float = 1.0, channels: int = 1,
          amp: float = 0.3) -> Path:
    t = np.arange(int(sr * seconds)) / sr
    x = (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    if channels > 1:
        x = np.stack([x] * channels, axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), x, sr)
    return path


# ----------------------------------------------------------------------------- class tables
def test_edusounds_table_parses_and_every_row_maps_to_a_class():
    rows = edu.load_table()
    assert len(rows) >= 99  # 101 rows less the two recordings found in data/sfxpool
    assert all(r.package in edu.PACKAGES and r.license in edu.LICENCES for r in rows)
    for r in rows:
        esc.check_class_name(r.category, r.member)   # raises on a bad class name
    # The ESC-50 file names must be unique and parse back: one src_file per row, no '-'.
    src = [edu.src_file_of(r) for r in rows]
    assert len(set(src)) == len(src) and not any("-" in s or "," in s for s in src)
    # Mostly ESC-50's own names; no music or speech classes slipped in.
    classes = {r.category for r in rows}
    assert len(classes & ESC50_CATEGORIES) >= 25
    assert not classes & {"violin", "piano", "guitar", "speech", "singing", "music"}
    # GCompris sounds are addressed inside their Qt resource file.
    assert all(r.rcc_parts for r in rows if r.package == "gcompris-qt-data")
    assert not any(r.member.lower().endswith(".mp3") for r in rows)


def test_tuxpaint_table_still_parses_with_the_shared_reader():
    table = tux.load_table()
    rows = [ln for ln in tux.TABLE.read_text().splitlines()
            if ln.strip() and not ln.startswith("#")]
    # one entry per row: 62 stamp sounds less cow_white, the same recording as a sfxpool clip
    assert len(table) == len(rows) == 61
    assert set(table.values()) >= {"dog", "rooster", "fireworks"}


@pytest.mark.parametrize("row, message", [
    ("qabcs-data\tusr/a.ogg\tdog", "4 tab-separated fields"),
    ("qabcs-data\tusr/a.ogg\tDog Bark\tGPL-3+", "snake_case"),
    ("kde-games\tusr/a.ogg\tdog\tGPL-3+", "package 'kde-games' is not one of"),
    ("qabcs-data\tusr/a.ogg\tdog\tproprietary", "licence 'proprietary'"),
    ("qabcs-data\t./usr/a.ogg\tdog\tGPL-3+", "relative path"),
    ("qabcs-data\tusr/a.ogg\tdog\tGPL-3+\nqabcs-data\tusr/a.ogg\tcat\tGPL-3+", "listed twice"),
])
def test_edusounds_table_rejects_bad_rows(tmp_path, row, message):
    p = tmp_path / "t.tsv"
    p.write_text("# header\n" + row + "\n")
    with pytest.raises(ValueError, match=message) as e:
        edu.load_table(p)
    assert str(p) in str(e.value)


def test_mapping_table_parses_and_names_real_training_labels():
    mapping = ds.load_class_mapping()
    assert mapping["hen"] == ("chicken",)
    # Every mapped label is a class the DebSFX rules can produce (no typos).
    rule_labels = set()
    for line in (Path(ds.__file__).parent / "rules" / "debsfx_rules.tsv").read_text().splitlines():
        cols = line.split("\t")
        if not line.startswith(("#", "@")) and len(cols) >= 3 and cols[2] != "-":
            rule_labels.add(cols[2])
    assert {lab for labs in mapping.values() for lab in labs} <= rule_labels


# ----------------------------------------------------------------------------- ESC-50 layout
def _clips(tmp_path: Path) -> list[esc.SourceClip]:
    src = tmp_path / "src"
    return [
        esc.SourceClip(_tone(src / "b.wav", 440, sr=22050, channels=2), "dog", "pkg_bark",
                       "pkg-a 1.0", "GPL-3+"),
        esc.SourceClip(_tone(src / "a.ogg", 330, sr=48000, seconds=7.0), "rooster", "pkg_crow",
                       "pkg-b 2.0", "CC0-1.0"),
        esc.SourceClip(_tone(src / "c.flac", 550, sr=44100, amp=2.0), "cat", "pkg_meow",
                       "pkg-a 1.0", "GPL-3+"),
    ]


def test_esc50_layout_round_trips_through_prepare_esc50(tmp_path):
    out = tmp_path / "set"
    rows, stats = esc.write_esc50_set(out, _clips(tmp_path))
    assert stats["cut_to_5s"] == 1 and len(rows) == 3
    lines = (out / "esc50" / "meta" / "esc50.csv").read_text().splitlines()
    assert lines[0] == "filename,fold,target,category,esc10,src_file,take"
    # target = alphabetical index of the class; file name = {fold}-{src_file}-{take}-{target}.wav
    assert lines[1:] == ["5-pkg_bark-A-1.wav,5,1,dog,False,pkg_bark,A",
                         "5-pkg_crow-A-2.wav,5,2,rooster,False,pkg_crow,A",
                         "5-pkg_meow-A-0.wav,5,0,cat,False,pkg_meow,A"]
    for fn in ("5-pkg_bark-A-1.wav", "5-pkg_crow-A-2.wav", "5-pkg_meow-A-0.wav"):
        info = sf.info(str(out / "esc50" / "audio" / fn))
        assert (info.samplerate, info.channels, info.subtype, info.frames) == \
            (44100, 1, "PCM_16", 5 * 44100)
    loud, _ = sf.read(str(out / "esc50" / "audio" / "5-pkg_meow-A-0.wav"))
    assert 0.99 < np.max(np.abs(loud)) <= 0.999 + 1e-4   # scaled down, not clipped
    recs = {r.clip_id: r for r in read_manifest(out / "test.jsonl")}
    assert validate_manifest(out / "test.jsonl", check_audio=True) == []
    assert recs["5-pkg_crow-A-2"].captions == ("This is a sound of rooster",)
    assert ((recs["5-pkg_crow-A-2"].source, recs["5-pkg_crow-A-2"].license)
            == ("pkg-b 2.0", "CC0-1.0"))
    assert (recs["5-pkg_bark-A-1"].group, recs["5-pkg_bark-A-1"].license) == ("pkg_bark", "GPL-3+")
    # The generic converter reads the layout exactly as it reads the real ESC-50.
    again = prepare_esc50(out / "esc50", tmp_path / "again")
    assert again.num_skipped() == 0
    assert {r.clip_id for r in read_manifest(tmp_path / "again" / "test.jsonl")} == set(recs)


def test_esc50_layout_is_bit_identical_when_rebuilt(tmp_path):
    clips = _clips(tmp_path)
    esc.write_esc50_set(tmp_path / "one", clips)
    esc.write_esc50_set(tmp_path / "two", clips)
    for rel in ("esc50/meta/esc50.csv", "test.jsonl", "esc50/audio/5-pkg_crow-A-2.wav"):
        assert (tmp_path / "one" / rel).read_bytes() == (tmp_path / "two" / rel).read_bytes()


def test_byte_identical_files_are_kept_once_and_bad_files_counted(tmp_path):
    src = tmp_path / "src"
    a = _tone(src / "a.wav", 440)
    (src / "copy.wav").write_bytes(a.read_bytes())           # byte-identical, another name
    (src / "junk.ogg").write_text("not audio at all")
    sf.write(str(src / "silent.wav"), np.zeros(8000, np.float32), 8000)

    def clip(name, cls, sid):
        return esc.SourceClip(src / name, cls, sid, "p 1", "GPL-3+")

    clips = [clip("a.wav", "dog", "p_a"), clip("copy.wav", "cat", "p_copy"),
             clip("junk.ogg", "cat", "p_junk"), clip("silent.wav", "cat", "p_silent"),
             clip("missing.wav", "cat", "p_missing")]
    rows, stats = esc.write_esc50_set(tmp_path / "out", clips)
    assert [r["src_file"] for r in rows] == ["p_a"]          # the first of the two copies
    assert stats["duplicate"] == 1 and stats["missing"] == 1 and stats["skipped_silent"] == 1
    assert sum(v for k, v in stats.items()
               if k.startswith("skipped_") and k != "skipped_silent") == 1
    # Classes are numbered over the listed clips, so a skipped clip's class keeps its target.
    assert rows[0]["target"] == 1


def test_src_file_with_a_dash_is_refused(tmp_path):
    c = esc.SourceClip(_tone(tmp_path / "a.wav", 440), "dog", "bad-name", "p 1", "GPL-3+")
    with pytest.raises(ValueError, match="contains '-'"):
        esc.write_esc50_set(tmp_path / "out", [c])


# ----------------------------------------------------------------------------- Qt resources
def test_rcc_reader_round_trip_compressed_and_plain():
    files = {"gcompris/src/a/resource/dog.ogg": bytes(range(256)) * 40,
             "gcompris/src/a/resource/x.svg": b"<svg/>", "top.wav": b"RIFF"}
    for compress in (True, False):
        blob = write_rcc(files, compress=compress)
        assert read_rcc(blob) == files
        assert read_rcc(blob, keep=lambda p: p.endswith(".ogg")) == \
            {"gcompris/src/a/resource/dog.ogg": files["gcompris/src/a/resource/dog.ogg"]}


def test_rcc_reader_names_a_bad_file(tmp_path):
    p = tmp_path / "x.rcc"
    p.write_bytes(b"PK\x03\x04 not qt")
    with pytest.raises(RccError, match=r"x\.rcc.*qres"):
        read_rcc_file(p)


# ----------------------------------------------------------------------------- builder, faked
def test_edusounds_builder_end_to_end_with_fake_packages(tmp_path, monkeypatch):
    """Plain members and members inside a Qt resource file; dedup across packages; no-op rerun."""
    tree = tmp_path / "tree"
    _tone(tree / "usr/share/qabcs/abcs/all/noises/dog.ogg", 440)
    _tone(tree / "usr/share/scratch/Media/Sounds/Animal/Meow.wav", 660)
    wav = (tree / "usr/share/scratch/Media/Sounds/Animal/Meow.wav").read_bytes()
    rcc = write_rcc({"gcompris/src/activities/farm/cow.ogg":
                     _tone(tmp_path / "cow.ogg", 220).read_bytes(),
                     "gcompris/src/activities/farm/cat.wav": wav})   # same bytes as Meow.wav
    (tree / "usr/share/gcompris-qt/rcc").mkdir(parents=True)
    (tree / "usr/share/gcompris-qt/rcc/farm.rcc").write_bytes(rcc)
    table = tmp_path / "t.tsv"
    table.write_text(
        "qabcs-data\tusr/share/qabcs/abcs/all/noises/dog.ogg\tdog\tGPL-3+\n"
        "scratch\tusr/share/scratch/Media/Sounds/Animal/Meow.wav\tcat\tCC-BY-SA-3.0\n"
        "gcompris-qt-data\tusr/share/gcompris-qt/rcc/farm.rcc!gcompris/src/activities/farm/cow.ogg\tcow\tGPL-3\n"
        "gcompris-qt-data\tusr/share/gcompris-qt/rcc/farm.rcc!gcompris/src/activities/farm/cat.wav\tcat\tGPL-3\n")
    deb = tmp_path / "fake.deb"
    deb.write_bytes(b"")
    monkeypatch.setattr(edu, "TABLE", table)
    monkeypatch.setattr(edu, "fetch_deb", lambda name: Package(name, "1.0", deb))
    monkeypatch.setattr(edu, "unpack", lambda pkg, patterns, tag: tree)
    out = tmp_path / "edusounds-zs"
    edu.build(out)
    info = json.loads((out / bl.BUILD_INFO).read_text())
    # Packages are processed in name order: gcompris' cat.wav is kept, scratch's copy dropped.
    assert info["filters"]["duplicate"] == 1 and info["counts"]["clips"] == 3
    assert info["per_class"] == {"cat": 1, "cow": 1, "dog": 1}
    recs = {r.label: r for r in read_manifest(out / "test.jsonl")}
    assert recs["cow"].source == "gcompris-qt-data 1.0" and recs["cow"].license == "GPL-3"
    assert recs["dog"].group == "qabcs_dog"
    assert "EduSounds" in (out / "LICENSE.md").read_text()
    monkeypatch.setattr(edu, "unpack",
                        lambda *a: pytest.fail("an up-to-date build must not unpack"))
    before = (out / bl.BUILD_INFO).stat().st_mtime_ns
    edu.build(out)
    assert (out / bl.BUILD_INFO).stat().st_mtime_ns == before


# ----------------------------------------------------------------------------- coverage
def test_zero_shot_coverage_on_a_toy_mapping():
    mapping = {"hen": ("chicken",), "thunderstorm": ("thunder", "rain"), "crow": ("raven",)}
    cov = ds.zero_shot_coverage(["dog", "hen", "crow", "thunderstorm", "siren"],
                                {"dog", "chicken", "rain", "wind"}, mapping,
                                clips_per_class={"dog": 3, "hen": 1, "crow": 2,
                                                 "thunderstorm": 2, "siren": 2})
    assert cov["covered"] == {"dog": ["dog"], "hen": ["chicken"], "thunderstorm": ["rain"]}
    assert cov["uncovered"] == ["crow", "siren"]     # raven is not in the vocabulary
    assert cov["classes"] == 5 and cov["fraction"] == 0.6 and cov["clip_fraction"] == 0.6


def test_coverage_report_reads_manifests(tmp_path, monkeypatch):
    from mltm.data.manifest import ClipRecord, write_manifest

    def manifest(d, split, labels):
        (tmp_path / d).mkdir(exist_ok=True)
        write_manifest([ClipRecord(f"{d}{i}", f"{i}.wav", ("a caption",), label=lab)
                        for i, lab in enumerate(labels)], tmp_path / d / f"{split}.jsonl")

    manifest("debsfx-ci", "train", ["chicken", "dog"])
    manifest("debsfx-ci", "test", ["siren"])          # test labels are not training vocabulary
    manifest("tuxpaint-zs", "test", ["hen", "siren", "siren"])
    manifest("edusounds-zs", "test", ["dog"])
    rep = ds.coverage_report(tmp_path, "ci")
    assert rep["tuxpaint-zs"]["covered"] == {"hen": ["chicken"]}
    assert rep["tuxpaint-zs"]["uncovered"] == ["siren"]
    assert rep["tuxpaint-zs"]["clip_fraction"] == round(1 / 3, 4)
    assert rep["edusounds-zs"]["fraction"] == 1.0 and rep["edusounds-zs"]["training_labels"] == 2
    with pytest.raises(FileNotFoundError, match="train.jsonl not found"):
        ds.training_labels(tmp_path / "tuxpaint-zs")


def test_mapping_table_rejects_bad_rows(tmp_path):
    p = tmp_path / "m.tsv"
    p.write_text("hen\n")
    with pytest.raises(ValueError, match="expected 'zero-shot class<TAB>training label"):
        ds.load_class_mapping(p)
    p.write_text("hen\tchicken\nhen\trooster\n")
    with pytest.raises(ValueError, match="listed twice"):
        ds.load_class_mapping(p)


# ----------------------------------------------------------------------------- the build on disk
def test_built_edusounds_layout_is_exact(built_dataset):
    d = built_dataset("edusounds-zs")
    info = json.loads((d / bl.BUILD_INFO).read_text())
    lines = (d / "esc50" / "meta" / "esc50.csv").read_text().splitlines()
    assert lines[0] == ",".join(esc.ESC50_HEADER)
    assert len(lines) - 1 == info["counts"]["clips"] >= 99
    recs = read_manifest(d / "test.jsonl")
    assert Counter(r.label for r in recs) == Counter(info["per_class"])
    assert {r.license for r in recs} <= edu.LICENCES
    assert validate_manifest(d / "test.jsonl", check_audio=True) == []
    hashes = {bl.sha256_file(d / r.audio_path) for r in recs}
    assert len(hashes) == len(recs)                   # no two clips the same audio


# ----------------------------------------------------------------------------- overlap check
def test_overlap_check_finds_a_recording_mixed_into_a_training_file(tmp_path):
    from data_scripts import check_zeroshot_overlap as ov

    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    call = 0.3 * np.hanning(16000) * np.sin(2 * np.pi * (500 * t + 1000 * t * t))  # 1 s rising call
    other = 0.3 * np.sin(2 * np.pi * (2500 * t - 900 * t * t)) * (1 + np.sin(2 * np.pi * 7 * t)) / 2
    zs = tmp_path / "zs"
    (zs / "esc50/audio").mkdir(parents=True)
    sf.write(str(zs / "esc50/audio/call.wav"), call, 16000)
    sf.write(str(zs / "esc50/audio/other.wav"), other, 16000)
    from mltm.data.manifest import ClipRecord, write_manifest
    write_manifest([ClipRecord("call", "esc50/audio/call.wav", ("c",)),
                    ClipRecord("other", "esc50/audio/other.wav", ("c",))], zs / "test.jsonl")
    raw = tmp_path / "train"
    raw.mkdir()
    ambience = rng.standard_normal(5 * 22050) * 0.05
    ambience[30000:30000 + 22050] += 0.5 * ov.load_mono(zs / "esc50/audio/call.wav", 22050)[:22050]
    sf.write(str(raw / "night.ogg"), ambience, 22050)                # re-encoded, resampled, mixed
    res = {clip: (score, name) for score, clip, name in ov.overlaps(zs, [raw])}
    assert res["call"][0] > 0.8 and res["call"][1] == "night.ogg"
    assert res["other"][0] < 0.3
    assert ov.main([str(zs), str(raw), "--show", "0"]) == 1          # exit 1: a hit to look at

"""Tests of the wide pool (``build_debsfx.py --size pool``): rules, near-duplicate families, split.

Everything here runs on synthetic signals and the rules tables; the full pool build is never
made in CI (CI builds only the CI sizes).
"""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pytest

from data_scripts import audio_fingerprint as afp
from data_scripts import build_debsfx as dsfx

SR = 32000
RESERVED_FOR_ZERO_SHOT = ("tuxpaint", "gcompris", "childsplay", "ktuberling", "pysiogame",
                          "colobot", "gamine", "bambam", "tuxmath", "tuxtype")


@pytest.fixture(scope="module")
def pool_rules():
    return dsfx.load_rule_tables([dsfx.RULES_DIR / f for f in dsfx.SIZES["pool"]["rules"]])


# ----------------------------------------------------------------------------- rules
def test_pool_rules_parse_and_every_class_has_three_paraphrases(pool_rules):
    new = [r for r in pool_rules.rules if r.source in dsfx.POOL_SOURCES]
    assert len(new) > 100
    assert {r.source for r in new} == set(dsfx.POOL_SOURCES)   # every new source has rules
    for r in new:
        if r.label is None:
            continue
        assert 3 <= len(r.captions) <= 5, (r.line, r.label)
        assert len(set(r.captions)) == len(r.captions), (r.line, "duplicate paraphrase")
        assert all(c[0].islower() and not c.endswith(".") for c in r.captions), r.line
    labels = {r.label for r in pool_rules.rules if r.label}
    assert len(labels) >= 100


def test_pool_rules_map_known_paths(pool_rules):
    cases = [
        ("ufoai", "footsteps/gravel3.ogg", "footsteps", "footsteps on gravel"),
        ("ufoai", "misc/breakglass04.ogg", "glass_breaking", "breaking glass"),
        ("hedgewars", "voices/Pirate/Laugh.ogg", "laughter", "someone laughing"),
        ("hedgewars", "voices/Pirate/Hello.ogg", "spoken_exclamation", None),
        ("hedgewars", "1C.ogg", None, None),                       # musical note: dropped
        ("openarena", "voices/festivoxmale/yes.ogg", None, None),  # Festival TTS: dropped
        ("openarena", "player/footsteps/clank2.wav", "footsteps", "footsteps on metal"),
        ("lincity", "RailTrain2.wav", "train", "a train passing"),
        ("scorched3d", "none/data/wav/misc/gull4.wav", "seagull", "seagulls crying"),
        ("nexuiz", "weapons/tuba_note12.ogg", None, None),
        ("warzone", "sfx/interfce/beep4.ogg", None, None),
    ]
    for source, rel, label, caption in cases:
        rule, groups = pool_rules.match(source, rel)
        assert rule.label == label, (source, rel)
        if caption:
            assert caption in pool_rules.captions_for(rule, groups)


def test_voice_sets_are_families(pool_rules):
    rule, groups = pool_rules.match("hedgewars", "voices/Pirate/Ow2.ogg")
    assert dsfx.family_of("hedgewars", "voices/Pirate/Ow2.ogg", rule.label, groups) == \
        "hedgewars:pain_grunt:pirate"


def test_zero_shot_packages_are_never_training_sources():
    for spec in dsfx.SOURCES.values():
        assert not spec.package.startswith(RESERVED_FOR_ZERO_SHOT), spec.package


def test_ci_and_full_settings_do_not_see_the_pool():
    # The ci/full builds hash only debsfx_rules.tsv and have no pool-only settings, so their
    # settings key (and outputs) are exactly those of before the pool existed.
    assert dsfx.load_rules().sha256 == hashlib.sha256(dsfx.RULES_PATH.read_bytes()).hexdigest()
    for size in ("ci", "full"):
        assert set(dsfx.SIZES[size]) == {"sources", "window", "max_windows", "max_per_class",
                                         "min_clips", "name"}
        assert set(dsfx.SIZES[size]["sources"]) <= {"0ad", "megaglest", "widelands", "wesnoth"}


def test_built_ci_records_the_unchanged_rules_hash(built_dataset):
    info = json.loads((built_dataset("debsfx-ci") / "BUILD_INFO.json").read_text())
    assert info["settings"]["rules_sha256"] == dsfx.load_rules().sha256


def test_rule_tables_hash_covers_both_files(tmp_path):
    a, b = tmp_path / "a.tsv", tmp_path / "b.tsv"
    a.write_text("0ad\tfoo\tcls\tone | two | three\n")
    b.write_text("ufoai\tbar\tcls2\tuno | dos | tres\n")
    t1 = dsfx.load_rule_tables([a, b])
    assert [r.label for r in t1.rules] == ["cls", "cls2"]
    b.write_text("ufoai\tbar\tcls2\tuno | dos | cuatro\n")
    assert dsfx.load_rule_tables([a, b]).sha256 != t1.sha256


# ----------------------------------------------------------------------------- fingerprints
def _burst(seed: int = 0, seconds: float = 1.5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    x = np.sin(2 * np.pi * (440 + 300 * t) * t) * np.exp(-3 * t) * (t < 1.2)
    x += 0.3 * np.sin(2 * np.pi * 1250 * t) * (t > 0.5)
    return x + 0.01 * rng.standard_normal(t.size)


def _resample(x: np.ndarray, a: int, b: int) -> np.ndarray:
    import torch
    import torchaudio

    return torchaudio.functional.resample(torch.from_numpy(x), a, b).numpy()


def _variants():
    x = _burst()
    return {
        "original": x,
        "quieter": 0.2 * x,
        "trimmed": x[3333:-5000],
        "resampled": _resample(_resample(x, SR, 22050), 22050, SR),
        "all_three": 0.5 * _resample(_resample(x[1777:], SR, 11025), 11025, SR),
    }


def test_fingerprint_is_gain_invariant_and_deterministic():
    x = _burst()
    f = afp.fingerprint(x)
    assert f.shape[1] == afp.N_BANDS
    np.testing.assert_allclose(afp.fingerprint(0.1 * x) - f, np.log10(0.01), atol=1e-9)
    assert np.array_equal(afp.fingerprint(x), f)
    with pytest.raises(ValueError, match="resample first"):
        afp.fingerprint(x, sr=16000)


def test_copies_of_a_recording_match_and_other_sounds_do_not():
    v = _variants()
    f0 = afp.fingerprint(v["original"])
    for name in ("quieter", "trimmed", "resampled", "all_three"):
        assert afp.match_score(f0, afp.fingerprint(v[name])) >= afp.THRESHOLD, name
    t = np.arange(int(1.5 * SR)) / SR
    rng = np.random.default_rng(1)
    others = [np.sin(2 * np.pi * 800 * t) * np.exp(-t) * (t > 0.2),
              rng.standard_normal(t.size) * np.exp(-2 * t),
              _burst(seed=0)[::-1].copy()]                 # same spectrum, reversed in time
    for o in others:
        assert afp.match_score(f0, afp.fingerprint(o)) < afp.THRESHOLD


def test_near_duplicate_pairs_finds_exactly_the_copies():
    v = _variants()
    t = np.arange(int(1.5 * SR)) / SR
    other = np.sin(2 * np.pi * 800 * t) * np.exp(-t)
    fps = [afp.fingerprint(w) for w in (v["original"], other, v["trimmed"], v["all_three"])]
    pairs = {(i, j) for i, j, _ in afp.near_duplicate_pairs(fps)}
    assert pairs == {(0, 2), (0, 3), (2, 3)}


# ----------------------------------------------------------------------------- families, split
def test_near_duplicates_join_families_and_cross_class_copies_are_dropped():
    v = _variants()
    t = np.arange(int(1.5 * SR)) / SR
    files = [("a:orig.ogg", "bell", "a:bell:orig"),
             ("b:copy.wav", "bell", "b:bell:copy"),       # same class: families join
             ("c:other.ogg", "bell", "c:bell:other"),     # a different sound
             ("d:copy2.ogg", "gong", "d:gong:copy2")]     # same recording, other class: dropped
    waves = [v["original"], v["resampled"], np.sin(2 * np.pi * 800 * t) * np.exp(-t),
             v["trimmed"]]
    fam_map, dropped, report = dsfx.near_duplicate_families(
        files, [afp.fingerprint(w) for w in waves], dict(threshold=0.95))
    assert fam_map["a:bell:orig"] == fam_map["b:bell:copy"] == "a:bell:orig"
    assert fam_map["c:bell:other"] == "c:bell:other"
    assert dropped == {3}
    assert report["groups"] == 1 and report["families_merged_away"] == 1
    assert report["examples"] == [["a:orig.ogg", "b:copy.wav"]]


def test_split_by_merged_family_keeps_every_copy_in_one_split():
    # 30 recordings of one class, each shipped 1-3 times by different packages.
    rng = np.random.default_rng(0)
    files, waves = [], []
    for k in range(30):
        t = np.arange(int(1.0 * SR)) / SR
        base = np.sin(2 * np.pi * (200 + 37 * k) * t * (1 + 0.3 * t)) * np.exp(-(2 + k % 5) * t)
        base += 0.02 * rng.standard_normal(t.size)
        for c in range(1 + k % 3):
            w = base if c == 0 else (0.3 + 0.3 * c) * base[500 * c:]
            files.append((f"p{c}:rec{k}.ogg", "bell", f"p{c}:bell:rec{k}"))
            waves.append(w)
    fam_map, dropped, report = dsfx.near_duplicate_families(
        files, [afp.fingerprint(w) for w in waves], dict(threshold=0.95))
    assert not dropped
    assert report["groups"] == sum(1 for k in range(30) if k % 3)
    sizes: dict[str, int] = {}
    for _, _, fam in files:
        sizes[fam_map[fam]] = sizes.get(fam_map[fam], 0) + 1
    assign = dsfx.split_families({"bell": sizes}, seed=0)
    for k in range(30):
        splits = {assign[fam_map[f]] for (name, _, f) in files if re.search(rf":rec{k}\.", name)}
        assert len(splits) == 1, k
    assert set(assign.values()) == {"train", "val", "test"}

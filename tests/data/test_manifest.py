"""Tests for mltm.data.manifest: records, atomic writes, reading, validation and the CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mltm.data import ClipRecord, ManifestProblem, read_manifest, validate_manifest, write_manifest
from mltm.data.manifest import _main, manifest_path, resolve_audio_path

REPO = Path(__file__).resolve().parents[2]


def _tone(path: Path, seconds: float = 0.2, sr: int = 16000) -> None:
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, 0.3 * np.sin(2 * np.pi * 440 * t).astype(np.float32), sr)


def _rec(i: int, **kw) -> ClipRecord:
    base = dict(clip_id=f"c{i}", audio_path=f"audio/c{i}.wav", captions=(f"caption {i}",))
    base.update(kw)
    return ClipRecord(**base)


def test_record_normalises_lists_and_rejects_bad_values():
    r = ClipRecord("a", "a.wav", ["x", "y"])
    assert r.captions == ("x", "y") and isinstance(r.captions, tuple)
    hash(r)  # frozen and hashable
    with pytest.raises(ValueError, match="6 captions"):
        ClipRecord("a", "a.wav", ["x"] * 6)
    with pytest.raises(ValueError, match="0 captions"):
        ClipRecord("a", "a.wav", [])
    with pytest.raises(ValueError, match="caption 1 is empty"):
        ClipRecord("a", "a.wav", ["x", "  "])
    with pytest.raises(ValueError, match="clip_id"):
        ClipRecord("", "a.wav", ["x"])
    with pytest.raises(ValueError, match="duration"):
        ClipRecord("a", "a.wav", ["x"], duration=-1.0)


def test_round_trip_preserves_every_field(tmp_path):
    recs = [
        _rec(0),
        ClipRecord("b", "/abs/b.flac", ("one", "two", "three", "four", "five"), label="dog",
                   group="g1", source="ESC-50", license="CC-BY-NC-3.0", duration=5.0),
        ClipRecord("ünï", "audio/ü.wav", ("café — noise",)),
    ]
    p = tmp_path / "sub" / "train.jsonl"
    write_manifest(recs, p)
    assert read_manifest(p) == recs
    lines = p.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3 and json.loads(lines[1])["captions"][4] == "five"
    assert not [q for q in p.parent.iterdir() if q.name != "train.jsonl"]  # no temp file left


def test_write_refuses_duplicates_and_keeps_old_file(tmp_path):
    p = tmp_path / "train.jsonl"
    write_manifest([_rec(0)], p)
    before = p.read_bytes()
    with pytest.raises(ValueError, match="duplicate clip_id 'c1'"):
        write_manifest([_rec(1), _rec(2), _rec(1)], p)
    assert p.read_bytes() == before


def test_write_is_atomic_on_failure(tmp_path):
    p = tmp_path / "train.jsonl"
    write_manifest([_rec(0)], p)
    before = p.read_bytes()

    def gen():
        yield _rec(5)
        raise RuntimeError("producer died")

    with pytest.raises(RuntimeError):
        write_manifest(gen(), p)
    with pytest.raises(TypeError, match="not a ClipRecord"):
        write_manifest([_rec(1), {"clip_id": "x"}], p)
    assert p.read_bytes() == before
    assert sorted(q.name for q in tmp_path.iterdir()) == ["train.jsonl"]


def test_read_errors_name_file_and_line(tmp_path):
    p = tmp_path / "val.jsonl"
    good = _rec(0).to_json()
    p.write_text(good + "\n\n" + '{"clip_id": "x", "audio_path": "x.wav"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"val\.jsonl:3 \(clip 'x'\): missing field\(s\) captions"):
        read_manifest(p)
    p.write_text(good + "\n{not json\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"val\.jsonl:2: not valid JSON"):
        read_manifest(p)
    p.write_text(good + "\n" + good + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r":2: duplicate clip_id 'c0' \(first on line 1\)"):
        read_manifest(p)
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read_manifest(tmp_path / "nope.jsonl")


def test_validate_lists_every_problem_row(tmp_path):
    (tmp_path / "audio").mkdir()
    _tone(tmp_path / "audio" / "ok.wav")
    (tmp_path / "audio" / "empty.wav").write_bytes(b"")
    (tmp_path / "audio" / "text.wav").write_text("this is not audio")
    lines = [
        ClipRecord("ok", "audio/ok.wav", ("fine",)).to_json(),                    # 1 ok
        "{broken",                                                                # 2 bad JSON
        json.dumps({"clip_id": "m", "captions": ["x"]}),                          # 3 missing
        json.dumps({"clip_id": "six", "audio_path": "audio/ok.wav",
                    "captions": ["x"] * 6}),                                      # 4 >5 caps
        json.dumps({"clip_id": "none", "audio_path": "audio/ok.wav",
                    "captions": []}),                                             # 5 0 caps
        json.dumps({"clip_id": "blank", "audio_path": "audio/ok.wav",
                    "captions": ["x", ""]}),                                      # 6 empty cap
        ClipRecord("ok", "audio/ok.wav", ("dup",)).to_json(),                     # 7 duplicate
        ClipRecord("gone", "audio/gone.wav", ("x",)).to_json(),                   # 8 missing file
        ClipRecord("zero", "audio/empty.wav", ("x",)).to_json(),                  # 9 zero bytes
        ClipRecord("txt", "audio/text.wav", ("x",)).to_json(),                    # 10 not audio
        json.dumps({"clip_id": "extra", "audio_path": "audio/ok.wav", "captions": ["x"],
                    "colour": "red"}),                                            # 11 unknown
    ]
    p = tmp_path / "train.jsonl"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    probs = validate_manifest(p)
    assert all(isinstance(q, ManifestProblem) for q in probs)
    by_line = {q.line: q for q in probs}
    assert sorted(by_line) == list(range(2, 12))
    assert "not valid JSON" in by_line[2].message
    assert "missing field(s) audio_path" in by_line[3].message and by_line[3].clip_id == "m"
    assert "6 captions" in by_line[4].message
    assert "0 captions" in by_line[5].message
    assert "caption 1 is empty" in by_line[6].message
    assert "duplicate clip_id (first on line 1)" in by_line[7].message
    assert "not found" in by_line[8].message and by_line[8].clip_id == "gone"
    assert "unreadable" in by_line[9].message
    assert "unreadable" in by_line[10].message
    assert "unknown field(s) colour" in by_line[11].message
    # without audio checks the file-level problems disappear
    no_audio = {q.line for q in validate_manifest(p, check_audio=False)}
    assert no_audio == set(range(2, 8)) | {11}


def test_validate_empty_and_missing_manifest(tmp_path):
    p = tmp_path / "test.jsonl"
    p.write_text("\n")
    assert [q.message for q in validate_manifest(p)] == [f"manifest {p} has no records"]
    assert "not found" in validate_manifest(tmp_path / "x.jsonl")[0].message


def test_paths_helpers(tmp_path):
    assert manifest_path(tmp_path, "val") == tmp_path / "val.jsonl"
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        manifest_path(tmp_path, "dev")
    assert resolve_audio_path(_rec(0), tmp_path) == tmp_path / "audio" / "c0.wav"
    assert resolve_audio_path(_rec(0, audio_path="/x/y.wav"), tmp_path) == Path("/x/y.wav")


def test_cli_validate(tmp_path, capsys):
    good = tmp_path / "good"
    good.mkdir()
    _tone(good / "a.wav")
    write_manifest([ClipRecord("a", "a.wav", ("x",))], good / "test.jsonl")
    assert _main(["validate", str(good)]) == 0
    assert "ok" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    write_manifest([ClipRecord("a", "missing.wav", ("x",))], bad)
    assert _main(["validate", str(good / "test.jsonl"), str(bad)]) == 1
    out = capsys.readouterr().out
    assert "line 1 [a]: audio file" in out and "1 problem(s) in 2 manifest(s)" in out
    assert _main(["validate", "--no-audio", str(bad)]) == 0
    # as a real subprocess: the module entry point, exit status 1 and no import warning
    proc = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-m", "mltm.data.manifest",
         "validate", str(bad)],
        cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 1, proc.stderr
    assert "missing.wav" in proc.stdout and "not found" in proc.stdout

"""mltm.records: recorded experiment runs survive a round trip and bad files are named."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from mltm.provenance import provenance
from mltm.records import RECORD_FORMAT, Records, load_records

RESULT = {"best_epoch": 3, "test": {"plan": {"t2a": {"R@1": 12.5, "medR": 4.0}}}}
HISTORY = [{"epoch": 0, "train_loss": 1.5}, {"epoch": 1, "train_loss": 1.25}]


def make(config="cpu") -> Records:
    rec = Records(provenance=provenance("cpu", {"name": config, "seeds": [0, 1]}))
    rec.add(("debsfx", "m-LTM", 0.05, 0), RESULT, HISTORY)
    rec.add(("debsfx", "m-LTM", 0.05, 1), {**RESULT, "best_epoch": 5})
    rec.add((0.4, "m-LTM + POT (s=0.8)", 2), RESULT, HISTORY)
    rec.extra["transfer"] = [{"key": ["a", "b", "NT-Xent", 0], "results": {"x": 1.0}}]
    return rec


def test_round_trip_keeps_keys_types_histories_and_extra(tmp_path: Path):
    rec = make()
    path = rec.save(tmp_path / "retrieval" / "cpu" / "records.json")
    back = Records.load(path)
    assert back.runs == rec.runs
    assert list(back.runs) == list(rec.runs)  # insertion order too
    # Keys come back as tuples with their types: the float ε and the int seed are not strings.
    key = ("debsfx", "m-LTM", 0.05, 0)
    assert key in back.runs and all(type(a) is type(b) for a, b in zip(next(iter(back.runs)), key))
    assert back.histories == {key: HISTORY, (0.4, "m-LTM + POT (s=0.8)", 2): HISTORY}
    assert back.extra == rec.extra
    assert back.provenance == rec.provenance
    assert back.config == "cpu" and back.path == path


def test_label_names_config_device_commit_and_date(tmp_path: Path):
    rec = make()
    rec.provenance["wall_time_s"] = 1800.0
    label = rec.label()
    assert label.startswith("recorded run: config 'cpu' on ")
    assert rec.provenance["device"] in label
    assert rec.provenance["date"][:10] in label and label.endswith(", 30 min")


def test_load_records_prefers_full_then_cpu_and_returns_none_without_records(tmp_path: Path):
    assert load_records(tmp_path / "retrieval") is None
    make("cpu").save(tmp_path / "retrieval" / "cpu" / "records.json")
    assert load_records(tmp_path / "retrieval").config == "cpu"
    make("full").save(tmp_path / "retrieval" / "full" / "records.json")
    assert load_records(tmp_path / "retrieval").config == "full"
    assert load_records(tmp_path / "retrieval", prefer=("cpu",)).config == "cpu"


def test_each_run_is_recorded_once():
    rec = make()
    with pytest.raises(KeyError,
                       match=re.escape("run ('debsfx', 'm-LTM', 0.05, 0) is already recorded")):
        rec.add(["debsfx", "m-LTM", 0.05, 0], RESULT)


def test_key_parts_must_be_json_scalars():
    with pytest.raises(TypeError, match=re.escape("record key parts must be str, int, float, "
                                                  "bool or None, got tuple in ('a', (1, 2))")):
        Records().add(("a", (1, 2)), RESULT)


def test_bad_files_are_rejected_with_the_fix(tmp_path: Path):
    bad = tmp_path / "records.json"
    bad.write_text('{"runs": [')
    with pytest.raises(ValueError, match=re.escape(f"{bad} is not valid JSON")) as err:
        Records.load(bad)
    assert "re-run the experiment that writes it" in str(err.value)
    bad.write_text(json.dumps({"format": "something/2", "runs": []}))
    with pytest.raises(ValueError, match=re.escape(
            f"{bad} is not an mltm records file (format 'something/2', "
            f"expected '{RECORD_FORMAT}')")):
        Records.load(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match=re.escape("(format 'list', expected")):
        Records.load(bad)


def test_a_truncated_gzip_records_file_is_named_with_the_fix(tmp_path: Path):
    path = make().save(tmp_path / "records.json.gz")
    data = path.read_bytes()
    assert data[:2] == b"\x1f\x8b" and Records.load(path).runs == make().runs
    path.write_bytes(data[: len(data) // 2])  # a copy or a save cut short
    with pytest.raises(ValueError, match=re.escape(f"{path} is not a complete gzip file")) as err:
        Records.load(path)
    assert "re-run the" in str(err.value)
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF  # a damaged byte inside the deflate stream
    path.write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match=re.escape(f"{path} is not a complete gzip file")):
        Records.load(path)
    path.write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match=re.escape(f"{path} is not a complete gzip file")):
        Records.load(path)


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path: Path, monkeypatch):
    rec = make()
    path = rec.save(tmp_path / "records.json")
    before = path.read_bytes()
    rec.extra["unserialisable"] = object()  # json.dump fails half way through
    with pytest.raises(TypeError):
        rec.save(path)
    assert path.read_bytes() == before  # the old file is intact
    assert sorted(os.listdir(tmp_path)) == ["records.json"]

"""Tests for the AudioCaps, Clotho v2 and ESC-50 converters on tiny official-layout fixtures."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from mltm.data import AudioCaptionDataset, read_manifest, validate_manifest
from mltm.data.converters import prepare_audiocaps, prepare_clotho, prepare_esc50

REPO = Path(__file__).resolve().parents[2]


def _csv(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def _run(script, *args):
    return subprocess.run([sys.executable, f"data_scripts/{script}", *map(str, args)],
                          cwd=REPO, capture_output=True, text=True)


# -- AudioCaps -------------------------------------------------------------------------------

AC_HEADER = ["audiocap_id", "youtube_id", "start_time", "caption"]


@pytest.fixture
def audiocaps(tmp_path, tone):
    src = tmp_path / "audiocaps"
    _csv(src / "train.csv", AC_HEADER, [
        [1, "abc-123_x", 30, "A dog barks"],
        [2, "-def456", 0, "Rain falls on a roof"],
        [3, "ghi789", 10, "A car passes by"],
        [4, "missing1", 20, "Wind blows"],
    ])
    _csv(src / "val.csv", AC_HEADER,
         [[10 + k, "val0001", 40, f"val caption {k}"] for k in range(5)]
         + [[20 + k, "val0002", 5, f"other caption {k}"] for k in range(5)])
    _csv(src / "test.csv", AC_HEADER,
         [[30 + k, "tst0001", 0, f"test caption {k}"] for k in range(5)])
    # the three accepted namings, wav and flac
    tone(src / "audio" / "train" / "abc-123_x.wav", seconds=0.3)
    tone(src / "audio" / "train" / "Y-def456.flac", seconds=0.4, sr=44100)
    tone(src / "audio" / "train" / "ghi789_10.wav", seconds=0.2)
    tone(src / "audio" / "val" / "val0001.wav", seconds=0.3)
    tone(src / "val" / "Yval0002_5.wav", seconds=0.3)  # SRC/{split}/ also searched
    tone(src / "audio" / "test" / "tst0001_0.flac", seconds=0.3)
    return src


def test_audiocaps(audiocaps, tmp_path):
    out = tmp_path / "data" / "audiocaps"
    rep = prepare_audiocaps(audiocaps, out)
    assert rep.clips == {"train": 3, "val": 2, "test": 1}
    assert rep.pairs == {"train": 3, "val": 10, "test": 5}
    assert rep.num_skipped("train", "missing") == 1 and "missing1" in rep.summary()
    train = read_manifest(out / "train.jsonl")
    assert [r.clip_id for r in train] == ["abc-123_x", "-def456", "ghi789"]
    assert train[1].audio_path.endswith("Y-def456.flac")
    assert not Path(train[1].audio_path).is_absolute()
    assert train[0].duration == pytest.approx(0.3) and train[0].source == "AudioCaps"
    val = read_manifest(out / "val.jsonl")
    assert val[0].captions == tuple(f"val caption {k}" for k in range(5))
    for s in ("train", "val", "test"):
        assert validate_manifest(out / f"{s}.jsonl") == []
    assert "MIT" in (out / "LICENSE.md").read_text()
    ds = AudioCaptionDataset(out, "val", view="clips")  # loads through the relative paths
    assert ds[1]["audio"].shape == (9600,) and not ds.skip_report


def test_audiocaps_absolute_paths_and_errors(audiocaps, tmp_path):
    out = tmp_path / "o"
    prepare_audiocaps(audiocaps, out, splits=["test"], absolute_paths=True)
    (rec,) = read_manifest(out / "test.jsonl")
    assert Path(rec.audio_path).is_absolute() and Path(rec.audio_path).is_file()
    assert not (out / "train.jsonl").exists()
    _csv(audiocaps / "val.csv", ["id", "ytid", "start", "text"], [[1, "a", 0, "x"]])
    with pytest.raises(ValueError, match="expected `audiocap_id,youtube_id,start_time,caption`"):
        prepare_audiocaps(audiocaps, out)
    with pytest.raises(FileNotFoundError, match="AudioCaps release folder"):
        prepare_audiocaps(tmp_path / "nowhere", out)


def test_audiocaps_cli(audiocaps, tmp_path):
    out = tmp_path / "cli"
    p = _run("prepare_audiocaps.py", audiocaps, out, "--splits", "train")
    assert p.returncode == 0, p.stderr + p.stdout
    assert "train: 3 clips" in p.stdout and "missing" in p.stdout
    assert len(read_manifest(out / "train.jsonl")) == 3
    p = _run("prepare_audiocaps.py", tmp_path / "nowhere", out)
    assert p.returncode == 2 and "not found" in p.stdout


# -- Clotho ----------------------------------------------------------------------------------

CL_HEADER = ["file_name", "caption_1", "caption_2", "caption_3", "caption_4", "caption_5"]


@pytest.fixture
def clotho(tmp_path, tone):
    src = tmp_path / "clotho"
    parts = {"development": ["a b, c.wav", "dev2.wav", "gone.wav"],
             "validation": ["val1.wav"], "evaluation": ["ev1.wav", "ev2.wav"]}
    for part, names in parts.items():
        _csv(src / f"clotho_captions_{part}.csv", CL_HEADER,
             [[n] + [f"{n} caption {k}" for k in range(5)] for n in names])
        for n in names:
            if n != "gone.wav":
                tone(src / part / n, seconds=0.25, sr=44100)
    (src / "evaluation" / "ev2.wav").write_text("not audio at all")
    return src


def test_clotho(clotho, tmp_path):
    out = tmp_path / "clotho_out"
    rep = prepare_clotho(clotho, out)
    assert rep.clips == {"train": 2, "val": 1, "test": 1}
    assert rep.pairs == {"train": 10, "val": 5, "test": 5}
    assert rep.num_skipped("train", "missing") == 1 and rep.num_skipped("test", "not_audio") == 1
    train = read_manifest(out / "train.jsonl")
    assert train[0].clip_id == "a b, c.wav" and len(train[0].captions) == 5
    assert train[0].captions[4] == "a b, c.wav caption 4" and train[0].source == "Clotho v2"
    assert all(validate_manifest(out / f"{s}.jsonl") == [] for s in ("train", "val", "test"))
    ds = AudioCaptionDataset(out, "train")
    assert len(ds) == 10 and ds[0]["audio"].shape == (8000,)  # 0.25 s at 32 kHz


def test_clotho_bad_header_and_cli(clotho, tmp_path):
    p = _run("prepare_clotho.py", clotho, tmp_path / "o")
    assert p.returncode == 0 and "train: 2 clips, 10 audio-caption pairs" in p.stdout
    _csv(clotho / "clotho_captions_validation.csv", ["file", "c1", "c2", "c3", "c4", "c5"], [])
    with pytest.raises(ValueError, match="expected `file_name,caption_1,caption_2"):
        prepare_clotho(clotho, tmp_path / "o")
    p = _run("prepare_clotho.py", clotho, tmp_path / "o")
    assert p.returncode == 2 and "file_name,caption_1" in p.stdout


# -- ESC-50 ----------------------------------------------------------------------------------

ESC_HEADER = ["filename", "fold", "target", "category", "esc10", "src_file", "take"]


@pytest.fixture
def esc50(tmp_path, tone):
    src = tmp_path / "ESC-50-master"
    rows = []
    for fold in range(1, 6):
        for j, cat in enumerate(["dog", "crying_baby"]):
            name = f"{fold}-{100 + j}-A-{j}.wav"
            rows.append([name, fold, j, cat, "True", f"{100 + j}", "A"])
            if name != "5-101-A-1.wav":
                tone(src / "audio" / name, seconds=0.2, sr=44100)
    _csv(src / "meta" / "esc50.csv", ESC_HEADER, rows)
    return src


def test_esc50_defaults_to_all_five_folds(esc50, tmp_path):
    # The zero-shot protocol scores every clip: 5 folds x 2 rows, one file missing.
    rep = prepare_esc50(esc50, tmp_path / "esc")
    recs = read_manifest(tmp_path / "esc" / "test.jsonl")
    assert rep.num_skipped(reason="missing") == 1
    assert sorted(int(r.clip_id[0]) for r in recs) == [1, 1, 2, 2, 3, 3, 4, 4, 5]
    p = _run("prepare_esc50.py", esc50, tmp_path / "cli")
    assert p.returncode == 0 and "test: 9 clips" in p.stdout, p.stdout + p.stderr
    assert [r.clip_id for r in read_manifest(tmp_path / "cli" / "test.jsonl")] == \
        [r.clip_id for r in recs]


def test_esc50_fold_option_keeps_one_fold(esc50, tmp_path):
    p = _run("prepare_esc50.py", esc50, tmp_path / "f2", "--fold", "2")
    assert p.returncode == 0, p.stdout + p.stderr
    assert [r.clip_id for r in read_manifest(tmp_path / "f2" / "test.jsonl")] == \
        ["2-100-A-0", "2-101-A-1"]
    p = _run("prepare_esc50.py", esc50, tmp_path / "f6", "--fold", "6")
    assert p.returncode == 2 and "argument --fold: invalid choice: 6" in p.stderr
    p = _run("prepare_esc50.py", esc50, tmp_path / "both", "--fold", "5", "--folds", "4")
    assert p.returncode == 2 and "not allowed with argument" in p.stderr


def test_esc50_fold_5(esc50, tmp_path):
    out = tmp_path / "esc"
    rep = prepare_esc50(esc50, out, folds=(5,))
    (rec,) = read_manifest(out / "test.jsonl")  # fold 5 has 2 rows, one file missing
    assert rep.num_skipped(reason="missing") == 1 and "5-101-A-1.wav" in rep.summary()
    assert rec.captions == ("This is a sound of dog",) and rec.label == "dog"
    assert rec.group == "100" and rec.clip_id == "5-100-A-0" and rec.license == "CC-BY-NC-3.0"
    assert not (out / "train.jsonl").exists() and validate_manifest(out / "test.jsonl") == []


def test_esc50_all_folds_template_and_errors(esc50, tmp_path):
    out = tmp_path / "esc_all"
    prepare_esc50(esc50, out, folds=range(1, 6))
    recs = read_manifest(out / "test.jsonl")
    assert len(recs) == 9
    baby = [r for r in recs if r.label == "crying_baby"]
    assert baby[0].captions == ("This is a sound of crying baby",)  # underscores -> spaces
    prepare_esc50(esc50, out, folds=[2], template="the sound of a {category}.")
    assert read_manifest(out / "test.jsonl")[1].captions == ("the sound of a crying baby.",)
    p = _run("prepare_esc50.py", esc50, tmp_path / "cli", "--folds", "all")
    assert p.returncode == 0 and "test: 9 clips" in p.stdout
    with pytest.raises(ValueError, match="folds are 1 to 5"):
        prepare_esc50(esc50, out, folds=[6])
    with pytest.raises(ValueError, match="category"):
        prepare_esc50(esc50, out, template="no field")
    _csv(esc50 / "meta" / "esc50.csv", ["filename", "fold", "category"], [["x.wav", 1, "dog"]])
    with pytest.raises(ValueError,
                       match="expected `filename,fold,target,category,esc10,src_file,take`"):
        prepare_esc50(esc50, out)

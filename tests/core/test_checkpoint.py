"""Checkpoints hold tensors and plain data only: received files never run pickled code."""

from __future__ import annotations

import os
import pickle
import random
import uuid

import numpy as np
import pytest
import torch

from mltm.config import config_from_dict
from mltm.checkpoint import (
    CHECKPOINT_FORMAT,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from mltm.checkpoint import checkpoint_payload as _checkpoint_payload
from mltm.checkpoint import rng_state as _rng_state
from mltm.checkpoint import set_rng_state as _set_rng_state
from mltm.factory import build_loss_from_config
from mltm.model import build_model


class _Exploit:
    """Unpickling this runs ``touch <path>`` (``__reduce__`` returning os.system)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def small_state(tmp_path):
    cfg = config_from_dict({"model": {"joint_dim": 16, "hidden_dim": 32},
                            "loss": {"name": "mltm", "metric": {"kind": "full"}},
                            "out_dir": str(tmp_path), "seed": 3})
    torch.manual_seed(0)
    model = build_model(cfg.model, audio_dim=12, text_dim=10, with_encoders=False)
    loss = build_loss_from_config(cfg)
    opt = torch.optim.Adam([{"params": list(model.parameters()), "lr": 1e-3, "name": "heads"},
                            {"params": list(loss.parameters()), "lr": 1e-2, "name": "metric"}])
    a, t = model.project_audio(torch.randn(8, 12)), model.project_text(torch.randn(8, 10))
    loss(a, t).backward()
    opt.step()
    loss.project_()
    return cfg, model, loss, opt


def write(tmp_path, name="c.pt", epoch=4):
    cfg, model, loss, opt = small_state(tmp_path)
    history = [{"epoch": 0, "train_loss": np.float64(0.5), "steps": np.int64(3),
                "projections_computed": 0}]
    payload = _checkpoint_payload(cfg, epoch, model, loss, opt, history,
                                  {"epoch": 0, "score": 1.5}, {"audio": 12, "text": 10}, ())
    save_checkpoint(tmp_path / name, payload)
    return tmp_path / name, (cfg, model, loss, opt)


def test_round_trip_restores_model_loss_optimizer_and_rng_exactly(tmp_path):
    random.seed(11)
    np.random.seed(12)
    torch.manual_seed(13)
    np.random.randn()  # a cached gaussian in NumPy's state
    path, (cfg, model, loss, opt) = write(tmp_path)
    after_save = (torch.rand(5), np.random.rand(5), [random.random() for _ in range(5)],
                  np.random.standard_normal(3))
    cfg2, model2, loss2, ckpt = load_checkpoint(path, with_encoders=False)
    assert cfg2 == cfg and ckpt["format"] == CHECKPOINT_FORMAT == "mltm-checkpoint/2"
    assert ckpt["epoch"] == 4 and ckpt["best"] == {"epoch": 0, "score": 1.5}
    assert ckpt["history"] == [{"epoch": 0, "train_loss": 0.5, "steps": 3,
                                "projections_computed": 0}]
    assert type(ckpt["history"][0]["train_loss"]) is float  # NumPy scalars made plain
    for ours, theirs in ((model, model2), (loss, loss2)):
        a, b = ours.state_dict(), theirs.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the optimiser state restores exactly into a fresh optimiser of the same groups
    opt2 = torch.optim.Adam([{"params": list(model2.parameters()), "lr": 1e-3, "name": "heads"},
                             {"params": list(loss2.parameters()), "lr": 1e-2, "name": "metric"}])
    opt2.load_state_dict(ckpt["optimizer"])
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    assert s1["state"].keys() == s2["state"].keys()
    for i in s1["state"]:
        for k, v in s1["state"][i].items():
            assert torch.equal(v, s2["state"][i][k]), (i, k)
    # RNG: restoring the saved state replays exactly what followed the save
    _set_rng_state(ckpt["rng"])
    replay = (torch.rand(5), np.random.rand(5), [random.random() for _ in range(5)],
              np.random.standard_normal(3))
    assert torch.equal(after_save[0], replay[0])
    assert np.array_equal(after_save[1], replay[1]) and after_save[2] == replay[2]
    assert np.array_equal(after_save[3], replay[3])


def test_rng_state_is_plain_data():
    state = _rng_state()
    assert state["torch"].dtype == torch.uint8
    assert isinstance(state["numpy"]["keys"], list) and isinstance(state["python"], list)
    torch.save(state, buf := __import__("io").BytesIO())
    buf.seek(0)
    torch.load(buf, weights_only=True)  # no NumPy (or other) globals in it


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_crafted_pickle_is_refused_and_never_runs(tmp_path, writer):
    marker = tmp_path / f"pwned-{uuid.uuid4().hex}"
    bad = tmp_path / "best.pt"
    payload = {"format": CHECKPOINT_FORMAT, "config": {}, "model": _Exploit(marker)}
    if writer == "torch.save":
        torch.save(payload, bad)
    else:
        with open(bad, "wb") as f:
            pickle.dump(payload, f)
    for load in (read_checkpoint, load_checkpoint):
        with pytest.raises(ValueError) as e:
            load(bad)
        msg = str(e.value)
        assert msg.startswith(f"not an mltm checkpoint: {bad}: "), msg
        assert "\n" not in msg
    if writer == "torch.save":
        assert "pickled Python objects" in msg and "refused" in msg
    assert not marker.exists(), "unpickling ran the crafted code"
    # the crafted file really is an exploit under a plain torch.load
    if writer == "torch.save":
        torch.load(bad, weights_only=False)
        assert marker.exists()


def test_truncated_and_garbage_files_are_not_checkpoints(tmp_path):
    path, _ = write(tmp_path)
    data = path.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(4096))
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    for bad in (truncated, garbage, empty):
        with pytest.raises(ValueError) as e:
            load_checkpoint(bad)
        assert str(e.value).startswith(f"not an mltm checkpoint: {bad}: "), str(e.value)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_checkpoint(tmp_path / "absent.pt")


def test_other_formats_are_rejected(tmp_path):
    old = tmp_path / "old.pt"
    torch.save({"format": "mltm-checkpoint/1", "model": {}}, old)
    with pytest.raises(ValueError) as e:
        read_checkpoint(old)
    assert str(e.value) == (f"not an mltm checkpoint: {old}: format 'mltm-checkpoint/1', "
                            f"expected format 'mltm-checkpoint/2'")

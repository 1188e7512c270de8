"""Tests for mltm.encoders.aisfx: the wheel conversion, the network against the package's own
code, the front end against the package's librosa features, and length masking."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from mltm.data.frontend import LogMelFrontEnd, frontend_config_of
from mltm.data.specaugment import SpecAugment
from mltm.encoders.aisfx import (
    AISFX_WHEEL,
    AISFX_WHEEL_SHA256,
    AisfxEncoder,
    aisfx_frontend_config,
    convert_aisfx_wheel,
    default_aisfx_weights_path,
    load_aisfx_encoder,
    read_aisfx_metadata,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures"
REPO = Path(__file__).resolve().parents[2]


def _fixture_module():
    spec = importlib.util.spec_from_file_location(
        "make_aisfx_librosa_fixture", FIXTURES / "make_aisfx_librosa_fixture.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def original(aisfx_wheel, tmp_path_factory):
    """The package's own EmbeddingNet (from the wheel's cnn2d.py) with the pickled weights."""
    d = tmp_path_factory.mktemp("aisfx_src")
    with zipfile.ZipFile(aisfx_wheel) as z:
        z.extract("aisfx/models/cnn2d.py", d)
        blob = z.read("aisfx/models/checkpoint.pth")
    spec = importlib.util.spec_from_file_location("aisfx_cnn2d", d / "aisfx/models/cnn2d.py")
    cnn2d = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cnn2d)
    import io

    # The test may unpickle: this is the package's own loading path (weights_only=False).
    weights, ds_dict = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=False)
    model = cnn2d.CrossNet(cnn2d.EmbeddingNet("max", 3, 1, 64), ds_dict, "cpu")
    model.load_state_dict(weights)
    return model.eval(), weights


# -- conversion -------------------------------------------------------------------------------


def test_conversion_round_trip(aisfx_weights, original):
    _, weights = original
    meta = read_aisfx_metadata(aisfx_weights)
    assert meta["source_sha256"] == AISFX_WHEEL_SHA256
    assert meta["license"].startswith("CC BY 4.0")
    assert AISFX_WHEEL in meta["source"]
    enc = load_aisfx_encoder(aisfx_weights)
    sd = enc.state_dict()
    expected = {k[len("embedding_net."):]: v for k, v in weights.items()
                if k.startswith("embedding_net.")}
    assert set(sd) == set(expected) and len(sd) == 48
    for k, v in expected.items():
        assert torch.equal(sd[k], v), k
    assert not any(k.startswith("fc") for k in sd)  # dataset heads dropped
    assert sum(p.numel() for p in enc.parameters()) == 4_686_144


def test_embeddings_equal_the_packages_network(aisfx_weights, original, gen):
    model, _ = original
    enc = load_aisfx_encoder(aisfx_weights).eval()
    blocks = torch.rand(3, 100, 96, generator=gen)  # features lie in [0, 1]
    with torch.no_grad():
        ref = model.get_embedding(blocks)
        got = enc.embed_blocks(blocks)
        # A 250-frame clip = blocks [0:100], [100:200], [200:250] + 50 zero frames; the clip
        # embedding is the mean of the three block embeddings.
        clip = torch.rand(1, 96, 250, generator=gen)
        padded = torch.nn.functional.pad(clip, (0, 50)).transpose(1, 2).reshape(3, 100, 96)
        ref_clip = model.get_embedding(padded).mean(dim=0, keepdim=True)
        got_clip = enc(clip)
    assert got.shape == (3, 512)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_clip, ref_clip, atol=1e-5, rtol=1e-5)


def test_tampered_wheel_is_rejected(aisfx_wheel, tmp_path):
    bad = tmp_path / AISFX_WHEEL
    shutil.copyfile(aisfx_wheel, bad)
    with open(bad, "r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    actual = hashlib.sha256(bad.read_bytes()).hexdigest()
    msg = (
        f"{bad} is not the published {AISFX_WHEEL}: SHA-256 {actual}, expected "
        f"{AISFX_WHEEL_SHA256}; delete it and download it again with "
        "`python data_scripts/fetch_aisfx.py`"
    )
    out = tmp_path / "out.safetensors"
    with pytest.raises(ValueError, match=re.escape(msg)):
        convert_aisfx_wheel(bad, out)
    assert not out.exists()


def test_missing_weights_name_the_fetch_script(tmp_path):
    p = tmp_path / "none.safetensors"
    msg = (
        f"aisfx weights {p} not found: create them with `python data_scripts/fetch_aisfx.py` "
        "(downloads the aisfx 0.1.2 wheel from PyPI and converts it)"
    )
    with pytest.raises(FileNotFoundError, match=re.escape(msg)):
        load_aisfx_encoder(p)


def test_foreign_safetensors_is_rejected(tmp_path):
    from safetensors.torch import save_file

    p = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(1)}, str(p))
    with pytest.raises(ValueError, match="not an aisfx weights file made by convert_aisfx_wheel"):
        load_aisfx_encoder(p)


def test_default_weights_path_follows_mltm_data(monkeypatch, tmp_path):
    monkeypatch.setenv("MLTM_DATA", str(tmp_path))
    assert default_aisfx_weights_path() == tmp_path / "weights" / "aisfx-0.1.2.safetensors"
    monkeypatch.delenv("MLTM_DATA")
    assert default_aisfx_weights_path() == REPO / "data" / "weights" / "aisfx-0.1.2.safetensors"


def test_fetch_script_converts_once(aisfx_wheel, tmp_path, capsys):
    from data_scripts import fetch_aisfx  # the repo root is on pytest's pythonpath
    out = tmp_path / "w" / "aisfx.safetensors"
    assert fetch_aisfx.main(["--wheel", str(aisfx_wheel), "--out", str(out)]) == 0
    first = out.stat().st_mtime_ns
    assert "aisfx weights written" in capsys.readouterr().out
    assert fetch_aisfx.main(["--wheel", str(aisfx_wheel), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"aisfx weights up to date: {out}"
    assert out.stat().st_mtime_ns == first
    load_aisfx_encoder(out)


# -- front end ----------------------------------------------------------------------------------


def test_frontend_matches_the_packages_librosa_features():
    """Fixture: aisfx's spectrogram_librosa.compute_spectrogram (librosa 0.9.2) / 9.4578."""
    fx = _fixture_module()
    ref = np.load(FIXTURES / "aisfx_librosa_features.npz")["features"]
    cfg = aisfx_frontend_config()
    out = LogMelFrontEnd(cfg)(torch.from_numpy(fx.signal())).numpy()
    assert out.shape == ref.shape == (96, 130)
    assert np.abs(out - ref).max() < 1e-4  # measured 1.7e-5
    # The comparison can tell the settings apart: slaney filters or reflect padding are off.
    for change in ({"mel_norm": "slaney"}, {"pad_mode": "reflect"}):
        other = LogMelFrontEnd(dataclasses.replace(cfg, **change))(torch.from_numpy(fx.signal()))
        assert np.abs(other.numpy() - ref).max() > 0.05, change


def test_encoder_owns_its_frontend_config():
    enc = AisfxEncoder()
    assert frontend_config_of(enc) == aisfx_frontend_config()
    assert not any("frontend" in k for k in enc.state_dict())
    ok = AisfxEncoder(frontend_config=aisfx_frontend_config(max_seconds=5.0))
    assert ok.frontend_config.max_seconds == 5.0
    msg = ("AisfxEncoder's weights were trained on aisfx's features: only the clip policy may "
           "change; build the config with dataclasses.replace(aisfx_frontend_config(), "
           "max_seconds=...)")
    with pytest.raises(ValueError, match=re.escape(msg)):
        AisfxEncoder(frontend_config=dataclasses.replace(aisfx_frontend_config(), n_mels=64))


# -- clip embedding -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def random_encoder():
    torch.manual_seed(0)
    enc = AisfxEncoder().eval()
    # Non-trivial batch-norm statistics, so eval mode is not the identity.
    for m in enc.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return enc


def test_zero_padding_with_lengths_gives_the_unpadded_embedding(random_encoder, gen):
    sr = 44100
    a = 0.3 * torch.randn(int(1.2 * sr), generator=gen)  # 52 frames: one partial block
    b = 0.3 * torch.randn(int(2.6 * sr), generator=gen)  # 112 frames: two blocks
    batch = torch.zeros(2, b.numel() + sr)  # extra padding even for the longest clip
    batch[:, b.numel():] = 1.0  # non-zero padding (the encoder zeroes it)
    batch[0, : a.numel()] = a
    batch[1, : b.numel()] = b
    lengths = torch.tensor([a.numel(), b.numel()])
    with torch.no_grad():
        alone = torch.cat([random_encoder(a[None]), random_encoder(b[None])])
        together = random_encoder(batch, lengths)
        unmasked = random_encoder(batch)
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
    # Without lengths the padding counts as audio: clip a gets two more (silent) blocks.
    assert (unmasked[0] - alone[0]).abs().max() > 1e-3


def test_features_input_equals_waveform_input(random_encoder, gen):
    cfg = random_encoder.frontend_config
    w = 0.3 * torch.randn(2, 2 * 44100, generator=gen)
    w[1, 44100:] = 0.0  # zero-padded, as the data pipeline pads
    lengths = torch.tensor([2 * 44100, 44100])
    frames = cfg.frames_for(lengths)
    with torch.no_grad():
        feats = random_encoder.frontend(w)
        torch.testing.assert_close(random_encoder(feats, frames), random_encoder(w, lengths))


def test_spec_augment_only_in_training(gen):
    torch.manual_seed(1)
    enc = AisfxEncoder(spec_augment=True)
    w = 0.3 * torch.randn(1, 2 * 44100, generator=gen)
    enc.eval()
    with torch.no_grad():
        augmenting = enc(w)
        enc.spec_augment = None
        torch.testing.assert_close(enc(w), augmenting)  # no masks in eval mode
        enc.spec_augment = SpecAugment()
        enc.train()
        assert (enc(w) - enc(w)).abs().max() > 1e-4  # fresh masks on every call


def test_bad_inputs_have_clear_errors(random_encoder):
    with pytest.raises(ValueError, match=re.escape(
            "AisfxEncoder takes a waveform batch [B, T] or log-mel features [B, 96, n_frames]; "
            "got shape (44100,)")):
        random_encoder(torch.zeros(44100))
    with pytest.raises(ValueError, match=re.escape(
            "lengths must be in [1, 1000] (the padded length); got min 0, max 1001")):
        random_encoder(torch.zeros(2, 1000), torch.tensor([0, 1001]))


def test_build_audio_encoder_loads_the_converted_weights(aisfx_weights, monkeypatch, tmp_path):
    from mltm.encoders import build_audio_encoder, is_frozen

    enc = build_audio_encoder("aisfx", weights=aisfx_weights, freeze=True)
    assert is_frozen(enc) and enc.out_dim == 512
    ref = load_aisfx_encoder(aisfx_weights).state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in enc.state_dict().items())
    monkeypatch.setenv("MLTM_DATA", str(tmp_path))
    for weights in (None, "pretrained"):  # the default is the pretrained file
        with pytest.raises(FileNotFoundError, match="python data_scripts/fetch_aisfx.py"):
            build_audio_encoder("aisfx", weights=weights)
    (tmp_path / "weights").mkdir()
    shutil.copyfile(aisfx_weights, tmp_path / "weights" / "aisfx-0.1.2.safetensors")
    for weights in (None, "pretrained"):
        enc = build_audio_encoder("aisfx", weights=weights)
        assert torch.equal(enc.conv_block4.conv2.weight, ref["conv_block4.conv2.weight"])
    random = build_audio_encoder("aisfx", weights="random")
    assert not torch.equal(random.conv_block4.conv2.weight, ref["conv_block4.conv2.weight"])


def test_runs_on_every_device(random_encoder, device, gen):
    w = 0.3 * torch.randn(2, 44100, generator=gen)
    lengths = torch.tensor([44100, 30000])
    enc = AisfxEncoder().eval()
    enc.load_state_dict(random_encoder.state_dict())
    with torch.no_grad():
        ref = enc(w, lengths)
        out = enc.to(device)(w.to(device), lengths.to(device))
    assert out.device.type == device.type
    torch.testing.assert_close(out.cpu(), ref, atol=1e-4, rtol=1e-4)

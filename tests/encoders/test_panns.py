"""Tests for mltm.encoders.panns: official checkpoint layout, loading, masking, inputs.

Inputs are 0.5 s or shorter at 32 kHz so a forward pass takes well under a second on two CPU
cores.
"""

from __future__ import annotations

import re

import pytest
import torch

from mltm.data.frontend import LogMelConfig, frontend_config_of
from mltm.encoders import build_audio_encoder, is_frozen
from mltm.encoders.panns import Cnn14, ResNet38, load_panns_checkpoint

SR = 32000


def _randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random batch-norm affine parameters and statistics (PANNs zero-initialises the last BN
    weight of every residual block, which would hide wrongly loaded residual branches)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = torch.empty(n).uniform_(0.5, 1.5, generator=g)
            m.bias.data = torch.empty(n).uniform_(-0.1, 0.1, generator=g)
            m.running_mean = torch.empty(n).uniform_(-0.1, 0.1, generator=g)
            m.running_var = torch.empty(n).uniform_(0.5, 1.5, generator=g)
            m.num_batches_tracked.fill_(123)
    return model


def _official_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s tensors plus what the official files also hold: extractor buffers, heads."""
    sd = dict(model.state_dict())
    sd["spectrogram_extractor.stft.conv_real.weight"] = torch.randn(513, 1, 1024)
    sd["spectrogram_extractor.stft.conv_imag.weight"] = torch.randn(513, 1, 1024)
    sd["logmel_extractor.melW"] = torch.rand(513, 64)
    sd["fc1.weight"], sd["fc1.bias"] = torch.randn(2048, 2048), torch.randn(2048)
    sd["fc_audioset.weight"], sd["fc_audioset.bias"] = torch.randn(527, 2048), torch.randn(527)
    return sd


OFFICIAL_KEYS = {  # names and shapes as in Cnn14_mAP=0.431.pth / ResNet38_mAP=0.434.pth
    Cnn14: {
        "bn0.running_var": (64,),
        "conv_block1.conv1.weight": (64, 1, 3, 3),
        "conv_block6.conv2.weight": (2048, 2048, 3, 3),
        "conv_block6.bn2.num_batches_tracked": (),
    },
    ResNet38: {
        "bn0.weight": (64,),
        "conv_block1.conv1.weight": (64, 1, 3, 3),
        "resnet.layer1.0.conv1.weight": (64, 64, 3, 3),
        "resnet.layer2.0.downsample.1.weight": (128, 64, 1, 1),
        "resnet.layer2.0.downsample.2.running_mean": (128,),
        "resnet.layer3.5.bn2.weight": (256,),
        "resnet.layer4.2.conv2.weight": (512, 512, 3, 3),
        "conv_block_after1.conv1.weight": (2048, 512, 3, 3),
    },
}
#: Official parameter counts (PANNs paper / checkpoints) minus fc1 (4,196,352) and
#: fc_audioset (1,079,823): Cnn14 80,753,615 and ResNet38 73,783,247 in total.
BODY_PARAMS = {Cnn14: 75_477_440, ResNet38: 68_507_072}


@pytest.mark.parametrize("cls", [Cnn14, ResNet38])
def test_architecture_has_the_official_names_and_sizes(cls):
    model = cls()
    sd = model.state_dict()
    for k, shape in OFFICIAL_KEYS[cls].items():
        assert tuple(sd[k].shape) == shape, k
    assert sum(p.numel() for p in model.parameters()) == BODY_PARAMS[cls]
    assert not any(k.startswith(("fc", "spectrogram_extractor", "logmel_extractor", "frontend"))
                   for k in sd)
    assert model.out_dim == 2048
    assert frontend_config_of(model) == LogMelConfig()  # the paper's front end


@pytest.mark.parametrize("cls", [Cnn14, ResNet38])
def test_official_checkpoint_round_trip(cls, tmp_path, gen):
    torch.manual_seed(0)
    source = _randomise(cls()).eval()
    path = tmp_path / "panns.pth"
    torch.save({"model": _official_state(source), "iteration": 0}, path)
    torch.manual_seed(1)
    target = cls().eval()
    report = load_panns_checkpoint(target, path)
    assert report.loaded == sorted(source.state_dict())
    assert report.skipped == sorted([
        "fc1.bias", "fc1.weight", "fc_audioset.bias", "fc_audioset.weight",
        "logmel_extractor.melW", "spectrogram_extractor.stft.conv_imag.weight",
        "spectrogram_extractor.stft.conv_real.weight"])
    assert report.missing == [] and report.unexpected == []
    w = 0.1 * torch.randn(1, SR // 4, generator=gen)
    with torch.no_grad():
        expected, got = source(w), target(w)
    assert expected.shape == (1, 2048)
    torch.testing.assert_close(got, expected, atol=0, rtol=0)


def test_not_a_checkpoint_and_mismatches_are_clear_errors(tmp_path):
    model = Cnn14()
    bare = tmp_path / "bare.pth"
    torch.save({"bn0.weight": torch.ones(64)}, bare)  # a state dict without the "model" entry
    with pytest.raises(ValueError, match=re.escape(
            f"{bare} is not a PANNs checkpoint: expected a dict whose 'model' entry is a state "
            "dict of tensors (the layout of the official checkpoints)")):
        load_panns_checkpoint(model, bare)

    pickled = tmp_path / "pickled.pth"
    torch.save({"model": {"bn0.weight": torch.ones(64)}, "config": object()}, pickled)
    with pytest.raises(ValueError, match=re.escape(
            f"{pickled} is not a PANNs checkpoint: torch.load(weights_only=True) cannot read it")):
        load_panns_checkpoint(model, pickled)

    foreign = tmp_path / "foreign.pth"
    torch.save({"model": {"encoder.weight": torch.ones(3)}}, foreign)
    with pytest.raises(ValueError, match=re.escape(
            f"{foreign} is not a PANNs Cnn14 checkpoint: none of its 1 tensors (encoder.weight) "
            "is a tensor of the model")):
        load_panns_checkpoint(model, foreign)

    shape = tmp_path / "shape.pth"
    torch.save({"model": {"bn0.weight": torch.ones(128)}}, shape)
    with pytest.raises(ValueError, match=re.escape(
            f"{shape} does not fit Cnn14: 1 tensors have other shapes (bn0.weight: checkpoint "
            "(128,), model (64,))")):
        load_panns_checkpoint(model, shape)

    with pytest.raises(FileNotFoundError, match=re.escape(
            f"PANNs checkpoint {tmp_path / 'none.pth'} not found")):
        load_panns_checkpoint(model, tmp_path / "none.pth")


def test_checkpoint_of_another_architecture_needs_strict_false(tmp_path):
    """Cnn14 and ResNet38 share bn0 and conv_block1; everything else is missing/unknown."""
    cnn = Cnn14()
    path = tmp_path / "cnn14.pth"
    # The first three blocks of a Cnn14 checkpoint (the full one is 320 MB to write).
    part = {k: v for k, v in _official_state(cnn).items()
            if k.startswith(("bn0.", "conv_block1.", "conv_block2.", "conv_block3.", "fc"))}
    torch.save({"model": part}, path)
    res = ResNet38()
    with pytest.raises(ValueError, match=r"does not fit ResNet38: \d+ model tensors missing \("
                       r"conv_block_after1\..*checkpoint tensors unknown \(conv_block2\."):
        load_panns_checkpoint(res, path)
    report = load_panns_checkpoint(res, path, strict=False)
    assert report.loaded == sorted(k for k in cnn.state_dict()
                                   if k.startswith(("bn0.", "conv_block1.")))
    assert torch.equal(res.conv_block1.conv1.weight, cnn.conv_block1.conv1.weight)
    assert "conv_block3.conv2.weight" in report.unexpected
    assert "resnet.layer1.0.conv1.weight" in report.missing


def test_padding_content_is_ignored_when_lengths_are_given(gen):
    torch.manual_seed(0)
    model = _randomise(Cnn14()).eval()
    clip = 0.1 * torch.randn(int(0.3 * SR), generator=gen)
    batch = torch.zeros(2, SR // 2)
    batch[:, : clip.numel()] = clip
    batch[1, clip.numel():] = torch.randn(SR // 2 - clip.numel(), generator=gen)  # garbage
    lengths = torch.tensor([clip.numel()] * 2)
    with torch.no_grad():
        masked = model(batch, lengths)
        unmasked = model(batch)
    torch.testing.assert_close(masked[0], masked[1])
    assert (unmasked[0] - unmasked[1]).abs().max() > 1e-3
    # The clip alone is close to, not equal to, the masked padded clip: the 3x3 convolutions
    # near its end see zeros (here: 30 frames padded to 32) instead of the padding frames.
    with torch.no_grad():
        alone = model(clip[None])
    assert torch.nn.functional.cosine_similarity(alone[0], masked[0], dim=0) > 0.99


def test_features_input_and_short_clips(gen):
    torch.manual_seed(0)
    model = _randomise(Cnn14()).eval()
    cfg = model.frontend_config
    n = int(0.3 * SR)
    w = torch.zeros(2, n)
    w[0] = 0.1 * torch.randn(n, generator=gen)
    w[1, :3200] = 0.1 * torch.randn(3200, generator=gen)  # 0.1 s: 11 frames < 32
    lengths = torch.tensor([n, 3200])
    with torch.no_grad():
        from_wave = model(w, lengths)
        from_feats = model(model.frontend(w), cfg.frames_for(lengths))
        short = model(w[1:, :3200])
    torch.testing.assert_close(from_feats, from_wave)
    assert short.shape == (1, 2048) and torch.isfinite(short).all()


def test_spec_augment_and_dropout_only_in_training(gen):
    torch.manual_seed(0)
    model = build_audio_encoder("cnn14", spec_augment=True)
    w = 0.1 * torch.randn(1, SR // 4, generator=gen)
    with torch.no_grad():
        augmenting = model.eval()(w)
        model.spec_augment = None
        torch.testing.assert_close(model(w), augmenting)  # no masks in eval mode
        model.train()
        assert (model(w) - model(w)).abs().max() > 1e-4


def test_build_audio_encoder_names_and_freezing():
    with pytest.raises(ValueError, match=re.escape(
            "unknown audio encoder 'vggish'; choose one of aisfx, cnn14, resnet38")):
        build_audio_encoder("vggish")
    with pytest.raises(ValueError, match=re.escape(
            "no pretrained resnet38 weights can be obtained offline: download "
            "ResNet38_mAP=0.434.pth from Zenodo record 3987831 and pass its path as weights")):
        build_audio_encoder("resnet38", weights="pretrained")
    model = build_audio_encoder("resnet38", freeze=True, block_dropout=0.1)
    assert isinstance(model, ResNet38) and is_frozen(model)
    assert model.resnet.layer1[0].dropout == 0.1
    assert not any(p.requires_grad for p in model.parameters())
    model.train()
    assert not model.training

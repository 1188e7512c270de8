"""mltm.embed: portable encoder outputs.

A float64 copy of the encoder, 16-bit rounding, cache keys.
"""

from __future__ import annotations

import torch
from torch import nn

from mltm.embed import encode_texts, encoder_in
from mltm.numerics import round_significant


CALLS: list[int] = []


class ToyTextEncoder(nn.Module):
    """Characters -> a bag of embeddings -> a linear layer: float32 parameters like the real one."""

    out_dim = 8

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.table = nn.Parameter(torch.randn(128, 16, generator=g))
        self.proj = nn.Linear(16, self.out_dim)

    def forward(self, texts):
        CALLS.append(len(texts))  # module-level: the float64 copy counts too
        dtype = self.table.dtype
        rows = [self.table[torch.tensor([ord(c) % 128 for c in t])].mean(0) for t in texts]
        return self.proj(torch.stack(rows).to(dtype))


def test_outputs_are_the_float64_forward_rounded_to_16_bits(tmp_path, monkeypatch):
    monkeypatch.setenv("MLTM_CACHE", str(tmp_path))
    enc = ToyTextEncoder()
    texts = ["a dog barks", "rain on a roof", "a door slams twice"]
    got = encode_texts(enc, texts)
    want = round_significant(encoder_in(enc, torch.float64, "cpu")(texts).detach(), 16).float()
    assert got.dtype == torch.float32 and torch.equal(got, want)
    assert enc.table.dtype == torch.float32  # the caller's encoder is not cast
    plain = encode_texts(enc, texts, dtype=torch.float32, significant_bits=None, use_cache=False)
    assert torch.allclose(plain, got, rtol=1e-4, atol=1e-6) and not torch.equal(plain, got)


def test_precision_is_part_of_the_cache_key(tmp_path, monkeypatch):
    monkeypatch.setenv("MLTM_CACHE", str(tmp_path))
    enc = ToyTextEncoder()
    texts = ["a bell rings"]
    CALLS.clear()
    encode_texts(enc, texts)
    encode_texts(enc, texts)  # hit
    n_default = len(CALLS)
    encode_texts(enc, texts, significant_bits=12)  # other bits: recomputed
    encode_texts(enc, texts, dtype=torch.float32)  # other dtype: recomputed
    assert (n_default, len(CALLS)) == (1, 3)
    assert len(list((tmp_path / "embeddings").glob("text-*.pt"))) == 3


def test_encoder_in_copies_only_when_the_dtype_changes():
    enc = ToyTextEncoder()
    assert encoder_in(enc, torch.float32, "cpu") is enc
    copy = encoder_in(enc, torch.float64, "cpu")
    assert copy is not enc and copy.table.dtype == torch.float64 and not copy.training
    assert torch.equal(copy.table.float(), enc.table)

"""Temporal heads and the frame/token encoder outputs they train on.

* aisfx frames (``AisfxEncoder.frame_embeddings``) and MiniLM tokens
  (``TextEncoder.token_embeddings``): shapes, lengths, and the pooled outputs recovered
  from them exactly;
* :class:`AttentionPoolingHead` and :class:`TransformerHead`: shapes, masking (a padded
  batch equals each item alone, to 1e-12 in float64), order;
* the frame/token caches (:mod:`mltm.embed`): their own keys, the precision rules;
* training and evaluation with temporal heads on a synthetic dataset, end to end and
  deterministic.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from mltm.config import config_from_dict
from mltm.data import AudioCaptionDataset, ClipRecord, write_manifest
from mltm.embed import encode_clip_frames, encode_clips, encode_text_tokens, encode_texts
from mltm.encoders.aisfx import (
    FRAME_HOP_SECONDS,
    AisfxEncoder,
    aisfx_frame_lengths,
    pool_aisfx_frames,
)
from mltm.encoders.heads import AttentionPoolingHead, TransformerHead, build_head
from mltm.model import build_model
from mltm.numerics import default_dtype, round_significant

SR = 44100


def _heads(in_dim=12, out_dim=6):
    torch.manual_seed(0)
    with default_dtype(torch.float64):
        return {
            "attention": AttentionPoolingHead(in_dim, out_dim, hidden_dim=10),
            "transformer": TransformerHead(in_dim, out_dim, hidden_dim=10, dim=8, num_layers=2,
                                           num_heads=2, max_positions=16),
        }


# -- heads ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["attention", "transformer"])
def test_head_shapes_dtype_and_unit_outputs(kind, gen):
    head = _heads()[kind]
    assert all(p.dtype == torch.float64 for p in head.parameters())
    x = torch.randn(5, 9, 12, generator=gen, dtype=torch.float64)
    y = head(x, torch.tensor([9, 1, 4, 7, 2]))
    assert y.shape == (5, 6) and y.dtype == torch.float64
    assert torch.allclose(y.norm(dim=1), torch.ones(5, dtype=torch.float64))
    assert torch.equal(head(x), head(x, torch.full((5,), 9)))  # no lengths: all valid


@pytest.mark.parametrize("kind", ["attention", "transformer"])
def test_padded_batch_equals_each_item_alone(kind, gen):
    head = _heads()[kind].eval()
    lengths = [7, 1, 4, 11]
    items = [torch.randn(n, 12, generator=gen, dtype=torch.float64) for n in lengths]
    batch = torch.full((4, 13, 12), 1e3, dtype=torch.float64)  # loud garbage in the padding
    for i, item in enumerate(items):
        batch[i, : len(item)] = item
    padded = head(batch, torch.tensor(lengths))
    alone = torch.cat([head(item[None]) for item in items])
    torch.testing.assert_close(padded, alone, rtol=0, atol=1e-12)


def test_only_the_transformer_hears_the_order(gen):
    heads = _heads()
    x = torch.randn(1, 6, 12, generator=gen, dtype=torch.float64)
    reversed_ = x.flip(1)
    attn, tr = heads["attention"].eval(), heads["transformer"].eval()
    torch.testing.assert_close(attn(x), attn(reversed_), rtol=0, atol=1e-12)
    assert (tr(x) - tr(reversed_)).abs().max() > 1e-3


def test_seeded_heads_are_reproducible(gen):
    a, b = _heads()["transformer"], _heads()["transformer"]
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q), name


def test_head_errors(gen):
    heads = _heads()
    with pytest.raises(ValueError, match=r"sequences \[B, L, 12\].*not pooled vectors"):
        heads["attention"](torch.randn(3, 12))
    with pytest.raises(ValueError, match=r"lengths must be in \[1, 4\]"):
        heads["attention"](torch.randn(2, 4, 12, dtype=torch.float64), torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="raise model.max_positions"):
        heads["transformer"](torch.randn(1, 17, 12, dtype=torch.float64))
    with pytest.raises(ValueError, match="unknown head 'gru'; choose one of linear, attention"):
        build_head("gru", 4, 4, hidden_dim=4)


def test_config_errors_name_the_fix():
    def check(**model):
        build_model(config_from_dict({"model": model}).model, audio_dim=512, text_dim=384,
                    with_encoders=False)

    with pytest.raises(ValueError, match="^model.audio_head=transformer trains on the frozen "
                                         "encoder's cached frames: set model.freeze_audio=true"):
        check(audio_head="transformer", freeze_audio=False)
    with pytest.raises(ValueError, match="needs frame outputs, which only the aisfx audio "
                                         "encoder has"):
        check(audio_head="attention", audio_encoder="cnn14")
    with pytest.raises(ValueError, match="model.text_head 'lstm': choose one of"):
        check(text_head="lstm")


def test_linear_heads_take_no_lengths():
    model = build_model(config_from_dict({}).model, audio_dim=8, text_dim=8, with_encoders=False)
    with pytest.raises(ValueError, match="the audio head is linear"):
        model.project_audio(torch.randn(2, 3, 8), torch.tensor([3, 2]))


# -- encoder sequence outputs ---------------------------------------------------------------


@pytest.fixture(scope="module")
def random_aisfx():
    torch.manual_seed(0)
    return AisfxEncoder(freeze=True).double()


def test_aisfx_frames_recover_the_pooled_embedding_exactly(random_aisfx):
    g = torch.Generator().manual_seed(1)
    seconds = [10.0, 4.5, 2.3, 0.4]
    wave = 0.1 * torch.randn(len(seconds), int(SR * max(seconds)), generator=g,
                             dtype=torch.float64)
    lengths = torch.tensor([int(SR * s) for s in seconds])
    with torch.no_grad():
        pooled = random_aisfx(wave, lengths)
        frames, frame_lengths = random_aisfx.frame_embeddings(wave, lengths)
        alone = [random_aisfx.frame_embeddings(wave[i:i + 1, : lengths[i]]) for i in range(4)]
    # 431 STFT frames (5 blocks) for 10 s, at a hop of 24 STFT frames (0.557 s)
    assert frames.shape == (4, 20, 512) and frame_lengths.tolist() == [18, 8, 4, 1]
    assert FRAME_HOP_SECONDS == pytest.approx(0.5573, abs=1e-4)
    assert torch.equal(pool_aisfx_frames(frames, frame_lengths), pooled)
    for i, (f, n) in enumerate(alone):  # the lengths mark the padding; real frames as alone
        assert int(n) == frame_lengths[i]
        torch.testing.assert_close(frames[i, :n], f[0, :n], rtol=0, atol=1e-12)
    assert bool((frames[1, 8:] == 0).all())  # blocks without real audio are zero


def test_aisfx_frame_lengths_are_the_frames_starting_inside_the_audio():
    v = torch.arange(1, 501)
    starts = torch.tensor([100 * b + 24 * j for b in range(5) for j in range(4)])
    want = (starts[None, :] < v[:, None]).sum(dim=1)
    assert torch.equal(aisfx_frame_lengths(v), want)


def _minilm(pooling):
    from mltm.encoders.text import TextEncoder, default_text_encoder_path

    try:
        default_text_encoder_path()
    except ModuleNotFoundError as e:
        pytest.skip(str(e))
    return TextEncoder(pooling=pooling, freeze=True).double()


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_text_tokens_recover_the_pooled_output_exactly(pooling):
    from mltm.encoders.text import pool_tokens

    enc = _minilm(pooling)
    captions = ["a dog barks, then a door slams", "rain", "a door slams, then a dog barks"]
    with torch.no_grad():
        pooled = enc(captions)
        tokens, lengths = enc.token_embeddings(captions)
    assert tokens.shape == (3, int(lengths.max()), 384) and lengths[1] == 3  # [CLS] rain [SEP]
    assert bool((tokens[1, 3:] == 0).all())
    assert torch.equal(pool_tokens(tokens, lengths, pooling), pooled)


# -- caches ---------------------------------------------------------------------------------


class ToyTokenEncoder(torch.nn.Module):
    """Characters -> embeddings per character (tokens) or their mean (pooled)."""

    out_dim = 4

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.table = torch.nn.Parameter(torch.randn(128, 4, generator=g))

    def token_embeddings(self, texts):
        n = max(len(t) for t in texts)
        out = torch.zeros(len(texts), n, 4, dtype=self.table.dtype)
        for i, t in enumerate(texts):
            out[i, : len(t)] = self.table[torch.tensor([ord(c) % 128 for c in t])] / 3
        return out, torch.tensor([len(t) for t in texts])

    def forward(self, texts):
        tokens, lengths = self.token_embeddings(texts)
        return tokens.sum(1) / lengths[:, None]


def test_token_cache_has_its_own_key_and_the_precision_rules(tmp_path, monkeypatch):
    monkeypatch.setenv("MLTM_CACHE", str(tmp_path))
    enc = ToyTokenEncoder()
    texts = ["a bell", "rain on a roof", "ok"]
    pooled = encode_texts(enc, texts)
    out = encode_text_tokens(enc, texts)
    again = encode_text_tokens(enc, texts)
    encode_text_tokens(enc, texts, significant_bits=12)
    names = [p.name for p in (tmp_path / "embeddings").glob("*.pt")]
    # pooled, tokens, tokens at 12 bits: three entries, two of kind text-tokens
    assert len(names) == 3 and sum(n.startswith("text-tokens-") for n in names) == 2
    assert out["tokens"].shape == (3, 14, 4) and out["lengths"].tolist() == [6, 14, 2]
    assert torch.equal(again["tokens"], out["tokens"])
    want, _ = enc.double().token_embeddings(texts)
    assert out["tokens"].dtype == torch.float32
    assert torch.equal(out["tokens"], round_significant(want.detach(), 16).float())
    assert not torch.equal(pooled, out["tokens"].sum(1) / out["lengths"][:, None])  # own rounding


def _write_clips(root, n_clips=10, seconds=(3.0, 1.0, 2.5, 0.5, 4.0),
                 splits=("train", "val", "test")):
    """A tiny dataset: noise bursts at two positions (early/late) per clip, 2 captions each."""
    rng = np.random.default_rng(0)
    recs = []
    for i in range(n_clips):
        s = seconds[i % len(seconds)]
        x = 0.01 * rng.standard_normal(int(SR * s))
        at = 0 if i % 2 else len(x) // 2
        x[at: at + len(x) // 3] += 0.3 * np.sin(np.arange(len(x) // 3) * (0.05 + 0.02 * i))
        (root / "audio").mkdir(parents=True, exist_ok=True)
        sf.write(root / "audio" / f"c{i}.wav", x.astype(np.float32), SR)
        recs.append(ClipRecord(f"c{i}", f"audio/c{i}.wav",
                               (f"tone {i} {'early' if i % 2 else 'late'}", f"sound number {i}"),
                               label=f"l{i % 3}"))
    for split in splits:
        write_manifest(recs, root / f"{split}.jsonl")
    return root


def test_frame_cache_key_differs_from_pooled_and_matches_to_the_rounding(tmp_path, monkeypatch,
                                                                         random_aisfx):
    monkeypatch.setenv("MLTM_CACHE", str(tmp_path / "cache"))
    root = _write_clips(tmp_path / "ds", n_clips=4, splits=("test",))
    ds = AudioCaptionDataset(root, "test", frontend=random_aisfx, view="clips", output="waveform")
    pooled = encode_clips(random_aisfx, ds, batch_size=3)
    frames = encode_clip_frames(random_aisfx, ds, batch_size=3)
    hit = encode_clip_frames(random_aisfx, ds, batch_size=3)
    files = sorted(p.name for p in (tmp_path / "cache" / "embeddings").glob("*.pt"))
    assert len(files) == 2 and sum(f.startswith("audio-frames-") for f in files) == 1
    assert torch.equal(hit["frames"], frames["frames"])
    assert frames["frames"].dtype == torch.float32 and frames["valid"].all()
    assert frames["frames"].shape == (4, 8, 512)  # 4 s: 2 blocks of 4 frames
    samples = torch.tensor([int(SR * s) for s in (3.0, 1.0, 2.5, 0.5)])
    stft_frames = random_aisfx.frontend_config.frames_for(samples)
    assert frames["lengths"].tolist() == aisfx_frame_lengths(stft_frames).tolist() == [6, 2, 5, 1]
    assert torch.equal(round_significant(frames["frames"].double(), 16).float(), frames["frames"])
    recovered = pool_aisfx_frames(frames["frames"].double(), frames["lengths"])
    torch.testing.assert_close(recovered, pooled["features"].double(), rtol=2**-15, atol=0)
    encode_clip_frames(random_aisfx, ds, batch_size=3, dtype=torch.float32, significant_bits=None)
    assert len(list((tmp_path / "cache" / "embeddings").glob("audio-frames-*.pt"))) == 2


def test_sharded_cache_equals_one_file_and_resumes_at_the_missing_shard(tmp_path, monkeypatch,
                                                                        random_aisfx):
    """A large dataset is cached shard by shard: the same values as one file, and an encoding
    interrupted after some shards computes only the others when run again."""
    import mltm.embed as embed

    monkeypatch.setenv("MLTM_CACHE", str(tmp_path / "cache"))
    root = _write_clips(tmp_path / "ds", n_clips=7, splits=("test",))
    ds = AudioCaptionDataset(root, "test", frontend=random_aisfx, view="clips", output="waveform")
    whole = {"pooled": encode_clips(random_aisfx, ds, batch_size=2, use_cache=False),
             "frames": encode_clip_frames(random_aisfx, ds, batch_size=2, use_cache=False)}
    for kind, fn in (("pooled", encode_clips), ("frames", encode_clip_frames)):
        got = fn(random_aisfx, ds, batch_size=2, shard=3)  # shards of 3, 3, 1 clips
        assert got.keys() == whole[kind].keys()
        for name in got:
            assert torch.equal(got[name], whole[kind][name]), (kind, name)
    cache = tmp_path / "cache" / "embeddings"
    assert len(list(cache.glob("audio-frames-*.pt"))) == 3
    assert len([f for f in cache.glob("audio-*.pt") if "frames" not in f.name]) == 3
    # interrupt: lose one shard file, count the clips encoded again
    victim = sorted(cache.glob("audio-frames-*.pt"))[0]
    victim.unlink()
    seen = []
    real = random_aisfx.frame_embeddings
    monkeypatch.setattr(type(random_aisfx), "frame_embeddings",
                        lambda self, a, n: (seen.append(a.shape[0]), real(a, n))[1])
    again = encode_clip_frames(random_aisfx, ds, batch_size=2, shard=3)
    assert torch.equal(again["frames"], whole["frames"]["frames"])
    assert 0 < sum(seen) <= 3  # one shard, not the dataset
    # a dataset that fits in one shard is one file (pooled, and the frames of the same pass),
    # under the key it had before shards existed
    before = set(cache.glob("audio-*.pt"))
    encode_clips(random_aisfx, ds, batch_size=2)
    new = set(cache.glob("audio-*.pt")) - before
    assert ds.num_clips <= embed.CLIP_SHARD and len(new) == 2
    assert sum("frames" in f.name for f in new) == 1


@pytest.mark.parametrize("first", ["pooled", "frames"])
def test_one_encoder_pass_fills_the_pooled_and_the_frame_cache(tmp_path, monkeypatch,
                                                               random_aisfx, first):
    """Whichever of encode_clips / encode_clip_frames runs first encodes each clip once and
    stores both entries, equal bit for bit to the separate uncached passes."""
    monkeypatch.setenv("MLTM_CACHE", str(tmp_path / "cache"))
    root = _write_clips(tmp_path / "ds", n_clips=5, splits=("test",))
    ds = AudioCaptionDataset(root, "test", frontend=random_aisfx, view="clips", output="waveform")
    want = {"pooled": encode_clips(random_aisfx, ds, batch_size=2, use_cache=False),
            "frames": encode_clip_frames(random_aisfx, ds, batch_size=2, use_cache=False)}
    fns = {"pooled": encode_clips, "frames": encode_clip_frames}
    calls = {"forward": 0, "frames": 0}
    cls = type(random_aisfx)
    real_forward, real_frames = cls.forward, cls.frame_embeddings
    monkeypatch.setattr(cls, "forward", lambda self, a, n=None: (
        calls.__setitem__("forward", calls["forward"] + 1), real_forward(self, a, n))[1])
    monkeypatch.setattr(cls, "frame_embeddings", lambda self, a, n=None: (
        calls.__setitem__("frames", calls["frames"] + 1), real_frames(self, a, n))[1])
    second = "frames" if first == "pooled" else "pooled"
    got = {first: fns[first](random_aisfx, ds, batch_size=2, shard=2)}  # 3 shards
    assert calls == {"forward": 0, "frames": 3}  # batches of 2 per shard of 2, 2, 1 clips
    got[second] = fns[second](random_aisfx, ds, batch_size=2, shard=2)
    assert calls == {"forward": 0, "frames": 3}  # read from the cache, not encoded again
    for kind in want:
        assert got[kind].keys() == want[kind].keys()
        for name in want[kind]:
            assert torch.equal(got[kind][name], want[kind][name]), (kind, name)


def test_frames_need_an_encoder_with_frame_outputs(tmp_path):
    root = _write_clips(tmp_path, n_clips=1, splits=("test",))
    from mltm.encoders import Cnn14

    enc = Cnn14()
    ds = AudioCaptionDataset(root, "test", frontend=enc, view="clips", output="waveform")
    with pytest.raises(TypeError, match="Cnn14 has no frame outputs"):
        encode_clip_frames(enc, ds)


# -- training -------------------------------------------------------------------------------


def _temporal_config(root, out, **model):
    return config_from_dict({
        "data": {"dataset": str(root), "unique_keys": ["clip"]},
        "model": {"audio_weights": "random", "joint_dim": 16, "hidden_dim": 32,
                  "audio_head": "transformer", "text_head": "attention", "temporal_dim": 16,
                  "temporal_heads": 2, **model},
        "loss": {"name": "mltm", "sinkhorn_tol": 1e-5},
        "optim": {"lr": 1e-3, "batch_size": 5, "epochs": 2},
        "out_dir": str(out), "progress": False, "seed": 3,
    })


def test_training_and_eval_with_temporal_heads_end_to_end(tmp_path, monkeypatch):
    _minilm("cls")
    from mltm.eval import main as eval_main
    from mltm.train import Trainer, load_checkpoint

    monkeypatch.setenv("MLTM_CACHE", str(tmp_path / "cache"))
    root = _write_clips(tmp_path / "ds")
    res_a = Trainer(_temporal_config(root, tmp_path / "a")).run()
    trainer_b = Trainer(_temporal_config(root, tmp_path / "b"))
    res_b = trainer_b.run()
    tr = trainer_b.evalset("train")
    assert tr.audio.dim() == 3 and tr.audio_lengths is not None and tr.text.dim() == 3
    cache = tmp_path / "cache" / "embeddings"
    kinds = sorted({p.name.rsplit("-", 1)[0] for p in cache.glob("*.pt")})
    # no pooled text; the pooled audio comes from the frames' pass (aisfx), not a second one
    assert kinds == ["audio", "audio-frames", "text-tokens"]
    # seeded: the same weights and numbers twice
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert any(k.startswith("audio_head.layers.0.qkv") for k in a["model"])
    assert any(k.startswith("text_head.pool.query") for k in a["model"])
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    plain = lambda x: json.loads(json.dumps(x, default=float))  # noqa: E731
    assert plain(res_a["test"]) == plain(res_b["test"])
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert strip(a["history"]) == strip(b["history"])
    # the checkpoint reloads with its heads, and mltm.eval runs on it
    cfg, model, _, _ = load_checkpoint(tmp_path / "a" / "best.pt", with_encoders=False)
    assert model.audio_takes_sequences and model.text_takes_sequences
    # audio_weights=random: the trainer drew the encoder right after seeding with cfg.seed;
    # mltm.eval rebuilds it from the config, so seed the same way to get the same encoder
    torch.manual_seed(cfg.seed)
    assert eval_main(["--checkpoint", str(tmp_path / "a" / "best.pt"),
                      "--manifest", str(root / "test.jsonl"), "--out",
                      str(tmp_path / "eval.json")]) == 0
    ev = json.loads((tmp_path / "eval.json").read_text())
    # best.pt is the distance-selected checkpoint; test_cross keeps its summaries
    assert ev["metrics"]["distance"] == plain(res_a["test_cross"]["distance_selected"]["distance"])
    assert eval_main(["--checkpoint", str(tmp_path / "a" / "best.pt"), "--zeroshot",
                      "--manifest", str(root / "test.jsonl")]) == 0

"""Tests for mltm.data.dataset: views, crop/pad policy, robustness to bad audio, noise."""

import dataclasses

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mltm.data import (
    AudioCaptionDataset,
    ClipRecord,
    LogMelConfig,
    LogMelFrontEnd,
    SpecAugment,
    UniqueClipBatchSampler,
    corrupt_pairs,
    write_manifest,
)
from mltm.data.dataset import SkippedItem, dataset_dir

SR = 16000
CFG = LogMelConfig(sample_rate=SR, f_max=8000.0, hop_length=160, max_seconds=0.5)


def _make(root, tone, n_clips=6, caps=(5, 1, 3, 5, 2, 1), lengths=None, splits=("train",)):
    lengths = lengths or [0.3, 0.8, 0.5, 1.2, 0.2, 0.7]
    recs = []
    for i in range(n_clips):
        tone(root / "audio" / f"c{i}.wav", seconds=lengths[i], sr=SR if i % 2 else 22050,
             freq=200.0 + 100 * i)
        recs.append(ClipRecord(f"c{i}", f"audio/c{i}.wav",
                               tuple(f"clip {i} caption {k}" for k in range(caps[i])),
                               label=f"l{i % 2}"))
    for s in splits:
        write_manifest(recs, root / f"{s}.jsonl")
    return recs


def test_pairs_and_clips_views(tmp_path, tone):
    recs = _make(tmp_path, tone, splits=("train", "test"))
    tr = AudioCaptionDataset(tmp_path, "train", frontend=CFG)
    assert len(tr) == sum(len(r.captions) for r in recs) == 17 and tr.num_clips == 6
    item = tr[5]  # clip 1's only caption (clip 0 has 5)
    assert (item["clip_index"], item["caption_index"]) == (1, 0)
    assert item["caption"] == "clip 1 caption 0"
    assert item["label"] == "l1" and item["clip_id"] == "c1" and item["corrupted"] is False
    assert item["audio"].shape == (8000,) and item["length"] == 8000  # 0.8 s cropped to 0.5 s
    te = AudioCaptionDataset(tmp_path, "test", frontend=CFG, view="clips")
    assert len(te) == 6 and te[3]["captions"] == recs[3].captions
    # paper protocol: text queries are all captions, each mapped to its clip
    caps = te.all_captions()
    assert len(caps) == 17
    pairs = zip(caps, te.caption_clip, strict=True)
    assert [recs[c].captions.count(t) for t, c in pairs] == [1] * 17
    assert te[2]["audio"].shape == (8000,)  # 0.5 s clip at 16 kHz, resampled from 22.05 kHz
    assert te[4]["length"] == 3200  # short clip: not padded per item


def test_crop_policy_train_random_eval_start(tmp_path, tone):
    _make(tmp_path, tone, splits=("train", "val"))
    tr = AudioCaptionDataset(tmp_path, "train", frontend=CFG)
    clip3 = [i for i, (c, _) in enumerate(tr.pairs) if c == 3]
    offs = {tr[i]["offset"] for i in clip3}
    assert len(offs) > 1 and all(0 <= o <= 1.2 * SR - 8000 for o in offs)
    assert tr[clip3[0]]["offset"] == tr[clip3[0]]["offset"]  # same epoch: same crop
    first = [tr[i]["offset"] for i in clip3]
    tr.set_epoch(1)
    assert [tr[i]["offset"] for i in clip3] != first
    va = AudioCaptionDataset(tmp_path, "val", frontend=CFG, view="clips")
    full = AudioCaptionDataset(tmp_path, "val", frontend=dataclasses.replace(CFG, max_seconds=None),
                               view="clips")
    assert va[3]["offset"] == 0 and torch.equal(va[3]["audio"], full[3]["audio"][:8000])
    longer = AudioCaptionDataset(tmp_path, "val", frontend=CFG, view="clips", max_seconds=1.0)
    assert longer[3]["length"] == SR and longer.config.n_mels == CFG.n_mels
    centre = AudioCaptionDataset(tmp_path, "val", view="clips",
                                 frontend=dataclasses.replace(CFG, eval_crop="center"))
    assert centre[3]["offset"] == (full[3]["length"] - 8000) // 2


def test_collate_pads_right_and_pad_to_max(tmp_path, tone):
    _make(tmp_path, tone)
    ds = AudioCaptionDataset(tmp_path, "train", frontend=CFG)
    batch = ds.collate_fn([ds[0], ds[5], ds[16]])  # 0.3 s, 0.5 s (cropped), 0.7 s (cropped)
    assert batch["audio"].shape == (3, 8000) and batch["lengths"].tolist() == [4800, 8000, 8000]
    assert batch["audio"][0, 4800:].abs().sum() == 0 and batch["audio"][0, :4800].abs().sum() > 0
    assert batch["clip_index"].tolist() == [0, 1, 5] and batch["caption"][1] == "clip 1 caption 0"
    ds_max = AudioCaptionDataset(tmp_path, "train", frontend=dataclasses.replace(CFG, pad_to="max"))
    assert ds_max.collate_fn([ds_max[0]])["audio"].shape == (1, 8000)


def test_features_output_follows_the_encoder_config(tmp_path, tone):
    _make(tmp_path, tone, splits=("val",))

    class Encoder:  # an encoder owns its front-end settings
        frontend_config = dataclasses.replace(CFG, n_mels=40)

    ds = AudioCaptionDataset(tmp_path, "val", frontend=Encoder(), view="clips", output="features")
    it = ds[3]  # 1.2 s clip, cropped at the start to 0.5 s = frames_for(8000) = 51 frames
    assert it["audio"].shape == (40, 51) and it["length"] == 51
    wave = AudioCaptionDataset(tmp_path, "val", frontend=Encoder.frontend_config, view="clips")[3]
    ref = LogMelFrontEnd(Encoder.frontend_config)(wave["audio"])
    # features of the whole clip cropped in frames = features of the cropped waveform, except
    # the last n_fft/2/hop frames, whose windows see past the crop
    torch.testing.assert_close(it["audio"][:, :-4], ref[:, :-4], atol=1e-3, rtol=0)
    b = ds.collate_fn([ds[4], ds[3]])
    assert b["audio"].shape == (2, 40, 51) and b["lengths"].tolist() == [21, 51]


def test_features_with_cache_and_specaugment(tmp_path, tone):
    _make(tmp_path, tone)
    kw = dict(frontend=CFG, output="features", cache=tmp_path / "cache")
    plain = AudioCaptionDataset(tmp_path, "train", **kw)
    a = plain[0]["audio"]
    assert plain.cache.misses == 1 and torch.equal(plain[0]["audio"], a) and plain.cache.hits == 1
    aug = AudioCaptionDataset(tmp_path, "train", spec_augment=SpecAugment(mask_value=-123.0), **kw)
    it = aug[5]  # clip 1: 0.8 s, randomly cropped to 51 frames
    x1, x2 = it["audio"], aug[5]["audio"]
    assert torch.equal(x1, x2) and (x1 == -123.0).any()  # seeded per (seed, epoch, index)
    full = torch.from_numpy(np.load(aug.cache.entry_path(tmp_path / "audio" / "c1.wav")))
    crop = full[:, it["offset"] : it["offset"] + 51]
    keep = x1 != -123.0
    assert x1.shape == crop.shape == (64, 51) and torch.equal(x1[keep], crop[keep])
    ev = AudioCaptionDataset(tmp_path, "train", train=False, spec_augment=SpecAugment(), **kw)
    assert not (ev[3]["audio"] == 0).all(dim=0).any()  # no stripes in evaluation mode
    with pytest.raises(ValueError, match="spec_augment works on features"):
        AudioCaptionDataset(tmp_path, "train", frontend=CFG, spec_augment=SpecAugment())


def test_bad_files_are_skipped_and_reported(tmp_path, tone, truncated):
    recs = _make(tmp_path, tone)
    bad = {
        "zero": "empty", "text": "not_audio", "cutwav": "truncated", "gone": "missing",
    }
    (tmp_path / "audio" / "zero.wav").write_bytes(b"")
    (tmp_path / "audio" / "text.wav").write_text("hello, I am text")
    truncated(tone(tmp_path / "audio" / "cutwav.wav", seconds=0.4))
    truncated(tone(tmp_path / "audio" / "cutflac.flac", seconds=0.4, noise=0.2))
    extra = [ClipRecord(n, f"audio/{n}.wav", ("bad",)) for n in bad]
    extra.append(ClipRecord("cutflac", "audio/cutflac.flac", ("bad flac", "again")))
    write_manifest(recs[:2] + extra + recs[2:], tmp_path / "train.jsonl")

    ds = AudioCaptionDataset(tmp_path, "train", frontend=CFG)
    # the header scan drops four files; the truncated FLAC has a good header
    assert ds.skip_report.counts == {"empty": 1, "not_audio": 1, "truncated": 1, "missing": 1}
    assert ds.num_clips == 7 and len(ds) == 19
    flac_pairs = [i for i, (c, _) in enumerate(ds.pairs) if ds.records[c].clip_id == "cutflac"]
    assert isinstance(ds[flac_pairs[0]], SkippedItem)

    # a whole epoch through a DataLoader with workers: no crash, bad items dropped and listed
    sampler = UniqueClipBatchSampler(ds.pair_clip, 4, seed=0)
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=ds.collate_fn, num_workers=2)
    seen, skipped = [], []
    for batch in loader:
        seen += batch["index"].tolist()
        skipped += batch["skipped"]
        assert batch["clip_index"].unique().numel() == batch["clip_index"].numel()
    assert sorted(seen) == sorted(set(range(19)) - set(flac_pairs))
    assert [r for r, _ in skipped] == ["truncated", "truncated"]
    assert all(p.endswith("cutflac.flac") for _, p in skipped)
    # a batch where everything failed is empty, not an error
    empty = ds.collate_fn([ds[i] for i in flac_pairs])
    assert empty["audio"].shape[0] == 0 and len(empty["skipped"]) == 2
    # without the scan, every bad file is caught at load time instead
    raw = AudioCaptionDataset(tmp_path, "train", frontend=CFG, prescan=False)
    reasons = sorted(it.reason for it in (raw[i] for i in range(len(raw)))
                     if isinstance(it, SkippedItem))
    assert reasons == ["empty", "missing", "not_audio", "truncated", "truncated", "truncated"]


def test_noisy_correspondence_in_the_dataset(tmp_path, tone):
    _make(tmp_path, tone, splits=("train", "val", "test"))
    clean = AudioCaptionDataset(tmp_path, "train", frontend=CFG)
    noisy = AudioCaptionDataset(tmp_path, "train", frontend=CFG, noise=0.6, noise_seed=3)
    z = noisy.noise.corrupted
    assert z.any() and not z.all()
    for i in range(len(noisy)):
        c = noisy.pairs[i][0]
        if z[i]:
            assert noisy.pair_captions[i] not in noisy.records[c].captions
            assert noisy[i]["corrupted"] is True
        else:
            assert noisy.pair_captions[i] == clean.pair_captions[i]
    again = AudioCaptionDataset(tmp_path, "train", frontend=CFG, noise=0.6, noise_seed=3)
    assert again.pair_captions == noisy.pair_captions
    assert noisy.all_captions() == clean.all_captions()  # queries are never corrupted
    nc = corrupt_pairs(noisy.pair_clip, 0.2, 0)
    assert AudioCaptionDataset(tmp_path, "train", frontend=CFG, noise=nc).noise is nc
    for split in ("val", "test"):
        with pytest.raises(ValueError, match="only applied to the training split"):
            AudioCaptionDataset(tmp_path, split, frontend=CFG, noise=0.2)
        with pytest.raises(ValueError, match="only applied to the training split"):
            AudioCaptionDataset(tmp_path, split, frontend=CFG, noise=nc)
    with pytest.raises(ValueError, match="pairs view only"):
        AudioCaptionDataset(tmp_path, "train", frontend=CFG, noise=0.2, view="clips")


def test_missing_data_names_the_builder(tmp_path, tone, monkeypatch):
    with pytest.raises(FileNotFoundError) as e:
        AudioCaptionDataset(tmp_path / "debsfx", "train")
    msg = str(e.value)
    assert "debsfx not found" in msg and "bash data_scripts/build_all.sh ci" in msg
    assert "data_scripts/prepare_audiocaps.py" in msg
    _make(tmp_path, tone, splits=("test",))
    with pytest.raises(FileNotFoundError, match=r"train\.jsonl not found .*present.*'test'"):
        AudioCaptionDataset(tmp_path, "train")
    with pytest.raises(ValueError, match="unknown split"):
        AudioCaptionDataset(tmp_path, "dev")
    monkeypatch.setenv("MLTM_DATA", str(tmp_path.parent))
    assert dataset_dir(tmp_path.name) == tmp_path
    with pytest.raises(FileNotFoundError, match="build_all.sh ci"):
        dataset_dir("no_such_set")


def test_all_clips_unusable_is_an_error(tmp_path):
    write_manifest([ClipRecord("a", "a.wav", ("x",))], tmp_path / "test.jsonl")
    with pytest.raises(ValueError, match="no usable clips.*missing: 1"):
        AudioCaptionDataset(tmp_path, "test")


def test_built_datasets_load(built_datasets):
    """Every dataset built by data_scripts/build_all.sh loads and batches without skips."""
    for d in built_datasets:
        split = next(s for s in ("train", "test", "val") if (d / f"{s}.jsonl").is_file())
        ds = AudioCaptionDataset(d, split, view="clips")
        assert not ds.skip_report, f"{d}: {ds.skip_report.summary()}"
        n = min(len(ds), 4)
        b = ds.collate_fn([ds[i] for i in range(n)])
        assert b["audio"].shape[0] == n and np.isfinite(b["audio"].numpy()).all()


def test_pair_keys_and_shared_captions(tmp_path, tone):
    # four clips, two families; captions shared within a family (like the CI SFX sets)
    for i in range(4):
        tone(tmp_path / f"{i}.wav", seconds=0.1, sr=SR)
    fam = ["water", "water", "dog", "dog"]
    recs = [ClipRecord(f"c{i}", f"{i}.wav", (f"{fam[i]} sound", f"a {fam[i]}"), group=fam[i],
                       label=None if i == 3 else fam[i]) for i in range(4)]
    write_manifest(recs, tmp_path / "train.jsonl")
    ds = AudioCaptionDataset(tmp_path, "train", frontend=CFG)
    k = ds.pair_keys(("clip", "group", "label", "caption"))
    assert k.shape == (8, 4)
    assert k[:, 0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert len(set(k[:, 1])) == 2 and len(set(k[:, 2])) == 3  # clip 3 has no label: own key
    assert k[0, 3] == k[2, 3] and k[0, 3] != k[1, 3]  # same text, same key
    with pytest.raises(ValueError, match="unknown key 'colour'"):
        ds.pair_keys("colour")
    for seed in range(5):
        noisy = AudioCaptionDataset(tmp_path, "train", frontend=CFG, noise=0.5, noise_seed=seed)
        for i in np.flatnonzero(noisy.noise.corrupted):
            own = noisy.records[noisy.pairs[i][0]].captions
            assert noisy.pair_captions[i] not in own  # the text really changes
    sampler = UniqueClipBatchSampler(ds.pair_keys(("clip", "caption")), 4, seed=0)
    for b in sampler:
        assert len({ds.pair_captions[i] for i in b}) == len(b)

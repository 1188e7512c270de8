"""Find zero-shot clips whose recording also occurs in a training set (re-encoded copies included).

Byte-level de-duplication misses the same recording shipped by two programs in different
encodings, or mixed into a longer ambience (the qABCs owl is inside a MegaGlest night
ambience). This check decodes both sides to 8 kHz mono and, for each zero-shot clip, slides
its loudest second over every training file and records the best normalized
cross-correlation (1.0 = the same samples up to gain; unrelated sounds stay below ~0.5, two
different calls of one species rarely exceed 0.7). Clips at or above ``--threshold`` are
reported; decide by hand and drop them from the class table with a comment.

Usage::

    python data_scripts/check_zeroshot_overlap.py data/edusounds-zs data/debsfx-ci [DIR ...]

Each training argument is a manifest directory (its ``train/val/test.jsonl`` are read) or a
directory of raw audio files (searched recursively). Runs in about a minute for 100 zero-shot
clips against 400 training clips on 2 cores.
"""

from __future__ import annotations

import argparse
import sys
from math import gcd
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CHECK_SR = 8000
AUDIO_SUFFIXES = (".wav", ".ogg", ".flac")


def load_mono(path: Path, sr: int = CHECK_SR) -> np.ndarray:
    """Decode *path* to float64 mono at *sr* (polyphase resampling)."""
    import soundfile as sf
    from scipy.signal import resample_poly

    x, rate = sf.read(str(path), always_2d=True, dtype="float64")
    x = x.mean(axis=1)
    if rate != sr:
        g = gcd(rate, sr)
        x = resample_poly(x, sr // g, rate // g)
    return x


def loudest_window(x: np.ndarray, n: int) -> np.ndarray:
    """The *n*-sample window of *x* with the most energy (all of *x* when shorter)."""
    if len(x) <= n:
        return x
    cs = np.concatenate([[0.0], np.cumsum(x * x)])
    i = int(np.argmax(cs[n:] - cs[:-n]))
    return x[i: i + n]


def max_ncc(probe: np.ndarray, target: np.ndarray) -> float:
    """Best normalized cross-correlation of *probe* against every offset of *target* (0..1)."""
    from scipy.signal import fftconvolve

    q = probe - probe.mean()
    nq = float(np.linalg.norm(q))
    if nq == 0.0:
        return 0.0
    y = target if len(target) >= len(q) else np.pad(target, (0, len(q) - len(target)))
    c = fftconvolve(y, q[::-1], mode="valid")
    cs = np.concatenate([[0.0], np.cumsum(y * y)])
    energy = np.sqrt(np.maximum(cs[len(q):] - cs[:-len(q)], 1e-12))
    return float(np.max(np.abs(c) / (energy * nq)))


def training_files(arg: Path) -> list[tuple[str, Path]]:
    """(name, audio path) of a manifest directory's clips, or of a raw audio directory's files."""
    from mltm.data.manifest import read_manifest

    manifests = [arg / f"{s}.jsonl" for s in ("train", "val", "test")
                 if (arg / f"{s}.jsonl").is_file()]
    if manifests:
        return [(r.clip_id, m.parent / r.audio_path) for m in manifests for r in read_manifest(m)]
    if not arg.is_dir():
        raise FileNotFoundError(f"{arg}: neither a manifest directory nor a directory of audio")
    return [(str(p.relative_to(arg)), p) for p in sorted(arg.rglob("*"))
            if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file()]


def overlaps(zs_dir: Path, train_args: list[Path], *, probe_seconds: float = 1.0) -> list[tuple]:
    """``(score, zero-shot clip, best training file)`` for every zero-shot clip, best first."""
    from mltm.data.manifest import read_manifest

    train = []
    for arg in train_args:
        for name, path in training_files(Path(arg)):
            try:
                train.append((name, load_mono(path)))
            except Exception:  # undecodable training files cannot match anything
                continue
    out = []
    for rec in read_manifest(Path(zs_dir) / "test.jsonl"):
        probe = loudest_window(load_mono(Path(zs_dir) / rec.audio_path),
                               int(probe_seconds * CHECK_SR))
        best = max(((max_ncc(probe, y), name) for name, y in train), default=(0.0, None))
        out.append((round(best[0], 3), rec.clip_id, best[1]))
    return sorted(out, key=lambda t: (-t[0], t[1]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("zero_shot", type=Path, help="zero-shot set directory (holds test.jsonl)")
    ap.add_argument("training", type=Path, nargs="+", help="training manifest dirs or audio dirs")
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--show", type=int, default=10, help="also print the N best scores")
    args = ap.parse_args(argv)
    res = overlaps(args.zero_shot, args.training)
    for score, clip, name in res[: args.show]:
        print(f"{score:.3f}  {clip}  ~  {name}")
    hits = [r for r in res if r[0] >= args.threshold]
    print(f"{len(hits)} of {len(res)} zero-shot clips score >= {args.threshold}"
          + (": " + ", ".join(c for _, c, _ in hits) if hits else ""))
    return 1 if hits else 0


if __name__ == "__main__":
    sys.exit(main())

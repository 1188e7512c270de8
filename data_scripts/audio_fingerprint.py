"""Near-duplicate detection of recordings: a coarse band-energy fingerprint and its matcher.

Game packages ship one recording several times: re-encoded (WAV and Ogg), resampled, trimmed,
at another volume, or copied between games (Cube 2 ships 0 A.D. sounds). Byte-identical copies
are removed by hash; this module finds the rest, so that the family split never puts two
versions of one recording into two splits.

Fingerprint (:func:`fingerprint`)
    The 32 kHz waveform is cut into Hann-windowed frames of 2048 samples, hop 1024 (32 ms).
    The power spectrum of each frame is summed into :data:`N_BANDS` log-spaced bands between
    :data:`BAND_LO_HZ` and :data:`BAND_HI_HZ` (100 Hz - 4 kHz: every copy, even one resampled
    to 8 kHz, still has that range), and ``log10(P + 1e-6 * max(P))`` is taken. The floor is
    relative to the loudest band-frame, so a gain change only adds a constant to the whole
    matrix. All arithmetic is float64 numpy (the same result on every CPU).

Match (:func:`match_score`)
    The shorter fingerprint (T_s frames) slides over the longer one (T_l frames); the score is
    the largest Pearson correlation between the shorter matrix and a T_s-frame window of the
    longer (flattened over frames and bands). Pearson correlation ignores the additive constant
    (gain), the window search handles trimming, the fixed Hz bands handle resampling and
    re-encoding. Two files are near-duplicates when ``match_score >= threshold`` and the
    shorter is at least ``min_length_ratio`` of the longer.

Search (:func:`near_duplicate_pairs`)
    All-pairs matching would be slow for ~6,000 files, so a cheap prefilter first compares the
    time-averaged band profiles (Pearson >= ``prefilter``, default 0.97) and the length ratio;
    only pairs that pass get the sliding match.
"""

from __future__ import annotations

import numpy as np

__all__ = ["fingerprint", "match_score", "near_duplicate_pairs", "N_BANDS", "THRESHOLD"]

SAMPLE_RATE = 32000
FRAME = 2048
HOP = 1024
N_BANDS = 20
BAND_LO_HZ = 100.0
BAND_HI_HZ = 4000.0
#: default near-duplicate threshold on :func:`match_score`
THRESHOLD = 0.95
#: default minimum length ratio (shorter / longer) of two near-duplicates
MIN_LENGTH_RATIO = 0.3
#: default threshold of the band-profile prefilter
PREFILTER = 0.97
#: fingerprints are computed on at most this many seconds from the start of a file
MAX_SECONDS = 60.0


def _band_matrix(sr: int) -> np.ndarray:
    freqs = np.fft.rfftfreq(FRAME, 1.0 / sr)
    edges = np.geomspace(BAND_LO_HZ, BAND_HI_HZ, N_BANDS + 1)
    m = np.zeros((freqs.size, N_BANDS))
    for b in range(N_BANDS):
        m[(freqs >= edges[b]) & (freqs < edges[b + 1]), b] = 1.0
    return m


_BANDS = _band_matrix(SAMPLE_RATE)
_WINDOW = np.hanning(FRAME)


def fingerprint(wave: np.ndarray, sr: int = SAMPLE_RATE) -> np.ndarray:
    """The (frames, N_BANDS) log band-energy fingerprint of a mono waveform at ``sr`` = 32 kHz."""
    if sr != SAMPLE_RATE:
        raise ValueError(f"fingerprint expects {SAMPLE_RATE} Hz audio, got {sr} Hz; resample first")
    x = np.asarray(wave, dtype=np.float64)[: int(MAX_SECONDS * sr)]
    if x.size < FRAME:
        x = np.pad(x, (0, FRAME - x.size))
    n = 1 + (x.size - FRAME) // HOP
    idx = np.arange(FRAME)[None, :] + HOP * np.arange(n)[:, None]
    spec = np.abs(np.fft.rfft(x[idx] * _WINDOW, axis=1)) ** 2
    power = spec @ _BANDS
    peak = power.max()
    if peak <= 0:
        return np.zeros_like(power)
    return np.log10(power + 1e-6 * peak)


def match_score(a: np.ndarray, b: np.ndarray) -> float:
    """Best Pearson correlation of the shorter fingerprint with any window of the longer."""
    s, l = (a, b) if a.shape[0] <= b.shape[0] else (b, a)
    ts, tl = s.shape[0], l.shape[0]
    sc = s - s.mean()
    s_norm = np.sqrt((sc * sc).sum())
    if s_norm == 0:
        return 0.0
    nfft = 1 << int(np.ceil(np.log2(ts + tl)))
    # Cross-correlation per band via FFT, summed over bands: num[lag] = sum sc[t] * l[t + lag].
    fl = np.fft.rfft(l, nfft, axis=0)
    fs = np.fft.rfft(sc[::-1], nfft, axis=0)
    full = np.fft.irfft(fl * fs, nfft, axis=0).sum(axis=1)
    num = full[ts - 1: tl]                       # lags 0 .. tl - ts (windows inside l)
    rows = l.sum(axis=1)
    rows2 = (l * l).sum(axis=1)
    c1 = np.concatenate([[0.0], np.cumsum(rows)])
    c2 = np.concatenate([[0.0], np.cumsum(rows2)])
    k = ts * l.shape[1]
    wsum = c1[ts:] - c1[:-ts]
    wsum2 = c2[ts:] - c2[:-ts]
    wvar = np.maximum(wsum2 - wsum * wsum / k, 0.0)
    den = s_norm * np.sqrt(wvar)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(den > 1e-12, num / den, 0.0)
    return float(r.max())


def _profile(fp: np.ndarray) -> np.ndarray:
    p = fp.mean(axis=0)
    p = p - p.mean()
    n = np.linalg.norm(p)
    return p / n if n > 0 else p


def near_duplicate_pairs(fps: list[np.ndarray], *, threshold: float = THRESHOLD,
                         min_length_ratio: float = MIN_LENGTH_RATIO,
                         prefilter: float = PREFILTER, progress: bool = False
                         ) -> list[tuple[int, int, float]]:
    """All pairs ``(i, j, score)`` with ``i < j`` whose fingerprints match (see module doc)."""
    if not fps:
        return []
    prof = np.stack([_profile(f) for f in fps])
    length = np.array([f.shape[0] for f in fps], dtype=np.float64)
    cands = []
    for i in range(len(fps) - 1):
        sim = prof[i + 1:] @ prof[i]
        ratio = np.minimum(length[i + 1:], length[i]) / np.maximum(length[i + 1:], length[i])
        for j in np.nonzero((sim >= prefilter) & (ratio >= min_length_ratio))[0]:
            cands.append((i, i + 1 + int(j)))
    near_duplicate_pairs.last_candidates = len(cands)  # for the build report
    it = cands
    if progress:
        from tqdm import tqdm
        it = tqdm(cands, desc="near-duplicates: match", unit="pair")
    out = []
    for i, j in it:
        sc = match_score(fps[i], fps[j])
        if sc >= threshold:
            out.append((i, j, round(sc, 4)))
    return out

"""Optional on-disk cache of log-mel features.

Each entry is one ``.npy`` file (float32, ``[n_mels, n_frames]``, the **whole** clip, before
any cropping), stored under ``<directory>/<config.feature_key()>/<kk>/<key>.npy`` where
``key`` hashes the front-end settings that determine the features
(:meth:`LogMelConfig.feature_key`, which leaves out the clip policy) and the audio file's
resolved path, size and modification time. Changing a setting or touching the file therefore
gives a new key; stale entries are simply never read again (delete the directory to reclaim
space).

Writes go to a temporary file in the same directory, then :func:`os.replace`, so a reader
never sees a partial entry, even across processes (DataLoader workers). An entry that cannot
be read or has the wrong shape is recomputed and rewritten, never fatal.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from mltm._atomic import atomic_write
from mltm.data.frontend import LogMelConfig

__all__ = ["FeatureCache"]


class FeatureCache:
    """Log-mel features on disk, keyed by front-end settings and audio file identity.

    Args:
        directory: Root of the cache (created on first write).
        config: Front-end settings of the features stored through this object.

    Attributes:
        hits: Entries read from disk.
        misses: Entries computed (absent, or corrupt and recomputed).
        corrupt: Entries found unreadable or malformed (included in ``misses``).
    """

    def __init__(self, directory: str | os.PathLike, config: LogMelConfig) -> None:
        self.directory = Path(directory)
        self.config = config
        self.hits = 0
        self.misses = 0
        self.corrupt = 0

    def key(self, audio_path: str | os.PathLike) -> str:
        """Return the cache key of an audio file under this cache's settings.

        Raises:
            FileNotFoundError: If the audio file does not exist.
        """
        p = Path(audio_path).resolve()
        st = p.stat()
        blob = f"{self.config.feature_key()}\0{p}\0{st.st_size}\0{st.st_mtime_ns}".encode()
        return hashlib.sha256(blob).hexdigest()

    def entry_path(self, audio_path: str | os.PathLike) -> Path:
        """Return where the features of ``audio_path`` are (or would be) stored."""
        k = self.key(audio_path)
        return self.directory / self.config.feature_key() / k[:2] / f"{k}.npy"

    def _read(self, path: Path) -> torch.Tensor | None:
        try:
            arr = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            return None
        except Exception:  # truncated, garbage, wrong format
            self.corrupt += 1
            return None
        if arr.dtype != np.float32 or arr.ndim != 2 or arr.shape[0] != self.config.n_mels:
            self.corrupt += 1
            return None
        return torch.from_numpy(arr)

    def _write(self, path: Path, feats: torch.Tensor) -> None:
        with atomic_write(path, "wb") as f:
            np.save(f, feats.detach().cpu().numpy().astype(np.float32, copy=False))

    def get_or_compute(
        self, audio_path: str | os.PathLike, compute: Callable[[], torch.Tensor]
    ) -> torch.Tensor:
        """Return the cached features of ``audio_path``, computing and storing them if needed.

        Args:
            audio_path: The audio file (its identity is part of the key).
            compute: Called without arguments when the entry is absent or corrupt; must
                return float features ``[n_mels, n_frames]``. Its exceptions propagate and
                nothing is written.

        Returns:
            The features, float32 ``[n_mels, n_frames]``.
        """
        path = self.entry_path(audio_path)
        feats = self._read(path)
        if feats is not None:
            self.hits += 1
            return feats
        self.misses += 1
        feats = compute().detach().to("cpu", torch.float32)
        if feats.ndim != 2 or feats.shape[0] != self.config.n_mels:
            raise ValueError(
                f"features of shape {tuple(feats.shape)} do not match n_mels="
                f"{self.config.n_mels}; compute() must return [n_mels, n_frames]"
            )
        self._write(path, feats)
        return feats

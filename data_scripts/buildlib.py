"""Helpers shared by the stand-in dataset builders (``build_*.py``).

* :class:`AtomicDir`: a dataset is built in a hidden temporary sibling directory and renamed
  into place only when complete; ``BUILD_INFO.json`` is written last inside it. A directory
  without ``BUILD_INFO.json`` is never considered built.
* :func:`up_to_date`: a build is skipped when ``BUILD_INFO.json`` exists and records the same
  settings key (builder version, arguments, package versions, rule-table hash).
* Audio: :func:`write_flac`, :func:`rms`, :func:`slug`.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from mltm._atomic import atomic_write

BUILD_INFO = "BUILD_INFO.json"
#: RMS below which a clip counts as silent and is dropped.
SILENCE_RMS = 1e-4
SAMPLE_RATE = 32000


def settings_key(settings: dict[str, Any]) -> str:
    """A short stable hash of a JSON-serialisable settings dict."""
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def read_build_info(out_dir: Path) -> dict | None:
    p = Path(out_dir) / BUILD_INFO
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def up_to_date(out_dir: Path, key: str) -> bool:
    """True when *out_dir* holds a complete build made with the same settings key."""
    info = read_build_info(out_dir)
    return bool(info) and info.get("settings_key") == key


def git_commit() -> str:
    """HEAD's short hash, with "+dirty" when data_scripts/ has uncommitted changes."""
    repo = Path(__file__).resolve().parent.parent
    try:
        r = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=repo,
                           capture_output=True, text=True, timeout=10)
        commit = r.stdout.strip() or "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "data_scripts"], cwd=repo,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class AtomicDir:
    """Build a directory atomically.

    ``with AtomicDir(out) as tmp:`` yields an empty temporary directory next to *out*. On
    normal exit, *tmp* replaces *out* (an older *out* is removed only after the rename of the
    new one succeeded); on an exception *tmp* is deleted and *out* is left untouched.
    The caller must write ``BUILD_INFO.json`` into *tmp* as its last step.
    """

    def __init__(self, out_dir: Path) -> None:
        self.out = Path(out_dir)
        self.tmp = self.out.parent / f".tmp-{self.out.name}-{os.getpid()}"

    def __enter__(self) -> Path:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        # Remove leftovers of killed builds (their process no longer exists).
        for stale in self.out.parent.glob(f".tmp-{self.out.name}-*"):
            pid = stale.name.rsplit("-", 1)[-1]
            if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                shutil.rmtree(stale, ignore_errors=True)
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir()
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        if not (self.tmp / BUILD_INFO).is_file():
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise RuntimeError(f"builder bug: {BUILD_INFO} was not written; nothing installed")
        old = None
        if self.out.exists():
            old = self.out.parent / f".old-{self.out.name}-{os.getpid()}"
            shutil.rmtree(old, ignore_errors=True)
            self.out.rename(old)
        self.tmp.rename(self.out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def write_json_atomic(path: Path, obj: Any) -> None:
    with atomic_write(path) as f:
        f.write(json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False) + "\n")


def rms(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    return float(np.sqrt(np.mean(x * x))) if x.size else 0.0


def write_flac(path: Path, wave: np.ndarray, sr: int = SAMPLE_RATE) -> None:
    """Write mono float audio as 16-bit FLAC (peaks above 1 are scaled down, not clipped)."""
    x = np.asarray(wave, dtype=np.float32)
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak > 0.999:
        x = x * (0.999 / peak)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), x, sr, format="FLAC", subtype="PCM_16")


_SLUG = re.compile(r"[^A-Za-z0-9]+")


def slug(text: str) -> str:
    return _SLUG.sub("-", text).strip("-").lower()


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def stable_hash(*parts: Any) -> int:
    """A platform-independent integer hash (Python's ``hash`` is salted per process)."""
    return int(hashlib.sha1("\x1f".join(map(str, parts)).encode()).hexdigest()[:15], 16)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def license_markdown(title: str, intro: str, packages: list[dict],
                     copyrights: dict[str, str]) -> str:
    """LICENSE.md text: a summary table and each package's debian/copyright verbatim."""
    lines = [f"# {title}: attribution and licences", "", intro.strip(), "",
             "| source package | version | licence(s) of the audio used | upstream |",
             "|---|---|---|---|"]
    for p in packages:
        lines.append(f"| {p['package']} | {p['version']} | {p.get('license', '')} | "
                     f"{p.get('upstream', '')} |")
    lines += ["", "Each clip's `source` and `license` fields in the manifests name its package "
              "and licence. The audio was transcoded/cut by the builder scripts in "
              "`data_scripts/` of the mltm repository; the originals are unchanged in the "
              "Debian packages.", ""]
    for name, text in copyrights.items():
        lines += [f"## debian/copyright of {name}", "", "```text", text.rstrip(), "```", ""]
    return "\n".join(lines)

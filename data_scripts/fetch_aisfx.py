"""Fetch the aisfx 0.1.2 wheel from PyPI and convert its weights for ``mltm.encoders``.

aisfx (ISMIR 2022) ships a sound-effects CNN's weights inside its wheel
(``aisfx/models/checkpoint.pth``, a pickle). This script

1. downloads ``aisfx-0.1.2-py2.py3-none-any.whl`` into ``$MLTM_CACHE/wheels/`` (default
   ``~/.cache/mltm``) with ``pip download --no-deps`` unless it is already there (the
   package's declared pins, librosa 0.9.2 and numpy 1.23.0, cannot be installed on
   Python 3.11, and nothing of it is installed: only the wheel file is read);
2. checks the wheel's SHA-256 against the published one (a cached wheel with another hash is
   downloaded again);
3. converts it with :func:`mltm.encoders.aisfx.convert_aisfx_wheel` to a safetensors file
   (default ``$MLTM_DATA/weights/aisfx-0.1.2.safetensors``, ``MLTM_DATA`` default
   ``<repo>/data``), written atomically, with the source and licence (CC BY 4.0) in its
   metadata.

A second run finds the converted file with the expected source hash and does nothing.

Usage: ``python data_scripts/fetch_aisfx.py [--out PATH] [--wheel PATH] [--force]``
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data_scripts.debian import cache_dir  # noqa: E402
from mltm.encoders.aisfx import (  # noqa: E402
    AISFX_VERSION,
    AISFX_WHEEL,
    AISFX_WHEEL_SHA256,
    WEIGHTS_FORMAT,
    check_aisfx_wheel,
    convert_aisfx_wheel,
    default_aisfx_weights_path,
    read_aisfx_metadata,
)


def _pip() -> list[str]:
    """A pip command: this interpreter's pip, else the system ``python3 -m pip``.

    uv-made virtual environments have no pip; downloading a wheel needs none from the venv.
    """
    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip"]
    python3 = shutil.which("python3")
    if python3 is None:
        raise SystemExit("error: no pip found (neither in this interpreter nor as python3 -m pip)")
    return [python3, "-m", "pip"]


def download_wheel(dest: Path) -> Path:
    """Download the wheel into ``dest`` (a directory) atomically; return its path."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".download-") as tmp:
        cmd = [*_pip(), "download", "--no-deps", "--only-binary=:all:",
               f"aisfx=={AISFX_VERSION}", "-d", tmp]
        print("$", " ".join(cmd), file=sys.stderr)
        r = subprocess.run(cmd, stdout=sys.stderr)
        got = Path(tmp) / AISFX_WHEEL
        if r.returncode != 0 or not got.is_file():
            raise SystemExit(
                f"error: pip could not download {AISFX_WHEEL} (exit {r.returncode}); check "
                f"access to PyPI, or download it by hand into {dest}"
            )
        os.replace(got, dest / AISFX_WHEEL)
    return dest / AISFX_WHEEL


def cached_wheel(wheel: Path | None) -> Path:
    """Return a verified wheel: ``wheel`` if given, else the cached one (downloaded if needed)."""
    if wheel is not None:
        check_aisfx_wheel(wheel)
        return wheel
    dest = cache_dir() / "wheels"
    path = dest / AISFX_WHEEL
    if path.is_file():
        try:
            check_aisfx_wheel(path)
            return path
        except ValueError as e:
            print(f"warning: {e}; downloading it again", file=sys.stderr)
            path.unlink()
    path = download_wheel(dest)
    check_aisfx_wheel(path)
    return path


def up_to_date(out: Path) -> bool:
    """True when ``out`` is a converted file made from the published wheel."""
    if not out.is_file():
        return False
    try:
        meta = read_aisfx_metadata(out)
    except Exception:  # unreadable or not safetensors: convert again
        return False
    return meta.get("format") == WEIGHTS_FORMAT and meta.get("source_sha256") == AISFX_WHEEL_SHA256


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None,
                    help="output .safetensors (default $MLTM_DATA/weights/aisfx-0.1.2.safetensors)")
    ap.add_argument("--wheel", type=Path, default=None,
                    help="use this aisfx-0.1.2 wheel instead of the cached/downloaded one")
    ap.add_argument("--force", action="store_true", help="convert even if the output is up to date")
    args = ap.parse_args(argv)
    out = args.out if args.out is not None else default_aisfx_weights_path()
    if not args.force and up_to_date(out):
        print(f"aisfx weights up to date: {out}")
        return 0
    wheel = cached_wheel(args.wheel)
    convert_aisfx_wheel(wheel, out)
    print(f"aisfx weights written: {out} (from {wheel}, sha256 {AISFX_WHEEL_SHA256[:12]}...)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

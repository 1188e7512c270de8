"""Fetch Debian packages and unpack the files we need, with a cache.

Nothing is installed: ``apt-get download`` fetches the ``.deb`` into
``$MLTM_CACHE/debs/`` and ``dpkg-deb --fsys-tarfile | tar -x`` unpacks only the
members that match the requested patterns into ``$MLTM_CACHE/src/<pkg>_<version>-<tag>/``.
Each unpacked tree is built in a temporary sibling directory and renamed into
place when complete, so an interrupted run leaves nothing that looks finished.
A second call with the same arguments only checks that the directory exists.

``$MLTM_CACHE`` defaults to ``~/.cache/mltm``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

__all__ = [
    "DebianError",
    "Package",
    "cache_dir",
    "data_root",
    "fetch_deb",
    "unpack",
    "unzip_members",
    "copyright_text",
]


class DebianError(RuntimeError):
    """A package could not be fetched or unpacked; the message says how to fix it."""


def cache_dir() -> Path:
    """``$MLTM_CACHE`` or ``~/.cache/mltm``; created if missing."""
    p = Path(os.environ.get("MLTM_CACHE") or Path.home() / ".cache" / "mltm").expanduser()
    p.mkdir(parents=True, exist_ok=True)
    return p


def data_root() -> Path:
    """``$MLTM_DATA`` or ``<repo>/data``."""
    env = os.environ.get("MLTM_DATA")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parent.parent / "data"


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    deb: Path

    @property
    def size_bytes(self) -> int:
        return self.deb.stat().st_size

    def as_dict(self) -> dict:
        return {"package": self.name, "version": self.version, "deb_bytes": self.size_bytes,
                "deb": self.deb.name}


def _run(cmd: Sequence[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True)


def _deb_field(deb: Path, field: str) -> str:
    r = _run(["dpkg-deb", "-f", str(deb), field])
    if r.returncode != 0:
        raise DebianError(f"{deb} is not a readable .deb ({r.stderr.strip()}); "
                          "delete it and re-run")
    return r.stdout.strip()


def _cached_debs(name: str, debs: Path) -> list[Path]:
    out = []
    for p in sorted(debs.glob(f"{name}_*.deb")):
        # "foo_1.0_all.deb" must not match package "foo-data"; the glob already pins "name_".
        out.append(p)
    return out


def fetch_deb(name: str, *, quiet: bool = False) -> Package:
    """Return the cached ``.deb`` of *name*, downloading it with ``apt-get download`` if needed.

    If ``apt-get download`` cannot find the package (a fresh machine with empty
    package lists) it runs ``apt-get update`` once and retries.
    """
    if shutil.which("dpkg-deb") is None:
        raise DebianError("dpkg-deb not found: these builders need a Debian/Ubuntu system "
                          "(or put the .deb files into $MLTM_CACHE/debs/ by hand)")
    debs = cache_dir() / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    cached = _cached_debs(name, debs)
    if not cached:
        if shutil.which("apt-get") is None:
            raise DebianError(f"{name}: not cached in {debs} and apt-get is unavailable; "
                              f"download {name}_*.deb there by hand")
        if not quiet:
            print(f"[debian] apt-get download {name}", file=sys.stderr, flush=True)
        r = _run(["apt-get", "download", name], cwd=debs)
        if r.returncode != 0:
            if not quiet:
                print(f"[debian] apt-get download failed ({r.stderr.strip().splitlines()[-1:]}); "
                      "running apt-get update", file=sys.stderr, flush=True)
            u = _run(["apt-get", "update"])
            if u.returncode != 0:
                raise DebianError("apt-get update failed (run as root?): "
                                  f"{u.stderr.strip()[-500:]}")
            r = _run(["apt-get", "download", name], cwd=debs)
            if r.returncode != 0:
                raise DebianError(f"apt-get download {name} failed after apt-get update: "
                                  f"{r.stderr.strip()[-500:]}. Is the package in your apt sources "
                                  "(Debian bookworm main)?")
        # apt-get download writes partial files as *.deb only on success, but clean stray ones.
        for p in debs.glob("*.FAILED"):
            p.unlink()
        cached = _cached_debs(name, debs)
        if not cached:
            raise DebianError(f"apt-get download {name} reported success "
                              f"but no {name}_*.deb in {debs}")
    if len(cached) > 1:
        # Several versions cached: take the one dpkg considers newest.
        best = cached[0]
        for p in cached[1:]:
            if _run(["dpkg", "--compare-versions", _deb_field(p, "Version"), "gt",
                     _deb_field(best, "Version")]).returncode == 0:
                best = p
        cached = [best]
    deb = cached[0]
    pkg = _deb_field(deb, "Package")
    if pkg != name:
        raise DebianError(f"{deb} holds package {pkg!r}, not {name!r}; delete it and re-run")
    return Package(name=name, version=_deb_field(deb, "Version"), deb=deb)


def _safe_version(v: str) -> str:
    return v.replace(":", "_").replace("/", "_")


def unpack(pkg: Package, patterns: Iterable[str], tag: str) -> Path:
    """Unpack the members of *pkg* matching the tar wildcards *patterns* (plus its copyright file).

    Returns ``$MLTM_CACHE/src/<pkg>_<version>-<tag>/`` (the tree below ``./``).
    *tag* names the selection so that different pattern sets do not collide.
    """
    root = cache_dir() / "src"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{pkg.name}_{_safe_version(pkg.version)}-{tag}"
    if final.is_dir():
        return final
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    pats = [f"./usr/share/doc/{pkg.name}/copyright", *patterns]
    try:
        p1 = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(pkg.deb)], stdout=subprocess.PIPE)
        p2 = subprocess.run(["tar", "-x", "-C", str(tmp), "--wildcards", "--no-same-owner", *pats],
                            stdin=p1.stdout, capture_output=True, text=True)
        p1.stdout.close()
        rc1 = p1.wait()
        # tar exits 2 if some pattern matched nothing; that is only an error if nothing was
        # unpacked.
        if rc1 != 0 or (p2.returncode not in (0, 2)):
            raise DebianError(f"unpacking {pkg.deb.name} failed "
                              f"(dpkg-deb rc={rc1}, tar rc={p2.returncode}):"
                              f" {p2.stderr.strip()[-500:]}; delete the .deb and re-run")
        if not any(p.is_file() for p in tmp.rglob("*")):
            raise DebianError(f"no member of {pkg.deb.name} matched {list(patterns)}")
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def unzip_members(zip_path: Path, dest: Path, keep, *, desc: str = "unzip") -> int:
    """Extract the members of *zip_path* for which ``keep(name)`` is true into *dest*.

    Returns the number of members extracted.
    """
    from tqdm import tqdm

    n = 0
    with zipfile.ZipFile(zip_path) as z:
        names = [i for i in z.infolist() if not i.is_dir() and keep(i.filename)]
        for info in tqdm(names, desc=desc, unit="file", leave=False):
            target = dest / info.filename
            if ".." in Path(info.filename).parts:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with z.open(info) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
            n += 1
    return n


def copyright_text(tree: Path, name: str) -> str:
    p = tree / "usr" / "share" / "doc" / name / "copyright"
    return (p.read_text(errors="replace") if p.exists()
            else f"(no debian/copyright found for {name})\n")


def unpack_zip_inside(pkg: Package, zip_pattern: str, keep, tag: str) -> Path:
    """Unpack a zip archive shipped inside *pkg* and keep only the members ``keep(name)`` selects.

    Used for 0 A.D., whose game data is one 3.2 GB ``public.zip``: the zip is unpacked to a
    temporary directory, the selected members are copied out, and the zip is deleted.
    Returns ``$MLTM_CACHE/src/<pkg>_<version>-<tag>/`` holding the members (paths as in the
    zip) and ``usr/share/doc/<pkg>/copyright``.
    """
    root = cache_dir() / "src"
    final = root / f"{pkg.name}_{_safe_version(pkg.version)}-{tag}"
    if final.is_dir():
        return final
    raw = unpack(pkg, [zip_pattern], tag=f"{tag}-rawzip")
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        # .pk3 (Quake-engine games) and .wz (Warzone 2100) are zip archives too.
        zips = sorted(p for p in raw.rglob("*") if p.is_file()
                      and p.suffix.lower() in (".zip", ".pk3", ".wz"))
        if not zips:
            raise DebianError(f"{pkg.deb.name}: no zip matched {zip_pattern!r}")
        n = 0
        for z in zips:
            n += unzip_members(z, tmp, keep, desc=f"{pkg.name}:{z.name}")
        if n == 0:
            raise DebianError(f"{pkg.deb.name}: the selection kept no member of "
                              f"{[z.name for z in zips]}")
        doc = tmp / "usr" / "share" / "doc" / pkg.name
        doc.mkdir(parents=True, exist_ok=True)
        src_copy = raw / "usr" / "share" / "doc" / pkg.name / "copyright"
        if src_copy.exists():
            shutil.copy2(src_copy, doc / "copyright")
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(raw, ignore_errors=True)  # the 3 GB zip is not worth keeping
    return final

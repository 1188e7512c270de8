"""Read Qt binary resource files (``.rcc``), as shipped by ``gcompris-qt-data``.

GCompris-qt packs each activity's images and sounds into ``/usr/share/gcompris-qt/rcc/*.rcc``.
Format (Qt's ``rcc`` tool, versions 1 to 3): header ``qres``, version, offsets of the tree,
data and names sections (all big-endian 32-bit), plus a flags word from version 3. A tree node
is 14 bytes (22 from version 2: an 8-byte modification time follows): name offset (u32),
flags (u16; 1 = zlib-compressed, 2 = directory, 4 = zstd-compressed), then either child
count and first child index (directories) or territory, language (u16 each) and data offset.
A name is u16 length, u32 hash, UTF-16BE characters; a data entry is u32 size, then the
bytes (zlib entries start with the u32 uncompressed size, as ``qUncompress`` expects).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

FLAG_ZLIB, FLAG_DIR, FLAG_ZSTD = 1, 2, 4


class RccError(ValueError):
    """The file is not a Qt resource file this reader understands."""


def read_rcc(blob: bytes, *, keep=lambda path: True) -> dict[str, bytes]:
    """``member path -> bytes`` of the files in an ``.rcc`` blob for which ``keep(path)`` holds."""
    if blob[:4] != b"qres":
        raise RccError("not a Qt resource file (no 'qres' magic)")
    version, tree, data, names = struct.unpack(">IIII", blob[4:20])
    if version not in (1, 2, 3):
        raise RccError(f"Qt resource format version {version} is not supported (1 to 3 are)")
    node_size = 22 if version >= 2 else 14

    def name_at(offset: int) -> str:
        (length,) = struct.unpack(">H", blob[names + offset: names + offset + 2])
        start = names + offset + 6
        return blob[start: start + 2 * length].decode("utf-16-be")

    out: dict[str, bytes] = {}
    stack = [(0, "")]
    while stack:
        index, prefix = stack.pop()
        base = tree + index * node_size
        name_offset, flags = struct.unpack(">IH", blob[base: base + 6])
        path = prefix + (name_at(name_offset) if index else "")
        if flags & FLAG_DIR:
            count, first = struct.unpack(">II", blob[base + 6: base + 14])
            child_prefix = path + "/" if index else ""
            stack.extend((c, child_prefix) for c in range(first + count - 1, first - 1, -1))
            continue
        if not keep(path):
            continue
        (data_offset,) = struct.unpack(">I", blob[base + 10: base + 14])
        (size,) = struct.unpack(">I", blob[data + data_offset: data + data_offset + 4])
        raw = blob[data + data_offset + 4: data + data_offset + 4 + size]
        if flags & FLAG_ZSTD:
            raise RccError(f"{path}: zstd-compressed resources are not supported")
        if flags & FLAG_ZLIB:
            raw = zlib.decompress(raw[4:])
        out[path] = raw
    return out


def read_rcc_file(path: Path, **kw) -> dict[str, bytes]:
    """:func:`read_rcc` of a file; RccError names the file."""
    try:
        return read_rcc(Path(path).read_bytes(), **kw)
    except (RccError, struct.error, zlib.error) as e:
        raise RccError(f"{path}: {e}") from None


def write_rcc(files: dict[str, bytes], *, compress: bool = True) -> bytes:
    """A minimal version-2 ``.rcc`` blob holding *files* (for tests of :func:`read_rcc`)."""
    tree: dict = {}
    for p, b in files.items():
        node = tree
        parts = p.split("/")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = b
    names, name_off = bytearray(), {}
    data = bytearray()
    nodes: list = []  # (name, flags, payload) ; payload = (count, first) or data offset

    def name_offset(n: str) -> int:
        if n not in name_off:
            name_off[n] = len(names)
            enc = n.encode("utf-16-be")
            names.extend(struct.pack(">HI", len(n), 0) + enc)
        return name_off[n]

    nodes.append(["", FLAG_DIR, None, tree])
    i = 0
    while i < len(nodes):
        _, flags, _, content = nodes[i]
        if flags & FLAG_DIR:
            first = len(nodes)
            for child in sorted(content):
                val = content[child]
                if isinstance(val, dict):
                    nodes.append([child, FLAG_DIR, None, val])
                else:
                    payload = struct.pack(">I", len(val)) + zlib.compress(val) if compress else val
                    off = len(data)
                    data.extend(struct.pack(">I", len(payload)) + payload)
                    nodes.append([child, FLAG_ZLIB if compress else 0, off, None])
            nodes[i][2] = (len(content), first)
        i += 1
    tree_bytes = bytearray()
    for name, flags, payload, _ in nodes:
        noff = name_offset(name) if name else 0
        if flags & FLAG_DIR:
            tree_bytes += struct.pack(">IHII", noff, flags, *payload)
        else:
            tree_bytes += struct.pack(">IHHHI", noff, flags, 0, 0, payload)
        tree_bytes += b"\0" * 8
    header = 20
    t_off = header
    d_off = t_off + len(tree_bytes)
    n_off = d_off + len(data)
    return (b"qres" + struct.pack(">IIII", 2, t_off, d_off, n_off)
            + bytes(tree_bytes) + bytes(data) + bytes(names))

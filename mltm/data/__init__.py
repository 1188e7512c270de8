"""Data: manifests, audio front end, datasets, samplers, noisy correspondence, converters.

Names are exported lazily (PEP 562), so ``import mltm.data`` does not import torch, and
``python -m mltm.data.manifest`` runs without a double-import warning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    # manifest
    "ClipRecord": "manifest",
    "ManifestProblem": "manifest",
    "SPLITS": "manifest",
    "MAX_CAPTIONS": "manifest",
    "manifest_path": "manifest",
    "read_manifest": "manifest",
    "resolve_audio_path": "manifest",
    "validate_manifest": "manifest",
    "write_manifest": "manifest",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # pragma: no cover - for static analysers only
    from mltm.data.manifest import (  # noqa: F401
        MAX_CAPTIONS,
        SPLITS,
        ClipRecord,
        ManifestProblem,
        manifest_path,
        read_manifest,
        resolve_audio_path,
        validate_manifest,
        write_manifest,
    )

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
    # front end
    "HasFrontEndConfig": "frontend",
    "LogMelConfig": "frontend",
    "LogMelFrontEnd": "frontend",
    "frontend_config_of": "frontend",
    # audio loading
    "SKIP_REASONS": "audio",
    "AudioLoadError": "audio",
    "SkipReport": "audio",
    "crop_waveform": "audio",
    "load_audio": "audio",
    "pad_right": "audio",
    "probe_audio": "audio",
    # augmentation
    "SpecAugment": "specaugment",
    # dataset
    "AudioCaptionDataset": "dataset",
    "AudioTextCollator": "dataset",
    "SkippedItem": "dataset",
    "dataset_dir": "dataset",
    "missing_dataset_message": "dataset",
    # sampling, noise, cache
    "UniqueClipBatchSampler": "sampler",
    "NoisyCorrespondence": "noise",
    "corrupt_pairs": "noise",
    "FeatureCache": "cache",
    # converters for the paper's datasets
    "ConversionReport": "converters",
    "prepare_audiocaps": "converters",
    "prepare_clotho": "converters",
    "prepare_esc50": "converters",
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
    from mltm.data.audio import (  # noqa: F401
        SKIP_REASONS,
        AudioLoadError,
        SkipReport,
        crop_waveform,
        load_audio,
        pad_right,
        probe_audio,
    )
    from mltm.data.cache import FeatureCache  # noqa: F401
    from mltm.data.converters import (  # noqa: F401
        ConversionReport,
        prepare_audiocaps,
        prepare_clotho,
        prepare_esc50,
    )
    from mltm.data.dataset import (  # noqa: F401
        AudioCaptionDataset,
        AudioTextCollator,
        SkippedItem,
        dataset_dir,
        missing_dataset_message,
    )
    from mltm.data.frontend import (  # noqa: F401
        HasFrontEndConfig,
        LogMelConfig,
        LogMelFrontEnd,
        frontend_config_of,
    )
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
    from mltm.data.noise import NoisyCorrespondence, corrupt_pairs  # noqa: F401
    from mltm.data.sampler import UniqueClipBatchSampler  # noqa: F401
    from mltm.data.specaugment import SpecAugment  # noqa: F401

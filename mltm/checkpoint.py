"""Checkpoints: what they hold, how they are written, and how they are read safely.

A checkpoint (``last.pt`` every epoch; ``best_<ranking>.pt`` when a ranking's validation score
improves, and ``best.pt``, a copy of the first ranking's, see :class:`mltm.train.Selection`)
holds the trained weights (frozen encoders left out: they are rebuilt from the config), the
loss (M, or a learned NT-Xent temperature), the optimiser and every RNG state, the config, the
history and each selection criterion's best epoch so far (``best``: ``{criterion: {"epoch",
"score"}}``): enough for ``--resume`` to continue exactly (:func:`resume_from`). It holds
**tensors and plain data only** (:data:`CHECKPOINT_FORMAT`): it is written atomically by
:func:`save_checkpoint` and read by :func:`read_checkpoint` with
``torch.load(weights_only=True)``, so a checkpoint received from elsewhere never runs pickled
code. :func:`load_checkpoint` rebuilds the model and loss.
"""

from __future__ import annotations

import io
import json
import pickle
import random
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mltm._atomic import atomic_write
from mltm.config import TrainConfig, config_from_dict
from mltm.factory import build_loss_from_config, compute_dtype
from mltm.model import AudioTextModel, build_model

__all__ = [
    "CHECKPOINT_FORMAT",
    "checkpoint_payload",
    "save_checkpoint",
    "read_checkpoint",
    "load_checkpoint",
    "resume_from",
    "frozen_prefixes",
    "rng_state",
    "set_rng_state",
]

#: Version 2: tensors and plain data only (read with ``torch.load(weights_only=True)``, so a
#: received checkpoint cannot run code); version 1 pickled NumPy RNG state and was read with
#: ``weights_only=False``.
CHECKPOINT_FORMAT = "mltm-checkpoint/2"


def rng_state() -> dict[str, Any]:
    """All RNG states as tensors and plain data (a checkpoint holds nothing else).

    torch (and CUDA) states are uint8 tensors; NumPy's legacy state becomes a dict of a
    list and numbers, Python's ``random`` state a list.
    """
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"name": str(name), "keys": [int(k) for k in keys], "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "python": [int(version), [int(k) for k in internal], gauss_next]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the RNG states :func:`rng_state` returned (CUDA ones when CUDA is present)."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], np.asarray(n["keys"], dtype=np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


_PLAIN = (str, int, float, bool, type(None))


def _plain(value: Any, where: str = "checkpoint") -> Any:
    """``value`` as tensors and plain data only (dict/list/tuple/str/int/float/bool/None):
    what ``torch.load(weights_only=True)`` reads back without unpickling arbitrary objects.

    NumPy scalars and arrays become Python numbers and lists; ordered dicts (state dicts)
    stay ordered dicts with their ``_metadata``. Anything else raises ``TypeError``.
    """
    if isinstance(value, torch.Tensor) or type(value) in _PLAIN:
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        out = OrderedDict() if isinstance(value, OrderedDict) else {}
        for k, v in value.items():
            if type(k) not in (str, int):
                raise TypeError(f"{where}: key {k!r} is a {type(k).__name__}, not str or int")
            out[k] = _plain(v, f"{where}.{k}")
        if hasattr(value, "_metadata"):
            out._metadata = _plain(value._metadata, f"{where}._metadata")
        return out
    if isinstance(value, (list, tuple)):
        items = [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    for kind in (bool, int, float, str):  # subclasses such as enums
        if isinstance(value, kind):
            return kind(value)
    raise TypeError(f"{where} is a {type(value).__name__}: a checkpoint holds only tensors and "
                    "plain data (dict, list, tuple, str, int, float, bool, None)")


def checkpoint_payload(cfg: TrainConfig, epoch: int, model, loss, opt, history, best, dims,
                        frozen: tuple[str, ...], world_size: int = 1) -> dict[str, Any]:
    """What a checkpoint holds: weights, optimiser and RNG state, config and history."""
    return {
        "format": CHECKPOINT_FORMAT, "config": cfg.to_dict(), "epoch": epoch,
        "model": {k: v for k, v in model.state_dict().items() if not k.startswith(frozen)},
        "loss": loss.state_dict(), "optimizer": opt.state_dict(), "rng": rng_state(),
        "history": history, "best": best, "dims": dims, "world_size": world_size,
    }


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write a checkpoint atomically (temporary file, then rename: never half-written).

    The payload is converted to tensors and plain data (:func:`_plain`); it is written with
    ``torch.save`` and read back by :func:`read_checkpoint` with ``weights_only=True``, so
    loading a checkpoint received from elsewhere never executes pickled code.
    """
    payload = _plain(payload)
    buf = io.BytesIO()
    torch.save(payload, buf)
    with atomic_write(path, "wb") as f:
        f.write(buf.getvalue())


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw dict of an mltm checkpoint, read without executing any pickled code.

    Raises:
        FileNotFoundError: no such file.
        ValueError: ``"not an mltm checkpoint: <path>: <why>"`` for a file that is not a
            torch archive (garbage, a plain pickle), a truncated or corrupt one, one holding
            Python objects other than tensors and plain data (refused, never unpickled), or
            one of another format.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found; give the best.pt or last.pt "
                                "that python -m mltm.train wrote")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"PK\x03\x04":  # torch.save's zip archive
        raise ValueError(f"not an mltm checkpoint: {path}: not a torch zip archive (garbage, a "
                         "raw pickle or another format); use a best.pt or last.pt written by "
                         "python -m mltm.train")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        detail = next((ln.strip() for ln in str(e).splitlines()
                       if "Unsupported global" in ln or "Unsupported operand" in ln),
                      str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
        raise ValueError(f"not an mltm checkpoint: {path}: it holds pickled Python objects, "
                         f"not only tensors and plain data, and was refused without running "
                         f"them ({detail}); mltm checkpoints of format {CHECKPOINT_FORMAT!r} "
                         "never do (older ones of format 'mltm-checkpoint/1' must be "
                         "retrained)") from e
    except Exception as e:  # truncated or corrupt archive: RuntimeError, EOFError, ...
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"not an mltm checkpoint: {path}: unreadable, truncated or corrupt "
                         f"({detail})") from e
    fmt = ckpt.get("format") if isinstance(ckpt, dict) else None
    if fmt != CHECKPOINT_FORMAT:
        got = f"format {fmt!r}" if fmt is not None else "no 'format' field"
        raise ValueError(f"not an mltm checkpoint: {path}: {got}, expected format "
                         f"{CHECKPOINT_FORMAT!r}")
    return ckpt


def frozen_prefixes(model: AudioTextModel, cfg: TrainConfig) -> tuple[str, ...]:
    """State-dict prefixes of the model's frozen encoders (left out of checkpoints)."""
    out = []
    if model.audio_encoder is not None and cfg.model.freeze_audio:
        out.append("audio_encoder.")
    if model.text_encoder is not None and cfg.model.freeze_text:
        out.append("text_encoder.")
    return tuple(out)


def load_checkpoint(path: str | Path, *, device="cpu", with_encoders: bool = True):
    """Rebuild ``(config, model, loss, checkpoint dict)`` from a checkpoint.

    Frozen encoders are not stored in checkpoints; they are rebuilt from the config (their
    weights files must be where the config says). ``with_encoders=False`` returns a model
    with the heads only.
    """
    path = Path(path)
    ckpt = read_checkpoint(path)
    cfg = config_from_dict(ckpt["config"])
    dims = ckpt["dims"]
    dtype = compute_dtype(cfg)  # the heads in the dtype they were trained in
    model = build_model(cfg.model, audio_dim=dims["audio"], text_dim=dims["text"],
                        with_encoders=with_encoders, dtype=dtype)
    missing, unexpected = model.load_state_dict(ckpt["model"], strict=False)
    allowed = frozen_prefixes(model, cfg) if with_encoders else ()
    bad_missing = [k for k in missing if not k.startswith(allowed)]
    bad_unexpected = [k for k in unexpected
                      if not k.startswith(("audio_encoder.", "text_encoder."))]
    if bad_missing or bad_unexpected:
        raise ValueError(f"{path}: checkpoint does not match its config "
                         f"(missing {bad_missing[:5]}, unexpected {bad_unexpected[:5]})")
    loss = build_loss_from_config(cfg, dtype=dtype)
    loss.load_state_dict(ckpt["loss"])
    return cfg, model.to(device), loss.to(device), ckpt


def _resume_key(config: dict[str, Any]) -> dict[str, Any]:
    """The parts of a config a resumed run must share (more epochs and progress may differ)."""
    key = json.loads(json.dumps(config_from_dict(config).to_dict()))  # fields added later: defaults
    key["optim"].pop("epochs", None)
    key.pop("progress", None)
    return key


def resume_from(path: Path, cfg: TrainConfig, model, loss, opt, world_size: int = 1
                ) -> tuple[list[dict[str, Any]], dict[str, Any], int]:
    """Restore a run from its ``last.pt`` (``--resume``); return ``(history, best, epoch)``.

    The model, loss, optimiser and every RNG state are loaded in place; ``epoch`` is the first
    epoch still to train. The checkpoint must come from the same config (only
    ``optim.epochs`` may grow, and ``progress`` differ) and, with per-rank plans, the same
    number of processes.

    Raises:
        FileNotFoundError: no ``path``.
        ValueError: another config, all epochs already trained, another world size, or a
            file that is not an mltm checkpoint (:func:`read_checkpoint`).
    """
    if not path.is_file():
        raise FileNotFoundError(f"--resume: {path} not found; start without --resume")
    ckpt = read_checkpoint(path)
    if _resume_key(ckpt["config"]) != _resume_key(cfg.to_dict()):
        raise ValueError(f"--resume: {path} was written by a different config; "
                         "use the same config (only optim.epochs may grow) "
                         "or a new out_dir")
    if ckpt["epoch"] + 1 > cfg.optim.epochs:
        raise ValueError(f"--resume: {path} already holds epoch {ckpt['epoch'] + 1} of "
                         f"{cfg.optim.epochs}; raise optim.epochs to train further")
    model.load_state_dict(ckpt["model"], strict=False)
    loss.load_state_dict(ckpt["loss"])
    opt.load_state_dict(ckpt["optimizer"])
    set_rng_state(ckpt["rng"])
    if not cfg.dist.global_plan and ckpt.get("world_size", 1) != world_size:
        raise ValueError(f"--resume: {path} was trained with per-rank plans on "
                         f"{ckpt.get('world_size', 1)} processes; resume on as many")
    return ckpt["history"], ckpt["best"], ckpt["epoch"] + 1

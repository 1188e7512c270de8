"""The parts a training config names: device, dtypes, seeds, loss and optimiser.

:mod:`mltm.train` runs the epoch loop; it gets its loss and optimiser from here, its model from
its batch source (:mod:`mltm.sources`), and :func:`mltm.checkpoint.load_checkpoint` rebuilds a
trained model and loss with the same functions.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mltm.config import OptimConfig, TrainConfig
from mltm.losses import MatchingLoss, build_loss
from mltm.numerics import default_dtype

__all__ = [
    "resolve_device",
    "dataset_root",
    "seed_everything",
    "parse_dtype",
    "frozen_encoders",
    "compute_dtype",
    "build_loss_from_config",
    "build_optimizer",
]

_DTYPES = {"float64": torch.float64, "float32": torch.float32}


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available; "
                         "use 'auto' or 'cpu'")
    return device


def dataset_root(name: str) -> Path:
    """A dataset directory: an existing path, else ``$MLTM_DATA/name`` (see ``dataset_dir``)."""
    p = Path(name)
    if p.is_dir():
        return p
    from mltm.data import dataset_dir

    return dataset_dir(name)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def parse_dtype(name: str, key: str) -> torch.dtype:
    """The torch dtype of a config value ``float64``/``float32``; ``key`` names it in errors."""
    if name not in _DTYPES:
        raise ValueError(f"config key {key}: {name!r} is not a dtype; use 'float64' or 'float32'")
    return _DTYPES[name]


def frozen_encoders(cfg: TrainConfig) -> bool:
    """Whether both encoders are frozen: the fast path, which trains on cached features."""
    return cfg.model.freeze_audio and cfg.model.freeze_text


def compute_dtype(cfg: TrainConfig) -> torch.dtype:
    """The dtype heads, M and the loss train in: ``cfg.dtype`` on the fast path, else float32."""
    return parse_dtype(cfg.dtype, "dtype") if frozen_encoders(cfg) else torch.float32


def build_loss_from_config(cfg: TrainConfig, dtype: torch.dtype | None = None) -> MatchingLoss:
    """The loss a config names, with only the hyper-parameters that loss takes.

    ``dtype``: its parameters (M) are initialised in it (None: torch's default).
    """
    with default_dtype(dtype):
        return _build_loss(cfg)


def _build_loss(cfg: TrainConfig) -> MatchingLoss:
    lc = cfg.loss
    sk = {"max_iter": lc.sinkhorn_max_iter, "tol": lc.sinkhorn_tol}
    metric = {"kind": lc.metric.kind, "init": lc.metric.init, "rank": lc.metric.rank,
              "min_eigenvalue": lc.metric.min_eigenvalue}
    if lc.name in ("mltm", "mltm_partial"):
        gen = torch.Generator().manual_seed(cfg.seed)
        kw: dict[str, Any] = {"eps": lc.eps, "cost_normalization": lc.cost_normalization,
                              "sinkhorn_kwargs": sk}
        if lc.name == "mltm_partial":
            kw["mass"] = lc.mass
            changed = [k for k, default in _MLTM_ONLY.items() if getattr(lc, k) != default]
            if changed:
                raise ValueError(f"loss.{changed[0]} applies to loss.name=mltm only; remove it "
                                 "for mltm_partial")
        else:
            kw.update(gauge=lc.gauge, gauge_weight=lc.gauge_weight,
                      normalization=lc.normalization)
            if lc.sinkhorn_grad not in ("implicit", "unroll"):
                raise ValueError(f"loss.sinkhorn_grad {lc.sinkhorn_grad!r}: use 'implicit' or "
                                 "'unroll'")
            if lc.sinkhorn_grad != "implicit":  # the default solver call stays as it was
                sk["grad"] = lc.sinkhorn_grad
        return build_loss(lc.name, dim=cfg.model.joint_dim,
                          metric={**metric, "generator": gen}, **kw)
    if lc.learnable_temperature and lc.name != "ntxent":
        raise ValueError(f"loss.learnable_temperature applies to loss.name 'ntxent' only, not "
                         f"{lc.name!r}; remove it or set loss.name=ntxent")
    if lc.name == "ntxent":
        if lc.learnable_temperature:  # the keyword only when set: the default builds as before
            return build_loss("ntxent", dim=cfg.model.joint_dim, tau=lc.tau,
                              learnable_temperature=True)
        return build_loss("ntxent", dim=cfg.model.joint_dim, tau=lc.tau)
    if lc.name == "triplet":
        return build_loss("triplet", dim=cfg.model.joint_dim, margin=lc.margin)
    if lc.name == "contrastive_entropic":
        return build_loss("contrastive_entropic", dim=cfg.model.joint_dim, tau=lc.tau, eps=lc.eps)
    return build_loss(lc.name, dim=cfg.model.joint_dim)  # raises with the list of names


#: LossConfig fields that only the plain m-LTM loss takes, with their defaults.
_MLTM_ONLY = {"gauge": "none", "gauge_weight": 1.0, "normalization": "sinkhorn",
              "sinkhorn_grad": "implicit"}

_ENCODERS = ("audio_encoder.", "text_encoder.")
#: Loss parameters that are a learned temperature (optimised with the heads, not with M).
_TEMPERATURE = ("logit_scale",)


def build_optimizer(o: OptimConfig, model: torch.nn.Module,
                    loss: MatchingLoss) -> torch.optim.Optimizer:
    """Adam over the trainable parameters, in named groups (the hybrid step of eq. 11).

    ``heads`` (learning rate ``o.lr``), ``encoders`` when an encoder is fine-tuned
    (``o.encoder_lr``, default ``o.lr``), ``metric``, the loss's M (``o.metric_lr``,
    default ``o.lr``), and ``temperature``, a learned NT-Xent log-scale
    (``loss.learnable_temperature``: ``o.lr`` as the heads, no weight decay, as CLIP); the
    PSD projection of M (or the clamp of the log-scale) after each step is the loss's
    ``project_``.
    """
    groups = [{"params": [p for n, p in model.named_parameters()
                          if p.requires_grad and not n.startswith(_ENCODERS)],
               "lr": o.lr, "name": "heads"}]
    enc = [p for n, p in model.named_parameters()
           if p.requires_grad and n.startswith(_ENCODERS)]
    if enc:
        groups.append({"params": enc, "lr": o.encoder_lr or o.lr, "name": "encoders"})
    metric = [p for n, p in loss.named_parameters() if p.requires_grad and n not in _TEMPERATURE]
    if metric:
        groups.append({"params": metric, "lr": o.metric_lr or o.lr, "name": "metric"})
    temperature = [p for n, p in loss.named_parameters() if p.requires_grad and n in _TEMPERATURE]
    if temperature:
        groups.append({"params": temperature, "lr": o.lr, "weight_decay": 0.0,
                       "name": "temperature"})
    return torch.optim.Adam(groups, lr=o.lr, weight_decay=o.weight_decay)

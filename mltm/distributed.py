"""Data-parallel m-LTM on :mod:`torch.distributed`: the pieces :mod:`mltm.train` uses.

``torchrun --nproc-per-node N -m mltm.train --config FILE`` runs N processes (ranks). Each
step, every rank embeds its contiguous slice of the same global mini-batch
(:func:`shard_batch`, :class:`ShardedBatchSampler`), the slices are all-gathered **with
gradients** (:func:`gather_with_grad`), and every rank computes the Sinkhorn plan and the
loss of the whole global batch. Gradients are then averaged over the ranks
(:func:`average_gradients`), which makes the update exactly that of one process on the
concatenated batch:

* the gather's backward **sums** the embedding gradients over the ranks, so with the same
  global loss L on every rank, rank r's slice ``a_r`` receives ``N · ∂L/∂a_r``, and its
  head parameters ``N · (∂L/∂a_r)(∂a_r/∂θ)``; the average over ranks is ``Σ_r (∂L/∂a_r)
  (∂a_r/∂θ) = ∂L/∂θ``;
* parameters of the loss (the Mahalanobis M) get the complete ``∂L/∂M`` on every rank,
  whose average is itself.

This is the convention of OpenCLIP's ``gather_features`` and of DDP (which averages). With
``global_plan=False`` (config ``dist.global_plan: false``) nothing is gathered: each rank
computes the plan of its own slice and the gradient is the mean of the per-rank gradients.

Everything here is a no-op, or the identity, in a single process, so the same code runs
with and without ``torchrun``. A minimal loop of your own::

    from mltm import distributed as dist

    with dist.process_group(device):            # env:// from torchrun; gloo or NCCL
        dist.broadcast_parameters(model, loss)  # identical start on every rank
        for batch in dist.ShardedBatchSampler(UniqueClipBatchSampler(keys, 256)):
            a, t, clip = embed(batch)           # this rank's slice
            a, t, clip = dist.batch_for_loss(a, t, clip)   # the global batch
            loss(a, t, clip).backward()
            dist.average_gradients(params)
            opt.step(); loss.project_(); dist.broadcast_parameters(loss)
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "init_distributed",
    "teardown",
    "process_group",
    "is_distributed",
    "get_world_size",
    "get_rank",
    "get_local_rank",
    "is_main_process",
    "barrier",
    "main_process_first",
    "device_for_rank",
    "gather_sizes",
    "gather_with_grad",
    "gather_nograd",
    "batch_for_loss",
    "average_gradients",
    "broadcast_parameters",
    "broadcast_object",
    "all_reduce_sum",
    "shard_batch",
    "shard_batches",
    "ShardedBatchSampler",
]

#: Collectives wait this long (rank 0 validates and tests while the others wait).
DEFAULT_TIMEOUT = datetime.timedelta(minutes=60)


# -- process group ---------------------------------------------------------------------------


def is_distributed() -> bool:
    """True inside an initialised process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_world_size() -> int:
    """Number of ranks (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def get_rank() -> int:
    """This process's rank (0 without a process group; ``$RANK`` before it is made)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", 0))


def get_local_rank() -> int:
    """Rank within the node (``$LOCAL_RANK`` set by torchrun; 0 otherwise)."""
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main_process() -> bool:
    """Rank 0: the one that writes checkpoints, metrics and results."""
    return get_rank() == 0


def _env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", 1))


def device_for_rank(device: torch.device | str) -> torch.device:
    """``cuda`` → ``cuda:LOCAL_RANK`` under torchrun; any other device unchanged."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and _env_world_size() > 1:
        return torch.device("cuda", get_local_rank())
    return device


def init_distributed(device: torch.device | str = "cpu", *, backend: str | None = None,
                     timeout: datetime.timedelta = DEFAULT_TIMEOUT) -> bool:
    """Initialise the default process group from torchrun's environment variables.

    Does nothing (returns False) when there is already a process group or when
    ``$WORLD_SIZE`` is absent or 1. Otherwise joins the group (``env://``: ``MASTER_ADDR``,
    ``MASTER_PORT``, ``RANK``, ``WORLD_SIZE``) with ``backend`` (default: NCCL for a CUDA
    device, gloo otherwise), selects ``cuda:LOCAL_RANK`` as the current CUDA device, and
    returns True (the caller owns the group and should :func:`teardown` it).
    """
    if not dist.is_available() or dist.is_initialized() or _env_world_size() <= 1:
        return False
    device = device_for_rank(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    kwargs: dict[str, Any] = {}
    if backend == "nccl":
        kwargs["device_id"] = device
    dist.init_process_group(backend=backend, init_method="env://", timeout=timeout, **kwargs)
    return True


def teardown() -> None:
    """Destroy the default process group, if there is one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def process_group(device: torch.device | str = "cpu", **kwargs):
    """``with process_group(device): ...``: :func:`init_distributed`, then :func:`teardown`
    on exit if this call made the group (a group made by the caller is left alone).
    Yields the world size."""
    owned = init_distributed(device, **kwargs)
    try:
        yield get_world_size()
    finally:
        if owned:
            teardown()


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if is_distributed():
        dist.barrier()


@contextmanager
def main_process_first():
    """Rank 0 runs the block first (e.g. fills the embedding cache), then the others."""
    main = is_main_process()
    if not main:
        barrier()
    try:
        yield
    finally:
        if main:
            barrier()


def _comm_device(tensor: torch.Tensor | None = None) -> torch.device:
    if tensor is not None:
        return tensor.device
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# -- gathering ------------------------------------------------------------------------------


def gather_sizes(n: int, device: torch.device | str | None = None) -> list[int]:
    """Every rank's ``n`` (e.g. its number of pairs), in rank order."""
    if not is_distributed():
        return [int(n)]
    t = torch.tensor([int(n)], dtype=torch.long,
                     device=_comm_device() if device is None else device)
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t)
    return [int(x) for x in out]


def _all_gather_rows(x: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """Concatenate every rank's ``x`` along dim 0 (rows may differ between ranks)."""
    x = x.contiguous()
    m = max(sizes)
    if x.shape[0] < m:
        x = torch.cat([x, x.new_zeros((m - x.shape[0],) + tuple(x.shape[1:]))])
    parts = [torch.empty_like(x) for _ in sizes]
    dist.all_gather(parts, x)
    return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)])


class _GatherWithGrad(torch.autograd.Function):
    """Forward: all-gather rows. Backward: sum the gradient over ranks, keep our rows."""

    @staticmethod
    def forward(ctx, x, sizes):
        ctx.sizes = sizes
        ctx.rank = dist.get_rank()
        return _all_gather_rows(x, sizes)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start:start + ctx.sizes[ctx.rank]], None


def gather_with_grad(x: torch.Tensor, sizes: Sequence[int] | None = None) -> torch.Tensor:
    """All-gather ``x`` (rows = this rank's samples) into the global batch, differentiably.

    Returns the concatenation of every rank's ``x`` in rank order (ranks may hold different
    numbers of rows; give ``sizes`` from :func:`gather_sizes` to save one collective). The
    backward pass all-reduces (sums) the gradient of the gathered tensor and hands each rank
    the rows of its own ``x``, like ``torch.distributed.nn.functional.all_gather``: with the
    same loss on every rank, ``x.grad`` is ``world_size`` times ``∂L/∂x``, which
    :func:`average_gradients` divides back (see the module docstring). Every rank must call
    backward through the result (or none). The identity in one process.
    """
    if not is_distributed():
        return x
    if sizes is None:
        sizes = gather_sizes(x.shape[0], x.device)
    if not x.requires_grad:
        return _all_gather_rows(x, sizes)
    return _GatherWithGrad.apply(x, list(sizes))


def gather_nograd(x: torch.Tensor, sizes: Sequence[int] | None = None) -> torch.Tensor:
    """All-gather rows without gradient (e.g. clip ids); the identity in one process."""
    if not is_distributed():
        return x
    if sizes is None:
        sizes = gather_sizes(x.shape[0], x.device)
    return _all_gather_rows(x.detach(), sizes)


def batch_for_loss(audio: torch.Tensor | None, text: torch.Tensor | None,
                   clip_ids: torch.Tensor | None, *, global_plan: bool = True, min_pairs: int = 2,
                   dim: int | None = None):
    """The batch a rank computes its loss on: the global batch, or its own slice.

    ``global_plan=True``: ``(audio, text, clip_ids)`` of every rank gathered in rank order
    (embeddings with gradients); ``False``: this rank's own tensors. Returns
    ``(None, None, None)`` on every rank alike when the step must be skipped: fewer than
    ``min_pairs`` pairs in the global batch (global plan), or on some rank (per-rank plans),
    so that all ranks take the same number of steps. A rank with nothing to contribute passes
    ``None``s (``dim``: embedding size for its empty placeholder). Identity in one process
    (apart from the ``min_pairs`` check).
    """
    if audio is None:
        if dim is None:
            raise ValueError("batch_for_loss: give dim when a rank has no pairs (audio=None)")
        if not is_distributed():
            return None, None, None
        dev = _comm_device()
        audio = torch.zeros(0, dim, device=dev, requires_grad=True)
        text = torch.zeros(0, dim, device=dev, requires_grad=True)
        clip_ids = torch.zeros(0, dtype=torch.long, device=dev)
    sizes = gather_sizes(audio.shape[0], audio.device)
    if (sum(sizes) if global_plan else min(sizes)) < min_pairs:
        return None, None, None
    if not global_plan or len(sizes) == 1:
        return audio, text, clip_ids
    return (gather_with_grad(audio, sizes), gather_with_grad(text, sizes),
            None if clip_ids is None else gather_nograd(clip_ids.to(audio.device), sizes))


# -- keeping the ranks in step ----------------------------------------------------------------


def average_gradients(params: Iterable[torch.Tensor]) -> None:
    """Average ``.grad`` over the ranks, in place, in one flat all-reduce (as DDP does).

    A parameter without a gradient on some ranks gets zeros there; one without a gradient on
    every rank keeps ``grad=None`` (so the optimiser skips it, as in one process).
    """
    if not is_distributed():
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    world = dist.get_world_size()
    dev = params[0].device
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.uint8, device=dev)
    dist.all_reduce(has, op=dist.ReduceOp.MAX)
    live = [p for p, h in zip(params, has.tolist(), strict=True) if h]
    if not live:
        return
    for p in live:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for p in live:
        by_dtype.setdefault(p.grad.dtype, []).append(p)
    for group in by_dtype.values():
        flat = torch.cat([p.grad.reshape(-1) for p in group])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.div_(world)
        offset = 0
        for p in group:
            n = p.grad.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
            offset += n


@torch.no_grad()
def broadcast_parameters(*modules: nn.Module, src: int = 0) -> None:
    """Copy ``src``'s parameters and buffers to every rank (no-op in one process).

    Used once at the start (identical initial weights) and after each projected step on M
    (``loss.project_()``), so that M is the same on every rank even if the eigen-
    decomposition were not bitwise reproducible across machines.
    """
    if not is_distributed():
        return
    for module in modules:
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=src)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``src``'s picklable object on every rank (e.g. the test results)."""
    if not is_distributed():
        return obj
    box = [obj if get_rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_sum(values: Sequence[float],
                   device: torch.device | str | None = None) -> list[float]:
    """Element-wise sum of a few numbers over the ranks (float64); identity in one process."""
    if not is_distributed():
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64,
                     device=_comm_device() if device is None else device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


# -- sampler sharding -------------------------------------------------------------------------


def shard_batch(batch: Sequence[int], rank: int | None = None,
                world_size: int | None = None) -> list[int]:
    """This rank's contiguous slice of a global batch.

    The first ``len(batch) % world_size`` ranks get one more item (``numpy.array_split``), and
    the slices in rank order concatenate back to ``batch``: the gathered global batch is the
    batch of a one-process run, in the same order.
    """
    rank = get_rank() if rank is None else rank
    world = get_world_size() if world_size is None else world_size
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside [0, {world})")
    q, r = divmod(len(batch), world)
    start = rank * q + min(rank, r)
    return list(batch[start:start + q + (rank < r)])


def shard_batches(batches: Iterable[Sequence[int]], rank: int | None = None,
                  world_size: int | None = None) -> list[list[int]]:
    """:func:`shard_batch` of every global batch (the same number of steps on every rank)."""
    return [shard_batch(b, rank, world_size) for b in batches]


class ShardedBatchSampler:
    """A rank's view of a global batch sampler, e.g. :class:`~mltm.data.UniqueClipBatchSampler`.

    The global batches are built as in one process (from ``(seed, epoch)``, one caption per
    clip per batch), then each is cut into ``world_size`` contiguous slices and this rank
    iterates over its own. ``batch_size`` of the wrapped sampler is the **global** batch
    size. Use it as ``DataLoader(ds, batch_sampler=ShardedBatchSampler(sampler))``.

    Args:
        sampler: Yields lists of indices; if it has ``batches(epoch)`` and ``set_epoch`` (as
            :class:`~mltm.data.UniqueClipBatchSampler`), they are used and forwarded.
        rank, world_size: Default: the current process group's.
    """

    def __init__(self, sampler, rank: int | None = None, world_size: int | None = None) -> None:
        self.sampler = sampler
        self.world_size = get_world_size() if world_size is None else int(world_size)
        self.rank = get_rank() if rank is None else int(rank)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} outside [0, {self.world_size})")

    def set_epoch(self, epoch: int) -> None:
        """Forward ``epoch`` to the wrapped sampler (the same on every rank)."""
        self.sampler.set_epoch(epoch)

    def batches(self, epoch: int) -> list[list[int]]:
        """This rank's slices of ``sampler.batches(epoch)``."""
        return shard_batches(self.sampler.batches(epoch), self.rank, self.world_size)

    def __iter__(self) -> Iterator[list[int]]:
        for b in self.sampler:
            yield shard_batch(b, self.rank, self.world_size)

    def __len__(self) -> int:
        return len(self.sampler)

"""Projection heads: encoder outputs to the shared 1024-d audio-text space.

The paper (App. A.1, following Mei et al., 2022) maps each encoder's output with a two-layer
MLP (Linear, ReLU, Linear) into a joint space of dimension 1024 and L2-normalises it: the
audio head is 2048 -> 2048 -> 1024 for ResNet38, the text head 768 -> 2048 -> 1024 for BERT.
Normalised embeddings keep the transport costs bounded (squared Euclidean distances between
unit vectors lie in [0, 4]), which the Sinkhorn step relies on.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "HEAD_KINDS",
    "AttentionPoolingHead",
    "ProjectionHead",
    "TransformerHead",
    "build_head",
    "takes_sequences",
]


class ProjectionHead(nn.Module):
    """``Linear -> ReLU -> Dropout -> Linear`` (in -> hidden -> out), then L2 normalisation.

    Args:
        in_dim: Encoder output size (``encoder.out_dim``).
        out_dim: Joint embedding size (1024 in the paper).
        hidden_dim: Hidden layer size (2048 in the paper).
        dropout: Dropout after the ReLU (0 in the reference code's heads).
        normalize: L2-normalise the output (the paper always does).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 1024,
        hidden_dim: int = 2048,
        dropout: float = 0.0,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        if min(in_dim, out_dim, hidden_dim) < 1:
            raise ValueError(
                f"in_dim, out_dim and hidden_dim must be positive; got {in_dim}, {out_dim}, "
                f"{hidden_dim}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1); got {dropout}")
        self.in_dim, self.out_dim, self.normalize = in_dim, out_dim, normalize
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project ``x`` (``[B, in_dim]``) to ``[B, out_dim]`` (unit rows if ``normalize``)."""
        if x.shape[-1] != self.in_dim:
            raise ValueError(
                f"ProjectionHead expects inputs with {self.in_dim} features; got shape "
                f"{tuple(x.shape)}"
            )
        y = self.fc2(self.dropout(F.relu(self.fc1(x))))
        return F.normalize(y, dim=-1) if self.normalize else y


# -- temporal heads: sequences of frames or tokens to the joint space -----------------------

#: Head names of ``model.audio_head`` / ``model.text_head`` (:func:`build_head`).
HEAD_KINDS = ("linear", "attention", "transformer")


def sequence_mask(lengths: torch.Tensor, n: int) -> torch.Tensor:
    """Boolean ``[B, n]``: True at the valid positions (below each row's length).

    Raises:
        ValueError: If a length is below 1 (an empty sequence has nothing to pool) or above
            ``n``.
    """
    lengths = torch.as_tensor(lengths).long()
    if lengths.numel() and (int(lengths.min()) < 1 or int(lengths.max()) > n):
        raise ValueError(f"sequence lengths must be in [1, {n}]; got min {int(lengths.min())}, "
                         f"max {int(lengths.max())}")
    return torch.arange(n, device=lengths.device)[None, :] < lengths[:, None]


def _check_sequences(x: torch.Tensor, lengths: torch.Tensor | None, in_dim: int, name: str):
    if x.dim() != 3 or x.shape[-1] != in_dim:
        raise ValueError(f"{name} expects sequences [B, L, {in_dim}]; got shape {tuple(x.shape)}"
                         " (a temporal head takes frame or token outputs, not pooled vectors)")
    if lengths is None:
        lengths = torch.full((x.shape[0],), x.shape[1], dtype=torch.long)
    lengths = torch.as_tensor(lengths).to(x.device).long().reshape(-1)
    if lengths.numel() != x.shape[0]:
        raise ValueError(f"{name}: {lengths.numel()} lengths for a batch of {x.shape[0]}")
    return lengths, sequence_mask(lengths, x.shape[1])


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` ``[B, L, D]`` over the positions where ``mask`` ``[B, L]`` is True."""
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(dim=1) / m.sum(dim=1)


class AttentionPooling(nn.Module):
    """Softmax attention of one learned query over the valid positions: ``[B, L, D] -> [B, D]``.

    The weights are ``softmax(q . W x_t / sqrt(d_k))`` over the positions below each row's
    length (padded positions get weight exactly 0), and the output is ``sum_t w_t x_t``.
    """

    def __init__(self, dim: int, key_dim: int | None = None) -> None:
        super().__init__()
        key_dim = key_dim or dim
        self.key = nn.Linear(dim, key_dim, bias=False)
        self.query = nn.Parameter(torch.randn(key_dim) / key_dim**0.5)
        self.scale = key_dim**-0.5

    def weights(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Attention weights ``[B, L]`` (rows sum to 1 over the valid positions)."""
        scores = (self.key(x) @ self.query) * self.scale  # [B, L]
        return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        w = self.weights(x, mask)
        return (w.unsqueeze(-1) * x).sum(dim=1)


class AttentionPoolingHead(nn.Module):
    """Attention pooling with a learned query, then the :class:`ProjectionHead` MLP.

    Order-blind (a weighted mean), but it learns which frames or tokens matter instead of
    averaging them all.

    Args:
        in_dim: Frame/token size (``encoder.out_dim``).
        out_dim, hidden_dim, dropout, normalize: As :class:`ProjectionHead`.
    """

    takes_sequences = True

    def __init__(self, in_dim: int, out_dim: int = 1024, hidden_dim: int = 2048,
                 dropout: float = 0.0, normalize: bool = True) -> None:
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.pool = AttentionPooling(in_dim)
        self.proj = ProjectionHead(in_dim, out_dim, hidden_dim=hidden_dim, dropout=dropout,
                                   normalize=normalize)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` ``[B, L, in_dim]``, ``lengths`` ``[B]`` (None: all valid) -> ``[B, out_dim]``."""
        _, mask = _check_sequences(x, lengths, self.in_dim, type(self).__name__)
        return self.proj(self.pool(x, mask))


class TransformerLayer(nn.Module):
    """A pre-norm transformer encoder layer with a key padding mask.

    ``x + MHA(LN(x))`` then ``x + FFN(LN(x))`` (GELU, 4x width). Written out rather than
    ``nn.TransformerEncoderLayer`` so that no inference fast path (nested tensors) changes
    the arithmetic between training and evaluation, or between a padded batch and one item.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"temporal_dim {dim} must be a multiple of temporal_heads {num_heads}")
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ff1 = nn.Linear(dim, 4 * dim)
        self.ff2 = nn.Linear(4 * dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x`` ``[B, L, dim]``; ``mask`` ``[B, L]`` True at valid positions (keys only)."""
        B, L, D = x.shape
        h = self.num_heads
        q, k, v = self.qkv(self.norm1(x)).view(B, L, 3, h, D // h).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-1, -2)) * (D // h) ** -0.5  # [B, h, L, L]
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
        attn = self.dropout(torch.softmax(scores, dim=-1))
        y = (attn @ v).transpose(1, 2).reshape(B, L, D)
        x = x + self.dropout(self.out(y))
        return x + self.dropout(self.ff2(F.gelu(self.ff1(self.norm2(x)))))


class TransformerHead(nn.Module):
    """A small transformer over frames or tokens, masked mean pooling, then the MLP.

    ``Linear(in_dim, dim)`` plus a learned positional embedding per position (so the order
    of events changes the output), ``num_layers`` :class:`TransformerLayer`, a final layer
    norm, the mean over the valid positions, and the :class:`ProjectionHead` MLP to
    ``out_dim``. Padded positions never reach a valid one (they are masked as keys), so a
    padded batch gives each item the output it gets alone.

    Args:
        in_dim: Frame/token size.
        out_dim, hidden_dim, dropout, normalize: As :class:`ProjectionHead` (``dropout`` also
            inside the layers).
        dim: Width of the transformer.
        num_layers: Layers (1-2 is plenty for ~20 frames or ~30 tokens).
        num_heads: Attention heads.
        max_positions: Longest sequence (positional embeddings); longer inputs are an error.
    """

    takes_sequences = True

    def __init__(self, in_dim: int, out_dim: int = 1024, hidden_dim: int = 2048,
                 dropout: float = 0.0, normalize: bool = True, *, dim: int = 256,
                 num_layers: int = 1, num_heads: int = 4, max_positions: int = 128) -> None:
        super().__init__()
        if min(dim, num_layers, num_heads, max_positions) < 1:
            raise ValueError("dim, num_layers, num_heads and max_positions must be positive; got "
                             f"{dim}, {num_layers}, {num_heads}, {max_positions}")
        self.in_dim, self.out_dim, self.max_positions = in_dim, out_dim, max_positions
        self.input = nn.Linear(in_dim, dim)
        self.positions = nn.Parameter(0.02 * torch.randn(max_positions, dim))
        self.layers = nn.ModuleList(TransformerLayer(dim, num_heads, dropout)
                                    for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)
        self.proj = ProjectionHead(dim, out_dim, hidden_dim=hidden_dim, dropout=dropout,
                                   normalize=normalize)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` ``[B, L, in_dim]``, ``lengths`` ``[B]`` (None: all valid) -> ``[B, out_dim]``."""
        _, mask = _check_sequences(x, lengths, self.in_dim, type(self).__name__)
        if x.shape[1] > self.max_positions:
            raise ValueError(f"TransformerHead got sequences of {x.shape[1]} positions; it has "
                             f"{self.max_positions} (raise model.max_positions)")
        h = self.input(x) + self.positions[: x.shape[1]]
        for layer in self.layers:
            h = layer(h, mask)
        return self.proj(masked_mean(self.norm(h), mask))


def takes_sequences(head: nn.Module) -> bool:
    """True for heads that take ``(sequences [B, L, D], lengths)`` rather than ``[B, D]``."""
    return bool(getattr(head, "takes_sequences", False))


def build_head(kind: str, in_dim: int, out_dim: int, *, hidden_dim: int, dropout: float = 0.0,
               temporal_dim: int = 256, temporal_layers: int = 1, temporal_heads: int = 4,
               max_positions: int = 128) -> nn.Module:
    """The head ``kind`` names (``linear``: :class:`ProjectionHead`; ``attention``,
    ``transformer``: the temporal heads)."""
    if kind == "linear":
        return ProjectionHead(in_dim, out_dim, hidden_dim=hidden_dim, dropout=dropout)
    if kind == "attention":
        return AttentionPoolingHead(in_dim, out_dim, hidden_dim=hidden_dim, dropout=dropout)
    if kind == "transformer":
        return TransformerHead(in_dim, out_dim, hidden_dim=hidden_dim, dropout=dropout,
                               dim=temporal_dim, num_layers=temporal_layers,
                               num_heads=temporal_heads, max_positions=max_positions)
    raise ValueError(f"unknown head {kind!r}; choose one of " + ", ".join(HEAD_KINDS))

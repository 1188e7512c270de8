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

__all__ = ["ProjectionHead"]


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

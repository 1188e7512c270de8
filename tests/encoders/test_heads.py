"""Tests for mltm.encoders.heads.ProjectionHead."""

from __future__ import annotations

import re

import pytest
import torch
from torch.nn import functional as F

from mltm.encoders import ProjectionHead


def test_two_layer_mlp_with_unit_outputs(gen):
    head = ProjectionHead(16, out_dim=8, hidden_dim=32)
    x = torch.randn(5, 16, generator=gen)
    y = head(x)
    manual = F.relu(x @ head.fc1.weight.T + head.fc1.bias) @ head.fc2.weight.T + head.fc2.bias
    torch.testing.assert_close(y, manual / manual.norm(dim=-1, keepdim=True))
    torch.testing.assert_close(y.norm(dim=-1), torch.ones(5))
    raw = ProjectionHead(16, 8, 32, normalize=False)
    raw.load_state_dict(head.state_dict())
    torch.testing.assert_close(raw(x), manual)
    assert head.out_dim == 8


def test_paper_defaults():
    head = ProjectionHead(2048)
    sizes = (head.fc1.in_features, head.fc1.out_features, head.fc2.out_features)
    assert sizes == (2048, 2048, 1024)
    assert head.dropout.p == 0.0


def test_dropout_only_in_training(gen):
    head = ProjectionHead(16, 8, 32, dropout=0.5)
    x = torch.randn(4, 16, generator=gen)
    head.eval()
    torch.testing.assert_close(head(x), head(x))
    head.train()
    assert (head(x) - head(x)).abs().max() > 1e-4


def test_errors():
    with pytest.raises(ValueError, match=re.escape(
            "ProjectionHead expects inputs with 16 features; got shape (4, 15)")):
        ProjectionHead(16, 8, 32)(torch.zeros(4, 15))
    with pytest.raises(ValueError, match=re.escape("dropout must be in [0, 1); got 1.0")):
        ProjectionHead(16, dropout=1.0)

"""SpecAugment (frequency and time masking) for training, reproducible from a generator.

The reference code (PANNs' ``SpecAugmentation``) masks 2 frequency stripes of width < 8 and
2 time stripes of width < 64, in training only; these are the defaults here. The masks are
drawn like :func:`torchaudio.functional.mask_along_axis` (width ``floor(u * param)``, start
``floor(v * (size - width))``, ``u, v ~ U[0, 1)``), but every random number comes from an
explicit :class:`torch.Generator` and each example gets its own masks, so augmentations are
reproducible and independent of the global RNG and of DataLoader worker scheduling
(torchaudio's ``FrequencyMasking``/``TimeMasking`` draw from the global RNG).

Time stripes are drawn inside the true length of each example (``lengths``), not in the
zero padding. The module is the identity in ``eval()`` mode.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SpecAugment"]


def _stripes(
    n_examples: int,
    size: torch.Tensor,
    param: int,
    n_masks: int,
    axis_len: int,
    generator: torch.Generator | None,
    device: torch.device,
) -> torch.Tensor:
    """Return a boolean mask ``[n_examples, axis_len]`` of ``n_masks`` stripes per example."""
    pos = torch.arange(axis_len, device=device)
    mask = torch.zeros(n_examples, axis_len, dtype=torch.bool, device=device)
    size = size.to(device=device, dtype=torch.float32)
    for _ in range(n_masks):
        u = torch.rand(n_examples, generator=generator).to(device)
        v = torch.rand(n_examples, generator=generator).to(device)
        width = torch.floor(u * min(param, axis_len))
        width = torch.minimum(width, size)
        start = torch.floor(v * (size - width))
        mask |= (pos >= start[:, None]) & (pos < (start + width)[:, None])
    return mask


class SpecAugment(nn.Module):
    """Per-example frequency and time masking of ``[..., n_mels, n_frames]`` features.

    Args:
        freq_mask_param: Frequency stripes are narrower than this (bins).
        n_freq_masks: Number of frequency stripes.
        time_mask_param: Time stripes are narrower than this (frames).
        n_time_masks: Number of time stripes.
        mask_value: Value written into the stripes. PANNs masks *after* its batch norm over
            mel bins, where 0 is the normalised mean; on raw log-mel dB prefer a low value or
            apply this after normalisation.
    """

    def __init__(
        self,
        freq_mask_param: int = 8,
        n_freq_masks: int = 2,
        time_mask_param: int = 64,
        n_time_masks: int = 2,
        mask_value: float = 0.0,
    ) -> None:
        super().__init__()
        if min(freq_mask_param, n_freq_masks, time_mask_param, n_time_masks) < 0:
            raise ValueError("SpecAugment parameters must be non-negative")
        self.freq_mask_param = freq_mask_param
        self.n_freq_masks = n_freq_masks
        self.time_mask_param = time_mask_param
        self.n_time_masks = n_time_masks
        self.mask_value = mask_value

    def extra_repr(self) -> str:
        """Describe the settings in the module's repr."""
        return (
            f"freq_mask_param={self.freq_mask_param}, n_freq_masks={self.n_freq_masks}, "
            f"time_mask_param={self.time_mask_param}, n_time_masks={self.n_time_masks}"
        )

    def forward(
        self,
        spec: torch.Tensor,
        lengths: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Mask stripes in training mode; return ``spec`` unchanged in eval mode.

        Args:
            spec: Features, shape ``[..., F, T]``; every leading index is one example.
            lengths: True lengths in frames, shape equal to the leading shape (or None: all
                ``T``). Time stripes stay inside them.
            generator: Random source (a CPU generator); None uses the global RNG.

        Returns:
            A masked copy of ``spec`` (same shape).
        """
        if not self.training:
            return spec
        *lead, F, T = spec.shape
        x = spec.reshape(-1, F, T)
        B = x.shape[0]
        if lengths is None:
            tlen = torch.full((B,), T)
        else:
            tlen = torch.as_tensor(lengths).reshape(-1).clamp(max=T)
            if tlen.numel() != B:
                raise ValueError(f"lengths has {tlen.numel()} entries for {B} examples")
        fmask = _stripes(B, torch.full((B,), F), self.freq_mask_param, self.n_freq_masks, F,
                         generator, x.device)
        tmask = _stripes(B, tlen, self.time_mask_param, self.n_time_masks, T, generator,
                         x.device)
        mask = fmask[:, :, None] | tmask[:, None, :]
        return x.masked_fill(mask, self.mask_value).reshape(spec.shape)

"""Rounding that makes results the same bits on every CPU.

A float32 matrix product, convolution or reduction does not give the same last bits on two
CPUs: the SIMD width (AVX2 vs AVX-512), the BLAS kernel and the thread split change the order
of the additions. Training over hundreds of steps and ranking by argmax turn those ~1e-7
differences into different printed recalls. Two tools remove them:

* :func:`round_significant` rounds every value to ``bits`` significant bits. Computed in
  float64 (noise ~1e-15 relative) and rounded to 16 bits (steps of ~1.5e-5 relative), a value
  lands on a different rounding step on another CPU only if it lies within ~1e-15 of the
  midpoint between two steps: about once in 10^10 values. The cached encoder features go
  through it (:mod:`mltm.embed`).
* :func:`round_to_grid` rounds onto an absolute grid whose step is a power of two fixed by
  the largest magnitude, so that scores that differ only by rounding noise become exact
  ties (:mod:`mltm.retrieval` ranks on it): two captions with the same text must tie on every
  CPU, not be ordered by the last bit of a matrix product.

Neither helps with float32 inputs: their noise is larger than any grid fine enough to keep
the information. That is why the CPU path computes in float64 (``TrainConfig.dtype``).
"""

from __future__ import annotations

import contextlib

import torch

__all__ = ["default_dtype", "round_significant", "round_to_grid", "tensor_digest"]


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype | None):
    """Run a block with ``torch.get_default_dtype() == dtype`` (None: leave it as it is).

    Parameters initialised inside it are drawn in that dtype: a float32 ``uniform_`` computes
    ``low + (high - low) * u`` with or without a fused multiply-add depending on the CPU, so
    float32 initial weights already differ in the last bit between machines.
    """
    previous = torch.get_default_dtype()
    if dtype is not None:
        torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


_MANTISSA_BITS = {torch.float64: 53, torch.float32: 24, torch.float16: 11, torch.bfloat16: 8}


def round_significant(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Round each element to ``bits`` significant (mantissa) bits, half to even.

    Exact powers of two, zeros, infinities and NaNs are unchanged; the result has x's dtype
    and is idempotent (rounding twice gives the same tensor).

    Args:
        x: A floating-point tensor.
        bits: Significant bits to keep, 1 ≤ bits ≤ the dtype's mantissa (24 for float32,
            53 for float64).
    """
    if not x.is_floating_point():
        raise TypeError(f"round_significant needs a floating-point tensor, got {x.dtype}")
    mantissa = _MANTISSA_BITS.get(x.dtype)
    if mantissa is None:
        raise TypeError("round_significant supports float16/bfloat16/float32/float64, "
                        f"got {x.dtype}")
    if not 1 <= bits <= mantissa:
        raise ValueError(f"bits must be in 1..{mantissa} for {x.dtype}, got {bits}")
    if bits == mantissa:
        return x.clone()
    m, e = torch.frexp(x.double())  # x = m * 2**e, 0.5 <= |m| < 1
    m = torch.round(m * 2.0**bits) / 2.0**bits  # exact in float64
    out = torch.ldexp(m, e.double())
    return torch.where(torch.isfinite(x), out.to(x.dtype), x)


def round_to_grid(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Round onto the grid ``k · 2^(E - bits)``, with ``2^E`` the power of two just above max|x|.

    The step is the same for every element (unlike :func:`round_significant`), so values
    that differ by less than about ``max|x| · 2^-bits`` usually become equal, and values
    close to zero are not resolved more finely than large ones. The step is a power of two
    taken from the exponent of max|x|, so it does not move with the last bits of max|x|.
    Non-finite values are ignored for the scale and kept as they are.
    """
    if not x.is_floating_point():
        raise TypeError(f"round_to_grid needs a floating-point tensor, got {x.dtype}")
    finite = torch.isfinite(x)
    if not bool(finite.any()):
        return x.clone()
    top = float(x[finite].abs().max())
    if top == 0.0:
        return x.clone()
    _, e = torch.frexp(torch.tensor(top, dtype=torch.float64))
    step = 2.0 ** (int(e) - bits)
    out = torch.round(x / step) * step
    return torch.where(finite, out, x)


def tensor_digest(*tensors: torch.Tensor, bits: int = 12) -> str:
    """A short hex digest of tensors rounded to ``bits`` significant bits.

    Printed at the top of a chapter, it names its inputs: two machines that print the same
    digest fed the same features to everything that follows. The rounding keeps it stable
    under the float32 → float64 casts a reader may add.
    """
    import hashlib

    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu()
        h.update(str(tuple(t.shape)).encode())
        if t.is_floating_point():
            t = round_significant(t.double(), bits)
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()[:12]

"""The GPU fast path: fused Triton kernels in a CUDA graph.

Its kernel is checked on the CPU with Triton's interpreter (in a subprocess, since the
interpreter must be switched on before Triton is imported); the graph path needs a GPU.
"""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from mltm.ot import _cuda, sinkhorn_log

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

INTERPRETER_CHECK = textwrap.dedent(
    """
    import torch
    from mltm.ot import _cuda
    from mltm.ot.sinkhorn import _iterate_torch
    assert _cuda.HAS_TRITON and _cuda._interpreting()
    g = torch.Generator().manual_seed(0)
    for B, R, K in [(2, 5, 7), (1, 3, 1500)]:   # 1500 columns: two blocks of 1024
        X = torch.randn(B, R, K, generator=g, dtype=torch.float64) * 30
        w, logm = (torch.randn(B, K, generator=g, dtype=torch.float64),
                   torch.randn(B, R, generator=g, dtype=torch.float64))
        state = torch.randn(B, R, generator=g, dtype=torch.float64)
        err = torch.empty(B, R, dtype=torch.float64)
        lse = torch.logsumexp(X + w[:, None, :], -1)
        want_err = (torch.exp(lse + state) - torch.exp(logm)) ** 2
        _cuda.lse_update(X, w, logm, state, err)
        torch.testing.assert_close(state, logm - lse, rtol=0, atol=1e-12)
        torch.testing.assert_close(err, want_err, rtol=1e-12, atol=1e-15)
    # The kernel-driven iteration equals the torch iteration.
    C = torch.rand(2, 6, 9, generator=g, dtype=torch.float64)
    la, lb = torch.full((2, 6), 1 / 6).log().double(), torch.full((2, 9), 1 / 9).log().double()
    ref = _iterate_torch(C / -0.1, la, lb, None, 23, 10)
    got = _cuda.iterate(C / -0.1, la, lb, None, 23, 10, graph=False)
    torch.testing.assert_close(got[0], ref[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(got[1], ref[1], rtol=0, atol=1e-12)
    assert got[2] == 23
    tol_run = _cuda.iterate(C / -0.5, la, lb, 1e-7, 200, 5, graph=False)
    assert tol_run[3].max().item() < 1e-7 and tol_run[2] % 5 == 0 and tol_run[2] < 200
    print("interpreter ok")
    """
)


@pytest.mark.skipif(not _cuda.HAS_TRITON, reason="Triton is not installed")
def test_triton_kernel_under_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    out = subprocess.run([sys.executable, "-c", INTERPRETER_CHECK], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "interpreter ok" in out.stdout


def test_torch_fallback_of_the_half_step():
    # The same contract without Triton (the path taken on a GPU when Triton is missing).
    g = torch.Generator().manual_seed(1)
    X = torch.randn(2, 4, 6, generator=g, dtype=torch.float64)
    w, logm = (torch.randn(2, 6, generator=g, dtype=torch.float64),
               torch.randn(2, 4, generator=g, dtype=torch.float64))
    state, err = torch.zeros(2, 4, dtype=torch.float64), torch.empty(2, 4, dtype=torch.float64)
    lse = torch.logsumexp(X + w[:, None, :], -1)
    _cuda.lse_update(X, w, logm, state, err)  # CPU tensors, no interpreter: torch ops
    torch.testing.assert_close(state, logm - lse)
    torch.testing.assert_close(err, (torch.exp(lse) - torch.exp(logm)) ** 2)


@requires_cuda
@pytest.mark.parametrize("tol", [None, 1e-6])
@pytest.mark.parametrize("shape", [(256, 256), (4, 128, 128), (96, 479)])
def test_cuda_graph_backend_matches_torch(tol, shape):
    g = torch.Generator().manual_seed(2)
    C = (1 + 0.7 * torch.rand(shape, generator=g)).cuda()
    with torch.no_grad():
        fast = sinkhorn_log(C, 0.05, tol=tol, max_iter=200, backend="cuda_graph")
        slow = sinkhorn_log(C, 0.05, tol=tol, max_iter=200, backend="torch")
    torch.testing.assert_close(fast.plan, slow.plan, rtol=1e-4, atol=1e-7)
    if tol is not None:
        assert fast.marginal_error.max().item() < tol


@requires_cuda
def test_auto_backend_on_cuda_keeps_implicit_gradients():
    g = torch.Generator().manual_seed(3)
    C = (1 + 0.7 * torch.rand(64, 64, generator=g, dtype=torch.float64)).cuda().requires_grad_()
    P = sinkhorn_log(C, 0.05, tol=1e-10, max_iter=5000).plan  # implicit: forward on the fast path
    (gC,) = torch.autograd.grad(-torch.log(torch.diagonal(P)).mean(), C)
    C_cpu = C.detach().cpu().requires_grad_()
    P_cpu = sinkhorn_log(C_cpu, 0.05, tol=1e-10, max_iter=5000).plan
    (g_cpu,) = torch.autograd.grad(-torch.log(torch.diagonal(P_cpu)).mean(), C_cpu)
    torch.testing.assert_close(gC.cpu(), g_cpu, rtol=1e-6, atol=1e-9)

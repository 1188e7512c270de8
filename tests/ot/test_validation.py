"""Bad input gets a ValueError that names the problem and the fix."""

import re

import pytest
import torch

from mltm.ot import partial_sinkhorn, sinkhorn

C = torch.rand(4, 5)
SOLVERS = {
    "sinkhorn": lambda C, eps, a=None, b=None, **kw: sinkhorn(C, eps, a, b, **kw),
    "partial": lambda C, eps, a=None, b=None, **kw: partial_sinkhorn(C, eps, 0.5, a, b, **kw),
}


def _raises(msg):
    return pytest.raises(ValueError, match=re.escape(msg))


@pytest.mark.parametrize("solve", SOLVERS.values(), ids=SOLVERS.keys())
class TestCommon:
    def test_non_finite_cost(self, solve):
        bad = C.clone()
        bad[1, 2] = float("nan")
        with _raises("C contains non-finite values (NaN or inf); "
                     "check the embeddings and the cost computation"):
            solve(bad, 0.1)
        bad[1, 2] = float("inf")
        with _raises("C contains non-finite values"):
            solve(bad, 0.1)

    @pytest.mark.parametrize("eps", [0.0, -0.1, float("nan"), float("inf")])
    def test_bad_eps(self, solve, eps):
        with _raises(f"eps must be a positive finite number; got {eps!r}. Use e.g. eps=0.05."):
            solve(C, eps)

    def test_cost_shape(self, solve):
        with _raises("C must have shape (n, m) or (B, n, m); got shape (4,)."):
            solve(torch.rand(4), 0.1)
        with _raises("C must have shape (n, m) or (B, n, m); got shape (1, 2, 3, 4)."):
            solve(torch.rand(1, 2, 3, 4), 0.1)

    def test_cost_dtype(self, solve):
        with _raises("C must be float32 or float64; got torch.float16. Convert it with C.float()"):
            solve(C.half(), 0.1)

    def test_cost_type(self, solve):
        with _raises("C must be a torch.Tensor; got list. Use torch.as_tensor(C)."):
            solve([[1.0, 2.0]], 0.1)

    def test_marginal_shape_mismatch(self, solve):
        with _raises("a has shape (5,) but C has 4 rows; a must have shape (4,) or (B, 4)."):
            solve(C, 0.1, a=torch.full((5,), 0.2))
        with _raises("b has shape (4,) but C has 5 columns; b must have shape (5,) or (B, 5)."):
            solve(C, 0.1, b=torch.full((4,), 0.25))
        with _raises("a has shape (3, 4) but C has batch size 2 and 4 rows; "
                     "a must have shape (4,) or (2, 4)."):
            solve(torch.rand(2, 4, 5), 0.1, a=torch.full((3, 4), 0.25))

    def test_negative_marginal(self, solve):
        with _raises("a has negative entries (min -0.1); marginals must be non-negative weights."):
            solve(C, 0.1, a=torch.tensor([0.5, 0.3, 0.3, -0.1]))

    def test_zero_marginal(self, solve):
        with _raises("b has zero entries; the log-domain solvers need strictly positive marginals"):
            solve(C, 0.1, b=torch.tensor([0.5, 0.5, 0.0, 0.0, 0.0]))

    def test_non_finite_marginal(self, solve):
        with _raises("a contains non-finite values (NaN or inf); pass finite weights."):
            solve(C, 0.1, a=torch.tensor([0.5, float("nan"), 0.25, 0.25]))

    @pytest.mark.parametrize("kw,msg", [
        ({"tol": 0.0}, "tol must be a positive number or None (fixed iterations); got 0.0."),
        ({"max_iter": 0}, "max_iter must be a positive integer; got 0."),
        ({"check_every": 0}, "check_every must be a positive integer; got 0."),
        ({"cost_normalization": "mean"}, "cost_normalization must be 'none' or 'max'; got 'mean'."),
    ])
    def test_bad_options(self, solve, kw, msg):
        with _raises(msg):
            solve(C, 0.1, **kw)


def test_balanced_marginals_must_sum_to_one():
    with _raises("a must sum to 1 (got 0.9); normalise it with a / a.sum(-1, keepdim=True)."):
        sinkhorn(C, 0.1, a=torch.tensor([0.3, 0.2, 0.2, 0.2]))


def test_bad_grad_mode():
    with _raises("grad must be 'implicit' or 'unroll'; got 'last_step'."):
        sinkhorn(C, 0.1, grad="last_step")


def test_cuda_graph_backend_needs_cuda():
    with _raises("backend='cuda_graph' needs C on a CUDA device; use backend='auto' or 'torch'."):
        sinkhorn(C, 0.1, backend="cuda_graph")


@pytest.mark.parametrize("mass", [0.0, -0.5, 1.2, float("nan")])
def test_mass_outside_range(mass):
    with _raises(f"mass must be in (0, min(a.sum(), b.sum())] = (0, 1]; got {mass:.6g}."):
        partial_sinkhorn(C, 0.1, mass)


def test_mass_limited_by_the_smaller_marginal():
    b = torch.full((5,), 0.1)  # sums to 0.5
    with _raises("mass must be in (0, min(a.sum(), b.sum())] = (0, 0.5]; got 0.6."):
        partial_sinkhorn(C, 0.1, 0.6, b=b)
    assert partial_sinkhorn(C, 0.1, 0.5, b=b).sum().item() == pytest.approx(0.5, rel=1e-5)


def test_mass_tensor_shape():
    with _raises("mass must be a number or a tensor of shape () or (2,); got shape (3,)."):
        partial_sinkhorn(torch.rand(2, 4, 5), 0.1, torch.full((3,), 0.5))


def test_unknown_backend():
    with _raises("backend must be 'auto', 'torch', 'kernel', 'absorbed' or 'cuda_graph'; "
                 "got 'numpy'."):
        sinkhorn(C, 0.1, backend="numpy")

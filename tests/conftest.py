"""Shared test configuration.

POT is the test oracle. At import it loads every installed backend (JAX and friends on the GPU
image); only its torch and numpy backends are used here.
"""

import os

for _backend in ("JAX", "CUPY", "TENSORFLOW"):
    os.environ.setdefault(f"POT_BACKEND_DISABLE_{_backend}", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    """Every device present: CPU always, CUDA when available."""
    return torch.device(request.param)


@pytest.fixture
def gen():
    """A seeded CPU generator, so each test draws the same data every run."""
    return torch.Generator().manual_seed(0)


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

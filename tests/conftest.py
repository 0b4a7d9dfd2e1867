"""Fixtures shared by the tests: backend selection and NaN-filled kernel outputs."""

import pytest

import structprune_triton
from structprune_triton import layout, torch_path

from .helpers import KERNELS, nan_out_like

# "torch-bits": the torch path with its small-tensor `torch.where` branch (with autograd) switched
# off, so the integer-multiply branch used for large tensors is tested on small shapes too.
BACKENDS = (["triton"] if KERNELS else []) + ["torch", "torch-bits"]


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    """Run the test once per available backend: the Triton kernels (GPU, or the interpreter on
    CPU) and both branches of the torch path. Kernel outputs are allocated NaN-filled."""
    monkeypatch.setattr(layout, "out_like", nan_out_like)
    for mod in ("launch", "ops"):
        m = getattr(structprune_triton, mod, None)
        if m is not None and hasattr(m, "out_like"):
            monkeypatch.setattr(m, "out_like", nan_out_like)
    if request.param == "torch-bits":
        monkeypatch.setattr(torch_path, "WHERE_MAX_NUMEL_GRAD", 0)
    structprune_triton.set_backend(request.param.split("-")[0])
    yield request.param
    structprune_triton.set_backend("auto")


@pytest.fixture
def small_tiles(monkeypatch):
    """Tiny tiles so that small test shapes span many programs and partial tiles."""
    if not KERNELS:
        pytest.skip("no Triton kernels on this machine")
    from structprune_triton import launch

    monkeypatch.setattr(launch, "INTERPRETER_TILE", 8)
    monkeypatch.setattr(launch, "GPU_TILE", 8)

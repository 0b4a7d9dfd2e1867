"""Fixtures shared by the tests: backend selection (with NaN-poisoned kernel outputs) and tiny tiles."""

import pytest

import structprune_triton

from .helpers import KERNELS

# "torch-bits": the torch path with its small-tensor `torch.where` branch (with autograd) switched
# off, so the bit-zeroing branch used for large CPU tensors is tested on small shapes too.
BACKENDS = (["triton"] if KERNELS else []) + ["torch", "torch-bits"]


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Run the test once per available backend: the Triton kernels (GPU, or the interpreter on
    CPU) and both branches of the torch path. Fresh kernel outputs are NaN-filled first."""
    changes = {"backend": request.param.split("-")[0], "poison_outputs": True}
    if request.param == "torch-bits":
        changes["bits_min_numel_grad"] = 0
    with structprune_triton.settings(**changes):
        yield request.param


@pytest.fixture
def small_tiles():
    """Tiny tiles so that small test shapes span many programs and partial tiles."""
    if not KERNELS:
        pytest.skip("no Triton kernels on this machine")
    with structprune_triton.settings(interpreter_tile=8, gpu_tile=8):
        yield

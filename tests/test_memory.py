"""Memory: what a training step keeps alive for backward is no more than upstream keeps (no extra
full-size temporaries). Counted on every backend with ``saved_tensors_hooks`` (the bytes
of the distinct storages autograd saves), compared with upstream's classes on the same layer.
Peak device memory is checked on the GPU in ``test_gpu.py``."""

import pytest
import torch
from torch import nn

from structprune_triton import FakeStructuredSparsity, prepare_module

from .helpers import DEVICE, UpstreamBiasHook, UpstreamFSS, random_mask


def saved_bytes(step) -> int:
    """Bytes of the distinct storages autograd saves for backward while ``step()`` runs."""
    storages = {}

    def pack(t):
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(storages.values())


def layer(kind: str, dtype: torch.dtype, prune_bias: bool, upstream: bool) -> nn.Module:
    torch.manual_seed(0)
    module = nn.Linear(96, 160) if kind == "linear" else nn.Conv2d(8, 24, 3, padding=1)
    module = module.to(DEVICE, dtype)
    mask = random_mask(module.weight.shape[0])
    if upstream:
        return prepare_module(module, mask, prune_bias=prune_bias, parametrization=UpstreamFSS, hook=UpstreamBiasHook)
    return prepare_module(module, mask, prune_bias=prune_bias)


def _input(kind: str, dtype: torch.dtype) -> torch.Tensor:
    shape = (12, 96) if kind == "linear" else (2, 8, 10, 10)
    return torch.randn(shape, device=DEVICE, dtype=dtype, requires_grad=True)


@pytest.mark.parametrize("prune_bias", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", ["linear", "conv2d"])
def test_saved_for_backward_no_more_than_upstream(backend, kind, dtype, prune_bias):
    x = _input(kind, dtype)
    ours, theirs = layer(kind, dtype, prune_bias, False), layer(kind, dtype, prune_bias, True)
    weight = ours.parametrizations.weight.original
    saved_ours = saved_bytes(lambda: ours(x))
    saved_theirs = saved_bytes(lambda: theirs(x))
    assert saved_ours <= saved_theirs, (saved_ours, saved_theirs)
    # not vacuous: both keep at least the input and the masked weight for the matmul's backward
    assert saved_theirs >= x.numel() * x.element_size() + weight.numel() * weight.element_size()


def test_parametrization_alone_saves_only_the_mask(backend):
    """The row-mask multiply keeps the mask (R entries) for its backward, not a weight-sized tensor."""
    w = torch.randn(256, 64, device=DEVICE, requires_grad=True)
    mask = random_mask(256)
    p = FakeStructuredSparsity(mask)
    assert saved_bytes(lambda: p(w)) <= mask.numel() * 8
    assert saved_bytes(lambda: UpstreamFSS(mask)(w)) <= mask.numel() * 8

"""Shared test utilities: upstream reference, devices, NaN-filled buffers, tolerances."""

from __future__ import annotations


import torch
from torch.ao.pruning._experimental.pruner import parametrization as upstream

from torch import nn
from torch.nn.utils import parametrize

from structprune_triton import BiasHook, FakeStructuredSparsity, _backend

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ON_GPU = DEVICE == "cuda"
# True when the tests exercise the Triton kernels (GPU, or CPU under the interpreter).
KERNELS = _backend.HAS_TRITON and (ON_GPU or _backend.INTERPRET)

FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
MASK_DTYPES = [torch.bool, torch.uint8, torch.int32, torch.int64, torch.float32]

UpstreamFSS = upstream.FakeStructuredSparsity
UpstreamBiasHook = upstream.BiasHook


def random_mask(n: int, dtype: torch.dtype = torch.bool, density: float = 0.5, *, device=DEVICE, soft=False) -> torch.Tensor:
    """A mask of ``n`` rows with about ``density`` live; ``soft`` float masks scale rows."""
    live = torch.rand(n, device=device) < density
    if soft and dtype.is_floating_point:
        return torch.where(live, torch.rand(n, device=device) + 0.5, 0).to(dtype)
    return live.to(dtype)


def nan_like(t: torch.Tensor) -> torch.Tensor:
    """Same shape/strides/dtype, filled with NaN (or the max value for integer dtypes)."""
    out = torch.empty_like(t)
    return out.fill_(float("nan") if t.dtype.is_floating_point else torch.iinfo(t.dtype).max)


def assert_same(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Exact equality of values (NaN == NaN), dtype, shape."""
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True)


def bf16_ulp_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Within one bf16/fp16 ulp: the interpreter's fp32->bf16 cast rounds toward zero (torch rounds
    to nearest even), so a non-exact product of a soft mask can differ by one ulp there."""
    assert actual.dtype == expected.dtype
    torch.testing.assert_close(actual.float(), expected.float(), rtol=2 ** -7, atol=0, equal_nan=True)


def layout_dims(t: torch.Tensor) -> list[tuple[int, int]]:
    """(stride, size) of dims of size > 1, sorted: the memory format, independent of the
    strides torch picks for size-1 dims."""
    return sorted((st, sz) for sz, st in zip(t.shape, t.stride()) if sz > 1)





def nan_out_like(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Drop-in for ``layout.out_like`` that fills with NaN, so an element a kernel fails to write
    shows up as NaN instead of whatever the allocator left there."""
    out = torch.empty_like(x, dtype=dtype)
    return out.fill_(float("nan") if dtype.is_floating_point else 0)


def assert_kernel_equal(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Exact, except a bf16 result rounded by the Triton *interpreter* (CPU), whose fp32->bf16
    cast truncates where torch rounds to nearest even: there one bf16 ulp is allowed. Results
    that are exact in bf16 (binary masks on bf16 weights) stay exact either way."""
    if actual.dtype == torch.bfloat16 and not ON_GPU and KERNELS:
        bf16_ulp_close(actual, expected)
    else:
        assert_same(actual, expected)


def prepare_module(
    module: nn.Module,
    mask: torch.Tensor,
    prune_bias: bool = True,
    param_cls: type = FakeStructuredSparsity,
    hook_cls: type = BiasHook,
    hook_param: nn.Module | None = None,
) -> nn.Module:
    """``module`` prepared as upstream's ``BaseStructuredSparsifier._prepare`` does: weight
    parametrized with ``param_cls(mask)``, bias moved to a ``_bias`` Parameter (``bias = None``),
    ``hook_cls`` registered on the weight's parametrization (or on ``hook_param``)."""
    parametrize.register_parametrization(module, "weight", param_cls(mask))
    if module.bias is not None:
        module.register_parameter("_bias", nn.Parameter(module.bias.detach()))
        module.bias = None
        module.prune_bias = prune_bias
    module.register_forward_hook(hook_cls(hook_param or module.parametrizations.weight[0], prune_bias))
    return module

"""Shared test utilities: upstream reference, devices, tolerances."""

from __future__ import annotations

import functools

import torch
from torch.ao.pruning._experimental.pruner import parametrization as upstream

import structprune_triton
from structprune_triton import testing

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ON_GPU = DEVICE == "cuda"
# True when the tests exercise the Triton kernels (GPU, or CPU under the interpreter).
KERNELS = structprune_triton.kernels_run_on(torch.device(DEVICE), structprune_triton.Settings())

FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
MASK_DTYPES = [torch.bool, torch.uint8, torch.int32, torch.int64, torch.float32]

UpstreamFSS = upstream.FakeStructuredSparsity
UpstreamBiasHook = upstream.BiasHook


# the package's one random-mask helper, on the test device
random_mask = functools.partial(testing.random_mask, device=DEVICE)


def assert_same(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Exact equality of values (NaN == NaN), dtype, shape."""
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True)


def bf16_ulp_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Within one bf16/fp16 ulp: the interpreter's fp32->bf16 cast rounds toward zero (torch rounds
    to nearest even), so a non-exact product of a soft mask can differ by one ulp there."""
    assert actual.dtype == expected.dtype
    torch.testing.assert_close(actual.float(), expected.float(), rtol=2**-7, atol=0, equal_nan=True)


def layout_dims(t: torch.Tensor) -> list[tuple[int, int]]:
    """(stride, size) of dims of size > 1, sorted: the memory format, independent of the
    strides torch picks for size-1 dims."""
    return sorted((st, sz) for sz, st in zip(t.shape, t.stride(), strict=True) if sz > 1)


def assert_kernel_equal(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Exact, except a bf16 result rounded by the Triton *interpreter* (CPU), whose fp32->bf16
    cast truncates where torch rounds to nearest even: there one bf16 ulp is allowed. Results
    that are exact in bf16 (binary masks on bf16 weights) stay exact either way."""
    if actual.dtype == torch.bfloat16 and not ON_GPU and KERNELS:
        bf16_ulp_close(actual, expected)
    else:
        assert_same(actual, expected)

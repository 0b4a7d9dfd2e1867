"""The torch.library ops: ``opcheck`` (schema, fake impl, autograd registration, AOT dispatch)
across dtypes, ranks and layouts, with and without launch settings, and their values against
upstream's arithmetic."""

import pytest
import torch

from structprune_triton.config import current_settings, launch_values

from .helpers import DEVICE, assert_kernel_equal, random_mask

ops = torch.ops.structprune_triton

CASES = [
    (torch.float32, torch.bool, lambda: torch.randn(5, 7, device=DEVICE)),
    (torch.bfloat16, torch.bool, lambda: torch.randn(4, 3, 3, 2, device=DEVICE)),
    (torch.float16, torch.uint8, lambda: torch.randn(6, device=DEVICE)),
    (torch.float64, torch.float32, lambda: torch.randn(3, 2, 4, device=DEVICE)),
    (torch.bfloat16, torch.float32, lambda: torch.randn(3, 4, 5, device=DEVICE).permute(2, 0, 1)),
    (torch.float32, torch.bool, lambda: torch.randn(4, 3, 3, 3, device=DEVICE).to(memory_format=torch.channels_last)),
    (torch.float32, torch.bool, lambda: torch.randn(6, 8, device=DEVICE)[:, ::2]),
]
IDS = ["fp32-2d", "bf16-4d", "fp16-uint8-1d", "fp64-3d-floatmask", "bf16-permuted", "channels_last", "sliced"]


@pytest.mark.parametrize("dtype,mask_dtype,make", CASES, ids=IDS)
def test_opcheck_row_mask(backend, dtype, mask_dtype, make):
    x = make().to(dtype)
    mask = random_mask(x.shape[0], mask_dtype)
    launch = launch_values(current_settings())  # the fixture's settings (NaN-poisoned outputs)
    torch.library.opcheck(ops.row_mask.default, (x, mask, launch))
    torch.library.opcheck(ops.row_mask_backward.default, (x, mask, torch.float32, launch))
    torch.library.opcheck(ops.row_mask.default, (x, mask))  # launch settings omitted: the defaults


@pytest.mark.parametrize("dtype,mask_dtype,make", CASES, ids=IDS)
@pytest.mark.parametrize("prune_bias", [True, False])
def test_opcheck_bias_add(backend, dtype, mask_dtype, make, prune_bias):
    out = make().to(dtype)
    dim = out.dim() - 1
    bias = torch.randn(out.shape[dim], device=DEVICE)
    mask = random_mask(out.shape[dim], mask_dtype)
    launch = launch_values(current_settings())
    torch.library.opcheck(ops.bias_add.default, (out, bias, mask, dim, prune_bias, launch))


@pytest.mark.parametrize("dtype,mask_dtype,make", CASES, ids=IDS)
def test_op_values(backend, dtype, mask_dtype, make):
    """Op results against upstream's arithmetic (where the mask is nonzero; dead rows are 0)."""
    x = make().to(dtype)
    mask = random_mask(x.shape[0], mask_dtype)
    view = mask.reshape([-1] + [1] * (x.dim() - 1))
    out = ops.row_mask(x, mask)
    assert_kernel_equal(out, view * x)
    assert out.stride() == torch.empty_like(x, dtype=out.dtype).stride()  # the fake impl's rule
    g = torch.randn_like(x, dtype=torch.float32)
    assert_kernel_equal(ops.row_mask_backward(g, mask, dtype), (g * view).to(dtype))
    dim = x.dim() - 1
    bias = torch.randn(x.shape[dim], device=DEVICE)
    bias_mask = random_mask(x.shape[dim], mask_dtype)
    kept = torch.where(bias_mask != 0, bias, 0)
    for prune_bias, b in ((True, kept), (False, bias)):
        res = ops.bias_add(x, bias, bias_mask, dim, prune_bias)
        assert_kernel_equal(res, x.clone().add_(b))

"""The ``torch.library`` custom ops (namespace ``structprune_triton``) and their fake impls.

Ops are opaque ``custom_op``s whose implementation dispatches by device: the Triton launchers
(GPU, or CPU under ``TRITON_INTERPRET=1``) or the torch path. Opaque ops are what compiles
fullgraph on both CPU runners (where Dynamo cannot trace the Triton interpreter) and GPUs; see the
README's torch.compile section. Autograd lives in ``functional.py`` (an ``autograd.Function`` that
calls these ops), not here.

* ``row_mask(x, mask)``: ``x * mask`` over dim 0, dead rows exactly 0, dtype ``result_type(mask, x)``.
* ``row_mask_backward(grad, mask, dtype)``: ``grad * mask`` over dim 0, cast to ``dtype``.
* ``bias_add(out, bias, mask, dim, prune_bias)``: ``out + bias'`` along ``dim`` (``bias'`` zero
  where ``mask == 0`` if ``prune_bias``), functional: neither ``out`` nor ``bias`` is written.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import torch_path
from ._backend import HAS_TRITON, kernel_dtypes, use_triton
from .layout import is_dense, out_like
from .validate import check_bias, check_mask

if HAS_TRITON:
    from . import launch


def row_mask_impl(x: Tensor, mask: Tensor, out_dtype: torch.dtype) -> Tensor:
    """``row_mask`` (input already validated) into a fresh tensor laid out like ``x``, by kernel or
    torch path."""
    if use_triton(x) and kernel_dtypes(x.dtype, out_dtype):
        return launch.row_mask(x, mask, out_dtype)
    return torch_path.row_mask_into(x, mask, out_like(x, out_dtype))


@torch.library.custom_op("structprune_triton::row_mask", mutates_args=())
def row_mask(x: Tensor, mask: Tensor) -> Tensor:
    check_mask(x, mask, 0)
    return row_mask_impl(x, mask, torch.result_type(mask, x))


# The fake impls validate too: a real tensor with a meta mask is dispatched to them, and must fail
# there rather than return uninitialised memory.
@row_mask.register_fake
def _row_mask_fake(x: Tensor, mask: Tensor) -> Tensor:
    check_mask(x, mask, 0)
    return out_like(x, torch.result_type(mask, x))


@torch.library.custom_op("structprune_triton::row_mask_backward", mutates_args=())
def row_mask_backward(grad: Tensor, mask: Tensor, dtype: torch.dtype) -> Tensor:
    check_mask(grad, mask, 0)
    return row_mask_impl(grad, mask, dtype)


@row_mask_backward.register_fake
def _row_mask_backward_fake(grad: Tensor, mask: Tensor, dtype: torch.dtype) -> Tensor:
    check_mask(grad, mask, 0)
    return out_like(grad, dtype)


def bias_add_impl(out: Tensor, bias: Tensor, mask: Tensor, dim: int, prune_bias: bool) -> Tensor:
    check_bias(out, bias, mask, dim)
    dst = out_like(out, out.dtype)
    if use_triton(out) and kernel_dtypes(out.dtype, bias.dtype) and is_dense(out):
        return launch.bias_add(out, bias, mask, dim, prune_bias, dst=dst)
    return torch_path.bias_add_into(out, bias, mask, dim, prune_bias, dst)


@torch.library.custom_op("structprune_triton::bias_add", mutates_args=())
def bias_add(out: Tensor, bias: Tensor, mask: Tensor, dim: int, prune_bias: bool) -> Tensor:
    return bias_add_impl(out, bias, mask, dim, prune_bias)


@bias_add.register_fake
def _bias_add_fake(out: Tensor, bias: Tensor, mask: Tensor, dim: int, prune_bias: bool) -> Tensor:
    check_bias(out, bias, mask, dim)
    return out_like(out, out.dtype)

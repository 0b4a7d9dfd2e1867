"""Differentiable entry points: ``row_mask`` (the parametrization's arithmetic) and
``bias_hook`` (the hook's), each choosing per call between

* compiled (``torch.compiler.is_compiling()``), Triton: an ``autograd.Function`` whose forward and
  backward call the opaque custom ops in ``ops.py``, so Dynamo records one op per call and never
  steps into Triton;
* compiled, torch path (CPU without the interpreter): plain torch ops that Inductor fuses into its
  own kernels (an opaque op would hide them from it);
* eager, Triton: the same ``autograd.Function`` launching the kernels directly (no op dispatch);
* eager, torch path: plain torch ops with native autograd (cheapest for small tensors and on CPU).
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import torch_path
from ._backend import HAS_TRITON, kernel_dtypes, use_triton
from .layout import is_dense
from .validate import check_bias, check_mask

if HAS_TRITON:
    from . import launch

_ops = torch.ops.structprune_triton


class _RowMask(torch.autograd.Function):
    """``y = x * mask`` over dim 0; ``grad_x = grad * mask`` cast to ``x.dtype``; no mask grad."""

    @staticmethod
    def forward(ctx, x: Tensor, mask: Tensor) -> Tensor:
        ctx.save_for_backward(mask)
        ctx.x_dtype = x.dtype
        if torch.compiler.is_compiling():
            return _ops.row_mask(x, mask)
        return launch.row_mask(x, mask)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (mask,) = ctx.saved_tensors
        if torch.compiler.is_compiling():
            return _ops.row_mask_backward(grad, mask, ctx.x_dtype), None
        if torch.is_grad_enabled():  # create_graph=True: the gradient must be differentiable too
            return _RowMask.apply(grad, mask).to(ctx.x_dtype), None
        return launch.row_mask(grad, mask, ctx.x_dtype), None


def _kernels_for(x: Tensor, other: Tensor, eager: bool) -> bool:
    """Do the Triton kernels take ``x`` (device, size in eager mode) combined with ``other``?"""
    return use_triton(x, for_eager=eager) and kernel_dtypes(x.dtype, torch.promote_types(other.dtype, x.dtype))


def row_mask(x: Tensor, mask: Tensor) -> Tensor:
    """Row-mask multiply over dim 0 with upstream's result dtype; dead rows are exactly zero.
    Validates its input first (upstream's exception types, see ``validate.py``)."""
    check_mask(x, mask, 0)
    if torch.compiler.is_compiling():
        if _kernels_for(x, mask, eager=False):
            return _RowMask.apply(x, mask)
        return torch_path.row_mask_traceable(x, mask)
    if not _kernels_for(x, mask, eager=True):
        return torch_path.row_mask(x, mask)
    if x.requires_grad and torch.is_grad_enabled():
        return _RowMask.apply(x, mask)
    return launch.row_mask(x, mask)


class _BiasAdd(torch.autograd.Function):
    """Functional ``out + bias'`` for compiled graphs; the gradient w.r.t. ``out`` is ``grad``."""

    @staticmethod
    def forward(ctx, out: Tensor, bias: Tensor, mask: Tensor, dim: int, prune_bias: bool) -> Tensor:
        return _ops.bias_add(out, bias, mask, dim, prune_bias)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None, None, None, None


def bias_hook(output: Tensor, bias: Tensor, mask: Tensor, dim: int, prune_bias: bool) -> Tensor:
    """What ``BiasHook`` does to a module output: with ``prune_bias`` zero the dead entries of the
    parameter ``bias`` in place (no host sync), then add it along ``dim``. ``bias`` gets no
    gradient. ``output`` is updated in place and returned (as upstream), except in a compiled graph
    that runs the Triton op, which returns a new tensor (an op that mutates its input cannot carry
    an autograd formula)."""
    check_bias(output, bias, mask, dim)
    dim = dim % output.dim()
    if torch.compiler.is_compiling():
        if prune_bias:
            with torch.no_grad():
                dead = ~torch_path.keep(mask)
                if output.is_cpu:
                    # an index_put, which Inductor's CPU code computes once; it inlined a
                    # masked_fill into the per-element add loop below (3x slower, bench/NOTES.md)
                    bias[dead] = 0
                else:  # no boolean indexing on CUDA: outside Inductor it would sync the host
                    bias.masked_fill_(dead, 0)
        if _kernels_for(output, bias, eager=False):
            return _BiasAdd.apply(output, bias.detach(), mask, dim, prune_bias)
        # in place as in eager: where `output` is a graph input, Inductor writes it in place
        # instead of allocating a new output (bias is already masked above)
        return output.add_(torch_path.row_view(bias.detach(), output.dim(), dim))
    data = bias.data  # as upstream: no autograd, no version bump on the parameter
    if _kernels_for(output, data, eager=True) and is_dense(output):
        launch.bias_add(output, data, mask, dim, prune_bias, bias_out=data)
        if output.requires_grad:
            # out += c has gradient 1 w.r.t. out: autograd's graph is unchanged, but whoever saved
            # `output` for backward must see that it changed, as with upstream's `output += bias`.
            torch.autograd.graph.increment_version(output)
        return output
    return torch_path.bias_add_(output, data, mask, dim, prune_bias)

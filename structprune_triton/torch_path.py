"""The pure-torch implementation of each op: used on CPU by default, for small CUDA tensors, for
dtypes the kernels do not take, and when Triton is not installed.

Semantics are the kernels' (and upstream's, but for one deliberate difference): a row whose mask is
zero comes out exactly zero, even where the weight holds NaN/inf (upstream's ``mask * x`` gives NaN).
"""

from __future__ import annotations

import torch
from torch import Tensor


def row_view(v: Tensor, ndim: int, dim: int = 0) -> Tensor:
    """``v`` (1-D) reshaped to broadcast along ``dim`` of an ``ndim``-D tensor."""
    shape = [1] * ndim
    shape[dim] = -1
    return v.reshape(shape)


def keep(mask: Tensor) -> Tensor:
    """Boolean "row is live" of any mask dtype (a bool mask is returned as is)."""
    return mask if mask.dtype == torch.bool else mask != 0


# Integer dtype of the same width, to zero rows exactly on the bits: ``int(x) * True`` is ``x``'s
# bit pattern, ``int(x) * False`` is +0.0, whatever ``x`` holds (NaN/inf included). One vectorised
# pass at the speed of upstream's ``mask * x`` (on CPU ``torch.where`` is several times slower).
_SAME_WIDTH_INT = {
    torch.float32: torch.int32,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
    torch.float64: torch.int64,
}


def select_rows(t: Tensor, mask: Tensor) -> Tensor:
    """``t`` with the rows (dim 0) where the bool ``mask`` is False set to +0.0, bit-exact
    elsewhere: an integer multiply of ``t``'s bits by the mask (bool promotes to 0/1)."""
    return (t.view(_SAME_WIDTH_INT[t.dtype]) * row_view(mask, t.dim())).view(t.dtype)


# With autograd, below this size one native ``torch.where`` (native backward) is cheaper than
# :class:`_SelectRows`, whose Python ``autograd.Function`` costs ~15 us per direction on the 2-core
# CPU machine; above it the integer multiply's speed wins (bench/NOTES.md: equal near 32K
# elements, 1.5x faster at 512K). Without autograd the integer multiply always wins. CUDA tensors
# (the torch path only gets small ones there) always take ``where``: on the GPU it is one kernel
# per direction like the multiply, so the Function's Python cost would buy nothing.
WHERE_MAX_NUMEL_GRAD = 1 << 15


class _SelectRows(torch.autograd.Function):
    """:func:`select_rows` with its gradient (the same row zeroing applied to ``grad``)."""

    @staticmethod
    def forward(ctx, x: Tensor, mask: Tensor) -> Tensor:
        ctx.save_for_backward(mask)
        return select_rows(x, mask)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (mask,) = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: keep the gradient differentiable
            return _SelectRows.apply(grad, mask), None
        return select_rows(grad, mask), None


def row_mask(x: Tensor, mask: Tensor) -> Tensor:
    """``mask[r] * x[r]`` with masked rows exactly zero; differentiable through torch autograd.

    Result dtype is upstream's, ``torch.result_type(mask, x)``; strides are TensorIterator's.
    """
    if mask.dtype == torch.bool and x.dtype in _SAME_WIDTH_INT:
        if not (x.requires_grad and torch.is_grad_enabled()):
            return select_rows(x, mask)
        if x.numel() > WHERE_MAX_NUMEL_GRAD and not x.is_cuda:
            return _SelectRows.apply(x, mask)
    return row_mask_traceable(x, mask)


def row_mask_traceable(x: Tensor, mask: Tensor) -> Tensor:
    """:func:`row_mask` as plain differentiable torch ops, for compiled graphs (Inductor fuses
    ``where`` into one vectorised loop; the eager size heuristics do not apply there)."""
    m = row_view(mask, x.dim())
    if mask.dtype == torch.bool:
        return torch.where(m, x, 0)
    return torch.where(m != 0, m * x, 0)


def row_mask_into(x: Tensor, mask: Tensor, out: Tensor) -> Tensor:
    """:func:`row_mask` written into ``out`` (its dtype decides the result dtype)."""
    m = row_view(mask, x.dim())
    zero = torch.zeros((), dtype=out.dtype, device=out.device)
    if mask.dtype == torch.bool:
        return torch.where(m, x.to(out.dtype), zero, out=out)
    prod = m * x
    return torch.where(m != 0, prod.to(out.dtype), zero, out=out)


def masked_bias(bias: Tensor, mask: Tensor) -> Tensor:
    """``bias`` with the entries of dead rows set to zero (a new tensor)."""
    return torch.where(keep(mask), bias, 0)


def bias_add_(out: Tensor, bias: Tensor, mask: Tensor, dim: int, prune_bias: bool) -> Tensor:
    """Upstream's hook arithmetic in place: with ``prune_bias`` zero the dead entries of ``bias``
    (in place, no host sync), then ``out += bias`` broadcast along ``dim``."""
    if prune_bias:
        bias.masked_fill_(~keep(mask), 0)
    return out.add_(row_view(bias, out.dim(), dim))


def bias_add_into(out: Tensor, bias: Tensor, mask: Tensor, dim: int, prune_bias: bool, dst: Tensor) -> Tensor:
    """Functional form of :func:`bias_add_`: ``bias`` is left alone, the sum goes to ``dst``."""
    b = masked_bias(bias, mask) if prune_bias else bias
    return torch.add(out, row_view(b, out.dim(), dim), out=dst)

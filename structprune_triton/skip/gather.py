"""Gathers of unique indices, and their inverse (placing values into zeros), each the other's
gradient, on the fastest CPU kernels measured (1 thread, fp32):

* along the last dim of a tensor of rank > 2, ``index_select`` is about 17x slower than on the same
  data viewed as 2-D ((8, 64, 2048) -> 1024 columns: 3.0 vs 0.17 ms), so it runs on the 2-D view;
* placing columns into zeros along the last dim: ``scatter_`` 0.36 ms, ``index_copy_`` 0.9 ms;
  along other dims (a convolution's channels, weight rows) ``index_copy_`` is the fast one;
* autograd's own backward of ``index_select`` (``index_add_`` into zeros) was a fifth of a training
  step.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["assert_zero_outside", "gather", "is_channels_last", "place", "select"]


def is_channels_last(t: Tensor) -> bool:
    """A 4-D tensor laid out channels-last (and not also contiguous): a convolution given it
    answers in the same format."""
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def _take(t: Tensor, dim: int, idx: Tensor) -> Tensor:
    dim = dim % t.dim()
    if dim == t.dim() - 1 and t.dim() > 2 and t.numel() > 0:
        return t.reshape(-1, t.shape[-1]).index_select(1, idx).view(*t.shape[:-1], idx.shape[0])
    return t.index_select(dim, idx)


def _into_zeros(src: Tensor, dim: int, idx: Tensor, shape: list[int], memory_format: torch.memory_format) -> Tensor:
    dim = dim % src.dim()
    out = torch.empty(shape, dtype=src.dtype, device=src.device, memory_format=memory_format).zero_()
    if src.numel() == 0:  # nothing to place (no live entry, or an empty batch)
        return out
    if dim == src.dim() - 1 and out.is_contiguous():
        flat = src.reshape(-1, src.shape[-1])
        out.view(-1, shape[-1]).scatter_(1, idx.expand(flat.shape[0], idx.shape[0]), flat)
        return out
    return out.index_copy_(dim, idx, src)


class _Select(torch.autograd.Function):
    """``t.index_select(dim, idx)`` (``idx`` unique); the gradient is placed into zeros."""

    @staticmethod
    def forward(ctx, t: Tensor, dim: int, idx: Tensor) -> Tensor:
        ctx.save_for_backward(idx)
        ctx.dim, ctx.shape = dim, list(t.shape)
        ctx.fmt = torch.channels_last if is_channels_last(t) else torch.contiguous_format
        return _take(t, dim, idx)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (idx,) = ctx.saved_tensors
        return _into_zeros(grad, ctx.dim, idx, ctx.shape, ctx.fmt), None, None


class _Place(torch.autograd.Function):
    """A tensor of ``size`` entries along ``dim``: ``src`` at ``idx`` (unique), zeros elsewhere;
    the gradient of ``src`` is the gather of the incoming gradient."""

    @staticmethod
    def forward(ctx, src: Tensor, dim: int, idx: Tensor, size: int, memory_format: torch.memory_format) -> Tensor:
        ctx.save_for_backward(idx)
        ctx.dim = dim
        shape = list(src.shape)
        shape[dim] = size
        return _into_zeros(src, dim, idx, shape, memory_format)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (idx,) = ctx.saved_tensors
        return _take(grad, ctx.dim, idx), None, None, None, None


class _Block(torch.autograd.Function):
    """``t[rows][:, cols]`` (both unique) as two ``index_select`` (rows first: contiguous copies); the
    gradient is placed into zeros one dim at a time (dead rows and dead columns exactly zero).
    On CPU both are about twice as fast as advanced indexing and ``index_put_`` at 4096x4096."""

    @staticmethod
    def forward(ctx, t: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
        ctx.save_for_backward(rows, cols)
        ctx.shape = list(t.shape)
        return _take(t.index_select(0, rows), 1, cols)

    @staticmethod
    def backward(ctx, grad: Tensor):
        rows, cols = ctx.saved_tensors
        shape = list(ctx.shape)
        shape[0] = rows.shape[0]
        live_rows = _into_zeros(grad, 1, cols, shape, torch.contiguous_format)
        return _into_zeros(live_rows, 0, rows, ctx.shape, torch.contiguous_format), None, None


def gather(t: Tensor, rows: Tensor | None, cols: Tensor | None) -> Tensor:
    """Rows (dim 0) and columns (dim 1) ``rows`` and ``cols`` of ``t`` (None: all)."""
    if rows is not None and cols is not None:
        return _Block.apply(t, rows, cols)
    if rows is not None:
        return _Select.apply(t, 0, rows)
    return t if cols is None else _Select.apply(t, 1, cols)


def select(t: Tensor, dim: int, idx: Tensor) -> Tensor:
    """``t.index_select(dim, idx)`` for unique ``idx``."""
    return _Select.apply(t, dim, idx)


def place(src: Tensor, dim: int, idx: Tensor, size: int, memory_format: torch.memory_format) -> Tensor:
    """A tensor like ``src`` with ``size`` entries along ``dim``: ``src`` at the unique ``idx``, exact
    zeros elsewhere, in ``memory_format``."""
    return _Place.apply(src, dim, idx, size, memory_format)


def assert_zero_outside(x: Tensor, channel_dim: int, kept: Tensor, message: str) -> None:
    """Device-side check (no host sync, no autograd record): in the first sample of ``x`` (none in
    an empty batch) every channel along ``channel_dim`` that ``kept`` (one bool per channel, or per
    group of consecutive channels) leaves out holds exact zeros; else ``message`` is raised."""
    sample = x.detach()
    sample = sample.flatten(0, channel_dim - 1) if channel_dim > 0 else sample.unsqueeze(0)
    nonzero = sample[:1].ne(0).any(0)  # per channel (and spatial position)
    nonzero = nonzero.reshape(kept.shape[0], -1).any(1)  # per entry of kept
    torch._assert_async(torch.logical_and(nonzero, kept.logical_not()).any().logical_not(), message)

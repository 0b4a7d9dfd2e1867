"""Moving activations between the dense shape and the live channels: a dense tensor is zero-filled
and the live channels copied in (on CPU a memset of everything is faster than ``index_fill_`` of
the dead channels: Linear 256x4096, 3 of 4 dead, 0.65 vs 1.6 ms; Conv 16x256x32x32 1.3 vs 2.1 ms).
Both directions have one-pass gradients (autograd's own ``index_select`` backward accumulates)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["pick", "spread"]


def _dense(src: Tensor, dim: int, live: Tensor, size: int, fmt: torch.memory_format) -> Tensor:
    shape = list(src.shape)
    shape[dim] = size
    out = torch.empty(shape, dtype=src.dtype, device=src.device, memory_format=fmt).zero_()
    return out.index_copy_(dim, live, src)


def _channels_last(t: Tensor) -> bool:
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


class _Spread(torch.autograd.Function):
    @staticmethod
    def forward(ctx, src: Tensor, dim: int, live: Tensor, size: int, fmt: torch.memory_format) -> Tensor:
        ctx.save_for_backward(live)
        ctx.dim = dim
        return _dense(src, dim, live, size, fmt)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (live,) = ctx.saved_tensors
        return grad.index_select(ctx.dim, live), None, None, None, None


class _Pick(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, dim: int, live: Tensor) -> Tensor:
        ctx.save_for_backward(live)
        ctx.dim, ctx.size = dim, x.shape[dim]
        ctx.fmt = torch.channels_last if _channels_last(x) else torch.contiguous_format
        return x.index_select(dim, live)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (live,) = ctx.saved_tensors
        return _dense(grad, ctx.dim, live, ctx.size, ctx.fmt), None, None


def spread(src: Tensor, dim: int, live: Tensor, size: int, fmt: torch.memory_format) -> Tensor:
    """A dense tensor of ``size`` channels along ``dim``: ``src`` at channels ``live``, zeros elsewhere."""
    return _Spread.apply(src, dim, live, size, fmt)


def pick(x: Tensor, dim: int, live: Tensor) -> Tensor:
    """``x.index_select(dim, live)`` (``live`` unique), the other channels' gradient zero."""
    return _Pick.apply(x, dim, live)

"""Moving activations between the dense shape and the live channels, in one write per element:
the dead channels are zero-filled and the live ones copied (zero-filling everything first writes
the live part twice)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["pick", "spread"]


def _dense(src: Tensor, dim: int, live: Tensor, dead: Tensor, size: int, fmt: torch.memory_format) -> Tensor:
    shape = list(src.shape)
    shape[dim] = size
    out = torch.empty(shape, dtype=src.dtype, device=src.device, memory_format=fmt)
    if dead.numel():
        out.index_fill_(dim, dead, 0)
    return out.index_copy_(dim, live, src)


class _Spread(torch.autograd.Function):
    """``src`` placed at channels ``live`` of a dense tensor whose other channels (``dead``) are 0."""

    @staticmethod
    def forward(ctx, src: Tensor, dim: int, live: Tensor, dead: Tensor, fmt: torch.memory_format) -> Tensor:
        ctx.save_for_backward(live)
        ctx.dim = dim
        return _dense(src, dim, live, dead, live.numel() + dead.numel(), fmt)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (live,) = ctx.saved_tensors
        return grad.index_select(ctx.dim, live), None, None, None, None


class _Pick(torch.autograd.Function):
    """Channels ``live`` of ``x``; the gradient of the others (``dead``) is 0."""

    @staticmethod
    def forward(ctx, x: Tensor, dim: int, live: Tensor, dead: Tensor) -> Tensor:
        ctx.save_for_backward(live, dead)
        ctx.dim = dim
        ctx.fmt = torch.channels_last if _channels_last(x) else torch.contiguous_format
        return x.index_select(dim, live)

    @staticmethod
    def backward(ctx, grad: Tensor):
        live, dead = ctx.saved_tensors
        size = live.numel() + dead.numel()
        return _dense(grad, ctx.dim, live, dead, size, ctx.fmt), None, None, None


def _channels_last(t: Tensor) -> bool:
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def spread(src: Tensor, dim: int, live: Tensor, dead: Tensor, fmt: torch.memory_format) -> Tensor:
    """A dense tensor with ``src`` at channels ``live`` of ``dim`` and zeros at ``dead``."""
    return _Spread.apply(src, dim, live, dead, fmt)


def pick(x: Tensor, dim: int, live: Tensor, dead: Tensor) -> Tensor:
    """``x.index_select(dim, live)``, whose gradient is written in one pass (zeros at ``dead``)."""
    return _Pick.apply(x, dim, live, dead)

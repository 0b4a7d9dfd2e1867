"""Shape and layout helpers of the ops: broadcasting views, live rows, density, fresh outputs."""

from __future__ import annotations

import torch
from torch import Tensor


def along_dim(v: Tensor, ndim: int, dim: int = 0) -> Tensor:
    """``v`` (1-D) reshaped to broadcast along ``dim`` of an ``ndim``-D tensor."""
    shape = [1] * ndim
    shape[dim] = -1
    return v.reshape(shape)


def live_rows(mask: Tensor) -> Tensor:
    """Boolean "row is live" of a mask of any dtype (a bool mask is returned as is)."""
    return mask if mask.dtype == torch.bool else mask != 0


def is_dense(t: Tensor) -> bool:
    """True if ``t`` covers exactly ``numel`` consecutive memory slots (some permutation of a
    contiguous tensor: contiguous, channels_last, transposed, ...)."""
    if t.is_contiguous():
        return True
    dims = sorted((st, sz) for sz, st in zip(t.shape, t.stride(), strict=True) if sz != 1)
    expected = 1
    for st, sz in dims:
        if st != expected:
            return False
        expected *= sz
    return True


def new_output(like: Tensor, dtype: torch.dtype, poison: bool) -> Tensor:
    """Uninitialised result laid out like ``like`` (its strides when dense); NaN-filled if ``poison``
    and ``dtype`` is floating (so an element a kernel fails to write shows up)."""
    out = torch.empty_like(like, dtype=dtype)
    if poison and dtype.is_floating_point:
        out.fill_(float("nan"))
    return out

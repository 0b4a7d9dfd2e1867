"""Shape and layout helpers shared by the ops and the launch geometry."""

from __future__ import annotations

import torch
from torch import Tensor


def row_view(v: Tensor, ndim: int, dim: int = 0) -> Tensor:
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
    dims = sorted((st, sz) for sz, st in zip(t.shape, t.stride()) if sz != 1)
    expected = 1
    for st, sz in dims:
        if st != expected:
            return False
        expected *= sz
    return True


def dense_3d(t: Tensor, dim: int) -> tuple[int, int, int]:
    """``(A, R, B)`` with ``R = t.shape[dim]``, such that element ``(a, r, b)`` of the dense tensor
    ``t`` sits at offset ``a*R*B + r*B + b`` from its data pointer.

    ``B`` is the product of the sizes of the dims laid out inside ``dim`` (its stride), ``A`` the
    product of those outside it. A size-1 ``dim`` is seen as ``(1, 1, numel)``.
    """
    if not is_dense(t):
        raise ValueError("dense_3d needs a non-overlapping, dense tensor")
    n = t.numel()
    R = t.shape[dim]
    if R <= 1 or n == 0:
        return 1, R, n
    B = t.stride(dim)
    return n // (R * B), R, B


def new_output(like: Tensor, dtype: torch.dtype, poison: bool) -> Tensor:
    """Uninitialised result laid out like ``like`` (its strides when dense); NaN-filled if ``poison``
    and ``dtype`` is floating (so an element a kernel fails to write shows up)."""
    out = torch.empty_like(like, dtype=dtype)
    if poison and dtype.is_floating_point:
        out.fill_(float("nan"))
    return out

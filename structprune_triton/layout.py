"""Layout helpers shared by the launchers and the fake (meta) implementations."""

from __future__ import annotations

import torch
from torch import Tensor


def out_like(x: Tensor, dtype: torch.dtype) -> Tensor:
    """Uninitialised result for an elementwise op on ``x``: ``x``'s strides when ``x`` is dense
    (contiguous, channels_last, any permutation), else ``torch.empty_like``'s memory format."""
    return torch.empty_like(x, dtype=dtype)


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

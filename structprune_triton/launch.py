"""From tensors to a kernel launch: tile shape, grid and the (o, r, c) geometry the kernels take.

The ops (``ops/row_mask.py``, ``ops/bias_add.py``) build a :class:`Launch` with their
``plan_launch`` and run it; the ahead-of-time check compiles the same :class:`Launch` for a GPU
target without running it. Only imported when Triton is installed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

from .layout import is_dense
from .config import Settings


def _pow2(n: int) -> int:
    return triton.next_power_of_2(max(1, n))


def gpu_tiles(R: int, B: int, s: Settings) -> tuple[int, int, int]:
    """``(BLOCK_R, BLOCK_B, num_warps)`` for ``R`` rows of ``B`` contiguous elements on the GPU: the
    power-of-two tile of at most ``s.gpu_tile`` elements that wastes the fewest lanes (the padding
    of partial tiles), the wider one on ties, rows at least ``s.gpu_min_block_b`` wide when ``B`` is
    (coalesced segments of 64-128 bytes). Each dim is padded less than 2x."""
    widest = min(_pow2(B), s.gpu_tile)
    narrowest = min(widest, s.gpu_min_block_b)
    best = None
    block_b = widest
    while block_b >= narrowest:
        block_r = min(max(1, s.gpu_tile // block_b), _pow2(R))
        padded = triton.cdiv(R, block_r) * block_r * triton.cdiv(B, block_b) * block_b
        if best is None or padded < best[0]:
            best = (padded, block_r, block_b)
        block_b //= 2
    _, block_r, block_b = best
    return block_r, block_b, max(1, min(s.gpu_max_warps, block_r * block_b // 1024))


def tiles(R: int, B: int, *, interpreter: bool, s: Settings) -> tuple[int, int, int]:
    """``(BLOCK_R, BLOCK_B, num_warps)``: one big tile fitted to the shape under the interpreter
    (each program instance costs about 1 ms there), :func:`gpu_tiles` on a GPU."""
    if interpreter:
        block_b = min(_pow2(B), s.interpreter_tile)
        block_r = min(_pow2(R), max(1, s.interpreter_tile // block_b))
        return block_r, block_b, s.gpu_max_warps
    return gpu_tiles(R, B, s)


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


def compute_dtype(*dtypes: torch.dtype):
    """The kernels' arithmetic type: fp64 if any tensor is fp64, else fp32 (cast on store)."""
    return tl.float64 if torch.float64 in dtypes else tl.float32


def geometry(t: Tensor, dim: int, s: Settings) -> tuple[tuple, tuple[int], dict[str, int]]:
    """Kernel arguments ``(R, C, s_o, s_r, s_c)``, the grid and the tile meta-parameters for the
    dense tensor ``t`` masked along ``dim`` (see ``kernels.py``), from its ``(A, R, B)`` view.

    Usually a tile spans ``r`` and ``b`` (``c = b``, contiguous) within one ``a``. When the masked
    dim is innermost (``B == 1``: a Linear output masked over its last dim, a channels_last
    activation) a tile spans ``r`` (now contiguous) and several ``a`` instead (``c = a``), so that
    it is full even when there are few channels. A CPU tensor means the interpreter; any other
    device (CUDA, meta) gets the GPU tiles."""
    interpreter = t.device.type == "cpu"
    A, R, B = dense_3d(t, dim)
    if B == 1 and A > 1:
        block_c, block_r, warps = tiles(A, R, interpreter=interpreter, s=s)
        args, outer, C = (R, A, 0, 1, R), 1, A
    else:
        block_r, block_c, warps = tiles(R, B, interpreter=interpreter, s=s)
        args, outer, C = (R, B, R * B, B, 1), A, B
    grid = (outer * triton.cdiv(R, block_r) * triton.cdiv(C, block_c),)
    return args, grid, {"BLOCK_R": block_r, "BLOCK_C": block_c, "num_warps": warps}


@dataclass
class Launch:
    """One kernel launch, fully decided: ``kernel[grid](*args, **kwargs)``."""

    kernel: Any
    grid: tuple[int, ...]
    args: tuple
    kwargs: dict[str, Any]

    def run(self) -> None:
        """Launch on the first tensor argument's device (Triton launches on the *current* CUDA
        device, so a tensor on another GPU gets a device guard)."""
        device = self.args[0].device
        if device.type == "cuda" and device.index != torch.cuda.current_device():
            with torch.cuda.device(device):
                self.kernel[self.grid](*self.args, **self.kwargs)
        else:
            self.kernel[self.grid](*self.args, **self.kwargs)

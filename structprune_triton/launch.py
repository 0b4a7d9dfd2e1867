"""From tensors to a kernel launch: tile shape, vector width, grid and the (o, r, c) geometry the kernels take.

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

from .config import Settings


def _pow2(n: int) -> int:
    return triton.next_power_of_2(max(1, n))


# Bytes a thread moves per access: 16 (ld.global.v4.b32) is what bandwidth needs on NVIDIA GPUs.
ACCESS_BYTES = 16
# Rows of the masked-innermost tile on the GPU (see `masked_inner_tiles`): each tile reloads its
# entries of the per-index vectors (mask, bias), so 4 rows keep those reloads at most 1/4 of the
# bytes the tile moves, with about 40 registers a thread.
MASKED_INNER_ROWS = 4


def _elements_per_thread(vec: int) -> int:
    """Per-thread work of a full GPU tile: 4 accesses of ``vec`` elements, at least 8 elements (each
    scalar access needs its own 64-bit address: 16 of them took 74 registers)."""
    return max(4 * vec, 8)


def vector_width(itemsize: int, *extents: int) -> int:
    """Elements per access: as many as fit ``ACCESS_BYTES`` of the widest tensor (``itemsize``
    bytes an element), halved until it divides every one of ``extents`` (the row length and the
    strides the kernel multiplies by it; it does so in 64-bit arithmetic, so any size keeps it)."""
    vec = max(1, ACCESS_BYTES // itemsize)
    while vec > 1 and any(e % vec for e in extents):
        vec //= 2
    return vec


def gpu_tiles(R: int, B: int, s: Settings, vec: int = 1) -> tuple[int, int, int]:
    """``(BLOCK_R, BLOCK_B, num_warps)`` for ``R`` rows of ``B`` contiguous elements on the GPU, at
    ``vec`` elements per access: the power-of-two tile of at most ``s.gpu_tile`` elements (and
    ``_elements_per_thread`` a thread at ``s.gpu_max_warps`` warps) that wastes the fewest lanes
    (the padding of partial tiles), the wider one on ties, rows at least ``s.gpu_min_block_b`` wide
    when ``B`` is (coalesced segments of 64-128 bytes). Each dim is padded less than 2x."""
    per_thread = _elements_per_thread(vec)
    tile = min(s.gpu_tile, 32 * s.gpu_max_warps * per_thread)
    widest = min(_pow2(B), tile)
    narrowest = min(widest, s.gpu_min_block_b)
    best = None
    block_b = widest
    while block_b >= narrowest:
        block_r = min(max(1, tile // block_b), _pow2(R))
        padded = triton.cdiv(R, block_r) * block_r * triton.cdiv(B, block_b) * block_b
        if best is None or padded < best[0]:
            best = (padded, block_r, block_b)
        block_b //= 2
    _, block_r, block_b = best
    return block_r, block_b, max(1, min(s.gpu_max_warps, block_r * block_b // (32 * per_thread)))


def masked_inner_tiles(A: int, R: int, s: Settings, vec: int) -> tuple[int, int, int, bool]:
    """``(BLOCK_A, BLOCK_R, num_warps, FULL)`` on the GPU when the masked dim (``R`` entries) is
    innermost, under ``A`` outer indices.

    The warps lie side by side along the masked dim (``BLOCK_R`` = 32 lanes x ``vec`` x warps), so
    the 1-D mask and bias loads get the same per-thread layout as the tile and meet it without a
    conversion through shared memory; ``BLOCK_A`` rows (``MASKED_INNER_ROWS`` or more for narrow
    accesses) share each load of them. The most warps whose padding stays within 1/8 of ``R``.
    When ``R`` is narrower than one warp's vectors, ``FULL`` tiles load the vectors in the tile's
    shape instead (``kernels._per_index``)."""
    lanes = 32 * vec
    if _pow2(R) < lanes:
        per_thread = 2 * vec  # two accesses, each with its own reload of the vectors (from L1)
        block_r = _pow2(R)
        tile = min(s.gpu_tile, 32 * s.gpu_max_warps * per_thread)
        block_a = min(max(MASKED_INNER_ROWS, tile // block_r), _pow2(A))
        return block_a, block_r, max(1, min(s.gpu_max_warps, block_a * block_r // (32 * per_thread))), True
    options, warps = [], 1
    while warps <= s.gpu_max_warps and lanes * warps <= _pow2(R):
        options.append((triton.cdiv(R, lanes * warps) * lanes * warps, warps))
        warps *= 2
    tight = [w for padded, w in options if 8 * padded <= 9 * R]
    warps = max(tight) if tight else min(options)[1]
    block_a = min(max(MASKED_INNER_ROWS, _elements_per_thread(vec) // vec), _pow2(A))
    return block_a, lanes * warps, warps, False


def tiles(R: int, B: int, *, interpreter: bool, s: Settings, vec: int = 1) -> tuple[int, int, int]:
    """``(BLOCK_R, BLOCK_B, num_warps)``: one big tile fitted to the shape under the interpreter
    (each program instance costs about 1 ms there), :func:`gpu_tiles` on a GPU."""
    if interpreter:
        block_b = min(_pow2(B), s.interpreter_tile)
        block_r = min(_pow2(R), max(1, s.interpreter_tile // block_b))
        return block_r, block_b, s.gpu_max_warps
    return gpu_tiles(R, B, s, vec)


def dense_3d(t: Tensor, dim: int) -> tuple[int, int, int]:
    """``(A, R, B)`` with ``R = t.shape[dim]``, such that element ``(a, r, b)`` of the dense tensor
    ``t`` sits at offset ``a*R*B + r*B + b`` from its data pointer.

    ``B`` is the product of the sizes of the dims laid out inside ``dim`` (its stride), ``A`` the
    product of those outside it. A size-1 ``dim`` is seen as ``(1, 1, numel)``. ``t`` must be dense
    (``layout.is_dense``: the ops make sure of that before they plan a launch).
    """
    n = t.numel()
    R = t.shape[dim]
    if R <= 1 or n == 0:
        return 1, R, n
    B = t.stride(dim)
    return n // (R * B), R, B


def compute_dtype(*dtypes: torch.dtype):
    """The kernels' arithmetic type: fp64 if any tensor is fp64, else fp32 (cast on store)."""
    return tl.float64 if torch.float64 in dtypes else tl.float32


def geometry(t: Tensor, dim: int, s: Settings, *, itemsize: int) -> tuple[tuple, tuple[int], dict[str, int]]:
    """Kernel arguments ``(R, C / VEC, s_o / VEC, s_r / VEC)``, the grid and the constexprs (tile,
    ``MASKED_C``, ``FULL``, ``VEC``, warps) for the dense tensor ``t`` masked along ``dim`` (see
    ``kernels.py``), from its ``(A, R, B)`` view. ``itemsize``: the widest element size among the
    tensors laid out like ``t`` (input and output), for the vector width.

    Usually a tile spans ``r`` (the masked dim) and ``c = b`` (contiguous) within one ``o = a``.
    When the masked dim is innermost (``B == 1``: a Linear output masked over its last dim, a
    channels_last activation) it is ``c`` (``MASKED_C``) and a tile spans several ``a`` as its
    rows, so that it is full even when there are few channels. A CPU tensor means the interpreter;
    any other device (CUDA, meta) gets the GPU tiles."""
    interpreter = t.device.type == "cpu"
    A, R, B = dense_3d(t, dim)
    masked_c = B == 1 and A > 1
    if masked_c:
        rows, C, s_o, s_r, outer = A, R, 0, R, 1
    else:
        rows, C, s_o, s_r, outer = R, B, R * B, B, A
    vec = vector_width(itemsize, C, s_r, s_o)
    full = masked_c and _pow2(C) < 32 * vec
    if masked_c and not interpreter:
        block_r, block_c, warps, full = masked_inner_tiles(rows, C, s, vec)
    else:
        block_r, block_c, warps = tiles(rows, C, interpreter=interpreter, s=s, vec=vec)
    grid = (outer * triton.cdiv(rows, block_r) * triton.cdiv(C, block_c),)
    args = (rows, C // vec, s_o // vec, s_r // vec)
    meta = {"MASKED_C": masked_c, "FULL": full, "VEC": vec, "BLOCK_R": block_r, "BLOCK_C": block_c}
    return args, grid, {**meta, "num_warps": warps}


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

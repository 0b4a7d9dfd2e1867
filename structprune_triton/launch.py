"""Launchers: turn tensors into kernel arguments (layout, tile, grid) and launch.

Called from the custom ops (``ops.py``) and, in eager mode, directly from the autograd wrappers so
that eager calls do not pay the op-dispatch cost. Only imported when Triton is installed.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .kernels import bias_add_kernel, row_mask_kernel
from .layout import dense_3d, is_dense, out_like
from .torch_path import masked_bias

# Elements per program. The interpreter costs about 1 ms per program instance whatever its size, so
# it gets one big tile fitted to the shape. On the GPU a tile holds at most GPU_TILE elements
# (32 a thread at GPU_MAX_WARPS warps): rows x a contiguous width, powers of two chosen per shape by
# `_gpu_tiles` (which dims are the rows and the width: `_geometry`). A first choice from lane
# counts, not yet tuned by measurement (bench/NOTES.md; `bench/tune_tiles.py` measures it).
GPU_TILE, GPU_MAX_WARPS = 4096, 4
# Narrowest tile row on the GPU when a row (B) is wider than this: row segments of 64 (bf16) or
# 128 (fp32) bytes keep loads coalesced.
GPU_MIN_BLOCK_B = 32
INTERPRETER_TILE = 1 << 15


def _pow2(n: int) -> int:
    return triton.next_power_of_2(max(1, n))


def _gpu_tiles(R: int, B: int) -> tuple[int, int, int]:
    """``(BLOCK_R, BLOCK_B, num_warps)`` for ``R`` rows of ``B`` contiguous elements on the GPU: the
    power-of-two tile of at most ``GPU_TILE`` elements that wastes the fewest lanes (the padding of
    partial tiles), the wider one on ties. Each dim is padded less than 2x, where a fixed 4096-wide
    tile ran e.g. 19% of its lanes on rows of a 28x28 feature map (B = 784)."""
    widest = min(_pow2(B), GPU_TILE)
    narrowest = min(widest, GPU_MIN_BLOCK_B)
    best = None
    block_b = widest
    while block_b >= narrowest:
        block_r = min(GPU_TILE // block_b, _pow2(R))
        padded = triton.cdiv(R, block_r) * block_r * triton.cdiv(B, block_b) * block_b
        if best is None or padded < best[0]:
            best = (padded, block_r, block_b)
        block_b //= 2
    _, block_r, block_b = best
    return block_r, block_b, max(1, min(GPU_MAX_WARPS, block_r * block_b // 1024))


def _tiles(R: int, B: int, device: torch.device) -> tuple[int, int, int]:
    """``(BLOCK_R, BLOCK_B, num_warps)`` for ``R`` rows of ``B`` contiguous elements on ``device``."""
    if device.type == "cpu":
        block_b = min(_pow2(B), INTERPRETER_TILE)
        block_r = min(_pow2(R), max(1, INTERPRETER_TILE // block_b))
        return block_r, block_b, GPU_MAX_WARPS
    return _gpu_tiles(R, B)


def _compute(*dtypes: torch.dtype):
    return tl.float64 if torch.float64 in dtypes else tl.float32


def _geometry(t: Tensor, dim: int) -> tuple[tuple, tuple, dict]:
    """Kernel arguments ``(R, C, s_o, s_r, s_c)``, the grid and the tile meta-parameters for the dense
    tensor ``t`` masked along ``dim`` (see ``kernels.py``), from its ``(A, R, B)`` view.

    Usually a tile spans ``r`` and ``b`` (``c = b``, contiguous) within one ``a``. When the masked
    dim is innermost (``B == 1``: a Linear output masked over its last dim, a channels_last
    activation) a tile spans ``r`` (now contiguous) and several ``a`` instead (``c = a``), so that
    it is full even when there are few channels."""
    A, R, B = dense_3d(t, dim)
    if B == 1 and A > 1:
        block_c, block_r, warps = _tiles(A, R, t.device)
        args, outer, C = (R, A, 0, 1, R), 1, A
    else:
        block_r, block_c, warps = _tiles(R, B, t.device)
        args, outer, C = (R, B, R * B, B, 1), A, B
    grid = (outer * triton.cdiv(R, block_r) * triton.cdiv(C, block_c),)
    return args, grid, {"BLOCK_R": block_r, "BLOCK_C": block_c, "num_warps": warps}


def row_mask(x: Tensor, mask: Tensor, out_dtype: torch.dtype | None = None) -> Tensor:
    """New tensor ``x * mask[r]`` over dim 0 (dead rows exactly 0, not read), laid out like ``x``
    (``torch.empty_like``), dtype ``out_dtype`` or upstream's ``result_type(mask, x)``."""
    out = out_like(x, out_dtype or torch.result_type(mask, x))
    if out.numel() == 0:
        return out
    if not is_dense(x):
        x = torch.empty_like(out, dtype=x.dtype).copy_(x)  # same strides as out
    args, grid, meta = _geometry(x, 0)
    row_mask_kernel[grid](x, mask, out, *args, mask.stride(0), COMPUTE=_compute(out.dtype, x.dtype, mask.dtype), **meta)
    return out


def bias_add(
    out: Tensor,
    bias: Tensor,
    mask: Tensor,
    dim: int,
    prune_bias: bool,
    *,
    dst: Tensor | None = None,
    bias_out: Tensor | None = None,
) -> Tensor:
    """``dst = out + bias'`` along ``dim``, ``bias' = bias`` zeroed where ``mask == 0`` if
    ``prune_bias``. ``dst=None`` adds in place into ``out`` (which must be dense); a given ``dst``
    must have ``out``'s strides. ``bias_out`` receives ``bias'`` (may be ``bias`` itself)."""
    target = out if dst is None else dst
    if out.numel() == 0:
        if bias_out is not None and prune_bias:
            bias_out.copy_(masked_bias(bias, mask))
        return target
    args, grid, meta = _geometry(out, dim)
    write_bias = bias_out is not None and prune_bias
    bias_dst = bias_out if write_bias else bias
    bias_add_kernel[grid](
        out, bias, mask, target, bias_dst, *args, bias.stride(0), mask.stride(0), bias_dst.stride(0),
        APPLY_MASK=prune_bias, WRITE_BIAS=write_bias, COMPUTE=_compute(out.dtype, bias.dtype), **meta,
    )
    return target

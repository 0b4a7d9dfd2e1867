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

# Elements per program and warps. The interpreter costs about 1 ms per program instance whatever
# its size, so it gets one big tile fitted to the shape. On the GPU the tile size is fixed and its
# inner width comes from a short list, so that a model's many layer shapes share a handful of
# compiled kernel variants (BLOCK_R/BLOCK_B are compile-time constants: each new pair is a JIT
# compile). GPU values are a first choice (32 elements a thread, 16-byte accesses for every dtype),
# not yet tuned by measurement: see bench/NOTES.md.
GPU_TILE, GPU_WARPS = 4096, 4
GPU_BLOCK_B = (1, 8, 64, 512, 4096)
INTERPRETER_TILE = 1 << 15


def _tiles(R: int, B: int, device: torch.device) -> tuple[int, int, int]:
    """``(BLOCK_R, BLOCK_B, num_warps)`` for an ``(A, R, B)`` view on ``device``."""
    if device.type == "cpu":
        block_b = min(triton.next_power_of_2(B), INTERPRETER_TILE)
        block_r = min(triton.next_power_of_2(R), max(1, INTERPRETER_TILE // block_b))
        return block_r, block_b, GPU_WARPS
    widths = [b for b in GPU_BLOCK_B if b <= GPU_TILE] or [1]
    block_b = next((b for b in widths if b >= min(B, GPU_TILE)), widths[-1])
    return max(1, GPU_TILE // block_b), block_b, GPU_WARPS


def _compute(*dtypes: torch.dtype):
    return tl.float64 if torch.float64 in dtypes else tl.float32


def _grid(A: int, R: int, B: int, block_r: int, block_b: int) -> tuple[int]:
    return (A * triton.cdiv(R, block_r) * triton.cdiv(B, block_b),)


def row_mask(x: Tensor, mask: Tensor, out_dtype: torch.dtype | None = None) -> Tensor:
    """New tensor ``x * mask[r]`` over dim 0 (dead rows exactly 0, not read), laid out like ``x``
    (``torch.empty_like``), dtype ``out_dtype`` or upstream's ``result_type(mask, x)``."""
    out = out_like(x, out_dtype or torch.result_type(mask, x))
    if out.numel() == 0:
        return out
    if not is_dense(x):
        x = torch.empty_like(out, dtype=x.dtype).copy_(x)  # same strides as out
    A, R, B = dense_3d(x, 0)
    block_r, block_b, warps = _tiles(R, B, x.device)
    row_mask_kernel[_grid(A, R, B, block_r, block_b)](
        x, mask, out, R, B, mask.stride(0),
        COMPUTE=_compute(out.dtype, x.dtype, mask.dtype), BLOCK_R=block_r, BLOCK_B=block_b, num_warps=warps,
    )
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
    A, R, B = dense_3d(out, dim)
    block_r, block_b, warps = _tiles(R, B, out.device)
    write_bias = bias_out is not None and prune_bias
    bias_add_kernel[_grid(A, R, B, block_r, block_b)](
        out, bias, mask, target, bias_out if write_bias else bias,
        R, B, bias.stride(0), mask.stride(0), (bias_out if write_bias else bias).stride(0),
        APPLY_MASK=prune_bias, WRITE_BIAS=write_bias, COMPUTE=_compute(out.dtype, bias.dtype),
        BLOCK_R=block_r, BLOCK_B=block_b, num_warps=warps,
    )
    return target


"""Triton kernels, nothing else: pure ``@triton.jit`` functions.

Both kernels work on a dense tensor whose element ``(o, r, c)`` lives at ``o * s_o + r * s_r +
c * s_c`` from its data pointer: ``r`` is the masked dimension (dim 0 of a weight, the channel
dimension of an activation), ``c`` the dimension a tile spans besides ``r``, ``o`` the rest (one
program handles one ``BLOCK_R x BLOCK_C`` tile of one ``o``). Any dense layout (contiguous,
channels_last, permuted) has this form, so no index arithmetic is needed per element; the
launchers choose which dimension is ``c`` (see ``launch.py``). Offsets are int64. Arithmetic runs
in ``COMPUTE`` (fp32, or fp64 when a tensor is fp64) and is cast on store: the interpreter does
wrong bf16 arithmetic otherwise.
"""

import triton
import triton.language as tl


@triton.jit
def _tile(pid, R, C, s_o, s_r, s_c, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """Rows, element offsets and in-bounds mask of program ``pid``'s tile, and whether it is the
    first tile of its rows (``o == 0`` and first c-block). ``pid`` runs over c-blocks fastest."""
    pid = pid.to(tl.int64)
    n_c = tl.cdiv(C, BLOCK_C)
    n_r = tl.cdiv(R, BLOCK_R)
    c_blk = pid % n_c
    rest = pid // n_c
    r_blk = rest % n_r
    o = rest // n_r
    rows = r_blk * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    cols = c_blk * BLOCK_C + tl.arange(0, BLOCK_C).to(tl.int64)
    offs = o * s_o + rows[:, None] * s_r + cols[None, :] * s_c
    in_bounds = (rows < R)[:, None] & (cols < C)[None, :]
    return rows, offs, in_bounds, (o == 0) & (c_blk == 0)


@triton.jit
def _narrow(y, ptr):
    """``y`` cast to ``ptr``'s element type, through fp32 when narrowing fp64 (as torch's
    double -> half/bfloat16 conversion does; the interpreter cannot cast fp64 to bf16 directly)."""
    if ptr.dtype.element_ty != tl.float64:
        y = y.to(tl.float32)
    return y.to(ptr.dtype.element_ty)


@triton.jit
def row_mask_kernel(
    x_ptr,
    mask_ptr,
    out_ptr,
    R,
    C,
    s_o,
    s_r,
    s_c,
    mask_stride,
    COMPUTE: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """``out[o, r, c] = x[o, r, c] * mask[r]``; rows whose mask is 0 are written as exact zeros
    without being read (a masked row costs no read bandwidth, and NaN/inf there do not leak)."""
    rows, offs, in_bounds, _first = _tile(tl.program_id(0), R, C, s_o, s_r, s_c, BLOCK_R, BLOCK_C)
    m = tl.load(mask_ptr + rows * mask_stride, mask=rows < R, other=0).to(COMPUTE)
    live = m != 0
    x = tl.load(x_ptr + offs, mask=in_bounds & live[:, None], other=0).to(COMPUTE)
    y = tl.where(live[:, None], x * m[:, None], 0.0)
    tl.store(out_ptr + offs, _narrow(y, out_ptr), mask=in_bounds)


@triton.jit
def bias_add_kernel(
    src_ptr,
    bias_ptr,
    mask_ptr,
    dst_ptr,
    bias_out_ptr,
    R,
    C,
    s_o,
    s_r,
    s_c,
    bias_stride,
    mask_stride,
    bias_out_stride,
    APPLY_MASK: tl.constexpr,
    WRITE_BIAS: tl.constexpr,
    COMPUTE: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """``dst[o, r, c] = src[o, r, c] + bias'[r]`` with ``bias' = where(mask != 0, bias, 0)`` when
    ``APPLY_MASK``, else ``bias``. ``src`` may be ``dst`` (in place). With ``WRITE_BIAS`` the tiles
    at ``o == 0, c-block == 0`` also store ``bias'`` to ``bias_out`` (each entry written once)."""
    rows, offs, in_bounds, first = _tile(tl.program_id(0), R, C, s_o, s_r, s_c, BLOCK_R, BLOCK_C)
    row_ok = rows < R
    bias = tl.load(bias_ptr + rows * bias_stride, mask=row_ok, other=0).to(COMPUTE)
    if APPLY_MASK:
        m = tl.load(mask_ptr + rows * mask_stride, mask=row_ok, other=0)
        bias = tl.where(m != 0, bias, 0.0)
    if WRITE_BIAS:
        if first:
            tl.store(bias_out_ptr + rows * bias_out_stride, _narrow(bias, bias_out_ptr), mask=row_ok)
    y = tl.load(src_ptr + offs, mask=in_bounds, other=0).to(COMPUTE) + bias[:, None]
    tl.store(dst_ptr + offs, _narrow(y, dst_ptr), mask=in_bounds)

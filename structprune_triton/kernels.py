"""Triton kernels, nothing else: pure ``@triton.jit`` functions.

Both kernels work on a dense tensor seen as ``(A, R, B)``: ``R`` is the masked dimension (dim 0 of
a weight, the channel dimension of an activation), ``A`` every dimension laid out outside it in
memory and ``B`` every dimension inside it (``B`` is the stride of the masked dimension). Element
``(a, r, b)`` lives at ``a * R * B + r * B + b``. Any dense layout (contiguous, channels_last,
permuted) has this form, so no index arithmetic is needed per element. One program handles one
``BLOCK_R x BLOCK_B`` tile; offsets are int64. Arithmetic runs in ``COMPUTE`` (fp32, or fp64 when a
tensor is fp64) and is cast on store: the interpreter does wrong bf16 arithmetic otherwise.
"""

import triton
import triton.language as tl


@triton.jit
def _tile(pid, R, B, BLOCK_R: tl.constexpr, BLOCK_B: tl.constexpr):
    """Rows, columns and base offset of program ``pid``'s tile, and whether it is the first tile of
    its rows (``a == 0`` and first b-block). ``pid`` runs over b-blocks fastest."""
    pid = pid.to(tl.int64)
    n_b = tl.cdiv(B, BLOCK_B)
    n_r = tl.cdiv(R, BLOCK_R)
    b_blk = pid % n_b
    rest = pid // n_b
    r_blk = rest % n_r
    a = rest // n_r
    rows = r_blk * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    cols = b_blk * BLOCK_B + tl.arange(0, BLOCK_B).to(tl.int64)
    return rows, cols, a * R * B, (a == 0) & (b_blk == 0)


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
    B,
    mask_stride,
    COMPUTE: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_B: tl.constexpr,
):
    """``out[a, r, b] = x[a, r, b] * mask[r]``; rows whose mask is 0 are written as exact zeros
    without being read (a masked row costs no read bandwidth, and NaN/inf there do not leak)."""
    rows, cols, base, _first = _tile(tl.program_id(0), R, B, BLOCK_R, BLOCK_B)
    row_ok = rows < R
    m = tl.load(mask_ptr + rows * mask_stride, mask=row_ok, other=0).to(COMPUTE)
    live = m != 0
    in_bounds = row_ok[:, None] & (cols < B)[None, :]
    offs = base + rows[:, None] * B + cols[None, :]
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
    B,
    bias_stride,
    mask_stride,
    bias_out_stride,
    APPLY_MASK: tl.constexpr,
    WRITE_BIAS: tl.constexpr,
    COMPUTE: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_B: tl.constexpr,
):
    """``dst[a, r, b] = src[a, r, b] + bias'[r]`` with ``bias' = where(mask != 0, bias, 0)`` when
    ``APPLY_MASK``, else ``bias``. ``src`` may be ``dst`` (in place). With ``WRITE_BIAS`` the tiles
    at ``a == 0, b-block == 0`` also store ``bias'`` to ``bias_out`` (each entry written once)."""
    rows, cols, base, first = _tile(tl.program_id(0), R, B, BLOCK_R, BLOCK_B)
    row_ok = rows < R
    bias = tl.load(bias_ptr + rows * bias_stride, mask=row_ok, other=0).to(COMPUTE)
    if APPLY_MASK:
        m = tl.load(mask_ptr + rows * mask_stride, mask=row_ok, other=0)
        bias = tl.where(m != 0, bias, 0.0)
    if WRITE_BIAS:
        if first:
            tl.store(bias_out_ptr + rows * bias_out_stride, _narrow(bias, bias_out_ptr), mask=row_ok)
    in_bounds = row_ok[:, None] & (cols < B)[None, :]
    offs = base + rows[:, None] * B + cols[None, :]
    y = tl.load(src_ptr + offs, mask=in_bounds, other=0).to(COMPUTE) + bias[:, None]
    tl.store(dst_ptr + offs, _narrow(y, dst_ptr), mask=in_bounds)

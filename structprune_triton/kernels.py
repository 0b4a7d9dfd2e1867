"""Triton kernels, nothing else: pure ``@triton.jit`` functions.

Both kernels work on a dense tensor whose element ``(o, r, c)`` lives at ``o * s_o + r * s_r + c``
from its data pointer: ``c`` is always the contiguous dimension, one program handles one
``BLOCK_R x BLOCK_C`` tile of one ``o``. The masked dimension (dim 0 of a weight, the channel
dimension of an activation) is ``r``, or ``c`` when ``MASKED_C`` (it is laid out innermost: a
Linear output, a channels_last activation). Any dense layout has this form, so no index arithmetic
is needed per element; ``launch.geometry`` chooses the dims. Offsets and the row length are
computed in int64 (the arguments arrive as int32 where they fit), so no size overflows.

Vector width: ``C``, ``s_o`` and ``s_r`` arrive divided by the constexpr ``VEC`` (which the
launcher checked divides them) and are multiplied back here, so the compiler knows every row
starts on a multiple of ``VEC`` elements: the JIT's only integer hint is "divisible by 16", which
rows of e.g. 1000 or 1080 elements lack. ``VEC`` is also the contiguity the compiler may assume:
16 bytes of the widest tensor, so that a load and a store of different dtypes (a bf16 weight, an
fp32 output) get the same per-thread layout and need no conversion through shared memory.

Arithmetic runs in ``COMPUTE`` (fp32, or fp64 when a tensor is fp64) and is cast on store: the
interpreter does wrong bf16 arithmetic otherwise.
"""

import triton
import triton.language as tl


@triton.jit
def _tile(pid, R, C_vec, s_o_vec, s_r_vec, VEC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """Rows, columns, element offsets, in-bounds mask and block indices of program ``pid``'s tile
    (``pid`` runs over c-blocks fastest), and the row length ``C``."""
    pid = pid.to(tl.int64)
    C = tl.cast(C_vec, tl.int64) * VEC  # 64-bit: C_vec may be an int32 argument, C past 2**31
    n_c = tl.cdiv(C, BLOCK_C)
    n_r = tl.cdiv(R, BLOCK_R)
    c_blk = pid % n_c
    rest = pid // n_c
    r_blk = rest % n_r
    o = rest // n_r
    rows = r_blk * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    cols = tl.max_contiguous(c_blk * BLOCK_C + tl.arange(0, BLOCK_C).to(tl.int64), VEC)
    offs = (o * s_o_vec) * VEC + (rows * s_r_vec)[:, None] * VEC + cols[None, :]
    in_bounds = (rows < R)[:, None] & (cols < C)[None, :]
    return rows, cols, offs, in_bounds, o, r_blk, c_blk, C


@triton.jit
def _per_index(ptr, stride, rows, cols, R, C, MASKED_C: tl.constexpr, FULL: tl.constexpr):
    """The per-index vector at ``ptr`` (mask, bias) for the tile's masked index, shaped to
    broadcast against the tile. ``FULL`` loads it in the tile's own shape (each thread reads its
    entries once per row it holds, from L1): a 1-D load of fewer entries than the program has
    threads gets a layout of its own, and meeting the tile's layout would go through shared memory.
    The launcher sets ``FULL`` when the masked dim is contiguous and narrower than one warp's
    vectors."""
    if MASKED_C:
        if FULL:
            p = tl.broadcast_to((ptr + cols * stride)[None, :], (rows.shape[0], cols.shape[0]))
            v = tl.load(p, mask=tl.broadcast_to((cols < C)[None, :], p.shape), other=0)
        else:
            v = tl.load(ptr + cols * stride, mask=cols < C, other=0)[None, :]
    else:
        v = tl.load(ptr + rows * stride, mask=rows < R, other=0)[:, None]
    return v


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
    C_vec,
    s_o_vec,
    s_r_vec,
    mask_stride,
    COMPUTE: tl.constexpr,
    MASKED_C: tl.constexpr,
    FULL: tl.constexpr,
    VEC: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """``out = x * mask`` along the masked index; entries whose mask is 0 are written as exact zeros
    without being read (a masked row costs no read bandwidth, and NaN/inf there do not leak)."""
    rows, cols, offs, in_bounds, _o, _r_blk, _c_blk, C = _tile(
        tl.program_id(0), R, C_vec, s_o_vec, s_r_vec, VEC, BLOCK_R, BLOCK_C
    )
    m = _per_index(mask_ptr, mask_stride, rows, cols, R, C, MASKED_C, FULL).to(COMPUTE)
    live = m != 0
    x = tl.load(x_ptr + offs, mask=in_bounds & live, other=0).to(COMPUTE)
    y = tl.where(live, x * m, 0.0)
    tl.store(out_ptr + offs, _narrow(y, out_ptr), mask=in_bounds)


@triton.jit
def bias_add_kernel(
    src_ptr,
    bias_ptr,
    mask_ptr,
    dst_ptr,
    bias_out_ptr,
    R,
    C_vec,
    s_o_vec,
    s_r_vec,
    bias_stride,
    mask_stride,
    bias_out_stride,
    APPLY_MASK: tl.constexpr,
    WRITE_BIAS: tl.constexpr,
    COMPUTE: tl.constexpr,
    MASKED_C: tl.constexpr,
    FULL: tl.constexpr,
    VEC: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """``dst = src + bias'`` along the masked index, ``bias' = where(mask != 0, bias, 0)`` when
    ``APPLY_MASK``, else ``bias``. ``src`` may be ``dst`` (in place). With ``WRITE_BIAS`` the tiles
    first along the other dims also store ``bias'`` to ``bias_out`` (each entry written once),
    after the data store so that the data load does not wait on it."""
    rows, cols, offs, in_bounds, o, r_blk, c_blk, C = _tile(
        tl.program_id(0), R, C_vec, s_o_vec, s_r_vec, VEC, BLOCK_R, BLOCK_C
    )
    bias = _per_index(bias_ptr, bias_stride, rows, cols, R, C, MASKED_C, FULL).to(COMPUTE)
    if APPLY_MASK:
        m = _per_index(mask_ptr, mask_stride, rows, cols, R, C, MASKED_C, FULL)
        bias = tl.where(m != 0, bias, 0.0)
    x = tl.load(src_ptr + offs, mask=in_bounds, other=0).to(COMPUTE)
    tl.store(dst_ptr + offs, _narrow(x + bias, dst_ptr), mask=in_bounds)
    if WRITE_BIAS:
        if MASKED_C:
            if (o == 0) & (r_blk == 0):
                if FULL:  # the tile-shaped bias: its first row's lanes store it
                    first_row = (rows == 0)[:, None] & (cols < C)[None, :]
                    p = tl.broadcast_to((bias_out_ptr + cols * bias_out_stride)[None, :], first_row.shape)
                    tl.store(p, _narrow(bias, bias_out_ptr), mask=first_row)
                else:
                    p = (bias_out_ptr + cols * bias_out_stride)[None, :]
                    tl.store(p, _narrow(bias, bias_out_ptr), mask=(cols < C)[None, :])
        elif (o == 0) & (c_blk == 0):
            p = (bias_out_ptr + rows * bias_out_stride)[:, None]
            tl.store(p, _narrow(bias, bias_out_ptr), mask=(rows < R)[:, None])

"""Kernel layer: the ops' kernel launches (``plan_launch`` and the tiles of ``structprune_triton.launch``)
against float64 references, across layouts, tile boundaries, vector widths and dtypes.
Runs the Triton kernels (interpreter on CPU)."""

import pytest
import torch

from structprune_triton import Settings, current_settings
from structprune_triton.launch import dense_3d
from structprune_triton.layout import is_dense

from .helpers import DEVICE, FLOAT_DTYPES, KERNELS, assert_kernel_equal, random_mask

pytestmark = pytest.mark.skipif(not KERNELS, reason="Triton not installed")


def launch_row_mask(x, mask, dtype=None):
    """The row-mask kernel alone (no dispatch), into a new tensor."""
    from structprune_triton.ops import row_mask as op

    return op._launch_new(x, mask, dtype or torch.result_type(mask, x), current_settings())


def launch_bias_add(src, bias, mask, dim, prune_bias, *, dst=None, bias_out=None):
    """The bias-add kernel alone: into ``dst``, or in place into ``src``."""
    from structprune_triton.ops import bias_add as op

    return op._launch(src, bias, mask, src if dst is None else dst, dim, prune_bias, bias_out, current_settings())


def reference_row_mask(x, mask, dtype):
    m = mask.double().reshape([-1] + [1] * (x.dim() - 1))
    return torch.where(m != 0, x.double() * m, 0).to(dtype)


@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.randn(6, 5, 4, 3),
        lambda: torch.randn(6, 5, 4, 3).to(memory_format=torch.channels_last),
        lambda: torch.randn(5, 6).t(),
        lambda: torch.randn(3, 4, 5).permute(1, 2, 0),
        lambda: torch.randn(4, 1, 3),
        lambda: torch.randn(1, 7),
    ],
    ids=["contiguous", "channels_last", "transposed", "permuted", "size1", "one-row"],
)
def test_dense_3d_addresses_every_element(make):
    """(A, R, B) maps (a, r, b) to a*R*B + r*B + b: check against the tensor's own indexing."""
    x = make()
    assert is_dense(x)
    flat = x.as_strided((x.numel(),), (1,))  # memory order from the data pointer
    A, R, B = dense_3d(x, 0)
    assert A * R * B == x.numel()
    row_of_slot = torch.empty(x.numel(), dtype=torch.long)
    idx = torch.arange(x.shape[0]).reshape([-1] + [1] * (x.dim() - 1)).expand(x.shape)
    row_of_slot.as_strided(x.shape, x.stride()).copy_(idx)
    expected = torch.arange(R).repeat_interleave(B).repeat(A) if R > 1 else torch.zeros(x.numel(), dtype=torch.long)
    assert torch.equal(row_of_slot, expected)
    assert flat.numel() == x.numel()


def test_is_dense_rejects_gaps_and_overlaps():
    assert not is_dense(torch.randn(4, 6)[:, ::2])
    assert not is_dense(torch.randn(4, 1).expand(4, 5))
    assert is_dense(torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", [(37, 19), (5, 3, 7), (9,), (3, 5, 2, 3)])
@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.float32])
def test_row_mask_many_tiles(small_tiles, dtype, shape, mask_dtype):
    x = torch.randn(shape, device=DEVICE).to(dtype)
    mask = random_mask(shape[0], mask_dtype, 0.6, soft=False)
    out = launch_row_mask(x, mask)
    assert torch.equal(out, reference_row_mask(x, mask, torch.result_type(mask, x)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.randn(19, 37).t(),
        lambda: torch.randn(3, 7, 5).permute(2, 0, 1),
        lambda: torch.randn(6, 1, 4).permute(2, 1, 0),
    ],
    ids=["transposed", "permuted", "size1-middle"],
)
def test_row_mask_many_tiles_masked_dim_innermost(small_tiles, dtype, make):
    """Dim 0 laid out innermost (B == 1): tiles then span several outer indices (launch.geometry)."""
    x = make().to(DEVICE, dtype)
    assert x.stride(0) == 1
    mask = random_mask(x.shape[0], torch.bool, 0.6)
    out = launch_row_mask(x, mask)
    assert out.stride() == x.stride()
    assert torch.equal(out, reference_row_mask(x, mask, dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("dim_layout", ["linear", "conv", "conv_cl", "btc"])
@pytest.mark.parametrize("prune_bias", [True, False])
def test_bias_add_many_tiles(small_tiles, dtype, dim_layout, prune_bias):
    """In place and into a NaN-filled destination; the fused in-place bias write hits every entry once."""
    shapes = {
        "linear": ((13, 11), 1),
        "conv": ((3, 11, 5, 3), 1),
        "conv_cl": ((3, 11, 5, 3), 1),
        "btc": ((2, 5, 11), 2),
    }
    shape, dim = shapes[dim_layout]
    out = torch.randn(shape, device=DEVICE).to(dtype)
    if dim_layout == "conv_cl":
        out = out.to(memory_format=torch.channels_last)
    bias = torch.randn(shape[dim], device=DEVICE).to(dtype)
    mask = random_mask(shape[dim], torch.bool, 0.5)
    b_ref = torch.where(mask, bias, 0) if prune_bias else bias
    view = [1] * out.dim()
    view[dim] = -1
    expected = (out.double() + b_ref.double().reshape(view)).to(dtype)

    dst = torch.full_like(out, float("nan"))
    launch_bias_add(out, bias, mask, dim, prune_bias, dst=dst)
    assert_kernel_equal(dst, expected)

    bias_out = torch.full_like(bias, float("nan"))
    got = launch_bias_add(out, bias, mask, dim, prune_bias, bias_out=bias_out)
    assert got is out
    assert_kernel_equal(out, expected)
    if prune_bias:
        assert torch.equal(bias_out, b_ref)
    else:
        assert bias_out.isnan().all()  # nothing to write when the bias is not pruned


def test_row_mask_skips_nan_rows_and_non_dense_input(small_tiles):
    x = torch.randn(8, 12, device=DEVICE)
    x[1] = float("nan")
    x[2, 3] = float("inf")
    mask = torch.tensor([1, 0, 0, 1, 1, 0, 1, 1], dtype=torch.bool, device=DEVICE)
    out = launch_row_mask(x[:, ::2], mask)
    assert torch.equal(out, torch.where(mask[:, None], x[:, ::2], 0))
    assert out.is_contiguous()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_row_mask_backward_dtype(small_tiles, dtype):
    """The backward launch casts grad*mask (computed in fp32) to the weight's dtype."""
    g = torch.randn(9, 7, device=DEVICE)
    mask = random_mask(9, torch.float32, 0.7, soft=True)
    out = launch_row_mask(g, mask, dtype)
    expected = torch.where(mask[:, None] != 0, g * mask[:, None], 0).to(dtype)
    assert out.dtype == dtype
    assert_kernel_equal(out, expected)


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE != "cuda", reason="needs a GPU with ~20 GB free")
def test_row_mask_past_int32_offsets():
    """2**31 + some elements: offsets past int32 must not wrap."""
    R, C = 2**16 + 3, 2**15 + 5  # 2.15e9 elements
    x = torch.ones(R, C, dtype=torch.bfloat16, device="cuda")
    x[-1] = 3
    mask = torch.ones(R, dtype=torch.bool, device="cuda")
    mask[1::2] = False
    out = launch_row_mask(x, mask)
    expected_rows = torch.where(mask, 1.0, 0.0).to(torch.bfloat16)
    expected_rows[-1] = 3 if mask[-1] else 0
    assert torch.equal(out[:, 0], expected_rows) and torch.equal(out[:, -1], expected_rows)
    assert torch.equal(out.float().sum(1), expected_rows.float() * C)
    del out
    torch.cuda.empty_cache()
    launch_bias_add(
        x, torch.ones(C, dtype=torch.bfloat16, device="cuda"), torch.ones(C, dtype=torch.bool, device="cuda"), 1, False
    )
    assert x[-1, -1].item() == 4 and x[0, 0].item() == 2


def _padding(n: int, block: int) -> float:
    return -(-n // block) * block / n


@pytest.mark.parametrize("vec", [1, 2, 4, 8])
@pytest.mark.parametrize("r", [1, 3, 64, 255, 256, 4096, 65537])
@pytest.mark.parametrize("b", [1, 2, 9, 31, 33, 63, 64, 576, 700, 784, 1152, 3136, 4096, 9216, 50000, 100000])
def test_gpu_tiles_waste_few_lanes(r, b, vec):
    """GPU tiles: powers of two within the tile budget (``gpu_tile``, and 8 elements or 4 accesses
    a thread), each dim padded less than 2x, and rows of at least ``gpu_min_block_b`` elements where
    the shape has them (coalesced loads)."""
    from structprune_triton import launch

    s = Settings()
    budget = min(s.gpu_tile, 32 * s.gpu_max_warps * max(8, 4 * vec))
    block_r, block_b, warps = launch.tiles(r, b, interpreter=False, s=s, vec=vec)
    for block in (block_r, block_b):
        assert block & (block - 1) == 0
    assert block_r * block_b <= budget
    assert 1 <= warps <= s.gpu_max_warps
    assert _padding(r, block_r) < 2 and _padding(b, block_b) < 2
    assert block_b >= min(b, s.gpu_min_block_b)
    if r * b >= 2 * budget and r >= 4:  # fills tiles (3 rows pad to 4 in any tile of 4+ rows): few idle lanes
        assert _padding(r, block_r) * _padding(b, block_b) < 1.3 or block_r * block_b == budget


def _gpu_geometry(shape, dim, dtype=torch.bfloat16, channels_last=False, itemsize=None):
    """(BLOCK_R, BLOCK_C, warps, programs, VEC, MASKED_C, FULL) a CUDA device gets (meta tensor)."""
    from structprune_triton import launch

    t = torch.empty(shape, device="meta", dtype=dtype)  # not "cpu": the GPU tiles
    if channels_last:
        t = t.to(memory_format=torch.channels_last)
    _, grid, m = launch.geometry(t, dim, Settings(), itemsize=itemsize or t.element_size())
    return m["BLOCK_R"], m["BLOCK_C"], m["num_warps"], grid[0], m["VEC"], m["MASKED_C"], m["FULL"]


def test_gpu_geometry_for_common_layers():
    """The geometry the kernels get for the bench's shapes (recorded so that a change is deliberate;
    ``scripts/aot_check.py`` compiles these and checks what the compiler made of them)."""
    # weight: one row a program, 16-byte accesses
    assert _gpu_geometry((16384, 4096), 0) == (1, 4096, 4, 16384, 8, False, False)
    # bf16 weight, fp32 output (a float mask): accesses of 4 elements, the same layout for both
    assert _gpu_geometry((16384, 4096), 0, itemsize=4) == (1, 2048, 4, 32768, 4, False, False)
    assert _gpu_geometry((1024, 1024, 3, 3), 0) == (4, 1024, 4, 256 * 9, 8, False, False)  # rows of 9216
    assert _gpu_geometry((1024, 1000), 0)[4] == 8  # rows of 1000: a multiple of 8, not of 16
    assert _gpu_geometry((120, 120, 3, 3), 0)[4] == 8  # rows of 1080
    assert _gpu_geometry((64, 3, 7, 7), 0)[4] == 1  # rows of 147: scalar
    assert _gpu_geometry((64, 256, 56, 56), 1) == (64, 64, 4, 64 * 4 * 49, 8, False, False)  # 3136 a row
    # masked dim innermost: warps side by side along it, 4 outer indices a tile (the mask and bias
    # loads share the tile's layout, and are reloaded once per 4 rows)
    assert _gpu_geometry((8192, 4096), 1) == (4, 1024, 4, 2048 * 4, 8, True, False)
    assert _gpu_geometry((8192, 1000), 1) == (4, 1024, 4, 2048, 8, True, False)
    assert _gpu_geometry((64, 256, 56, 56), 1, channels_last=True) == (4, 256, 1, 64 * 56 * 56 // 4, 8, True, False)
    # fewer channels than one warp's vectors: the vectors are loaded in the tile's shape
    assert _gpu_geometry((64, 120, 28, 28), 1, channels_last=True) == (16, 128, 4, 64 * 28 * 28 // 16, 8, True, True)
    assert _gpu_geometry((4096, 50257), 1) == (8, 128, 4, 512 * 393, 1, True, False)


def test_vector_width():
    from structprune_triton.launch import vector_width

    assert vector_width(2, 1000, 1000) == 8  # 16 bytes of bf16
    assert vector_width(4, 1000, 1000) == 4
    assert vector_width(2, 1004, 1004) == 4  # halved until it divides
    assert vector_width(2, 1000, 1000, 12) == 4  # every extent
    assert vector_width(8, 1000) == 2
    assert vector_width(2, 147) == 1
    assert vector_width(2, 8192, 2**31) == 8  # the kernels multiply in 64 bits: no size limit


@pytest.mark.parametrize(
    "shape, dtype, mask_dtype, vec",
    [
        ((6, 24), torch.bfloat16, torch.bool, 8),
        ((6, 40), torch.float32, torch.bool, 4),
        ((6, 40), torch.bfloat16, torch.float32, 4),  # bf16 in, fp32 out: 16 bytes of the wider
        ((5, 16, 3, 1), torch.bfloat16, torch.bool, 8),
    ],
)
def test_row_mask_vectorised_rows(small_tiles, shape, dtype, mask_dtype, vec):
    """Rows of a multiple of VEC elements: sizes and strides reach the kernel divided by VEC."""
    from structprune_triton import launch

    x = torch.randn(shape, device=DEVICE).to(dtype)
    mask = random_mask(shape[0], mask_dtype, 0.5)
    out_dtype = torch.result_type(mask, x)
    itemsize = max(x.element_size(), torch.empty((), dtype=out_dtype).element_size())
    assert launch.geometry(x, 0, current_settings(), itemsize=itemsize)[2]["VEC"] == vec
    out = launch_row_mask(x, mask)
    assert torch.equal(out, reference_row_mask(x, mask, out_dtype))


@pytest.mark.parametrize(
    "shape, dtype, channels_last, vec, full",
    [
        ((5, 48), torch.bfloat16, False, 8, True),  # masked dim innermost, narrower than a warp's vectors
        ((3, 128), torch.float32, False, 4, False),  # as wide as a warp's vectors: 1-D vector loads
        ((3, 37), torch.float32, False, 1, False),
        ((2, 16, 3, 2), torch.bfloat16, True, 8, True),  # channels_last
        ((2, 24, 3, 2), torch.float16, False, 2, False),  # NCHW, rows of 6
    ],
)
@pytest.mark.parametrize("prune_bias", [True, False])
def test_bias_add_vectorised_and_masked_inner(small_tiles, shape, dtype, channels_last, vec, full, prune_bias):
    """Every (VEC, MASKED_C, FULL) path of the bias kernel, in place with the bias write-back and
    into a NaN-filled destination."""
    from structprune_triton import launch

    out = torch.randn(shape, device=DEVICE).to(dtype)
    if channels_last:
        out = out.to(memory_format=torch.channels_last)
    meta = launch.geometry(out, 1, current_settings(), itemsize=out.element_size())[2]
    assert (meta["VEC"], meta["FULL"]) == (vec, full)
    bias = torch.randn(shape[1], device=DEVICE).to(dtype)
    mask = random_mask(shape[1], torch.bool, 0.5)
    b_ref = torch.where(mask, bias, 0) if prune_bias else bias
    view = [1] * out.dim()
    view[1] = -1
    expected = (out.double() + b_ref.double().reshape(view)).to(dtype)
    dst = torch.full_like(out, float("nan"))
    launch_bias_add(out, bias, mask, 1, prune_bias, dst=dst)
    assert_kernel_equal(dst, expected)
    bias_out = torch.full_like(bias, float("nan"))
    launch_bias_add(out, bias, mask, 1, prune_bias, bias_out=bias_out)
    assert_kernel_equal(out, expected)
    assert torch.equal(bias_out, b_ref) if prune_bias else bias_out.isnan().all()

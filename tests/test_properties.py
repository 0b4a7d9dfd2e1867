"""Property tests (hypothesis): ours equals upstream's ``FakeStructuredSparsity`` / ``BiasHook`` on
drawn shapes (rank 1-4, sizes including 1 and odd sizes), weight dtypes (fp32/fp16/bf16/fp64), mask
dtypes (bool/uint8/int64/float32/float16/bfloat16, binary, integer-valued or soft), densities and
layouts (contiguous, channels_last, permuted, sliced non-dense); forward values and result dtype,
gradient of the parametrized weight's ``original``, and the hook's output, in-place ``_bias``
update and ``_bias.grad is None``. Each property runs on the Triton kernels (the interpreter on
CPU) and on the torch path (the ``backend`` fixture).

Inputs hold no NaN/inf: where the weight does, a masked row is exactly zero in ours and NaN in
upstream's (the deliberate difference, tested in ``test_errors.py``).

Values are compared exactly, except a bf16 result the Triton *interpreter* rounds from a wider or
inexact fp32 value (its fp32->bf16 cast truncates; torch rounds to nearest even): one bf16 ulp is
allowed there (``helpers.bf16_ulp_close``). On a GPU everything is exact.

Number of examples per property: 25 by default (CI). More with
``STRUCTPRUNE_HYPOTHESIS_EXAMPLES=<n>``, or 500 with ``HYPOTHESIS_PROFILE=thorough`` (or ``nightly``),
e.g. ``STRUCTPRUNE_HYPOTHESIS_EXAMPLES=2000 python -m pytest tests/test_properties.py``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import parametrize

from structprune_triton import BiasHook, FakeStructuredSparsity

from .helpers import DEVICE, ON_GPU, UpstreamBiasHook, UpstreamFSS, assert_same, bf16_ulp_close, random_mask

_THOROUGH = os.environ.get("HYPOTHESIS_PROFILE", "") in ("thorough", "nightly")
MAX_EXAMPLES = int(os.environ.get("STRUCTPRUNE_HYPOTHESIS_EXAMPLES", "500" if _THOROUGH else "25"))

SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    # The backend fixture only selects the backend: one setup per test is what we want.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

WEIGHT_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
MASK_DTYPES = [torch.bool, torch.uint8, torch.int64, torch.float32, torch.float16, torch.bfloat16]
SIZES = [1, 2, 3, 4, 5, 7, 8, 9]
MAX_NUMEL = 720


@dataclass
class Case:
    shape: tuple[int, ...]
    dtype: torch.dtype
    mask_dtype: torch.dtype
    soft: bool
    density: float
    layout: str
    perm: tuple[int, ...]
    slice_dim: int
    seed: int


def layouts_for(rank: int) -> list[str]:
    return ["contiguous", "sliced"] + (["permuted"] if rank >= 2 else []) + (["channels_last"] if rank == 4 else [])


@st.composite
def cases(draw, max_rank: int = 4, min_rank: int = 1) -> Case:
    rank = draw(st.integers(min_rank, max_rank))
    shape = tuple(draw(st.lists(st.sampled_from(SIZES), min_size=rank, max_size=rank)))
    while math.prod(shape) > MAX_NUMEL:
        i = shape.index(max(shape))
        shape = shape[:i] + (max(1, shape[i] // 2),) + shape[i + 1 :]
    mask_dtype = draw(st.sampled_from(MASK_DTYPES))
    return Case(
        shape=shape,
        dtype=draw(st.sampled_from(WEIGHT_DTYPES)),
        mask_dtype=mask_dtype,
        soft=mask_dtype.is_floating_point and draw(st.booleans()),
        density=draw(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0])),
        layout=draw(st.sampled_from(layouts_for(rank))),
        perm=tuple(draw(st.permutations(range(rank)))),
        slice_dim=draw(st.integers(0, rank - 1)),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def make_mask(c: Case, n: int, gen: torch.Generator) -> torch.Tensor:
    """Live rows (about ``density``): 1 (binary), 1 or 2 (integer dtypes), or in [0.25, 2) (soft)."""
    live = random_mask(n, density=c.density, device="cpu", generator=gen)
    if c.soft:
        vals = torch.rand(n, generator=gen) * 1.75 + 0.25
    elif c.mask_dtype in (torch.uint8, torch.int64):
        vals = torch.randint(1, 3, (n,), generator=gen).float()
    else:
        vals = torch.ones(n)
    mask = torch.where(live, vals, 0) if c.mask_dtype != torch.bool else live
    return mask.to(c.mask_dtype).to(DEVICE)


def with_layout(base: torch.Tensor, c: Case) -> torch.Tensor:
    """A new tensor equal to ``base`` laid out as ``c.layout`` says (works under autograd)."""
    if c.layout == "contiguous":
        return base.clone()
    if c.layout == "channels_last":
        return base.clone(memory_format=torch.channels_last)
    if c.layout == "permuted":
        inv = [c.perm.index(i) for i in range(base.dim())]
        return base.permute(c.perm).clone(memory_format=torch.contiguous_format).permute(inv)
    # sliced: every other element of a tensor twice as long along slice_dim (not dense if size > 1)
    big = base.repeat_interleave(2, dim=c.slice_dim)
    return big[tuple(slice(None, None, 2) if d == c.slice_dim else slice(None) for d in range(base.dim()))]


def interpreter_rounds(backend: str) -> bool:
    """True when results are produced by the Triton interpreter (truncating fp32->bf16 casts)."""
    return backend == "triton" and not ON_GPU


def check_values(actual: torch.Tensor, expected: torch.Tensor, inexact_bf16: bool) -> None:
    if inexact_bf16 and actual.dtype == torch.bfloat16:
        bf16_ulp_close(actual, expected)
    else:
        assert_same(actual, expected)


def parametrized(weight: torch.Tensor, param: nn.Module) -> nn.Module:
    """A bare module whose parameter ``weight`` (kept with its layout) is parametrized by ``param``."""
    mod = nn.Module()
    mod.weight = nn.Parameter(weight)
    parametrize.register_parametrization(mod, "weight", param, unsafe=True)
    assert mod.parametrizations.weight.original.stride() == weight.stride()  # layout kept
    return mod


@SETTINGS
@given(c=cases())
def test_row_mask_equals_upstream(backend, c: Case):
    gen = torch.Generator().manual_seed(c.seed)
    base = torch.randn(c.shape, generator=gen).to(DEVICE, c.dtype)
    mask = make_mask(c, c.shape[0], gen)
    ours = parametrized(with_layout(base, c), FakeStructuredSparsity(mask))
    ref = parametrized(with_layout(base, c), UpstreamFSS(mask))
    y, y_ref = ours.weight, ref.weight
    assert y.dtype == y_ref.dtype == torch.result_type(mask, base)
    # Forward: the only inexact bf16 result is a soft bf16 mask times a bf16 weight.
    check_values(y, y_ref, interpreter_rounds(backend) and c.soft)
    # Backward: grad of `original` is grad * mask, cast to the weight's dtype (inexact for bf16
    # when soft, or when cast down from a wider result dtype).
    g = torch.randn(c.shape, generator=gen).to(DEVICE, y.dtype)
    y.backward(g)
    y_ref.backward(g)
    g_ours = ours.parametrizations.weight.original.grad
    g_ref = ref.parametrizations.weight.original.grad
    assert g_ours.dtype == g_ref.dtype == c.dtype
    check_values(g_ours, g_ref, interpreter_rounds(backend) and (c.soft or y.dtype != c.dtype))


@SETTINGS
@given(c=cases())
def test_row_mask_without_grad_equals_upstream(backend, c: Case):
    # The no-grad path (direct kernel launch, or the torch path without autograd).
    gen = torch.Generator().manual_seed(c.seed)
    x = with_layout(torch.randn(c.shape, generator=gen).to(DEVICE, c.dtype), c)
    mask = make_mask(c, c.shape[0], gen)
    with torch.no_grad():
        y = FakeStructuredSparsity(mask)(x)
    y_ref = UpstreamFSS(mask)(x)
    assert y.dtype == y_ref.dtype and y.shape == y_ref.shape
    check_values(y, y_ref, interpreter_rounds(backend) and c.soft)


@st.composite
def hook_cases(draw):
    kind = draw(st.sampled_from(["linear", "conv2d"]))
    c = draw(cases(max_rank=4 if kind == "conv2d" else 2, min_rank=4 if kind == "conv2d" else 2))
    return kind, c, draw(st.booleans())


@SETTINGS
@given(hc=hook_cases())
def test_bias_hook_equals_upstream(backend, hc):
    kind, c, prune_bias = hc
    gen = torch.Generator().manual_seed(c.seed)
    C = c.shape[1]
    base_out = torch.randn(c.shape, generator=gen).to(DEVICE, c.dtype)
    bias = torch.randn(C, generator=gen).to(DEVICE, c.dtype)
    mask = make_mask(c, C, gen)
    # Upstream's `~mask` is only "mask == 0" for bool masks: its reference gets the bool mask
    # (ours treats every dtype as mask != 0, documented in parametrization.py).
    results = []
    for hook_cls, param_cls, m in (
        (BiasHook, FakeStructuredSparsity, mask),
        (UpstreamBiasHook, UpstreamFSS, mask != 0),
    ):
        module = (nn.Linear(1, C) if kind == "linear" else nn.Conv2d(1, C, 1)).to(DEVICE, c.dtype)
        module.bias = None
        module._bias = nn.Parameter(bias.clone())
        hook = hook_cls(param_cls(m), prune_bias)
        leaf = base_out.clone().requires_grad_()
        out = with_layout(leaf, c)  # the output a module would have produced, laid out as drawn
        ret = hook(module, (None,), out)
        assert ret is out  # eager: in place, as upstream
        g = torch.randn(c.shape, generator=torch.Generator().manual_seed(c.seed + 1)).to(DEVICE, c.dtype)
        out.backward(g)
        results.append((out.detach(), module._bias.detach().clone(), leaf.grad, module._bias.grad))
    (y, b, gl, gb), (y_ref, b_ref, gl_ref, gb_ref) = results
    # out + bias rounds once; the interpreter's bf16 rounding truncates.
    check_values(y, y_ref, interpreter_rounds(backend))
    assert_same(b, b_ref)  # in-place _bias update: pruned entries zero iff prune_bias
    assert_same(gl, gl_ref)  # d(out + c)/d(out) is the identity
    assert gb is None and gb_ref is None

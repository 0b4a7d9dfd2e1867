"""Autograd edges against upstream's ``FakeStructuredSparsity`` / ``BiasHook``, on every backend
(the Triton kernels, or the interpreter on CPU, and the torch path):

1. learnable masks: a float mask with ``requires_grad=True`` gets upstream's gradient (the row sum
   of ``grad * weight``, dead rows included), also with a frozen weight, eager and compiled; the
   weight's gradient equals upstream's on live rows and is exactly zero on dead rows;
2. forward-mode AD: ``forward_ad`` dual tensors, ``torch.func.jvp`` and ``jacfwd`` give upstream's
   tangents (``tangent * mask``, plus ``weight * mask_tangent`` when the mask is a dual too);
3. ``torch.func`` ``grad``, ``vmap`` (a batch of weights or masks; a batch of inputs to a prepared
   module through ``functional_call``), ``jacrev``, ``functional_call``, below and above 32768
   elements (the torch path used to switch implementation there);
4. ``torch.jit.trace`` of a prepared model either replays exactly or fails at once with a message
   naming ``torch.compile`` / ``torch.export``;
5. result dtype equals ``torch.result_type(mask, weight)`` for every dtype pair, values as upstream's
   ``mask.reshape(shape) * x`` (where upstream raises, ours raises the same exception type).

Tolerances: products of one multiply are exact, except a float16/bfloat16 result rounded by the
Triton *interpreter* (its fp32->half cast truncates, torch rounds to nearest even): one ulp there.
A mask gradient is a row sum, whose rounding depends on the summation order: it is compared within
a bound proportional to the row's sum of ``|grad * weight|``.

Examples per hypothesis property: 10 by default; ``STRUCTPRUNE_HYPOTHESIS_EXAMPLES=<n>`` for more.
"""

from __future__ import annotations

import copy
import os
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.ao.pruning._experimental.pruner import parametrization as upstream
from torch.autograd import forward_ad as fwAD
from torch.func import functional_call, grad, jacfwd, jacrev, jvp, vmap

import structprune_triton
from structprune_triton import FakeStructuredSparsity, prepare_module, use_backend
from structprune_triton.testing import random_mask

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
UpstreamFSS = upstream.FakeStructuredSparsity
UpstreamBiasHook = upstream.BiasHook

MAX_EXAMPLES = int(os.environ.get("STRUCTPRUNE_HYPOTHESIS_EXAMPLES", "10"))
SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    # the backend fixture only selects the backend: one setup per test is intended
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

FLOATS = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
HALF = (torch.float16, torch.bfloat16)
# Weight shapes of the torch.func tests: below and above 32768 elements.
SIZES = {"small": (6, 5), "large": (256, 160)}


@pytest.fixture(params=["triton", "torch"])
def backend(request):
    """Run the test with the Triton kernels (skipped where they cannot serve DEVICE) and the torch path."""
    with use_backend(request.param):
        if request.param == "triton" and not structprune_triton.kernels_run_on(torch.device(DEVICE)):
            pytest.skip("the Triton kernels do not run on this machine")
        yield request.param


# ---------------------------------------------------------------- comparisons


def one_ulp_allowed(backend: str, dtype: torch.dtype) -> bool:
    """A half-precision result the Triton interpreter rounded (toward zero) may be one ulp off."""
    return backend == "triton" and DEVICE == "cpu" and dtype in HALF


def assert_same(actual: torch.Tensor, expected: torch.Tensor, *, ulp: bool = False) -> None:
    """Same dtype and shape; values bitwise equal (``ulp``: within one ulp of ``expected``)."""
    assert actual is not None, "no result (None)"
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    if not expected.dtype.is_floating_point:
        assert torch.equal(actual, expected), (actual, expected)
    elif ulp:
        rtol = torch.finfo(expected.dtype).eps
        torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol, atol=0, equal_nan=True)
    else:
        torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True)


def assert_row_sums_close(actual: torch.Tensor, expected: torch.Tensor, abs_sum: torch.Tensor) -> None:
    """``actual`` and ``expected`` are the same row sums computed in different orders: they may
    differ by rounding, bounded by a few eps of the sum of the terms' absolute values (the
    summation) plus one eps of the value (the cast to the mask's dtype)."""
    assert actual is not None, "no mask gradient (mask.grad is None)"
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, (actual, expected)
    eps_sum = torch.finfo(abs_sum.dtype).eps
    eps_out = torch.finfo(expected.dtype).eps
    bound = 8 * eps_sum * abs_sum.double() + eps_out * expected.double().abs() + 1e-30
    err = (actual.double() - expected.double()).abs()
    assert bool((err <= bound).all()), f"row sums differ: max error {err.max().item()}, bound {bound.min().item()}"


def row_abs_sum(g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per row (dim 0): sum of ``|g * x|`` in the result dtype (the terms of the mask gradient)."""
    return (g.double() * x.double()).abs().reshape(x.shape[0], -1).sum(1).to(g.dtype)


def dead_rows(mask: torch.Tensor) -> torch.Tensor:
    return (mask == 0).reshape(-1)


def make_mask(n: int, dtype: torch.dtype, density: float, soft: bool, gen: torch.Generator) -> torch.Tensor:
    return random_mask(n, dtype, density, soft=soft, generator=gen).to(DEVICE)


def randn(shape, dtype, gen) -> torch.Tensor:
    return torch.randn(shape, generator=gen).to(DEVICE, dtype)


# ---------------------------------------------------------------- 1. learnable masks


@st.composite
def learn_cases(draw):
    rank = draw(st.integers(1, 4))
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=rank, max_size=rank)))
    return dict(
        shape=shape,
        wdtype=draw(st.sampled_from(FLOATS)),
        mdtype=draw(st.sampled_from(FLOATS)),
        soft=draw(st.booleans()),
        density=draw(st.sampled_from([0.0, 0.5, 1.0])),
        frozen=draw(st.booleans()),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


@SETTINGS
@given(c=learn_cases())
def test_learnable_mask_gradients_equal_upstream(backend, c):
    gen = torch.Generator().manual_seed(c["seed"])
    x = randn(c["shape"], c["wdtype"], gen)
    mask = make_mask(c["shape"][0], c["mdtype"], c["density"], c["soft"], gen)
    g = randn(c["shape"], torch.result_type(mask, x), gen)
    results = []
    for cls in (FakeStructuredSparsity, UpstreamFSS):
        xi = x.clone().requires_grad_(not c["frozen"])
        mi = mask.clone().requires_grad_(True)
        y = cls(mi)(xi)
        assert y.requires_grad, "the output must require grad when the mask does"
        y.backward(g)
        results.append((y, xi.grad, mi.grad))
    (y, x_grad, m_grad), (y_up, x_grad_up, m_grad_up) = results
    assert_same(y, y_up, ulp=c["soft"] and one_ulp_allowed(backend, y.dtype))
    assert_row_sums_close(m_grad, m_grad_up, row_abs_sum(g, x))
    if c["frozen"]:
        assert x_grad is None
        return
    dead = dead_rows(mask)
    assert bool((x_grad[dead] == 0).all()), "a dead row's weight gradient must be exactly zero"
    inexact = c["soft"] or y.dtype != x.dtype
    assert_same(x_grad, x_grad_up, ulp=inexact and one_ulp_allowed(backend, x.dtype))


def make_layer(kind: str, size: str) -> tuple[nn.Module, torch.Tensor]:
    """A float32 layer and an input batch; ``large`` has a weight of more than 32768 elements."""
    if kind == "linear":
        n_out, n_in = SIZES[size]
        return nn.Linear(n_in, n_out).to(DEVICE), torch.randn(3, n_in, device=DEVICE)
    c_out = 6 if size == "small" else 160
    return nn.Conv2d(4 if size == "small" else 64, c_out, 3).to(DEVICE), torch.randn(
        2, 4 if size == "small" else 64, 5, 5, device=DEVICE
    )


def prepared_pair(kind: str, size: str, mask: torch.Tensor, prune_bias: bool, seed: int = 0):
    """The same layer prepared with ours and with upstream's parametrization and hook (each with its
    own copy of ``mask``), and an input."""
    torch.manual_seed(seed)
    layer, x = make_layer(kind, size)
    ours = prepare_module(copy.deepcopy(layer), mask.clone(), prune_bias=prune_bias)
    ref = prepare_module(
        copy.deepcopy(layer),
        mask.clone(),
        prune_bias=prune_bias,
        parametrization=UpstreamFSS,
        hook=UpstreamBiasHook,
    )
    return ours, ref, x


def learnable_step(model: nn.Module, x: torch.Tensor, g_seed: int, frozen: bool, run=None):
    """Make the mask a leaf requiring grad (and freeze the weight if asked), run forward/backward."""
    param = model.parametrizations.weight
    param[0].mask.requires_grad_(True)
    param.original.requires_grad_(not frozen)
    y = (model if run is None else run)(x)
    y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(g_seed)).to(DEVICE))
    return y, param.original.grad, param[0].mask.grad


def check_learnable_module(ours_result, ref_result, ref: nn.Module, frozen: bool) -> None:
    (y, w_grad, m_grad), (y_up, w_grad_up, m_grad_up) = ours_result, ref_result
    torch.testing.assert_close(y, y_up)
    assert m_grad is not None, "mask.grad is None"
    assert m_grad.shape == m_grad_up.shape and m_grad.dtype == m_grad_up.dtype
    # row sums of grad_weight * weight, summed in another order than upstream's: loose tolerance
    torch.testing.assert_close(m_grad, m_grad_up, rtol=1e-5, atol=1e-4 * float(m_grad_up.abs().max()) + 1e-6)
    mask = ref.parametrizations.weight[0].mask
    if frozen:
        assert w_grad is None and w_grad_up is None
        return
    dead = dead_rows(mask)
    assert bool((w_grad[dead] == 0).all()), "a dead row's weight gradient must be exactly zero"
    torch.testing.assert_close(w_grad, w_grad_up)


@pytest.mark.parametrize("kind", ["linear", "conv2d"])
@pytest.mark.parametrize("size", ["small", "large"])
@pytest.mark.parametrize("frozen", [False, True])
def test_learnable_mask_in_prepared_layer(backend, kind, size, frozen):
    # prune_bias=False: upstream's `bias[~mask]` raises TypeError for a float mask
    n = SIZES[size][0] if kind == "linear" else (6 if size == "small" else 160)
    gen = torch.Generator().manual_seed(1)
    mask = make_mask(n, torch.float32, 0.5, True, gen)
    mask[0] = 0  # at least one dead row, whose mask gradient upstream computes
    ours, ref, x = prepared_pair(kind, size, mask, prune_bias=False)
    check_learnable_module(learnable_step(ours, x, 2, frozen), learnable_step(ref, x, 2, frozen), ref, frozen)


# compiling costs seconds per case: the frozen weight is tested on the small layer only
@pytest.mark.parametrize(("size", "frozen"), [("small", False), ("small", True), ("large", False)])
def test_learnable_mask_compiled(backend, size, frozen):
    torch._dynamo.reset()
    mask = make_mask(SIZES[size][0], torch.float32, 0.5, False, torch.Generator().manual_seed(3))
    mask[0] = 0
    ours, ref, x = prepared_pair("linear", size, mask, prune_bias=False)
    compiled = torch.compile(ours, fullgraph=True, backend="aot_eager")
    got = learnable_step(ours, x, 4, frozen, run=compiled)
    # upstream cannot compile fullgraph (Dynamo skips torch/ao): eager upstream is the reference
    check_learnable_module(got, learnable_step(ref, x, 4, frozen), ref, frozen)


# ---------------------------------------------------------------- 2. forward-mode AD


@st.composite
def fwd_cases(draw):
    rank = draw(st.integers(1, 3))
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=rank, max_size=rank)))
    mask_dual = draw(st.booleans())
    mdtype = draw(st.sampled_from(FLOATS if mask_dual else [torch.bool, torch.uint8, torch.int64, *FLOATS]))
    return dict(
        shape=shape,
        wdtype=draw(st.sampled_from([torch.float32, torch.float64])),
        mdtype=mdtype,
        mask_dual=mask_dual,
        soft=mdtype.is_floating_point and draw(st.booleans()),
        density=draw(st.sampled_from([0.0, 0.5, 1.0])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


@SETTINGS
@given(c=fwd_cases())
def test_forward_ad_dual_tensors_equal_upstream(backend, c):
    gen = torch.Generator().manual_seed(c["seed"])
    x = randn(c["shape"], c["wdtype"], gen)
    tx = randn(c["shape"], c["wdtype"], gen)
    mask = make_mask(c["shape"][0], c["mdtype"], c["density"], c["soft"], gen)
    tm = randn(mask.shape, mask.dtype, gen) if c["mask_dual"] else None
    results = []
    for cls in (FakeStructuredSparsity, UpstreamFSS):
        with fwAD.dual_level():
            m = fwAD.make_dual(mask.clone(), tm) if c["mask_dual"] else mask.clone()
            primal, tangent = fwAD.unpack_dual(cls(m)(fwAD.make_dual(x.clone(), tx)))
            results.append((primal.clone(), None if tangent is None else tangent.clone()))
    (y, t), (y_up, t_up) = results
    assert_same(y, y_up)
    assert t is not None, "no tangent: forward-mode AD through FakeStructuredSparsity must give one"
    if c["mask_dual"]:  # x_t * m + x * m_t: two products and a sum, rounded as upstream's mul rule may not be
        assert t.dtype == t_up.dtype
        torch.testing.assert_close(t, t_up)
    else:
        assert_same(t, t_up)


def func_inputs(size: str, mdtype: torch.dtype, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    shape = SIZES[size]
    x = randn(shape, torch.float32, gen)
    mask = make_mask(shape[0], mdtype, 0.5, mdtype.is_floating_point, gen)
    mask[0] = 0
    return x, mask, gen


def masked_with(cls):
    """``(weight, mask) -> cls(mask)(weight)``: the parametrization as a function of both."""
    return lambda w, m: cls(m)(w)


@pytest.mark.parametrize("size", ["small", "large"])
@pytest.mark.parametrize("mdtype", [torch.bool, torch.float32])
def test_func_jvp_equals_upstream(backend, size, mdtype):
    x, mask, gen = func_inputs(size, mdtype)
    tx = randn(x.shape, x.dtype, gen)
    for_weight = [
        jvp(lambda w, c=cls: masked_with(c)(w, mask), (x,), (tx,)) for cls in (FakeStructuredSparsity, UpstreamFSS)
    ]
    assert_same(for_weight[0][0], for_weight[1][0])
    assert_same(for_weight[0][1], for_weight[1][1])
    if mdtype.is_floating_point:
        tm = randn(mask.shape, mask.dtype, gen)
        both = [jvp(masked_with(cls), (x, mask), (tx, tm)) for cls in (FakeStructuredSparsity, UpstreamFSS)]
        assert_same(both[0][0], both[1][0])
        torch.testing.assert_close(both[0][1], both[1][1])


@pytest.mark.parametrize("mdtype", [torch.bool, torch.float32])
def test_func_jacfwd_equals_upstream(backend, mdtype):
    # jacfwd over every input element: small weights only
    x, mask, _ = func_inputs("small", mdtype)
    argnums = (0, 1) if mdtype.is_floating_point else 0
    jac, jac_up = (jacfwd(masked_with(cls), argnums=argnums)(x, mask) for cls in (FakeStructuredSparsity, UpstreamFSS))
    if not mdtype.is_floating_point:
        jac, jac_up = (jac,), (jac_up,)
    for j, j_up in zip(jac, jac_up, strict=True):
        assert_same(j, j_up)


# ---------------------------------------------------------------- 3. torch.func


@pytest.mark.parametrize("size", ["small", "large"])
@pytest.mark.parametrize("mdtype", [torch.bool, torch.float32])
def test_func_grad_equals_upstream(backend, size, mdtype):
    x, mask, gen = func_inputs(size, mdtype)
    g = randn(x.shape, x.dtype, gen)
    argnums = (0, 1) if mdtype.is_floating_point else 0

    def loss(cls):
        return lambda w, m: (cls(m)(w) * g).sum()

    got = grad(loss(FakeStructuredSparsity), argnums=argnums)(x, mask)
    want = grad(loss(UpstreamFSS), argnums=argnums)(x, mask)
    if mdtype.is_floating_point:
        assert_same(got[0], want[0])
        assert_row_sums_close(got[1], want[1], row_abs_sum(g, x))
    else:
        assert_same(got, want)


@pytest.mark.parametrize("size", ["small", "large"])
@pytest.mark.parametrize("mdtype", [torch.bool, torch.float32])
def test_func_vmap_over_weights_and_masks_equals_upstream(backend, size, mdtype):
    x, mask, gen = func_inputs(size, mdtype)
    weights = randn((3, *x.shape), x.dtype, gen)
    masks = torch.stack([mask, mask.flip(0), torch.zeros_like(mask)])
    for in_dims, args in (((0, None), (weights, mask)), ((0, 0), (weights, masks)), ((None, 0), (x, masks))):
        got = vmap(masked_with(FakeStructuredSparsity), in_dims=in_dims)(*args)
        assert_same(got, vmap(masked_with(UpstreamFSS), in_dims=in_dims)(*args))


@pytest.mark.parametrize("size", ["small", "large"])
@pytest.mark.parametrize("kind", ["linear", "conv2d"])
@pytest.mark.parametrize("prune_bias", [False, True])
def test_func_functional_call_on_prepared_layer_vmap_grad_jvp(backend, size, kind, prune_bias):
    torch.manual_seed(5)
    n = SIZES[size][0] if kind == "linear" else (6 if size == "small" else 160)
    mask = make_mask(n, torch.bool, 0.5, False, torch.Generator().manual_seed(6))
    ours, ref, x = prepared_pair(kind, size, mask, prune_bias=prune_bias)
    xs = torch.stack([x, -x, 2 * x])  # a batch of input batches
    params = {k: v.detach() for k, v in ref.named_parameters()}
    assert set(params) == {k for k, _ in ours.named_parameters()}

    def run(model):
        return lambda p, inp: functional_call(model, p, (inp,))

    got = vmap(run(ours), in_dims=(None, 0))(params, xs)
    torch.testing.assert_close(got, vmap(run(ref), in_dims=(None, 0))(params, xs), rtol=0, atol=0)
    g = torch.randn(got.shape[1:], device=DEVICE)

    def loss(model):
        return lambda p: (functional_call(model, p, (x,)) * g).sum()

    got_grads, want_grads = grad(loss(ours))(params), grad(loss(ref))(params)
    assert set(got_grads) == set(want_grads)
    for k in want_grads:
        torch.testing.assert_close(got_grads[k], want_grads[k], msg=k)
    # forward mode through the layer: tangents of every parameter (the bias hook sees a dual output)
    tangents = {k: torch.randn(v.shape, device=DEVICE) for k, v in params.items()}
    got = jvp(lambda p: functional_call(ours, p, (x,)), (params,), (tangents,))
    want = jvp(lambda p: functional_call(ref, p, (x,)), (params,), (tangents,))
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=0)
    torch.testing.assert_close(got[1], want[1])


@pytest.mark.parametrize("size", ["small", "large"])
@pytest.mark.parametrize("mdtype", [torch.bool, torch.float32])
def test_func_jacrev_equals_upstream(backend, size, mdtype):
    x, mask, gen = func_inputs(size, mdtype)
    argnums = (0, 1) if mdtype.is_floating_point else 0
    if size == "small":

        def f(cls):
            return masked_with(cls)
    else:  # a full Jacobian of 40960 x 40960 would not fit: project the output on two directions
        dirs = randn((2, *x.shape), x.dtype, gen)

        def f(cls):
            return lambda w, m: (cls(m)(w) * dirs).flatten(1).sum(1)

    jac, jac_up = (jacrev(f(cls), argnums=argnums)(x, mask) for cls in (FakeStructuredSparsity, UpstreamFSS))
    if not mdtype.is_floating_point:
        jac, jac_up = (jac,), (jac_up,)
    for j, j_up in zip(jac, jac_up, strict=True):
        assert j.shape == j_up.shape and j.dtype == j_up.dtype
        # entries are products (exact) or, for the mask, row sums of 160 products (order-dependent rounding)
        torch.testing.assert_close(j, j_up, rtol=1e-5, atol=1e-4 if size == "large" else 0)


# ---------------------------------------------------------------- 4. torch.jit.trace


@pytest.mark.parametrize("kind", ["linear", "conv2d"])
@pytest.mark.parametrize("mdtype", [torch.bool, torch.float32])
def test_jit_trace_replays_exactly_or_refuses_clearly(backend, kind, mdtype):
    n = SIZES["small"][0] if kind == "linear" else 6
    mask = make_mask(n, mdtype, 0.5, mdtype.is_floating_point, torch.Generator().manual_seed(7))
    mask[0] = 0
    # upstream's `bias[~mask]` only works for bool masks
    ours, ref, x = prepared_pair(kind, "small", mask, prune_bias=mdtype == torch.bool)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(ours, (x,))
    except Exception as e:  # refusing is allowed, with a message naming the supported way
        assert "torch.compile" in str(e) or "torch.export" in str(e), f"unclear jit.trace error: {e!r}"
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced_ref = torch.jit.trace(ref, (x,))
    for scale in (-1.5, 3.0):
        new = x * scale + 0.25
        with torch.no_grad():
            replay, eager, want = traced(new), ours(new), ref(new)
        torch.testing.assert_close(replay, want)
        torch.testing.assert_close(eager, want)
    # the pruner edits masks in place: where upstream's trace sees the edit, ours must too
    for model in (ours, ref):
        model.parametrizations.weight[0].mask[1] = 0
    with torch.no_grad():
        want = ref(x)
        if torch.equal(traced_ref(x), want):
            torch.testing.assert_close(traced(x), want)


# ---------------------------------------------------------------- 5. result dtype

WEIGHT_DTYPES = [
    torch.bool, torch.uint8, torch.int8, torch.int32, torch.int64,
    torch.float16, torch.bfloat16, torch.float32, torch.float64,
]  # fmt: skip
MASK_DTYPES = [
    torch.bool, torch.uint8, torch.int32, torch.int64,
    torch.float16, torch.bfloat16, torch.float32, torch.float64,
]  # fmt: skip


def values(shape, dtype: torch.dtype, gen: torch.Generator, small: bool = False) -> torch.Tensor:
    """Random values spanning ``dtype`` (``small``: a mask's values, binary-ish or soft)."""
    if dtype == torch.bool:
        return (torch.rand(shape, generator=gen) < 0.5).to(DEVICE)
    if dtype.is_floating_point:
        t = torch.rand(shape, generator=gen) * 1.75 + 0.25 if small else torch.randn(shape, generator=gen) * 8
        return t.to(DEVICE, dtype)
    lo, hi = (0, 4) if small else (torch.iinfo(dtype).min, torch.iinfo(dtype).max)
    lo, hi = max(lo, -(2**10)), min(hi, 2**10)  # wraps uint8 products; no fp16 overflow (inf * 0 = NaN)
    if small and dtype != torch.uint8:
        lo = -2
    return torch.randint(lo, hi + 1, shape, generator=gen).to(DEVICE, dtype)


@pytest.mark.parametrize("wdtype", WEIGHT_DTYPES, ids=str)
@pytest.mark.parametrize("mdtype", MASK_DTYPES, ids=str)
def test_result_dtype_and_values_equal_upstream(backend, wdtype, mdtype):
    gen = torch.Generator().manual_seed(8)
    for shape in ((5, 3), (3, 2, 2, 2)):
        x = values(shape, wdtype, gen)
        binary = values((shape[0],), torch.bool, gen).to(mdtype)
        binary[0] = 0
        for mask, inexact in ((binary, False), (values((shape[0],), mdtype, gen, small=True), True)):
            try:
                want = UpstreamFSS(mask.clone())(x.clone())
            except Exception as e:
                with pytest.raises(type(e)):
                    FakeStructuredSparsity(mask.clone())(x.clone())
                continue
            got = FakeStructuredSparsity(mask.clone())(x.clone())
            assert got.dtype == torch.result_type(mask, x) == want.dtype
            assert_same(got, want, ulp=inexact and one_ulp_allowed(backend, got.dtype))

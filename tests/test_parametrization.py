"""Module layer: our FakeStructuredSparsity / BiasHook / module_contains_param against upstream's
(the reference that defines correctness), on the kernel path and the torch path."""

import contextlib
import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from structprune_triton import (
    BiasHook,
    FakeStructuredSparsity,
    Settings,
    module_contains_param,
    prepare_module,
    row_mask,
    settings,
)

from .helpers import (
    DEVICE,
    FLOAT_DTYPES,
    KERNELS,
    MASK_DTYPES,
    UpstreamBiasHook,
    UpstreamFSS,
    assert_kernel_equal,
    assert_same,
    layout_dims,
    random_mask,
)

SHAPES = {1: (7,), 2: (5, 9), 3: (3, 4, 5), 4: (6, 3, 3, 3), 5: (3, 2, 1, 3, 2)}


def forward_backward(param_cls, x, mask, grad):
    """Output and grad of x through ``param_cls(mask)``."""
    x = x.detach().clone().requires_grad_(True)
    y = param_cls(mask.clone())(x)
    y.backward(grad.to(y.dtype))
    return y.detach(), x.grad


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("mask_dtype", MASK_DTYPES)
@pytest.mark.parametrize("rank", sorted(SHAPES))
def test_forward_backward_equal_upstream(backend, dtype, mask_dtype, rank):
    shape = SHAPES[rank]
    x = torch.randn(shape, device=DEVICE).to(dtype)
    mask = random_mask(shape[0], mask_dtype, 0.5)
    grad = torch.randn(shape, device=DEVICE, dtype=torch.float64)
    y, gx = forward_backward(FakeStructuredSparsity, x, mask, grad)
    y_ref, gx_ref = forward_backward(UpstreamFSS, x, mask, grad)
    assert_same(y, y_ref)  # dtype (upstream's promotion) and every value
    assert_kernel_equal(gx, gx_ref)  # an fp32 grad cast to a bf16 weight is rounded


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("mask_dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_soft_float_mask_scales_rows(backend, dtype, mask_dtype):
    x = torch.randn(11, 6, device=DEVICE).to(dtype)
    mask = random_mask(11, mask_dtype, 0.6, soft=True)
    grad = torch.randn(11, 6, device=DEVICE, dtype=torch.float64)
    y, gx = forward_backward(FakeStructuredSparsity, x, mask, grad)
    y_ref, gx_ref = forward_backward(UpstreamFSS, x, mask, grad)
    assert_kernel_equal(y, y_ref)
    assert_kernel_equal(gx, gx_ref)


LAYOUTS = {
    "channels_last": lambda: torch.randn(6, 5, 3, 3, device=DEVICE).to(memory_format=torch.channels_last),
    "transposed": lambda: torch.randn(7, 5, device=DEVICE).t(),
    "permuted": lambda: torch.randn(4, 5, 6, device=DEVICE).permute(2, 0, 1),
    "sliced": lambda: torch.randn(6, 10, device=DEVICE)[:, 1::3],
    "expanded": lambda: torch.randn(6, 1, device=DEVICE).expand(6, 4),
    "empty_rows": lambda: torch.randn(0, 4, device=DEVICE),
    "empty_cols": lambda: torch.randn(5, 0, device=DEVICE),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_layouts_equal_upstream(backend, layout, dtype):
    x = LAYOUTS[layout]().to(dtype)
    mask = random_mask(x.shape[0], torch.bool, 0.5)
    grad = torch.randn(x.shape, device=DEVICE, dtype=torch.float64)
    y, gx = forward_backward(FakeStructuredSparsity, x, mask, grad)
    y_ref, gx_ref = forward_backward(UpstreamFSS, x, mask, grad)
    assert_same(y, y_ref)
    assert_kernel_equal(gx, gx_ref)
    if layout not in ("sliced", "expanded"):  # dense input: the memory format is kept
        assert layout_dims(y) == layout_dims(y_ref)
    if layout == "channels_last":
        assert y.is_contiguous(memory_format=torch.channels_last)


def test_masked_row_is_zero_even_for_nan_weight(backend):
    """The one deliberate difference from upstream (0 * NaN = NaN there)."""
    x = torch.randn(4, 3, device=DEVICE, requires_grad=True)
    with torch.no_grad():
        x[1] = float("nan")
        x[2, 0] = float("inf")
    mask = torch.tensor([True, False, False, True], device=DEVICE)
    y = FakeStructuredSparsity(mask)(x)
    assert torch.equal(y[1:3], torch.zeros(2, 3, device=DEVICE))
    assert torch.equal(y[[0, 3]], x.detach()[[0, 3]])
    assert UpstreamFSS(mask)(x.detach())[1].isnan().all()  # upstream differs here
    y.backward(torch.ones_like(y))
    assert torch.equal(x.grad, mask[:, None].float().expand(4, 3))


@pytest.mark.parametrize("mask_dtype", MASK_DTYPES)
@pytest.mark.parametrize("how", ["call", "block"])
def test_exact_zeros_false_is_upstreams_arithmetic(mask_dtype, how):
    """``exact_zeros=False`` on the torch path: values and gradients are upstream's, NaN and inf
    of dead rows included (and a float mask that learns gets upstream's gradient)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 4, generator=g).to(DEVICE)
    mask = random_mask(6, mask_dtype, 0.5, generator=g)
    mask[:2] = torch.tensor([0, 1])
    x[0, 1], x[0, 2], x[1, 0] = float("nan"), float("inf"), float("-inf")  # a dead row, a live row
    learn = mask_dtype.is_floating_point
    grad = torch.randn(6, 4, generator=g).to(DEVICE)
    results = []
    for param_cls in (FakeStructuredSparsity, UpstreamFSS):
        xi = x.clone().requires_grad_()
        mi = mask.clone().requires_grad_(learn)
        s = Settings(backend="torch", exact_zeros=False)
        with contextlib.nullcontext() if how == "call" else settings(backend="torch", exact_zeros=False):
            if param_cls is UpstreamFSS or how == "block":
                y = param_cls(mi)(xi)
            else:
                y = row_mask(xi, mi, settings=s)
        y.backward(grad.to(y.dtype))
        results.append((y.detach(), xi.grad, mi.grad))
    (y, gx, gm), (y_ref, gx_ref, gm_ref) = results
    assert_same(y, y_ref)
    assert y[0, 1].isnan() and y[0, 2].isnan()  # upstream: 0 * NaN and 0 * inf
    assert_same(gx, gx_ref)
    if learn:
        assert_same(gm, gm_ref)


def test_exact_zeros_false_leaves_the_kernels_exact():
    """The kernels never read dead rows, whatever ``exact_zeros`` says."""
    if not KERNELS:
        pytest.skip("no Triton kernels on this machine")
    x = torch.randn(4, 3, device=DEVICE)
    x[1] = float("nan")
    mask = torch.tensor([True, False, True, True], device=DEVICE)
    y = row_mask(x, mask, settings=Settings(backend="triton", exact_zeros=False))
    assert torch.equal(y[1], torch.zeros(3, device=DEVICE))


def test_in_place_mask_edits_are_seen(backend):
    w = nn.Linear(6, 5).to(DEVICE)
    mask = torch.ones(5, dtype=torch.bool, device=DEVICE)
    parametrize.register_parametrization(w, "weight", FakeStructuredSparsity(mask))
    original = w.parametrizations.weight.original.detach().clone()
    p = w.parametrizations.weight[0]
    p.mask[1] = False  # as SaliencyPruner does (through mask.data)
    assert torch.equal(w.weight, UpstreamFSS(p.mask)(original))
    p.mask.data = torch.tensor([1, 0, 0, 1, 0], dtype=torch.bool, device=DEVICE)  # as FPGMPruner
    assert torch.equal(w.weight, UpstreamFSS(p.mask)(original))
    assert torch.equal(w.weight[[1, 2, 4]], torch.zeros(3, 6, device=DEVICE))


def test_interface_matches_upstream():
    mask = torch.tensor([True, False, True])
    ours = FakeStructuredSparsity(mask)
    assert isinstance(ours, UpstreamFSS)
    assert ours.mask is mask and "mask" in dict(ours.named_buffers())
    assert ours.state_dict() == {} == UpstreamFSS(mask).state_dict()
    assert type(ours).forward is not UpstreamFSS.forward  # our own, traceable forward
    lin = nn.Linear(4, 3)
    assert not module_contains_param(lin, UpstreamFSS)
    parametrize.register_parametrization(lin, "weight", ours)
    assert module_contains_param(lin, UpstreamFSS) and module_contains_param(lin, FakeStructuredSparsity)
    hook = BiasHook(ours, True)
    assert isinstance(hook, UpstreamBiasHook) and hook.param is ours and hook.prune_bias is True


def test_forward_errors_match_upstream():
    x = torch.randn(3, 4)
    for bad, exc in [(None, AssertionError), (torch.ones(4, dtype=torch.bool), AssertionError)]:
        with pytest.raises(exc):
            UpstreamFSS(bad)(x)
        with pytest.raises(exc):
            FakeStructuredSparsity(bad)(x)
    with pytest.raises(IndexError):
        UpstreamFSS(torch.ones(1, dtype=torch.bool))(torch.tensor(1.0))
    with pytest.raises(IndexError):
        FakeStructuredSparsity(torch.ones(1, dtype=torch.bool))(torch.tensor(1.0))


# ---------------------------------------------------------------- BiasHook


MODULES = {
    "linear": (lambda: nn.Linear(7, 9), (4, 7)),
    "conv2d": (lambda: nn.Conv2d(3, 9, 3, padding=1), (2, 3, 5, 4)),
    "conv2d_cl": (lambda: nn.Conv2d(3, 9, 3).to(memory_format=torch.channels_last), (2, 3, 6, 5)),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("prune_bias", [True, False])
@pytest.mark.parametrize("kind", sorted(MODULES))
def test_bias_hook_equals_upstream(backend, kind, prune_bias, dtype):
    make, in_shape = MODULES[kind]
    base = make().to(DEVICE, dtype)
    mask = random_mask(9, torch.bool, 0.5)
    ours = prepare_module(copy.deepcopy(base), mask.clone(), prune_bias=prune_bias)
    ref = prepare_module(
        copy.deepcopy(base), mask.clone(), prune_bias=prune_bias, parametrization=UpstreamFSS, hook=UpstreamBiasHook
    )
    x = torch.randn(in_shape, device=DEVICE, dtype=dtype)
    if kind == "conv2d_cl":
        x = x.to(memory_format=torch.channels_last)
    grad = torch.randn_like(ref(x))
    outs = []
    for m in (ours, ref):
        xi = x.clone().requires_grad_(True)
        y = m(xi)
        y.backward(grad)
        outs.append((y.detach(), xi.grad, m.parametrizations.weight.original.grad, m._bias))
    (y, gx, gw, b), (y_ref, gx_ref, gw_ref, b_ref) = outs
    assert_kernel_equal(y, y_ref)
    assert_same(gx, gx_ref)
    assert_kernel_equal(gw, gw_ref)
    assert torch.equal(b, b_ref)  # the in-place zeroing of masked entries (or not)
    assert b.grad is None and b_ref.grad is None  # upstream's hook uses .data
    if prune_bias:
        assert torch.equal(b[~mask], torch.zeros_like(b[~mask]))
    assert layout_dims(y) == layout_dims(y_ref)


def test_bias_hook_without_bias_is_identity(backend):
    lin = nn.Linear(4, 3, bias=False).to(DEVICE)
    mask = torch.tensor([True, False, True], device=DEVICE)
    parametrize.register_parametrization(lin, "weight", FakeStructuredSparsity(mask))
    out = torch.randn(2, 3, device=DEVICE)
    assert BiasHook(lin.parametrizations.weight[0], True)(lin, None, out) is out


def test_bias_hook_eager_is_in_place_like_upstream(backend):
    """Upstream mutates the output in place and returns it; so do we (eager)."""
    mask = random_mask(6)
    mask[0] = True  # a live row, so that the add changes the output
    lin = prepare_module(nn.Linear(4, 6).to(DEVICE), mask, prune_bias=True)
    out = torch.randn(3, 6, device=DEVICE)
    before = out.clone()
    ret = BiasHook(lin.parametrizations.weight[0], True)(lin, None, out)
    assert ret is out and not torch.equal(out, before)


def test_bias_hook_version_counter_guards_saved_outputs(backend):
    """If someone saved the output for backward, an in-place add must be detected, as upstream."""
    lin = prepare_module(
        nn.Linear(4, 6).to(DEVICE),
        random_mask(6),
        prune_bias=False,
    )
    x = torch.randn(3, 6, device=DEVICE, requires_grad=True)
    out = x.exp()  # exp saves its output
    BiasHook(lin.parametrizations.weight[0], False)(lin, None, out)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()

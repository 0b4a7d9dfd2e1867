"""Bad input: every entry point fails with a clear error of the type upstream raises for the same
input (upstream is called on the same input in each test), or, where we deliberately differ from
upstream, with the type documented in ``structprune_triton/validate.py``; and the edge cases that
are not errors (NaN/inf weights, empty tensors, (B, T, C) inputs to ``nn.Linear``).

Entry points: the parametrization module (``FakeStructuredSparsity``), the functional API
(``row_mask``, ``add_bias``), the ``torch.library`` ops and the ``BiasHook``; each test runs on the
Triton kernels (interpreter on CPU) and on the torch path through the ``backend`` fixture.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import structprune_triton as sp
from structprune_triton import BiasHook, FakeStructuredSparsity, prepare_module

from .helpers import DEVICE, ON_GPU, UpstreamBiasHook, UpstreamFSS, assert_same, random_mask

ops = torch.ops.structprune_triton


def raised(fn) -> type | None:
    """The type of the exception ``fn()`` raises, or None."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001
        return type(e)
    return None


def module_with_mask(mask):
    """Our parametrization holding ``mask`` (a buffer accepts only a Tensor or None)."""
    p = FakeStructuredSparsity(torch.ones(1, dtype=torch.bool))
    p.mask = mask
    return p


def upstream_with_mask(mask):
    p = UpstreamFSS(torch.ones(1, dtype=torch.bool))
    p.mask = mask
    return p


# Every row-mask entry point: f(x, mask) -> tensor.
ENTRIES = {
    "module": lambda x, m: module_with_mask(m)(x),
    "functional": lambda x, m: sp.row_mask(x, m),
    "op": lambda x, m: ops.row_mask(x, m),
    "op_backward": lambda x, m: ops.row_mask_backward(x, m, x.dtype),
}
ENTRY_NAMES = sorted(ENTRIES)


def upstream_call(x, mask):
    return upstream_with_mask(mask)(x)


def check_same_error(entry, x, mask, expected):
    """Upstream raises ``expected`` on (x, mask); so does our ``entry``."""
    assert raised(lambda: upstream_call(x, mask)) is expected  # upstream's behaviour, pinned
    with pytest.raises(expected):
        ENTRIES[entry](x, mask)


def hook_pair(out_features, bias, mask, prune_bias):
    """(our hook, upstream hook, our module, upstream module): bare Linears holding ``_bias``."""
    pair = []
    for cls in (BiasHook, UpstreamBiasHook):
        lin = nn.Linear(2, out_features, device=DEVICE, dtype=bias.dtype)
        lin.bias = None
        lin._bias = nn.Parameter(bias.clone())
        p = (FakeStructuredSparsity if cls is BiasHook else UpstreamFSS)(torch.ones(1, dtype=torch.bool))
        p.mask = mask
        pair.append((cls(p, prune_bias), lin))
    return pair


# ---------------------------------------------------------------- the mask


def test_mask_not_a_tensor_at_construction():
    # register_buffer refuses a non-tensor: TypeError from nn.Module, for upstream and for us.
    bad = [True, False, True]
    exc = raised(lambda: UpstreamFSS(bad))
    assert exc is TypeError
    with pytest.raises(exc):
        FakeStructuredSparsity(bad)


@pytest.mark.parametrize(
    "entry, bad",
    [("module", None), ("functional", None), ("functional", [True, False, True, True])],
    ids=["module-none", "functional-none", "functional-list"],
)
def test_mask_not_a_tensor_at_forward(backend, entry, bad):
    # (A module's buffer can only hold a Tensor or None.)
    x = torch.randn(4, 3, device=DEVICE)
    # Upstream: AssertionError at forward (the buffer set to None after construction).
    exc = raised(lambda: upstream_with_mask(None)(x))
    assert exc is AssertionError
    with pytest.raises(exc, match="mask must be a torch.Tensor"):
        ENTRIES[entry](x, bad)


@pytest.mark.parametrize("entry", ["op", "op_backward"])
def test_mask_list_through_the_op(backend, entry):
    # No upstream counterpart: the op's schema rejects a list before our code runs, with the
    # dispatcher's RuntimeError.
    x = torch.randn(4, 3, device=DEVICE)
    with pytest.raises(RuntimeError, match="Expected a value of type 'Tensor'"):
        ENTRIES[entry](x, [True] * 4)


@pytest.mark.parametrize("entry", ["op", "op_backward"])
def test_mask_none_through_the_op(backend, entry):
    # None gets through the op's schema (an optional-looking Tensor) and must meet our check, as
    # upstream's AssertionError.
    x = torch.randn(4, 3, device=DEVICE)
    with pytest.raises(AssertionError, match="mask must be a torch.Tensor"):
        ENTRIES[entry](x, None)


@pytest.mark.parametrize("entry", ENTRY_NAMES)
@pytest.mark.parametrize("n", [3, 5, 0])
def test_mask_wrong_length(backend, entry, n):
    x = torch.randn(4, 3, device=DEVICE)
    check_same_error(entry, x, torch.ones(n, dtype=torch.bool, device=DEVICE), AssertionError)


def test_mask_wrong_length_at_registration(backend):
    # register_parametrization evaluates the parametrization once: the error comes from there.
    for param_cls in (UpstreamFSS, FakeStructuredSparsity):
        lin = nn.Linear(3, 4, device=DEVICE)
        with pytest.raises(AssertionError, match=r"mask shape\[0\] \(5\) must match x shape\[0\] \(4\)"):
            parametrize.register_parametrization(
                lin, "weight", param_cls(torch.ones(5, dtype=torch.bool, device=DEVICE))
            )


@pytest.mark.parametrize("entry", ENTRY_NAMES)
def test_mask_2d(backend, entry):
    x = torch.randn(4, 3, device=DEVICE)
    # (4, 3): upstream's reshape to (-1, 1) gives (12, 1), whose product with (4, 3) fails to
    # broadcast: RuntimeError, as ours.
    check_same_error(entry, x, torch.ones(4, 3, dtype=torch.bool, device=DEVICE), RuntimeError)
    # (5, 1): the length check comes first, in upstream and in ours.
    check_same_error(entry, x, torch.ones(5, 1, dtype=torch.bool, device=DEVICE), AssertionError)


@pytest.mark.parametrize("entry", ENTRY_NAMES)
def test_mask_n_by_1_is_rejected(backend, entry):
    # Deliberate difference: upstream's reshape lets an (N, 1) mask broadcast like a 1-D one; we
    # accept only 1-D masks (what every pruner creates) and raise RuntimeError.
    x = torch.randn(4, 3, device=DEVICE)
    mask = torch.tensor([[True], [False], [True], [True]], device=DEVICE)
    assert raised(lambda: upstream_call(x, mask)) is None
    with pytest.raises(RuntimeError, match="1-D"):
        ENTRIES[entry](x, mask)


@pytest.mark.parametrize("entry", ENTRY_NAMES)
def test_mask_0d(backend, entry):
    # Upstream indexes mask.shape[0]: IndexError.
    x = torch.randn(4, 3, device=DEVICE)
    check_same_error(entry, x, torch.tensor(True, device=DEVICE), IndexError)


@pytest.mark.parametrize("entry", ENTRY_NAMES)
def test_mask_on_meta_device(backend, entry):
    # CPU variant of "mask on another device than the weight": upstream's `mask * x` raises
    # RuntimeError (on a GPU machine the weight is on cuda, the mask still on meta).
    x = torch.randn(4, 3, device=DEVICE)
    check_same_error(entry, x, torch.ones(4, dtype=torch.bool, device="meta"), RuntimeError)


@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA device: cpu mask with a cuda weight")
@pytest.mark.parametrize("entry", ENTRY_NAMES)
def test_mask_on_cpu_weight_on_cuda(backend, entry):
    x = torch.randn(4, 3, device="cuda")
    check_same_error(entry, x, torch.ones(4, dtype=torch.bool), RuntimeError)


@pytest.mark.parametrize("entry", ENTRY_NAMES)
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_complex_mask(backend, entry, dtype):
    # Deliberate difference: upstream silently returns a complex weight (which register_parametrization
    # then refuses as a dtype change); we raise TypeError for a complex mask at once.
    x = torch.randn(4, 3, device=DEVICE)
    mask = torch.tensor([1, 0, 1, 1], dtype=dtype, device=DEVICE)
    assert upstream_call(x, mask).dtype == dtype
    with pytest.raises(TypeError, match="not supported"):
        ENTRIES[entry](x, mask)


@pytest.mark.parametrize("entry", ENTRY_NAMES)
def test_weight_of_rank_0(backend, entry):
    # Upstream indexes x.shape[0] of a 0-d tensor: IndexError.
    check_same_error(
        entry, torch.tensor(1.5, device=DEVICE), torch.ones(1, dtype=torch.bool, device=DEVICE), IndexError
    )


# ---------------------------------------------------------------- NaN / inf weights


NONFINITE_ENTRIES = ["module", "functional", "op"]


@pytest.mark.parametrize("entry", NONFINITE_ENTRIES)
@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.uint8, torch.float32])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_nan_inf_weight(backend, entry, mask_dtype, dtype):
    nan, inf = float("nan"), float("inf")
    x = torch.tensor(
        [[nan, 1.0, -2.0], [inf, 2.0, 3.0], [nan, -inf, 0.5], [-inf, inf, nan], [1.0, 2.0, 4.0]],
        dtype=dtype,
        device=DEVICE,
    )
    live = torch.tensor([True, False, True, False, True], device=DEVICE)
    mask = (
        torch.where(live, torch.tensor([2.0, 0, 0.5, 0, 1.0], device=DEVICE), 0).to(mask_dtype)
        if mask_dtype.is_floating_point
        else live.to(mask_dtype)
    )
    ours = ENTRIES[entry](x, mask)
    ref = UpstreamFSS(mask)(x)
    assert ours.dtype == ref.dtype and ours.shape == ref.shape
    # Dead rows: exactly zero (decided; upstream's 0 * NaN/inf gives NaN there).
    assert torch.equal(ours[~live], torch.zeros_like(ours[~live]))
    assert ref[~live].isnan().any()
    # Live rows: NaN/inf propagate exactly as upstream's.
    assert_same(ours[live], ref[live])


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.float32])
def test_nan_inf_weight_backward(backend, mask_dtype):
    nan = float("nan")
    w = torch.tensor([[nan, 1.0], [float("inf"), 2.0], [3.0, nan]], device=DEVICE)
    live = torch.tensor([True, False, True], device=DEVICE)
    mask = live.to(mask_dtype) * (1.5 if mask_dtype.is_floating_point else 1)
    # A finite incoming gradient: grad of the weight is grad * mask, NaN in the weight or not.
    g = torch.tensor([[1.0, -2.0], [3.0, 4.0], [0.5, 0.25]], device=DEVICE)
    grads = []
    for cls in (FakeStructuredSparsity, UpstreamFSS):
        wi = w.clone().requires_grad_()
        cls(mask)(wi).backward(g)
        grads.append(wi.grad)
    assert_same(*grads)
    # A NaN incoming gradient on a dead row: ours gives exactly 0 there (upstream 0 * NaN = NaN).
    g_nan = g.clone()
    g_nan[1] = nan
    g_nan[0, 0] = nan
    wi = w.clone().requires_grad_()
    sp.row_mask(wi, mask).backward(g_nan)
    wu = w.clone().requires_grad_()
    UpstreamFSS(mask)(wu).backward(g_nan)
    assert torch.equal(wi.grad[1], torch.zeros(2, device=DEVICE)) and wu.grad[1].isnan().all()
    assert_same(wi.grad[live], wu.grad[live])  # NaN of a live row propagates, as upstream


# ---------------------------------------------------------------- empty tensors


EMPTY_SHAPES = [(0, 3), (4, 0), (0,), (0, 0, 2), (2, 0, 3), (3, 2, 0, 1)]


@pytest.mark.parametrize("shape", EMPTY_SHAPES, ids=str)
@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.float32])
def test_empty_forward_backward(backend, shape, mask_dtype):
    mask = (torch.arange(shape[0], device=DEVICE) % 2 == 0).to(mask_dtype)
    outs, grads = [], []
    for fn in (
        lambda w: FakeStructuredSparsity(mask)(w),
        lambda w: sp.row_mask(w, mask),
        lambda w: UpstreamFSS(mask)(w),
    ):
        w = torch.randn(shape, device=DEVICE, requires_grad=True)
        y = fn(w)
        y.backward(torch.randn_like(y))
        outs.append(y.detach())
        grads.append(w.grad)
    for o, g in zip(outs[:2], grads[:2], strict=True):
        assert_same(o, outs[2])
        assert_same(g, grads[2])
    for op in (ops.row_mask, lambda x, m: ops.row_mask_backward(x, m, torch.float64)):
        y = op(torch.randn(shape, device=DEVICE), mask)
        assert y.shape == shape


@pytest.mark.parametrize("prune_bias", [True, False])
@pytest.mark.parametrize("kind", ["linear", "conv2d"])
def test_bias_hook_empty_batch(backend, kind, prune_bias):
    make, in_shape = {
        "linear": (lambda: nn.Linear(3, 5), (0, 3)),
        "conv2d": (lambda: nn.Conv2d(3, 5, 1), (0, 3, 4, 4)),
    }[kind]
    base = make().to(DEVICE)
    mask = torch.tensor([True, False, True, False, True], device=DEVICE)
    ours = prepare_module(make().to(DEVICE), mask.clone(), prune_bias=prune_bias)
    ref = prepare_module(
        make().to(DEVICE), mask.clone(), prune_bias=prune_bias, parametrization=UpstreamFSS, hook=UpstreamBiasHook
    )
    for m in (ours, ref):
        with torch.no_grad():
            m.parametrizations.weight.original.copy_(base.weight)
            m._bias.copy_(base.bias)
    x = torch.randn(in_shape, device=DEVICE)
    yo, yr = ours(x), ref(x)
    assert_same(yo, yr)
    # Upstream zeroes the dead bias entries even when the batch is empty: so do we.
    assert_same(ours._bias.detach(), ref._bias.detach())
    assert not prune_bias or torch.equal(ours._bias[~mask], torch.zeros(2, device=DEVICE))
    yo.sum().backward()
    yr.sum().backward()
    assert_same(ours.parametrizations.weight.original.grad, ref.parametrizations.weight.original.grad)
    assert ours._bias.grad is None and ref._bias.grad is None


# ---------------------------------------------------------------- BiasHook


def bias_entry(entry, hook, lin, out, bias, mask, prune_bias):
    """A call of ``entry`` (our hook, ``add_bias``, the op) adding ``bias`` to a copy of ``out``."""
    return {
        "hook": lambda: hook(lin, None, out.clone()),
        "functional": lambda: sp.add_bias(out.clone(), bias, mask, 1, prune_bias),
        "op": lambda: ops.bias_add(out, bias, mask, 1, prune_bias),
    }[entry]


@pytest.mark.parametrize("prune_bias", [True, False])
@pytest.mark.parametrize("entry", ["hook", "functional", "op"])
def test_bias_wrong_length(backend, entry, prune_bias):
    out = torch.randn(2, 4, device=DEVICE)
    bias = torch.randn(3, device=DEVICE)
    mask = torch.ones(4, dtype=torch.bool, device=DEVICE)
    (hook, lin), (uhook, ulin) = hook_pair(4, bias, mask, prune_bias)
    exc = raised(lambda: uhook(ulin, None, out.clone()))
    # Upstream: without prune_bias, `output += bias` fails to broadcast (RuntimeError); with it,
    # `bias[~mask]` fails first (IndexError, the mask having the output's length). We raise
    # RuntimeError either way: one mistake, one error type, whatever prune_bias is (deliberate).
    assert exc is (IndexError if prune_bias else RuntimeError)
    call = bias_entry(entry, hook, lin, out, bias, mask, prune_bias)
    with pytest.raises(RuntimeError, match="cannot be added along dim"):
        call()


@pytest.mark.parametrize("prune_bias", [True, False])
@pytest.mark.parametrize("entry", ["hook", "functional", "op"])
@pytest.mark.parametrize("mask_shape", [(3,), (5,), (4, 1)], ids=str)
def test_bias_hook_mask_does_not_match_bias(backend, entry, prune_bias, mask_shape):
    out = torch.randn(2, 4, device=DEVICE)
    bias = torch.randn(4, device=DEVICE)
    mask = torch.ones(mask_shape, dtype=torch.bool, device=DEVICE)
    (hook, lin), (uhook, ulin) = hook_pair(4, bias, mask, prune_bias)
    exc = raised(lambda: uhook(ulin, None, out.clone()))
    # Upstream: IndexError from `bias[~mask]` with prune_bias; without it upstream never reads the
    # mask and raises nothing. We check the mask either way (deliberate): IndexError.
    assert exc is (IndexError if prune_bias else None)
    call = bias_entry(entry, hook, lin, out, bias, mask, prune_bias)
    with pytest.raises(IndexError, match="does not match bias"):
        call()
    assert torch.equal(lin._bias.detach(), bias)  # nothing written before the error


@pytest.mark.parametrize("prune_bias", [True, False])
def test_bias_hook_mask_none(backend, prune_bias):
    out = torch.randn(2, 4, device=DEVICE)
    (hook, lin), (uhook, ulin) = hook_pair(4, torch.randn(4, device=DEVICE), None, prune_bias)
    # Upstream with prune_bias: `~None` is a TypeError; without, no error (never reads the mask).
    exc = raised(lambda: uhook(ulin, None, out.clone()))
    assert exc is (TypeError if prune_bias else None)
    with pytest.raises(TypeError, match="mask must be a torch.Tensor"):
        hook(lin, None, out.clone())
    with pytest.raises(TypeError, match="mask must be a torch.Tensor"):
        sp.add_bias(out.clone(), lin._bias, None, 1, prune_bias)


@pytest.mark.parametrize("prune_bias", [True, False])
def test_bias_hook_complex_mask(backend, prune_bias):
    out = torch.randn(2, 4, device=DEVICE)
    mask = torch.ones(4, dtype=torch.complex64, device=DEVICE)
    (hook, lin), (uhook, ulin) = hook_pair(4, torch.randn(4, device=DEVICE), mask, prune_bias)
    # Upstream with prune_bias: `~mask` on a complex tensor is a TypeError; we raise it always.
    assert raised(lambda: uhook(ulin, None, out.clone())) is (TypeError if prune_bias else None)
    with pytest.raises(TypeError):
        hook(lin, None, out.clone())


@pytest.mark.parametrize("prune_bias", [True, False])
@pytest.mark.parametrize("where", ["mask", "bias"])
def test_bias_hook_meta_device(backend, prune_bias, where):
    out = torch.randn(2, 4, device=DEVICE)
    bias = torch.randn(4, device="meta" if where == "bias" else DEVICE)
    mask = torch.ones(4, dtype=torch.bool, device="meta" if where == "mask" else DEVICE)
    (hook, lin), (uhook, ulin) = hook_pair(4, bias, mask, prune_bias)
    # Upstream raises nothing: a meta operand sends the in-place op to the Meta kernel, which
    # writes nothing (`bias[~mask] = 0` does not prune, `output += bias` does not add). Deliberate
    # difference: we raise RuntimeError.
    uout = out.clone()
    assert raised(lambda: uhook(ulin, None, uout)) is None
    if where == "bias":
        assert torch.equal(uout, out)  # upstream: the bias was silently not added
    with pytest.raises(RuntimeError, match="is on meta"):
        hook(lin, None, out.clone())
    with pytest.raises(RuntimeError, match="is on meta"):
        sp.add_bias(out.clone(), bias, mask, 1, prune_bias)


@pytest.mark.parametrize("prune_bias", [True, False])
def test_bias_hook_output_of_rank_0(backend, prune_bias):
    # Upstream: `idx[1] = -1` on a 0-d output, IndexError; ours: dim out of range, IndexError.
    out = torch.tensor(1.0, device=DEVICE)
    (hook, lin), (uhook, ulin) = hook_pair(
        1, torch.randn(1, device=DEVICE), torch.ones(1, dtype=torch.bool, device=DEVICE), prune_bias
    )
    exc = raised(lambda: uhook(ulin, None, out.clone()))
    assert exc is IndexError
    with pytest.raises(exc):
        hook(lin, None, out.clone())
    with pytest.raises(exc):
        ops.bias_add(out, lin._bias.detach(), torch.ones(1, dtype=torch.bool, device=DEVICE), 1, prune_bias)


# ---------------------------------------------------------------- nn.Linear on (B, T, C) input


def pruned_reference(lin: nn.Linear, mask: torch.Tensor) -> nn.Linear:
    """What pruning does to ``lin``: the rows of dead output features removed, bias kept for the
    live ones (float64)."""
    keep = mask.bool()
    out = nn.Linear(lin.in_features, int(keep.sum()), dtype=torch.float64, device=DEVICE)
    with torch.no_grad():
        out.weight.copy_(lin.weight[keep])
        out.bias.copy_(lin.bias[keep])
    return out


@pytest.mark.parametrize("prune_bias", [True, False])
@pytest.mark.parametrize("T", [3, 6, 1, 0], ids=lambda t: f"T{t}")
def test_linear_bias_along_last_dim_for_btc_input(backend, prune_bias, T):
    """The deliberate improvement: for ``nn.Linear`` fed (B, T, C), upstream's hook adds the bias
    along dim 1 (T): a crash when T != C, a silently wrong result when T == C. Ours adds it along
    the feature (last) dim and equals the pruned model (T == 0 is an empty (B, 0, C) batch)."""
    B, C_in, C = 2, 5, 6
    torch.manual_seed(0)
    base = nn.Linear(C_in, C, dtype=torch.float64, device=DEVICE)
    mask = torch.tensor([True, False, True, True, False, True], device=DEVICE)
    ours = prepare_module(nn.Linear(C_in, C, dtype=torch.float64, device=DEVICE), mask.clone(), prune_bias=prune_bias)
    ups = prepare_module(
        nn.Linear(C_in, C, dtype=torch.float64, device=DEVICE),
        mask.clone(),
        prune_bias=prune_bias,
        parametrization=UpstreamFSS,
        hook=UpstreamBiasHook,
    )
    for m in (ours, ups):
        with torch.no_grad():
            m.parametrizations.weight.original.copy_(base.weight)
            m._bias.copy_(base.bias)
    x = torch.randn(B, T, C_in, dtype=torch.float64, device=DEVICE)
    y = ours(x)
    expected = pruned_reference(base, mask)(x)
    assert y.shape == (B, T, C)
    torch.testing.assert_close(y[..., mask], expected, rtol=1e-12, atol=1e-12)
    dead = torch.zeros(B, T, 2, dtype=torch.float64, device=DEVICE) + (0 if prune_bias else base.bias[~mask])
    assert torch.equal(y[..., ~mask], dead)
    # Upstream on the same input.
    if T != C:
        with pytest.raises(RuntimeError):
            ups(x)
    else:
        yu = ups(x)
        assert not torch.allclose(yu[..., mask], expected)  # bias added along T: silently wrong
    # Unbatched input (C_in,): ours adds the bias along the only dim; upstream cannot (IndexError).
    x1 = torch.randn(C_in, dtype=torch.float64, device=DEVICE)
    torch.testing.assert_close(ours(x1)[mask], pruned_reference(base, mask)(x1), rtol=1e-12, atol=1e-12)
    with pytest.raises(IndexError):
        ups(x1)


@pytest.mark.parametrize("prune_bias", [True, False])
@pytest.mark.parametrize("case", ["leaf", "leaf_view", "inference"])
def test_bias_hook_in_place_rules_as_upstream(backend, case, prune_bias):
    """The hook adds in place, so torch's in-place rules hold on every path, as for upstream's
    ``output += bias``: a leaf that requires grad (or a view of one), or an inference tensor
    outside inference mode, cannot be written (RuntimeError); under no_grad a leaf can."""
    lin = nn.Linear(4, 5).to(DEVICE)
    mask = random_mask(5)
    ours = BiasHook(FakeStructuredSparsity(mask), prune_bias)
    ref = UpstreamBiasHook(UpstreamFSS(mask.clone()), prune_bias)
    lin._bias = nn.Parameter(torch.randn(5, device=DEVICE))
    if case == "leaf":
        make = lambda: torch.randn(3, 5, device=DEVICE, requires_grad=True)  # noqa: E731
    elif case == "leaf_view":
        make = lambda: torch.randn(4, 5, device=DEVICE, requires_grad=True)[1:]  # noqa: E731
    else:

        def make():
            with torch.inference_mode():
                return torch.randn(3, 5, device=DEVICE)

    for hook in (ref, ours):
        out = make()
        with pytest.raises(RuntimeError, match="(?i)in-place|inplace"):
            hook(lin, None, out)
    if case == "leaf":
        with torch.no_grad():
            out = make()
            before = out.detach().clone()
            assert ours(lin, None, out) is out and not torch.equal(out, before)

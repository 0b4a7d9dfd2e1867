"""``torch.autograd.gradcheck`` (float64, finite differences against the analytical backward) for
``row_mask`` with bool, integer and soft float masks and for the differentiable part of
``add_bias`` (the gradient w.r.t. the module output), through the public functional API, through
the modules (``FakeStructuredSparsity``, a parametrized ``nn.Linear`` with our ``BiasHook``), and
through a ``torch.compile(backend="aot_eager", fullgraph=True)`` graph (the compiled path's
``autograd.Function`` calling the custom ops). Kernels and torch path via the ``backend`` fixture.

Under the Triton interpreter a kernel launch costs about 10 ms, so there the checks use
``fast_mode=True`` (the Jacobian checked along random directions: a handful of calls instead of two
per input element) except for one exhaustive check per entry point on a tiny shape.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.autograd import gradcheck, gradgradcheck

import structprune_triton as sp
from structprune_triton import FakeStructuredSparsity, prepare_module

from .helpers import DEVICE, ON_GPU, UpstreamFSS

F64 = torch.float64


def fast(backend: str) -> bool:
    """Fast-mode gradcheck where every call is a Triton interpreter launch."""
    return backend == "triton" and not ON_GPU


def masks(n: int) -> dict[str, torch.Tensor]:
    live = torch.tensor([True, False, True, True, False, True, False][:n], device=DEVICE)
    soft = torch.tensor([0.5, 0.0, 1.75, -1.25, 0.0, 3.0, 0.0][:n], dtype=F64, device=DEVICE)
    return {
        "bool": live,
        "int64": live.to(torch.int64) * 2,
        "float32_soft": soft.float(),
        "float64_soft": soft,
        "all_dead": torch.zeros(n, dtype=torch.bool, device=DEVICE),
    }


MASK_NAMES = sorted(masks(1))


def leaf(*shape, seed=0, layout="contiguous") -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=F64).to(DEVICE)
    if layout == "transposed":
        x = x.transpose(0, -1).contiguous().transpose(0, -1)
    elif layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    return x.requires_grad_()


@pytest.mark.parametrize("mask_name", MASK_NAMES)
@pytest.mark.parametrize(
    "shape, layout",
    [((5, 2), "contiguous"), ((5, 2, 3), "transposed"), ((5, 1, 3, 2), "channels_last"), ((5,), "contiguous")],
    ids=str,
)
def test_row_mask_functional(backend, mask_name, shape, layout):
    mask = masks(shape[0])[mask_name]
    x = leaf(*shape, layout=layout)
    assert gradcheck(lambda t: sp.row_mask(t, mask), (x,), fast_mode=fast(backend))


@pytest.mark.parametrize("mask_name", ["bool", "float64_soft"])
def test_row_mask_functional_exhaustive(backend, mask_name):
    # Every Jacobian entry (slow mode) on a tiny shape, also under the interpreter.
    mask = masks(4)[mask_name]
    assert gradcheck(lambda t: sp.row_mask(t, mask), (leaf(4, 2),), fast_mode=False)


@pytest.mark.parametrize("mask_name", ["bool", "float64_soft"])
def test_row_mask_double_backward(backend, mask_name):
    mask = masks(4)[mask_name]
    x = leaf(4, 2)
    # Upstream's backward (grad * mask) is differentiable: pin that, then require the same of ours.
    (gx,) = torch.autograd.grad(
        UpstreamFSS(mask)(x), x, torch.ones(4, 2, dtype=F64, requires_grad=True), create_graph=True
    )
    assert gx.requires_grad
    assert gradgradcheck(lambda t: sp.row_mask(t, mask), (x,), fast_mode=fast(backend))


@pytest.mark.parametrize("mask_name", MASK_NAMES)
def test_row_mask_module(backend, mask_name):
    mask = masks(7)[mask_name]
    p = FakeStructuredSparsity(mask)
    assert gradcheck(p, (leaf(7, 4),), fast_mode=fast(backend))


@pytest.mark.parametrize("prune_bias", [True, False])
@pytest.mark.parametrize("shape, dim", [((3, 7), 1), ((2, 7, 3, 2), 1), ((2, 3, 7), 2), ((7,), 0)], ids=str)
def test_bias_hook_functional(backend, prune_bias, shape, dim):
    bias = torch.randn(7, dtype=F64, device=DEVICE, requires_grad=True)
    mask = masks(7)["bool"]
    # add_bias writes into `output` (as upstream's hook): feed it a fresh non-leaf each call.
    fn = lambda out: sp.add_bias(out * 1, bias, mask, dim, prune_bias)  # noqa: E731
    assert gradcheck(fn, (leaf(*shape),), fast_mode=fast(backend))
    assert bias.grad is None  # the bias never gets a gradient, as upstream's hook


@pytest.mark.parametrize("mask_name", ["bool", "float32_soft"])
@pytest.mark.parametrize("prune_bias", [True, False])
def test_parametrized_linear_with_bias_hook(backend, mask_name, prune_bias):
    """The module path end to end: input and ``original`` weight gradients of a prepared Linear."""
    lin = nn.Linear(4, 7, dtype=F64, device=DEVICE)
    mask = masks(7)[mask_name]
    prepare_module(lin, mask, prune_bias=prune_bias)
    original = lin.parametrizations.weight.original

    # Gradient w.r.t. the input through the masked weight and the hook.
    assert gradcheck(lambda x: lin(x), (leaf(3, 4, seed=1),), fast_mode=fast(backend))
    # Gradient w.r.t. `original` (what the optimizer updates), checked against finite differences
    # of the whole module output: a functional call with `original` replaced.
    x = leaf(3, 4, seed=2).detach()
    w0 = original.detach().clone().requires_grad_()
    assert gradcheck(
        lambda w: torch.func.functional_call(lin, {"parametrizations.weight.original": w}, (x,)),
        (w0,),
        fast_mode=fast(backend),
    )
    assert lin._bias.grad is None


@pytest.mark.parametrize("mask_name", ["bool", "float64_soft"])
def test_compiled_row_mask_and_bias_hook(backend, mask_name):
    """The compiled path: Dynamo records the package's autograd.Function over the custom ops."""
    torch._dynamo.reset()
    mask = masks(7)[mask_name]
    bias = torch.randn(7, dtype=F64, device=DEVICE)

    def fn(w, out):
        return sp.row_mask(w, mask), sp.add_bias(out * 1, bias, mask, 1, True)

    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    w, out = leaf(7, 3), leaf(2, 7, seed=3)
    # The compiled function is what is checked: equal to eager first, then its gradients.
    for a, b in zip(compiled(w, out), fn(w, out), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert gradcheck(compiled, (w, out), fast_mode=fast(backend))

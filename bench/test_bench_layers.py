"""A whole parametrized layer (nn.Linear, nn.Conv2d), prepared as upstream's pruner prepares it
(weight parametrized, bias moved to a ``_bias`` Parameter behind a BiasHook with prune_bias=True).
``fwd`` runs under ``torch.no_grad()`` (inference); ``fwdbwd`` is a training step's forward and
backward (gradients of the input and of the weight). Groups: kind_mode | x shape, w shape dtype."""

from __future__ import annotations

import copy

import pytest
import torch
from _benchlib import assert_rel_close, classes, compiled, graph_info, measure, prepare_layer, randn, random_mask
from _cases import IMPLS, SETTINGS, layer_cases
from torch import nn


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", layer_cases(), ids=lambda c: c.id)
def test_layer(benchmark, impl, case):
    benchmark.group = case.group
    info = {"op": case.op, "impl": impl, "dtype": str(case.dtype).replace("torch.", ""), "density": case.density}
    base = case.make().to(SETTINGS.device, case.dtype)
    mask = random_mask(case.weight_shape[0], case.density)
    x = randn(case.in_shape, case.dtype)
    ref_layer = prepare_layer(copy.deepcopy(base), "upstream-eager", mask.clone())
    layer = prepare_layer(copy.deepcopy(base), impl, mask.clone())
    f, counter = compiled(layer) if classes(impl)[2] else (layer, None)

    if case.mode == "fwd":
        with torch.no_grad():
            ref = ref_layer(x)

        def fn():
            with torch.no_grad():
                return f(x)

        def ref_fn():
            with torch.no_grad():
                return ref_layer(x)
    else:
        xr = x.clone().requires_grad_()
        ref = ref_layer(xr)
        grad_out = randn(ref.shape, case.dtype)
        ref.backward(grad_out)
        xg = x.clone().requires_grad_()
        orig = layer.parametrizations.weight.original

        def fn():
            xg.grad = None
            orig.grad = None
            y = f(xg)
            y.backward(grad_out)
            return y

        ref_orig = ref_layer.parametrizations.weight.original

        def ref_fn():
            xr.grad = None
            ref_orig.grad = None
            ref_layer(xr).backward(grad_out)

    out = counter.track(fn) if counter else fn()
    info.update(graph_info(counter))
    assert_rel_close(out.detach(), ref.detach())
    assert torch.equal(layer._bias.detach(), ref_layer._bias.detach()), "pruned bias differs"
    if case.mode == "fwdbwd":
        assert_rel_close(xg.grad, xr.grad, "input grad")
        assert_rel_close(orig.grad, ref_layer.parametrizations.weight.original.grad, "weight grad")
        assert layer._bias.grad is None
    measure(benchmark, fn, info=info, flops=case.flops(), ref_fn=ref_fn if impl == "ours-eager" else None)


def test_prepare_layer_matches_upstream_prepare():
    """bench's prepare_layer builds what upstream's BaseStructuredSparsifier._prepare builds."""
    from torch.ao.pruning._experimental.pruner import SaliencyPruner
    from torch.ao.pruning._experimental.pruner.parametrization import BiasHook, FakeStructuredSparsity

    model = nn.Sequential(nn.Linear(8, 16), nn.Conv2d(3, 4, 3))
    ours = copy.deepcopy(model)
    SaliencyPruner({}).prepare(model, [{"tensor_fqn": "0.weight"}, {"tensor_fqn": "1.weight"}])
    for i in range(2):
        prepare_layer(ours[i], "upstream-eager", torch.ones(ours[i].weight.shape[0], dtype=torch.bool))
        up, mine = model[i], ours[i]
        assert up.bias is None and mine.bias is None
        assert isinstance(up._bias, nn.Parameter) and isinstance(mine._bias, nn.Parameter)
        assert torch.equal(up._bias, mine._bias) and up.prune_bias == mine.prune_bias
        assert type(up.parametrizations.weight[0]) is type(mine.parametrizations.weight[0]) is FakeStructuredSparsity
        (h_up,), (h_mine,) = up._forward_hooks.values(), mine._forward_hooks.values()
        assert type(h_up) is type(h_mine) is BiasHook and h_up.prune_bias == h_mine.prune_bias

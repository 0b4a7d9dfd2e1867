"""BiasHook on a module output (bias along dim 1), with prune_bias True (density matters: the bias
entries of dead rows are zeroed) and False. Groups: bias_hook | shape dtype | prune_bias | density.

Eager hooks update the output in place, as upstream's does (``output += bias``); the compiled
variants run the hook through a small module. Every variant reads the output once and writes it once."""

from __future__ import annotations

import pytest
import torch
from _benchlib import (
    HookRunner,
    assert_same,
    classes,
    compiled,
    graph_info,
    measure,
    nbytes,
    ours_path,
    randn,
    random_mask,
)
from _cases import COPY, IMPLS, activation_cases, shape_str
from torch.ao.pruning._experimental.pruner.parametrization import BiasHook as UpstreamBiasHook
from torch.ao.pruning._experimental.pruner.parametrization import FakeStructuredSparsity as UpstreamFSS


@pytest.mark.parametrize("impl", IMPLS + (COPY,))
@pytest.mark.parametrize("case", activation_cases(), ids=lambda c: c.id)
def test_bias_hook(benchmark, impl, case):
    benchmark.group = case.group
    dtype = str(case.dtype).replace("torch.", "")
    info = {
        "op": case.op,
        "impl": impl,
        "shape": shape_str(case.shape),
        "dtype": dtype,
        "density": case.density,
        "prune_bias": case.prune_bias,
    }
    channels = case.shape[1]
    out0 = randn(case.shape, case.dtype)
    bias0 = randn((channels,), case.dtype)
    mask = random_mask(channels, case.density if case.density is not None else 0.5)

    up_hook = UpstreamBiasHook(UpstreamFSS(mask.clone()), case.prune_bias)
    ref_owner = HookRunner(bias0.clone(), up_hook)
    ref = up_hook(ref_owner, None, out0.clone())
    ref_bias = ref_owner._bias.detach().clone()

    out = out0.clone()
    if impl == COPY:
        dst = torch.empty_like(out)

        def fn():
            return dst.copy_(out)

        assert_same(fn(), out)
    else:
        fss, hook_cls, is_compiled = classes(impl)
        hook = hook_cls(fss(mask.clone()), case.prune_bias)
        owner = HookRunner(bias0.clone(), hook)
        f, counter = compiled(owner) if is_compiled else (None, None)

        def fn():
            return f(out) if f is not None else hook(owner, None, out)  # what the forward-hook machinery calls

        result = counter.track(fn) if counter else fn()
        info.update(graph_info(counter))
        assert_same(result, ref)
        assert_same(owner._bias.detach(), ref_bias, "bias after the hook")
        assert owner._bias.grad is None
        if impl.startswith("ours"):
            info["ours_path"] = ours_path(out, is_compiled)
    ref_out = out0.clone()
    measure(
        benchmark,
        fn,
        info=info,
        bytes_moved=2 * nbytes(out),
        ref_fn=(lambda: up_hook(ref_owner, None, ref_out)) if impl == "ours-eager" else None,
        row_mask=False,
    )

"""FakeStructuredSparsity: the parametrization's forward on a weight, and forward+backward through
a parametrized weight (``module.weight`` then ``.backward``). Groups: op | shape dtype | density."""

from __future__ import annotations

import pytest
import torch
from _benchlib import (
    WeightHolder,
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
from _cases import COPY, IMPLS, SETTINGS, shape_str, weight_cases
from torch.ao.pruning._experimental.pruner.parametrization import FakeStructuredSparsity as UpstreamFSS
from torch.nn.utils import parametrize


def _info(case, impl) -> dict:
    dtype = str(case.dtype).replace("torch.", "")
    return {"op": case.op, "impl": impl, "shape": shape_str(case.shape), "dtype": dtype, "density": case.density}


# impl varies fastest (top decorator): a group's implementations are timed back to back
@pytest.mark.parametrize("impl", IMPLS + (COPY,))
@pytest.mark.parametrize("case", weight_cases("fss_fwd"), ids=lambda c: c.id)
def test_fss_forward(benchmark, impl, case):
    benchmark.group = case.group
    info = _info(case, impl)
    w = randn(case.shape, case.dtype)
    mask = random_mask(case.shape[0], case.density)
    up = UpstreamFSS(mask)
    ref = up(w)
    moved = nbytes(w) + nbytes(ref)  # a dense pass reads the weight once and writes it once
    if impl == COPY:
        dst = torch.empty_like(w)

        def fn():
            return dst.copy_(w)

        assert_same(fn(), w)
    else:
        fss, _, is_compiled = classes(impl)
        f, counter = compiled(fss(mask)) if is_compiled else (fss(mask), None)

        def fn():
            return f(w)

        out = counter.track(fn) if counter else fn()
        assert_same(out, ref)
        info.update(graph_info(counter))
        if impl.startswith("ours"):
            info["ours_path"] = ours_path(w, is_compiled)
            if info["ours_path"] == "kernels":  # the kernel reads only the live rows
                moved = int(mask.sum()) * (nbytes(w) // case.shape[0]) + nbytes(out)
    measure(benchmark, fn, info=info, bytes_moved=moved, ref_fn=(lambda: up(w)) if impl == "ours-eager" else None)


_COMPILED: dict = {}  # (op, impl, shape, dtype) -> (holder, compiled holder, counter): densities share a graph


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", weight_cases("fss_fwdbwd"), ids=lambda c: c.id)
def test_fss_forward_backward(benchmark, impl, case):
    benchmark.group = case.group
    info = _info(case, impl)
    fss, _, is_compiled = classes(impl)
    key = (case.op, impl, case.shape, case.dtype)
    if key not in _COMPILED:
        holder = WeightHolder(randn(case.shape, case.dtype))
        parametrize.register_parametrization(
            holder, "weight", fss(torch.ones(case.shape[0], dtype=torch.bool, device=SETTINGS.device))
        )
        _COMPILED[key] = (holder, *compiled(holder)) if is_compiled else (holder, holder, None)
    holder, f, counter = _COMPILED[key]
    mask = random_mask(case.shape[0], case.density)
    holder.parametrizations.weight[0].mask.copy_(mask)
    orig = holder.parametrizations.weight.original
    grad_out = randn(case.shape, case.dtype)

    w_ref = orig.detach().clone().requires_grad_()
    up = UpstreamFSS(mask)
    up(w_ref).backward(grad_out)

    def fn():
        orig.grad = None
        y = f()
        y.backward(grad_out)
        return y

    y = counter.track(fn) if counter else fn()
    info.update(graph_info(counter))
    assert_same(y.detach(), up(w_ref).detach(), "weight")
    assert_same(orig.grad, w_ref.grad, "weight grad")

    n = nbytes(orig)
    moved = 4 * n  # forward: read w, write y; backward: read grad_y, write grad_w
    if impl.startswith("ours"):
        with torch.enable_grad():
            info["ours_path"] = ours_path(orig, is_compiled)
        if info["ours_path"] == "kernels":  # both passes read only the live rows
            moved = 2 * int(mask.sum()) * (n // case.shape[0]) + 2 * n
    ref_fn = None
    if impl == "ours-eager":
        up_holder = WeightHolder(orig.detach().clone())
        parametrize.register_parametrization(up_holder, "weight", UpstreamFSS(mask.clone()))
        up_orig = up_holder.parametrizations.weight.original

        def ref_fn():
            up_orig.grad = None
            up_holder().backward(grad_out)

    measure(benchmark, fn, info=info, bytes_moved=moved, ref_fn=ref_fn)

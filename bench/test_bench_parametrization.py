"""FakeStructuredSparsity: the parametrization's forward on a weight, and forward+backward through
a parametrized weight (``module.weight`` then ``.backward``). Groups: op | shape dtype | density."""

from __future__ import annotations

import pytest
import torch
from torch.ao.pruning._experimental.pruner.parametrization import FakeStructuredSparsity as UpstreamFSS
from torch.nn.utils import parametrize

from _benchlib import (
    CACHE, COPY, IMPLS, SETTINGS, SMALL_BYTES, WeightHolder, assert_same, classes, compile_graphs,
    maybe_compile, measure, nbytes, ours_path, randn, random_mask, shape_str, weight_cases,
)


def _info(case, impl) -> dict:
    return {"op": case.op, "impl": impl, "shape": shape_str(case.shape), "dtype": str(case.dtype).replace("torch.", ""),
            "density": case.density}


# impl varies fastest (top decorator): a group's implementations are timed back to back
@pytest.mark.parametrize("impl", IMPLS + (COPY,))
@pytest.mark.parametrize("case", weight_cases("fss_fwd"), ids=lambda c: c.id)
def test_fss_forward(benchmark, copy_gbps, impl, case):
    benchmark.group = case.group
    info = _info(case, impl)
    w = randn(case.shape, case.dtype)
    mask = random_mask(case.shape[0], case.density, w.device)
    up = UpstreamFSS(mask)
    ref = up(w)
    dense = nbytes(w) + nbytes(ref)  # a dense op reads the weight once and writes it once
    moved = dense
    if impl == COPY:
        dst = torch.empty_like(w)

        def fn():
            return dst.copy_(w)

        assert_same(fn(), w)
    else:
        fss, _, compiled = classes(impl)
        f = maybe_compile(fss(mask), compiled)

        def fn():
            return f(w)

        if compiled:
            out, meta = compile_graphs(f, fn)
            info.update(meta)
        else:
            out = fn()
        assert_same(out, ref)
        if impl.startswith("ours"):
            info["ours_path"] = ours_path(w, compiled)
            if info["ours_path"] == "triton":  # the kernel reads only the live rows
                moved = int(mask.sum()) * (nbytes(w) // case.shape[0]) + nbytes(out)
    measure(benchmark, fn, info=info, copy_gbps=copy_gbps, bytes_moved=moved, bytes_dense=dense,
            small=nbytes(w) < SMALL_BYTES, ref_fn=(lambda: up(w)) if impl == "ours-eager" else None)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", weight_cases("fss_fwdbwd"), ids=lambda c: c.id)
def test_fss_forward_backward(benchmark, copy_gbps, impl, case):
    benchmark.group = case.group
    info = _info(case, impl)
    fss, _, compiled = classes(impl)

    def build():
        holder = WeightHolder(randn(case.shape, case.dtype))
        parametrize.register_parametrization(holder, "weight", fss(torch.ones(case.shape[0], dtype=torch.bool,
                                                                              device=SETTINGS.device)))
        return {"holder": holder, "f": maybe_compile(holder, compiled), "meta": {}}

    entry, fresh = CACHE.get((case.op, impl, case.shape, case.dtype, SETTINGS.backend), build)
    holder, f = entry["holder"], entry["f"]
    mask = random_mask(case.shape[0], case.density, SETTINGS.device)
    holder.parametrizations.weight[0].mask.copy_(mask)
    orig = holder.parametrizations.weight.original
    grad_out = randn(case.shape, case.dtype)

    w_ref = orig.detach().clone().requires_grad_()
    y_ref = UpstreamFSS(mask)(w_ref)
    y_ref.backward(grad_out)

    def fn():
        orig.grad = None
        y = f()
        y.backward(grad_out)
        return y

    if compiled and fresh:
        y, entry["meta"] = compile_graphs(f, fn)
    else:
        y = fn()
    info.update(entry["meta"])
    assert_same(y.detach(), y_ref.detach(), "weight")
    assert_same(orig.grad, w_ref.grad, "weight grad")

    n = nbytes(orig)
    dense = 4 * n  # forward: read w, write y; backward: read grad_y, write grad_w
    moved = dense
    if impl.startswith("ours"):
        with torch.enable_grad():
            info["ours_path"] = ours_path(orig, compiled)
        if info["ours_path"] == "triton":  # both passes read only the live rows
            live = int(mask.sum()) * (n // case.shape[0])
            moved = 2 * live + 2 * n
    ref_fn = None
    if impl == "ours-eager" and not SETTINGS.cuda and not benchmark.disabled:
        up_holder = WeightHolder(orig.detach().clone())
        parametrize.register_parametrization(up_holder, "weight", UpstreamFSS(mask.clone()))
        up_orig = up_holder.parametrizations.weight.original

        def ref_fn():
            up_orig.grad = None
            up_holder().backward(grad_out)

    measure(benchmark, fn, info=info, copy_gbps=copy_gbps, bytes_moved=moved, bytes_dense=dense,
            small=n < SMALL_BYTES, ref_fn=ref_fn)

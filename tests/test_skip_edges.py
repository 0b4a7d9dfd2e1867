"""``skip_masked_rows`` at the edges: transforms (``torch.func``, forward AD, ``jit.trace``), ops
whose value at zero is not zero, in-place changes of a chain's tensors, empty batches, NaN/inf in
pruned rows, and ``torch.export``. Every result is compared with upstream's prepared model or with
the masked dense path (our layers with skipping off)."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch._dynamo
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, jvp, vmap

from .test_skip import FP32, compare, masks_for, prepared, run, skip_small, skipping

torch.manual_seed(0)


def bias_free_mlp() -> nn.Module:
    """Masked layers without bias (upstream's hook then adds nothing, so upstream runs any input
    rank), a chain between them and an unmasked head."""
    return nn.Sequential(
        nn.Linear(8, 40, bias=False), nn.ReLU(), nn.Linear(40, 24, bias=False), nn.GELU(), nn.Linear(24, 3)
    )


def pair_with_upstream():
    torch.manual_seed(0)
    base = bias_free_mlp()
    masks = {"0": torch.arange(40) % 3 == 0, "2": torch.arange(24) % 2 == 0}
    ours, _ = prepared(copy.deepcopy(base), masks, True)
    skip_small(ours)
    assert ours[0].forward.skip and ours[2].forward.skip and ours[2].forward.chain and ours[4].forward.chain
    upstream, _ = prepared(copy.deepcopy(base), masks, True, upstream=True)
    return ours, upstream


def test_torch_func_equals_upstream() -> None:
    """``grad``, per-sample gradients (``vmap(grad)``), ``jvp`` and a vmapped forward of a skipping
    model run the dense path and give upstream's results."""
    ours, upstream = pair_with_upstream()
    params = {k: v.detach() for k, v in upstream.named_parameters()}
    assert params.keys() == {k for k, _ in ours.named_parameters()}
    x = torch.randn(5, 8)

    def loss(model):
        return lambda p, inp: functional_call(model, p, (inp,)).square().sum()

    def per_sample(model):
        return lambda p, sample: functional_call(model, p, (sample.unsqueeze(0),)).square().sum()

    for transform in (
        lambda model: grad(loss(model))(params, x),
        lambda model: vmap(grad(per_sample(model)), in_dims=(None, 0))(params, x),
        lambda model: vmap(lambda p, inp: functional_call(model, p, (inp,)), in_dims=(None, 0))(params, x[:, None]),
    ):
        got, want = transform(ours), transform(upstream)
        if isinstance(want, dict):
            for k in want:
                torch.testing.assert_close(got[k], want[k], msg=k)
        else:
            torch.testing.assert_close(got, want)
    tangents = {k: torch.randn_like(v) for k, v in params.items()}
    got = jvp(lambda p: functional_call(ours, p, (x,)), (params,), (tangents,))
    want = jvp(lambda p: functional_call(upstream, p, (x,)), (params,), (tangents,))
    torch.testing.assert_close(got, want)


def test_forward_ad_and_jit_trace_equal_upstream() -> None:
    ours, upstream = pair_with_upstream()
    x, t = torch.randn(4, 8), torch.randn(4, 8)
    with torch.no_grad(), fwAD.dual_level():
        got = fwAD.unpack_dual(ours(fwAD.make_dual(x, t)))
        want = fwAD.unpack_dual(upstream(fwAD.make_dual(x, t)))
    torch.testing.assert_close(got.primal, want.primal)
    torch.testing.assert_close(got.tangent, want.tangent)
    traced = torch.jit.trace(ours, (x,), check_trace=False)
    x2 = torch.randn(6, 8)  # another batch: a trace of the skipping path would have baked in its index
    with torch.no_grad():
        torch.testing.assert_close(traced(x2), upstream(x2))


class Act(nn.Module):
    """A user's activation, traced through by torch.fx: ``x * sigmoid(x)`` is zero where x is."""

    def forward(self, x):
        return x * torch.sigmoid(x)


class Between(nn.Module):
    def __init__(self, op):
        super().__init__()
        self.a, self.b, self.op = nn.Linear(8, 32), nn.Linear(32, 6), op

    def forward(self, x):
        return self.b(self.op(self.a(x)))


ZERO_OPS = {
    # name: (op between a and b, does it keep zero zero)
    "Hardtanh(0.1, 1.0)": (nn.Hardtanh(0.1, 1.0), False),
    "Hardtanh()": (nn.Hardtanh(), True),
    "F.hardtanh(x, 0.1, 1.0)": (lambda x: F.hardtanh(x, 0.1, 1.0), False),
    "F.hardtanh(x, -2.0, 2.0)": (lambda x: F.hardtanh(x, -2.0, 2.0), True),
    "Threshold(0.5, 2.0)": (nn.Threshold(0.5, 2.0), False),
    "Threshold(-1.0, 3.0)": (nn.Threshold(-1.0, 3.0), True),
    "Softplus": (nn.Softplus(), False),
    "ELU": (nn.ELU(), True),
    "x * 2": (lambda x: x * 2.0, True),
    "x + 1": (lambda x: x + 1.0, False),
    "x * inf": (lambda x: x * float("inf"), False),
    "custom x * sigmoid(x)": (Act(), True),
}


@pytest.mark.parametrize("verify", [True, False])
@pytest.mark.parametrize("case", list(ZERO_OPS))
def test_zero_in_zero_out_is_evaluated(case, verify) -> None:
    """An op counts as zero-preserving only if it maps +0.0 and -0.0 to zero with its own
    parameters: valid models never raise (``verify=True``) and are never silently wrong
    (``verify=False``)."""
    op, keeps = ZERO_OPS[case]
    torch.manual_seed(0)
    dense, _ = prepared(Between(op), {"a": torch.arange(32) % 3 == 0}, True)
    fast = skip_small(copy.deepcopy(dense), verify=verify)
    assert fast.a.forward.skip and getattr(fast.b.__dict__.get("forward"), "chain", False) == keeps
    x = torch.randn(5, 8)
    if case == "x * inf":  # the dense path is NaN/inf everywhere: compare the finite pattern only
        torch.testing.assert_close(fast(x), dense(x), equal_nan=True)
        return
    compare(run(fast, x), run(dense, x), FP32)


class Aliased(nn.Module):
    """``g = h; g += c``: an in-place change of the chain's tensor that torch.fx records as ``h + c``."""

    def __init__(self, update):
        super().__init__()
        self.a, self.b, self.update = nn.Linear(8, 32), nn.Linear(32, 6), update

    def forward(self, x):
        h = F.gelu(self.a(x))  # GELU saves its input, so h may be changed in place
        g = h
        if self.update == "add":
            g += 1.0
        elif self.update == "mul":
            g *= 2.0
        else:
            g.add_(1.0)
        return self.b(h)


@pytest.mark.parametrize("update", ["add", "mul", "add_"])
def test_in_place_change_of_chain_tensor(update) -> None:
    torch.manual_seed(0)
    dense, _ = prepared(Aliased(update), {"a": torch.arange(32) % 3 == 0}, True)
    fast = skip_small(copy.deepcopy(dense), verify=False)
    assert getattr(fast.b.__dict__.get("forward"), "chain", False) == (update == "mul")
    x = torch.randn(5, 8)
    compare(run(fast, x), run(dense, x), FP32)


class ConvFlat(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.fc = nn.Linear(16 * 4 * 4, 5)

    def forward(self, x):
        return self.fc(torch.flatten(F.relu(self.conv(x)), 1))


EMPTY = {
    # name: (model factory, masked layers, input shape with an empty batch)
    "linear rows and chain": (lambda: nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 6)), ["0"], (0, 8)),
    "linear (B, T, C)": (lambda: nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 6)), ["0"], (0, 3, 8)),
    "conv rows and chain": (
        lambda: nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 8, 3)),
        ["0"],
        (0, 3, 6, 6),
    ),
    "conv, flatten chain": (ConvFlat, ["conv"], (0, 3, 4, 4)),
}


@pytest.mark.parametrize("mode", ["eager", "compiled"])
@pytest.mark.parametrize("case", list(EMPTY))
def test_empty_batch_equals_dense(case, mode) -> None:
    """No samples (an MoE expert without tokens, a head without proposals): outputs and gradients
    equal the dense path's, eager and compiled."""
    factory, layers, shape = EMPTY[case]
    torch.manual_seed(0)
    base = factory()
    dense, _ = prepared(base, {n: m for n, m in masks_for(base, 0.4).items() if n in layers}, True)
    fast = skip_small(copy.deepcopy(dense))
    assert any(f.chain for f in skipping(fast)) and any(f.skip for f in skipping(fast))
    if mode == "compiled":
        torch._dynamo.reset()
        fast = torch.compile(fast, backend="aot_eager", fullgraph=True)
    x = torch.randn(shape)
    got, want = run(fast, x), run(dense, x)
    compare(got, want, {"rtol": 0, "atol": 0})
    assert got[0].shape == want[0].shape and got[0].numel() == 0


def poison_dead_rows(model: nn.Module) -> None:
    """inf in every dead row of every masked weight, NaN in the first dead row."""
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "parametrizations"):
                w = m.parametrizations.weight.original
                dead = (m.parametrizations.weight[0].mask == 0).nonzero()[:, 0]
                w[dead] = float("inf")
                w[dead[0]] = float("nan")


POISON = {
    # batch 2 (small: the old path masked the output instead of the weight), a live count that is
    # not a multiple of 8 (the padding gathers dead rows)
    "linear": (
        lambda: nn.Sequential(nn.Linear(8, 40), nn.ReLU(), nn.Linear(40, 24), nn.Tanh(), nn.Linear(24, 3)),
        (2, 8),
    ),
    "conv": (
        lambda: nn.Sequential(
            nn.Conv2d(3, 20, 3, padding=1), nn.ReLU(), nn.Conv2d(20, 12, 3), nn.ReLU(), nn.Conv2d(12, 4, 1)
        ),
        (2, 3, 5, 5),
    ),
}


@pytest.mark.parametrize("case", list(POISON))
def test_nan_inf_in_pruned_rows_stay_out(backend, case) -> None:
    """A pruned row holding NaN/inf contributes exact zeros: the output and every gradient are
    finite and equal the masked dense path's (the exact-zero rule)."""
    factory, shape = POISON[case]
    torch.manual_seed(0)
    base = factory()
    masks = {n: m for n, m in masks_for(base, 0.45, seed=3).items() if n in ("0", "2")}
    dense, _ = prepared(base, masks, True)
    poison_dead_rows(dense)
    fast = skip_small(copy.deepcopy(dense))
    assert all(f.skip for f in skipping(fast)[:2]) and skipping(fast)[1].chain
    assert any(f.idx.numel() > f.live_count for f in skipping(fast)[:2])  # padding rows are gathered
    x = torch.randn(shape)
    got, want = run(fast, x), run(dense, x)
    compare(got, want, FP32)
    assert got[0].isfinite().all() and got[1].isfinite().all()
    assert all(g is None or g.isfinite().all() for g in got[2].values())


@pytest.mark.parametrize("case", ["linear", "conv"])
def test_export_save_load_runs(tmp_path, case) -> None:
    """``torch.export`` of a skipping model (rows and a chain) saves, loads and runs as eager."""
    factory, shape = POISON[case]
    torch.manual_seed(0)
    base = factory()
    masks = {n: m for n, m in masks_for(base, 0.45).items() if n in ("0", "2")}
    fast, _ = prepared(base, masks, True)
    skip_small(fast)
    assert skipping(fast)[1].chain
    x = torch.randn(shape)
    exported = torch.export.export(fast, (x,))
    buffer = io.BytesIO()
    torch.export.save(exported, buffer)
    buffer.seek(0)
    loaded = torch.export.load(buffer).module()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), fast(x), rtol=0, atol=0)

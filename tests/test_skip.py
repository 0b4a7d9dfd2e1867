"""``skip_masked_rows``: layers compute only their live output rows (and, in chains, only the input
channels a pruned layer before them leaves non-zero), and the result equals the masked dense path
(our modules with skipping off) and upstream's classes.

Tolerances. Skipping sums the same non-zero terms as the dense path (the dropped terms are exact
zeros), but the matmul/convolution runs on other sizes, so the backend may block and vectorise the
reduction differently: fp32 results differ by a few ulp of O(1) partial sums (``FP32``: 1e-5
relative/absolute, while a wrong row would be off by O(0.1)). bf16: each path rounds its fp32-
accumulated result to bf16 once, so two different accumulation orders can round to neighbouring
bf16 values: one bf16 ulp (2^-8 relative, 2^-7 allowed) plus an absolute 2^-7 for results near zero
after cancellation (``BF16``). Values that involve no reduction (dead rows, the bias) are exact.
"""

from __future__ import annotations

import copy
import pickle
from collections import OrderedDict

import pytest
import torch
import torch._dynamo
import torch.nn.functional as F
from torch import nn
from torch.ao.pruning._experimental import pruner as up

from structprune_triton import prepare_module
from structprune_triton import pruner as ours
from structprune_triton.skip import LiveRowsForward, refresh_live_rows, skip_masked_rows
from structprune_triton.testing import random_mask

FP32 = {"rtol": 1e-5, "atol": 1e-5}
BF16 = {"rtol": 2**-7, "atol": 2**-7}
# Tests use small layers: skip whatever the size, and pad live sets to multiples of 8 (the compile
# test uses the default 64).
SMALL = {"min_numel": 0, "max_density": 1.0, "row_multiple": 8}


def skip_small(model: nn.Module, **kwargs) -> nn.Module:
    return skip_masked_rows(model, **{**SMALL, **kwargs})


def dense_and_skipping(base: nn.Module, config: list[dict], sparsity: float) -> tuple[list, list]:
    """Two copies of ``base``, each prepared by its own ``SaliencyPruner``: the masked dense path, and
    the same with ``skip_masked_rows`` (small-layer settings). Returns ``(models, pruners)``."""
    models, pruners = [], []
    for enable in (False, True):
        model = copy.deepcopy(base)
        pruner = ours.SaliencyPruner({"sparsity_level": sparsity})
        pruner.prepare(model, copy.deepcopy(config))
        skip_small(model, enabled=enable)
        models.append(model)
        pruners.append(pruner)
    return models, pruners


def masks_for(model: nn.Module, density: float = 0.4, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        n: random_mask(m.weight.shape[0], density=density, generator=g)
        for n, m in model.named_modules()
        if isinstance(m, (nn.Linear, nn.Conv2d))
    }


def prepared(model: nn.Module, masks: dict[str, torch.Tensor], prune_bias: bool, upstream: bool = False):
    """Prepare the layers named in ``masks`` as a pruner does (ours: ``prepare_module``; upstream's
    pruner), with those masks."""
    if upstream:
        pruner = up.SaliencyPruner({"sparsity_level": 0.5})
        pruner.prepare(model, [{"tensor_fqn": f"{n}.weight", "prune_bias": prune_bias} for n in masks])
        for name, mask in masks.items():
            model.get_submodule(name).parametrizations.weight[0].mask.data.copy_(mask)
        return model, pruner
    for name, mask in masks.items():
        prepare_module(model.get_submodule(name), mask.clone(), prune_bias=prune_bias)
    return model, None


def run(model: nn.Module, x: torch.Tensor, seed: int = 1):
    """Output, grad of x, and every parameter's grad of one forward/backward with a random cotangent."""
    x = x.detach().clone().requires_grad_()
    for p in model.parameters():
        p.grad = None
    out = model(x)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out.dtype)
    out.backward(g)
    return out.detach(), x.grad, {n.removeprefix("_orig_mod."): p.grad for n, p in model.named_parameters()}


def compare(a, b, tol) -> None:
    out_a, gx_a, grads_a = a
    out_b, gx_b, grads_b = b
    torch.testing.assert_close(out_a, out_b, **tol)
    torch.testing.assert_close(gx_a, gx_b, **tol)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        if grads_a[name] is None or grads_b[name] is None:
            assert grads_a[name] is None and grads_b[name] is None, name
        else:
            torch.testing.assert_close(grads_a[name], grads_b[name], **tol, msg=name)


def skipping(model: nn.Module) -> list[LiveRowsForward]:
    return [m.__dict__["forward"] for m in model.modules() if isinstance(m.__dict__.get("forward"), LiveRowsForward)]


class Linear3d(nn.Module):
    def __init__(self, bias: bool = True):
        super().__init__()
        self.fc = nn.Linear(24, 40, bias=bias)

    def forward(self, x):
        return self.fc(x)


LAYERS = {
    # name: (factory(bias) -> model with one layer "fc", input shape, channels_last)
    "linear2d": (lambda bias: nn.Sequential(nn.Linear(24, 40, bias=bias)), (6, 24), False),
    "linear3d": (lambda bias: nn.Sequential(nn.Linear(24, 40, bias=bias)), (2, 5, 24), False),
    "conv": (lambda bias: nn.Sequential(nn.Conv2d(3, 40, 3, stride=2, padding=1, bias=bias)), (2, 3, 9, 9), False),
    "conv_cl": (lambda bias: nn.Sequential(nn.Conv2d(3, 40, 3, stride=1, padding=2, bias=bias)), (2, 3, 7, 7), True),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("prune_bias", [True, False])
@pytest.mark.parametrize("layer", list(LAYERS))
def test_matches_dense_and_upstream(layer, prune_bias, dtype) -> None:
    factory, shape, channels_last = LAYERS[layer]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(0)
    base = factory(True).to(dtype=dtype, memory_format=fmt)
    masks = masks_for(base)
    dense, _ = prepared(copy.deepcopy(base), masks, prune_bias)
    fast, _ = prepared(copy.deepcopy(base), masks, prune_bias)
    skip_small(fast)
    (fwd,) = skipping(fast)
    mask = masks["0"]
    assert fwd.skip and fwd.live_count == int(mask.sum()) and fwd.idx.numel() % 8 == 0 < fwd.idx.numel() < 40
    x = torch.randn(shape).to(dtype=dtype, memory_format=fmt)
    got, want = run(fast, x), run(dense, x)
    tol = FP32 if dtype == torch.float32 else BF16
    compare(got, want, tol)
    out = got[0]
    if channels_last:
        cl = torch.channels_last
        assert out.is_contiguous(memory_format=cl) == want[0].is_contiguous(memory_format=cl)
    # dead channels get exactly what the hook gives them: 0, or the unpruned bias
    dead_out = out.movedim(-1 if layer.startswith("linear") else 1, 0)[~mask]
    bias = fast[0]._bias.detach()
    if prune_bias:
        assert (dead_out == 0).all() and (bias[~mask] == 0).all()  # _bias zeroed in place
    else:
        expect = bias[~mask].reshape(-1, *[1] * (dead_out.dim() - 1)).expand_as(dead_out)
        assert torch.equal(dead_out, expect) and (bias[~mask] != 0).any()
    torch.testing.assert_close(bias, dense[0]._bias.detach(), rtol=0, atol=0)
    grads = got[2]
    assert grads["0._bias"] is None
    assert (grads["0.parametrizations.weight.original"][~mask] == 0).all()  # dead rows: exactly zero

    # upstream's classes; upstream's hook adds the bias along dim 1, wrong for (B, T, C): bias-free there
    ubase = factory(layer != "linear3d").to(dtype=dtype, memory_format=fmt)
    ubase.load_state_dict(base.state_dict(), strict=False)
    if layer == "linear3d":
        fast, _ = prepared(copy.deepcopy(ubase), masks, prune_bias)
        skip_small(fast)
        got = run(fast, x)
    upstream, _ = prepared(ubase, masks, prune_bias, upstream=True)
    compare(got, run(upstream, x), tol)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_backends_and_mask_dtypes(backend, kind) -> None:
    """Every backend of the row mask (Triton kernels under the interpreter on CPU, both torch-path
    branches), and non-bool masks: uint8, and soft float masks that scale rows."""
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(16, 24) if kind == "linear" else nn.Conv2d(2, 24, 3, padding=1))
    x = torch.randn((3, 16) if kind == "linear" else (2, 2, 5, 5))
    for mask in (random_mask(24, torch.uint8), random_mask(24, torch.float32, soft=True)):
        dense, _ = prepared(copy.deepcopy(base), {"0": mask}, True)
        fast = copy.deepcopy(dense)
        skip_small(fast)
        assert skipping(fast)[0].skip
        got = run(fast, x)
        compare(got, run(dense, x), FP32)
        assert (got[2]["0.parametrizations.weight.original"][mask == 0] == 0).all()


def test_pruner_steps_match_dense() -> None:
    """SGD with the pruner's ``step()`` between steps (masks edited through ``mask.data``, the live
    count changing): the weights after N steps equal the dense path's."""
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(12, 48), nn.ReLU(), nn.Linear(48, 40), nn.ReLU(), nn.Linear(40, 5))
    config = [{"tensor_fqn": "0.weight"}, {"tensor_fqn": "2.weight"}]
    models, pruners = dense_and_skipping(base, config, 0.2)
    opts = [torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3) for m in models]
    counts = set()
    for step in range(6):
        x = torch.randn(8, 12)
        for model, pruner, opt in zip(models, pruners, opts, strict=True):
            for group in pruner.groups:  # a schedule: more rows die every other step
                group["sparsity_level"] = 0.2 + 0.1 * (step // 2)
            pruner.step()
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
        counts.add(tuple(f.live_count for f in skipping(models[1])))
        for a, b in zip(models[0].state_dict().values(), models[1].state_dict().values(), strict=True):
            torch.testing.assert_close(a, b, **FP32)
    assert len(counts) == 3  # the live set followed the masks
    first, second, head = skipping(models[1])
    assert first.skip and second.skip and second.chain and head.chain and not head.skip


def test_mask_edits_between_refreshes() -> None:
    """Visible edits refresh on the next eager call; ``.data`` edits are exact for rows that die and
    raise (not silently wrong) for rows revived outside the live set until ``refresh_live_rows``."""
    torch.manual_seed(0)
    base, _ = prepared(nn.Sequential(nn.Linear(10, 40)), {"0": random_mask(40, density=0.3)}, True)
    fast = skip_small(copy.deepcopy(base))
    (fwd,) = skipping(fast)
    mask, dmask = fast[0].parametrizations.weight[0].mask, base[0].parametrizations.weight[0].mask
    x = torch.randn(4, 10)

    def check():
        compare(run(fast, x), run(base, x), FP32)

    outside = int((~fwd.in_set).nonzero()[0])
    for edit in ("mask[i] = True", "mask.data = new", "param.mask = new"):
        i = int((~mask).nonzero()[-1]) if edit != "mask[i] = True" else outside
        new = mask.clone()
        new[i] = True
        if edit == "mask[i] = True":
            mask[i] = True
        elif edit == "mask.data = new":
            mask.data = new
        else:
            fast[0].parametrizations.weight[0].mask = mask = new
        dmask.data.copy_(mask)
        check()  # the eager host check saw it and refreshed
        assert fwd.in_set[i] and fwd.live_count == int(mask.sum())
        mask = fast[0].parametrizations.weight[0].mask

    live = int(mask.nonzero()[0])  # a row dies through .data: invisible to the host, still exact
    mask.data[live] = False
    dmask.data[live] = False
    check()
    assert fwd.in_set[live]  # not refreshed: computed, and exactly zero
    outside = int((~fwd.in_set).nonzero()[0])
    mask.data[outside] = True  # revived through .data outside the live set: refused, not wrong
    dmask.data[outside] = True
    with pytest.raises(RuntimeError, match="refresh_live_rows"):
        fast(x)
    assert refresh_live_rows(fast) == 1
    check()
    skip_small(fast, verify=False)  # without the check, the contract is the caller's
    assert not skipping(fast)[0].verify


def test_disable_restores_and_structure_unchanged() -> None:
    torch.manual_seed(0)
    base = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 16, 24), nn.Linear(24, 4))
    model, _ = prepared(base, masks_for(base), False)
    before = {
        "types": [type(m) for m in model.modules()],
        "params": dict(model.named_parameters()),
        "buffers": dict(model.named_buffers()),
        "params_obj": [list(m.parametrizations.weight) for m in (model[0], model[3], model[4])],
        "sd": list(model.state_dict()),
    }
    x = torch.randn(2, 3, 6, 6)
    dense = run(model, x)
    skip_small(model)
    assert len(skipping(model)) == 3
    after = {
        "types": [type(m) for m in model.modules()],
        "params": dict(model.named_parameters()),
        "buffers": dict(model.named_buffers()),
        "params_obj": [list(m.parametrizations.weight) for m in (model[0], model[3], model[4])],
        "sd": list(model.state_dict()),
    }
    assert after["types"] == before["types"] and after["sd"] == before["sd"]
    assert after["params"].keys() == before["params"].keys()
    assert all(after["params"][k] is v for k, v in before["params"].items())
    assert all(after["buffers"][k] is v for k, v in before["buffers"].items())
    assert after["params_obj"] == before["params_obj"]
    compare(run(model, x), dense, FP32)
    copied = copy.deepcopy(model)  # a copy skips on its own module
    assert all(f.module is m for f, m in zip(skipping(copied), (copied[0], copied[3], copied[4]), strict=True))
    compare(run(copied, x), dense, FP32)
    skip_masked_rows(model, enabled=False)
    assert not skipping(model) and all("forward" not in m.__dict__ for m in model.modules())
    compare(run(model, x), dense, {"rtol": 0, "atol": 0})


def test_eligibility_and_thresholds() -> None:
    """Which layers get a skipping forward, and the thresholds, passed as arguments and kept per layer."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 16, 3, groups=2), nn.Linear(8, 16), nn.Linear(8, 16), nn.Linear(8, 64))
    prepared(model, {"0": random_mask(16), "1": random_mask(16), "3": torch.arange(64) % 8 == 0}, True)
    skip_small(model)  # groups=2 conv, unparametrized Linear: untouched
    assert [n for n, m in model.named_modules() if "forward" in m.__dict__] == ["1", "3"]
    skip_small(model, max_density=0.25)  # 16 rows pad to 8 or 16: above 0.25; 8 of 64 not
    assert not model[1].forward.skip and model[3].forward.skip and model[3].forward.max_density == 0.25
    skip_small(model, min_numel=8 * 64 + 1)  # too small to pay
    assert refresh_live_rows(model) == 0
    x = torch.randn(3, 8)
    dense = skip_masked_rows(copy.deepcopy(model), enabled=False)
    torch.testing.assert_close(model[3](x), dense[3](x), rtol=0, atol=0)  # the dense path, bitwise
    for bad in ({"max_density": 1.5}, {"row_multiple": 0}, {"min_numel": -1}):
        with pytest.raises(ValueError):
            skip_masked_rows(model, **bad)


def pruned_without_package(pruned: nn.Module, masked_out: torch.Tensor, x: torch.Tensor) -> None:
    """The pruned model computes what the masked one did, and nothing of this package is left on
    its layers or in its pickle."""
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), masked_out, **FP32)
    assert all("forward" not in m.__dict__ for m in pruned.modules())
    assert b"structprune_triton" not in pickle.dumps(pruned)


def mlp_pruner(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(7, 40), nn.ReLU(), nn.Linear(40, 32), nn.ReLU(), nn.Linear(32, 3))
    pruner = ours.SaliencyPruner({"sparsity_level": 0.5})
    pruner.prepare(model, [{"tensor_fqn": "0.weight"}, {"tensor_fqn": "2.weight"}])
    skip_small(model)
    pruner.step()
    assert all(f.skip for f in skipping(model)[:2]) and model[2].forward.chain and model[4].forward.chain
    return model, pruner


def test_disable_then_prune_leaves_plain_modules() -> None:
    """``skip_masked_rows(model, enabled=False)`` before ``prune()``: plain torch modules after."""
    model, pruner = mlp_pruner()
    x = torch.randn(5, 7)
    with torch.no_grad():
        masked = model(x)
    skip_masked_rows(model, enabled=False)
    pruned = pruner.prune()
    assert pruned.get_submodule("0").weight.shape[0] == 20
    pruned_without_package(pruned, masked, x)


def test_prune_leaves_plain_modules() -> None:
    """Our pruners' ``prune()`` on a model with skipping enabled returns plain torch modules."""
    model, pruner = mlp_pruner()
    x = torch.randn(5, 7)
    with torch.no_grad():
        masked = model(x)
    pruned_without_package(pruner.prune(), masked, x)


def test_refresh_under_inference_mode() -> None:
    """A refresh under ``inference_mode`` or ``no_grad`` (a visible mask edit seen by an eval
    forward, or ``refresh_live_rows``) leaves index tensors that later training steps can save."""
    model, pruner = mlp_pruner()
    dense = skip_masked_rows(copy.deepcopy(model), enabled=False)
    x = torch.randn(5, 7)
    for mode in (torch.inference_mode, torch.no_grad):
        for m in (model, dense):
            m[0].parametrizations.weight[0].mask[3] ^= True  # visible edit: refreshed by the next forward
        with mode():
            model(x)
        assert not any(t.is_inference() for f in skipping(model) for t in (f.idx, f.in_set, f.cols) if t is not None)
        compare(run(model, x), run(dense, x), FP32)
        with mode():
            refresh_live_rows(model)
        compare(run(model, x), run(dense, x), FP32)


@pytest.mark.parametrize("formats", ["weight_cl", "input_cl"])
def test_memory_format_of_dense_path(formats) -> None:
    """Channels-last weights with a contiguous input (and the reverse): the skipping path's output
    has the dense path's memory format, for a row-skipping and a chained convolution."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.ReLU(), nn.Conv2d(16, 24, 3))
    if formats == "weight_cl":
        model = model.to(memory_format=torch.channels_last)
    dense, _ = prepared(model, masks_for(model, 0.5), True)
    fast = skip_small(copy.deepcopy(dense))
    assert fast[0].forward.skip and fast[2].forward.chain
    x = torch.randn(2, 3, 8, 8)
    if formats == "input_cl":
        x = x.to(memory_format=torch.channels_last)
    for layer in (0, 2):
        want, got = dense[: layer + 1](x), fast[: layer + 1](x)
        for fmt in (torch.contiguous_format, torch.channels_last):
            assert got.is_contiguous(memory_format=fmt) == want.is_contiguous(memory_format=fmt)
        torch.testing.assert_close(got, want, **FP32)


class Chained(nn.Module):
    """Every kind of zero-preserving link: ReLU, GELU, Dropout, a functional SiLU and max-pool, a
    Flatten; producers with a pruned bias and without one; consumers pruned and not."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, 3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(24, 32, 3, padding=1)
        self.flat = nn.Flatten()
        self.fc1 = nn.Linear(32 * 4 * 4, 40)
        self.act = nn.GELU()
        self.drop = nn.Dropout(0.25)
        self.fc2 = nn.Linear(40, 48)
        self.head = nn.Linear(48, 5)

    def forward(self, x):
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.flat(F.max_pool2d(F.silu(self.conv2(x)), 2))
        x = self.drop(self.act(self.fc1(x)))
        return self.head(torch.tanh(self.fc2(x)))


CHAINS = {"conv2": "conv1", "fc1": "conv2", "fc2": "fc1", "head": "fc2"}  # consumer: producer


def dead_inputs(model: nn.Module, consumer: str) -> torch.Tensor:
    """Bool per input column of ``consumer``: its producer's mask is 0 there."""
    producer = model.get_submodule(CHAINS[consumer])
    dead = producer.parametrizations.weight[0].mask == 0
    width = model.get_submodule(consumer).weight.shape[1]
    return dead.repeat_interleave(width // dead.shape[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chains_match_dense_across_steps(dtype) -> None:
    """Chained layers (forward, backward, SGD) equal the masked dense path across pruner steps; their
    weights' dead input columns (and dead rows) get exactly zero gradient."""
    torch.manual_seed(0)
    base = Chained().to(dtype)
    config = [{"tensor_fqn": f"{n}.weight"} for n in ("conv1", "conv2", "fc1", "fc2")]
    models, pruners = dense_and_skipping(base, config, 0.3)
    tol = FP32 if dtype == torch.float32 else BF16
    for step in range(3):
        for pruner in pruners:
            for group in pruner.groups:
                group["sparsity_level"] = 0.3 + 0.15 * step
            pruner.step()
        fast = models[1]
        assert {n for n, m in fast.named_modules() if getattr(m.__dict__.get("forward"), "chain", False)} == set(CHAINS)
        x = torch.randn(3, 3, 16, 16).to(dtype)
        torch.manual_seed(step)  # the same dropout mask in both
        want = run(models[0], x)
        torch.manual_seed(step)
        got = run(fast, x)
        compare(got, want, tol)
        for consumer in CHAINS:
            name = f"{consumer}.weight" if consumer == "head" else f"{consumer}.parametrizations.weight.original"
            assert (got[2][name][:, dead_inputs(fast, consumer)] == 0).all(), name
            if consumer != "head":
                assert (got[2][name][fast.get_submodule(consumer).parametrizations.weight[0].mask == 0] == 0).all()


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(16, 16), nn.Linear(16, 16)

    def forward(self, x):
        return self.b(torch.relu(self.a(x) + x))


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(16, 16), nn.Linear(16, 16)

    def forward(self, x):
        h = self.a(x)
        if h.sum() > 0:  # data-dependent: torch.fx cannot trace it
            h = h * 1
        return self.b(h)


def between(op: nn.Module):
    """``a`` (16 -> 16), ``op``, ``b`` (16 -> 8)."""
    return lambda: nn.Sequential(OrderedDict(a=nn.Linear(16, 16), op=op, b=nn.Linear(16, 8)))


FALLBACKS = {
    # name: (model with layers "a" and "b", prune_bias)
    "batchnorm": (between(nn.BatchNorm1d(16)), True),
    "residual add": (Residual, True),
    "unpruned bias": (between(nn.ReLU()), False),
    "unknown op": (between(nn.Sigmoid()), True),  # sigmoid(0) = 0.5
    "untraceable": (Untraceable, True),
}


@pytest.mark.parametrize("case", list(FALLBACKS))
def test_chain_fallbacks(case) -> None:
    """Where zeros cannot be proven the next layer keeps all its input columns; rows still skip and
    the result equals the dense path."""
    factory, prune_bias = FALLBACKS[case]
    torch.manual_seed(0)
    dense, _ = prepared(
        factory(),
        {"a": torch.arange(16) % 3 == 0, "b": torch.arange(16) % 2 == 0}
        if case in ("residual add", "untraceable")
        else {"a": torch.arange(16) % 3 == 0},
        prune_bias,
    )
    fast = skip_small(copy.deepcopy(dense))
    assert fast.a.forward.skip
    assert not getattr(fast.b.__dict__.get("forward"), "chain", False)
    x = torch.randn(6, 16)
    compare(run(fast, x), run(dense, x), FP32)
    skip_small(fast, chains=False)
    assert not any(f.chain for f in skipping(fast))


def test_chain_verify() -> None:
    """A producer whose masked outputs stop being zero after the chain was found (a hook added
    later) is refused by the device-side check, not silently wrong; ``verify=False`` drops it."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
    prepared(model, {"0": torch.arange(32) % 2 == 0}, True)
    skip_small(model)
    assert model[2].forward.chain
    x = torch.randn(3, 8)
    model(x)
    model[0].register_forward_hook(lambda m, i, out: out + 1)
    with pytest.raises(RuntimeError, match="not zero"):
        model(x)
    assert skip_small(model) is model and "forward" not in model[2].__dict__  # a new search sees the hook


def compiled_model(n_live: int):
    """A Linear with 256 rows (live set padded to multiples of 64) feeding a chained head."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 256), nn.ReLU(), nn.Linear(256, 6))
    mask = torch.zeros(256, dtype=torch.bool)
    mask[torch.randperm(256)[:n_live]] = True
    prepared(model, {"0": mask}, True)
    return model


@pytest.mark.parametrize("compile_backend", ["aot_eager", "inductor"])
def test_compile_fullgraph_no_recompile(compile_backend) -> None:
    """fullgraph compile equals eager (row skipping and a chained head); no recompile across a mask
    change within the same 64-row bucket (refreshed by ``refresh_live_rows``) nor a batch-size
    change (``dynamic=True``). A change of bucket gives ``idx`` a new length: with ``dynamic=True``
    a symbolic size (no recompile here; duck sizing could tie it to another dim of equal size, which
    would recompile once); the default ``dynamic=None`` recompiles at the first bucket change."""
    settings = {"min_numel": 0, "max_density": 1.0}
    torch._dynamo.reset()
    model = compiled_model(100)
    eager = skip_masked_rows(copy.deepcopy(model), **settings)
    skip_masked_rows(model, **settings)
    fwd = model[0].forward
    assert fwd.skip and fwd.idx.numel() == 128 and model[2].forward.chain
    compiled = torch.compile(model, backend=compile_backend, fullgraph=True, dynamic=True)
    x = torch.randn(5, 20)
    compare(run(compiled, x), run(eager, x), FP32)
    mask, emask = model[0].parametrizations.weight[0].mask, eager[0].parametrizations.weight[0].mask
    with torch._dynamo.config.patch(error_on_recompile=True):
        kill = mask.nonzero()[:7, 0]
        mask.data[kill] = False  # as a pruner's step: .data, no version bump
        emask.data[kill] = False
        assert refresh_live_rows(model) == 2 and fwd.live_count == 93 and fwd.idx.numel() == 128
        compare(run(compiled, x), run(eager, x), FP32)
        x2 = torch.randn(9, 20)
        compare(run(compiled, x2), run(eager, x2), FP32)
        if compile_backend == "aot_eager":
            revive = int((~fwd.in_set).nonzero()[0])  # stale live set inside the graph: refused
            mask.data[revive] = True
            with pytest.raises(RuntimeError, match="refresh_live_rows"):
                run(compiled, x)
            mask.data[revive] = False
        kill = mask.nonzero()[:40, 0]  # 53 live: the 64 bucket
        mask.data[kill] = False
        emask.data[kill] = False
        refresh_live_rows(model)
        assert fwd.idx.numel() == 64
        compare(run(compiled, x), run(eager, x), FP32)

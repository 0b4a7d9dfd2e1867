"""``skip_masked_rows`` chains through a masked BatchNorm, a gated product and a sum: results equal
the masked dense path (forward, backward, SGD across pruner steps), and ``find_chains`` reports
the input columns proven zero."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from structprune_triton import pruner as ours
from structprune_triton.skip import skip_masked_rows
from structprune_triton.skip.chains import find_chains

from .architectures import MODELS, LinearBN, randomize_norms
from .test_skip import BF16, FP32, SMALL, compare, prepared, run

CHAINED = {  # model: layers whose input columns are skipped
    "resnet": {"b1.conv2", "b2.conv2"},
    "resnet, conv bias not pruned": {"b1.conv2", "b2.conv2"},
    "swiglu, separate masks": {"l0.down", "l1.down"},
    "geglu": {"l0.down", "l1.down"},
    "swiglu, gate only": {"l0.down", "l1.down"},
    "linear-batchnorm": {"fc2"},
    "linear-batchnorm-linear-linear": {"fc2", "fc3"},
    "conv-batchnorm-pool-flatten": {"fc"},
}


def pair(name: str, dtype=torch.float32, **skip):
    """The masked dense model and a skipping copy, each with its own pruner (same masks)."""
    factory, shape, config, extra = MODELS[name]
    torch.manual_seed(0)
    base = randomize_norms(factory()).to(dtype)
    models, pruners = [], []
    for enabled in (False, True):
        model = copy.deepcopy(base)
        pruner = ours.SaliencyPruner({"sparsity_level": 0.4, **extra})
        pruner.prepare(model, copy.deepcopy(config))
        pruner.step()
        skip_masked_rows(model, enabled, **{**SMALL, **skip})
        models.append(model)
        pruners.append(pruner)
    return models, pruners, torch.randn(shape).to(dtype)


def chained(model: nn.Module) -> set[str]:
    return {n for n, m in model.named_modules() if getattr(m.__dict__.get("forward"), "chain", False)}


@pytest.mark.parametrize("name", list(MODELS))
def test_chains_through_norms_products_match_dense(backend, name) -> None:
    (dense, fast), pruners, x = pair(name)
    assert chained(fast) == CHAINED[name]
    for step in range(3):
        for pruner in pruners:
            for group in pruner.groups:
                group["sparsity_level"] = 0.4 + 0.1 * step
            pruner.step()  # edits masks through .data; bumps their versions
        compare(run(fast, x), run(dense, x), FP32)
        for model in (dense, fast):
            with torch.no_grad():
                for p in model.parameters():
                    if p.grad is not None:
                        p -= 1e-3 * p.grad
    for a, b in zip(dense.state_dict().values(), fast.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, **FP32)
    dense.eval()
    fast.eval()
    compare(run(fast, x), run(dense, x), FP32)


@pytest.mark.parametrize("name", ["resnet", "swiglu, separate masks"])
def test_chains_bf16(name) -> None:
    (dense, fast), _, x = pair(name, torch.bfloat16)
    assert chained(fast) == CHAINED[name]
    compare(run(fast, x), run(dense, x), BF16)


class Sum(nn.Module):
    """``c(relu(a(x)) + relu(b(x)))``: a channel of c's input is zero where it is dead in a and b."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(8, 32), nn.Linear(8, 32), nn.Linear(32, 6)

    def forward(self, x):
        return self.c(F.relu(self.a(x)) + F.relu(self.b(x)))


def test_sum_dead_only_where_dead_in_both_and_find_chains() -> None:
    torch.manual_seed(0)
    mask_a, mask_b = torch.arange(32) % 2 == 0, torch.arange(32) % 3 == 0
    dense, _ = prepared(Sum(), {"a": mask_a, "b": mask_b}, True)
    fast = skip_masked_rows(copy.deepcopy(dense), **SMALL)
    inputs = find_chains(fast)
    assert set(inputs) == {fast.c}
    assert torch.equal(inputs[fast.c].live(), mask_a | mask_b)
    assert fast.c.forward.chain
    x = torch.randn(5, 8)
    compare(run(fast, x), run(dense, x), FP32)
    # a flatten: one entry per input column, each channel's block of H*W columns
    (dense, fast), _, x = pair("conv-batchnorm-pool-flatten")
    live = find_chains(fast)[fast.fc].live()
    mask = fast.conv.parametrizations.weight[0].mask
    assert live.shape == (256,) and torch.equal(live, mask.repeat_interleave(16))


def test_batchnorm1d_chain_only_on_2d_inputs() -> None:
    """A BatchNorm1d normalises dim 1: on a (B, T, C) input that is not the Linear's channel dim,
    so the chain after it holds for 2-D inputs only (3-D inputs take the dense path)."""
    torch.manual_seed(0)
    model = randomize_norms(LinearBN())
    pruner = ours.SaliencyPruner({"sparsity_level": 0.5, "prune_norm": True})
    pruner.prepare(model, [{"tensor_fqn": "fc1.weight"}])
    pruner.step()
    fast = skip_masked_rows(copy.deepcopy(model), verify=False, **SMALL)
    assert fast.fc2.forward.chain
    for shape in ((6, 12), (2, 32, 12)):  # (B, T=32, C): BatchNorm1d(32) runs over T
        x = torch.randn(shape)
        compare(run(fast, x), run(model, x), FP32)


class Heads(nn.Module):
    """The usual CNN heads after a masked conv: a mean over H and W, and ``x.view(x.size(0), -1)``."""

    def __init__(self, head: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.fc = nn.Linear(16 if head == "mean" else 16 * 4 * 4, 5)
        self.head = head

    def forward(self, x):
        h = F.relu(self.conv(x))
        h = h.mean((2, 3)) if self.head == "mean" else h.view(h.size(0), -1)
        return self.fc(h)


@pytest.mark.parametrize("head", ["mean", "view"])
def test_chain_through_cnn_heads(head) -> None:
    torch.manual_seed(0)
    dense, _ = prepared(Heads(head), {"conv": torch.arange(16) % 3 == 0}, True)
    fast = skip_masked_rows(copy.deepcopy(dense), **SMALL)
    assert fast.fc.forward.chain
    x = torch.randn(3, 3, 4, 4)
    compare(run(fast, x), run(dense, x), FP32)
    # prune() shrinks the same shapes (no upstream pattern covers them)
    torch.manual_seed(0)
    model = Heads(head)
    pruner = ours.SaliencyPruner({})
    pruner.prepare(model, [{"tensor_fqn": "conv.weight"}])
    model.conv.parametrizations.weight[0].mask.copy_(torch.arange(16) % 3 == 0)
    with torch.no_grad():
        y = model(x)
        pruned = pruner.prune()
        torch.testing.assert_close(pruned(x), y, **FP32)
    assert pruned.conv.out_channels == 6 and pruned.fc.in_features == (6 if head == "mean" else 6 * 16)

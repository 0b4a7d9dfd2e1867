"""compact_training against masked dense training: K optimizer steps inside the block leave every
parameter (dead rows and dead input columns included), every optimizer state tensor and the loss
sequence where K masked dense steps leave them, with and without a mask change in the middle; and
``prune()`` afterwards gives the same pruned model.

The reference is the same model trained without the block (this package's masked dense path, the
parametrization on the full weights), an independent path: a write-back that forgot weight decay on
dead rows, a moment, a bias correction or the step count, or a compact forward that dropped a live
input, shows up here. Small shapes: the Triton interpreter (root conftest) runs every dense-path
kernel at about 1 ms per program instance."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest
import torch
from torch import nn

import structprune_triton
from structprune_triton import compact_training
from structprune_triton.pruner import SaliencyPruner

TOL = {"rtol": 1e-5, "atol": 1e-6}
STEPS = 5
CHANGE_AT = 2  # the step before which pruner.step() kills more rows, in the "change" runs


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(), nn.Linear(24, 12), nn.ReLU(), nn.Linear(12, 3)
    )


def convnet() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.Conv2d(8, 4, 3, padding=1),
    )


# name: (factory, pruned layers, input shape, the last layer's prefix)
MODELS = {
    "mlp": (mlp, ("0", "2", "4"), (6, 12), "6."),
    "conv": (convnet, ("0", "3"), (2, 3, 8, 8), "5."),
}

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd-nesterov": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-2, nesterov=True),
    "sgd-dampening-foreach": lambda p: torch.optim.SGD(
        p, lr=0.05, momentum=0.9, dampening=0.3, weight_decay=1e-2, foreach=True
    ),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-2, foreach=False),
    "adam-foreach": lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-2, foreach=True),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1, foreach=False),
    "adamw-foreach": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1, foreach=True),
    "adam-amsgrad-maximize": lambda p: torch.optim.Adam(p, lr=1e-3, weight_decay=1e-2, amsgrad=True, maximize=True),
}


def prepared(model_name: str, opt_name: str, seed: int = 0):
    """The model prepared by our SaliencyPruner with masks set (half the rows dead), its pruner, and
    an optimizer with two param groups (the last layer with its own lr and no weight decay)."""
    factory, layers, _, last = MODELS[model_name]
    torch.manual_seed(seed)
    model = factory()
    pruner = SaliencyPruner({"sparsity_level": 0.5})
    pruner.prepare(model, [{"tensor_fqn": f"{name}.weight"} for name in layers])
    pruner.step()
    named = list(model.named_parameters())
    groups = [
        {"params": [p for n, p in named if not n.startswith(last)]},
        {"params": [p for n, p in named if n.startswith(last)], "lr": 5e-3, "weight_decay": 0.0},
    ]
    return model, pruner, OPTIMIZERS[opt_name](groups)


def batches(model_name: str, n: int = STEPS, seed: int = 1) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(MODELS[model_name][2], generator=gen) for _ in range(n)]


def train_steps(model, pruner, opt, xs, *, change: bool, start: int = 0) -> list[torch.Tensor]:
    """One optimizer step per batch; lr and weight decay change between steps (as schedulers
    would), and with ``change`` the pruner kills more rows before step ``CHANGE_AT``."""
    losses = []
    for i, x in enumerate(xs, start):
        if change and i == CHANGE_AT:
            for group in pruner.groups:
                group["sparsity_level"] = 0.75
            pruner.step()
        loss = (model(x) - 0.5).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.detach())
        for group in opt.param_groups:
            group["lr"] *= 0.8
        opt.param_groups[0]["weight_decay"] *= 1.5
    return losses


def assert_models_equal(a: nn.Module, b: nn.Module) -> None:
    names_a = [n for n, _ in a.named_parameters()]
    assert names_a == [n for n, _ in b.named_parameters()]
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pb, pa, **TOL, msg=lambda m, name=name: f"{name}: {m}")
        assert (pa.grad is None) == (pb.grad is None), name
        if pa.grad is not None:
            torch.testing.assert_close(pb.grad, pa.grad, **TOL, msg=lambda m, name=name: f"{name}.grad: {m}")


def assert_optimizers_equal(a: torch.optim.Optimizer, b: torch.optim.Optimizer) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sorted(sa["state"]) == sorted(sb["state"])
    for index, state in sa["state"].items():
        assert sorted(state) == sorted(sb["state"][index]), index
        for key, value in state.items():
            where = f"state {index}/{key}"
            torch.testing.assert_close(sb["state"][index][key], value, **TOL, msg=lambda m, w=where: f"{w}: {m}")
    for ga, gb in zip(sa["param_groups"], sb["param_groups"], strict=True):
        assert ga == gb


def compacted_shapes(opt: torch.optim.Optimizer, model: nn.Module) -> list[tuple[int, ...]]:
    """Shapes in the optimizer that no model parameter has: the compact parameters."""
    full = {id(p) for p in model.parameters()}
    return [tuple(p.shape) for g in opt.param_groups for p in g["params"] if id(p) not in full]


def run_pair(model_name: str, opt_name: str, *, change: bool, **options):
    """(dense model, pruner, optimizer, losses) and the same trained inside compact_training."""
    dense = prepared(model_name, opt_name)
    compact = prepared(model_name, opt_name)
    xs = batches(model_name)
    dense_losses = train_steps(*dense, xs, change=change)
    with compact_training(compact[0], compact[2], **options):
        first = compacted_shapes(compact[2], compact[0])
        compact_losses = train_steps(*compact, xs, change=change)
        last = compacted_shapes(compact[2], compact[0])
    assert first, "nothing was compacted"
    if change:
        assert last != first, "the block did not follow the mask change"
    return dense, dense_losses, compact, compact_losses


@pytest.mark.parametrize("change", [False, True], ids=["fixed-masks", "mask-change"])
@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
@pytest.mark.parametrize("model_name", list(MODELS))
def test_matches_masked_dense(model_name: str, opt_name: str, change: bool) -> None:
    (dm, dp, do), dense_losses, (cm, cp, co), compact_losses = run_pair(model_name, opt_name, change=change)
    torch.testing.assert_close(torch.stack(compact_losses), torch.stack(dense_losses), **TOL)
    assert_models_equal(dm, cm)
    assert_optimizers_equal(do, co)
    for a, b in zip(dp.groups, cp.groups, strict=True):
        assert torch.equal(a["module"].parametrizations.weight[0].mask, b["module"].parametrizations.weight[0].mask)
    # prune() after the block: the same smaller model
    x = batches(model_name, 1, seed=7)[0]
    pruned_dense, pruned_compact = dp.prune(), cp.prune()
    assert_models_equal(pruned_dense, pruned_compact)
    with torch.no_grad():
        torch.testing.assert_close(pruned_compact(x), pruned_dense(x), **TOL)


@pytest.mark.parametrize("model_name", list(MODELS))
def test_torch_path(model_name: str) -> None:
    """The same on the pure-torch path (the tests above run the kernels under the interpreter)."""
    with structprune_triton.use_backend("torch"):
        (dm, _, do), dense_losses, (cm, _, co), compact_losses = run_pair(model_name, "adamw-foreach", change=True)
    torch.testing.assert_close(torch.stack(compact_losses), torch.stack(dense_losses), **TOL)
    assert_models_equal(dm, cm)
    assert_optimizers_equal(do, co)


@pytest.mark.parametrize("model_name", list(MODELS))
def test_dense_shaped_activations(model_name: str) -> None:
    """compact_activations=False: every compacted layer takes and gives dense-shaped activations
    (the path compiled graphs and models without traceable hand-offs use)."""
    (dm, _, do), dense_losses, (cm, _, co), compact_losses = run_pair(
        model_name, "sgd-dampening-foreach", change=True, compact_activations=False
    )
    torch.testing.assert_close(torch.stack(compact_losses), torch.stack(dense_losses), **TOL)
    assert_models_equal(dm, cm)
    assert_optimizers_equal(do, co)


class FlattenHead(nn.Module):
    """A conv chain into a Linear through Flatten: the Linear's input columns are the conv's
    channels times 4x4 positions (a chain with groups of 16 columns)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc = nn.Linear(8 * 16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(torch.relu(self.conv(x))), 1))


def test_flatten_chain_and_bias() -> None:
    """Input columns grouped after a Flatten, a pruned bias on the producer, SGD with momentum."""

    def make():
        torch.manual_seed(3)
        model = FlattenHead()
        pruner = SaliencyPruner({"sparsity_level": 0.5})
        pruner.prepare(model, [{"tensor_fqn": "conv.weight"}])
        pruner.step()
        return model, pruner, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-2)

    xs = [torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    (dm, dp, do), (cm, cp, co) = make(), make()
    dense_losses = train_steps(dm, dp, do, xs, change=True)
    with compact_training(cm, co) as ctx:
        compact_losses = train_steps(cm, cp, co, xs, change=True)
        fc = next(layer for layer in ctx.layers if layer.module is cm.fc)
        assert fc.piece.compact.shape == (5, 2 * 16)  # 2 of 8 channels live after the change
    torch.testing.assert_close(torch.stack(compact_losses), torch.stack(dense_losses), **TOL)
    assert_models_equal(dm, cm)
    assert_optimizers_equal(do, co)


def test_revived_row_and_accumulation() -> None:
    """A visible in-place edit that revives a dead row inside the block (its weights, decayed while
    dead, come back), and gradients accumulated over two backward passes per step."""
    dense, compact = prepared("mlp", "adamw"), prepared("mlp", "adamw")
    xs = batches("mlp", 6)

    def train(model, pruner, opt, ctx):
        losses = []
        for i in range(0, 6, 2):
            if i == 4:
                mask = model[2].parametrizations.weight[0].mask
                mask[int(torch.nonzero(~mask)[0])] = True  # in place: bumps the version counter
            loss = sum((model(x) - 0.5).square().mean() for x in xs[i : i + 2])
            loss.backward()
            opt.step()
            model.zero_grad()  # the model's, not the optimizer's: also clears the compact gradients
            losses.append(loss.detach())
        return losses

    dense_losses = train(*dense, None)
    with compact_training(compact[0], compact[2]) as ctx:
        compact_losses = train(*compact, ctx)
    torch.testing.assert_close(torch.stack(compact_losses), torch.stack(dense_losses), **TOL)
    assert_models_equal(dense[0], compact[0])
    assert_optimizers_equal(dense[2], compact[2])


def test_mask_change_between_backward_and_step() -> None:
    """pruner.step() after backward(): the step uses the gradients of the old live set (as masked
    dense does, dead-to-be rows included); the layer is re-compacted once the gradients are cleared."""
    dense, compact = prepared("mlp", "sgd-nesterov"), prepared("mlp", "sgd-nesterov")
    xs = batches("mlp", 4)

    def train(model, pruner, opt):
        for i, x in enumerate(xs):
            (model(x) - 0.5).square().mean().backward()
            if i == 1:
                for group in pruner.groups:
                    group["sparsity_level"] = 0.75
                pruner.step()
            opt.step()
            opt.zero_grad()

    train(*dense)
    with contextlib.ExitStack() as stack:
        ctx = stack.enter_context(compact_training(compact[0], compact[2]))
        train(*compact)
        assert all(layer.piece is not None for layer in ctx.layers)
        assert ctx.layers[1].piece.compact.shape == (6, 6)
    assert_models_equal(dense[0], compact[0])
    assert_optimizers_equal(dense[2], compact[2])


def test_float_masks_and_channels_last() -> None:
    """Soft (float) masks scale the live rows, and a channels_last convolution keeps its format:
    both as masked dense, through the compact layers and the hand-off."""

    def make():
        torch.manual_seed(4)
        model = convnet().to(memory_format=torch.channels_last)
        for name in ("0", "3"):
            rows = model.get_submodule(name).out_channels
            mask = torch.rand(rows, generator=torch.Generator().manual_seed(rows)) + 0.5
            mask[::2] = 0  # half the rows dead, the others scaled
            structprune_triton.prepare_module(model.get_submodule(name), mask)
        return model, torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)

    xs = [x.contiguous(memory_format=torch.channels_last) for x in batches("conv", 4)]
    (dm, do), (cm, co) = make(), make()
    dense_losses = train_steps(dm, None, do, xs, change=False)
    with compact_training(cm, co) as ctx:
        assert all(s.active for s in ctx.segments) and len(ctx.segments) == 2
        assert ctx.layers[0].piece.compact.is_contiguous(memory_format=torch.channels_last)
        compact_losses = train_steps(cm, None, co, xs, change=False)
    torch.testing.assert_close(torch.stack(compact_losses), torch.stack(dense_losses), **TOL)
    assert_models_equal(dm, cm)
    assert_optimizers_equal(do, co)

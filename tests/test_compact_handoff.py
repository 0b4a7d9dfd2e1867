"""compact_training's compact activations (hand-offs between compacted layers) and torch.compile:
only along the traced graph and inside a call of the root model, and dense-shaped under compile."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from structprune_triton import compact_training
from structprune_triton.pruner import SaliencyPruner

from .test_compact import TOL, assert_models_equal, assert_optimizers_equal, batches, prepared, train_steps


@pytest.mark.parametrize("before", [False, True], ids=["compiled-inside", "compiled-before"])
def test_compiled(before: bool) -> None:
    """torch.compile(fullgraph=True) of the model, inside the block or before it (and run before
    and after it: the graphs follow the replacement forwards), with a mask change (a recompile for
    the new shapes): the same as eager masked dense."""
    dense, compact = prepared("mlp", "adam"), prepared("mlp", "adam")
    xs = batches("mlp", 7)
    dense_losses = train_steps(*dense, xs, change=True)
    torch._dynamo.reset()
    compiled = torch.compile(compact[0], backend="aot_eager", fullgraph=True)
    if before:
        compact_losses = train_steps(compiled, compact[1], compact[2], xs[:1], change=True)
    else:
        compact_losses = train_steps(compact[0], compact[1], compact[2], xs[:1], change=True)
    with compact_training(compact[0], compact[2]):
        compact_losses += train_steps(compiled, compact[1], compact[2], xs[1:6], change=True, start=1)
    compact_losses += train_steps(compiled, compact[1], compact[2], xs[6:], change=True, start=6)
    torch.testing.assert_close(torch.stack(compact_losses), torch.stack(dense_losses), **TOL)
    assert_models_equal(dense[0], compact[0])
    assert_optimizers_equal(dense[2], compact[2])


class Branchy(nn.Module):
    """In eval mode an extra Tanh runs between the two layers: not in the graph traced in training."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2, self.extra = nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 5), nn.Tanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.fc1(x))
        if not self.training:
            h = self.extra(h)
        return self.fc2(h)


def branchy():
    torch.manual_seed(0)
    model = Branchy()
    pruner = SaliencyPruner({"sparsity_level": 0.5})
    pruner.prepare(model, [{"tensor_fqn": "fc1.weight"}])
    pruner.step()
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def test_compact_activations_follow_the_traced_graph_only() -> None:
    """Compact activations are handed on only along the traced graph and inside a call of the
    root model: a run that departs from the trace raises (compact_activations=False computes it);
    a submodule called on its own, or a hook on the way, gets the dense-shaped activations."""
    x = batches("mlp", 1)[0]
    model, opt = branchy()
    with torch.no_grad():
        expected = model.eval()(x)
    model.train()
    with compact_training(model, opt) as ctx:
        assert [s.active for s in ctx.segments] == [True]
        model(x)  # training mode: as traced
        model.eval()
        with pytest.raises(RuntimeError, match="did not reach"), torch.no_grad():
            model(x)
        model.train()
        model(x)  # recovers after the error
    model.eval()
    with compact_training(model, opt, compact_activations=False), torch.no_grad():
        torch.testing.assert_close(model(x), expected, **TOL)

    dense, compact = prepared("mlp", "sgd-nesterov"), prepared("mlp", "sgd-nesterov")
    with torch.no_grad():
        head = dense[0][:2](x)
    shapes = []
    with compact_training(compact[0], compact[2]), torch.no_grad():
        torch.testing.assert_close(compact[0][:2](x), head, **TOL)  # a slice runs outside the root model
        handle = compact[0][1].register_forward_hook(lambda m, a, out: shapes.append(tuple(out.shape)))
        torch.testing.assert_close(compact[0](x), dense[0](x), **TOL)
        handle.remove()
        handle = compact[0][6].register_forward_pre_hook(lambda m, a: 1 / 0)
        with pytest.raises(ZeroDivisionError):  # a root forward that fails half-way ...
            compact[0](x)
        handle.remove()
        torch.testing.assert_close(compact[0][:2](x), head, **TOL)  # ... leaves no compact hand-off behind
    assert shapes == [tuple(head.shape)]  # the hook saw the dense-shaped activation


class Checkpointed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.utils.checkpoint.checkpoint(self.block, x, use_reentrant=False)


def test_activation_checkpointing_inside_the_model() -> None:
    """A segment recomputed by activation checkpointing runs outside the root call, dense-shaped:
    torch's checkpoint refuses that loudly; with compact_activations=False it trains as masked dense."""
    x = batches("mlp", 1)[0]
    models = []
    for _ in range(3):
        torch.manual_seed(0)
        model = Checkpointed()
        pruner = SaliencyPruner({"sparsity_level": 0.5})
        pruner.prepare(model, [{"tensor_fqn": "block.0.weight"}])
        pruner.step()
        models.append((model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)))
    for model, opt in models[:1]:
        model(x).square().sum().backward()
        opt.step()
    with compact_training(*models[1]), pytest.raises(torch.utils.checkpoint.CheckpointError):
        models[1][0](x).square().sum().backward()
    with compact_training(*models[2], compact_activations=False):
        models[2][0](x).square().sum().backward()
        models[2][1].step()
    assert_models_equal(models[0][0], models[2][0])

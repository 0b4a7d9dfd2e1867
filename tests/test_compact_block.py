"""compact_training as a block: state_dict() and load_state_dict() inside it, leaving it on an
exception, the user-visible structure before and after, reading weights, gradient clipping, the
errors for what it does not support, device-side checks, and torch.compile."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from structprune_triton import compact_training, skip_masked_rows
from structprune_triton.skip import LiveRowsForward

from .test_compact import (
    TOL,
    assert_models_equal,
    assert_optimizers_equal,
    batches,
    compacted_shapes,
    prepared,
    train_steps,
)


def test_state_dicts_inside_the_block() -> None:
    """model.state_dict() and optimizer.state_dict() taken inside the block equal masked dense's
    (full size); loading them back inside the block, training goes on as masked dense's does."""
    dense, compact = prepared("mlp", "adam-foreach"), prepared("mlp", "adam-foreach")
    xs = batches("mlp", 6)
    train_steps(*dense, xs[:3], change=False)
    with compact_training(compact[0], compact[2]):
        train_steps(*compact, xs[:3], change=False)
        # copies: like torch's, these state dicts hold the live tensors, which later steps change
        saved = copy.deepcopy(compact[0].state_dict()), copy.deepcopy(compact[2].state_dict())
        seen = copy.deepcopy(saved)  # load_state_dict keeps the loaded tensors, and training changes them
        assert compacted_shapes(compact[2], compact[0])  # still compact after the state_dict calls
        train_steps(*compact, xs[3:5], change=False, start=3)
        compact[0].load_state_dict(saved[0])
        compact[2].load_state_dict(saved[1])
        assert compacted_shapes(compact[2], compact[0])
        train_steps(*compact, xs[5:], change=False, start=5)
    dense_model_sd, dense_opt_sd = dense[0].state_dict(), dense[2].state_dict()
    assert list(seen[0]) == list(dense_model_sd)
    for key, value in dense_model_sd.items():
        torch.testing.assert_close(seen[0][key], value, **TOL)
    assert sorted(seen[1]["state"]) == sorted(dense_opt_sd["state"])
    for index, state in dense_opt_sd["state"].items():
        for key, value in state.items():
            torch.testing.assert_close(seen[1]["state"][index][key], value, **TOL)
    # the dense run does the same round trip
    saved_dense = copy.deepcopy((dense_model_sd, dense_opt_sd))
    train_steps(*dense, xs[3:5], change=False, start=3)
    dense[0].load_state_dict(saved_dense[0])
    dense[2].load_state_dict(saved_dense[1])
    train_steps(*dense, xs[5:], change=False, start=5)
    assert_models_equal(dense[0], compact[0])
    assert_optimizers_equal(dense[2], compact[2])


def snapshot(model: nn.Module, opt: torch.optim.Optimizer) -> dict:
    """What a user can see of model and optimizer, by identity."""
    return {
        "params": [(n, id(p)) for n, p in model.named_parameters()],
        "buffers": [(n, id(b)) for n, b in model.named_buffers()],
        "keys": list(model.state_dict()),
        "forwards": [m.__dict__.get("forward") for m in model.modules()],
        "zero_grad": [m.__dict__.get("zero_grad") for m in model.modules()],
        "hooks": [
            [id(h) for h in (*m._forward_hooks.values(), *m._forward_pre_hooks.values())] for m in model.modules()
        ],
        "parametrizations": [
            [type(p) for p in m.parametrizations.weight] for m in model.modules() if hasattr(m, "parametrizations")
        ],
        "groups": [id(g) for g in opt.param_groups],
        "group_params": [[id(p) for p in g["params"]] for g in opt.param_groups],
        "opt_hooks": (len(opt._optimizer_step_pre_hooks), len(opt._optimizer_step_post_hooks)),
    }


def test_exception_restores() -> None:
    """An exception inside the block: the block is left, the parameters and optimizer state written
    back (equal to masked dense after the same steps) and everything the user sees is as before."""
    dense, compact = prepared("conv", "sgd-nesterov"), prepared("conv", "sgd-nesterov")
    xs = batches("conv", 3)
    skip_masked_rows(compact[0], min_numel=0, row_multiple=1)  # restored too
    before = snapshot(compact[0], compact[2])
    train_steps(*dense, xs, change=True)
    with pytest.raises(KeyError, match="boom"), compact_training(compact[0], compact[2]):
        train_steps(*compact, xs, change=True)
        raise KeyError("boom")
    assert snapshot(compact[0], compact[2]) == before
    assert any(isinstance(f, LiveRowsForward) for f in before["forwards"])
    assert_models_equal(dense[0], compact[0])
    assert_optimizers_equal(dense[2], compact[2])
    with compact_training(compact[0], compact[2]):  # can be entered again
        train_steps(*compact, xs[:1], change=False)


def test_weight_read_inside_is_exact() -> None:
    """module.weight of a compacted layer, read inside the block (as a pruner's update_mask does),
    is masked dense's; so are the parameters after ctx.sync()."""
    dense, compact = prepared("mlp", "adamw"), prepared("mlp", "adamw")
    xs = batches("mlp", 3)
    train_steps(*dense, xs, change=False)
    with compact_training(compact[0], compact[2]) as ctx:
        train_steps(*compact, xs, change=False)
        torch.testing.assert_close(compact[0][2].weight, dense[0][2].weight, **TOL)
        ctx.sync()
        for (name, a), b in zip(dense[0].named_parameters(), compact[0].parameters(), strict=True):
            torch.testing.assert_close(b, a, **TOL, msg=lambda m, name=name: f"{name}: {m}")


def test_gradient_clipping_on_ctx_parameters() -> None:
    """clip_grad_norm_ over ctx.parameters() inside the block clips as masked dense's over
    model.parameters() (the norm is taken over the same non-zero gradient entries)."""
    dense, compact = prepared("mlp", "sgd-nesterov"), prepared("mlp", "sgd-nesterov")
    xs = batches("mlp", 3)
    norms = []

    def train(model, opt, params):
        for x in xs:
            (model(x) - 0.5).square().mean().backward()
            norms.append(torch.nn.utils.clip_grad_norm_(params(), 0.05))
            opt.step()
            opt.zero_grad()

    train(dense[0], dense[2], dense[0].parameters)
    with compact_training(compact[0], compact[2]) as ctx:
        train(compact[0], compact[2], ctx.parameters)
    torch.testing.assert_close(torch.stack(norms[3:]), torch.stack(norms[:3]), **TOL)
    assert all(n > 0.05 for n in norms)  # clipping was active
    assert_models_equal(dense[0], compact[0])


class RMSpropLike(torch.optim.SGD):
    pass


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda p: torch.optim.RMSprop(p), TypeError, "RMSprop"),
        (lambda p: RMSpropLike(p, lr=0.1), TypeError, "RMSpropLike"),
        (lambda p: torch.optim.Adam(p, differentiable=True), ValueError, "differentiable=True"),
        (lambda p: torch.optim.Adam(p, capturable=True), ValueError, "capturable=True"),
        (lambda p: torch.optim.SGD(p, lr=0.1, fused=True), ValueError, "fused=True"),
    ],
    ids=["other-class", "subclass", "differentiable", "capturable", "fused"],
)
def test_unsupported_optimizers(make, error, match) -> None:
    model, _, _ = prepared("mlp", "adam")
    opt = make(model.parameters())
    with pytest.raises(error, match=match):
        compact_training(model, opt)


def test_unsupported_setups(monkeypatch) -> None:
    model, pruner, opt = prepared("mlp", "adam")
    with compact_training(model, opt), pytest.raises(RuntimeError, match="already inside"):
        compact_training(model, opt).__enter__()
    with compact_training(model, opt), pytest.raises(ValueError, match="fused=True"):
        opt.param_groups[0]["fused"] = True  # an option switched on inside the block
        (model(batches("mlp", 1)[0])).sum().backward()
        opt.step()
    opt.param_groups[0]["fused"] = None
    mask = model[0].parametrizations.weight[0].mask
    model[0].parametrizations.weight[0].mask = mask.float().requires_grad_()
    with pytest.raises(ValueError, match="learned mask"):
        compact_training(model, opt).__enter__()
    model[0].parametrizations.weight[0].mask = mask
    ddp = nn.parallel.DistributedDataParallel.__new__(nn.parallel.DistributedDataParallel)
    nn.Module.__init__(ddp)
    ddp.module = model
    with pytest.raises(RuntimeError, match="DistributedDataParallel"):
        compact_training(ddp, opt)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda *a: 2)
    with pytest.raises(RuntimeError, match="world size 2"):
        compact_training(model, opt)
    with compact_training(model, opt, allow_distributed=True):
        pass


def test_invisible_revival_is_caught() -> None:
    """A row revived through ``mask.data`` (no version bump, no weight read) is outside the compact
    rows: the device-side check raises instead of computing a wrong result; ctx.refresh() fixes it."""
    model, _, opt = prepared("mlp", "adam")
    x = batches("mlp", 1)[0]
    with compact_training(model, opt) as ctx:
        mask = model[0].parametrizations.weight[0].mask
        mask.data[int(torch.nonzero(~mask)[0])] = True
        with pytest.raises(RuntimeError, match="refresh"):
            model(x)
        ctx.refresh()
        model(x).sum().backward()


def test_global_hooks_do_not_see_replay() -> None:
    """The replayed steps of the dead entries run torch's step without the optimizer hooks."""
    model, _, opt = prepared("mlp", "adamw")
    seen = []
    handle = register_optimizer_step_post_hook(lambda o, a, k: seen.append(o))
    try:
        with compact_training(model, opt):
            train_steps(model, None, opt, batches("mlp", 3), change=False)
    finally:
        handle.remove()
    assert seen == [opt] * 3

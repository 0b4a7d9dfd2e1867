"""compact_training on the models people prune and at the edges: ResNet-style CNNs (BatchNorm, a
residual add, ``prune_norm``), LLaMA-style gated MLPs, the other architecture shapes; NaN/inf in
dead rows, a row that dies through an edit the block cannot see, empty batches, and transforms
(refused: the full weights are not current inside the block). The reference is masked dense
training of the same model (every parameter, dead rows included, and every optimizer state)."""

from __future__ import annotations

import copy
import random
from collections.abc import Callable

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch import nn
from torch.func import functional_call, jvp, vmap
from torch.nn.utils.parametrize import type_before_parametrizations

import structprune_triton
from structprune_triton import compact_training
from structprune_triton.pruner import SaliencyPruner

from .architectures import MODELS, randomize_norms
from .test_compact import OPTIMIZERS, TOL, assert_models_equal, assert_optimizers_equal, train_steps


def prepared(name: str, opt_name: str):
    """The architecture ``name`` prepared by our SaliencyPruner (half the rows dead), with an
    optimizer over all its parameters."""
    factory, _, config, defaults = MODELS[name]
    torch.manual_seed(0)
    model = randomize_norms(factory())
    pruner = SaliencyPruner({"sparsity_level": 0.5, **defaults})
    pruner.prepare(model, [dict(c) for c in config])
    pruner.step()
    return model, pruner, OPTIMIZERS[opt_name](model.parameters())


def inputs(name: str, n: int = 5) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(MODELS[name][1], generator=gen) for _ in range(n)]


def pieces(model: nn.Module) -> dict[str, str]:
    """Layer name -> what its compact forward computes, e.g. "rows 8 of 16, input columns 8 of 8"."""
    return {
        n: repr(m.__dict__["forward"]).removeprefix("CompactForward(").removesuffix(")")
        for n, m in model.named_modules()
        if "forward" in m.__dict__
    }


def check_against_dense(name: str, opt_name: str, change: bool) -> tuple[dict[str, str], list[str]]:
    """Train ``name`` inside the block and masked dense; everything equal. Returns what each layer
    trains and, per active compact hand-off, its steps (e.g. "BatchNorm2d, fn")."""
    dense, compact = prepared(name, opt_name), prepared(name, opt_name)
    xs = inputs(name)
    dense_losses = train_steps(*dense, xs, change=change)
    with compact_training(compact[0], compact[2]) as ctx:
        shapes = pieces(compact[0])
        handoffs = [
            ", ".join("fn" if m is None else type_before_parametrizations(m).__name__ for m in segment.steps)
            for segment in ctx.segments
            if segment.active
        ]
        compact_losses = train_steps(*compact, xs, change=change)
    torch.testing.assert_close(torch.stack(compact_losses), torch.stack(dense_losses), **TOL)
    assert_models_equal(dense[0], compact[0])
    assert_optimizers_equal(dense[2], compact[2])
    for (buffer, a), b in zip(dense[0].named_buffers(), compact[0].buffers(), strict=True):
        torch.testing.assert_close(b, a, **TOL, msg=buffer)  # BatchNorm running statistics
    x = inputs(name, 1)[0]
    pruned_dense, pruned_compact = dense[1].prune(), compact[1].prune()
    assert_models_equal(pruned_dense, pruned_compact)
    pruned_dense.eval(), pruned_compact.eval()
    with torch.no_grad():
        torch.testing.assert_close(pruned_compact(x), pruned_dense(x), **TOL)
    return shapes, handoffs


# the live blocks each architecture must train (rows and input columns), at half the rows dead
EXPECTED = {
    "resnet": {
        "b1.conv1": "rows 8 of 16, input columns 8 of 8",
        "b1.conv2": "rows 8 of 8, input columns 8 of 16",  # after BatchNorm with prune_norm, ReLU
        "b2.conv1": "rows 8 of 16, input columns 8 of 8",
        "b2.conv2": "rows 8 of 8, input columns 8 of 16",
    },
    "swiglu, gate only": {
        "l0.gate": "rows 16 of 32, input columns 8 of 8",
        "l0.down": "rows 8 of 8, input columns 16 of 32",  # silu(0) * up = 0
        "l1.gate": "rows 16 of 32, input columns 8 of 8",
        "l1.down": "rows 8 of 8, input columns 16 of 32",
    },
    "conv-batchnorm-pool-flatten": {
        "conv": "rows 8 of 16, input columns 3 of 3",
        "fc": "rows 5 of 5, input columns 128 of 256",  # each dead channel is 16 flattened columns
    },
}


@pytest.mark.parametrize("name", list(MODELS))
def test_architectures_match_masked_dense(name: str) -> None:
    """Every architecture shape, SGD with Nesterov momentum and weight decay, a pruner step in the
    middle: exact as masked dense, and prune() gives the same model."""
    shapes, handoffs = check_against_dense(name, "sgd-nesterov", change=True)
    assert shapes, "nothing was compacted"
    for layer, piece in EXPECTED.get(name, {}).items():
        assert shapes[layer] == piece, layer
    if name == "resnet":  # conv1 -> BatchNorm2d -> F.relu -> conv2, in each block
        assert handoffs == ["BatchNorm2d, fn", "BatchNorm2d, fn"]


@pytest.mark.parametrize("name", ["resnet", "swiglu, separate masks"])
def test_architectures_adamw_torch_path(name: str) -> None:
    """The same with AdamW on the pure-torch path (the test above runs the interpreter's kernels)."""
    with structprune_triton.use_backend("torch"):
        check_against_dense(name, "adamw-foreach", change=False)


def mlp() -> nn.Module:
    # the pruned layers without bias: upstream's bias hook (and ours) prunes the bias in place,
    # which torch.func's jvp refuses outside any block as well
    return nn.Sequential(
        nn.Linear(6, 10, bias=False), nn.ReLU(), nn.Linear(10, 8, bias=False), nn.Tanh(), nn.Linear(8, 3)
    )


def prepared_mlp(poison: bool):
    torch.manual_seed(0)
    model = mlp()
    pruner = SaliencyPruner({"sparsity_level": 0.5})
    pruner.prepare(model, [{"tensor_fqn": "0.weight"}, {"tensor_fqn": "2.weight"}])
    pruner.step()
    if poison:  # inf in every dead row of the masked weights, NaN in the first
        with torch.no_grad():
            for i in (0, 2):
                w = model[i].parametrizations.weight.original
                dead = (model[i].parametrizations.weight[0].mask == 0).nonzero()[:, 0]
                w[dead] = float("inf")
                w[dead[0]] = float("nan")
    return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def forward_backward(model: nn.Module, x: torch.Tensor):
    x = x.detach().clone().requires_grad_()
    out = model(x)
    out.backward(torch.ones_like(out))
    return out.detach(), x.grad


def test_nan_inf_in_dead_rows_stay_out() -> None:
    """Dead rows holding NaN/inf contribute exact zeros (this package's rule), in the block as in
    masked dense training: outputs and input gradients finite and equal, over optimizer steps."""
    (dm, do), (cm, co) = prepared_mlp(True), prepared_mlp(True)
    xs = [torch.randn(2, 6, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    with compact_training(cm, co):
        for x in xs:
            got, want = forward_backward(cm, x), forward_backward(dm, x)
            for a, b in zip(got, want, strict=True):
                assert a.isfinite().all()
                torch.testing.assert_close(a, b, **TOL)
            co.step(), do.step(), co.zero_grad(), do.zero_grad()
    for name, p in dm.named_parameters():  # dead rows keep their NaN/inf, live ones equal
        torch.testing.assert_close(dict(cm.named_parameters())[name], p, **TOL, equal_nan=True)


def test_row_dying_unseen_inside_the_block() -> None:
    """A live row whose mask is zeroed through ``.data`` (no version bump: the block cannot see it)
    and whose compact weights hold NaN computes as in masked dense: exact zeros, finite input
    gradient (the mask multiplies the compact weight, never the output)."""
    (dm, _), (cm, co) = prepared_mlp(False), prepared_mlp(False)
    x = torch.randn(2, 6)
    with compact_training(cm, co) as ctx:
        layer = ctx.layers[0]
        row = int(layer.piece.rows[0])
        for model in (dm, cm):
            model[0].parametrizations.weight[0].mask.data[row] = False
        with torch.no_grad():
            layer.piece.compact[0] = float("nan")
            dm[0].parametrizations.weight.original[row] = float("nan")
        got, want = forward_backward(cm, x), forward_backward(dm, x)
    for a, b in zip(got, want, strict=True):
        assert a.isfinite().all()
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("name", ["resnet", "swiglu, separate masks"])
def test_empty_batch(name: str) -> None:
    """A batch of zero samples runs inside the block (the input check samples nothing) and gives
    masked dense's empty output; training goes on exactly."""
    dense, compact = prepared(name, "sgd-nesterov"), prepared(name, "sgd-nesterov")
    shape = MODELS[name][1]
    empty = torch.randn(0, *shape[1:])
    xs = inputs(name, 2)
    for model, _, _ in (dense, compact):
        model.eval()  # BatchNorm in training mode refuses an empty batch, in masked dense too
    with compact_training(compact[0], compact[2]):
        got, want = forward_backward(compact[0], empty), forward_backward(dense[0], empty)
        for a, b in zip(got, want, strict=True):
            assert a.shape == b.shape and a.numel() == 0
        dense[0].train(), compact[0].train()
        compact_losses = train_steps(compact[0], None, compact[2], xs, change=False)
    dense_losses = train_steps(dense[0], None, dense[2], xs, change=False)
    torch.testing.assert_close(torch.stack(compact_losses), torch.stack(dense_losses), **TOL)
    assert_models_equal(dense[0], compact[0])


TRANSFORMS = {
    "vmap": lambda model, x: vmap(model)(x.unsqueeze(1)),
    "jvp": lambda model, x: jvp(model, (x,), (torch.ones_like(x),)),
    "forward AD": lambda model, x: _dual(model, x),
    "functional_call": lambda model, x: vmap(lambda p, y: functional_call(model, p, (y,)), in_dims=(None, 0))(
        dict(model.named_parameters()), x.unsqueeze(1)
    ),
    "jit.trace": lambda model, x: torch.jit.trace(model, (x,), check_trace=False),
}


def _dual(model: nn.Module, x: torch.Tensor):
    with fwAD.dual_level():
        return model(fwAD.make_dual(x, torch.ones_like(x)))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("transform", list(TRANSFORMS))
def test_transforms_are_refused_inside_and_work_after(transform: str) -> None:
    """Inside the block a transform of a compacted layer raises (the full weights it would read are
    stale); after the block, the same call works on the written-back model."""
    model, opt = prepared_mlp(False)
    x = torch.randn(3, 6)
    with compact_training(model, opt):
        model(x).sum().backward()
        opt.step()
        with pytest.raises(RuntimeError, match="transforms"):
            TRANSFORMS[transform](model, x)
    TRANSFORMS[transform](model, x)


@pytest.mark.parametrize("how", ["eval between steps", "channels_last", "compiled"])
def test_resnet_as_users_train_it(how: str) -> None:
    """The ResNet-style CNN trained the usual ways: an eval-mode pass (running statistics, no
    gradient) after every step, channels_last activations, ``torch.compile(fullgraph=True)`` of the
    model inside the block. Parameters, optimizer state, BatchNorm buffers and the eval outputs
    equal masked dense training's."""
    dense, compact = prepared("resnet", "sgd-nesterov"), prepared("resnet", "sgd-nesterov")
    xs = inputs("resnet", 3)
    if how == "channels_last":
        for model, _, _ in (dense, compact):
            model.to(memory_format=torch.channels_last)
        xs = [x.contiguous(memory_format=torch.channels_last) for x in xs]

    def train(model: nn.Module, opt: torch.optim.Optimizer) -> list[torch.Tensor]:
        run = torch.compile(model, fullgraph=True, backend="aot_eager") if how == "compiled" else model
        evals = []
        for x in xs:
            model.train()
            (run(x) - 0.5).square().mean().backward()
            opt.step()
            opt.zero_grad()
            if how == "eval between steps":
                model.eval()
                with torch.no_grad():
                    evals.append(run(x))
        return evals

    torch._dynamo.reset()
    want = train(dense[0], dense[2])
    with compact_training(compact[0], compact[2]):
        got = train(compact[0], compact[2])
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, **TOL)
    assert_models_equal(dense[0], compact[0])
    assert_optimizers_equal(dense[2], compact[2])
    for (name, a), b in zip(dense[0].named_buffers(), compact[0].buffers(), strict=True):
        torch.testing.assert_close(b, a, **TOL, msg=name)


NOTHING_LIVE = [
    "a layer with every row dead",
    "a convolution with every channel dead",
    "gate and up with no live row in common",
]


@pytest.mark.parametrize("case", NOTHING_LIVE)
def test_nothing_live(case: str) -> None:
    """A layer with no live row (a Linear; a convolution, which torch cannot run with no channels,
    and the next one with no live input channel), and a down projection with no live input column
    (gate and up masked on disjoint rows: every product channel is zero), train as in masked dense."""

    def make():
        if case == "a convolution with every channel dead":
            torch.manual_seed(0)
            model = nn.Sequential(
                nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.ReLU(), nn.Conv2d(6, 4, 3, padding=1), nn.ReLU()
            )
            structprune_triton.prepare_module(model[0], torch.zeros(6, dtype=torch.bool))
            shape = (2, 3, 5, 5)
        elif case == "a layer with every row dead":
            torch.manual_seed(0)
            model = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3))
            structprune_triton.prepare_module(model[0], torch.ones(10, dtype=torch.bool))
            structprune_triton.prepare_module(model[2], torch.zeros(8, dtype=torch.bool))
            shape = (4, 6)
        else:
            factory, shape, _, _ = MODELS["swiglu, separate masks"]
            torch.manual_seed(0)
            model = factory()
            hidden = model.l0.gate.out_features
            gate = torch.arange(hidden) % 2 == 0
            for block in (model.l0, model.l1):
                structprune_triton.prepare_module(block.gate, gate.clone())
                structprune_triton.prepare_module(block.up, ~gate)
        return model, torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1), shape

    (dm, do, shape), (cm, co, _) = make(), make()
    xs = [torch.randn(shape, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    want = train_steps(dm, None, do, xs, change=False)
    with compact_training(cm, co):
        got = train_steps(cm, None, co, xs, change=False)
    torch.testing.assert_close(torch.stack(got), torch.stack(want), **TOL)
    assert_models_equal(dm, cm)
    assert_optimizers_equal(do, co)


def _random_optimizer(rng: random.Random) -> Callable[..., torch.optim.Optimizer]:
    """A supported optimizer with random options (drawn here, once, so two calls build the same)."""
    foreach, maximize = rng.choice([None, True, False]), rng.random() < 0.2
    if rng.random() < 0.4:
        momentum = rng.choice([0.0, 0.9])
        nesterov = momentum > 0 and rng.random() < 0.5
        options = {
            "momentum": momentum,
            "nesterov": nesterov,
            "dampening": 0.0 if nesterov else rng.choice([0.0, 0.3]),
            "weight_decay": rng.choice([0.0, 1e-2]),
        }
        return lambda p: torch.optim.SGD(p, lr=0.05, maximize=maximize, foreach=foreach, **options)
    cls = rng.choice([torch.optim.Adam, torch.optim.AdamW])
    amsgrad, weight_decay = rng.random() < 0.3, rng.choice([0.0, 1e-2, 0.1])
    return lambda p: cls(p, lr=1e-2, weight_decay=weight_decay, amsgrad=amsgrad, foreach=foreach, maximize=maximize)


@pytest.mark.parametrize("seed", range(12))
def test_random_training_runs_in_float64(seed: int) -> None:
    """Random runs against masked dense, in float64 so that any difference beyond rounding shows:
    an architecture, a sparsity (1.0 included), an optimizer and its options, 2-4 steps with a
    learning-rate schedule, maybe a pruner step or a visible mask edit mid-run, eval passes,
    gradient accumulation, a state_dict round trip, channels_last, skip_masked_rows underneath,
    compact activations on or off. (A randomized search of this kind found the empty-block
    failures tested above.)"""
    rng = random.Random(seed)
    name = rng.choice(list(MODELS))
    factory, shape, config, defaults = MODELS[name]
    sparsity = rng.choice([0.25, 0.5, 0.75, 1.0])
    make_opt = _random_optimizer(rng)
    steps = rng.randint(2, 4)
    change_at, edit_at = rng.choice([None, 1]), rng.choice([None, steps - 1])
    evals, accumulate, roundtrip = rng.random() < 0.3, rng.random() < 0.3, rng.random() < 0.3
    channels_last = len(shape) == 4 and rng.random() < 0.4
    skipping, activations = rng.random() < 0.3, rng.random() < 0.7

    def make():
        torch.manual_seed(seed)
        model = randomize_norms(factory()).double()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        pruner = SaliencyPruner({"sparsity_level": sparsity, **defaults})
        pruner.prepare(model, [dict(c) for c in config])
        pruner.step()
        if skipping:
            structprune_triton.skip_masked_rows(model, min_numel=0, row_multiple=4)
        return model, pruner, make_opt(model.parameters())

    gen = torch.Generator().manual_seed(seed)
    xs = [torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(2 * steps)]
    if channels_last:
        xs = [x.contiguous(memory_format=torch.channels_last) for x in xs]

    def train(model, pruner, opt) -> list[torch.Tensor]:
        outs = []
        for i in range(steps):
            if i == change_at:
                for group in pruner.groups:
                    group["sparsity_level"] = min(1.0, sparsity + 0.25)
                pruner.step()
            if i == edit_at:
                mask = pruner.groups[0]["module"].parametrizations.weight[0].mask
                if not bool(mask.all()):
                    mask[int(torch.nonzero(~mask)[0])] = True  # in place: seen
            model.train()
            loss = (model(xs[2 * i]) - 0.3).square().mean()
            if accumulate:
                loss = loss + (model(xs[2 * i + 1]) + 0.1).square().mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
            outs.append(loss.detach())
            for group in opt.param_groups:
                group["lr"] *= 0.9
            if evals:
                model.eval()
                with torch.no_grad():
                    outs.append(model(xs[0]))
            if roundtrip and i == 0:
                model.load_state_dict(copy.deepcopy(model.state_dict()))
                opt.load_state_dict(copy.deepcopy(opt.state_dict()))
        return outs

    (dm, dp, do), (cm, cp, co) = make(), make()
    want = train(dm, dp, do)
    with compact_training(cm, co, compact_activations=activations):
        got = train(cm, cp, co)
    tol = {"rtol": 1e-9, "atol": 1e-12}
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, **tol)
    for (n, a), b in zip(dm.named_parameters(), cm.parameters(), strict=True):
        torch.testing.assert_close(b, a, **tol, msg=n)
    for (n, a), b in zip(dm.named_buffers(), cm.buffers(), strict=True):
        torch.testing.assert_close(b, a, **tol, msg=n)
    state_a, state_b = do.state_dict()["state"], co.state_dict()["state"]
    assert state_a.keys() == state_b.keys()
    for k, state in state_a.items():
        for key, value in state.items():
            torch.testing.assert_close(state_b[k][key], value, **tol, msg=f"{k}/{key}")


class TorchvisionStyle(nn.Module):
    """A torchvision-style basic block: ``nn.ReLU(inplace=True)`` modules (one used twice, as
    torchvision does, or one per use)."""

    def __init__(self, shared_relu: bool) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.conv1 = nn.Conv2d(8, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.relu2 = self.relu if shared_relu else nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(16, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = self.stem(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)) + x)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1))


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("shared_relu", [False, True])
def test_torchvision_style_block(shared_relu: bool, momentum: float | None) -> None:
    """Module ReLUs, in place: one per use (a hand-off step) or one called twice (not a step: the
    activations stay dense-shaped); a BatchNorm with a running-average momentum or cumulative
    averages (``momentum=None``). Exact as masked dense, running statistics included."""

    def make():
        torch.manual_seed(0)
        model = randomize_norms(TorchvisionStyle(shared_relu))
        model.bn1.momentum = momentum
        pruner = SaliencyPruner({"sparsity_level": 0.5, "prune_norm": True})
        pruner.prepare(model, [{"tensor_fqn": "conv1.weight"}])
        pruner.step()
        return model, pruner, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-2)

    (dm, dp, do), (cm, cp, co) = make(), make()
    xs = [torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    want = train_steps(dm, dp, do, xs, change=True)
    with compact_training(cm, co) as ctx:
        assert [s.active for s in ctx.segments] == ([] if shared_relu else [True])
        got = train_steps(cm, cp, co, xs, change=True)
    torch.testing.assert_close(torch.stack(got), torch.stack(want), **TOL)
    assert_models_equal(dm, cm)
    assert_optimizers_equal(do, co)
    for (name, a), b in zip(dm.named_buffers(), cm.buffers(), strict=True):
        torch.testing.assert_close(b, a, **TOL, msg=name)


class TwoBranches(nn.Module):
    """Two hand-offs in flight at once, each through a function step, in crossed order."""

    def __init__(self) -> None:
        super().__init__()
        self.a1, self.a2 = nn.Linear(6, 12), nn.Linear(12, 4)
        self.b1, self.b2 = nn.Linear(6, 10), nn.Linear(10, 4)

    def forward(self, x):
        ha, hb = self.a1(x), self.b1(x)
        a = self.a2(torch.relu(ha))
        return a + self.b2(torch.tanh(hb))


def test_two_hand_offs_in_flight_at_once() -> None:
    def make():
        torch.manual_seed(0)
        model = TwoBranches()
        pruner = SaliencyPruner({"sparsity_level": 0.5})
        pruner.prepare(model, [{"tensor_fqn": "a1.weight"}, {"tensor_fqn": "b1.weight"}])
        pruner.step()
        return model, pruner, torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)

    (dm, dp, do), (cm, cp, co) = make(), make()
    xs = [torch.randn(5, 6, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    want = train_steps(dm, dp, do, xs, change=True)
    with compact_training(cm, co) as ctx:
        assert [s.active for s in ctx.segments] == [True, True]
        got = train_steps(cm, cp, co, xs, change=True)
    torch.testing.assert_close(torch.stack(got), torch.stack(want), **TOL)
    assert_models_equal(dm, cm)
    assert_optimizers_equal(do, co)

"""BatchNorm CNNs and gated MLPs: ``prune_norm`` masking, ``prune()`` of these shapes, and the clear
errors where a shape cannot be shrunk.

References: upstream's pruner and parametrization where upstream can run the model (``prune_norm``
off; with it on, upstream's masked model with the dead channels' BatchNorm weight and bias zeroed by
hand), and the masked model for ``prune()`` (the pruned model computes what the masked model
computed: ``PRUNED`` tolerance, as in test_pruner.py: smaller matmuls only reorder fp32 sums).
"""

from __future__ import annotations

import ast
import copy
import pickle
from pathlib import Path

import pytest
import torch
import torch._dynamo
from torch import nn
from torch.ao.pruning._experimental import pruner as up
from torch.ao.pruning._experimental.pruner.parametrization import FakeStructuredSparsity as UpFSS
from torch.ao.pruning._experimental.pruner.parametrization import module_contains_param
from torch.nn.utils import parametrize

import structprune_triton
from structprune_triton import pruner as ours
from structprune_triton.graph.norm_mask import NormMask

from .architectures import MODELS, Block, GatedStack, LinearBN, ResNet, randomize_norms

PRUNED = {"rtol": 1e-5, "atol": 1e-5}


def prepared(name: str, sparsity: float = 0.5, steps: int = 1, seed: int = 0, **defaults):
    """Model ``name`` prepared by our ``SaliencyPruner``, ``steps`` pruner steps with SGD between."""
    factory, shape, config, extra = MODELS[name]
    torch.manual_seed(seed)
    model = randomize_norms(factory())
    pruner = ours.SaliencyPruner({"sparsity_level": sparsity, **extra, **defaults})
    pruner.prepare(model, copy.deepcopy(config))
    x = torch.randn(shape)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        pruner.step()
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    pruner.step()
    return model, pruner, x


def outputs(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Eval output, then train-mode output on a copy (running statistics are updated there)."""
    with torch.no_grad():
        out = {"eval": model.eval()(x)}
        trained = copy.deepcopy(model).train()
        out["train"] = trained(x)
    out["stats"] = [b.clone() for n, b in trained.named_buffers() if n.endswith(("running_mean", "running_var"))]
    return out


@pytest.mark.parametrize("name", list(MODELS))
def test_prune_computes_the_masked_model(backend, name) -> None:
    """``prune()`` of each shape gives a smaller model that computes what the masked model computed,
    in eval and train mode, with only plain torch modules left."""
    model, pruner, x = prepared(name, steps=2)
    masked = outputs(model, x)
    before = sum(p.numel() for p in model.parameters())
    pruned = pruner.prune()
    assert sum(p.numel() for p in pruned.parameters()) < before
    assert not any(parametrize.is_parametrized(m) for m in pruned.modules())
    assert b"structprune_triton" not in pickle.dumps(pruned)
    got = outputs(pruned, x)
    torch.testing.assert_close(got["eval"], masked["eval"], **PRUNED)
    torch.testing.assert_close(got["train"], masked["train"], **PRUNED)
    # running statistics of the kept channels moved as in the masked model
    for kept, full in zip(got["stats"], masked["stats"], strict=True):
        assert kept.shape[0] <= full.shape[0]
        if kept.shape[0] == full.shape[0]:
            torch.testing.assert_close(kept, full, **PRUNED)


def test_resnet_prune_shapes() -> None:
    """Only the blocks' inner channels change; the residual stream keeps its width."""
    model, pruner, _ = prepared("resnet")
    dead = [int((model.get_submodule(f"b{i}.conv1").parametrizations.weight[0].mask == 0).sum()) for i in (1, 2)]
    pruned = pruner.prune()
    for i, d in zip((1, 2), dead, strict=True):
        block = pruned.get_submodule(f"b{i}")
        assert block.conv1.out_channels == block.bn1.num_features == block.conv2.in_channels == 16 - d
        assert block.bn1.running_mean.shape == (16 - d,) and block.conv2.out_channels == block.bn2.num_features == 8
    assert pruned.stem.out_channels == 8 and pruned.fc.in_features == 8


def test_gated_channel_dead_in_gate_or_up_is_removed() -> None:
    """A channel dead in gate *or* up leaves gate, up and down; shared masks work too."""
    model, pruner, x = prepared("swiglu, separate masks")
    gate, up_ = (model.l0.get_submodule(n).parametrizations.weight[0].mask for n in ("gate", "up"))
    keep = int((gate & up_).sum())
    assert keep < int(gate.sum()) and keep < int(up_.sum())  # the masks differ
    with torch.no_grad():
        y = model(x)
    pruned = pruner.prune()
    assert pruned.l0.gate.out_features == pruned.l0.up.out_features == pruned.l0.down.in_features == keep
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), y, **PRUNED)
    # one mask tensor for gate and up (the pruner's config "mask"): a channel is one unit
    torch.manual_seed(0)
    model = GatedStack()
    shared = torch.ones(32, dtype=torch.bool)
    pruner = ours.SaliencyPruner({"sparsity_level": 0.5})
    config = [
        {"tensor_fqn": f"l{i}.{n}.weight", "mask": shared if i == 0 else None} for i in (0, 1) for n in ("gate", "up")
    ]
    pruner.prepare(model, [{k: v for k, v in c.items() if v is not None} for c in config])
    pruner.step()
    assert model.l0.gate.parametrizations.weight[0].mask is model.l0.up.parametrizations.weight[0].mask
    assert int(shared.sum()) == 16  # saliency picks the rows already dead first
    with torch.no_grad():
        y = model(x)
    pruned = pruner.prune()
    assert pruned.l0.down.in_features == 16
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), y, **PRUNED)


def upstream_with_norms_zeroed(model: nn.Module, config: list[dict], masks: dict[str, torch.Tensor], norms: dict):
    """Upstream's prepared model with our masks, and each listed norm's weight and bias zeroed
    where its layer's mask is zero (what ``prune_norm`` must compute)."""
    pruner = up.SaliencyPruner({"sparsity_level": 0.5})
    pruner.prepare(model, copy.deepcopy(config))
    for name, mask in masks.items():
        model.get_submodule(name).parametrizations.weight[0].mask.data.copy_(mask)
    with torch.no_grad():
        for norm, layer in norms.items():
            dead = masks[layer] == 0
            model.get_submodule(norm).weight[dead] = 0
            model.get_submodule(norm).bias[dead] = 0
    return model


@pytest.mark.parametrize("name", ["resnet", "linear-batchnorm"])
def test_prune_norm_equals_upstream_with_zeroed_norm(backend, name) -> None:
    """With ``prune_norm`` the masked model equals upstream's masked model whose norms have their
    dead channels' weight and bias zeroed; the dead channels leave the norm as exact zeros (train
    and eval); without ``prune_norm`` it equals upstream's masked model exactly."""
    factory, shape, config, _ = MODELS[name]
    norms = {"b1.bn1": "b1.conv1", "b2.bn1": "b2.conv1"} if name == "resnet" else {"bn": "fc1"}
    torch.manual_seed(0)
    base = randomize_norms(factory())
    x = torch.randn(shape)
    for prune_norm in (True, False):
        model = copy.deepcopy(base)
        pruner = ours.SaliencyPruner({"sparsity_level": 0.5, "prune_norm": prune_norm})
        pruner.prepare(model, copy.deepcopy(config))
        pruner.step()
        masks = {n: model.get_submodule(n).parametrizations.weight[0].mask.clone() for n in set(norms.values())}
        ref = upstream_with_norms_zeroed(copy.deepcopy(base), config, masks, norms if prune_norm else {})
        seen = {}
        for norm in norms:
            model.get_submodule(norm).register_forward_hook(
                lambda m, i, o, norm=norm, seen=seen: seen.__setitem__(norm, o)
            )
        for mode in ("train", "eval"):
            model.train(mode == "train")
            ref.train(mode == "train")
            with torch.no_grad():
                torch.testing.assert_close(model(x), ref(x), rtol=0, atol=0)
            for norm, layer in norms.items():
                dead_out = seen[norm].movedim(1, 0)[masks[layer] == 0]
                assert (dead_out == 0).all() == prune_norm, (norm, mode)
        assert all(isinstance(p, NormMask) and not isinstance(p, UpFSS) for p in _norm_params(model)) and (
            bool(_norm_params(model)) == prune_norm
        )
        assert not any(module_contains_param(model.get_submodule(n), UpFSS) for n in norms)


def _norm_params(model: nn.Module) -> list[nn.Module]:
    return [
        p
        for m in model.modules()
        if parametrize.is_parametrized(m)
        for pl in m.parametrizations.values()
        for p in pl
        if not isinstance(p, UpFSS)
    ]


def test_norm_mask_reads_the_current_mask() -> None:
    """The norm follows a mask edited in place, through ``.data`` and replaced by assignment."""
    model, _, x = prepared("linear-batchnorm")
    param = model.fc1.parametrizations.weight[0]
    for edit in ("in place", ".data", "assigned"):
        new = param.mask.clone()
        new[int(new.nonzero()[0])] = False
        if edit == "in place":
            param.mask.copy_(new)
        elif edit == ".data":
            param.mask.data = new
        else:
            param.mask = new
        assert torch.equal(model.bn.weight == 0, param.mask == 0) and torch.equal(model.bn.bias == 0, param.mask == 0)


def test_prune_norm_off_gives_a_clear_error_upstream_a_bare_one() -> None:
    model, pruner, _ = prepared("resnet", prune_norm=False)
    upstream_model = copy.deepcopy(ResNet())
    upstream = up.SaliencyPruner({"sparsity_level": 0.5})
    upstream.prepare(upstream_model, copy.deepcopy(MODELS["resnet"][2]))
    with pytest.raises(Exception, match="still contains FakeStructuredSparsity"):
        upstream.prune()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(RuntimeError, match=r"'b1\.conv1'.*BatchNorm2d 'b1\.bn1'.*prune_norm"):
        pruner.prune()
    after = model.state_dict()  # checked before anything changed
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("name", ["resnet", "linear-batchnorm"])
def test_no_live_channel_left_is_a_clear_error(name: str) -> None:
    """Every channel of a convolution (or of a Linear whose BatchNorm is masked with it) masked:
    prune() says so before changing anything (torch cannot run the result; upstream's prune()
    returns it and the forward fails in torch)."""
    model, pruner, _ = prepared(name)
    layer = pruner.groups[0]["module"]
    layer.parametrizations.weight[0].mask.fill_(False)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(RuntimeError, match=rf"every output channel of \w+ '{pruner.groups[0]['module_fqn']}'"):
        pruner.prune()
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_a_linear_with_no_live_row_prunes_as_upstream() -> None:
    """An nn.Linear with every row masked prunes to zero outputs, as upstream's prune() does."""
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(4, 6)
    outs = []
    for cls in (ours.SaliencyPruner, up.SaliencyPruner):
        model = copy.deepcopy(base)
        pruner = cls({"sparsity_level": 0.5})
        pruner.prepare(model, [{"tensor_fqn": "0.weight"}])
        model[0].parametrizations.weight[0].mask.fill_(False)
        pruned = pruner.prune()
        assert pruned.get_submodule("0").out_features == 0
        with torch.no_grad():
            outs.append(pruned(x))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


class PrunedResidual(nn.Module):
    """A pruned layer whose output is added to a tensor from elsewhere (the residual stream)."""

    def __init__(self) -> None:
        super().__init__()
        self.block = Block(8, 16)

    def forward(self, x):
        return self.block(x)


class SharedNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.bn = nn.Linear(4, 8, bias=False), nn.Linear(4, 8, bias=False), nn.BatchNorm1d(8)

    def forward(self, x):
        return self.bn(self.fc1(x)) + self.bn(self.fc2(x))


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc, self.bn = nn.Linear(4, 8, bias=False), nn.BatchNorm1d(8)

    def forward(self, x):
        h = self.fc(x)
        return self.bn(h) if h.sum() > 0 else h


def test_clear_errors_and_warnings() -> None:
    def prepare(model, names, **defaults):
        pruner = ours.SaliencyPruner({"sparsity_level": 0.5, **defaults})
        pruner.prepare(model, [{"tensor_fqn": f"{n}.weight"} for n in names])
        return pruner

    model = PrunedResidual()
    pruner = prepare(model, ["block.conv2"], prune_norm=True)  # bn2 masked, then the residual add
    pruner.step()
    with pytest.raises(RuntimeError, match=r"'block\.conv2'.*add"):
        pruner.prune()
    model = LinearBN()
    model.bn = nn.BatchNorm1d(32, affine=False)
    with pytest.raises(ValueError, match=r"'bn' after 'fc1'.*affine=False"):
        prepare(model, ["fc1"], prune_norm=True)
    with pytest.raises(ValueError, match=r"'bn'.*called 2 times"):
        prepare(SharedNorm(), ["fc1", "fc2"], prune_norm=True)
    with pytest.raises(ValueError, match="cannot trace"):
        prepare(Untraceable(), ["fc"], prune_norm=True)
    with pytest.warns(UserWarning, match=r"'l0\.gate' feeds no BatchNorm.*mul"):
        prepare(GatedStack(), ["l0.gate"], prune_norm=True)


def test_step_bumps_mask_versions_and_the_pruner_does_not_import_skip() -> None:
    model, pruner, _ = prepared("swiglu, separate masks")
    masks = [g["module"].parametrizations.weight[0].mask for g in pruner.groups]
    before = [m._version for m in masks]
    pruner.step()
    assert all(m._version > v for m, v in zip(masks, before, strict=True))
    package = Path(structprune_triton.__file__).parent
    for path in [package / "pruner.py", package / "prepare.py", *(package / "graph").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert "skip" not in (node.module or "").split("."), (path.name, node.module)


def test_prune_norm_with_copies_compile_and_squash() -> None:
    """A deep copy's norms follow the copy's masks; ``torch.compile(fullgraph=True)`` of a skipping
    ``prune_norm`` model equals eager; ``squash_mask`` keeps the masked norm values and leaves the
    squashed layers plain."""
    model, pruner, x = prepared("resnet")
    model.eval()
    with torch.no_grad():
        y = model(x)
    copied = copy.deepcopy(model)
    copied.b1.conv1.parametrizations.weight[0].mask.zero_()
    assert (copied.b1.bn1.weight == 0).all() and (model.b1.bn1.weight != 0).any()
    structprune_triton.skip_masked_rows(model, min_numel=0, max_density=1.0, row_multiple=8)
    assert model.b1.conv2.forward.chain
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), y, **PRUNED)
    pruner.squash_mask()
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert not any("forward" in model.get_submodule(f"b{i}.conv1").__dict__ for i in (1, 2))
    with torch.no_grad():
        torch.testing.assert_close(model(x), y, **PRUNED)

"""Checkpointing a model prepared with our parametrization and hook (as upstream's pruner's
``_prepare`` does): ``state_dict`` / strict ``load_state_dict``, ``copy.deepcopy``,
``parametrize.remove_parametrizations``, and pickling (``torch.save`` / ``torch.load``).

Our ``mask`` is a non-persistent buffer, so a prepared model's ``state_dict`` has no mask and loads
strictly into a model prepared the same way (the masks themselves live in the pruner's state).
Upstream keeps the mask out of the state dict by overriding ``state_dict`` while the buffer stays
persistent, so its own prepared model cannot be loaded with ``strict=True`` (pinned below).

Pickling a whole *parametrized* module is refused by ``torch.nn.utils.parametrize`` itself
("Serialization of parametrized modules is only supported through state_dict()"), for upstream's
parametrization as for ours; what can be pickled is checked: the state dict, the model after
``remove_parametrizations``, and the parametrization and hook objects themselves.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from structprune_triton import BiasHook, FakeStructuredSparsity, prepare_module
from structprune_triton.pruner import SaliencyPruner

from .architectures import ResNet, randomize_norms
from .helpers import DEVICE, UpstreamBiasHook, UpstreamFSS, assert_same

OURS = (FakeStructuredSparsity, BiasHook)
UPSTREAM = (UpstreamFSS, UpstreamBiasHook)
MASK_DTYPES = [torch.bool, torch.float32]


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 5), nn.ReLU(), nn.Linear(5, 4)
    ).to(DEVICE)


def masks(mask_dtype: torch.dtype, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in (6, 5, 4):
        live = torch.rand(n, generator=g) < 0.6
        live[0] = True
        live[-1] = False
        m = live.to(mask_dtype)
        if mask_dtype.is_floating_point:
            m = m * (torch.rand(n, generator=g) + 0.5)  # soft
        out.append(m.to(DEVICE))
    return out


def prepare(model: nn.Module, ms, classes=OURS, prune_bias: bool = True) -> nn.Module:
    """Upstream's ``_prepare`` on every conv/linear of ``model``."""
    param_cls, hook_cls = classes
    layers = [m for m in model if isinstance(m, (nn.Conv2d, nn.Linear))]
    for layer, mask in zip(layers, ms, strict=True):
        hook_param = None
        if classes is UPSTREAM and mask.dtype != torch.bool:
            # Upstream's hook prunes with `bias[~mask]`, which only means "mask == 0" for bool
            # masks: the reference hook gets the bool mask (ours takes every dtype).
            hook_param = param_cls(mask != 0)
        prepare_module(
            layer, mask.clone(), prune_bias=prune_bias, parametrization=param_cls, hook=hook_cls, hook_param=hook_param
        )
    return model


def inputs() -> torch.Tensor:
    return torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(5)).to(DEVICE)


def layers_of(model):
    return [m for m in model if isinstance(m, (nn.Conv2d, nn.Linear))]


# ---------------------------------------------------------------- state_dict


@pytest.mark.parametrize("mask_dtype", MASK_DTYPES)
def test_state_dict_loads_strictly_into_a_model_prepared_the_same_way(backend, mask_dtype):
    src = prepare(make_model(0), masks(mask_dtype))
    dst = prepare(make_model(1), masks(mask_dtype))
    sd = src.state_dict()
    assert not [k for k in sd if "mask" in k]
    assert {k for k in sd if k.startswith("0.")} == {"0.parametrizations.weight.original", "0._bias"}
    result = dst.load_state_dict(sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for k, v in sd.items():
        assert_same(dst.state_dict()[k], v)
    # Same weights and masks: same output as the source, and as upstream's model.
    ref = prepare(make_model(0), masks(mask_dtype), UPSTREAM)
    x = inputs()
    with torch.no_grad():
        assert_same(dst(x), src(x))
        torch.testing.assert_close(dst(x), ref(x), rtol=1e-6, atol=1e-6)


def test_loading_keeps_the_target_masks(backend):
    # The mask is not part of the model's state: loading weights does not change the target's masks.
    src = prepare(make_model(0), masks(torch.bool, seed=0))
    dst_masks = masks(torch.bool, seed=3)
    dst = prepare(make_model(1), dst_masks)
    dst.load_state_dict(src.state_dict(), strict=True)
    for layer, m in zip(layers_of(dst), dst_masks, strict=True):
        assert torch.equal(layer.parametrizations.weight[0].mask, m)


def test_upstream_prepared_model_fails_strict_loading():
    # Upstream's behaviour, pinned: its mask buffer is persistent but its state_dict() drops it.
    src = prepare(make_model(0), masks(torch.bool), UPSTREAM)
    dst = prepare(make_model(1), masks(torch.bool), UPSTREAM)
    with pytest.raises(RuntimeError, match=r"Missing key\(s\) in state_dict: .*parametrizations\.weight\.0\.mask"):
        dst.load_state_dict(src.state_dict(), strict=True)


def test_state_dicts_are_interchangeable_with_upstream(backend):
    # Same keys: an upstream-prepared model's state dict loads strictly into ours.
    up = prepare(make_model(0), masks(torch.bool), UPSTREAM)
    ours = prepare(make_model(1), masks(torch.bool))
    assert up.state_dict().keys() == ours.state_dict().keys()
    ours.load_state_dict(up.state_dict(), strict=True)
    with torch.no_grad():
        x = inputs()
        torch.testing.assert_close(ours(x), up(x), rtol=1e-6, atol=1e-6)


def test_state_dict_through_torch_save_weights_only(backend):
    src = prepare(make_model(0), masks(torch.bool))
    buf = io.BytesIO()
    torch.save(src.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)
    dst = prepare(make_model(1), masks(torch.bool))
    dst.load_state_dict(sd, strict=True)
    with torch.no_grad():
        assert_same(dst(inputs()), src(inputs()))


# ---------------------------------------------------------------- deepcopy


@pytest.mark.parametrize("mask_dtype", MASK_DTYPES)
def test_deepcopy_keeps_masks_and_outputs(backend, mask_dtype):
    ms = masks(mask_dtype)
    model = prepare(make_model(0), ms, prune_bias=True)
    x = inputs()
    with torch.no_grad():
        y = model(x)
    clone = copy.deepcopy(model)
    for a, b in zip(layers_of(model), layers_of(clone), strict=True):
        pa, pb = a.parametrizations.weight[0], b.parametrizations.weight[0]
        assert type(pb) is FakeStructuredSparsity and pb is not pa
        assert torch.equal(pb.mask, pa.mask) and pb.mask.data_ptr() != pa.mask.data_ptr()
        (hook,) = b._forward_hooks.values()
        assert type(hook) is BiasHook and hook.param is pb  # the copy's hook reads the copy's mask
    with torch.no_grad():
        assert_same(clone(x), y)
    # The copy is independent: kill a row of the copy's first layer.
    first = layers_of(clone)[0]
    first.parametrizations.weight[0].mask[0] = 0
    with torch.no_grad():
        y_clone = clone(x)
        assert_same(model(x), y)  # the original is unchanged
    assert first._bias[0] == 0  # the copy's hook pruned the copy's bias
    ms_ref = [m.clone() for m in ms]
    ms_ref[0][0] = 0
    ref = prepare(make_model(0), ms_ref, UPSTREAM)
    with torch.no_grad():
        torch.testing.assert_close(y_clone, ref(x), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- remove_parametrizations


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.uint8, torch.float32])
@pytest.mark.parametrize("leave_parametrized", [True, False])
def test_remove_parametrizations_equals_upstream(backend, mask_dtype, leave_parametrized):
    ms = masks(mask_dtype)
    models = [prepare(make_model(0), ms, cls) for cls in (OURS, UPSTREAM)]
    for model in models:
        for layer in layers_of(model):
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=leave_parametrized)
            assert not parametrize.is_parametrized(layer)
    ours, up = models
    for a, b, base, m in zip(layers_of(ours), layers_of(up), layers_of(make_model(0)), ms, strict=True):
        assert_same(a.weight.detach(), b.weight.detach())  # ours == upstream's masked weight
        if leave_parametrized:
            shape = [-1] + [1] * (base.weight.dim() - 1)
            assert torch.equal(a.weight.detach()[m == 0], torch.zeros_like(a.weight[m == 0]))
            torch.testing.assert_close(
                a.weight.detach(), base.weight.detach() * m.reshape(shape).float(), rtol=0, atol=0
            )
        else:
            assert_same(a.weight.detach(), base.weight.detach())
    # The hooks still add the bias after removal (they keep their parametrization object).
    x = inputs()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), up(x), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- pickling


@pytest.mark.parametrize("classes", [OURS, UPSTREAM], ids=["ours", "upstream"])
def test_pickling_a_parametrized_model_is_refused_by_torch(classes):
    model = prepare(make_model(0), masks(torch.bool), classes)
    with pytest.raises(
        RuntimeError, match="Serialization of parametrized modules is only supported through state_dict"
    ):
        torch.save(model, io.BytesIO())


def test_pickling_after_remove_parametrizations(backend):
    model = prepare(make_model(0), masks(torch.bool))
    for layer in layers_of(model):
        parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    for layer in layers_of(loaded):
        (hook,) = layer._forward_hooks.values()
        assert type(hook) is BiasHook and type(hook.param) is FakeStructuredSparsity
    with torch.no_grad():
        assert_same(loaded(inputs()), model(inputs()))


@pytest.mark.parametrize("mask_dtype", MASK_DTYPES)
def test_pickling_parametrization_and_hook(backend, mask_dtype):
    (mask,) = masks(mask_dtype)[:1]
    p = FakeStructuredSparsity(mask)
    hook = BiasHook(p, True)
    buf = io.BytesIO()
    torch.save({"param": p, "hook": hook}, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    p2, hook2 = loaded["param"], loaded["hook"]
    assert type(p2) is FakeStructuredSparsity and hook2.param is p2 and hook2.prune_bias is True
    assert_same(p2.mask, mask)
    w = torch.randn(6, 3, device=DEVICE)
    assert_same(p2(w), UpstreamFSS(mask)(w))


def test_prune_norm_checkpoint_round_trip(backend):
    """A ``prune_norm`` model: ``model.state_dict()`` (the norms' unmasked weight and bias under
    ``parametrizations``) and ``pruner.state_dict()`` (the masks) restore the same function into a
    model prepared the same way, whose norms then follow the loaded masks."""
    config = [{"tensor_fqn": f"b{i}.conv1.weight"} for i in (1, 2)]

    def prepared(seed):
        torch.manual_seed(seed)
        model = randomize_norms(ResNet()).to(DEVICE)
        pruner = SaliencyPruner({"sparsity_level": 0.5, "prune_norm": True})
        pruner.prepare(model, copy.deepcopy(config))
        return model, pruner

    model, pruner = prepared(0)
    pruner.step()
    x = torch.randn(2, 3, 6, 6, device=DEVICE)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "pruner": pruner.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)
    assert "b1.bn1.parametrizations.weight.original" in saved["model"]
    other, other_pruner = prepared(1)
    other.load_state_dict(saved["model"])
    other_pruner.load_state_dict(saved["pruner"])
    dead = other.b1.conv1.parametrizations.weight[0].mask == 0
    assert dead.any() and (other.b1.bn1.weight[dead] == 0).all() and (other.b1.bn1.bias[dead] == 0).all()
    with torch.no_grad():
        assert_same(other.eval()(x), model.eval()(x))

"""The drop-in pruners (``structprune_triton.pruner``) against upstream's
``torch.ao.pruning._experimental.pruner`` on the test models that ship with torch.

Every comparison starts from identical weights (``deepcopy``) and identical masks, so anything but
bitwise equality between our pruned model and upstream's is a bug. Shapes stay small: on a CPU
runner the Triton kernels run under the interpreter (about 1 ms per program instance).
"""

from __future__ import annotations

import copy
import io
import zlib
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from torch.ao.pruning._experimental import pruner as up
from torch.ao.pruning._experimental.pruner import parametrization as up_param
from torch.nn.utils import parametrize
from torch.testing._internal import common_pruning as cp

import structprune_triton
from structprune_triton import pruner as ours
from structprune_triton.parametrization import BiasHook, FakeStructuredSparsity

from .helpers import DEVICE, KERNELS

# upstream's prune_conv2d_pool_flatten_linear builds a tensor from a list of grad-requiring scalars
pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad=True to a scalar")


@pytest.fixture(autouse=True, scope="module")
def _kernels_and_determinism():
    """Run the Triton kernels for every tensor, however small (on a GPU, ``auto`` sends small
    tensors to the torch path); deterministic cuDNN, so that two identical models trained on a GPU
    stay bitwise equal; no TF32, so that fp32 tolerances mean fp32."""
    flags = ("deterministic", "allow_tf32")
    saved = [getattr(torch.backends.cudnn, f) for f in flags]
    saved_matmul = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.deterministic, torch.backends.cudnn.allow_tf32 = True, False
    torch.backends.cuda.matmul.allow_tf32 = False
    with structprune_triton.use_backend("triton" if KERNELS else "auto"):
        yield
    for f, v in zip(flags, saved, strict=True):
        setattr(torch.backends.cudnn, f, v)
    torch.backends.cuda.matmul.allow_tf32 = saved_matmul


# Pruned vs masked model: the pruned model computes a smaller matmul/convolution in which the
# dropped terms were exact zeros, but the backend's reduction order (blocking, vectorisation) depends
# on the sizes, and with prune_bias=False a dropped bias is propagated as act(b) @ W2 added to the
# next bias instead of flowing through the sum. Both only reorder fp32 additions of O(1) values
# over at most a few hundred terms: a few ulp of the partial sums, far below 1e-5 relative /
# 1e-5 absolute, while a wrong row or bias would be off by O(0.1).
PRUNED_TOL = dict(rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Models: (factory, input shape, fqns of the tensors to prune). The last layer is left out so the
# model's output shape survives pruning and the masked and pruned outputs can be compared.
# --------------------------------------------------------------------------------------------


def _w(*names: str) -> list[str]:
    return [f"{n}.weight" for n in names]


MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], list[str]]] = {
    "SimpleLinear": (cp.SimpleLinear, (3, 7), _w("seq.0", "seq.1", "seq.2", "linear1")),
    "LinearBias": (cp.LinearBias, (3, 7), _w("seq.0", "seq.1", "seq.2", "seq.3")),
    "LinearActivation": (cp.LinearActivation, (3, 7), _w("seq.0", "seq.2", "seq.4", "linear1")),
    "LinearActivationFunctional": (
        cp.LinearActivationFunctional,
        (3, 7),
        _w("seq.0", "seq.2", "seq.4", "linear1", "linear2"),
    ),
    "SimpleConv2d": (cp.SimpleConv2d, (1, 1, 9, 9), _w("seq.0", "seq.1", "conv2d1")),
    "Conv2dBias": (cp.Conv2dBias, (1, 1, 11, 11), _w("seq.0", "seq.1", "seq.2", "conv2d1")),
    "Conv2dActivation": (cp.Conv2dActivation, (1, 1, 11, 11), _w("seq.0", "seq.2", "seq.4", "conv2d1")),
    "Conv2dPadBias": (
        cp.Conv2dPadBias,
        (1, 1, 6, 6),
        _w("seq.0", "seq.2", "seq.4", "seq.6", "seq.8", "conv2d1"),
    ),
    "Conv2dPool": (cp.Conv2dPool, (1, 1, 8, 8), _w("seq.0", "seq.3", "conv2d1", "conv2d2")),
    "Conv2dPoolFlatten": (cp.Conv2dPoolFlatten, (1, 1, 8, 8), _w("seq.0", "seq.3", "conv2d1", "conv2d2")),
    "Conv2dPoolFlattenFunctional": (
        cp.Conv2dPoolFlattenFunctional,
        (1, 1, 8, 8),
        _w("seq.0", "seq.3", "conv2d1", "conv2d2"),
    ),
}

LSTM_MODELS = {
    "LSTMLinearModel": lambda: cp.LSTMLinearModel(4, 8, 8, 2),
    "LSTMLayerNormLinearModel": lambda: cp.LSTMLayerNormLinearModel(4, 8, 8, 2),
}
# (sequence, batch, features). The final Linear is not pruned: its input is 3-D, and upstream's
# BiasHook adds the bias along dim 1 (here the batch), which fails or is wrong for a pruned Linear
# with bias there (ours adds it along the last dim), so no upstream reference exists.
LSTM_INPUT = (3, 2, 4)
LSTM_FQNS = [f"lstm.{w}_l{i}" for i in range(2) for w in ("weight_ih", "weight_hh")]


def _make(factory: Callable[[], nn.Module], seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return factory().to(DEVICE)


def _input(shape: tuple[int, ...], seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(DEVICE)


def _first(out: Any) -> torch.Tensor:
    """The model output to compare (LSTM models return a tuple whose first entry keeps its size)."""
    return out[0] if isinstance(out, tuple) else out


# --------------------------------------------------------------------------------------------
# A deterministic pruner: fixed masks that depend only on the tensor fqn and the step count, so
# masks change between steps (exercising in-place mask updates) and ours and upstream's agree.
# --------------------------------------------------------------------------------------------


def fixed_mask(fqn: str, n: int, step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(zlib.crc32(fqn.encode()) + 1000 * step)
    keep = torch.rand(n, generator=g) < 0.6
    keep[torch.randint(n, (1,), generator=g)] = True  # at least one live row
    keep[torch.randint(n, (1,), generator=g)] = False  # at least one dead row
    return keep


class _FixedMasks:
    def update_mask(self, module: nn.Module, tensor_name: str, tensor_fqn: str, **kwargs: Any) -> None:
        state = self.state[tensor_fqn]
        state["step_count"] = state.get("step_count", 0) + 1
        mask = getattr(module.parametrizations, tensor_name)[0].mask
        mask.copy_(fixed_mask(tensor_fqn, mask.shape[0], state["step_count"]).to(mask.device))


class OursFixed(_FixedMasks, ours.BaseStructuredSparsifier):
    """A user subclass of our base implementing only ``update_mask``."""


class UpFixed(_FixedMasks, up.BaseStructuredSparsifier):
    pass


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def assert_ours_used(model: nn.Module, expect_hooks: bool = True) -> None:
    """Every structured parametrization of ``model`` and every bias hook is this package's class."""
    n_params = n_hooks = 0
    for module in model.modules():
        if parametrize.is_parametrized(module):
            for plist in module.parametrizations.values():
                assert isinstance(plist[0], up_param.FakeStructuredSparsity)
                assert type(plist[0]) is FakeStructuredSparsity, type(plist[0])
                n_params += 1
        for hook in module._forward_hooks.values():
            if isinstance(hook, up_param.BiasHook):
                assert type(hook) is BiasHook, type(hook)
                assert hook.param is module.parametrizations.weight[0]
                n_hooks += 1
    assert n_params > 0
    assert n_hooks > 0 or not expect_hooks


def assert_same_params(a: nn.Module, b: nn.Module) -> None:
    """Same parameter/buffer names, shapes and values (bitwise, ``torch.equal``)."""
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    assert pa.keys() == pb.keys()
    for name in pa:
        assert pa[name].shape == pb[name].shape, name
        assert torch.equal(pa[name], pb[name]), name
    ba, bb = dict(a.named_buffers()), dict(b.named_buffers())
    assert ba.keys() == bb.keys()
    for name in ba:
        assert torch.equal(ba[name], bb[name]), name


def assert_same_structure(a: nn.Module, b: nn.Module) -> None:
    ma, mb = dict(a.named_modules()), dict(b.named_modules())
    assert ma.keys() == mb.keys()
    for name in ma:
        assert type(ma[name]).__name__ == type(mb[name]).__name__, name
        assert ma[name].extra_repr() == mb[name].extra_repr(), name
    assert_same_params(a, b)


def sgd_steps(model: nn.Module, x: torch.Tensor, n: int, lr: float = 0.05) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    for _ in range(n):
        opt.zero_grad()
        loss = _first(model(x)).square().mean()
        loss.backward()
        opt.step()


def _config(fqns: list[str]) -> list[dict[str, Any]]:
    return [{"tensor_fqn": f} for f in fqns]


def run_both(
    ours_pruner: Any,
    up_pruner: Any,
    model: nn.Module,
    x: torch.Tensor,
    fqns: list[str],
    train_steps: int = 2,
    expect_hooks: bool = True,
) -> dict[str, Any]:
    """prepare / step / train / step / masked forward / prune for our pruner and upstream's on
    copies of ``model``; asserts bitwise agreement along the way and returns the results."""
    m_ours, m_up = copy.deepcopy(model), copy.deepcopy(model)
    ours_pruner.prepare(m_ours, _config(fqns))
    up_pruner.prepare(m_up, _config(fqns))
    assert_ours_used(m_ours, expect_hooks)
    ours_pruner.step()
    up_pruner.step()
    # training between step() calls updates the original weights exactly as upstream's
    sgd_steps(m_ours, x, train_steps)
    sgd_steps(m_up, x, train_steps)
    assert_same_params(m_ours, m_up)
    ours_pruner.step()
    up_pruner.step()
    for fqn in fqns:
        assert torch.equal(ours_pruner.state[fqn]["mask"], up_pruner.state[fqn]["mask"]), fqn
    with torch.no_grad():
        y_ours, y_up = _first(m_ours(x)), _first(m_up(x))
    assert torch.equal(y_ours, y_up)
    # the masked forward with prune_bias zeroed the dead entries of _bias, in both
    assert_same_params(m_ours, m_up)
    p_ours, p_up = ours_pruner.prune(), up_pruner.prune()
    assert_same_structure(p_ours, p_up)
    with torch.no_grad():
        z_ours, z_up = _first(p_ours(x)), _first(p_up(x))
    assert torch.equal(z_ours, z_up)
    return dict(masked=y_ours, pruned=z_ours, model=p_ours)


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------


def test_classes_subclass_upstream() -> None:
    pairs = [
        (ours.SaliencyPruner({"sparsity_level": 0.5}), up.SaliencyPruner),
        (ours.FPGMPruner(0.5, dist=1), up.FPGMPruner),
        (ours.LSTMSaliencyPruner({"sparsity_level": 0.5}), up.LSTMSaliencyPruner),
    ]
    for p, upstream_cls in pairs:
        assert isinstance(p, upstream_cls)
        assert isinstance(p, ours.BaseStructuredSparsifier)
        assert type(p)._prepare is ours.BaseStructuredSparsifier._prepare  # ours wins the MRO
        assert type(p).update_mask is upstream_cls.update_mask  # upstream's algorithm
    assert issubclass(ours.BaseStructuredSparsifier, up.BaseStructuredSparsifier)
    assert pairs[1][0].defaults == {"sparsity_level": 0.5}


@pytest.mark.parametrize("prune_bias", [True, False], ids=["prune_bias", "keep_bias"])
@pytest.mark.parametrize("name", list(MODELS))
def test_fixed_masks_match_upstream(name: str, prune_bias: bool) -> None:
    factory, shape, fqns = MODELS[name]
    model, x = _make(factory), _input(shape)
    defaults = {"prune_bias": prune_bias}
    r = run_both(OursFixed(defaults), UpFixed(defaults), model, x, fqns, train_steps=1)
    assert r["pruned"].shape == r["masked"].shape
    torch.testing.assert_close(r["pruned"], r["masked"], **PRUNED_TOL)


@pytest.mark.parametrize(
    "name,pruner",
    [
        ("LinearActivation", "saliency"),
        ("Conv2dPoolFlatten", "saliency"),
        ("Conv2dBias", "fpgm"),
    ],
)
def test_concrete_pruners_match_upstream(name: str, pruner: str) -> None:
    factory, shape, fqns = MODELS[name]
    if pruner == "saliency":
        pair = ours.SaliencyPruner({"sparsity_level": 0.5}), up.SaliencyPruner({"sparsity_level": 0.5})
    else:
        pair = ours.FPGMPruner(0.4), up.FPGMPruner(0.4)
    r = run_both(*pair, _make(factory), _input(shape), fqns, train_steps=2)
    torch.testing.assert_close(r["pruned"], r["masked"], **PRUNED_TOL)


@pytest.mark.parametrize("name", list(LSTM_MODELS))
def test_lstm_pruner_matches_upstream(name: str) -> None:
    # Upstream's LSTM pruning picks the kept rows of weight_ih and weight_hh independently, so the
    # pruned LSTM is not the masked one (upstream only checks shapes there): compare with upstream.
    model, x = _make(LSTM_MODELS[name]), _input(LSTM_INPUT)
    defaults = {"sparsity_level": 0.5}
    r = run_both(
        ours.LSTMSaliencyPruner(defaults),
        up.LSTMSaliencyPruner(defaults),
        model,
        x,
        LSTM_FQNS,
        train_steps=1,
        expect_hooks=False,  # LSTMs get the parametrization only, as upstream
    )
    pruned = r["model"]
    assert pruned.lstm.hidden_size == 4 and pruned.lstm.weight_hh_l1.shape == (16, 4)
    assert pruned.linear.in_features == 4 and r["pruned"].shape == r["masked"].shape


def test_pruning_the_output_layer() -> None:
    # config=None prunes every Linear, the last one through the (Linear, "output") pattern:
    # the pruned output is the masked output's live columns.
    model, x = _make(cp.LinearBias), _input((3, 7))
    p = OursFixed({})
    p.prepare(model, None)
    p.step()
    with torch.no_grad():
        y = model(x)
    last_mask = p.state["seq.4.weight"]["mask"].clone()
    pruned = p.prune()
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), y[:, last_mask], **PRUNED_TOL)


def test_prepare_keeps_upstream_layout() -> None:
    model = _make(cp.LinearBias)
    bias = model.seq[0].bias
    p = ours.SaliencyPruner({"sparsity_level": 0.5, "prune_bias": False})
    p.prepare(model, _config(_w("seq.0", "seq.1")))
    lin0, lin1 = model.seq[0], model.seq[1]
    assert lin0.bias is None and isinstance(lin0._bias, nn.Parameter)
    assert torch.equal(lin0._bias, bias) and lin0.prune_bias is False
    assert not hasattr(lin1, "_bias") and not hasattr(lin1, "prune_bias")  # no bias: no attribute
    for lin in (lin0, lin1):  # a hook even without bias, as upstream
        (hook,) = lin._forward_hooks.values()
        assert type(hook) is BiasHook and hook.param is lin.parametrizations.weight[0]
        assert hook.prune_bias is False
    mask = p.state["seq.0.weight"]["mask"]
    assert mask is lin0.parametrizations.weight[0].mask
    assert mask.dtype == torch.bool and mask.all() and mask.shape == (5,)
    assert model.state_dict().keys() == {
        "seq.0._bias",
        "seq.0.parametrizations.weight.original",
        "seq.1.parametrizations.weight.original",
        "seq.2.weight",
        "seq.2.bias",
        "seq.3.weight",
        "seq.3.bias",
        "seq.4.weight",
    }


def test_config_parametrization_and_mask_are_honoured() -> None:
    model = _make(cp.SimpleLinear)
    mask = torch.tensor([True, False, True, True, False], device=DEVICE)
    p = ours.SaliencyPruner({"sparsity_level": 0.5})
    p.prepare(
        model,
        [
            {"tensor_fqn": "seq.0.weight", "mask": mask},
            {"tensor_fqn": "seq.1.weight", "parametrization": up_param.FakeStructuredSparsity},
        ],
    )
    assert model.seq[0].parametrizations.weight[0].mask is mask
    assert type(model.seq[1].parametrizations.weight[0]) is up_param.FakeStructuredSparsity


def test_accelerate_upstream_prepared_model() -> None:
    factory, shape, fqns = MODELS["Conv2dPoolFlatten"]
    model, x = _make(factory), _input(shape)
    ref_model, fast_model = copy.deepcopy(model), copy.deepcopy(model)
    ref, fast = up.SaliencyPruner({"sparsity_level": 0.5}), up.SaliencyPruner({"sparsity_level": 0.5})
    ref.prepare(ref_model, _config(fqns))
    fast.prepare(fast_model, _config(fqns))
    hooks_before = {name: list(m._forward_hooks.keys()) for name, m in fast_model.named_modules() if m._forward_hooks}
    assert structprune_triton.pruner.accelerate(fast_model) is fast_model
    assert_ours_used(fast_model)
    for fqn in fqns:
        module_fqn = fqn.rsplit(".", 1)[0]
        module = fast_model.get_submodule(module_fqn)
        assert module.parametrizations.weight[0].mask is fast.state[fqn]["mask"]  # same tensor object
        assert list(module._forward_hooks.keys()) == hooks_before[module_fqn]  # same ids, same order
    # idempotent: a second call leaves every object in place
    before = [(p, h) for m in fast_model.modules() for p in _params(m) for h in m._forward_hooks.values()]
    structprune_triton.pruner.accelerate(fast_model)
    after = [(p, h) for m in fast_model.modules() for p in _params(m) for h in m._forward_hooks.values()]
    assert all(a[0] is b[0] and a[1] is b[1] for a, b in zip(before, after, strict=True)) and len(before) == len(after)
    # the upstream pruner keeps working on the accelerated model, with upstream's exact results
    for pruner, m in ((ref, ref_model), (fast, fast_model)):
        pruner.step()
        sgd_steps(m, x, 2)
        pruner.step()
    assert_same_params(fast_model, ref_model)
    with torch.no_grad():
        y = fast_model(x)
        assert torch.equal(y, ref_model(x))
    p_fast, p_ref = fast.prune(), ref.prune()
    assert_same_structure(p_fast, p_ref)
    with torch.no_grad():
        torch.testing.assert_close(p_fast(x), y, **PRUNED_TOL)


def _params(module: nn.Module) -> list[nn.Module]:
    if not parametrize.is_parametrized(module):
        return []
    return [p for plist in module.parametrizations.values() for p in plist]


def test_state_dict_round_trip() -> None:
    factory, shape, fqns = MODELS["Conv2dBias"]
    x = _input(shape)
    model_a = _make(factory)
    pa = OursFixed({"prune_bias": False})
    pa.prepare(model_a, _config(fqns))
    pa.step()
    pa.step()
    sgd_steps(model_a, x, 1)
    # save the model (masks are not in it: non-persistent buffer) and the pruner (masks are there)
    buf = io.BytesIO()
    torch.save({"model": model_a.state_dict(), "pruner": pa.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf)  # weights_only=True: the pruner state is plain dicts and tensors
    assert all("mask" not in k for k in saved["model"])

    model_b = _make(factory, seed=123)
    pb = OursFixed({"prune_bias": False})
    pb.prepare(model_b, _config(fqns))
    assert not all(torch.equal(pa.state[f]["mask"], pb.state[f]["mask"]) for f in fqns)
    model_b.load_state_dict(saved["model"])  # strict
    pb.load_state_dict(saved["pruner"])
    assert all("mask" in s for s in saved["pruner"]["state"].values())  # argument left alone
    for fqn in fqns:
        module = model_b.get_submodule(fqn.rsplit(".", 1)[0])
        mask = module.parametrizations.weight[0].mask
        assert mask is pb.state[fqn]["mask"] and mask is not pa.state[fqn]["mask"]
        assert torch.equal(mask, pa.state[fqn]["mask"])
        assert pb.state[fqn]["step_count"] == 2
    assert [g["tensor_fqn"] for g in pb.groups] == fqns
    assert all(g["module"] is model_b.get_submodule(g["module_fqn"]) for g in pb.groups)
    assert_ours_used(model_b)
    with torch.no_grad():
        assert torch.equal(model_b(x), model_a(x))
    # the loaded pruner steps on (masks updated in place) and prunes like the original
    pa.step()
    pb.step()
    assert_same_structure(pb.prune(), pa.prune())


def test_load_state_dict_prepares_missing_tensors() -> None:
    model_a, x = _make(cp.LinearBias), _input((3, 7))
    pa = OursFixed({})
    pa.prepare(model_a, _config(_w("seq.0", "seq.2")))
    pa.step()
    model_b = copy.deepcopy(_make(cp.LinearBias))
    pb = OursFixed({})
    pb.prepare(model_b, _config(_w("seq.0")))
    pb.load_state_dict(pa.state_dict())
    assert_ours_used(model_b)
    assert model_b.seq[2].bias is None and model_b.seq[2]._bias is not None
    with torch.no_grad():
        assert torch.equal(model_b(x), model_a(x))


def test_squash_mask_matches_upstream() -> None:
    factory, shape, fqns = MODELS["LinearActivation"]
    model, x = _make(factory), _input(shape)
    m_ours, m_up = copy.deepcopy(model), copy.deepcopy(model)
    p_ours, p_up = OursFixed({}), UpFixed({})
    for p, m in ((p_ours, m_ours), (p_up, m_up)):
        p.prepare(m, _config(fqns))
        p.step()
    with torch.no_grad():
        y = m_ours(x)
        assert torch.equal(m_up(x), y)  # (with prune_bias, this forward zeroes dead _bias entries)
    p_ours.squash_mask()
    p_up.squash_mask()
    assert not any(parametrize.is_parametrized(m) for m in m_ours.modules())
    assert_same_params(m_ours, m_up)
    with torch.no_grad():
        assert torch.equal(m_ours(x), m_up(x))
        assert torch.equal(m_ours(x), y)
    # as upstream, the bias stays in _bias and the hook (ours) keeps adding it
    assert m_ours.seq[0].bias is None
    assert [type(h) for h in m_ours.seq[0]._forward_hooks.values()] == [BiasHook]


def test_user_subclass_only_update_mask() -> None:
    class DropFirstRow(ours.BaseStructuredSparsifier):
        def update_mask(self, module: nn.Module, tensor_name: str, **kwargs: Any) -> None:
            getattr(module.parametrizations, tensor_name)[0].mask[0] = False

    model, x = _make(cp.Conv2dPoolFlattenFunctional), _input((1, 1, 8, 8))
    p = DropFirstRow({})
    fqns = MODELS["Conv2dPoolFlattenFunctional"][2]
    p.prepare(model, _config(fqns))
    assert_ours_used(model)
    p.step()
    with torch.no_grad():
        y = model(x)
    pruned = p.prune()
    assert pruned.conv2d2.out_channels == 10 and pruned.fc.in_features == 10
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), y, **PRUNED_TOL)

"""Preparing modules without a pruner: :func:`prepare_module` registers this package's
parametrization and bias hook on one module as upstream's ``_prepare`` does, and :func:`accelerate`
swaps upstream's classes for ours on a model an upstream pruner prepared. Both are re-exported by
:mod:`structprune_triton.pruner` and the package."""

from __future__ import annotations

import torch
from torch import nn
from torch.ao.pruning._experimental.pruner import parametrization as _upstream_param
from torch.nn.utils import parametrize

from .parametrization import BiasHook, FakeStructuredSparsity

__all__ = ["accelerate", "prepare_module"]

# Modules that get a BiasHook: the same set as upstream's ``_prepare``.
_BIAS_HOOK_MODULES = (nn.Linear, nn.Conv2d)


def prepare_module(
    module: nn.Module,
    mask: torch.Tensor | None = None,
    *,
    tensor_name: str = "weight",
    prune_bias: bool = True,
    parametrization: type[nn.Module] = FakeStructuredSparsity,
    hook: type = BiasHook,
    hook_param: nn.Module | None = None,
) -> nn.Module:
    """Prepare one module as upstream's ``BaseStructuredSparsifier._prepare`` does, without a pruner.

    ``module.<tensor_name>`` gets ``parametrization(mask)`` (``mask``: all rows live if None). On an
    ``nn.Linear``/``nn.Conv2d`` the bias moves to a ``_bias`` Parameter (``module.bias = None``,
    ``module.prune_bias = prune_bias``) and ``hook(param, prune_bias)`` is registered as a forward
    hook, ``param`` being the new parametrization (or ``hook_param``). Returns ``module``."""
    if mask is None:
        tensor = getattr(module, tensor_name)
        mask = torch.ones(tensor.shape[0], dtype=torch.bool, device=tensor.device)
    parametrize.register_parametrization(module, tensor_name, parametrization(mask))
    if not isinstance(module, _BIAS_HOOK_MODULES):
        return module  # e.g. nn.LSTM: parametrization only, as upstream
    if module.bias is not None:
        module.register_parameter("_bias", nn.Parameter(module.bias.detach()))
        module.bias = None
        module.prune_bias = prune_bias
    param = hook_param if hook_param is not None else getattr(module.parametrizations, tensor_name)[0]
    module.register_forward_hook(hook(param, prune_bias))
    return module


def accelerate(model: nn.Module) -> nn.Module:
    """Swap upstream's structured-pruning parametrizations and bias hooks for ours, in place.

    For a model already prepared by an upstream pruner (``torch.ao.pruning._experimental.pruner``)::

        pruner = torch.ao.pruning._experimental.pruner.SaliencyPruner({"sparsity_level": 0.5})
        pruner.prepare(model, config)
        structprune_triton.pruner.accelerate(model)   # then train, pruner.step(), pruner.prune()

    Every parametrization whose type is exactly upstream's ``FakeStructuredSparsity`` is replaced by
    ours at the same position, holding the *same* mask tensor object (the pruner's
    ``state[fqn]["mask"]`` and its ``update_mask`` keep working); every forward hook whose type is
    exactly upstream's ``BiasHook`` is replaced by ours under the same hook id (its handle still
    removes it; order is kept), pointing at the new parametrization. Subclasses of upstream's classes
    (custom parametrizations, ours) are left alone, so calling ``accelerate`` again changes nothing.
    Returns ``model``.
    """
    swapped: dict[int, tuple[nn.Module, nn.Module]] = {}  # id(old) -> (old kept alive, new)
    for module in model.modules():
        if not parametrize.is_parametrized(module):
            continue
        for plist in module.parametrizations.values():
            for i, p in enumerate(plist):
                if type(p) is _upstream_param.FakeStructuredSparsity:
                    new = FakeStructuredSparsity(p.mask)
                    new.train(p.training)
                    plist[i] = new
                    swapped[id(p)] = (p, new)
    for module in model.modules():
        hooks = module._forward_hooks
        for key, hook in list(hooks.items()):
            if type(hook) is _upstream_param.BiasHook:
                param = swapped[id(hook.param)][1] if id(hook.param) in swapped else hook.param
                hooks[key] = BiasHook(param, hook.prune_bias)
    return model

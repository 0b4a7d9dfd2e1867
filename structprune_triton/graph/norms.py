"""``prune_norm``: find the BatchNorm a masked layer feeds and mask its affine weight and bias with
the layer's mask (:class:`.norm_mask.NormMask`)."""

from __future__ import annotations

import warnings
from collections import Counter

from torch import fx, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrize import type_before_parametrizations

from .channels import describe, layer_kind
from .norm_mask import NormMask, norm_source
from .rules import pool_input
from .zeros import elementwise_call, keeps_zero

__all__ = ["attach_norms", "masked_norms", "squash_norms"]

_NORM_FOR = {nn.Linear: nn.BatchNorm1d, nn.Conv2d: nn.BatchNorm2d}


def _trace(model: nn.Module) -> fx.Graph:
    try:
        return fx.Tracer().trace(model)
    except Exception as e:
        raise ValueError(
            f"prune_norm: torch.fx cannot trace the model, so the BatchNorm each layer feeds cannot be found ({e})"
        ) from e


def _walk(layer_node: fx.Node, modules: dict[str, nn.Module], channels: int) -> tuple[list[fx.Node], list[str]]:
    """The BatchNorm calls ``layer_node``'s output reaches through zero-preserving element-wise ops and
    pooling, and what stopped the walk elsewhere (for the message when none is found)."""
    found, stops, todo, seen = [], [], [layer_node], set()
    while todo:
        node = todo.pop()
        for user in node.users:
            if user in seen:
                continue
            seen.add(user)
            if user.op == "call_module" and issubclass(
                type_before_parametrizations(modules[user.target]), (nn.BatchNorm1d, nn.BatchNorm2d)
            ):
                found.append(user)
            elif elementwise_call(user, modules) is node or pool_input(user, modules) is node:
                if pool_input(user, modules) is node or keeps_zero(user, modules, channels):
                    todo.append(user)
                else:
                    stops.append(f"{describe(user, modules)} does not map 0 to 0")
            else:
                stops.append(describe(user, modules))
    return found, stops


def attach_norms(model: nn.Module, layers: list[nn.Module], stacklevel: int = 2) -> list[nn.Module]:
    """Mask the affine weight and bias of the BatchNorm each of ``layers`` feeds (directly or through
    ops that keep zero channels zero) with that layer's current mask. Raises ``ValueError`` for a
    norm that is not affine, has another channel count, is called more than once or fed by two of
    ``layers``, and for a layer called more than once; warns (at ``stacklevel`` above this call) for
    a layer that feeds no BatchNorm. Returns the norms masked."""
    if not layers:
        return []
    graph = _trace(model)
    modules = dict(model.named_modules())
    names = {id(m): n for n, m in modules.items()}
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    owner: dict[str, str] = {}
    plan = []
    for layer in layers:
        name = names.get(id(layer))
        kind = layer_kind(layer)
        if name is None or kind is None:
            raise ValueError(f"prune_norm: {type(layer).__name__} is not an nn.Linear/nn.Conv2d of the model")
        if calls[name] != 1:
            raise ValueError(f"prune_norm: '{name}' is called {calls[name]} times; which norm it feeds is ambiguous")
        node = next(n for n in graph.nodes if n.op == "call_module" and n.target == name)
        channels = layer.out_features if kind is nn.Linear else layer.out_channels
        found, stops = _walk(node, modules, channels)
        if not found:
            after = f" (its output goes to {', '.join(stops)})" if stops else ""
            warnings.warn(
                f"prune_norm: '{name}' feeds no BatchNorm through ops that keep zero channels zero{after}; "
                "no norm masked for it",
                stacklevel=stacklevel + 1,
            )
        for norm_node in found:
            norm = modules[norm_node.target]
            where = f"prune_norm: '{norm_node.target}' after '{name}'"
            if type_before_parametrizations(norm) is not _NORM_FOR[kind]:
                raise ValueError(f"{where} is a {type(norm).__name__}, expected {_NORM_FOR[kind].__name__}")
            if not norm.affine:
                raise ValueError(f"{where} has no affine weight and bias to mask (affine=False)")
            if norm.num_features != channels:
                raise ValueError(f"{where} has {norm.num_features} channels, the layer {channels}")
            if calls[norm_node.target] != 1:
                raise ValueError(f"{where} is called {calls[norm_node.target]} times (shared)")
            if owner.setdefault(norm_node.target, name) != name or norm_source(norm) not in (None, layer):
                raise ValueError(f"{where} is also fed by '{owner[norm_node.target]}' (shared)")
            plan.append((norm, layer))
    for norm, layer in plan:
        if norm_source(norm) is None:
            for tensor in ("weight", "bias"):
                parametrize.register_parametrization(norm, tensor, NormMask(layer))
    return [norm for norm, _ in plan]


def masked_norms(model: nn.Module) -> list[nn.Module]:
    """The norms of ``model`` that carry :class:`.norm_mask.NormMask` parametrizations."""
    return [m for m in model.modules() if norm_source(m) is not None]


def squash_norms(model: nn.Module, layers: set[nn.Module] | None = None) -> None:
    """Replace each masked norm's weight and bias (of the norms masked by ``layers``; all if None)
    by their masked values, removing the parametrizations."""
    for norm in masked_norms(model):
        if layers is None or norm_source(norm) in layers:
            for tensor in ("weight", "bias"):
                parametrize.remove_parametrizations(norm, tensor, leave_parametrized=True)

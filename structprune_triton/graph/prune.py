"""The shapes ``prune()`` shrinks beyond upstream's patterns, found by the channel analysis.

A channel space (:mod:`.channels`) is shrunk here when it holds a masked BatchNorm, a product or
sum of two layers' outputs (a gated MLP), several layers, or a masked layer none of upstream's
patterns takes. The channels removed are those provably zero at the input of every layer reading
the space; they are removed from every layer writing it (rows, bias), every masked norm in it
(weight, bias, running statistics) and every layer reading it (input columns), so each reader
computes what it computed on the masked model. A space read by anything else (the model's output,
an add with another tensor, a concatenation...) is not shrunk: ``prune()`` then raises, naming the
layer and the op in the way.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, fx, nn
from torch.ao.pruning._experimental.pruner.parametrization import BiasHook as _UpstreamBiasHook
from torch.ao.pruning._experimental.pruner.parametrization import FakeStructuredSparsity as _UpstreamFSS
from torch.nn.utils import parametrize

from .channels import ChannelGraph, Space, describe, layer_kind
from .norm_mask import NormMask, mask_of, norm_source
from .rules import binary_operands, dead_channels, intersection

__all__ = ["plan_prune"]


def _masked(module: nn.Module) -> bool:
    return parametrize.is_parametrized(module) and any(
        isinstance(p, _UpstreamFSS) for plist in module.parametrizations.values() for p in plist
    )


class PrunePlan:
    """The spaces ``prune()`` shrinks itself (:meth:`apply`), checked before anything changes."""

    def __init__(self, graph: ChannelGraph, spaces: list[Space]) -> None:
        self.graph = graph
        self.spaces = spaces

    def apply(self) -> None:
        with torch.no_grad():
            for space in self.spaces:
                self._shrink(space)

    def _shrink(self, space: Space) -> None:
        g = self.graph
        dead = None
        for node, _ in space.consumers:
            expr = g.inputs[node][0].dead
            dead = expr if dead is None else intersection(dead, expr)
        keep = dead_channels(dead).logical_not()
        for node in space.norms:  # first: a norm's mask reads its layer's mask
            _shrink_norm(g.modules[node.target], keep)
        for node in space.producers:
            _shrink_rows(g.modules[node.target], keep)
        for node, group in space.consumers:
            _shrink_columns(g.modules[node.target], keep.repeat_interleave(group) if group > 1 else keep)


def plan_prune(root: nn.Module, graph: fx.Graph, upstream_takes: Callable[[fx.Node], bool]) -> PrunePlan:
    """Check the whole model before anything changes: every masked module is in a space this module
    shrinks, or upstream's patterns take it (``upstream_takes(node)``); else ``RuntimeError`` naming
    the layer and what blocks it."""
    g = ChannelGraph(root, graph)
    ours, claimed = [], set()
    for space in g.spaces():
        masked = [n for n in space.producers if _masked(g.modules[n.target])]
        if not masked:
            continue
        special = space.norms or len(space.producers) > 1 or any(binary_operands(n) for n in space.ops)
        if not special and all(upstream_takes(n) for n in masked):
            continue  # upstream's patterns, unchanged
        why = _blocked(g, space)
        if why is not None:
            raise RuntimeError(_message(masked[0], g, why))
        ours.append(space)
        claimed.update(n.target for n in space.producers)
    for node in graph.nodes:
        if node.op == "call_module" and _masked(g.modules[node.target]) and node.target not in claimed:
            if not upstream_takes(node):
                raise RuntimeError(_message(node, g, "no pattern of prune() matches it"))
    return PrunePlan(g, ours)


def _message(node: fx.Node, g: ChannelGraph, why: str) -> str:
    return (
        f"prune(): cannot remove the pruned channels of {describe(node, g.modules)}: {why}. "
        "The shapes prune() shrinks are listed in docs/architectures.md."
    )


def _blocked(g: ChannelGraph, space: Space) -> str | None:
    """Why ``space`` cannot be shrunk here, or None."""
    if space.blockers:
        return space.blockers[0][1]
    if not space.consumers:
        return "its channels reach no nn.Linear/nn.Conv2d"
    producers = {g.modules[n.target] for n in space.producers}
    for node in space.producers:
        layer = g.modules[node.target]
        if parametrize.is_parametrized(layer) and mask_of(layer) is None:
            return f"{describe(node, g.modules)} has a parametrization that is not a row mask"
        if parametrize.is_parametrized(layer) and set(layer.parametrizations) != {"weight"}:
            return f"{describe(node, g.modules)} has parametrizations besides its weight's row mask"
    for node in space.norms:
        source = norm_source(g.modules[node.target])
        if source is not None and source not in producers:
            return f"{describe(node, g.modules)} is masked by a layer that does not write these channels"
    for node, _ in space.consumers:
        value = g.inputs[node][0]
        consumer = describe(node, g.modules)
        if value.dead is None:
            return f"they reach {consumer}, but not as zeros: {value.lost}"
        if not g.unmutated(node, value):
            return f"an op may change the input of {consumer} in place"
        if layer_kind(g.modules[node.target]) is None:
            return f"{consumer} does not run its class's forward"
    return None


def _rows(t: Tensor, keep: Tensor) -> nn.Parameter:
    return nn.Parameter(t.detach()[keep], requires_grad=t.requires_grad)


def _shrink_rows(layer: nn.Module, keep: Tensor) -> None:
    """Keep the output rows ``keep`` of ``layer`` (weight as masked, bias as the hook adds it)."""
    mask = mask_of(layer)
    bias = getattr(layer, "_bias", None)
    if bias is not None and mask is not None and getattr(layer, "prune_bias", False):
        bias = torch.where(mask != 0, bias, torch.zeros((), dtype=bias.dtype, device=bias.device))
    if mask is not None:
        parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
    layer.weight = _rows(layer.weight, keep)
    if bias is not None:
        del layer._bias
        layer.bias = _rows(bias, keep)
    elif layer.bias is not None:
        layer.bias = _rows(layer.bias, keep)
    for key in [k for k, h in layer._forward_hooks.items() if isinstance(h, _UpstreamBiasHook)]:
        del layer._forward_hooks[key]
    count = int(keep.sum())
    if isinstance(layer, nn.Linear):
        layer.out_features = count
    else:
        layer.out_channels = count


def _shrink_columns(layer: nn.Module, keep: Tensor) -> None:
    """Keep the input columns ``keep`` of ``layer`` (its row mask, if any, stays)."""
    if parametrize.is_parametrized(layer, "weight"):
        plist = layer.parametrizations.weight
        plist.original = nn.Parameter(plist.original.detach()[:, keep], requires_grad=plist.original.requires_grad)
    else:
        layer.weight = nn.Parameter(layer.weight.detach()[:, keep], requires_grad=layer.weight.requires_grad)
    count = int(keep.sum())
    if isinstance(layer, nn.Linear):
        layer.in_features = count
    else:
        layer.in_channels = count


def _shrink_norm(norm: nn.Module, keep: Tensor) -> None:
    """Keep the channels ``keep`` of a BatchNorm (affine values as masked, running statistics)."""
    for tensor in ("weight", "bias"):
        if parametrize.is_parametrized(norm, tensor) and any(
            isinstance(p, NormMask) for p in getattr(norm.parametrizations, tensor)
        ):
            parametrize.remove_parametrizations(norm, tensor, leave_parametrized=True)
        if getattr(norm, tensor) is not None:
            setattr(norm, tensor, _rows(getattr(norm, tensor), keep))
    for buffer in ("running_mean", "running_var"):
        if getattr(norm, buffer, None) is not None:
            setattr(norm, buffer, getattr(norm, buffer)[keep].clone())
    norm.num_features = int(keep.sum())

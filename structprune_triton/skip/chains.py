"""Find chains: layers whose input channels the model's ``torch.fx`` graph proves exact zeros, given
the current masks of the layers before them (:mod:`structprune_triton.graph.channels` does the
analysis: element-wise ops that keep zero zero, pooling, a flatten, a BatchNorm masked with
``prune_norm``, products and sums). A model that cannot be traced is searched child by child.
"""

from __future__ import annotations

from torch import fx, nn

from ..graph.channels import ChannelGraph, InputChannels

__all__ = ["InputChannels", "find_chains"]


def find_chains(model: nn.Module) -> dict[nn.Module, InputChannels]:
    """For every ``nn.Linear``/``nn.Conv2d`` of ``model`` some of whose input columns are provably
    exact zeros: an :class:`InputChannels` whose ``live()`` (from the current masks, one entry per
    input column, flatten groups expanded) is False exactly there. Layers called more than once, or
    whose input may be changed in place by another op, are left out."""
    tracer = fx.Tracer()
    try:
        graph = tracer.trace(model)
    except Exception:  # data-dependent control flow, unsupported ops: search the children instead
        found: dict[nn.Module, InputChannels] = {}
        for child in model.children():
            if not tracer.is_leaf_module(child, ""):
                found.update(find_chains(child))
        return found
    return {inputs.consumer: inputs for inputs in ChannelGraph(model, graph).input_channels().values()}

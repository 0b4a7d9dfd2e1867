"""Find chains in a model's structure: a pruned layer whose masked output channels reach the input
of the next ``nn.Linear``/``nn.Conv2d`` as exact zeros, so that layer can skip those input channels.

The model is traced with ``torch.fx`` (standard leaf modules). For every call of a plain
Linear/Conv2d, its input is followed backwards through ops that map zero to zero channel by channel
(activations, dropout, pooling, one ``Flatten``) to a call of a layer with a structured mask whose
masked outputs are zero (bias pruned or absent, no other forward hook). Anything else on the way
(an add, a concatenation, a normalisation, an unknown function or module) ends the search: no
chain, the layer keeps row skipping. A model that cannot be traced is searched child by child.
"""

from __future__ import annotations

import operator
from collections import Counter

import torch
import torch.nn.functional as F
from torch import fx, nn

from .live import dead_outputs_zero, plain_layer, structured_param

__all__ = ["find_chains"]

# zero in, zero out, each element on its own
_ELEMENTWISE_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.GELU,
    nn.SiLU,
    nn.Tanh,
    nn.Hardtanh,
    nn.Hardswish,
    nn.Mish,
    nn.ELU,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Identity,
)
_ELEMENTWISE_FUNCTIONS = {
    F.relu,
    torch.relu,
    torch.relu_,
    F.relu_,
    F.relu6,
    F.leaky_relu,
    F.gelu,
    F.silu,
    torch.tanh,
    F.tanh,
    F.hardtanh,
    F.hardswish,
    F.mish,
    F.elu,
    F.dropout,
    F.dropout1d,
    F.dropout2d,
}
_ELEMENTWISE_METHODS = {"relu", "relu_", "tanh", "tanh_"}
# zero channel in, zero channel out (each channel on its own); only on (N, C, H, W) activations
_POOL_MODULES = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_POOL_FUNCTIONS = {F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d}
_INPLACE_OPERATORS = {
    operator.iadd,
    operator.isub,
    operator.imul,
    operator.itruediv,
    operator.ipow,
    operator.iand,
    operator.ior,
    operator.ixor,
    operator.setitem,
}


def find_chains(model: nn.Module) -> list[tuple[nn.Module, nn.Module, int]]:
    """``(consumer, producer, group)`` for every chain in ``model``: ``producer``'s masked output
    channel ``c`` reaches ``consumer``'s input columns ``c * group ... c * group + group - 1`` as exact
    zeros (``group > 1`` after a ``Flatten`` of a convolution's output)."""
    tracer = fx.Tracer()
    try:
        graph = tracer.trace(model)
    except Exception:  # data-dependent control flow, unsupported ops: search the children instead
        found = []
        for child in model.children():
            if not tracer.is_leaf_module(child, ""):
                found += find_chains(child)
        return found
    modules = dict(model.named_modules())
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    found = []
    for node in graph.nodes:
        if node.op != "call_module" or calls[node.target] != 1:
            continue
        consumer = modules[node.target]
        if not plain_layer(consumer) or len(node.args) != 1 or node.kwargs or consumer._forward_pre_hooks:
            continue
        link = _producer_of(node, modules, calls)
        if link is not None:
            found.append((consumer, *link))
    return found


def _kind(node: fx.Node, modules: dict[str, nn.Module]) -> str | None:
    """The kind ("elementwise", "pool", "flatten") if ``node`` maps a zero channel of its first argument to a
    zero channel (and takes no other tensor), else None."""
    if any(isinstance(a, fx.Node) for a in (*node.args[1:], *node.kwargs.values())) or not node.args:
        return None
    if node.op == "call_module":
        module = modules[node.target]
        if module._forward_hooks or module._forward_pre_hooks:
            return None
        if isinstance(module, _ELEMENTWISE_MODULES):
            return "elementwise"
        if isinstance(module, _POOL_MODULES) and not getattr(module, "return_indices", False):
            return "pool"
        if isinstance(module, nn.Flatten) and module.start_dim == 1 and module.end_dim == -1:
            return "flatten"
        return None
    if node.op == "call_function":
        if node.target in _ELEMENTWISE_FUNCTIONS:
            return "elementwise"
        if node.target in _POOL_FUNCTIONS and not node.kwargs.get("return_indices", False):
            return "pool"
        if node.target is torch.flatten and _flatten_from_1(node):
            return "flatten"
        return None
    if node.op == "call_method":
        if node.target in _ELEMENTWISE_METHODS:
            return "elementwise"
        if node.target == "flatten" and _flatten_from_1(node):
            return "flatten"
    return None


def _flatten_from_1(node: fx.Node) -> bool:
    args = (*node.args[1:], None, None)
    start = node.kwargs.get("start_dim", args[0] if args[0] is not None else 0)
    end = node.kwargs.get("end_dim", args[1] if args[1] is not None else -1)
    return start == 1 and end == -1


def _producer_of(consumer_node: fx.Node, modules: dict[str, nn.Module], calls: Counter) -> tuple[nn.Module, int] | None:
    """``(producer, group)`` if ``consumer_node``'s input is a masked layer's output through
    zero-preserving ops only, and nothing on the way is changed in place by another user."""
    consumer = modules[consumer_node.target]
    path: list[tuple[fx.Node, str]] = []
    node = consumer_node.args[0]
    while isinstance(node, fx.Node):
        if node.op == "call_module" and structured_param(modules[node.target]) is not None:
            break
        kind = _kind(node, modules)
        if kind is None:
            return None
        path.append((node, kind))
        node = node.args[0]
    else:
        return None
    producer = modules[node.target]
    if calls[node.target] != 1 or not dead_outputs_zero(producer):
        return None
    kinds = [kind for _, kind in reversed(path)]  # from the producer towards the consumer
    channels = producer.out_features if isinstance(producer, nn.Linear) else producer.out_channels
    group = 1
    if isinstance(producer, nn.Linear):  # channels last: only element-wise ops keep them apart
        if any(k != "elementwise" for k in kinds) or not isinstance(consumer, nn.Linear):
            return None
        if consumer.in_features != channels:
            return None
    elif "flatten" in kinds:  # (N, C, H, W) -> (N, C*H*W): channel c is a contiguous block
        cut = kinds.index("flatten")
        if "flatten" in kinds[cut + 1 :] or "pool" in kinds[cut + 1 :] or not isinstance(consumer, nn.Linear):
            return None
        if consumer.in_features % channels:
            return None
        group = consumer.in_features // channels
    elif not isinstance(consumer, nn.Conv2d) or consumer.in_channels != channels:
        return None
    chain = [node] + [n for n, _ in reversed(path)] + [consumer_node]
    for here, after in zip(chain, chain[1:], strict=False):
        if any(user is not after and _mutates(user, modules) for user in here.users):
            return None
    return producer, group


def _mutates(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Might ``node`` change one of its arguments in place (so that a zero channel stops being zero)?"""
    if node.op == "call_module":
        module = type(modules[node.target])
        # torch.nn's own modules change their input only when built with inplace=True: the
        # element-wise ones among them keep zeros zero
        return not module.__module__.startswith("torch.nn.") or (
            getattr(modules[node.target], "inplace", False) and not issubclass(module, _ELEMENTWISE_MODULES)
        )
    if node.op == "call_method":
        return node.target.endswith("_") and node.target not in _ELEMENTWISE_METHODS
    if node.op == "call_function":
        name = getattr(node.target, "__name__", "")
        return (node.target in _INPLACE_OPERATORS or name.endswith("_") or bool(node.kwargs.get("inplace"))) and (
            node.target not in _ELEMENTWISE_FUNCTIONS
        )
    return False

"""The per-op rules of the channel analysis (:mod:`.channels`) for ops that are not layers or norms,
and the expressions of provably zero channels.

An expression is ``("dead", layer)`` (the channels ``layer``'s mask zeroes), ``("any", parts)`` (a
product: dead where any part is) or ``("all", parts)`` (a sum: dead where every part is).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from .norm_mask import mask_of
from .zeros import ARITHMETIC, ARITHMETIC_METHODS, elementwise_call, is_constant, keeps_zero

if TYPE_CHECKING:
    from .channels import ChannelGraph, Value

__all__ = [
    "binary_operands",
    "dead_channels",
    "harmless_read",
    "intersection",
    "leaves",
    "pool_input",
    "union",
    "visit",
]

_POOL_MODULES = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_POOL_FUNCTIONS = {F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d}
_SPATIAL = ({2, 3}, {-2, -1})


def union(a: tuple | None, b: tuple | None) -> tuple | None:
    if a is None or b is None:
        return a if b is None else b
    return ("any", (a, b))


def intersection(a: tuple | None, b: tuple | None) -> tuple | None:
    return None if a is None or b is None else ("all", (a, b))


def leaves(expr: tuple) -> tuple[nn.Module, ...]:
    """The layers whose masks an expression reads (each once, in order)."""
    if expr[0] == "dead":
        return (expr[1],)
    return tuple(dict.fromkeys(m for part in expr[1] for m in leaves(part)))


def dead_channels(expr: tuple) -> Tensor:
    """Bool per channel, from the current masks: True where the expression proves a zero."""
    if expr[0] == "dead":
        mask = mask_of(expr[1])
        if mask is None:
            raise RuntimeError(f"structprune_triton: {type(expr[1]).__name__} no longer has a structured mask")
        return mask.logical_not() if mask.dtype == torch.bool else mask == 0
    parts = [dead_channels(p) for p in expr[1]]
    out = parts[0]
    for part in parts[1:]:
        out = out.logical_or(part) if expr[0] == "any" else out.logical_and(part)
    return out


def harmless_read(user: fx.Node, node: fx.Node) -> bool:
    """A read of ``node`` that depends neither on its values nor on its channel count."""
    if user.op != "call_method":
        return False
    if user.target == "dim":
        return True
    return user.target == "size" and user.args[1:] == (0,) and not user.kwargs


def visit(g: ChannelGraph, node: fx.Node) -> Value | None:
    """The value of an op node that is not a layer or a norm (None: not a channel op)."""
    if node.op not in ("call_module", "call_function", "call_method"):
        return None
    x = elementwise_call(node, g.modules)
    if x is not None:
        value = g.values.get(x)
        return None if value is None else _elementwise(g, node, x, value)
    binary = binary_operands(node)
    if binary is not None:
        return _combine(g, node, *binary)
    x, layout = _channel_op(g, node)
    value = g.values.get(x) if x is not None else None
    if value is None or value.layout != "conv":
        return None
    return _derive(g, node, x, value, layout=layout)


def _derive(g: ChannelGraph, node: fx.Node, x: fx.Node, value: Value, **changes: Any) -> Value:
    from .channels import Value

    space = value.space.find()
    space.ops.append(node)
    g.edges.add((x, node))
    fields = {
        "layout": value.layout,
        "channels": value.channels,
        "dead": value.dead,
        "space": space,
        "support": value.support | {node},
        "lost": value.lost,
        "only_2d": value.only_2d,
    }
    fields.update(changes)
    return Value(**fields)


def _elementwise(g: ChannelGraph, node: fx.Node, x: fx.Node, value: Value) -> Value:
    from .channels import describe

    name = describe(node, g.modules)
    if node.op == "call_module" and any(p.numel() > 1 for p in g.modules[node.target].parameters()):
        value.space.find().blockers.append((node, f"{name} has per-channel parameters"))
    if value.dead is None or keeps_zero(node, g.modules, value.channels):
        return _derive(g, node, x, value)
    return _derive(g, node, x, value, dead=None, lost=f"{name} does not map 0 to 0")


def binary_operands(node: fx.Node) -> tuple[str, fx.Node, fx.Node] | None:
    """``(name, a, b)`` for a sum, difference or product of two tensors (``a + b``, ``torch.mul``,
    ``a.add(b)``), else None."""
    if node.op == "call_function":
        name = ARITHMETIC.get(node.target)
    elif node.op == "call_method":
        name = ARITHMETIC_METHODS.get(node.target)
    else:
        return None
    if name not in ("add", "sub", "mul") or len(node.args) != 2 or node.kwargs:
        return None
    a, b = node.args
    return (name, a, b) if isinstance(a, fx.Node) and isinstance(b, fx.Node) else None


def _combine(g: ChannelGraph, node: fx.Node, name: str, a: fx.Node, b: fx.Node) -> Value | None:
    from .channels import Value, describe

    va, vb = g.values.get(a), g.values.get(b)
    if va is not None and vb is not None and (va.layout, va.channels) == (vb.layout, vb.channels) and a is not b:
        space = va.space.merge(vb.space)
        space.ops.append(node)
        g.edges.update({(a, node), (b, node)})
        if name == "mul":
            dead, lost = union(va.dead, vb.dead), va.lost
        else:
            dead = intersection(va.dead, vb.dead)
            lost = "" if dead is not None else f"{describe(node, g.modules)} adds channels that are not zero in both"
        support = va.support | vb.support | {node}
        return Value(va.layout, va.channels, dead, space, support, lost, va.only_2d or vb.only_2d)
    if name == "mul" and (va is None) != (vb is None):
        x, value = (a, va) if va is not None else (b, vb)
        msg = f"{describe(node, g.modules)} multiplies it by a tensor prune() does not resize"
        value.space.find().blockers.append((node, msg))
        return _derive(g, node, x, value)
    return None


def pool_input(node: fx.Node, modules: dict[str, nn.Module]) -> fx.Node | None:
    """The input of ``node`` if it is a 2-D max/avg (adaptive) pooling, else None."""
    if not node.args or not isinstance(node.args[0], fx.Node):
        return None
    if node.op == "call_module":
        module = modules[node.target]
        if module._forward_hooks or module._forward_pre_hooks or len(node.args) != 1 or node.kwargs:
            return None
        ok = isinstance(module, _POOL_MODULES) and not getattr(module, "return_indices", False)
    else:
        rest = (*node.args[1:], *node.kwargs.values())
        ok = node.op == "call_function" and node.target in _POOL_FUNCTIONS
        ok = ok and not node.kwargs.get("return_indices", False) and all(is_constant(a) for a in rest)
    return node.args[0] if ok else None


def _channel_op(g: ChannelGraph, node: fx.Node) -> tuple[fx.Node | None, str]:
    """``(input, layout after)`` for pooling, a flatten of (N, C, H, W) from dim 1, or a mean over H
    and W, whose input must be a convolution's layout; ``(None, "")`` otherwise."""
    args, kwargs = node.args, node.kwargs
    if not args or not isinstance(args[0], fx.Node):
        return None, ""
    x, rest = args[0], (*args[1:], *kwargs.values())
    if node.op == "call_module":
        module = g.modules[node.target]
        if module._forward_hooks or module._forward_pre_hooks or len(args) != 1 or kwargs:
            return None, ""
        if pool_input(node, g.modules) is x:
            return x, "conv"
        if isinstance(module, nn.Flatten) and (module.start_dim, module.end_dim) == (1, -1):
            return x, "flat"
        return None, ""
    if any(isinstance(a, fx.Node) for a in rest) and not _view_flat(node):
        return None, ""
    fn = node.target
    if pool_input(node, g.modules) is x:
        return x, "conv"
    if fn in (torch.flatten, "flatten") and _flatten_from_1(node):
        return x, "flat"
    if fn in ("view", "reshape") and _view_flat(node):
        return x, "flat"
    if fn in (torch.mean, "mean"):
        dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
        keepdim = kwargs.get("keepdim", args[2] if len(args) > 2 else False)
        if isinstance(dim, (tuple, list)) and set(dim) in _SPATIAL and "dtype" not in kwargs:
            return x, "conv" if keepdim else "last"
    return None, ""


def _flatten_from_1(node: fx.Node) -> bool:
    args = (*node.args[1:], None, None)
    start = node.kwargs.get("start_dim", args[0] if args[0] is not None else 0)
    end = node.kwargs.get("end_dim", args[1] if args[1] is not None else -1)
    return start == 1 and end == -1


def _view_flat(node: fx.Node) -> bool:
    """``x.view(x.size(0), -1)`` / ``x.reshape(x.size(0), -1)``."""
    if node.op != "call_method" or node.target not in ("view", "reshape") or len(node.args) != 3 or node.kwargs:
        return False
    x, size, last = node.args
    return (
        isinstance(size, fx.Node)
        and size.op == "call_method"
        and size.target == "size"
        and size.args == (x, 0)
        and last == -1
    )

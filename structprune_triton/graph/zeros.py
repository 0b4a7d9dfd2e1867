"""Which ops of a ``torch.fx`` graph map an exact zero to an exact zero, and which may change a tensor
in place.

An op is *element-wise* if each output element depends only on the same input element (activations,
dropout, arithmetic with a constant). Whether it keeps zero zero is not read from a list: it is
evaluated at +0.0 and -0.0 with the op's own parameters or the node's constant arguments
(``nn.Hardtanh(0.1, 1.0)`` maps 0 to 0.1, ``x * 2`` keeps it, ``x + 1`` does not). Dropout is not
evaluated (it would draw random numbers); it multiplies, so zero stays zero.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

__all__ = [
    "DROPOUT_FUNCTIONS",
    "ELEMENTWISE_MODULES",
    "elementwise_call",
    "is_constant",
    "keeps_zero",
    "may_mutate",
    "mutates_keeping_zero",
]

# Element-wise modules (whether they keep zero is evaluated). Dropout multiplies by a random mask.
ELEMENTWISE_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.RReLU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Tanh,
    nn.Hardtanh,
    nn.Hardswish,
    nn.Hardshrink,
    nn.Softshrink,
    nn.Tanhshrink,
    nn.Softsign,
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.Threshold,
    nn.Sigmoid,
    nn.Hardsigmoid,
    nn.LogSigmoid,
    nn.Softplus,
    nn.Identity,
)
_DROPOUT_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)
_ELEMENTWISE_FUNCTIONS: set[Callable] = {
    F.relu,
    F.relu_,
    torch.relu,
    torch.relu_,
    F.relu6,
    F.leaky_relu,
    F.leaky_relu_,
    F.prelu,
    F.rrelu,
    F.rrelu_,
    F.gelu,
    F.silu,
    F.mish,
    torch.tanh,
    F.tanh,
    torch.sigmoid,
    F.sigmoid,
    F.hardtanh,
    F.hardtanh_,
    F.hardswish,
    F.hardsigmoid,
    F.hardshrink,
    F.softshrink,
    F.tanhshrink,
    F.softsign,
    F.elu,
    F.elu_,
    F.celu,
    F.selu,
    F.threshold,
    F.logsigmoid,
    F.softplus,
    torch.abs,
    torch.neg,
    torch.square,
    torch.clamp,
    torch.clip,
    operator.neg,
    operator.pos,
    operator.abs,
}
DROPOUT_FUNCTIONS: set[Callable] = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d}
_ELEMENTWISE_METHODS = {
    "relu",
    "relu_",
    "tanh",
    "tanh_",
    "sigmoid",
    "sigmoid_",
    "abs",
    "abs_",
    "neg",
    "neg_",
    "square",
    "square_",
    "clamp",
    "clamp_",
    "clip",
    "clip_",
}
# Binary arithmetic: element-wise when the other operand is a constant.
ARITHMETIC = {
    operator.add: "add",
    operator.sub: "sub",
    operator.mul: "mul",
    operator.truediv: "div",
    operator.pow: "pow",
    torch.add: "add",
    torch.sub: "sub",
    torch.mul: "mul",
    torch.div: "div",
    torch.pow: "pow",
}
ARITHMETIC_METHODS = {"add": "add", "sub": "sub", "mul": "mul", "div": "div", "pow": "pow"}
ARITHMETIC_METHODS.update({f"{k}_": v for k, v in ARITHMETIC_METHODS.items()})
# Python's binary operators: torch.fx records ``h += c`` as ``operator.add(h, c)`` (a Proxy has no
# ``__iadd__``), so any of them may have changed its first operand in place.
_BINARY_OPERATORS = {
    operator.add,
    operator.sub,
    operator.mul,
    operator.truediv,
    operator.floordiv,
    operator.mod,
    operator.pow,
    operator.matmul,
    operator.and_,
    operator.or_,
    operator.xor,
    operator.lshift,
    operator.rshift,
}


def is_constant(a: Any) -> bool:
    """A plain Python constant (number, bool, string, None, or a tuple/list of them)."""
    if isinstance(a, (tuple, list)):
        return all(is_constant(x) for x in a)
    return a is None or isinstance(a, (bool, int, float, str, torch.dtype))


def _zeros_like_channels(channels: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Shape (2, channels): +0.0 in the first row, -0.0 in the second."""
    zeros = torch.zeros(2, max(channels, 1), dtype=dtype, device=device)
    zeros[1] = -0.0
    return zeros


def _is_zero(fn: Callable[[torch.Tensor], Any], channels: int, dtype: torch.dtype, device: torch.device) -> bool:
    """Does ``fn`` map +0.0 and -0.0 to exact zeros? (Evaluated without touching the caller's RNG.)"""
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            out = fn(_zeros_like_channels(channels, dtype, device))
    except Exception:  # noqa: BLE001 - an op that cannot run on the probe proves nothing
        return False
    return isinstance(out, torch.Tensor) and out.numel() > 0 and bool(out.eq(0).all())


def _probe_dtype(module: nn.Module | None) -> tuple[torch.dtype, torch.device]:
    for t in (*module.parameters(), *module.buffers()) if module is not None else ():
        if t.is_floating_point():
            return t.dtype, t.device
    return torch.float32, torch.device("cpu")


def keeps_zero(node: fx.Node, modules: dict[str, nn.Module], channels: int) -> bool:
    """For an element-wise ``node`` (see :func:`elementwise_call`): does it map zero to zero?"""
    if node.op == "call_module":
        module = modules[node.target]
        if isinstance(module, _DROPOUT_MODULES):
            return True
        dtype, device = _probe_dtype(module)
        return _is_zero(module, channels, dtype, device)
    if node.target in DROPOUT_FUNCTIONS:
        return True
    fn = node.target if node.op == "call_function" else getattr(torch.Tensor, node.target)
    pos = next(i for i, a in enumerate(node.args) if isinstance(a, fx.Node))
    args = list(node.args)

    def call(zeros: torch.Tensor) -> Any:
        args[pos] = zeros
        return fn(*args, **node.kwargs)

    return _is_zero(call, channels, torch.float32, torch.device("cpu"))


def elementwise_call(node: fx.Node, modules: dict[str, nn.Module]) -> fx.Node | None:
    """The tensor argument of ``node`` if ``node`` is element-wise in it (its other arguments are
    constants), else None. Modules with hooks are not element-wise (a hook can do anything)."""
    if node.op == "call_module":
        module = modules[node.target]
        if module._forward_hooks or module._forward_pre_hooks or not node.args:
            return None
        if not isinstance(module, (*ELEMENTWISE_MODULES, *_DROPOUT_MODULES)) or len(node.args) != 1 or node.kwargs:
            return None
        return node.args[0] if isinstance(node.args[0], fx.Node) else None
    tensors = [a for a in (*node.args, *node.kwargs.values()) if isinstance(a, fx.Node)]
    if len(tensors) != 1 or not all(is_constant(a) for a in (*node.args, *node.kwargs.values()) if a is not tensors[0]):
        return None
    if node.op == "call_function":
        ok = node.target in _ELEMENTWISE_FUNCTIONS or node.target in DROPOUT_FUNCTIONS or node.target in ARITHMETIC
    elif node.op == "call_method":
        ok = node.target in _ELEMENTWISE_METHODS or node.target in ARITHMETIC_METHODS
        ok = ok and node.args[0] is tensors[0]
    else:
        ok = False
    return tensors[0] if ok else None


def _inplace(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        module = modules[node.target]
        return not type(module).__module__.startswith("torch.nn.") or bool(getattr(module, "inplace", False))
    if node.op == "call_method":
        return node.target.endswith("_")
    if node.op == "call_function":
        name = getattr(node.target, "__name__", "")
        return name.endswith("_") or bool(node.kwargs.get("inplace")) or node.target is operator.setitem
    return False


def may_mutate(user: fx.Node, node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Might ``user`` change ``node``'s tensor in place? In-place ops, modules built with
    ``inplace=True`` or from outside ``torch.nn`` (unknown), and Python's binary operators with
    ``node`` as first operand (``h += c`` is recorded as ``h + c``)."""
    if user.op == "call_function" and user.target in _BINARY_OPERATORS:
        return bool(user.args) and user.args[0] is node
    return _inplace(user, modules)


def mutates_keeping_zero(user: fx.Node, node: fx.Node, modules: dict[str, nn.Module], channels: int) -> bool:
    """True if a change of ``node`` in place by ``user`` keeps its zeros zero: ``user`` is element-wise
    in ``node`` and maps zero to zero (``relu_``, ``h *= 2``), or multiplies it by another tensor."""
    if user.op == "call_function" and user.target in (operator.mul, torch.mul):
        return True
    if user.op == "call_method" and user.target in ("mul", "mul_"):
        return True
    return elementwise_call(user, modules) is node and keeps_zero(user, modules, channels)

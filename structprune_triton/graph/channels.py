"""One analysis of a model's ``torch.fx`` graph: which channels of a layer's input are provably exact
zeros, given the current row masks, and which layers, norms and ops share those channels.

Every ``nn.Linear``/``nn.Conv2d`` call starts a *channel space* (its output channels). The space
flows through ops that keep channels apart, each with a rule for which channels are provably zero:

* a masked layer whose masked outputs are exact zeros (bias pruned or absent, no forward hook but
  the bias hooks): the channels its mask zeroes;
* element-wise ops (activations, dropout, arithmetic with a constant): the same channels if the op
  maps 0 to 0 (evaluated, see :mod:`.zeros`), else none;
* pooling and ``mean`` over H and W (convolutions), one ``Flatten``: the same channels (after a
  flatten, channel ``c`` is the block of ``group`` columns starting at ``c * group``);
* a BatchNorm masked by ``prune_norm`` (:class:`.norm_mask.NormMask`): the channels its layer's
  mask zeroes, whatever its input; an unmasked BatchNorm: none (a zero channel leaves it as beta);
* a product of two tensors: dead if dead in either; a sum or difference: dead only if dead in both.

A ``nn.Linear``/``nn.Conv2d`` reading a space is a *consumer*: :class:`InputChannels` says, from the
masks at the time of the call, which of its input columns are zero. Anything else reading a space
(an add with a tensor from elsewhere, a concatenation, the model's output...) is recorded as a
*blocker* of the space: the skip path ignores blockers, ``prune()`` cannot shrink such a space.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from torch import Tensor, fx, nn
from torch.ao.pruning._experimental.pruner.parametrization import BiasHook as _UpstreamBiasHook
from torch.nn.utils.parametrize import type_before_parametrizations

from ..parametrization import BiasHook
from . import rules
from .norm_mask import mask_of, norm_source
from .zeros import may_mutate, mutates_keeping_zero

__all__ = ["ChannelGraph", "InputChannels", "Space", "Value", "describe", "layer_kind"]

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


def layer_kind(module: nn.Module) -> type[nn.Module] | None:
    """``nn.Linear`` or ``nn.Conv2d`` if ``module`` is one (parametrized or not) running that class's
    forward, else None."""
    base = type_before_parametrizations(module)
    for cls in (nn.Linear, nn.Conv2d):
        if issubclass(base, cls) and base.forward is cls.forward:
            return cls
    return None


def describe(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    """A node as a user reads it in a message."""
    if node.op == "call_module":
        return f"{type_before_parametrizations(modules[node.target]).__name__} '{node.target}'"
    if node.op == "call_function":
        return f"{getattr(node.target, '__name__', node.target)} (node '{node.name}')"
    if node.op == "call_method":
        return f".{node.target}() (node '{node.name}')"
    return "the model's output" if node.op == "output" else f"node '{node.name}'"


def _zero_outputs(layer: nn.Module) -> str:
    """'' if ``layer``'s masked output channels are exact zeros, else why not."""
    if getattr(layer, "bias", None) is not None:
        return "its bias is not behind the bias hook"
    has_bias = getattr(layer, "_bias", None) is not None
    for hook in layer._forward_hooks.values():
        if not isinstance(hook, _UpstreamBiasHook) or type(hook).__call__ not in _BIAS_HOOK_CALLS:
            return "it has a forward hook"
        if has_bias and not hook.prune_bias:
            return "its bias is not pruned (prune_bias=False): masked channels output the bias"
    return ""


# hooks that add the bias behind the mask (zeroing it where the mask is zero with prune_bias)
_BIAS_HOOK_CALLS = {_UpstreamBiasHook.__call__, BiasHook.__call__}


class Space:
    """Channels shared by layers, norms and ops (a union-find set; use :meth:`find`)."""

    def __init__(self) -> None:
        self.parent: Space | None = None
        self.producers: list[fx.Node] = []
        self.norms: list[fx.Node] = []
        self.consumers: list[tuple[fx.Node, int]] = []  # (consumer call, columns per channel)
        self.ops: list[fx.Node] = []  # element-wise, pooling, flatten, products and sums in between
        self.blockers: list[tuple[fx.Node, str]] = []

    def find(self) -> Space:
        space = self
        while space.parent is not None:
            space = space.parent
        return space

    def merge(self, other: Space) -> Space:
        a, b = self.find(), other.find()
        if a is not b:
            b.parent = a
            for name in ("producers", "norms", "consumers", "ops", "blockers"):
                getattr(a, name).extend(getattr(b, name))
        return a


@dataclass
class Value:
    """What the analysis knows about one node's tensor."""

    layout: str  # "last": channels on dim -1 (Linear); "conv": dim -3; "flat": blocks of dim -1
    channels: int
    dead: tuple | None  # expression of the provably zero channels (see rules.dead_channels), or None
    space: Space
    support: frozenset[fx.Node]  # nodes this tensor's zeros depend on (none may change in place)
    lost: str = ""  # why ``dead`` is None
    only_2d: bool = False  # a BatchNorm1d on a Linear's output: channels at dim 1, so 2-D inputs only


@dataclass
class InputChannels:
    """Which input columns of ``consumer`` are provably exact zeros, from the current masks."""

    consumer: nn.Module
    dead: tuple = field(repr=False)
    channels: int
    group: int = 1  # input columns per channel (> 1 after a Flatten)
    only_2d: bool = False  # valid only for 2-D inputs (a BatchNorm1d on the way)

    @property
    def sources(self) -> tuple[nn.Module, ...]:
        """The masked layers whose masks decide it."""
        return rules.leaves(self.dead)

    def dead_channels(self) -> Tensor:
        """Bool per channel: True where the channel is provably zero (current masks)."""
        return rules.dead_channels(self.dead)

    def live(self) -> Tensor:
        """Bool per input column of ``consumer`` (flatten groups expanded): False exactly where the
        column is provably an exact zero."""
        live = self.dead_channels().logical_not()
        return live.repeat_interleave(self.group) if self.group > 1 else live


class ChannelGraph:
    """The analysis of one traced graph (see the module docstring)."""

    def __init__(self, root: nn.Module, graph: fx.Graph) -> None:
        self.modules = dict(root.named_modules())
        self.calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
        self.values: dict[fx.Node, Value] = {}
        self.inputs: dict[fx.Node, tuple[Value, int]] = {}  # consumer call -> (input, group)
        self.edges: set[tuple[fx.Node, fx.Node]] = set()  # (input, op) where the op's value derives from it
        for node in graph.nodes:
            value = self._visit(node)
            if value is not None:
                self.values[node] = value
        self._find_blockers()

    def spaces(self) -> list[Space]:
        return list({id(s): s for s in (v.space.find() for v in self.values.values())}.values())

    def input_channels(self) -> dict[fx.Node, InputChannels]:
        """Every consumer call whose input has provably zero channels (the expression is not None
        and no node it depends on may be changed in place by an op outside it)."""
        found = {}
        for node, (value, group) in self.inputs.items():
            if value.dead is None or not self.unmutated(node, value):
                continue
            module = self.modules[node.target]
            found[node] = InputChannels(module, value.dead, value.channels, group, value.only_2d)
        return found

    def unmutated(self, consumer: fx.Node, value: Value) -> bool:
        """No op outside ``value``'s support may change a tensor it depends on in place (keeping zeros
        zero aside)."""
        for node in value.support:
            for user in node.users:
                if user is consumer or user in value.support:
                    continue
                if may_mutate(user, node, self.modules) and not mutates_keeping_zero(
                    user, node, self.modules, value.channels
                ):
                    return False
        return True

    def _visit(self, node: fx.Node) -> Value | None:
        if node.op == "call_module":
            module = self.modules[node.target]
            kind = layer_kind(module)
            if kind is not None:
                self._consume(node, module, kind)
                return self._produce(node, module, kind)
            if issubclass(type_before_parametrizations(module), _NORMS):
                return self._norm(node, module)
        return rules.visit(self, node)

    def _consume(self, node: fx.Node, module: nn.Module, kind: type) -> None:
        if len(node.args) != 1 or node.kwargs or self.calls[node.target] != 1 or module._forward_pre_hooks:
            return
        value = self.values.get(node.args[0])
        if value is None:
            return
        group = 1
        if kind is nn.Conv2d:
            if value.layout != "conv" or module.groups != 1 or module.in_channels != value.channels:
                return
        elif value.layout == "flat":
            if module.in_features % value.channels:
                return
            group = module.in_features // value.channels
        elif value.layout != "last" or module.in_features != value.channels:
            return
        self.inputs[node] = (value, group)
        value.space.find().consumers.append((node, group))

    def _produce(self, node: fx.Node, module: nn.Module, kind: type) -> Value:
        space = Space()
        space.producers.append(node)
        channels = module.out_features if kind is nn.Linear else module.out_channels
        layout = "last" if kind is nn.Linear else "conv"
        name = describe(node, self.modules)
        if self.calls[node.target] != 1:
            space.blockers.append((node, f"{name} is called {self.calls[node.target]} times"))
        if mask_of(module) is None:
            return Value(layout, channels, None, space, frozenset({node}), f"{name} has no mask")
        why = _zero_outputs(module)
        if why:
            return Value(layout, channels, None, space, frozenset({node}), f"{name}: {why}")
        return Value(layout, channels, ("dead", module), space, frozenset({node}))

    def _norm(self, node: fx.Node, norm: nn.Module) -> Value | None:
        x = node.args[0] if len(node.args) == 1 and not node.kwargs else None
        value = self.values.get(x)
        layer = norm_source(norm)
        name = describe(node, self.modules)
        is_1d = isinstance(norm, nn.BatchNorm1d)
        if value is not None and (value.layout != ("last" if is_1d else "conv") or value.channels != norm.num_features):
            value = None
        if value is None:
            if layer is None or layer_kind(layer) is None:
                return None
            space = Space()
            space.blockers.append((node, f"{name} is masked by a layer whose channels do not reach it"))
            layout = "last" if layer_kind(layer) is nn.Linear else "conv"
            value = Value(layout, norm.num_features, None, space, frozenset())
        else:
            self.edges.add((x, node))
        space = value.space.find()
        space.norms.append(node)
        only_2d = value.only_2d or is_1d
        if self.calls[node.target] != 1:
            space.blockers.append((node, f"{name} is called {self.calls[node.target]} times"))
        if norm._forward_hooks or norm._forward_pre_hooks:
            space.blockers.append((node, f"{name} has hooks"))
            return Value(value.layout, value.channels, None, space, frozenset({node}), f"{name} has hooks", only_2d)
        if layer is None or mask_of(layer) is None:
            lost = f"{name} is not masked (the pruner's prune_norm is off): a zero channel leaves it as its bias"
            return Value(value.layout, value.channels, None, space, frozenset({node}), lost, only_2d)
        return Value(value.layout, value.channels, ("dead", layer), space, frozenset({node}), "", only_2d)

    def _find_blockers(self) -> None:
        for node, value in self.values.items():
            space = value.space.find()
            for user in node.users:
                if user in self.inputs and self.inputs[user][0] is value:
                    continue
                if (node, user) in self.edges:
                    continue
                if rules.harmless_read(user, node):
                    continue
                space.blockers.append((user, f"{describe(user, self.modules)} also reads them"))

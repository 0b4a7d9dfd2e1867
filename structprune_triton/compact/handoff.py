"""Compact activations between two compacted layers: the producer hands its live channels to the
consumer without ever building the dense-shaped tensor.

A segment is ``producer -> m1 -> ... -> mk -> consumer`` in the model's ``torch.fx`` graph where
the producer is a compacted masked layer, the consumer a layer compacted to exactly the producer's
live channels as input columns, and every ``mi`` a module of a few exact ``torch.nn`` types that
treat channels independently (activations, pooling of a convolution's output, one final Flatten
of it), each node with a single user. Dropout is excluded (its random numbers depend on the shape).

At run time the hand-off is checked by identity, so the model must really run as traced: the
producer emits its compact output (with the pruned bias added, as the bias hook would) only inside
a call of the root model (not for a submodule called on its own) and when no hook other than the
bias hook watches it; each ``mi`` (an instance ``forward`` that otherwise calls the class's) passes
the compact tensor on only if it is exactly the one in flight; the consumer takes it only if it is
exactly the last one. Anything else (a different path at run time, a hook added since) raises
instead of computing on the wrong shape, and a hand-off that never reached its consumer is caught
when the root forward returns. Compiled graphs keep the dense-shaped activations.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, fx, nn
from torch.nn.modules import module as _module_hooks

from ..graph.zeros import ELEMENTWISE_MODULES
from ..parametrization import BiasHook

if TYPE_CHECKING:
    from .forward import CompactForward

__all__ = ["Segment", "find_segments"]

# element-wise modules that treat every channel alike (no per-channel parameter, no random numbers),
# so they compute the same on the live channels alone; which dead channels stay zero is proved by
# the chains analysis that gave the consumer its input columns
_ELEMENTWISE = tuple(m for m in ELEMENTWISE_MODULES if m not in (nn.PReLU, nn.RReLU))
_POOL = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)

LOST = (
    "structprune_triton.compact_training: the compact activations of a layer did not reach the layer "
    "they were handed to (the model ran differently from its traced graph, or a hook was added); "
    "use compact_training(..., compact_activations=False)"
)


class Segment:
    """One producer-to-consumer hand-off; ``active`` when both are compacted to the same channels."""

    def __init__(self, producer: CompactForward, modules: list[nn.Module], consumer: CompactForward) -> None:
        self.producer, self.modules, self.consumer = producer, modules, consumer
        self.active = False
        self.in_flight: Tensor | None = None
        self.stage = 0  # how many of ``modules`` the tensor in flight has passed
        self.passes = [_Pass(self, i, m) for i, m in enumerate(modules)]
        self.hooks: dict[int, Any] = {}  # producer's bias hooks replaced by _BiasPass, by key

    def install(self) -> None:
        for p in self.passes:
            p.module.forward = p
        hooks = self.producer.module._forward_hooks
        for key, hook in list(hooks.items()):
            self.hooks[key] = hook
            hooks[key] = _BiasPass(self, hook)

    def uninstall(self) -> None:
        for p in self.passes:
            if p.module.__dict__.get("forward") is p:
                del p.module.__dict__["forward"]
        hooks = self.producer.module._forward_hooks
        for key, hook in self.hooks.items():
            if isinstance(hooks.get(key), _BiasPass):
                hooks[key] = hook
        self.hooks = {}

    def refresh(self) -> None:
        """Active iff the consumer's input columns are the producer's live rows (expanded)."""
        p, q = self.producer.piece, self.consumer.piece
        self.active = False
        if p is None or q is None or p.rows is None or q.cols is None:
            return
        group = q.full.shape[1] // p.full.shape[0]
        rows = p.rows if group == 1 else (p.rows[:, None] * group + torch.arange(group, device=p.rows.device)).flatten()
        self.active = rows.shape == q.cols.shape and bool(torch.equal(rows, q.cols))

    def may_emit(self) -> bool:
        """Host checks, each call: nothing but our bias pass watches the producer or the modules."""
        if not self.active or _module_hooks._global_forward_hooks or _module_hooks._global_forward_pre_hooks:
            return False
        if any(not isinstance(h, _BiasPass) for h in self.producer.module._forward_hooks.values()):
            return False
        return not any(m._forward_hooks or m._forward_pre_hooks for m in self.modules)

    def emit(self, y: Tensor) -> Tensor:
        if self.in_flight is not None:
            raise RuntimeError(LOST)
        self.in_flight, self.stage = y, 0
        return y

    def take(self, x: Tensor) -> bool:
        """Whether the consumer's input ``x`` is the compact tensor in flight (raises if another is)."""
        if self.in_flight is None:
            return False
        if x is not self.in_flight or self.stage != len(self.modules) or not self.active:
            raise RuntimeError(LOST)
        self.in_flight = None
        return True


class _Pass:
    """Instance ``forward`` of a module inside a segment: the class's forward, which for the tensor
    in flight moves the hand-off on."""

    def __init__(self, segment: Segment, index: int, module: nn.Module) -> None:
        self.segment, self.index, self.module = segment, index, module

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        out = type(self.module).forward(self.module, *args, **kwargs)
        seg = self.segment
        if seg.in_flight is not None and seg.stage == self.index and len(args) == 1 and args[0] is seg.in_flight:
            seg.in_flight, seg.stage = out, self.index + 1
        return out


class _BiasPass:
    """Stands in for a producer's bias hook while compacted: the compact output already carries the
    pruned bias; a dense-shaped output goes to the hook itself."""

    def __init__(self, segment: Segment, hook: Any) -> None:
        self.segment, self.hook = segment, hook

    def __call__(self, module: nn.Module, args: Any, output: Any) -> Any:
        if output is self.segment.in_flight and self.segment.stage == 0:
            return None
        return self.hook(module, args, output)


def _kind(module: nn.Module) -> str | None:
    if type(module) in _ELEMENTWISE:
        return "elementwise"
    if type(module) in _POOL and not getattr(module, "return_indices", False):
        return "pool"
    if type(module) is nn.Flatten and module.start_dim == 1 and module.end_dim == -1:
        return "flatten"
    return None


def find_segments(model: nn.Module, layers: dict[nn.Module, CompactForward]) -> list[Segment]:
    """The segments of ``model`` between the compacted ``layers`` (see the module docstring)."""
    try:
        graph = fx.Tracer().trace(model)
    except Exception:  # untraceable: no hand-offs, the dense-shaped activations stay
        return []
    modules = dict(model.named_modules())
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    found, used = [], set()
    for node in graph.nodes:
        consumer = layers.get(modules.get(node.target)) if node.op == "call_module" else None
        if consumer is None or consumer.live_inputs is None or calls[node.target] != 1:
            continue
        path, cur = [], node.args[0] if len(node.args) == 1 and not node.kwargs else None
        while isinstance(cur, fx.Node) and cur.op == "call_module" and len(cur.users) == 1:
            if len(cur.args) != 1 or cur.kwargs:
                break
            module = modules[cur.target]
            producer = layers.get(module)
            if producer is not None:
                segment = _segment(producer, [modules[n.target] for n in reversed(path)], consumer, calls[cur.target])
                if segment is not None and not used & {id(m) for m in segment.modules}:
                    used |= {id(m) for m in segment.modules}
                    found.append(segment)
                break
            if _kind(module) is None or module.__dict__.get("forward") is not None:
                break
            path.append(cur)
            cur = cur.args[0]
    return found


def _segment(producer: CompactForward, modules: list[nn.Module], consumer: CompactForward, calls: int):
    if calls != 1 or not producer.structured:
        return None
    hooks = list(producer.module._forward_hooks.values())
    has_bias = getattr(producer.module, "_bias", None) is not None
    if len(hooks) > 1 or any(not isinstance(h, BiasHook) or (has_bias and not h.prune_bias) for h in hooks):
        return None
    kinds = [_kind(m) for m in modules]
    if producer.is_linear:
        ok = consumer.is_linear and all(k == "elementwise" for k in kinds)
    elif "flatten" in kinds:
        after = kinds[kinds.index("flatten") + 1 :]
        ok = consumer.is_linear and kinds.count("flatten") == 1 and all(k == "elementwise" for k in after)
    else:
        ok = not consumer.is_linear
    return Segment(producer, modules, consumer) if ok else None

"""Compact activations between two compacted layers: the producer hands its live channels to the
consumer without ever building the dense-shaped tensor.

A segment is ``producer -> s1 -> ... -> sk -> consumer`` in the model's ``torch.fx`` graph where
the producer is a compacted masked layer, the consumer a layer compacted to exactly the producer's
live channels as input columns, and every step ``si`` treats channels independently, each node
with a single user: a module of a few exact ``torch.nn`` types (activations, pooling of a
convolution's output, a BatchNorm2d between two convolutions, one final Flatten of a convolution's
output), or an element-wise function or method with constant other arguments (``F.relu(x)``,
``x.relu()``, ``x * 2``). Dropout is excluded (its random numbers depend on the shape). A
BatchNorm computes on the live channels and updates the running statistics of the others as it
would have for their input, which is exactly zero (the running mean and variance decay).

At run time the hand-off is checked by identity, so the model must really run as traced: the
producer emits its compact output (with the pruned bias added, as the bias hook would) only inside
a call of the root model (not for a submodule called on its own) and when no hook other than the
bias hook watches it; each module step (an instance ``forward`` that otherwise calls the class's)
passes the compact tensor on only if it is exactly the one in flight; each function step is
followed by a ``TorchFunctionMode`` that is active only while a compact tensor is in flight; the
consumer takes it only if it is exactly the last one, after exactly the traced steps. Anything
else (a different path at run time, a hook added since) raises instead of computing on the wrong
shape, and a hand-off that never reached its consumer is caught when the root forward returns.
Compiled graphs keep the dense-shaped activations.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.nn.modules import module as _module_hooks
from torch.nn.utils.parametrize import type_before_parametrizations
from torch.overrides import TorchFunctionMode

from ..graph.zeros import DROPOUT_FUNCTIONS, ELEMENTWISE_MODULES, elementwise_call
from ..parametrization import BiasHook
from .blocks import complement

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
    """One producer-to-consumer hand-off; ``active`` when both are compacted to the same channels.
    ``steps`` are the traced steps between them: a module, or None for a function step."""

    def __init__(
        self, producer: CompactForward, steps: list[nn.Module | None], consumer: CompactForward, follower: _Follower
    ) -> None:
        self.producer, self.steps, self.consumer = producer, steps, consumer
        self.modules = [m for m in steps if m is not None]
        self.active = False
        self.in_flight: Tensor | None = None
        self.stage = 0  # how many of ``steps`` the tensor in flight has passed
        self.quiet = False  # inside a module step: its own function calls are not steps
        self.passes = [_Pass(self, i, m) for i, m in enumerate(steps) if m is not None]
        self.follower = follower if any(m is None for m in steps) else None  # function steps
        self.hooks: dict[int, Any] = {}  # producer's bias hooks replaced by _BiasPass, by key

    def install(self) -> None:
        for p in self.passes:
            p.module.forward = p
        hooks = self.producer.module._forward_hooks
        for key, hook in list(hooks.items()):
            self.hooks[key] = hook
            hooks[key] = _BiasPass(self, hook)

    def uninstall(self) -> None:
        self.reset()
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
        if self.follower is not None:
            self.follower.add(self)
        return y

    def take(self, x: Tensor) -> bool:
        """Whether the consumer's input ``x`` is the compact tensor in flight (raises if another is)."""
        if self.in_flight is None:
            return False
        if x is not self.in_flight or self.stage != len(self.steps) or not self.active:
            raise RuntimeError(LOST)
        self.reset()
        return True

    def reset(self) -> None:
        """Nothing in flight (and the function steps no longer followed)."""
        self.in_flight = None
        if self.follower is not None:
            self.follower.discard(self)

    def advance(self, out: Tensor) -> None:
        """The tensor in flight went through the next step, which gave ``out``."""
        self.in_flight, self.stage = out, self.stage + 1


class _Pass:
    """Instance ``forward`` of a module step: the class's forward (a BatchNorm's on the live
    channels for the tensor in flight), which moves the hand-off on."""

    def __init__(self, segment: Segment, index: int, module: nn.Module) -> None:
        self.segment, self.index, self.module = segment, index, module

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        seg = self.segment
        x = args[0] if len(args) == 1 and not kwargs else None
        flying = x is not None and x is seg.in_flight and seg.stage == self.index
        seg.quiet = True
        try:
            if flying and isinstance(self.module, nn.BatchNorm2d):
                out = _live_batch_norm(self.module, x, seg.producer.piece.rows)
            else:
                out = type(self.module).forward(self.module, *args, **kwargs)
        finally:
            seg.quiet = False
        if flying:
            seg.advance(out)
        return out


class _Follower(TorchFunctionMode):
    """One per model: active while a segment with function steps has a tensor in flight (entered
    and left with the first and last such segment, so several in flight at once keep the mode
    stack in order). A torch function (or tensor method) called on a tensor in flight outside a
    module step of its segment is that segment's next step."""

    def __init__(self) -> None:
        super().__init__()
        self.segments: list[Segment] = []

    def add(self, segment: Segment) -> None:
        if not self.segments:
            self.__enter__()
        self.segments.append(segment)

    def discard(self, segment: Segment) -> None:
        if any(s is segment for s in self.segments):
            self.segments = [s for s in self.segments if s is not segment]
            if not self.segments:
                self.__exit__(None, None, None)

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if isinstance(out, Tensor):
            inputs = (*args, *kwargs.values())
            for seg in self.segments:
                t = seg.in_flight
                if t is not None and not seg.quiet and any(a is t for a in inputs):
                    seg.advance(out)
        return out


def _live_batch_norm(bn: nn.BatchNorm2d, x: Tensor, rows: Tensor) -> Tensor:
    """``bn`` on the channels ``rows`` of its input (``x`` holds only those), the other channels'
    input being exactly zero: as ``_BatchNorm.forward`` on the dense tensor, whose running mean and
    variance of those channels then decay towards the zero batch statistics."""
    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    use_batch = bn.training or (bn.running_mean is None and bn.running_var is None)
    stats = bn.running_mean is not None and (not bn.training or bn.track_running_stats)
    mean = bn.running_mean.index_select(0, rows) if stats else None
    var = bn.running_var.index_select(0, rows) if stats else None
    weight = bn.weight.index_select(0, rows) if bn.weight is not None else None
    bias = bn.bias.index_select(0, rows) if bn.bias is not None else None
    out = F.batch_norm(x, mean, var, weight, bias, use_batch, factor, bn.eps)
    if stats and use_batch:  # F.batch_norm updated the live channels' copies; the others decay
        with torch.no_grad():
            dead = complement(rows, bn.running_mean.shape[0])
            for full, live in ((bn.running_mean, mean), (bn.running_var, var)):
                full.index_copy_(0, rows, live)
                full.index_copy_(0, dead, full.index_select(0, dead) * (1.0 - factor))
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
    if type_before_parametrizations(module) is nn.BatchNorm2d:  # prune_norm parametrizes it
        return "norm"
    if type(module) is nn.Flatten and module.start_dim == 1 and module.end_dim == -1:
        return "flatten"
    return None


def _function_step(node: fx.Node, modules: dict[str, nn.Module]) -> fx.Node | None:
    """The input of a call of an element-wise function or method (not dropout), or None."""
    if node.op not in ("call_function", "call_method") or node.target in DROPOUT_FUNCTIONS:
        return None
    return elementwise_call(node, modules)


def find_segments(model: nn.Module, layers: dict[nn.Module, CompactForward]) -> list[Segment]:
    """The segments of ``model`` between the compacted ``layers`` (see the module docstring)."""
    try:
        graph = fx.Tracer().trace(model)
    except Exception:  # untraceable: no hand-offs, the dense-shaped activations stay
        return []
    modules = dict(model.named_modules())
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    found, used, follower = [], set(), _Follower()
    for node in graph.nodes:
        consumer = layers.get(modules.get(node.target)) if node.op == "call_module" else None
        if consumer is None or consumer.live_inputs is None or calls[node.target] != 1:
            continue
        path: list[fx.Node] = []
        cur = node.args[0] if len(node.args) == 1 and not node.kwargs else None
        while isinstance(cur, fx.Node) and len(cur.users) == 1:
            if cur.op == "call_module":
                if len(cur.args) != 1 or cur.kwargs:
                    break
                module = modules[cur.target]
                producer = layers.get(module)
                if producer is not None:
                    steps = [modules[n.target] if n.op == "call_module" else None for n in reversed(path)]
                    segment = _segment(producer, steps, consumer, calls[cur.target], follower)
                    if segment is not None and not used & {id(m) for m in segment.modules}:
                        used |= {id(m) for m in segment.modules}
                        found.append(segment)
                    break
                if _kind(module) is None or module.__dict__.get("forward") is not None or calls[cur.target] != 1:
                    break
                path.append(cur)
                cur = cur.args[0]
                continue
            before = _function_step(cur, modules)
            if before is None:
                break
            path.append(cur)
            cur = before
    return found


def _segment(
    producer: CompactForward, steps: list[nn.Module | None], consumer: CompactForward, calls: int, follower: _Follower
) -> Segment | None:
    if calls != 1 or not producer.structured:
        return None
    hooks = list(producer.module._forward_hooks.values())
    has_bias = getattr(producer.module, "_bias", None) is not None
    if len(hooks) > 1 or any(not isinstance(h, BiasHook) or (has_bias and not h.prune_bias) for h in hooks):
        return None
    kinds = [_kind(m) if m is not None else "elementwise" for m in steps]
    if producer.is_linear:
        ok = consumer.is_linear and all(k == "elementwise" for k in kinds)
    elif "flatten" in kinds:
        after = kinds[kinds.index("flatten") + 1 :]
        ok = consumer.is_linear and kinds.count("flatten") == 1 and all(k == "elementwise" for k in after)
        ok = ok and "norm" not in kinds[kinds.index("flatten") :]
    else:
        ok = not consumer.is_linear
    return Segment(producer, steps, consumer, follower) if ok else None

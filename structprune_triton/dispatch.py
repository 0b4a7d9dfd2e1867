"""The one decision: which implementation runs a call, from its tensors and the settings.

Every entry point (``ops.row_mask.row_mask``, ``ops.bias_add.add_bias``) validates its input, then
asks :func:`route` once; the :class:`Plan` it returns carries everything the later steps need (the
implementation, the settings, what the torch formula needs), so nothing downstream asks again.

The decision is the same function of (tensors, settings) in eager mode and inside a compiled graph;
only how the kernel runs differs (a direct launch, or the custom op a graph records). Whether the
kernels serve a tensor at all is one rule, :func:`kernels_serve`; :func:`kernels_run_on` and
:func:`describe_backend` (and the tests and the bench) ask it.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

import torch
import torch.autograd.forward_ad as forward_ad
from torch import Tensor

from .config import HAS_TRITON, INTERPRET, Settings, current_settings, settings_in_force
from .layout import is_dense

KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class Impl(enum.Enum):
    """How a call runs."""

    KERNEL = "kernel"  # eager: launch the Triton kernel directly (in an autograd.Function with autograd)
    OP = "op"  # inside a compiled graph: the torch.library custom op, which launches the kernel
    TORCH = "torch"  # the op's torch formula: plain differentiable torch ops


class Plan(NamedTuple):
    """The decision for one call, made once by :func:`route` and handed to every later step."""

    impl: Impl
    settings: Settings  # the settings the call was decided under (the kernel launch reads its tiles)
    transform: bool  # jit.trace, forward AD or torch.func is active: the torch formula in plain differentiable ops
    compiled: bool  # the call is being traced into a compiled graph (Dynamo cannot trace every eager idiom)


_NEEDS_INTERPRETER = "backend 'triton' on a CPU tensor needs TRITON_INTERPRET=1 set before triton is imported"


# Where a Triton kernel can run at all: facts of the machine, not settings.
_KERNELS_ON_CUDA = HAS_TRITON
_KERNELS_ON_CPU = HAS_TRITON and INTERPRET


def kernels_serve(where: Tensor | torch.device | str, s: Settings | None = None) -> bool:
    """The rule: do the Triton kernels serve a tensor (its device and size) under ``s`` (default:
    the current settings)? For a device, sizes aside.

    ``backend="torch"``: never. Otherwise on a CUDA device and on a CPU under the Triton
    interpreter; with ``backend="auto"`` only CUDA tensors of at least ``s.triton_min_numel``
    elements (a launch from Python costs more host time than one torch op on a small tensor; the
    interpreter is for testing the kernels, so no threshold there). ``backend="triton"`` on a CPU
    without the interpreter is an error."""
    s = s or current_settings()
    if s.backend == "torch":
        return False
    tensor = isinstance(where, Tensor)
    if tensor:
        cuda, cpu = where.is_cuda, where.is_cpu
    else:
        kind = torch.device(where).type
        cuda, cpu = kind == "cuda", kind == "cpu"
    if not ((cuda and _KERNELS_ON_CUDA) or (cpu and _KERNELS_ON_CPU)):
        if s.backend == "triton" and cpu:
            raise RuntimeError(_NEEDS_INTERPRETER)
        return False
    return not (cuda and tensor and s.backend == "auto" and where.numel() < s.triton_min_numel)


def kernels_run_on(device: torch.device | str, s: Settings | None = None) -> bool:
    """True if the Triton kernels serve tensors on ``device`` under ``s`` (sizes aside)."""
    return kernels_serve(torch.device(device), s)


def kernels_can_run(t: Tensor, dtypes: tuple[torch.dtype, ...]) -> bool:
    """Whatever the settings: can a kernel compute on ``t``'s device with these dtypes? The custom
    ops ask this: they also serve direct calls and ``opcheck`` on devices without kernels."""
    on_device = (t.is_cuda and _KERNELS_ON_CUDA) or (t.is_cpu and _KERNELS_ON_CPU)
    return on_device and all(d in KERNEL_DTYPES for d in dtypes)


def transformed() -> bool:
    """True under ``torch.jit.trace``, forward-mode AD or a ``torch.func`` transform: only plain
    differentiable torch ops are right there (a kernel launch is not traceable, and carries no
    tangent or batch rule)."""
    return _tracing_state() is not None or forward_ad._current_level >= 0 or _functorch_level() is not None


# bound once: transformed() runs on every eager call
_tracing_state = torch._C._get_tracing_state
_functorch_level = torch._C._functorch.maybe_current_level


def _writable(t: Tensor) -> bool:
    """Does torch let an in-place op write ``t`` with no rule to check: not a leaf, nor a view, that
    requires grad with grad enabled (torch forbids the first and has rules for views: let it
    judge), not an inference tensor outside inference mode. The kernel writes through a pointer,
    which torch cannot check."""
    if t.requires_grad and torch.is_grad_enabled() and (t.is_leaf or t._is_view()):
        return False
    return not t.is_inference() or torch.is_inference_mode_enabled()


def route(
    t: Tensor,
    dtypes: tuple[torch.dtype, ...],
    s: Settings | None,
    *,
    in_place: bool = False,
) -> Plan:
    """The plan for one call on tensor ``t`` (the weight, or the module output) with these dtypes
    (inputs and result), under ``s`` (the call's ``settings=``; None: the current settings).
    ``in_place``: the op's kernel writes ``t`` in place, so it takes only a dense ``t`` that torch
    lets an in-place op write (the torch formula raises torch's error for the others)."""
    compiled = torch.compiler.is_compiling()
    if s is None:
        s = settings_in_force(compiled)
    transform = not compiled and transformed()
    kernels = (
        not transform
        and kernels_serve(t, s)
        and all(d in KERNEL_DTYPES for d in dtypes)
        # a compiled graph runs the functional op: nothing writes t through a pointer there
        and (not in_place or (is_dense(t) and (compiled or _writable(t))))
    )
    if compiled:
        return Plan(Impl.OP if kernels else Impl.TORCH, s, False, True)
    plans = _eager_plans.get(id(s))
    if plans is None or plans[0].settings is not s:
        if len(_eager_plans) >= 64:  # per-call Settings objects: keep the cache small
            _eager_plans.clear()
        plans = _eager_plans[id(s)] = tuple(Plan(impl, s, t, False) for impl, t in _EAGER)
    return plans[1 if kernels else 2 if transform else 0]


# The eager plans of one Settings object, made once (a plan costs about as much as the rest of the
# decision): its entry holds the Settings, so its id stays that object's while cached.
_EAGER = ((Impl.TORCH, False), (Impl.KERNEL, False), (Impl.TORCH, True))
_eager_plans: dict[int, tuple[Plan, ...]] = {}


def describe_backend(device: torch.device | str, s: Settings | None = None) -> str:
    """One line: what runs this package's ops on ``device`` under the settings."""
    device = torch.device(device)
    s = s or current_settings()
    if not HAS_TRITON:
        return "torch path (Triton not installed)"
    if s.backend == "torch":
        return "torch path (backend 'torch')"
    try:
        kernels = kernels_serve(device, s)
    except RuntimeError as e:
        return f"no implementation ({e})"
    if not kernels:
        if device.type == "cpu":
            return "torch path (no Triton kernels on CPU without TRITON_INTERPRET=1)"
        return f"torch path (no Triton kernels on {device.type})"
    if device.type == "cpu":
        return "Triton kernels under the interpreter (TRITON_INTERPRET=1)"
    if s.backend == "triton":
        return "Triton kernels"
    return f"Triton kernels (tensors of at least {s.triton_min_numel} elements; torch path below, eager and compiled)"

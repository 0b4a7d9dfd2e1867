"""The one decision: which implementation runs a call, from its tensors and the settings.

Every entry point (``ops.row_mask.row_mask``, ``ops.bias_add.bias_hook``) asks :func:`route` once
per call and runs what it returns; the custom ops' implementations ask :func:`kernels_take` (the same
rule) when they run; the demo, the bench and the tests ask :func:`describe_backend` and
:func:`kernels_run_on`.
"""

from __future__ import annotations

import enum

import torch
import torch.autograd.forward_ad as forward_ad
from torch import Tensor

from .config import HAS_TRITON, INTERPRET, Settings, current_settings
from .layout import is_dense

KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class Route(enum.Enum):
    """How a call runs."""

    KERNEL = "kernel"  # eager: an autograd.Function that launches the Triton kernel directly
    OP = "op"  # inside a compiled graph: the torch.library custom op (opaque, runs the kernel)
    BITS = "bits"  # eager torch path: dead rows zeroed on the bits of the float (CPU-fast, exact)
    NATIVE = "native"  # differentiable plain torch ops: every autograd mode, tracing, Inductor fusion
    MULTIPLY = "multiply"  # upstream's own arithmetic ``mask * x`` (``Settings.exact_zeros=False``)


_NEEDS_INTERPRETER = "backend 'triton' on a CPU tensor needs TRITON_INTERPRET=1 set before triton is imported"


def kernels_run_on(device: torch.device, s: Settings | None = None) -> bool:
    """True if the Triton kernels serve tensors on ``device`` under ``s`` (sizes aside)."""
    s = s or current_settings()
    if s.backend == "torch" or not HAS_TRITON:
        return False
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    if s.backend == "triton" and not INTERPRET:
        raise RuntimeError(_NEEDS_INTERPRETER)
    return INTERPRET


def kernels_take(t: Tensor, dtypes: tuple[torch.dtype, ...], s: Settings, *, eager: bool) -> bool:
    """Do the kernels take tensor ``t`` (device; size, in eager auto mode) with these dtypes?

    The size threshold is a per-call host cost (a Triton launch from Python costs more than one
    torch op on a small tensor), so it applies in eager mode only. Kept cheap: every call runs it."""
    if s.backend == "torch" or not HAS_TRITON:
        return False
    if t.is_cuda:
        if eager and s.backend == "auto" and t.numel() < s.triton_min_numel:
            return False
    elif not t.is_cpu:
        return False
    elif not INTERPRET:  # the common eager CPU case: decided without building a device object
        if s.backend == "triton":
            raise RuntimeError(_NEEDS_INTERPRETER)
        return False
    return all(d in KERNEL_DTYPES for d in dtypes)


def transformed() -> bool:
    """True under ``torch.jit.trace``, forward-mode AD or a ``torch.func`` transform: only plain
    differentiable torch ops are right there (a kernel launch is not traceable, and carries no
    tangent or batch rule)."""
    return (
        torch._C._get_tracing_state() is not None
        or forward_ad._current_level >= 0
        or torch._C._functorch.maybe_current_level() is not None
    )


def route(
    t: Tensor,
    dtypes: tuple[torch.dtype, ...],
    s: Settings,
    *,
    dense_only: bool = False,
    bits_ok: bool = False,
) -> Route:
    """The implementation for one call on tensor ``t`` (the weight, or the module output).

    ``dense_only``: the op's kernel takes only dense layouts of ``t``; ``bits_ok``: the call can zero rows on
    the bits (bool mask, float tensor, no mask gradient)."""
    compiling = torch.compiler.is_compiling()
    if not compiling and transformed():
        return Route.NATIVE
    kernels = kernels_take(t, dtypes, s, eager=not compiling) and (not dense_only or is_dense(t))
    if compiling:
        return Route.OP if kernels else Route.NATIVE
    if kernels:
        return Route.KERNEL
    if not s.exact_zeros:
        return Route.MULTIPLY
    if not bits_ok or t.is_cuda:  # on a GPU `where` is one kernel per direction, like the bit trick
        return Route.NATIVE
    if t.requires_grad and torch.is_grad_enabled() and t.numel() < s.bits_min_numel_grad:
        return Route.NATIVE
    return Route.BITS


def describe_backend(device: torch.device | str, s: Settings | None = None) -> str:
    """One line: what runs this package's ops on ``device`` under the settings."""
    device = torch.device(device)
    s = s or current_settings()
    if not HAS_TRITON:
        return "torch path (Triton not installed)"
    if s.backend == "torch":
        return "torch path (backend 'torch')"
    if device.type == "cuda":
        if s.backend == "triton":
            return "Triton kernels"
        return (
            f"Triton kernels (eager: tensors of at least {s.triton_min_numel} elements, torch path below; "
            "compiled graphs: custom ops)"
        )
    if device.type == "cpu" and INTERPRET:
        return "Triton kernels under the interpreter (TRITON_INTERPRET=1)"
    return "torch path (no Triton kernels on CPU without TRITON_INTERPRET=1)"

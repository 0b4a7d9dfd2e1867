"""The row mask, ``FakeStructuredSparsity``'s arithmetic: ``y[r] = mask[r] * x[r]`` over dim 0.

Result dtype is upstream's, ``torch.result_type(mask, x)``. A row whose mask is 0 comes out exactly
+0.0, even where ``x`` holds NaN/inf (upstream's ``mask * x`` gives NaN there), unless
``Settings.exact_zeros`` is False on the torch path. Gradients are upstream's: ``grad * mask`` for
``x`` (exactly 0 on dead rows) and, for a mask that requires grad, the row sums of ``grad * x`` (dead
rows included, so a learned mask can revive a channel).

Everything about the op is here, in the order a call meets it: the entry point :func:`row_mask`
(validate, ask ``dispatch.route`` once, run the plan), the torch formula, the kernel launch and its
eager ``autograd.Function``, and the ``torch.library`` custom ops that compiled graphs record (with
their fake and autograd registrations).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..config import HAS_TRITON, Settings, current_settings, launch_settings, launch_values
from ..dispatch import Impl, Plan, kernels_can_run, route
from ..layout import along_dim, is_dense, new_output
from ..validate import check_mask

if HAS_TRITON:
    from ..kernels import row_mask_kernel
    from ..launch import Launch, compute_dtype, geometry


def row_mask(x: Tensor, mask: Tensor, *, settings: Settings | None = None) -> Tensor:
    """``mask[r] * x[r]`` over dim 0, differentiable (see the module docstring). Validates first,
    with upstream's exception types (``validate.py``)."""
    check_mask(x, mask, 0)
    # == result_type for two tensors of rank >= 1; a bool mask never promotes
    out_dtype = x.dtype if mask.dtype == torch.bool else torch.promote_types(mask.dtype, x.dtype)
    plan = route(x, (x.dtype, out_dtype), settings)
    s = plan.settings
    if plan.impl is Impl.KERNEL:
        if torch.is_grad_enabled() and (x.requires_grad or mask.requires_grad):
            return _KernelRowMask.apply(x, mask, plan)
        return _launch_new(x, mask, out_dtype, s)
    if plan.impl is Impl.OP:
        return torch.ops.structprune_triton.row_mask(x, mask, launch_values(s))
    return torch_row_mask(x, mask, plan)


# ---- torch formula ----------------------------------------------------------------------------------

# Integer dtype of the same width, to zero rows exactly on the bits: ``int(x) * True`` is ``x``'s
# bit pattern, ``int(x) * False`` is +0.0, whatever ``x`` holds (NaN/inf included). One vectorised
# pass at the speed of upstream's ``mask * x``; on CPU ``torch.where`` costs about 6 of those.
_SAME_WIDTH_INT = {
    torch.float32: torch.int32,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
    torch.float64: torch.int64,
}


def torch_row_mask(x: Tensor, mask: Tensor, plan: Plan) -> Tensor:
    """The op in torch ops (the torch path, eager and compiled, and the custom ops where no kernel
    runs): ``mask * x`` (upstream's) without ``exact_zeros``; else dead rows exactly +0.0 and, for
    a mask that is differentiated (it requires grad, or a transform runs), dead rows that pass
    ``grad * x`` (or ``tangent * x``) to the mask, as upstream, and nothing to ``x``."""
    s = plan.settings
    if mask.dtype == torch.bool and s.exact_zeros:
        if x.is_cpu and x.dtype in _SAME_WIDTH_INT and not plan.transform:  # the bits carry no tangent
            if not (x.requires_grad and torch.is_grad_enabled()):
                return _zero_dead_bits(x, mask)
            if x.numel() >= s.bits_min_numel_grad:  # below, the Function's Python cost outweighs `where`
                return _BitsRowMask.apply(x, mask)
        return torch.where(along_dim(mask, x.dim()), x, False if x.dtype == torch.bool else 0)
    m = along_dim(mask, x.dim())
    if not s.exact_zeros:
        return m * x
    live = m != 0
    if mask.requires_grad or plan.transform:
        return torch.where(live, m * x, m * x.detach())
    return torch.where(live, m * x, 0)


def _zero_dead_bits(t: Tensor, mask: Tensor) -> Tensor:
    """``t`` (float) with the rows where the bool ``mask`` is False set to +0.0, bit-exact elsewhere."""
    return (t.view(_SAME_WIDTH_INT[t.dtype]) * along_dim(mask, t.dim())).view(t.dtype)


class _BitsRowMask(torch.autograd.Function):
    """:func:`_zero_dead_bits` with its gradient (the same zeroing applied to ``grad``); bool masks
    only, so the mask never needs a gradient."""

    @staticmethod
    def forward(ctx, x: Tensor, mask: Tensor) -> Tensor:
        ctx.save_for_backward(mask)
        return _zero_dead_bits(x, mask)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (mask,) = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: keep the gradient differentiable
            return _BitsRowMask.apply(grad, mask), None
        return _zero_dead_bits(grad, mask), None


def _mask_grad(grad: Tensor, x: Tensor, mask: Tensor) -> Tensor:
    """Upstream's gradient w.r.t. the mask: the sum over each row of ``grad * x``."""
    prod = grad * x.to(grad.dtype)
    return (prod.sum(dim=tuple(range(1, x.dim()))) if x.dim() > 1 else prod).to(mask.dtype)


# ---- Triton kernel ---------------------------------------------------------------------------------


def plan_launch(x: Tensor, mask: Tensor, out: Tensor, *, settings: Settings | None = None) -> Launch:
    """The kernel launch writing ``out = mask * x`` (``x`` and ``out`` dense with the same strides;
    dead rows of ``x`` are not read)."""
    s = settings or current_settings()
    args, grid, meta = geometry(x, 0, s, itemsize=max(x.element_size(), out.element_size()))
    compute = compute_dtype(out.dtype, x.dtype, mask.dtype)
    return Launch(row_mask_kernel, grid, (x, mask, out, *args, mask.stride(0)), {"COMPUTE": compute, **meta})


def _launch_new(x: Tensor, mask: Tensor, dtype: torch.dtype, s: Settings) -> Tensor:
    """A new tensor ``mask * x`` of ``dtype``, laid out like ``x``, computed by the kernel."""
    out = new_output(x, dtype, s.poison_outputs)
    if out.numel() == 0:
        return out
    if not is_dense(x):
        x = torch.empty_like(out, dtype=x.dtype).copy_(x)  # same strides as out
    plan_launch(x, mask, out, settings=s).run()
    return out


class _KernelRowMask(torch.autograd.Function):
    """Eager kernel path with autograd: the kernel forward and backward, no op dispatch."""

    @staticmethod
    def forward(ctx, x: Tensor, mask: Tensor, plan: Plan) -> Tensor:
        ctx.x_dtype, ctx.plan = x.dtype, plan
        ctx.save_for_backward(mask, x if mask.requires_grad else None)
        return _launch_new(x, mask, torch.promote_types(mask.dtype, x.dtype), plan.settings)

    @staticmethod
    def backward(ctx, grad: Tensor):
        mask, x = ctx.saved_tensors
        grad_x = grad_mask = None
        if ctx.needs_input_grad[0]:
            if torch.is_grad_enabled():  # create_graph=True: the gradient must be differentiable too
                grad_x = _KernelRowMask.apply(grad, mask, ctx.plan).to(ctx.x_dtype)
            else:
                grad_x = _launch_new(grad, mask, ctx.x_dtype, ctx.plan.settings)
        if ctx.needs_input_grad[1]:
            grad_mask = _mask_grad(grad, x, mask)
        return grad_x, grad_mask, None


# ---- torch.library custom ops (what a compiled graph records) ----------------------------------------


def _op_forward(x: Tensor, mask: Tensor, dtype: torch.dtype, launch: list[int] | None) -> Tensor:
    """The ops' implementation: the kernel, with the launch settings the graph recorded. The ops
    also serve direct calls and ``opcheck`` on any device: where no kernel can run, the torch
    formula (exact zeros, as the kernel)."""
    if kernels_can_run(x, (x.dtype, dtype)):
        return _launch_new(x, mask, dtype, launch_settings(launch))
    with torch.no_grad():
        return torch_row_mask(x, mask, _EXACT).to(dtype)


_EXACT = Plan(Impl.TORCH, Settings(), transform=False, compiled=False)  # the kernels' arithmetic, in torch


@torch.library.custom_op("structprune_triton::row_mask", mutates_args=())
def row_mask_op(x: Tensor, mask: Tensor, launch: list[int] | None = None) -> Tensor:
    """``mask * x`` over dim 0, dead rows exactly 0, dtype ``result_type(mask, x)``. ``launch``:
    the kernel's launch settings (``config.launch_values``; default: the defaults)."""
    check_mask(x, mask, 0)
    return _op_forward(x, mask, torch.result_type(mask, x), launch)


@torch.library.custom_op("structprune_triton::row_mask_backward", mutates_args=())
def row_mask_backward_op(grad: Tensor, mask: Tensor, dtype: torch.dtype, launch: list[int] | None = None) -> Tensor:
    """``grad * mask`` over dim 0, dead rows exactly 0, cast to ``dtype``."""
    check_mask(grad, mask, 0)
    return _op_forward(grad, mask, dtype, launch)


# The fake impls validate too: a real tensor with a meta mask is dispatched to them, and must fail
# there rather than return uninitialised memory.
@row_mask_op.register_fake
def _(x: Tensor, mask: Tensor, launch: list[int] | None = None) -> Tensor:
    check_mask(x, mask, 0)
    return torch.empty_like(x, dtype=torch.result_type(mask, x))


@row_mask_backward_op.register_fake
def _(grad: Tensor, mask: Tensor, dtype: torch.dtype, launch: list[int] | None = None) -> Tensor:
    check_mask(grad, mask, 0)
    return torch.empty_like(grad, dtype=dtype)


def _setup_row_mask(ctx, inputs, output) -> None:
    x, mask, launch = inputs
    ctx.x_dtype, ctx.launch = x.dtype, launch
    ctx.save_for_backward(mask, x if mask.requires_grad else None)


def _row_mask_backward(ctx, grad: Tensor):
    mask, x = ctx.saved_tensors
    grad_x = torch.ops.structprune_triton.row_mask_backward(grad, mask, ctx.x_dtype, ctx.launch)
    return grad_x, (_mask_grad(grad, x, mask) if x is not None else None), None


def _setup_row_mask_backward(ctx, inputs, output) -> None:
    grad, mask, _dtype, launch = inputs
    ctx.grad_dtype, ctx.launch = grad.dtype, launch
    ctx.save_for_backward(mask)


def _row_mask_backward_backward(ctx, gg: Tensor):
    (mask,) = ctx.saved_tensors
    return torch.ops.structprune_triton.row_mask_backward(gg, mask, ctx.grad_dtype, ctx.launch), None, None, None


row_mask_op.register_autograd(_row_mask_backward, setup_context=_setup_row_mask)
row_mask_backward_op.register_autograd(_row_mask_backward_backward, setup_context=_setup_row_mask_backward)

"""The bias add, ``BiasHook``'s arithmetic: with ``prune_bias`` zero the bias entries whose mask is 0
(in the parameter, in place, as upstream), then add the bias to a module output along ``dim``.

The bias gets no gradient (upstream's hook reads ``module._bias.data``); the output's gradient passes
through unchanged. In eager mode the output is updated in place and returned, as upstream; inside a
compiled graph that runs the kernel the op is functional (a new tensor), because an op that mutates
its input cannot carry an autograd formula.

In the order a call meets it: the entry point :func:`add_bias` (validate, ``dispatch.route`` once,
run the plan), the torch formula, the kernel launch, and the ``torch.library`` custom op.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..config import HAS_TRITON, Settings, current_settings, launch_settings, launch_values
from ..dispatch import Impl, Plan, kernels_can_run, route
from ..layout import along_dim, is_dense, live_rows, new_output
from ..validate import check_bias

if HAS_TRITON:
    from ..kernels import bias_add_kernel
    from ..launch import Launch, compute_dtype, geometry


def add_bias(
    output: Tensor, bias: Tensor, mask: Tensor, dim: int, prune_bias: bool, *, settings: Settings | None = None
) -> Tensor:
    """What ``BiasHook`` does to a module output (see the module docstring); returns the result."""
    check_bias(output, bias, mask, dim)
    dim = dim % output.dim()
    plan = route(output, (output.dtype, bias.dtype), settings, in_place=True)
    s = plan.settings
    if plan.impl is Impl.KERNEL:
        data = bias.data  # as upstream: no autograd, no version bump on the parameter
        _launch(output, data, mask, output, dim, prune_bias, data, s)
        if output.requires_grad:
            # out += c has gradient 1 w.r.t. out: autograd's graph is unchanged, but whoever saved
            # `output` for backward must see that it changed, as with upstream's `output += bias`.
            torch.autograd.graph.increment_version(output)
        return output
    bias = _pruned_parameter(bias, mask, prune_bias, plan)
    if plan.impl is Impl.OP:
        return torch.ops.structprune_triton.bias_add(output, bias, mask, dim, False, launch_values(s))
    # in place, as upstream; where `output` is a compiled graph's input, Inductor writes it in place
    return output.add_(along_dim(bias, output.dim(), dim))


# ---- torch formula ----------------------------------------------------------------------------------


def _pruned_parameter(bias: Tensor, mask: Tensor, prune_bias: bool, plan: Plan) -> Tensor:
    """The bias to add, untracked by autograd; with ``prune_bias`` its entries whose mask is 0 are
    first set to zero in the parameter itself, in place, without a host sync."""
    if not plan.compiled:
        data = bias.data  # as upstream: no autograd, no version bump on the parameter
        if prune_bias:
            data.masked_fill_(~live_rows(mask), 0)
        return data
    if prune_bias:
        # Dynamo: the parameter under no_grad (a write through `.data` or `.detach()` breaks
        # AOTAutograd's replay of input mutations when the output is a graph input)
        with torch.no_grad():
            if bias.is_cpu:
                # an index_put, which Inductor's CPU code computes once; a masked_fill_ it inlines
                # into the per-element add loop that follows (2-3x slower there)
                bias[~live_rows(mask)] = 0
            else:  # no boolean indexing on CUDA: it would sync the host
                bias.masked_fill_(~live_rows(mask), 0)
    return bias.detach()


def _pruned(bias: Tensor, mask: Tensor) -> Tensor:
    """A new tensor: ``bias`` with the entries whose mask is 0 set to zero."""
    return torch.where(live_rows(mask), bias, 0)


# ---- Triton kernel ---------------------------------------------------------------------------------


def plan_launch(
    src: Tensor,
    bias: Tensor,
    mask: Tensor,
    dst: Tensor,
    dim: int,
    prune_bias: bool,
    bias_out: Tensor | None = None,
    *,
    settings: Settings | None = None,
) -> Launch:
    """The kernel launch writing ``dst = src + bias'`` along ``dim`` (``dst`` may be ``src``; both
    dense with the same strides), ``bias' = bias`` zeroed where ``mask == 0`` if ``prune_bias``, and
    ``bias'`` into ``bias_out`` (may be ``bias``) if given and ``prune_bias`` (else it is ``bias``)."""
    s = settings or current_settings()
    args, grid, meta = geometry(src, dim, s, itemsize=max(src.element_size(), dst.element_size()))
    write_bias = bias_out is not None and prune_bias
    bias_dst = bias_out if write_bias else bias
    return Launch(
        bias_add_kernel,
        grid,
        (src, bias, mask, dst, bias_dst, *args, bias.stride(0), mask.stride(0), bias_dst.stride(0)),
        {"APPLY_MASK": prune_bias, "WRITE_BIAS": write_bias, "COMPUTE": compute_dtype(src.dtype, bias.dtype), **meta},
    )


def _launch(
    src: Tensor,
    bias: Tensor,
    mask: Tensor,
    dst: Tensor,
    dim: int,
    prune_bias: bool,
    bias_out: Tensor | None,
    s: Settings,
) -> Tensor:
    if src.numel() == 0:
        if bias_out is not None and prune_bias:
            bias_out.copy_(_pruned(bias, mask))
        return dst
    plan_launch(src, bias, mask, dst, dim, prune_bias, bias_out, settings=s).run()
    return dst


# ---- torch.library custom op (what a compiled graph records) -----------------------------------------


@torch.library.custom_op("structprune_triton::bias_add", mutates_args=())
def bias_add_op(
    src: Tensor, bias: Tensor, mask: Tensor, dim: int, prune_bias: bool, launch: list[int] | None = None
) -> Tensor:
    """``src + bias'`` along ``dim`` (``bias'`` zero where ``mask == 0`` if ``prune_bias``), a new
    tensor: neither ``src`` nor ``bias`` is written. The kernel, with the launch settings the graph
    recorded (``config.launch_values``; default: the defaults); the op also serves direct calls and
    ``opcheck`` on any device, with the torch formula where no kernel can run."""
    check_bias(src, bias, mask, dim)
    dim = dim % src.dim()
    if not kernels_can_run(src, (src.dtype, bias.dtype)):
        b = _pruned(bias, mask) if prune_bias else bias
        return torch.add(src, along_dim(b, src.dim(), dim), out=new_output(src, src.dtype, False))
    s = launch_settings(launch)
    dst = new_output(src, src.dtype, s.poison_outputs)
    if not is_dense(src):  # the kernel needs one dense layout for both: add in place on a dense copy
        src = dst.copy_(src)
    return _launch(src, bias, mask, dst, dim, prune_bias, None, s)


@bias_add_op.register_fake
def _(src: Tensor, bias: Tensor, mask: Tensor, dim: int, prune_bias: bool, launch: list[int] | None = None) -> Tensor:
    check_bias(src, bias, mask, dim)
    return torch.empty_like(src)


def _bias_add_backward(ctx, grad: Tensor):
    return grad, None, None, None, None, None


bias_add_op.register_autograd(_bias_add_backward)

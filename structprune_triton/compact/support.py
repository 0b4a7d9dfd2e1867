"""What compact training supports: optimizers and their options, and distributed setups. Anything
else is refused with an error naming it, never trained with a silent difference."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["SUPPORTED_OPTIMIZERS", "check_distributed", "check_optimizer", "check_groups"]

# Exactly these classes (not subclasses: a subclass may change the update rule). Their updates are
# element-wise and each tensor's state is its own, so the dead entries of a parameter can be
# stepped on their own (see replay.py) with the same result as inside the full tensor.
SUPPORTED_OPTIMIZERS: tuple[type[torch.optim.Optimizer], ...] = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)

# group options that would make a step something other than the element-wise update replayed here
_REFUSED_OPTIONS = {
    "fused": "a fused step (its grad scaling and inf checks run over all tensors at once)",
    "capturable": "a capturable step (CUDA graphs; the step count lives on the device)",
    "differentiable": "a differentiable step (autograd through the update)",
}
# per-parameter state keys of the supported classes; "step" is the per-tensor step count
_STATE_KEYS = {"momentum_buffer", "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "step"}


def check_optimizer(optimizer: Any) -> None:
    """Raise ``TypeError`` unless ``optimizer`` is an instance of one of :data:`SUPPORTED_OPTIMIZERS`
    (exact class), and ``ValueError`` for a group option these classes cannot be replayed with."""
    cls = type(optimizer)
    if cls not in SUPPORTED_OPTIMIZERS:
        names = ", ".join(f"torch.optim.{c.__name__}" for c in SUPPORTED_OPTIMIZERS)
        raise TypeError(
            f"compact_training supports the optimizers {names} (exactly these classes), "
            f"not {cls.__module__}.{cls.__qualname__}"
        )
    check_groups(optimizer)


def check_groups(optimizer: torch.optim.Optimizer) -> None:
    """Raise ``ValueError`` if a param group asks for an option compact training cannot reproduce."""
    for i, group in enumerate(optimizer.param_groups):
        for key, what in _REFUSED_OPTIONS.items():
            if group.get(key):
                raise ValueError(
                    f"compact_training: param group {i} of {type(optimizer).__name__} has {key}=True, "
                    f"{what}: not supported; use {key}=False (foreach and single-tensor steps are supported)"
                )


def check_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Raise ``ValueError`` for a per-parameter state key the supported classes do not write."""
    unknown = set(state) - _STATE_KEYS
    if unknown:
        raise ValueError(
            f"compact_training: unexpected optimizer state {sorted(unknown)} in {type(optimizer).__name__}; "
            f"known keys: {sorted(_STATE_KEYS)}"
        )


def check_distributed(model: nn.Module, allow_distributed: bool) -> None:
    """Refuse models wrapped for data-parallel training, and (unless ``allow_distributed``) a run
    of several processes: their gradient reduction is tied to the full parameters, which get no
    gradient inside the block."""
    from torch.nn.parallel import DistributedDataParallel

    for name, module in model.named_modules():
        if isinstance(module, DistributedDataParallel) or _is_fsdp(module):
            where = f" (at {name!r})" if name else ""
            raise RuntimeError(
                f"compact_training: {type(module).__name__}{where} reduces the gradients of the full "
                "parameters, which get none inside the block. Enter compact_training with the unwrapped "
                "model and all-reduce the gradients of ctx.parameters() yourself "
                "(compact_training(..., allow_distributed=True))"
            )
    if allow_distributed:
        return
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        raise RuntimeError(
            "compact_training: torch.distributed is initialised with world size "
            f"{dist.get_world_size()}. Inside the block gradients live on compact parameters; average "
            "them across processes yourself (all_reduce of p.grad for p in ctx.parameters(), before "
            "optimizer.step()) and keep every process's masks identical, then pass allow_distributed=True"
        )


def _is_fsdp(module: nn.Module) -> bool:
    cls_names = {c.__name__ for c in type(module).__mro__}
    if cls_names & {"FullyShardedDataParallel", "FSDPModule"}:
        return True
    return any(type(p).__name__ == "DTensor" for p in module.parameters(recurse=False))

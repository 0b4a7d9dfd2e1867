"""Masked training at the pruned model's speed: compact live blocks and optimizer state.

Inside ``with compact_training(model, optimizer):`` every masked ``nn.Linear``/``nn.Conv2d``
(prepared by this package's pruners) trains only its live block: the live rows (mask not zero)
and, where a pruned layer before it provably feeds zeros, only the live input columns. The block
is a new ``nn.Parameter`` used by a replacement forward, and the optimizer's param groups hold it
in place of the full parameter (same optimizer object, state gathered to match), so forward,
backward and optimizer step all run the pruned model's arithmetic.

Exactness: the full parameters and optimizer state are written back exactly as masked dense
training would have left them: live entries from the compact ones; the dead entries (which get an
exactly zero gradient in masked dense training but still move under weight decay and momentum) by
replaying the recorded optimizer steps on them with torch's own step (:mod:`.replay`). Write-back
happens on leaving the block (also on an exception), when a mask changes (the changed layers are
then re-compacted), and before ``state_dict()`` of the model or the optimizer and ``module.weight``
of a compacted layer are read.

See :func:`compact_training` and docs/compact_training.md.
"""

from __future__ import annotations

import torch
from torch import nn

from .context import CompactTraining
from .support import SUPPORTED_OPTIMIZERS

__all__ = ["CompactTraining", "SUPPORTED_OPTIMIZERS", "compact_training"]


def compact_training(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    compact_activations: bool = True,
    verify: bool = True,
    allow_distributed: bool = False,
) -> CompactTraining:
    """Context manager: train ``model`` with ``optimizer`` on compact live blocks, with the result
    of masked dense training (parameters, dead rows included, and optimizer state)::

        pruner.step()                                    # masks
        with structprune_triton.compact_training(model, optimizer) as ctx:
            for x, y in data:
                loss = loss_fn(model(x), y)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(ctx.parameters(), 1.0)   # not model.parameters()
                optimizer.step(); optimizer.zero_grad()
                if ...: pruner.step()                    # fine inside: the block follows the masks
        pruned = pruner.prune()                          # after leaving the block

    Compacted: each plain ``nn.Linear``/``nn.Conv2d`` (``groups=1``) whose weight is in
    ``optimizer`` and carries this package's ``FakeStructuredSparsity`` as prepared by the pruners
    (rows), and each such layer whose input columns a pruned layer before it provably zeroes
    (columns; found by :mod:`structprune_triton.skip.chains`). Other layers train as before.

    Optimizers: ``torch.optim.SGD`` (momentum, dampening, weight decay, Nesterov, maximize),
    ``Adam`` and ``AdamW`` (amsgrad, maximize; foreach or single-tensor), exactly these classes;
    ``fused``, ``capturable`` or ``differentiable`` raise ``ValueError``, another class
    ``TypeError``. A model wrapped in DDP/FSDP, or several processes, raise ``RuntimeError``
    (``allow_distributed=True``: you all-reduce the gradients of ``ctx.parameters()`` yourself).

    Inside the block the full parameters hold their values as of the last write-back and have no
    gradient (the gradients are on ``ctx.parameters()``); ``model.zero_grad()`` and
    ``optimizer.zero_grad()`` work. ``verify`` adds device-side checks (no host sync) that no row or
    input column left out has come alive through an edit the block could not see.
    """
    return CompactTraining(
        model, optimizer, compact_activations=compact_activations, verify=verify, allow_distributed=allow_distributed
    )

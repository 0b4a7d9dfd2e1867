"""The parametrization ``prune_norm`` puts on a BatchNorm's ``weight`` and ``bias``: zero where the
layer feeding the norm has a zero mask entry, so a dead channel leaves the norm as an exact zero in
train and eval mode (what the physically pruned model computes without that channel)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.ao.pruning._experimental.pruner.parametrization import FakeStructuredSparsity as _UpstreamFSS
from torch.nn.utils import parametrize

__all__ = ["NormMask", "mask_of", "norm_source"]


def mask_of(layer: nn.Module) -> Tensor | None:
    """The row mask of ``layer.weight`` (its first parametrization, upstream's structured class or a
    subclass such as ours), or None."""
    plist = getattr(getattr(layer, "parametrizations", None), "weight", None)
    if plist is None or not isinstance(plist[0], _UpstreamFSS):
        return None
    mask = plist[0].mask
    if not isinstance(mask, Tensor) or mask.dim() != 1 or mask.shape[0] != plist.original.shape[0]:
        return None
    return mask


class NormMask(nn.Module):
    """``torch.where(mask != 0, x, 0)``, ``mask`` being the *current* row mask of ``layer`` (read on
    every call: a pruner may edit it in place or replace it). Not a ``FakeStructuredSparsity``: it
    does not count as a pruned tensor for upstream's checks. ``layer`` is referenced, not registered
    as a submodule (it stays out of the norm's ``state_dict`` and ``modules()``)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.__dict__["layer"] = layer

    def forward(self, x: Tensor) -> Tensor:
        mask = mask_of(self.layer)
        if mask is None:
            raise RuntimeError(
                "structprune_triton prune_norm: the layer masking this norm no longer has a structured mask on its "
                "weight (squash or prune the norm together with it)"
            )
        return torch.where(mask != 0, x, torch.zeros((), dtype=x.dtype, device=x.device))

    def extra_repr(self) -> str:
        return f"rows of {type(self.layer).__name__}({self.layer.extra_repr()})"


def norm_source(norm: nn.Module) -> nn.Module | None:
    """The layer whose mask masks ``norm`` (``weight`` and ``bias`` both carry a :class:`NormMask` of
    that layer), or None."""
    layers = []
    for name in ("weight", "bias"):
        if not parametrize.is_parametrized(norm, name):
            return None
        found = [p for p in getattr(norm.parametrizations, name) if isinstance(p, NormMask)]
        if len(found) != 1:
            return None
        layers.append(found[0].layer)
    return layers[0] if layers[0] is layers[1] else None

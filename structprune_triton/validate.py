"""Input checks shared by every entry point, so bad input fails with a clear message before any
kernel runs (no illegal memory access, no silently wrong result).

Exception types follow what upstream raises for the same mistake, and the checks run in
upstream's order, so that input with two mistakes fails like upstream too: ``AssertionError`` for a
mask that is not a tensor or has the wrong length (upstream asserts), ``IndexError`` for a rank-0
weight or mask (upstream indexes ``shape[0]``), ``RuntimeError`` for device and broadcast
mismatches (upstream's ``mask * x`` and ``output += bias`` raise those). Where upstream raises
nothing the choices are ours: a complex mask, which upstream silently turns into a complex weight,
is a ``TypeError``; a mask of rank >= 2 is a ``RuntimeError`` even where upstream's reshape lets an
``(N, 1)`` mask broadcast. For the bias: a mask that is not a tensor is a ``TypeError`` (upstream's
``~mask`` with ``prune_bias``), a dim out of range an ``IndexError`` (upstream's, and torch's, type
for that), a mask whose length does not match the bias an ``IndexError`` (upstream's boolean
indexing with ``prune_bias``; checked whatever ``prune_bias`` is).
"""

from __future__ import annotations

from torch import Tensor


def _other_device(a: Tensor, b: Tensor) -> bool:
    """``a.device != b.device``, without building device objects in the common cases (every call
    checks this)."""
    if a.is_cpu and b.is_cpu:
        return False
    if a.is_cuda and b.is_cuda:
        return a.get_device() != b.get_device()
    return a.device != b.device


def check_mask(x: Tensor, mask: Tensor, dim: int) -> None:
    """``mask`` must be a real 1-D tensor on ``x``'s device with one entry per index of ``dim``."""
    if not isinstance(mask, Tensor):
        raise AssertionError("mask must be a torch.Tensor")
    if mask.dim() == 0:
        raise IndexError("mask must be 1-D (one entry per row): got a 0-d (scalar) tensor")
    if x.dim() == 0:
        raise IndexError("structured pruning masks dim 0 of a tensor: got a 0-d (scalar) tensor")
    if mask.size(0) != x.size(dim):
        raise AssertionError(f"mask shape[0] ({mask.shape[0]}) must match x shape[{dim}] ({x.shape[dim]})")
    if mask.is_complex():
        raise TypeError(f"mask dtype {mask.dtype} is not supported: use bool, an integer or a real float dtype")
    if mask.dim() != 1:
        raise RuntimeError(f"mask must be 1-D (one entry per row), got shape {tuple(mask.shape)}")
    if _other_device(mask, x):
        raise RuntimeError(f"mask is on {mask.device} but the tensor it masks is on {x.device}; move the mask")


def check_bias(src: Tensor, bias: Tensor, mask: Tensor, dim: int) -> None:
    """``bias`` (1-D, one entry per channel of ``src`` along ``dim``: the module output it is added
    to) and ``mask`` must agree."""
    if src.dim() == 0 or not -src.dim() <= dim < src.dim():
        raise IndexError(f"bias dim {dim} is out of range for an output of shape {tuple(src.shape)}")
    if bias.dim() != 1 or bias.shape[0] != src.shape[dim]:
        raise RuntimeError(
            f"bias of shape {tuple(bias.shape)} cannot be added along dim {dim} "
            f"of an output of shape {tuple(src.shape)}"
        )
    if _other_device(bias, src):
        raise RuntimeError(f"bias is on {bias.device} but the output is on {src.device}")
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
    if mask.dim() != 1 or mask.shape[0] != bias.shape[0]:
        raise IndexError(f"mask of shape {tuple(mask.shape)} does not match bias of shape {tuple(bias.shape)}")
    if _other_device(mask, src):
        raise RuntimeError(f"mask is on {mask.device} but the output is on {src.device}")
    if mask.is_complex():
        raise TypeError(f"mask dtype {mask.dtype} is not supported")

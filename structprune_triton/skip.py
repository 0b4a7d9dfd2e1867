"""Train a masked model at (close to) the pruned model's speed: skip the dead output rows.

For ``y = x @ (W * m)^T`` only the live output rows ``L`` need computing::

    forward    y[..., L] = x @ W_L^T          (dead columns of y: 0, before the bias hook)
    backward   grad_x    = g[..., L] @ W_L
               grad_W[L] = g[..., L]^T @ x    (dead rows of grad_W: exactly 0)

:func:`skip_masked_rows` does this for every ``nn.Linear`` and ``nn.Conv2d`` (``groups=1``) that
carries this package's :class:`~structprune_triton.FakeStructuredSparsity` on its weight, prepared as
the package's pruners prepare them (bias moved to ``_bias`` behind the bias hook). It sets one
instance attribute, ``module.forward``, to a :class:`LiveRowsForward` object: parameters, buffers,
parametrizations, the module's type, its hooks and ``state_dict()`` keys are untouched, and
``skip_masked_rows(model, enabled=False)`` deletes the attribute again (the class's dense forward).
The bias hook still runs after the forward, so dead channels get what it gives them: zero, or the
unpruned bias when ``prune_bias`` is False; ``_bias`` is still masked in place and gets no gradient.

How it computes (plain torch ops, so eager, autograd and ``torch.compile(fullgraph=True)`` all work;
the live rows are gathered, not copied into a smaller module)::

    idx = live rows, padded with dead rows to a multiple of LIVE_ROW_MULTIPLE   (computed on refresh)
    w   = row_mask(original[idx], mask[idx])    # the parametrization's own arithmetic on those rows
    y   = zeros(..., N, ...).index_copy_(channel_dim, idx, linear_or_conv(x, w))

``mask[idx]`` is read on every call, so a padding row (dead) contributes exact zeros and a row that
died after the last refresh is exactly zero too; soft (float) masks scale rows as usual.

The live set and when it is refreshed (the contract)
-----------------------------------------------------
``idx`` is computed from the mask *when the mask changes*, not on every call (computing it needs
one host synchronisation: the live count). It is refreshed

1. by :func:`skip_masked_rows` and by :func:`refresh_live_rows` (call it after editing masks
   yourself, outside a pruner's ``step()``);
2. by ``step()`` of this package's pruners (``structprune_triton.pruner``), after ``update_mask``;
3. in eager mode, at the start of a forward whose mask was visibly replaced or edited: a different
   mask object (``param.mask = new``), different storage (``mask.data = new``, ``model.to(...)``)
   or a bumped version counter (``mask[i] = False``, ``mask.fill_(1)``). This check is host-only
   (a few attribute reads, no synchronisation).

Edits through ``.data`` in place (``mask.data[i] = False``: what upstream's ``SaliencyPruner`` does)
do not bump the version counter and are invisible to (3), and a compiled graph runs no host check
at all. Such edits are still safe:

* a row that *died* since the refresh is exactly zero (``mask[idx]`` is read on every call): only
  its compute is wasted until the next refresh;
* a row that *came alive* outside ``idx`` would be wrong, so every call also checks on the device,
  without a host sync, that no row outside ``idx`` is live, with ``torch._assert_async``: on CPU
  that raises ``RuntimeError``; on CUDA it is a device-side assert, which ends the CUDA context.
  So a stale live set is never silently used; :func:`refresh_live_rows` before the forward avoids
  the assert. ``verify=False`` drops this check (a few tiny kernels per layer per call): then you
  must refresh after any edit that may revive rows outside a pruner's ``step()``.

torch.compile
-------------
``idx`` is a plain tensor attribute, so a compiled graph reads the current one on every call. A
refresh that keeps the padded count (the live count changed within the same multiple of
``LIVE_ROW_MULTIPLE``) replaces ``idx`` by a tensor of the same shape: no recompile. When the
padded count moves to another bucket, ``idx`` has a new length: with ``dynamic=True`` the graph
takes it as a symbolic size (no recompile, unless duck sizing had tied the old length to another
dim of the same value); with the default ``dynamic=None`` Dynamo recompiles once, at the first
bucket change, and then treats that length as dynamic; with ``dynamic=False`` every new bucket
compiles a graph. Switching a layer between the skipping and the dense path (see the thresholds
below) recompiles.

When skipping does not pay
--------------------------
At refresh, a layer takes the dense path when its padded live fraction exceeds
:data:`SKIP_MAX_DENSITY` or its weight has fewer than :data:`SKIP_MIN_NUMEL` elements (gathering
rows and scattering the output then cost more than the rows saved). Both are module constants, set
from CPU measurements (one thread; the numbers are next to the constants), to be re-measured on a GPU.

Limits
------
* Dead rows are skipped in forward *and* backward: what a dead channel *would* output
  (``x @ W_dead^T``, before masking) and the gradient its weights or its mask entry would get
  (``g[..., dead]^T @ x``) are never computed. So a mask learned by gradient (reviving a channel
  needs the gradient w.r.t. its mask entry while it is masked) and saliency scores that need the
  outputs or gradients of dead channels (activation- or Taylor-based) cannot use skipped channels:
  run those steps with ``skip_masked_rows(model, enabled=False)``. Weight-based scores (L1 norm:
  ``SaliencyPruner``; ``FPGMPruner``) work: the dead rows of ``original`` are kept and get zero
  gradient, exactly as on the dense masked path.
* Only ``nn.Linear`` and ``nn.Conv2d`` with ``groups=1``, their class's own ``forward``, no bias on the
  module itself (the pruners move it to ``_bias``), and exactly one parametrization on ``weight``
  (ours, with its own ``forward``). Other modules keep the dense path.
* Sums run over the live rows only: outputs and gradients equal the dense masked path up to fp32
  (or bf16) rounding order, not bitwise. Non-finite values: a dead output's gradient, if inf/NaN,
  does not reach ``grad_x`` (the dense path's ``inf * 0`` gives NaN there).
* Moving the model (``.to()``) is picked up by the eager check; refresh before running a compiled
  graph on a moved model.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .functional import row_mask
from .parametrization import FakeStructuredSparsity

__all__ = [
    "LIVE_ROW_MULTIPLE",
    "SKIP_MAX_DENSITY",
    "SKIP_MIN_NUMEL",
    "LiveRowsForward",
    "refresh_live_rows",
    "skip_masked_rows",
]

# The live set is padded with dead rows to a multiple of this, so that under torch.compile a
# changing live count within the same bucket keeps every shape (no recompile).
LIVE_ROW_MULTIPLE: int = 64
# A layer skips rows only if (padded live rows) / (rows) is at most this; above, the dense path.
# CPU, 1 thread, fwd+bwd, eager, skip vs dense: Linear 1024x1024 batch 256 at density 0.25 / 0.5 /
# 0.75 / 0.9: 2.9x / 1.6x / 1.16x / 0.8x; Linear 512x512 batch 128: 2.1x / 1.3x / 0.9x / 0.74x.
# A first value: to be set by GPU measurement.
SKIP_MAX_DENSITY: float = 0.75
# Layers whose weight has fewer elements than this take the dense path: the gather, scatter and
# mask check cost a fixed ~0.1 ms per call on CPU. Same measurement: Conv2d 64->128 3x3 (74K weights),
# 16x16, batch 16: 2x at density 0.5; Linear 256x256 batch 64: 1.15x at 0.25, even at 0.5; Conv2d
# 32->64 (18K weights): slower. A first value: to be set by GPU measurement.
SKIP_MIN_NUMEL: int = 1 << 16

_SUPPORTED = (nn.Linear, nn.Conv2d)
_STALE_MESSAGE = (
    "structprune_triton.skip_masked_rows: a row outside the live set computed at the last refresh is "
    "live (a mask edited through .data, or inside a compiled graph's run, revived it); call "
    "structprune_triton.refresh_live_rows(model) after editing masks"
)


def _structured_param(module: nn.Module) -> FakeStructuredSparsity | None:
    """``module``'s weight parametrization if the module can skip rows, else None."""
    if not isinstance(module, _SUPPORTED) or module.bias is not None:
        return None
    for cls in _SUPPORTED:
        if isinstance(module, cls) and type(module).forward is not cls.forward:
            return None  # a subclass with its own forward: we cannot know what it computes
    if isinstance(module, nn.Conv2d) and module.groups != 1:
        return None
    if not parametrize.is_parametrized(module, "weight"):
        return None
    plist = module.parametrizations.weight
    if len(plist) != 1:
        return None
    p = plist[0]
    if not isinstance(p, FakeStructuredSparsity) or type(p).forward is not FakeStructuredSparsity.forward:
        return None
    mask = p.mask
    if not isinstance(mask, Tensor) or mask.dim() != 1 or mask.shape[0] != plist.original.shape[0]:
        return None
    return p


def _first_param(module: nn.Module) -> nn.Module | None:
    """The only parametrization of ``module.weight`` (fast dict lookups), or None."""
    pz = module._modules.get("parametrizations")
    plist = pz._modules.get("weight") if pz is not None else None
    if plist is None or len(plist) != 1:
        return None
    return plist._modules.get("0")


def _padded(count: int, rows: int) -> int:
    """``count`` rounded up to a multiple of :data:`LIVE_ROW_MULTIPLE` (at least one), at most ``rows``."""
    m = max(1, LIVE_ROW_MULTIPLE)
    return min(rows, max(m, -(-count // m) * m))


class LiveRowsForward:
    """Replacement ``forward`` of one module (stored as ``module.forward``): the dense class forward,
    or the live rows only; holds the live set and the host-side snapshot of the mask it came from.

    Attributes read by compiled graphs: ``skip`` (bool), ``idx`` (int64, the padded live rows,
    ascending), ``in_set`` (bool, one per row: row is in ``idx``).
    """

    def __init__(self, module: nn.Module, verify: bool = True) -> None:
        self.module = module
        self.verify = verify
        self.skip = False
        self.idx: Tensor | None = None
        self.in_set: Tensor | None = None
        self.live_count = 0
        # host-side snapshot of the mask the live set was computed from
        self._param: nn.Module | None = None
        self._has_bias = False
        self._mask: Tensor | None = None
        self._storage: Any = None  # keeps the old storage alive, so its address cannot be reused
        self._ptr = -1
        self._version = -1

    def _dense(self, *args: Any, **kwargs: Any) -> Tensor:
        return type(self.module).forward(self.module, *args, **kwargs)

    def stale(self) -> bool:
        """True if the mask was visibly replaced or edited, or the module's parametrization or bias
        changed, since the last refresh. Host-only (dict lookups, the mask's version counter and
        address: about a microsecond); every eager call runs it."""
        module = self.module
        p = _first_param(module)
        if p is not self._param or (module._parameters.get("bias") is not None) != self._has_bias:
            return True
        if p is None:
            return False
        mask = p._buffers.get("mask")
        if not isinstance(mask, Tensor):
            return mask is not self._mask
        return mask is not self._mask or mask._version != self._version or mask.data_ptr() != self._ptr

    @torch.no_grad()
    def refresh(self) -> None:
        """Recompute the live set from the current mask (one host sync) and choose the path."""
        module = self.module
        self.skip = False
        self.idx = self.in_set = None
        self._param = _first_param(module)
        self._has_bias = module._parameters.get("bias") is not None
        mask = self._param._buffers.get("mask") if self._param is not None else None
        self._mask = mask
        self._storage = mask.untyped_storage() if isinstance(mask, Tensor) else None
        self._ptr = mask.data_ptr() if isinstance(mask, Tensor) else -1
        self._version = mask._version if isinstance(mask, Tensor) else -1
        if _structured_param(module) is None:
            return
        keep = mask if mask.dtype == torch.bool else mask != 0
        rows = mask.shape[0]
        self.live_count = count = int(keep.sum())  # the host sync
        padded = _padded(count, rows)
        if padded > SKIP_MAX_DENSITY * rows or _weight_numel(module) < SKIP_MIN_NUMEL:
            return
        # live rows first, then dead ones (each ascending): the first `padded` are the live set
        # padded with dead rows, whose outputs are exact zeros written to dead columns.
        order = torch.argsort(keep.logical_not().to(torch.uint8), stable=True)
        idx = order[:padded].sort().values.contiguous()  # fresh tensor: storage offset 0
        self.in_set = torch.zeros(rows, dtype=torch.bool, device=mask.device).index_fill_(0, idx, True)
        self.idx = idx
        self.skip = True

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        module = self.module
        if not torch.compiler.is_compiling():
            if self.stale():
                self.refresh()
        elif not parametrize.is_parametrized(module, "weight"):
            return self._dense(*args, **kwargs)  # e.g. pruned by prune() while skipping was on
        if not self.skip or kwargs or len(args) != 1:
            return self._dense(*args, **kwargs)
        return self._live_forward(args[0])

    def _live_forward(self, x: Tensor) -> Tensor:
        module = self.module
        plist = module.parametrizations.weight
        mask = plist[0].mask
        idx = self.idx
        if self.verify:
            torch._assert_async(torch.logical_or(self.in_set, mask == 0).all(), _STALE_MESSAGE)
        w = row_mask(plist.original.index_select(0, idx), mask.index_select(0, idx))
        if isinstance(module, nn.Linear):
            y = F.linear(x, w)
            dim = y.dim() - 1
        else:
            y = module._conv_forward(x, w, None)
            dim = y.dim() - 3
        shape = list(y.shape)
        shape[dim] = mask.shape[0]
        fmt = torch.contiguous_format
        if y.dim() == 4 and not y.is_contiguous() and y.is_contiguous(memory_format=torch.channels_last):
            fmt = torch.channels_last  # keep the dense path's memory format
        out = torch.empty(shape, dtype=y.dtype, device=y.device, memory_format=fmt).zero_()
        return out.index_copy_(dim, idx, y)

    def __repr__(self) -> str:
        rows = self.in_set.shape[0] if self.in_set is not None else "?"
        path = f"skip, {self.live_count} live of {rows} rows, padded to {self.idx.shape[0]}" if self.skip else "dense"
        return f"LiveRowsForward({path}, verify={self.verify})"


def _weight_numel(module: nn.Module) -> int:
    return module.parametrizations.weight.original.numel()


def _installed(module: nn.Module) -> LiveRowsForward | None:
    fwd = module.__dict__.get("forward")
    return fwd if isinstance(fwd, LiveRowsForward) else None


def skip_masked_rows(model: nn.Module, enabled: bool = True, *, verify: bool = True) -> nn.Module:
    """Make every eligible ``nn.Linear``/``nn.Conv2d`` in ``model`` compute only its live output rows
    (forward and backward), or with ``enabled=False`` restore the dense path. In place; returns
    ``model``. See the module docstring for what is eligible, when the live set is refreshed, and
    ``verify`` (a device-side check that no row outside the live set is live; default on)."""
    for module in model.modules():
        fwd = _installed(module)
        if not enabled:
            if fwd is not None:
                del module.__dict__["forward"]
            continue
        if fwd is None:
            if _structured_param(module) is None:
                continue
            fwd = LiveRowsForward(module, verify)
            module.forward = fwd
        fwd.verify = verify
        fwd.refresh()
    return model


def refresh_live_rows(model: nn.Module) -> int:
    """Recompute the live set of every layer of ``model`` on which :func:`skip_masked_rows` is
    enabled, from its current mask (one host sync per layer). Call it after editing masks outside a
    pruner's ``step()`` (which calls it), and before a compiled graph runs on them. Returns how many
    layers now skip rows."""
    n = 0
    for module in model.modules():
        fwd = _installed(module)
        if fwd is not None:
            fwd.refresh()
            n += fwd.skip
    return n

"""One layer's replacement forward: dead output rows skipped, and input channels skipped where the
model's graph proves them exact zeros (:class:`~structprune_triton.graph.channels.InputChannels`)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..dispatch import transformed
from ..graph.channels import InputChannels
from ..graph.norm_mask import mask_of
from ..ops.row_mask import row_mask
from ..parametrization import FakeStructuredSparsity
from .gather import assert_zero_outside, gather, is_channels_last, place, select

SUPPORTED = (nn.Linear, nn.Conv2d)
_STALE_ROWS = (
    "structprune_triton.skip_masked_rows: a row outside the live set computed at the last refresh is "
    "live (a mask edited through .data, or inside a compiled graph's run, revived it); call "
    "structprune_triton.refresh_live_rows(model) after editing masks"
)
_STALE_COLUMNS = (
    "structprune_triton.skip_masked_rows: an input channel this layer skips is live in the current masks (a "
    "mask edited through .data, or inside a compiled graph's run, revived it); call "
    "structprune_triton.refresh_live_rows(model) after editing masks"
)
_NONZERO_INPUT = (
    "structprune_triton.skip_masked_rows: an input channel this layer skips is not zero (the layer "
    "before it revived a channel outside its live set, or its output is no longer zero there); call "
    "structprune_triton.refresh_live_rows(model), or skip_masked_rows(model, chains=False)"
)


def plain_layer(module: nn.Module) -> bool:
    """An ``nn.Linear`` or ``nn.Conv2d`` (``groups=1``) running its class's own forward."""
    if not isinstance(module, SUPPORTED):
        return False
    cls = nn.Linear if isinstance(module, nn.Linear) else nn.Conv2d
    return type(module).forward is cls.forward and getattr(module, "groups", 1) == 1


def skippable_param(module: nn.Module) -> FakeStructuredSparsity | None:
    """``module``'s weight parametrization if the layer can skip its dead output rows, else None: a
    plain layer without ``bias`` (the pruners move it to ``_bias``) whose weight carries exactly one
    parametrization, this package's own class with its own forward, with a 1-D mask of one entry
    per row. (Stricter than the pruner's test for a structured mask, which takes upstream's class
    and subclasses anywhere in the list.)"""
    if not plain_layer(module) or module.bias is not None or not parametrize.is_parametrized(module, "weight"):
        return None
    plist = module.parametrizations.weight
    p = plist[0]
    if len(plist) != 1 or not isinstance(p, FakeStructuredSparsity):
        return None
    if type(p).forward is not FakeStructuredSparsity.forward:
        return None
    return p if mask_of(module) is not None else None


def _weight_param(module: nn.Module) -> nn.Module | None:
    """The first parametrization of ``module.weight`` (where the pruners put the mask; fast dict
    lookups), or None."""
    pz = module._modules.get("parametrizations")
    plist = pz._modules.get("weight") if pz is not None else None
    return plist._modules.get("0") if plist is not None else None


class MaskWatch:
    """Host-side snapshot of a layer's mask (on the first parametrization of its weight): its
    parametrization and mask objects, the mask's storage address and version counter, and whether
    the layer has a ``bias``. Comparing costs about a microsecond (dict lookups; no device sync)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.take()

    def take(self) -> None:
        module = self.module
        self.param = _weight_param(module)
        self.has_bias = module._parameters.get("bias") is not None
        mask = self.param._buffers.get("mask") if self.param is not None else None
        is_tensor = isinstance(mask, Tensor)
        self.mask = mask
        self.storage = mask.untyped_storage() if is_tensor else None  # keeps the address from being reused
        self.ptr = mask.data_ptr() if is_tensor else -1
        self.version = mask._version if is_tensor else -1

    def changed(self) -> bool:
        module = self.module
        p = _weight_param(module)
        if p is not self.param or (module._parameters.get("bias") is not None) != self.has_bias:
            return True
        if p is None:
            return False
        mask = p._buffers.get("mask")
        if not isinstance(mask, Tensor):
            return mask is not self.mask
        return mask is not self.mask or mask._version != self.version or mask.data_ptr() != self.ptr


def padded_live(keep: Tensor, multiple: int) -> tuple[Tensor, Tensor, int]:
    """``(idx, in_set, count)``: the indices where ``keep`` is True, padded with others to a multiple
    of ``multiple`` (ascending), a bool per entry saying which are in ``idx``, and the true count
    (one host sync)."""
    n = keep.shape[0]
    count = int(keep.sum())
    multiple = max(1, multiple)
    padded = min(n, max(multiple, -(-count // multiple) * multiple))
    # kept entries first, then the others (each ascending): the first `padded` are the padded set
    order = torch.argsort(keep.logical_not().to(torch.uint8), stable=True)
    idx = order[:padded].sort().values.contiguous()  # fresh tensor: storage offset 0
    in_set = torch.zeros(n, dtype=torch.bool, device=keep.device).index_fill_(0, idx, True)
    return idx, in_set, count


class LiveRowsForward:
    """Replacement ``forward`` of one module (stored as ``module.forward``).

    Rows: ``idx`` (int64, the live rows padded with dead ones to a multiple of ``row_multiple``,
    ascending) and ``in_set`` (bool per row) are kept whenever the module carries a structured mask;
    ``skip`` says whether this layer computes only those rows. Input columns: ``inputs`` says which
    input channels the graph proves zero (``None``: no chain); ``cols`` are the input columns
    computed and ``col_set`` (bool per channel) the channels among them when ``chain`` is True.
    Compiled graphs read these attributes on every call.
    """

    def __init__(
        self, module: nn.Module, *, verify: bool, max_density: float, min_numel: int, row_multiple: int
    ) -> None:
        self.module = module
        self.verify = verify
        self.max_density = max_density
        self.min_numel = min_numel
        self.row_multiple = row_multiple
        self.skip = self.structured = self.chain = False
        self.idx: Tensor | None = None
        self.in_set: Tensor | None = None
        self.live_count = 0
        self.watch = MaskWatch(module)
        self.inputs: InputChannels | None = None
        self.col_watches: list[MaskWatch] = []
        self.source_forwards: dict[nn.Module, LiveRowsForward] = {}
        self.cols: Tensor | None = None
        self.col_set: Tensor | None = None

    def _dense(self, *args: Any, **kwargs: Any) -> Tensor:
        return type(self.module).forward(self.module, *args, **kwargs)

    def set_inputs(self, inputs: InputChannels | None, forwards: dict[nn.Module, LiveRowsForward]) -> None:
        """Skip the input channels ``inputs`` proves zero; ``forwards``: the skipping forwards of the
        model's layers (those of ``inputs.sources`` share their live rows when they match)."""
        self.inputs = inputs
        self.col_watches = [MaskWatch(m) for m in inputs.sources] if inputs is not None else []
        self.source_forwards = {m: forwards[m] for m in inputs.sources if m in forwards} if inputs is not None else {}

    def refresh_rows(self) -> None:
        """Recompute the live set from the current mask (one host sync) and choose the row path."""
        if torch.is_inference_mode_enabled():  # tensors kept for later training steps
            with torch.inference_mode(False):
                return self._refresh_rows()
        self._refresh_rows()

    def _refresh_rows(self) -> None:
        self.watch.take()
        self.skip = self.structured = False
        self.idx = self.in_set = None
        self.live_count = 0
        if skippable_param(self.module) is None:
            return
        self.structured = True
        mask = self.watch.mask
        rows = mask.shape[0]
        self.idx, self.in_set, self.live_count = padded_live(mask != 0, self.row_multiple)
        numel = self.module.parametrizations.weight.original.numel()
        self.skip = self.idx.shape[0] <= self.max_density * rows and numel >= self.min_numel

    def refresh_cols(self) -> None:
        """Choose the input columns from the current masks of the layers ``inputs`` depends on."""
        if torch.is_inference_mode_enabled():
            with torch.inference_mode(False):
                return self._refresh_cols()
        self._refresh_cols()

    def _refresh_cols(self) -> None:
        for w in self.col_watches:
            w.take()
        self.chain = False
        self.cols = self.col_set = None
        inputs, module = self.inputs, self.module
        if inputs is None or not plain_layer(module) or module._forward_pre_hooks:
            return
        if any(mask_of(m) is None for m in inputs.sources):
            return
        weight = module.parametrizations.weight.original if parametrize.is_parametrized(module, "weight") else None
        weight = module.weight if weight is None else weight
        width = module.in_features if isinstance(module, nn.Linear) else module.in_channels
        if width != inputs.channels * inputs.group or weight.numel() < self.min_numel:
            return
        live = inputs.dead_channels().logical_not()
        if live.device != weight.device:
            return
        idx, col_set = self._shared_rows(live) or padded_live(live, self.row_multiple)[:2]
        if idx.shape[0] > self.max_density * inputs.channels:
            return
        if inputs.group > 1:  # after Flatten: channel c is the columns c*group ... c*group + group-1
            within = torch.arange(inputs.group, device=idx.device)
            idx = (idx[:, None] * inputs.group + within).reshape(-1)
        self.cols, self.col_set, self.chain = idx, col_set, True

    def _shared_rows(self, live: Tensor) -> tuple[Tensor, Tensor] | None:
        """The live rows of a source layer (its ``idx`` and ``in_set`` objects) when its live set is
        exactly ``live``. Sharing the tensor keeps its length symbolic under ``torch.compile``: a
        tensor reached only through a built-in module such as an unmasked ``nn.Conv2d`` gets a
        static shape (a recompile whenever the padded count changes)."""
        for module in self.inputs.sources:
            fwd = self.source_forwards.get(module)
            if fwd is None or fwd.row_multiple != self.row_multiple:
                continue
            if fwd.watch.changed():
                fwd.refresh_rows()
            if fwd.idx is not None and torch.equal(live, fwd.watch.mask != 0):
                return fwd.idx, fwd.in_set
        return None

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        if not torch.compiler.is_compiling():
            if transformed():  # forward AD, torch.func, jit.trace: plain torch ops give upstream's results
                return self._dense(*args, **kwargs)
            if self.watch.changed():
                self.refresh_rows()
            if any(w.changed() for w in self.col_watches):
                self.refresh_cols()
        elif self.skip and not parametrize.is_parametrized(self.module, "weight"):
            return self._dense(*args, **kwargs)  # parametrization removed while skipping was on
        if not (self.skip or self.chain) or kwargs or len(args) != 1:
            return self._dense(*args, **kwargs)
        return self._forward(args[0])

    def _forward(self, x: Tensor) -> Tensor:
        module = self.module
        is_linear = isinstance(module, nn.Linear)
        rows = self.idx if self.skip else None
        cols = self.cols if self.chain and (x.dim() == 2 or not self.inputs.only_2d) else None
        if rows is None and cols is None:
            return self._dense(x)
        channel_dim = x.dim() - 1 if is_linear else x.dim() - 3
        if self.structured:
            plist = module.parametrizations.weight
            w = fmt_source = plist.original
            mask = plist[0].mask
            if rows is not None:
                if self.verify:
                    torch._assert_async(torch.logical_or(self.in_set, mask == 0).all(), _STALE_ROWS)
                mask = mask.index_select(0, rows)
            # dead rows (padding included) exactly zero whatever their weights hold: never multiply
            # by an unmasked gathered row, so NaN/inf there cannot reach any gradient
            w = row_mask(gather(w, rows, cols), mask)
            bias = None
        else:
            w = fmt_source = module.weight
            bias = module.bias
            w = gather(w, None, cols)
        fmt = torch.contiguous_format
        if not is_linear and (is_channels_last(x) or is_channels_last(fmt_source)):
            fmt = torch.channels_last  # the dense convolution's output format
        if cols is not None:
            if self.verify:
                self._check_zero_inputs(x, channel_dim)
            x = select(x, channel_dim, cols)
        if fmt is torch.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=fmt)
            w = w.contiguous(memory_format=fmt)
        y = F.linear(x, w, bias) if is_linear else module._conv_forward(x, w, bias)
        if rows is None:
            return y
        fmt = fmt if y.dim() == 4 else torch.contiguous_format
        return place(y, channel_dim, rows, self.in_set.shape[0], fmt)

    def _check_zero_inputs(self, x: Tensor, channel_dim: int) -> None:
        """Device-side checks (no host sync) that the input channels skipped here are zero: none is
        live in the current masks, and in the first sample of ``x`` they hold exact zeros (a cheap
        sample of the data)."""
        torch._assert_async(torch.logical_or(self.col_set, self.inputs.dead_channels()).all(), _STALE_COLUMNS)
        assert_zero_outside(x, channel_dim, self.col_set, _NONZERO_INPUT)

    def __repr__(self) -> str:
        parts = []
        if self.skip:
            parts.append(f"rows: {self.live_count} live of {self.in_set.shape[0]}, padded to {self.idx.shape[0]}")
        if self.chain:
            parts.append(f"input columns: {self.cols.shape[0]} of {self.inputs.channels * self.inputs.group}")
        return f"LiveRowsForward({'; '.join(parts) or 'dense'}, verify={self.verify})"

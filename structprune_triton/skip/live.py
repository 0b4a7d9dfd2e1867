"""One layer's replacement forward: dead output rows skipped, and dead input channels skipped where
the layer before provably feeds them zeros (a chain, found by :mod:`.chains`)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..ops.row_mask import row_mask
from ..parametrization import BiasHook, FakeStructuredSparsity
from .gather import gather, select

SUPPORTED = (nn.Linear, nn.Conv2d)
_STALE_ROWS = (
    "structprune_triton.skip_masked_rows: a row outside the live set computed at the last refresh is "
    "live (a mask edited through .data, or inside a compiled graph's run, revived it); call "
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


def structured_param(module: nn.Module) -> FakeStructuredSparsity | None:
    """``module``'s weight parametrization if the module can skip output rows, else None: a plain
    layer without ``bias`` (the pruners move it to ``_bias``) and exactly one parametrization on
    ``weight``, ours, with a 1-D mask of one entry per row."""
    if not plain_layer(module) or module.bias is not None or not parametrize.is_parametrized(module, "weight"):
        return None
    plist = module.parametrizations.weight
    p = plist[0]
    if len(plist) != 1 or not isinstance(p, FakeStructuredSparsity):
        return None
    if type(p).forward is not FakeStructuredSparsity.forward:
        return None
    mask = p.mask
    if not isinstance(mask, Tensor) or mask.dim() != 1 or mask.shape[0] != plist.original.shape[0]:
        return None
    return p


def dead_outputs_zero(module: nn.Module) -> bool:
    """True if the channels ``module`` masks come out exactly zero: its only forward hooks are our
    bias hooks, and a bias behind them (``_bias``) is pruned with the mask (``prune_bias``)."""
    has_bias = getattr(module, "_bias", None) is not None
    for hook in module._forward_hooks.values():
        if type(hook).__call__ is not BiasHook.__call__ or not isinstance(hook, BiasHook):
            return False
        if has_bias and not hook.prune_bias:
            return False
    return True


def _first_param(module: nn.Module) -> nn.Module | None:
    """The only parametrization of ``module.weight`` (fast dict lookups), or None."""
    pz = module._modules.get("parametrizations")
    plist = pz._modules.get("weight") if pz is not None else None
    if plist is None or len(plist) != 1:
        return None
    return plist._modules.get("0")


def _suggests_channels_last(t: Tensor) -> bool:
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


class LiveRowsForward:
    """Replacement ``forward`` of one module (stored as ``module.forward``).

    Rows: ``idx`` (int64, the live rows padded with dead ones to a multiple of ``row_multiple``,
    ascending) and ``in_set`` (bool per row) are kept whenever the module carries a structured mask;
    ``skip`` says whether this layer computes only those rows. Chain: ``source`` is the layer whose
    dead rows feed this one's input (``None``: no chain), ``group`` its columns per channel (> 1
    after a ``Flatten``), ``cols`` the input columns computed when ``chain`` is True. Compiled graphs
    read these attributes on every call.
    """

    def __init__(
        self, module: nn.Module, *, verify: bool, max_density: float, min_numel: int, row_multiple: int
    ) -> None:
        self.module = module
        self.verify = verify
        self.max_density = max_density
        self.min_numel = min_numel
        self.row_multiple = row_multiple
        self.skip = False
        self.idx: Tensor | None = None
        self.in_set: Tensor | None = None
        self.live_count = 0
        self.structured = False  # the weight carries our mask (rows can be skipped)
        self.generation = 0  # bumped by every refresh of the rows; chained layers compare it
        self.source: LiveRowsForward | None = None
        self.group = 1
        self.chain = False
        self.cols: Tensor | None = None
        self._source_generation = -1
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
        address: about a microsecond)."""
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

    def refresh(self) -> None:
        """Recompute the live rows (one host sync), then the chain's input columns."""
        if self.source is not None and self.source.stale():
            self.source.refresh_rows()
        self.refresh_rows()
        self.refresh_cols()

    @torch.no_grad()
    def refresh_rows(self) -> None:
        """Recompute the live set from the current mask (one host sync) and choose the row path."""
        with torch.inference_mode(False):  # tensors kept for later training steps: never inference tensors
            self._refresh_rows()

    def _refresh_rows(self) -> None:
        module = self.module
        self.generation += 1
        self.skip = False
        self.idx = self.in_set = None
        self.live_count = 0
        self.structured = False
        self._param = _first_param(module)
        self._has_bias = module._parameters.get("bias") is not None
        mask = self._param._buffers.get("mask") if self._param is not None else None
        is_tensor = isinstance(mask, Tensor)
        self._mask = mask
        self._storage = mask.untyped_storage() if is_tensor else None
        self._ptr = mask.data_ptr() if is_tensor else -1
        self._version = mask._version if is_tensor else -1
        if structured_param(module) is None:
            return
        self.structured = True
        keep = mask if mask.dtype == torch.bool else mask != 0
        rows = mask.shape[0]
        self.live_count = count = int(keep.sum())  # the host sync
        multiple = max(1, self.row_multiple)
        padded = min(rows, max(multiple, -(-count // multiple) * multiple))
        # live rows first, then dead ones (each ascending): the first `padded` are the live set
        # padded with dead rows, whose outputs are exact zeros written to dead columns.
        order = torch.argsort(keep.logical_not().to(torch.uint8), stable=True)
        self.idx = order[:padded].sort().values.contiguous()  # fresh tensor: storage offset 0
        self.in_set = torch.zeros(rows, dtype=torch.bool, device=mask.device).index_fill_(0, self.idx, True)
        numel = module.parametrizations.weight.original.numel()
        self.skip = padded <= self.max_density * rows and numel >= self.min_numel

    @torch.no_grad()
    def refresh_cols(self) -> None:
        """Choose the input columns from the source's live rows (no host sync)."""
        with torch.inference_mode(False):
            self._refresh_cols()

    def _refresh_cols(self) -> None:
        self.chain = False
        self.cols = None
        source = self.source
        if source is None:
            return
        self._source_generation = source.generation
        module = self.module
        channels = source.in_set.shape[0] if source.in_set is not None else 0
        inputs = module.in_features if isinstance(module, nn.Linear) else module.in_channels
        weight = module.parametrizations.weight.original if parametrize.is_parametrized(module, "weight") else None
        weight = module.weight if weight is None else weight
        if not plain_layer(module) or channels == 0 or inputs != channels * self.group:
            return
        if source.idx.device != weight.device or module._forward_pre_hooks:
            return
        padded = source.idx.shape[0]
        if padded > self.max_density * channels or weight.numel() < self.min_numel:
            return
        cols = source.idx
        if self.group > 1:  # after Flatten: channel c is the columns c*group ... c*group + group-1
            within = torch.arange(self.group, device=cols.device)
            cols = (cols[:, None] * self.group + within).reshape(-1)
        self.cols = cols
        self.chain = True

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        if not torch.compiler.is_compiling():
            if self.stale():
                self.refresh_rows()
            source = self.source
            if source is not None:
                if source.stale():
                    source.refresh_rows()
                if source.generation != self._source_generation:
                    self.refresh_cols()
        elif self.skip and not parametrize.is_parametrized(self.module, "weight"):
            return self._dense(*args, **kwargs)  # e.g. pruned by prune() while skipping was on
        if not (self.skip or self.chain) or kwargs or len(args) != 1:
            return self._dense(*args, **kwargs)
        return self._forward(args[0])

    def _forward(self, x: Tensor) -> Tensor:
        module = self.module
        is_linear = isinstance(module, nn.Linear)
        rows = self.idx if self.skip else None
        cols = self.cols if self.chain else None
        channel_dim = x.dim() - 1 if is_linear else x.dim() - 3
        out_mask = None  # a bool mask applied to the output rather than the weight
        if self.structured:
            plist = module.parametrizations.weight
            w = fmt_source = plist.original
            mask = plist[0].mask
            if rows is not None:
                if self.verify:
                    torch._assert_async(torch.logical_or(self.in_set, mask == 0).all(), _STALE_ROWS)
                mask = mask.index_select(0, rows)
            w = gather(w, rows, cols)
            # mask whichever is smaller: the weight, or (bool masks, Linear) the output
            if mask.dtype == torch.bool and is_linear and x.numel() < w.shape[1] * x.shape[-1]:
                out_mask = mask
            else:
                w = row_mask(w, mask)
            bias = None
        else:
            w = fmt_source = module.weight
            bias = module.bias
            w = gather(w, None, cols)
        fmt = torch.contiguous_format
        if not is_linear and (_suggests_channels_last(x) or _suggests_channels_last(fmt_source)):
            fmt = torch.channels_last  # the dense convolution's output format
        if cols is not None:
            if self.verify:
                self._check_zero_inputs(x, channel_dim)
            x = select(x, channel_dim, cols)
        if fmt is torch.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=fmt)
            w = w.contiguous(memory_format=fmt)
        y = F.linear(x, w, bias) if is_linear else module._conv_forward(x, w, bias)
        if out_mask is not None:  # dead rows exactly zero, whatever their weights hold
            y = torch.where(out_mask, y, 0.0)
        if rows is None:
            return y
        shape = list(y.shape)
        shape[channel_dim] = self.in_set.shape[0]
        fmt = fmt if y.dim() == 4 else torch.contiguous_format
        out = torch.empty(shape, dtype=y.dtype, device=y.device, memory_format=fmt).zero_()
        return out.index_copy_(channel_dim, rows, y)

    def _check_zero_inputs(self, x: Tensor, channel_dim: int) -> None:
        """Device-side checks (no host sync) that the input channels skipped here are zero: no
        channel outside the source's live set is live (unless the source checks that itself), and
        in the first sample of ``x`` those channels hold exact zeros (a cheap sample of the data)."""
        source = self.source
        if not source.skip:
            mask = source.module.parametrizations.weight[0].mask
            torch._assert_async(torch.logical_or(source.in_set, mask == 0).all(), _STALE_ROWS)
        with torch.no_grad():
            sample = x.detach()[(0,) * channel_dim]  # a view: channels (and spatial dims) only
            peak = torch.linalg.vector_norm(sample.reshape(source.in_set.shape[0], -1), float("inf"), dim=1)
            torch._assert_async(torch.where(source.in_set, 0, peak).eq(0).all(), _NONZERO_INPUT)

    def __repr__(self) -> str:
        parts = []
        if self.skip:
            parts.append(f"rows: {self.live_count} live of {self.in_set.shape[0]}, padded to {self.idx.shape[0]}")
        if self.chain:
            parts.append(f"input columns: {self.cols.shape[0]} of {self.source.in_set.shape[0] * self.group}")
        return f"LiveRowsForward({'; '.join(parts) or 'dense'}, verify={self.verify})"

"""A compacted layer's forward: the pruned layer's arithmetic on the compact weight, dense-shaped
input and output (so the rest of the model, the bias hook and any other hook are unchanged)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..dispatch import transformed
from ..ops.row_mask import row_mask
from ..skip.gather import assert_zero_outside, is_channels_last, place, select
from ..skip.live import MaskWatch, skippable_param
from .blocks import Piece
from .handoff import Segment
from .inputs import LiveInputs

if TYPE_CHECKING:
    from .context import CompactTraining

__all__ = ["CompactForward"]

_REVIVED_ROW = (
    "structprune_triton.compact_training: a row outside the compacted live rows is live (a mask "
    "edited through .data revived it); call ctx.refresh() after editing masks yourself"
)
_REVIVED_INPUT = (
    "structprune_triton.compact_training: an input column this layer leaves out is not zero (the "
    "layer before it revived a channel through an invisible mask edit); call ctx.refresh()"
)
_TRANSFORMED = (
    "structprune_triton.compact_training: forward-mode AD, torch.func transforms and torch.jit.trace "
    "are not supported on a compacted layer (the full weights are not current inside the block); run "
    "them outside the block, whose exit writes the full parameters back"
)


class CompactForward:
    """Replacement ``forward`` (an instance attribute) of one ``nn.Linear``/``nn.Conv2d`` while
    compact training is on. With a :class:`Piece` it computes only the live rows from the live input
    columns, on the compact weight; without one it calls the forward it replaced."""

    def __init__(self, ctx: CompactTraining, module: nn.Module, live_inputs: LiveInputs | None) -> None:
        self.ctx = ctx
        self.module = module
        self.previous = module.__dict__.get("forward")  # e.g. skip_masked_rows' forward, put back at exit
        self.live_inputs = live_inputs
        self.structured = skippable_param(module) is not None
        self.is_linear = isinstance(module, nn.Linear)
        self.piece: Piece | None = None
        self.in_rows: Tensor | None = None  # True for the rows of the piece (verify)
        self.in_cols: Tensor | None = None  # True for the input columns of the piece (verify)
        self.read_hook: Any = None
        self.segment_out: Segment | None = None  # this layer hands its compact output on
        self.segment_in: Segment | None = None  # this layer takes a compact input
        self.watch = MaskWatch(module)  # this layer's own mask

    # ---- live sets ---------------------------------------------------------------------------

    def weight(self) -> nn.Parameter:
        """The full trained weight: ``parametrizations.weight.original`` of a masked layer."""
        if self.structured:
            return self.module.parametrizations.weight.original
        return self.module.weight

    def mask(self) -> Tensor | None:
        return self.module.parametrizations.weight[0].mask if self.structured else None

    def wanted(self) -> tuple[Tensor | None, Tensor | None]:
        """Live rows and live input columns from the current masks (``None``: all); host syncs."""
        rows = cols = None
        if self.structured:
            alive = self.mask() != 0
            if not bool(alive.all()):
                rows = alive.nonzero().flatten()
        if self.live_inputs is not None:
            live = self.live_inputs()
            if live.shape == self.weight().shape[1:2] and not bool(live.all()):
                cols = live.nonzero().flatten()
        if not self.is_linear:
            # torch runs no convolution with 0 output or input channels: keep one dead one, which
            # stays exact (its output is masked to zero, its input is zero: its gradient is zero)
            rows = rows if rows is None or rows.numel() else rows.new_zeros(1)
            cols = cols if cols is None or cols.numel() else cols.new_zeros(1)
        return rows, cols

    def set_piece(self, piece: Piece | None) -> None:
        self.piece = piece
        self.in_rows = self.in_cols = None
        if piece is None:
            return
        weight = piece.full
        if piece.rows is not None:
            self.in_rows = torch.zeros(weight.shape[0], dtype=torch.bool, device=weight.device)
            self.in_rows[piece.rows] = True
        if piece.cols is not None:
            self.in_cols = torch.zeros(weight.shape[1], dtype=torch.bool, device=weight.device)
            self.in_cols[piece.cols] = True

    # ---- the forward -------------------------------------------------------------------------

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        if not torch.compiler.is_compiling():
            self.ctx.check_layer(self)
            if self.piece is not None and transformed():
                raise RuntimeError(_TRANSFORMED)
        piece = self.piece
        if piece is None or len(args) + len(kwargs) != 1:
            return self._previous(*args, **kwargs)
        x = args[0] if args else next(iter(kwargs.values()))
        if self.structured and not parametrize.is_parametrized(self.module, "weight"):
            return self._previous(x)  # the parametrization was removed inside the block
        return self._forward(x, piece)

    def _previous(self, *args: Any, **kwargs: Any) -> Tensor:
        if self.previous is not None:
            return self.previous(*args, **kwargs)
        return type(self.module).forward(self.module, *args, **kwargs)

    def _forward(self, x: Tensor, piece: Piece) -> Tensor:
        module = self.module
        rows, cols = piece.rows, piece.cols
        compiling = torch.compiler.is_compiling()
        compact_in = not compiling and self.segment_in is not None and self.segment_in.take(x)
        out = self.segment_out
        compact_out = not compiling and out is not None and self.ctx.in_root and out.may_emit()
        channel_dim = x.dim() - 1 if self.is_linear else x.dim() - 3
        w = piece.compact
        bias = None
        if self.structured:
            mask = module.parametrizations.weight[0].mask
            if rows is not None:
                if self.ctx.verify:
                    torch._assert_async(torch.logical_or(self.in_rows, mask == 0).all(), _REVIVED_ROW)
                mask = mask.index_select(0, rows)
            # the mask is applied even though every row of the piece was live at compaction: a row
            # that died since (an edit the refresh did not see) then computes as in masked dense
            w = row_mask(w, mask)
        else:
            bias = module.bias
        if cols is not None and not compact_in:
            if self.ctx.verify:
                torch._assert_async(torch.logical_or(self.in_cols, ~self.live_inputs()).all(), _REVIVED_INPUT)
                assert_zero_outside(x, channel_dim, self.in_cols, _REVIVED_INPUT)
            x = select(x, channel_dim, cols)
        fmt = torch.contiguous_format
        if not self.is_linear and (is_channels_last(x) or is_channels_last(piece.compact)):
            fmt = torch.channels_last  # the dense convolution's output format
            x = x.contiguous(memory_format=fmt)
            w = w.contiguous(memory_format=fmt)
        y = F.linear(x, w, bias) if self.is_linear else module._conv_forward(x, w, bias)
        if compact_out:
            return out.emit(self._add_bias(y, rows, channel_dim))
        if rows is None:
            return y
        return place(y, channel_dim, rows, piece.full.shape[0], fmt if y.dim() == 4 else torch.contiguous_format)

    def _add_bias(self, y: Tensor, rows: Tensor, channel_dim: int) -> Tensor:
        """The bias hook's work on the live rows: prune the bias in place, add its live entries."""
        bias = self.module._parameters.get("_bias")
        if bias is None:
            return y
        data = bias.data  # as the hook: no gradient for _bias
        data.masked_fill_(self.mask() == 0, 0)
        shape = [1] * y.dim()
        shape[channel_dim] = rows.numel()
        return y + data.index_select(0, rows).view(shape)

    def __repr__(self) -> str:
        piece = self.piece
        if piece is None:
            return "CompactForward(dense)"
        w = piece.full
        rows = w.shape[0] if piece.rows is None else piece.rows.numel()
        cols = w.shape[1] if piece.cols is None else piece.cols.numel()
        return f"CompactForward(rows {rows} of {w.shape[0]}, input columns {cols} of {w.shape[1]})"

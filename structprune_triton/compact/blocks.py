"""One compacted parameter (a :class:`Piece`): the live block of a full parameter as its own
``nn.Parameter``, the optimizer state moved with it, and the exact write-back of both.

A parameter of shape ``(out, in, ...)`` has live rows ``rows`` (output channels whose mask is not
zero) and live input columns ``cols`` (inputs not provably zero); ``None`` means all of them. The
compact parameter is ``full[rows][:, cols]``. The other entries ("dead": the dead rows, and the dead
columns of live rows) are two rectangular parts that are not trained inside the block: their value
and optimizer state are frozen in the full tensors and brought up to date at write-back by
:mod:`.replay`, which steps them as the optimizer would have with a zero gradient.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..skip.gather import is_channels_last

__all__ = ["Piece", "put", "same_block", "take"]


def take(t: Tensor, rows: Tensor | None, cols: Tensor | None) -> Tensor:
    """A new tensor holding ``t[rows][:, cols]`` (``None``: all), in ``t``'s memory format."""
    if rows is not None and cols is not None:
        out = t[rows[:, None], cols]  # one pass (on CPU faster than two index_select for large blocks)
    else:
        out = t if rows is None else t.index_select(0, rows)
        out = out if cols is None else out.index_select(1, cols)
    if out is t:
        return t.clone(memory_format=torch.preserve_format)
    return out.contiguous(memory_format=torch.channels_last) if is_channels_last(t) else out


def put(t: Tensor, rows: Tensor | None, cols: Tensor | None, values: Tensor) -> None:
    """``t[rows][:, cols] = values`` in place (``None``: all)."""
    if rows is None and cols is None:
        t.copy_(values)
    elif cols is None:
        t.index_copy_(0, rows, values)
    elif rows is None:
        t.index_copy_(1, cols, values)
    else:
        t.index_put_((rows[:, None], cols), values)


def same_block(piece: Piece | None, rows: Tensor | None, cols: Tensor | None) -> bool:
    """Whether ``piece`` is the block of live ``rows`` and ``cols`` (``None``: all; no piece: the
    whole parameter, nothing to compact)."""
    if piece is None:
        return rows is None and cols is None
    return _equal(piece.rows, rows) and _equal(piece.cols, cols)


def _equal(a: Tensor | None, b: Tensor | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and bool(torch.equal(a, b))


def complement(live: Tensor | None, n: int) -> Tensor | None:
    """The indices in ``range(n)`` not in ``live`` (ascending), or None if ``live`` is None."""
    if live is None:
        return None
    keep = torch.ones(n, dtype=torch.bool, device=live.device)
    keep[live] = False
    return keep.nonzero().flatten()


def per_entry(key: str, value: Any, like: Tensor) -> bool:
    """Whether optimizer state ``value`` holds one entry per element of the parameter ``like``."""
    return key != "step" and isinstance(value, Tensor) and value.shape == like.shape


def gather_state(state: dict[str, Any] | None, full: Tensor, rows: Tensor | None, cols: Tensor | None):
    """The optimizer state of ``full[rows][:, cols]`` taken from the state of ``full`` (copies)."""
    out: dict[str, Any] = {}
    for key, value in (state or {}).items():
        if per_entry(key, value, full):
            out[key] = take(value, rows, cols)
        else:
            out[key] = value.clone() if isinstance(value, Tensor) else value
    return out


class Piece:
    """The compact parameter of one full parameter (a layer's weight), and where it sits: param
    group ``group`` of the optimizer, in place of ``full``. ``full_state`` is the optimizer state of
    ``full``, held aside while the compact parameter trains (brought up to date by write-backs);
    ``records`` the optimizer steps, since the last write-back, in which the compact parameter had a
    gradient (see :mod:`.replay`)."""

    def __init__(
        self, full: nn.Parameter, rows: Tensor | None, cols: Tensor | None, group: int, state: dict | None
    ) -> None:
        self.full = full
        self.rows, self.cols = rows, cols
        self.dead_rows = complement(rows, full.shape[0])
        self.dead_cols = complement(cols, full.shape[1])
        self.group = group
        self.full_state = state
        self.compact = nn.Parameter(take(full.detach(), rows, cols), requires_grad=full.requires_grad)
        self.records: list[Any] = []
        self.version = self.compact._version
        # which dead rows / input columns have non-zero Adam moments (see closed.py), found at the
        # first write-back: a dead entry's moments stay zero or non-zero while the piece lives
        self.moving: Any = None

    def compact_state(self) -> dict[str, Any]:
        """The optimizer state of the compact parameter at compaction, taken from ``full_state``."""
        return gather_state(self.full_state, self.full, self.rows, self.cols)

    def dead_parts(self) -> list[tuple[Tensor | None, Tensor | None]]:
        """The dead entries as (rows, cols) rectangles: the dead rows, then the dead columns of the
        live rows."""
        parts = []
        if self.dead_rows is not None and self.dead_rows.numel():
            parts.append((self.dead_rows, None))
        if self.dead_cols is not None and self.dead_cols.numel():
            parts.append((self.rows, self.dead_cols))
        return parts

    def grad_fits(self) -> bool:
        """Whether the pending gradient of ``full`` (if any) is exactly zero outside the live block.
        If not (a mask changed between backward() and optimizer.step()), a masked dense step would
        apply it to dead entries, so the layer must train dense until the gradient is cleared."""
        grad = self.full.grad
        return grad is None or not any(take(grad, r, c).count_nonzero().item() for r, c in self.dead_parts())

    def write_live(self, compact_state: dict[str, Any] | None) -> None:
        """Write the compact parameter and its optimizer state into the full ones (the dead entries
        of state tensors created inside the block are written by :meth:`write_dead`)."""
        put(self.full.data, self.rows, self.cols, self.compact.detach())
        self.version = self.compact._version
        if not compact_state:
            return
        if self.full_state is None:
            self.full_state = {}
        for key, value in compact_state.items():
            if per_entry(key, value, self.compact):
                target = self.full_state.get(key)
                if target is None:
                    target = self.full_state[key] = torch.zeros_like(self.full, memory_format=torch.preserve_format)
                put(target, self.rows, self.cols, value)
            else:
                self.full_state[key] = value.clone() if isinstance(value, Tensor) else value

    def write_dead(self, parts: list[tuple[Tensor | None, Tensor | None, Tensor, dict[str, Any]]]) -> None:
        """Write stepped dead parts ``(rows, cols, values, state)`` into the full parameter and state."""
        for rows, cols, values, state in parts:
            put(self.full.data, rows, cols, values)
            for key, value in state.items():
                if not per_entry(key, value, values):
                    continue  # the step count: the compact parameter's, written by write_live
                if self.full_state is None:
                    self.full_state = {}
                target = self.full_state.get(key)
                if target is None:
                    target = self.full_state[key] = torch.zeros_like(self.full, memory_format=torch.preserve_format)
                put(target, rows, cols, value)

    def full_grad(self) -> Tensor | None:
        """The compact gradient written into a full-size zero gradient (None if there is none)."""
        grad = self.compact.grad
        if grad is None:
            return None
        out = torch.zeros_like(self.full, memory_format=torch.preserve_format)
        put(out, self.rows, self.cols, grad.detach())
        return out

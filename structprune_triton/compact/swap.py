"""The optimizer's side of compaction: a compact parameter takes the full one's place in its param
group (same group dict, same position) with the state gathered to match, and gives it back with
everything written back exactly (:mod:`.replay` for the dead entries)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .blocks import Piece, take
from .replay import replay
from .support import check_state

__all__ = ["compact_in", "give_back", "locate", "show", "write_back", "zero_grads"]


def locate(optimizer: torch.optim.Optimizer, param: Tensor) -> tuple[int, int]:
    """(group, position) of ``param`` in the optimizer's param groups."""
    for gi, group in enumerate(optimizer.param_groups):
        for pi, p in enumerate(group["params"]):
            if p is param:
                return gi, pi
    raise RuntimeError("compact_training: a compacted parameter is no longer in the optimizer's param groups")


def compact_in(optimizer: torch.optim.Optimizer, full: Tensor, rows: Any, cols: Any) -> Piece | None:
    """Put the live block of ``full`` (a new compact parameter) and its state in the optimizer in
    place of ``full``; the pending gradient moves with it. None (nothing changed) if that gradient is
    not zero outside the block: the parameter must train dense until it is cleared."""
    gi, pi = locate(optimizer, full)
    piece = Piece(full, rows, cols, gi, None)
    if not piece.grad_fits():
        return None
    state = optimizer.state.pop(full, None)
    if state:
        check_state(optimizer, state)
    piece.full_state = state
    if full.grad is not None:
        piece.compact.grad = take(full.grad, rows, cols)
        full.grad = None
    compact_state = piece.compact_state()
    if compact_state:
        optimizer.state[piece.compact] = compact_state
    optimizer.param_groups[gi]["params"][pi] = piece.compact
    return piece


def write_back(optimizer: torch.optim.Optimizer, pieces: list[Piece]) -> None:
    """Make the full parameters and their state exact (the pieces stay in the optimizer)."""
    with torch.no_grad(), torch.inference_mode(False):
        replay(type(optimizer), pieces)
        for piece in pieces:
            piece.write_live(optimizer.state.get(piece.compact))


def give_back(optimizer: torch.optim.Optimizer, pieces: list[Piece]) -> None:
    """Write back, then put each full parameter (with its gradient, dense-shaped) and its state back
    in the optimizer in place of the compact one."""
    write_back(optimizer, pieces)
    for piece in pieces:
        with torch.no_grad(), torch.inference_mode(False):
            piece.full.grad = piece.full_grad()
        gi, pi = locate(optimizer, piece.compact)
        optimizer.param_groups[gi]["params"][pi] = piece.full
        optimizer.state.pop(piece.compact, None)
        if piece.full_state:
            optimizer.state[piece.full] = piece.full_state


def show(optimizer: torch.optim.Optimizer, pieces: list[Piece], stash: dict[Piece, Any], full: bool) -> None:
    """Swap the full parameters and their (written-back) state into the optimizer (``full``), the
    compact state kept in ``stash``, or back again; for ``optimizer.state_dict()``."""
    for piece in pieces:
        old, new = (piece.compact, piece.full) if full else (piece.full, piece.compact)
        gi, pi = locate(optimizer, old)
        optimizer.param_groups[gi]["params"][pi] = new
        state = optimizer.state.pop(old, None)
        if full:
            stash[piece] = state
        state = piece.full_state if full else stash.pop(piece, None)
        if state:
            optimizer.state[new] = state


def zero_grads(pieces: list[Piece], set_to_none: bool) -> None:
    """``Module.zero_grad`` for the compact parameters."""
    for piece in pieces:
        p = piece.compact
        if p.grad is None:
            continue
        if set_to_none:
            p.grad = None
            continue
        if p.grad.grad_fn is not None:
            p.grad.detach_()
        else:
            p.grad.requires_grad_(False)
        p.grad.zero_()

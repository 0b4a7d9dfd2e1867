"""Exact write-back of the entries a compact parameter leaves out, by replaying the optimizer.

In masked dense training every entry of a masked weight outside the live block gets an exactly
zero gradient, but the optimizer still moves it: weight decay (coupled in SGD and Adam, decoupled
in AdamW), momentum and Nesterov, Adam's moments and bias corrections, and the per-tensor step
count all act on it. Those updates are element-wise and a tensor's state is its own, so they can
be computed later, on the dead entries alone: every optimizer step inside the block is recorded
(its hyperparameters, which schedulers may change between steps, and which compact parameters had
a gradient); at write-back the dead entries (the rectangles of :meth:`.Piece.dead_parts`) become
small parameters of a fresh optimizer of the *same class* with the same per-group options
(``foreach`` included), and each recorded step is run on them with zero gradients, by torch's own
step function. The result is what the full-size step would have computed for those entries, with
no formula of ours in between (up to the rounding of vectorised kernels over different lengths).

Plain SGD (no momentum, no weight decay) leaves a zero-gradient entry unchanged: nothing to replay.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import Tensor, nn

from .blocks import Piece, gather_state, take
from .closed import adam_keys, adam_quiet, coupled_decay, moving_flags, sgd_closed

__all__ = ["Record", "replay"]

_NOT_HYPERPARAMETERS = ("params", "param_names")
_counter = itertools.count()


class Record:
    """One optimizer step: each param group's hyperparameters at that step (tensors copied)."""

    __slots__ = ("index", "groups")

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.index = next(_counter)
        self.groups = [
            {k: (v.clone() if isinstance(v, Tensor) else v) for k, v in g.items() if k not in _NOT_HYPERPARAMETERS}
            for g in optimizer.param_groups
        ]


def _no_op(cls: type, records: list[Record], groups: set[int]) -> bool:
    """True if a zero gradient changes nothing in these steps (plain SGD)."""
    if cls is not torch.optim.SGD:
        return False
    return all(
        float(r.groups[g]["momentum"]) == 0 and float(r.groups[g]["weight_decay"]) == 0 for r in records for g in groups
    )


def replay(cls: type[torch.optim.Optimizer], pieces: list[Piece]) -> None:
    """Bring the dead entries of ``pieces`` (parameters and optimizer state, in the full tensors)
    up to date with their recorded steps, as ``cls``'s step with zero gradients would; clear the
    records. Closed forms where exact (:mod:`.closed`), torch's own step for the rest."""
    pieces = [p for p in pieces if p.records]
    records = sorted({r.index: r for p in pieces for r in p.records}.values(), key=lambda r: r.index)
    if records and not _no_op(cls, records, {p.group for p in pieces}):
        with torch.no_grad():
            moving = []
            for piece in pieces:
                moving += _closed(cls, piece)
            if moving:
                _run(cls, moving, records)
    for piece in pieces:
        piece.records = []


Part = tuple[Piece, Tensor | None, Tensor | None]  # a rectangle of a piece's dead entries


def _closed(cls: type[torch.optim.Optimizer], piece: Piece) -> list[Part]:
    """Write the dead parts of ``piece`` that have a closed form; return the others."""
    steps = [r.groups[piece.group] for r in piece.records]
    full = piece.full.detach()
    done, moving = [], []
    if cls is torch.optim.SGD:
        for rows, cols in piece.dead_parts():
            values = take(full, rows, cols)
            state = sgd_closed(values, gather_state(piece.full_state, full, rows, cols), steps)
            done.append((rows, cols, values, state))
        piece.write_dead(done)
        return []
    if coupled_decay(steps):  # the moments of every entry may turn non-zero: find them again next time
        piece.moving = None
        return [(piece, rows, cols) for rows, cols in piece.dead_parts()]
    if piece.moving is None:
        piece.moving = (moving_flags(piece.full_state, full),)
    (flags,) = piece.moving
    new_keys = adam_keys(piece.full_state, steps)
    for rows, cols in piece.dead_parts():
        dim = 0 if cols is None else 1  # the dead dim of this part: dead rows, or dead columns
        index = rows if dim == 0 else cols
        stir = flags[dim][index] if flags is not None else None
        quiet = index if stir is None else index[~stir]
        if stir is not None and bool(stir.any()):
            moving.append((piece, index[stir], cols) if dim == 0 else (piece, rows, index[stir]))
        if not quiet.numel():
            continue
        sub = (quiet, cols) if dim == 0 else (rows, quiet)
        values = take(full, *sub)
        changed = adam_quiet(values, piece.full_state, steps)
        if changed or new_keys:
            done.append((*sub, values, {k: torch.zeros_like(values) for k in new_keys}))
    piece.write_dead(done)
    return moving


def _run(cls: type[torch.optim.Optimizer], moving: list[Part], records: list[Record]) -> None:
    """Step the ``moving`` parts with ``cls``'s own step function, one recorded step at a time."""
    pieces = list(dict.fromkeys(piece for piece, _, _ in moving))
    group_ids = sorted({p.group for p in pieces})
    params: dict[int, list[nn.Parameter]] = {g: [] for g in group_ids}
    parts: list[tuple[Piece, Tensor | None, Tensor | None, nn.Parameter, Tensor]] = []
    states: dict[nn.Parameter, dict[str, Any]] = {}
    for piece, rows, cols in moving:
        full = piece.full.detach()
        param = nn.Parameter(take(full, rows, cols))
        states[param] = gather_state(piece.full_state, full, rows, cols)
        params[piece.group].append(param)
        parts.append((piece, rows, cols, param, torch.zeros_like(param)))
    opt = cls([{"params": params[g], **records[0].groups[g]} for g in group_ids])
    for param, state in states.items():
        if state:
            opt.state[param] = state
    # torch's step without the optimizer hooks (a user's global step hooks must not see these steps)
    step = getattr(cls.step, "__wrapped__", cls.step)
    stepped = {piece: {r.index for r in piece.records} for piece in pieces}
    for record in records:
        for group, g in zip(opt.param_groups, group_ids, strict=True):
            group.update(record.groups[g])
        for piece, _, _, param, zeros in parts:
            param.grad = zeros if record.index in stepped[piece] else None
        step(opt)
    written: dict[Piece, list] = {}
    for piece, rows, cols, param, _ in parts:
        written.setdefault(piece, []).append((rows, cols, param.detach(), opt.state.get(param, {})))
    for piece, done in written.items():
        piece.write_dead(done)

"""Zero-gradient steps in closed form, where the update is linear in the state: no per-step pass
over the dead entries, one pass for all the steps since the last write-back.

SGD with a zero gradient: ``g = wd * p`` (maximize only flips the sign of the zero), then the
momentum buffer ``b`` and the parameter ``p`` move linearly: each step is a 2x2 matrix on
``(p, b)`` with scalar entries from that step's hyperparameters (torch's rules: a missing buffer is
set to ``g`` undamped on the first step with momentum; Nesterov steps along ``g + momentum * b``).
The product of the matrices (float64) is applied once.

Adam and AdamW with a zero gradient and no coupled weight decay leave every entry whose moments are
exactly zero ("quiet": ``exp_avg`` and ``exp_avg_sq`` stay 0 and the update is ``0 / eps``) at
``p * prod(1 - lr * wd)`` (decoupled decay, AdamW) or unchanged. That covers entries dead since before
their first step, and input columns that never carried a non-zero input. Other entries ("moving"),
and Adam with coupled weight decay, are replayed step by step (:mod:`.replay`).

These differ from a step-by-step run only by the rounding of the combined factors (a few units in
the last place), not by any approximation.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["adam_keys", "adam_quiet", "coupled_decay", "moving_flags", "sgd_closed"]

_MOMENTS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")


def sgd_closed(values: Tensor, state: dict[str, Any], steps: list[dict[str, Any]]) -> dict[str, Any]:
    """``values`` (the dead entries, changed in place) and their SGD ``state`` after the zero-gradient
    ``steps`` (each a param group's hyperparameters); returns the new state."""
    has_buffer = state.get("momentum_buffer") is not None
    m = [[1.0, 0.0], [0.0, 1.0]]  # (p, b) -> (p, b)
    for hp in steps:
        lr, wd, mu = float(hp["lr"]), float(hp["weight_decay"]), float(hp["momentum"])
        if mu == 0:
            s = [[1.0 - lr * wd, 0.0], [0.0, 1.0]]
        else:
            if has_buffer:  # b' = mu b + (1 - dampening) g
                bp, bb = (1.0 - float(hp["dampening"])) * wd, mu
            else:  # b' = g
                bp, bb = wd, 0.0
                has_buffer = True
            dp, db = (wd + mu * bp, mu * bb) if hp["nesterov"] else (bp, bb)  # the step direction
            s = [[1.0 - lr * dp, -lr * db], [bp, bb]]
        m = [[s[i][0] * m[0][j] + s[i][1] * m[1][j] for j in range(2)] for i in range(2)]
    buf = state.get("momentum_buffer")
    p0 = values.clone()
    values.mul_(m[0][0])
    if buf is not None and m[0][1] != 0:
        values.add_(buf, alpha=m[0][1])
    out = dict(state)
    if has_buffer:
        new_buf = p0.mul_(m[1][0])
        if buf is not None and m[1][1] != 0:
            new_buf.add_(buf, alpha=m[1][1])
        out["momentum_buffer"] = new_buf
    return out


def coupled_decay(steps: list[dict[str, Any]]) -> bool:
    """Whether any Adam step adds weight decay to the gradient (then nothing is quiet)."""
    return any(float(hp["weight_decay"]) != 0 and not hp.get("decoupled_weight_decay", False) for hp in steps)


def moving_flags(state: dict[str, Any] | None, like: Tensor) -> tuple[Tensor, Tensor] | None:
    """Per row and per input column of a parameter like ``like``: True where some Adam moment is not
    zero anywhere in that row (column). None if no moment is non-zero. One read of each moment, no
    copy; a column counts as moving if any row has a non-zero moment there (replaying a quiet entry
    is exact too, only slower)."""
    moments = [state[k] for k in _MOMENTS if isinstance((state or {}).get(k), Tensor)]
    rows = torch.zeros(like.shape[0], dtype=torch.bool, device=like.device)
    cols = torch.zeros(like.shape[1], dtype=torch.bool, device=like.device)
    for t in moments:
        nonzero = t.ne(0)
        rows |= nonzero.flatten(1).any(dim=1)
        across_rows = nonzero.any(dim=0)
        cols |= across_rows.flatten(1).any(dim=1) if across_rows.dim() > 1 else across_rows
    return (rows, cols) if bool(rows.any()) else None


def adam_quiet(values: Tensor, state: dict[str, Any] | None, steps: list[dict[str, Any]]) -> bool:
    """Quiet entries (moments zero, no coupled weight decay) after the zero-gradient ``steps``:
    ``values`` decayed in place by decoupled weight decay; returns whether they changed. Their
    moments stay zero: nothing to write where the moments exist (the state keys torch's first step
    would create are created as zeros by the caller)."""
    factor = 1.0
    for hp in steps:
        if hp.get("decoupled_weight_decay", False):
            factor *= 1.0 - float(hp["lr"]) * float(hp["weight_decay"])
    if factor != 1.0:
        values.mul_(factor)
    return factor != 1.0


def adam_keys(state: dict[str, Any] | None, steps: list[dict[str, Any]]) -> list[str]:
    """The moment keys torch's first step creates (zeros) when the state is empty, else none."""
    if any(k in (state or {}) for k in _MOMENTS):
        return []
    return ["exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if steps[0].get("amsgrad", False) else [])

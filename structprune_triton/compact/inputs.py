"""Which input columns of a layer are provably zero: the one place this package reads the chains
found by :mod:`structprune_triton.skip.chains`."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from ..skip.chains import find_chains
from ..skip.live import structured_param

__all__ = ["LiveInputs", "live_inputs"]

# A function of no arguments giving, from the current masks, one bool per input column of a layer
# (groups after a Flatten expanded): False where that column is provably an exact zero.
LiveInputs = Callable[[], Tensor]


def live_inputs(model: nn.Module) -> dict[nn.Module, LiveInputs]:
    """For every ``nn.Linear``/``nn.Conv2d`` of ``model`` whose input provably carries exact zeros
    in some columns (a pruned layer before it, through zero-preserving ops), a function returning
    its live input columns from the current masks. The model's structure is read once, here; the
    functions read the masks each time they are called."""
    found: dict[nn.Module, LiveInputs] = {}
    for consumer, producer, group in find_chains(model):
        param = structured_param(producer)
        if param is not None:
            found[consumer] = _expanded(param, group)
    return found


def _expanded(param: nn.Module, group: int) -> LiveInputs:
    def live() -> Tensor:
        alive = param.mask != 0
        return alive if group == 1 else alive.repeat_interleave(group)

    return live

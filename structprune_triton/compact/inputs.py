"""Which input columns of a layer are provably zero: the one place this package reads the chains
found by :mod:`structprune_triton.skip.chains`."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from ..skip.chains import find_chains

__all__ = ["LiveInputs", "live_inputs"]

# A function of no arguments giving, from the current masks, one bool per input column of a layer
# (groups after a Flatten expanded): False where that column is provably an exact zero.
LiveInputs = Callable[[], Tensor]


def live_inputs(model: nn.Module) -> dict[nn.Module, LiveInputs]:
    """For every ``nn.Linear``/``nn.Conv2d`` of ``model`` whose input provably carries exact zeros
    in some columns (pruned layers before it, through zero-preserving ops), a function returning
    its live input columns from the current masks. The model's structure is read once, here; the
    functions read the masks each time they are called. Proofs that hold for 2-D inputs only (a
    BatchNorm1d on the way) are left out: a compact layer's input shape is not known here."""
    return {m: inputs.live for m, inputs in find_chains(model).items() if not inputs.only_2d}

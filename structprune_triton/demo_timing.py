"""Timing and compile bookkeeping for the demo (:mod:`structprune_triton.demo`).

* **Clock**: on CPU the process's CPU time (``time.process_time``): time slices lost to other
  processes on a shared machine do not count, the work of every torch thread does. On CUDA the wall
  time between two device synchronisations.
* **Interleaved rounds**: every round times a few steps of each variant, in an order rotated from
  round to round, so that drifting background load and clocks hit all variants alike. Each round
  gives one ratio (baseline time / variant time); the demo prints the median ratio and its
  interquartile range, and calls a difference whose range contains 1.0 "same".
* **Fresh compiles**: Dynamo caches compiled code on the code object of the frame it compiles, and
  a cache entry's guards can accept another model of the same class; so a variant compiled after
  another one may reuse the first one's (graph-broken) entry. Each compiled variant therefore gets a
  forward function with its own code object (:func:`fresh_forward`) and its own counting backend
  (:class:`GraphCounter`), which wraps Inductor and counts the graphs Dynamo hands it.
"""

from __future__ import annotations

import statistics
import time
import types
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
from torch import nn

T = TypeVar("T")


def clock(device: torch.device) -> Callable[[], float]:
    """A function returning seconds: process CPU time on CPU, synchronised wall time on CUDA."""
    if device.type == "cuda":

        def cuda_clock() -> float:
            torch.cuda.synchronize(device)
            return time.perf_counter()

        return cuda_clock
    return time.process_time


def ratio_spread(ratios: Sequence[float]) -> tuple[float, float, float]:
    """(median, first quartile, third quartile) of per-round ratios."""
    if len(ratios) < 2:
        r = ratios[0] if ratios else float("nan")
        return r, r, r
    q1, median, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return median, q1, q3


def describe_ratio(ratios: Sequence[float]) -> str:
    """``1.23x [1.10-1.31]`` (median [interquartile range]) plus ``same`` when the range holds 1.0."""
    median, q1, q3 = ratio_spread(ratios)
    text = f"{median:.2f}x [{q1:.2f}-{q3:.2f}]"
    if q1 <= 1.0 <= q3:
        text += " same"
    elif median > 1.0:
        text += " faster"
    else:
        text += " slower"
    return text


def interleaved_rounds(
    steps: Sequence[Callable[[], None]], rounds: int, per_round: int, now: Callable[[], float]
) -> list[list[float]]:
    """Run ``rounds`` rounds; in each, call every ``steps[i]`` ``per_round`` times in a row, starting
    from a different variant each round. Returns ``times[i][round]``: seconds per step."""
    n = len(steps)
    times: list[list[float]] = [[] for _ in range(n)]
    for r in range(rounds):
        for k in range(n):
            i = (r + k) % n
            t0 = now()
            for _ in range(per_round):
                steps[i]()
            times[i].append((now() - t0) / per_round)
    return times


class GraphCounter:
    """A ``torch.compile`` backend that counts the FX graphs Dynamo hands it, then compiles each
    with Inductor (or ``backend``). ``breaks`` is filled by :meth:`track` from Dynamo's counters."""

    def __init__(self, backend: str = "inductor") -> None:
        self.graphs = 0
        self.breaks = 0
        self._compile = torch._dynamo.lookup_backend(backend)

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list) -> Callable:
        self.graphs += 1
        return self._compile(gm, example_inputs)

    def track(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` (the calls that compile), add the graph breaks Dynamo counted meanwhile, and
        return what ``fn`` returned."""
        from torch._dynamo.utils import counters

        before = sum(counters["graph_break"].values())
        result = fn()
        self.breaks += sum(counters["graph_break"].values()) - before
        return result


def fresh_forward(model: nn.Module, name: str) -> Callable:
    """``lambda x: model(x)`` with a code object of its own, so Dynamo's cache for it starts empty."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        return model(x)

    code = forward.__code__.replace(co_name=f"forward_{name}")
    return types.FunctionType(code, forward.__globals__, code.co_name, None, forward.__closure__)

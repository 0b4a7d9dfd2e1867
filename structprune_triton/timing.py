"""Timing for the demo and the benchmarks: interleaved rounds, spreads, verdicts, compile counts.

* **Clock** (:func:`clock`): on CPU the process's CPU time (``time.process_time``), so time slices
  lost to other processes on a shared machine do not count while the work of every torch thread
  does; on CUDA the wall time between two device synchronisations.
* **Interleaved rounds** (:func:`interleaved`): every round times a block of calls of each
  function, in an order rotated from round to round, so that drifting background load and clocks
  hit every function alike. Each block is one ``torch.utils.benchmark.Timer.timeit`` (which sets
  the torch thread count and runs a few untimed warm-up calls first, so one function's caches do not
  bill the next).
* **Spread and verdict** (:class:`Spread`, :func:`ratios`): per round, the baseline's time over a
  function's (above 1: faster); the median and quartiles of those ratios; "same" when the
  interquartile range holds 1.0, else "faster" or "slower".
* **Fresh compiles** (:func:`fresh_forward`, :class:`GraphCounter`): Dynamo caches compiled code on
  the code object of the frame it compiles, and a cache entry's guards can accept another model of
  the same class, so a model compiled after another may reuse the first one's (graph-broken) entry.
  Each compiled model gets a forward with its own code object and a backend that counts its graphs.
"""

from __future__ import annotations

import contextlib
import statistics
import time
import types
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import nn

T = TypeVar("T")


def clock(device: torch.device | str = "cpu") -> Callable[[], float]:
    """A function returning seconds: process CPU time on CPU, synchronised wall time on CUDA."""
    device = torch.device(device)
    if device.type == "cuda":

        def cuda_clock() -> float:
            torch.cuda.synchronize(device)
            return time.perf_counter()

        return cuda_clock
    return time.process_time


def clock_name(device: torch.device | str = "cpu") -> str:
    """What :func:`clock` measures on ``device``, in words."""
    return "wall time between device synchronisations" if torch.device(device).type == "cuda" else "process CPU time"


@dataclass(frozen=True)
class Spread:
    """Median and quartiles of samples (ratios: baseline time / this time, above 1 is faster)."""

    median: float
    q1: float
    q3: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> Spread:
        if not samples:
            raise ValueError("no samples")
        if len(samples) == 1:
            return cls(samples[0], samples[0], samples[0])
        q1, median, q3 = statistics.quantiles(samples, n=4, method="inclusive")
        return cls(median, q1, q3)

    @property
    def verdict(self) -> str:
        """``same`` when the interquartile range holds 1.0, else ``faster`` or ``slower``."""
        if self.q1 <= 1.0 <= self.q3:
            return "same"
        return "faster" if self.median > 1.0 else "slower"

    def __str__(self) -> str:
        return f"{self.median:.2f}x [{self.q1:.2f}-{self.q3:.2f}] {self.verdict}"

    def as_dict(self) -> dict[str, float]:
        return {"median": self.median, "q1": self.q1, "q3": self.q3}


def interleaved(
    fns: Mapping[str, Callable[[], object]],
    *,
    rounds: int,
    number: int = 1,
    device: torch.device | str = "cpu",
    threads: int | None = None,
    around: Mapping[str, Callable[[], AbstractContextManager]] | None = None,
) -> dict[str, list[float]]:
    """Time ``fns`` in ``rounds`` interleaved rounds; returns seconds per call, one entry per round.

    In round ``r`` the functions run in their given order rotated by ``r``; each runs a block of
    ``number`` timed calls (after ``torch.utils.benchmark``'s untimed warm-up calls, at least 2) on
    :func:`clock` of ``device`` at ``threads`` torch threads (default: the current count). ``around``
    may give a function a context entered around each of its blocks (e.g. settings), so that the
    context's own cost is not timed.
    """
    from torch.utils.benchmark import Timer

    if rounds < 1 or number < 1:
        raise ValueError(f"rounds and number must be at least 1, got {rounds} and {number}")
    names = list(fns)
    around = around or {}
    timers = {
        n: Timer("fn()", globals={"fn": fns[n]}, timer=clock(device), num_threads=threads or torch.get_num_threads())
        for n in names
    }
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for k in range(len(names)):
            n = names[(r + k) % len(names)]
            with around[n]() if n in around else contextlib.nullcontext():
                times[n].append(timers[n].timeit(number).median)
    return times


def ratios(times: Mapping[str, Sequence[float]], baseline: str) -> dict[str, Spread]:
    """For every function but ``baseline``: the spread over rounds of ``baseline``'s time / its time."""
    base = times[baseline]
    return {n: Spread.of([b / t for b, t in zip(base, ts, strict=True)]) for n, ts in times.items() if n != baseline}


class GraphCounter:
    """A ``torch.compile`` backend that counts the FX graphs Dynamo hands it, then compiles each
    with ``backend`` (Inductor by default). ``breaks`` is filled by :meth:`track`."""

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


def fresh_forward(model: nn.Module, name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """``lambda x: model(x)`` with a code object of its own, so Dynamo's cache for it starts empty."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        return model(x)

    code = forward.__code__.replace(co_name=f"forward_{name}")
    return types.FunctionType(code, forward.__globals__, code.co_name, None, forward.__closure__)

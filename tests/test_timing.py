"""structprune_triton.timing: interleaved rounds, spreads and verdicts, graph counting."""

from __future__ import annotations

import time

import pytest
import torch

from structprune_triton import timing


def test_spread_quartiles_and_verdict() -> None:
    s = timing.Spread.of([1.0, 2.0, 3.0, 4.0, 5.0])
    assert (s.median, s.q1, s.q3) == (3.0, 2.0, 4.0)
    assert timing.Spread.of([0.9, 1.0, 1.1, 1.2]).verdict == "same"
    assert timing.Spread.of([1.2, 1.3, 1.4]).verdict == "faster"
    assert timing.Spread.of([0.7, 0.8, 0.85]).verdict == "slower"
    assert timing.Spread.of([0.5, 0.98, 0.99, 1.5]).verdict == "same"  # range holds 1.0 although the median < 1
    assert str(timing.Spread.of([1.2, 1.3, 1.4])) == "1.30x [1.25-1.35] faster"
    assert timing.Spread.of([0.8]).as_dict() == {"median": 0.8, "q1": 0.8, "q3": 0.8}
    with pytest.raises(ValueError):
        timing.Spread.of([])


def test_ratios_are_per_round_baseline_over_function() -> None:
    times = {"up": [2.0, 4.0, 6.0], "ours": [1.0, 4.0, 2.0]}
    spreads = timing.ratios(times, "up")
    assert list(spreads) == ["ours"]
    assert spreads["ours"].median == 2.0  # per round: 2, 1, 3 (the ratio of medians would be 2.0 too)
    assert (spreads["ours"].q1, spreads["ours"].q3) == (1.5, 2.5)


def test_interleaved_rotates_the_order_and_warms_up_each_block() -> None:
    calls: list[str] = []
    times = timing.interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=2, number=3)
    # each block: torch.utils.benchmark's 2 untimed warm-up calls, then `number` timed calls
    assert calls == ["a"] * 5 + ["b"] * 5 + ["b"] * 5 + ["a"] * 5
    assert list(times) == ["a", "b"] and all(len(t) == 2 and min(t) > 0 for t in times.values())


def test_interleaved_enters_around_per_block_and_sets_threads() -> None:
    events: list[str] = []

    class Around:
        def __enter__(self) -> None:
            events.append("enter")

        def __exit__(self, *exc: object) -> None:
            events.append("exit")

    threads_seen: list[int] = []
    before = torch.get_num_threads()
    timing.interleaved(
        {"f": lambda: (events.append("f"), threads_seen.append(torch.get_num_threads()))},
        rounds=2,
        number=1,
        threads=1,
        around={"f": Around},
    )
    assert events == ["enter", "f", "f", "f", "exit"] * 2
    assert set(threads_seen) == {1} and torch.get_num_threads() == before


def test_cpu_clock_is_process_time() -> None:
    """Sleeping costs no CPU time: a wall clock would give at least 20 ms per call."""
    times = timing.interleaved({"sleep": lambda: time.sleep(0.02)}, rounds=1, number=2)
    assert times["sleep"][0] < 0.01
    assert timing.clock("cpu") is time.process_time
    assert timing.clock_name("cpu") == "process CPU time"


def test_bad_rounds_are_rejected() -> None:
    with pytest.raises(ValueError):
        timing.interleaved({"f": lambda: None}, rounds=0)


def test_graph_counter_counts_graphs_and_breaks_of_a_fresh_forward() -> None:
    class Broken(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = x + 1
            torch._dynamo.graph_break()
            return y * 2

    model = Broken()
    first, second = timing.fresh_forward(model, "a"), timing.fresh_forward(model, "b")
    assert first.__code__ is not second.__code__ and first.__code__.co_name == "forward_a"
    counter = timing.GraphCounter("eager")
    compiled = torch.compile(first, backend=counter)
    out = counter.track(lambda: compiled(torch.ones(3)))
    assert torch.equal(out, torch.full((3,), 4.0))
    assert counter.graphs == 2 and counter.breaks >= 1
    whole = timing.GraphCounter("eager")
    compiled = torch.compile(timing.fresh_forward(torch.nn.ReLU(), "c"), backend=whole)
    whole.track(lambda: compiled(torch.ones(3)))
    assert (whole.graphs, whole.breaks) == (1, 0)

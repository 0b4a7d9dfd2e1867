"""Shared pieces of the benchmark suite: the implementations compared, checks, and :func:`measure`
(settings and cases are in ``_cases.py``). Not a test module (pytest does not collect it).

Implementations compared in every group (``IMPLS``):

* ``upstream-eager``: ``torch.ao.pruning._experimental.pruner.parametrization``'s classes.
* ``upstream-compiled``: ``torch.compile`` of the same arithmetic, written out below
  (:class:`UpstreamArithFSS`, :class:`UpstreamArithBiasHook`): Dynamo skips everything under
  ``torch/ao``, so compiling upstream's own classes would only measure graph breaks.
* ``ours-eager`` and ``ours-compiled``: this package's drop-in classes.
* ``copy``: ``dst.copy_(src)`` of the same tensor, for the memory-bound ops: the floor of a dense pass.

Timing (:func:`measure`), by three library timers, each for one question:

* pytest-benchmark times every implementation: its table (median, IQR, rounds) is what the report
  shows. CPU: time per call, on the timer conftest sets (the process's CPU time by default, so time
  slices lost to other processes do not count). CUDA: host wall time of one call plus a synchronize.
* CUDA: ``triton.testing.do_bench`` adds the device time (CUDA events, L2 flushed before each call)
  as ``extra_info["device_s"]``.
* CPU, ``ours-eager`` only: :func:`structprune_triton.timing.interleaved` times ours and upstream
  eager in alternating blocks at each thread count of ``--bench-threads``; the per-block ratio
  (upstream time / ours) goes to ``extra_info["vs_upstream_eager"]`` as median and quartiles: the
  comparison that background load drifting between separate tests cannot bias.
"""

from __future__ import annotations

import math
import statistics
import time

import torch
from _cases import SETTINGS
from torch import nn

import structprune_triton
import structprune_triton.testing
from structprune_triton import timing
from structprune_triton.timing import GraphCounter


class UpstreamArithFSS(nn.Module):
    """Upstream ``FakeStructuredSparsity.forward`` written out here, outside ``torch/ao``, so that
    Dynamo traces it: the mask reshaped to broadcast over dim 0, times the weight."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mask.shape[0] != x.shape[0]:
            raise AssertionError("mask shape[0] must match x shape[0]")
        shape = [1] * x.dim()
        shape[0] = -1
        return self.mask.reshape(shape) * x


class UpstreamArithBiasHook:
    """Upstream ``BiasHook``'s arithmetic: with ``prune_bias`` zero ``_bias`` where ``~mask``, then
    ``output += _bias`` along dim 1, in place. (Upstream writes through ``_bias.data``; on torch 2.13
    that fails to compile next to the in-place output update, so this assigns under ``no_grad``.)"""

    def __init__(self, parametrization: nn.Module, prune_bias: bool) -> None:
        self.param = parametrization
        self.prune_bias = prune_bias

    def __call__(self, module: nn.Module, input: object, output: torch.Tensor) -> torch.Tensor:
        bias = getattr(module, "_bias", None)
        if bias is None:
            return output
        if self.prune_bias:
            with torch.no_grad():
                bias[~self.param.mask] = 0
        shape = [1] * output.dim()
        shape[1] = -1
        output += bias.detach().reshape(shape)
        return output


def classes(impl: str) -> tuple[type, type, bool]:
    """(parametrization class, hook class, compiled?) of an implementation."""
    from torch.ao.pruning._experimental.pruner import parametrization as up

    return {
        "upstream-eager": (up.FakeStructuredSparsity, up.BiasHook, False),
        "upstream-compiled": (UpstreamArithFSS, UpstreamArithBiasHook, True),
        "ours-eager": (structprune_triton.FakeStructuredSparsity, structprune_triton.BiasHook, False),
        "ours-compiled": (structprune_triton.FakeStructuredSparsity, structprune_triton.BiasHook, True),
    }[impl]


def compiled(module: nn.Module) -> tuple[nn.Module, GraphCounter]:
    """``torch.compile(module)`` on a backend that counts the graphs Dynamo hands it."""
    counter = GraphCounter(SETTINGS.compile_backend)
    return torch.compile(module, backend=counter, dynamic=False), counter


def graph_info(counter: GraphCounter | None) -> dict:
    return {} if counter is None else {"graphs": counter.graphs, "graph_breaks": counter.breaks}


class WeightHolder(nn.Module):
    """A module owning one ``weight``; its forward returns the (parametrized) weight."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)

    def forward(self) -> torch.Tensor:
        return self.weight


class HookRunner(nn.Module):
    """Owns ``_bias`` (as after upstream's ``_prepare``); its forward applies a bias hook to a given
    module output, so that the hook alone can be timed and compiled."""

    def __init__(self, bias: torch.Tensor, hook: object) -> None:
        super().__init__()
        self._bias = nn.Parameter(bias)
        self.hook = hook

    def forward(self, output: torch.Tensor) -> torch.Tensor:
        return self.hook(self, None, output)


def prepare_layer(layer: nn.Module, impl: str, mask: torch.Tensor, prune_bias: bool = True) -> nn.Module:
    """``layer`` prepared as upstream's ``BaseStructuredSparsifier._prepare`` does, with ``impl``'s classes."""
    fss, hook, _ = classes(impl)
    return structprune_triton.prepare_module(layer, mask, prune_bias=prune_bias, parametrization=fss, hook=hook)


def random_mask(n: int, density: float) -> torch.Tensor:
    """A bool mask on the bench device, each row live with probability ``density`` (never all dead)."""
    mask = structprune_triton.testing.random_mask(n, density=density, device=SETTINGS.device)
    mask[0] = True
    return mask


def randn(shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    """Standard normal values (never zeros: they hide unwritten outputs) on the bench device."""
    return torch.randn(shape, device=SETTINGS.device).to(dtype)


def ours_path(t: torch.Tensor, compiled: bool) -> str:
    """Which implementation serves ``t``: "kernels" (Triton) or "torch" (this package's torch path);
    the package's own rule, the same eager and compiled."""
    return "kernels" if structprune_triton.kernels_serve(t) else "torch"


def nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def assert_same(actual: torch.Tensor, expected: torch.Tensor, what: str = "output") -> None:
    """Exactly equal (elementwise masking and bias add are exact in every correct implementation)."""
    assert actual.dtype == expected.dtype, (what, actual.dtype, expected.dtype)
    torch.testing.assert_close(actual, expected, rtol=0, atol=0, msg=lambda m: f"{what}: {m}")


def assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, what: str = "output") -> None:
    """‖a − e‖ / ‖e‖ under a dtype-dependent bound (matrix products may sum in another order)."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, what
    a, e = actual.double(), expected.double()
    rel = ((a - e).norm() / e.norm().clamp_min(1e-30)).item()
    bound = 2e-2 if expected.dtype in (torch.bfloat16, torch.float16) else (2e-3 if a.is_cuda else 1e-4)
    assert math.isfinite(rel) and rel <= bound, f"{what}: relative error {rel:.3g} > {bound}"


# Settings under which ours eager is also compared with upstream eager: exact_zeros=False takes
# upstream's arithmetic on the torch path (the speed/semantics trade-off the README documents).
VARIANTS = {"": {}, "exact_zeros=False": {"exact_zeros": False}}


def interleaved_vs_upstream(fn, ref_fn, threads: int, calls: int, blocks: int, variants: dict) -> dict:
    """Upstream eager (``ref_fn``) and ours (``fn``, under each of ``variants``' settings) timed in
    ``blocks`` interleaved blocks of ``calls`` calls at ``threads`` threads. Per variant: the median
    and quartiles over blocks of upstream's time / ours, and both median times per call."""
    fns = {"upstream": ref_fn, **{v: fn for v in variants}}
    around = {v: (lambda kw=kw: structprune_triton.settings(**kw)) for v, kw in variants.items()}
    times = timing.interleaved(fns, rounds=blocks, number=calls, threads=threads, around=around)
    spreads = timing.ratios(times, "upstream")
    return {
        v: {
            **spreads[v].as_dict(),
            "blocks": blocks,
            "calls": calls,
            "upstream_s": statistics.median(times["upstream"]),
            "ours_s": statistics.median(times[v]),
        }
        for v in variants
    }


def measure(
    benchmark,
    fn,
    *,
    info: dict,
    ref_fn=None,
    bytes_moved: int | None = None,
    flops: float | None = None,
    row_mask: bool = True,
):
    """Time ``fn`` (already warmed up and checked) with pytest-benchmark; on CUDA add do_bench's
    device time; on CPU, with ``ref_fn`` (upstream eager on the same input), add the interleaved
    comparison at each thread count (also with ``exact_zeros=False`` where ``fn`` runs the row mask).
    ``info`` and the byte/flop counts go to ``extra_info``."""
    benchmark.extra_info.update(info, bytes=bytes_moved, flops=flops)
    if benchmark.disabled:
        benchmark(fn)
        return
    t0 = time.perf_counter()
    fn()
    if SETTINGS.cuda:
        torch.cuda.synchronize()
    est = max(time.perf_counter() - t0, 1e-7)
    if SETTINGS.cuda:
        import triton.testing

        def synced():
            fn()
            torch.cuda.synchronize()

        benchmark.pedantic(synced, rounds=int(min(100, max(5, SETTINGS.target_s / est))), warmup_rounds=2)
        ms = triton.testing.do_bench(fn, warmup=10, rep=40 if SETTINGS.quick else 80, return_mode="median")
        benchmark.extra_info["device_s"] = ms * 1e-3
        return
    calls = int(min(1000, max(1, 2e-3 / est)))  # rounds of about 2 ms
    benchmark.pedantic(
        fn, rounds=int(min(50, max(5, SETTINGS.target_s / (est * calls)))), iterations=calls, warmup_rounds=1
    )
    if ref_fn is not None:
        blocks = 6 if SETTINGS.quick else 12
        block_calls = int(min(5000, max(1, 1e-2 / est)))  # blocks of about 10 ms
        variants = VARIANTS if row_mask else {"": {}}
        by_threads = {
            str(n): interleaved_vs_upstream(fn, ref_fn, n, block_calls, blocks, variants) for n in SETTINGS.threads
        }
        for v in variants:
            key = "vs_upstream_eager" + (f" {v}" if v else "")
            benchmark.extra_info[key] = {n: r[v] for n, r in by_threads.items()}

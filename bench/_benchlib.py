"""Shared pieces of the benchmark suite: settings, cases, the implementations under comparison,
byte counts, correctness checks and the timing helper. Not a test module (pytest does not collect it).

Implementations compared in every group (``IMPLS``):

* ``upstream-eager``: ``torch.ao.pruning._experimental.pruner.parametrization``'s
  ``FakeStructuredSparsity`` / ``BiasHook``, as the pruner registers them.
* ``upstream-compiled``: ``torch.compile`` of the same arithmetic, written out below
  (:class:`UpstreamArithFSS`, :class:`UpstreamArithBiasHook`). Dynamo skips everything under
  ``torch/ao``, so compiling upstream's own classes would only measure graph breaks.
* ``ours-eager``: ``structprune_triton``'s drop-in classes, eager.
* ``ours-compiled``: the same under ``torch.compile``.
* ``copy``: a device-to-device copy of the same tensor (``dst.copy_(src)``), where the operation is
  a memory-bound elementwise pass: the floor a dense op could reach.

Timing (see ``measure``). CUDA: the pytest-benchmark table is the host wall time of one call followed
by ``torch.cuda.synchronize()``; ``extra_info['device_ms']`` is the median device time from
``triton.testing.do_bench`` (CUDA events around each call, the 256 MB L2 flush that do_bench does
before each call keeps the 60 MB L2 cold), which ``report.py`` uses as the primary time; for small
tensors ``extra_info['wall_us_nosync']`` is the host wall time per call of a loop of K calls with one
synchronize at the end (launch overhead). CPU: the table is the time per call (CPU ops are
synchronous) and is the primary time; with one torch thread (the default) conftest makes the timer
``time.process_time``, so time lost to other processes on a shared machine does not count. For
``ours-eager`` on CPU, ``extra_info['vs_upstream_eager_interleaved']`` compares with upstream eager
timed in alternating blocks (see ``interleaved_ratio``).
"""

from __future__ import annotations

import collections
import math
import os
import statistics
import time
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import parametrize

# ---------------------------------------------------------------------------------------------
# settings (filled in by conftest.pytest_configure from the command line)


@dataclass
class Settings:
    quick: bool = False
    compile_backend: str | None = None  # None: inductor when timing, aot_eager with --benchmark-disable
    benchmark_disabled: bool = False
    cuda: bool = field(default_factory=torch.cuda.is_available)

    @property
    def device(self) -> str:
        return "cuda" if self.cuda else "cpu"

    @property
    def backend(self) -> str:
        if self.compile_backend:
            return self.compile_backend
        # Plain test mode only checks that each variant compiles and agrees with upstream:
        # aot_eager does that in a fraction of inductor's CPU compile time (~0.3 s vs ~2-12 s a graph).
        return "aot_eager" if self.benchmark_disabled else "inductor"

    # pytest-benchmark rounds: aim for about this much timed wall time per case
    @property
    def target_s(self) -> float:
        if self.cuda:
            return 0.03 if self.quick else 0.06
        return 0.08 if self.quick else 0.25

    @property
    def dobench_ms(self) -> tuple[int, int]:
        """(warmup, rep) in milliseconds for triton.testing.do_bench."""
        return (10, 30) if self.quick else (20, 80)


SETTINGS = Settings()

IMPLS = ("upstream-eager", "upstream-compiled", "ours-eager", "ours-compiled")
COPY = "copy"

# ---------------------------------------------------------------------------------------------
# cases


def shape_str(shape) -> str:
    return "x".join(str(s) for s in shape)


DTYPE_SHORT = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64"}


@dataclass(frozen=True)
class Case:
    """One (shape, dtype[, density][, prune_bias]) point; its group is shared by all impls."""

    op: str
    shape: tuple
    dtype: torch.dtype
    density: float | None = None
    prune_bias: bool | None = None

    @property
    def id(self) -> str:
        parts = [shape_str(self.shape), DTYPE_SHORT[self.dtype]]
        if self.prune_bias is not None:
            parts.append("prune" if self.prune_bias else "noprune")
        if self.density is not None:
            parts.append(f"d{self.density}")
        return "-".join(parts)

    @property
    def group(self) -> str:
        g = f"{self.op} | {shape_str(self.shape)} {DTYPE_SHORT[self.dtype]}"
        if self.prune_bias is not None:
            g += f" | prune_bias={self.prune_bias}"
        if self.density is not None:
            g += f" | density {self.density}"
        return g


def densities() -> list[float]:
    return [0.5] if SETTINGS.quick else [0.5, 0.9]


def weight_cases(op: str) -> list[Case]:
    """Weights for the parametrization forward (``fss_fwd``) and forward+backward (``fss_fwdbwd``)."""
    bf16, fp32 = torch.bfloat16, torch.float32
    if SETTINGS.cuda:
        if SETTINGS.quick:
            pts = [((16384, 4096), bf16), ((4096, 4096), bf16), ((1024, 1024, 3, 3), fp32), ((256, 128), fp32)]
            if op == "fss_fwdbwd":
                pts = [((16384, 4096), bf16), ((1024, 1024, 3, 3), fp32), ((256, 128), fp32)]
        else:
            pts = [
                ((16384, 4096), bf16), ((16384, 4096), fp32), ((4096, 4096), bf16), ((4096, 4096), fp32),
                ((1024, 1024, 3, 3), fp32), ((256, 128, 3, 3), fp32), ((256, 128), fp32),
            ]
    else:
        pts = [((1024, 512), fp32), ((256, 128), fp32), ((128, 64, 3, 3), fp32)]
    # density innermost: the next case reuses the compiled objects (see ObjectCache)
    return [Case(op, s, dt, d) for s, dt in pts for d in densities()]


def activation_cases() -> list[Case]:
    """Module outputs for the BiasHook (bias along dim 1). Density only matters with prune_bias."""
    bf16, fp32 = torch.bfloat16, torch.float32
    if SETTINGS.cuda:
        if SETTINGS.quick:
            pts = [((8192, 4096), bf16), ((64, 256, 56, 56), bf16), ((32, 256), fp32)]
        else:
            pts = [((8192, 4096), bf16), ((8192, 4096), fp32), ((64, 256, 56, 56), bf16),
                   ((64, 256, 56, 56), fp32), ((32, 256), fp32)]
    else:
        pts = [((256, 512), fp32), ((8, 64, 28, 28), fp32), ((32, 256), fp32)]
    out = []
    for s, dt in pts:
        out += [Case("bias_hook", s, dt, d, True) for d in densities()]
        out.append(Case("bias_hook", s, dt, None, False))
    return out


@dataclass(frozen=True)
class LayerCase:
    """A whole parametrized layer, prepared the way upstream's pruner prepares it."""

    kind: str  # "linear" | "conv2d"
    mode: str  # "fwd" | "fwdbwd"
    in_shape: tuple
    weight_shape: tuple
    dtype: torch.dtype
    density: float = 0.5

    @property
    def op(self) -> str:
        return f"{self.kind}_{self.mode}"

    @property
    def id(self) -> str:
        x, w = shape_str(self.in_shape), shape_str(self.weight_shape)
        return f"{self.kind}-{self.mode}-x{x}-w{w}-{DTYPE_SHORT[self.dtype]}"

    @property
    def group(self) -> str:
        return (f"{self.op} | x {shape_str(self.in_shape)}, w {shape_str(self.weight_shape)} "
                f"{DTYPE_SHORT[self.dtype]} | density {self.density}")

    def make(self) -> nn.Module:
        if self.kind == "linear":
            out_f, in_f = self.weight_shape
            return nn.Linear(in_f, out_f)
        cout, cin, kh, kw = self.weight_shape
        return nn.Conv2d(cin, cout, (kh, kw), padding=(kh // 2, kw // 2))

    def flops(self) -> float:
        if self.kind == "linear":
            m = math.prod(self.in_shape[:-1])
            n, k = self.weight_shape
            fwd = 2.0 * m * n * k
        else:
            b, _, h, w = self.in_shape  # stride 1, "same" padding: output is h x w
            cout, cin, kh, kw = self.weight_shape
            fwd = 2.0 * b * h * w * cout * cin * kh * kw
        # backward: grad of the input and grad of the weight, each a product of the forward's size
        return fwd if self.mode == "fwd" else 3.0 * fwd


def layer_cases() -> list[LayerCase]:
    if SETTINGS.cuda:
        lin = ((8192, 4096), (4096, 4096), torch.bfloat16)
        conv = ((64, 128, 56, 56), (256, 128, 3, 3), torch.bfloat16)
    else:
        lin = ((256, 512), (1024, 512), torch.float32)
        conv = ((8, 64, 28, 28), (128, 64, 3, 3), torch.float32)
    return [LayerCase(kind, mode, *pt) for kind, pt in (("linear", lin), ("conv2d", conv))
            for mode in ("fwd", "fwdbwd")]


# ---------------------------------------------------------------------------------------------
# implementations


class UpstreamArithFSS(nn.Module):
    """Upstream ``FakeStructuredSparsity``'s forward, written out in bench/ (outside ``torch/ao``)
    so that Dynamo traces it: ``mask`` reshaped to broadcast over dim 0, times ``x``."""

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
    """Upstream ``BiasHook``'s arithmetic: with ``prune_bias`` zero ``_bias`` where ``~mask``
    (boolean-index assignment), then ``output += _bias`` along dim 1, in place.

    Upstream writes through ``module._bias.data``; on torch 2.13 that form fails to compile when the
    output is also updated in place (AOT autograd's mutation epilogue raises a shape mismatch), so
    the same assignment is done on the parameter under ``no_grad``, which compiles."""

    def __init__(self, parametrization: nn.Module, prune_bias: bool) -> None:
        self.param = parametrization
        self.prune_bias = prune_bias

    def __call__(self, module, input, output):
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


def classes(impl: str):
    """(parametrization class, hook class, compiled?) of an implementation."""
    import structprune_triton as ours
    from torch.ao.pruning._experimental.pruner import parametrization as up

    return {
        "upstream-eager": (up.FakeStructuredSparsity, up.BiasHook, False),
        "upstream-compiled": (UpstreamArithFSS, UpstreamArithBiasHook, True),
        "ours-eager": (ours.FakeStructuredSparsity, ours.BiasHook, False),
        "ours-compiled": (ours.FakeStructuredSparsity, ours.BiasHook, True),
    }[impl]


def compile_graphs(fn, first_call):
    """Run ``first_call()`` (which compiles ``fn``) and count what Dynamo captured."""
    from torch._dynamo.utils import counters

    before = (counters["stats"]["unique_graphs"], sum(counters["graph_break"].values()))
    t0 = time.perf_counter()
    result = first_call()
    if SETTINGS.cuda:
        torch.cuda.synchronize()
    info = {
        "graphs": counters["stats"]["unique_graphs"] - before[0],
        "graph_breaks": sum(counters["graph_break"].values()) - before[1],
        "first_call_s": round(time.perf_counter() - t0, 3),
    }
    return result, info


def maybe_compile(module: nn.Module, compiled: bool):
    if not compiled:
        return module
    return torch.compile(module, backend=SETTINGS.backend, dynamic=False)


class WeightHolder(nn.Module):
    """A module owning one ``weight``; its forward returns the (parametrized) weight."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)

    def forward(self) -> torch.Tensor:
        return self.weight


class HookRunner(nn.Module):
    """A module owning ``_bias`` (as after upstream's ``_prepare``) whose forward applies a bias
    hook to a given module output, so that the hook alone can be timed and compiled."""

    def __init__(self, bias: torch.Tensor, hook) -> None:
        super().__init__()
        self._bias = nn.Parameter(bias)
        self.hook = hook

    def forward(self, output: torch.Tensor) -> torch.Tensor:
        return self.hook(self, None, output)


def prepare_layer(layer: nn.Module, impl: str, mask: torch.Tensor, prune_bias: bool = True) -> nn.Module:
    """Parametrize ``layer.weight`` and move its bias behind a hook, as upstream's
    ``BaseStructuredSparsifier._prepare`` does, with ``impl``'s classes."""
    fss, hook, _ = classes(impl)
    parametrize.register_parametrization(layer, "weight", fss(mask))
    if layer.bias is not None:
        layer.register_parameter("_bias", nn.Parameter(layer.bias.detach()))
        layer.bias = None
        layer.prune_bias = prune_bias
    layer.register_forward_hook(hook(layer.parametrizations.weight[0], prune_bias))
    return layer


class ObjectCache:
    """Keeps the last few built (module, compiled callable) entries, so that a case differing only
    in mask density reuses them (the new mask is copied in place): a parametrized module gets a new
    class per instance, so a fresh one would be recompiled."""

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self.entries: collections.OrderedDict = collections.OrderedDict()

    def get(self, key, build):
        if key in self.entries:
            self.entries.move_to_end(key)
            return self.entries[key], False
        value = build()
        self.entries[key] = value
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)
        return value, True

    def clear(self) -> None:
        self.entries.clear()


CACHE = ObjectCache()

# ---------------------------------------------------------------------------------------------
# inputs, bytes, paths


def random_mask(n: int, density: float, device) -> torch.Tensor:
    """A bool mask (what the pruner uses) with exactly round(density * n) live rows, never all dead."""
    live = max(1, round(density * n))
    mask = torch.zeros(n, dtype=torch.bool, device=device)
    mask[torch.randperm(n, device=device)[:live]] = True
    return mask


def randn(shape, dtype) -> torch.Tensor:
    """Standard normal values (never zeros: they hide unwritten outputs) on the bench device."""
    return torch.randn(shape, device=SETTINGS.device).to(dtype)


def ours_path(t: torch.Tensor, compiled: bool) -> str:
    """Which implementation structprune_triton runs for ``t``: "triton" or "torch"."""
    from structprune_triton._backend import kernel_dtypes, use_triton

    return "triton" if use_triton(t, for_eager=not compiled) and kernel_dtypes(t.dtype) else "torch"


def nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


# ---------------------------------------------------------------------------------------------
# correctness


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


# ---------------------------------------------------------------------------------------------
# timing


def sync() -> None:
    if SETTINGS.cuda:
        torch.cuda.synchronize()


def versions() -> dict:
    info = {"torch": torch.__version__}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if SETTINGS.cuda:
        info["device"] = torch.cuda.get_device_name()
    else:
        info["device"] = f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"
    try:
        import structprune_triton

        info["structprune_backend"] = structprune_triton.get_backend()
    except ImportError:
        pass
    return info


def _wall_per_call(fn, k: int) -> float:
    sync()
    t0 = time.perf_counter()
    for _ in range(k):
        fn()
    sync()
    return (time.perf_counter() - t0) / k


def measure_copy_bandwidth() -> float:
    """GB/s (bytes read + written) of a large device-to-device (or CPU memory-to-memory) copy."""
    if SETTINGS.cuda:
        import triton.testing

        n = 512 << 20  # 512 MiB source, 1 GiB moved per copy: far past the 60 MB L2
        src = torch.empty(n, dtype=torch.uint8, device="cuda").random_()
        dst = torch.empty_like(src)
        ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=20, rep=100, return_mode="median")
        return 2 * n / (ms * 1e-3) / 1e9
    n = 32 << 20
    src = torch.empty(n, dtype=torch.uint8).random_()
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = [_wall_per_call(lambda: dst.copy_(src), 3) for _ in range(7)]
    return 2 * n / statistics.median(times) / 1e9


SMALL_BYTES = 4 << 20  # below this, record the no-sync per-call wall time (launch overhead)


def interleaved_ratio(fn, ref_fn, timer, iterations: int, blocks: int) -> dict:
    """Time ``ref_fn`` and ``fn`` in alternating blocks of ``iterations`` calls (order swapped every
    block) and return the median over blocks of time(ref) / time(fn): load that drifts on a shared
    machine hits both alike, which separate pytest-benchmark runs minutes apart do not."""
    ratios, t_fn, t_ref = [], [], []
    for b in range(blocks):
        pair = {}
        for name, f in ((("ref", ref_fn), ("fn", fn)) if b % 2 == 0 else (("fn", fn), ("ref", ref_fn))):
            t0 = timer()
            for _ in range(iterations):
                f()
            sync()
            pair[name] = (timer() - t0) / iterations
        ratios.append(pair["ref"] / pair["fn"])
        t_fn.append(pair["fn"])
        t_ref.append(pair["ref"])
    return {"ratio": statistics.median(ratios), "ratio_of_mins": min(t_ref) / min(t_fn),
            "blocks": blocks, "iterations": iterations}


def measure(benchmark, fn, *, info: dict, copy_gbps: float | None, bytes_moved: int | None = None,
            bytes_dense: int | None = None, flops: float | None = None, small: bool = False,
            ref_fn=None) -> None:
    """Time ``fn`` (one call, already warmed up and checked) with pytest-benchmark and, on CUDA,
    do_bench; write the numbers and derived rates to ``benchmark.extra_info``. On CPU, with
    ``ref_fn`` (upstream eager on the same kind of input), also record the interleaved speed-up
    ``vs_upstream_eager_interleaved`` (upstream time / this time, see :func:`interleaved_ratio`)."""
    extra = benchmark.extra_info
    extra.update(versions())
    extra.update(info)
    extra["compile_backend"] = SETTINGS.backend if "compiled" in str(info.get("impl", "")) else None
    if bytes_moved is not None:
        extra["bytes"] = int(bytes_moved)
    if bytes_dense is not None:
        extra["bytes_dense"] = int(bytes_dense)
    if flops is not None:
        extra["flops"] = float(flops)
    if benchmark.disabled:
        benchmark(fn)
        return

    # one synced call to size the rounds
    fn()
    est = min(_wall_per_call(fn, 1) for _ in range(3))
    if SETTINGS.cuda:
        def timed():
            fn()
            torch.cuda.synchronize()

        rounds = int(min(100, max(5, SETTINGS.target_s / max(est, 1e-6))))
        benchmark.pedantic(timed, rounds=rounds, warmup_rounds=2, iterations=1)
        import triton.testing

        warm, rep = SETTINGS.dobench_ms
        device_ms = triton.testing.do_bench(fn, warmup=warm, rep=rep, return_mode="median")
        extra["device_ms"] = device_ms
        extra["time_s"] = device_ms * 1e-3
        extra["time_source"] = "device median, CUDA events, cold L2 (triton.testing.do_bench)"
        if small:
            k = int(min(500, max(20, 0.02 / max(est, 1e-6))))
            fn()
            extra["wall_us_nosync"] = _wall_per_call(fn, k) * 1e6
            extra["nosync_calls"] = k
    else:
        iterations = int(min(1000, max(1, 2e-3 / max(est, 1e-7))))  # rounds of >= ~2 ms
        rounds = int(min(50, max(5, SETTINGS.target_s / (est * iterations))))
        benchmark.pedantic(fn, rounds=rounds, warmup_rounds=1, iterations=iterations)
        extra["time_s"] = benchmark.stats.stats.median
        timer_fn = getattr(benchmark, "_timer", time.perf_counter)
        timer = f"{getattr(timer_fn, '__module__', '')}.{getattr(timer_fn, '__name__', timer_fn)}".lstrip(".")
        kind = "CPU time of the process" if "process_time" in timer else "wall time"
        threads = torch.get_num_threads()
        extra["time_source"] = f"median {kind} per call (pytest-benchmark, {timer}, {threads} thread(s))"
        if ref_fn is not None:
            ref_fn()
            r = interleaved_ratio(fn, ref_fn, timer_fn, iterations, 8 if SETTINGS.quick else 20)
            extra["vs_upstream_eager_interleaved"] = r["ratio"]
            extra["vs_upstream_eager_interleaved_mins"] = r["ratio_of_mins"]
    extra["table_median_s"] = benchmark.stats.stats.median  # what pytest-benchmark's table shows
    t = extra["time_s"]
    if bytes_moved is not None and t > 0:
        extra["gbps"] = bytes_moved / t / 1e9
        if bytes_dense is not None:
            extra["gbps_dense"] = bytes_dense / t / 1e9
        if copy_gbps:
            extra["copy_gbps"] = copy_gbps
            extra["pct_copy"] = 100.0 * extra["gbps"] / copy_gbps
    if flops is not None and t > 0:
        extra["tflops"] = flops / t / 1e12


"""Training-step time of pruned models: masked dense, row skipping, chain skipping, physically pruned.

The models of issue 15, pruned by ``structprune_triton.pruner.SaliencyPruner`` (masks set by its
``step()``), one training step = forward, backward, SGD step. Variants:

* masked dense: the prepared model as is;
* rows: ``skip_masked_rows(model, chains=False)``;
* chains: ``skip_masked_rows(model)``;
* compact: the prepared model trained inside ``compact_training(model, optimizer)``;
* pruned: ``pruner.prune()`` (smaller dense layers).

Variants run interleaved (one step of each per round, order rotating), timed by
``time.process_time`` (CPU time of the process, all threads: less sensitive to other processes than
wall time). Reported: median and interquartile range per step, and the speed-up over masked dense.
Every variant's first output is checked against masked dense before timing.

    python bench/skip_models.py                # full sizes, 2 torch threads
    python bench/skip_models.py --threads 1
    python bench/skip_models.py --quick        # CI-sized sanity run (seconds)
    python bench/skip_models.py --keep-memory  # glibc keeps freed memory (see keep_freed_memory)
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import platform
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from structprune_triton import compact_training, skip_masked_rows
from structprune_triton.pruner import SaliencyPruner
from structprune_triton.skip import LiveRowsForward

VARIANTS = ("masked dense", "rows", "chains", "compact", "pruned")


def mlp(width: int, hidden: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(width, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, width),
        nn.ReLU(),
        nn.Linear(width, 10),
    )


def convnet(cin: int, hidden: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(cin, hidden, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.Conv2d(hidden, hidden, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.Conv2d(hidden, cin, 3, padding=1, bias=False),
    )


def cases(quick: bool) -> list[tuple[str, Callable[[], nn.Module], list[str], float, tuple[int, ...]]]:
    """(name, model factory, pruned layer names, density, input shape)."""
    if quick:
        return [
            ("MLP 64-256-256-64-10, batch 16, d=0.5", lambda: mlp(64, 256), ["0", "2", "4"], 0.5, (16, 64)),
            ("Conv2d 8-32-32-8, input 4x8x8x8, d=0.5", lambda: convnet(8, 32), ["0", "2"], 0.5, (4, 8, 8, 8)),
        ]
    return [
        ("MLP 1024-4096-4096-1024-10, batch 256, d=0.5", lambda: mlp(1024, 4096), ["0", "2", "4"], 0.5, (256, 1024)),
        ("MLP 1024-4096-4096-1024-10, batch 256, d=0.25", lambda: mlp(1024, 4096), ["0", "2", "4"], 0.25, (256, 1024)),
        (
            "Conv2d 64-256-256-64 3x3, input 16x64x32x32, d=0.5",
            lambda: convnet(64, 256),
            ["0", "2"],
            0.5,
            (16, 64, 32, 32),
        ),
    ]


def build(variant: str, factory: Callable[[], nn.Module], layers: list[str], density: float, quick: bool) -> nn.Module:
    torch.manual_seed(0)
    model = factory()
    pruner = SaliencyPruner({"sparsity_level": 1.0 - density})
    pruner.prepare(model, [{"tensor_fqn": f"{name}.weight"} for name in layers])
    pruner.step()  # masks: the rows of smallest L1 norm die
    small = {"min_numel": 0, "row_multiple": 8} if quick else {}
    if variant == "rows":
        skip_masked_rows(model, chains=False, **small)
    elif variant == "chains":
        skip_masked_rows(model, **small)
    elif variant == "pruned":
        skip_masked_rows(model, enabled=False)
        model = pruner.prune()
    return model


def skipping(model: nn.Module) -> str:
    """What the skipping forwards of ``model`` do, e.g. "rows 3, input columns 3"."""
    forwards = [f for f in (m.__dict__.get("forward") for m in model.modules()) if isinstance(f, LiveRowsForward)]
    return f"rows {sum(f.skip for f in forwards)}, input columns {sum(f.chain for f in forwards)}"


def step_fn(model: nn.Module, x: torch.Tensor, compact: bool = False) -> Callable[[], torch.Tensor]:
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    if compact:  # the block stays open for the rest of the process (its hooks keep it alive)
        compact_training(model, opt).__enter__()

    def step() -> torch.Tensor:
        out = model(x)
        out.square().mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out

    return step


def measure(name, factory, layers, density, shape, rounds: int, quick: bool) -> tuple[dict[str, list[float]], str]:
    """Per-step process times of every variant, and what the skipping variants skip."""
    torch.manual_seed(1)
    x = torch.randn(shape)
    steps, first, skips = {}, {}, []
    for variant in VARIANTS:
        model = build(variant, factory, layers, density, quick)
        if variant in ("rows", "chains"):
            skips.append(f"{variant}: {skipping(model)}")  # e.g. "chains: rows 3, input columns 2"
        steps[variant] = step_fn(model, x, compact=variant == "compact")
        with torch.no_grad():
            first[variant] = model(x)
    for variant in VARIANTS[1:]:  # same function as masked dense before any step
        err = (first[variant] - first["masked dense"]).abs().max().item()
        scale = first["masked dense"].abs().max().item()
        if not err <= 1e-4 * max(scale, 1.0):
            raise AssertionError(f"{name}: {variant} differs from masked dense by {err:.3g}")
    for step in steps.values():  # warm-up
        step()
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for r in range(rounds):
        order = VARIANTS[r % len(VARIANTS) :] + VARIANTS[: r % len(VARIANTS)]
        for variant in order:
            t0 = time.process_time()
            steps[variant]()
            times[variant].append(time.process_time() - t0)
    return times, "; ".join(skips)


def keep_freed_memory() -> None:
    """Make glibc's malloc serve blocks up to 1 GiB from its heap and never give freed memory back
    to the OS. By default blocks above 32 MiB are mapped for each allocation and unmapped when freed,
    so every training step page-faults its full-size gradients in again (and zero-fills them): that
    was a third of a chain-skipping MLP step at d=0.25. Applies to every variant alike."""
    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_threshold = -1, -3
    if libc.mallopt(m_mmap_threshold, 1 << 30) != 1 or libc.mallopt(m_trim_threshold, 2**31 - 1) != 1:
        raise RuntimeError("mallopt refused the settings")


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        return f"{names[0]}, {len(names)} cores visible" if names else platform.machine()
    except OSError:
        return platform.processor() or platform.machine()


def summary(samples: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(samples, n=4) if len(samples) > 1 else [samples[0]] * 3
    return statistics.median(samples), q[0], q[2]


def main(argv: list[str] | None = None) -> list[tuple[str, dict[str, list[float]], str]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 15, quick 3)")
    parser.add_argument("--quick", action="store_true", help="small models, few rounds: a sanity run")
    parser.add_argument("--keep-memory", action="store_true", help="glibc malloc keeps freed memory (Linux)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.keep_memory:
        keep_freed_memory()
    rounds = args.rounds or (3 if args.quick else 15)
    print(
        f"# {datetime.date.today()}, torch {torch.__version__}, {cpu_name()}, "
        f"{torch.get_num_threads()} torch threads, {rounds} interleaved rounds, process time per training step"
        + (", glibc keeps freed memory" if args.keep_memory else "")
    )
    print("| model | " + " | ".join(VARIANTS) + " |")
    print("|---" * (len(VARIANTS) + 1) + "|")
    results, notes = [], []
    for name, factory, layers, density, shape in cases(args.quick):
        times, skips = measure(name, factory, layers, density, shape, rounds, args.quick)
        notes.append(f"{name}: number of layers skipping {skips}")
        base = statistics.median(times["masked dense"])
        cells = []
        for variant in VARIANTS:
            med, lo, hi = summary(times[variant])
            speed = "" if variant == "masked dense" else f" ({base / med:.2f}x)"
            cells.append(f"{med * 1e3:.0f} ms [{lo * 1e3:.0f}-{hi * 1e3:.0f}]{speed}")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
        results.append((name, times, skips))
    print("\nMedian [interquartile range] per training step; (x): speed-up over masked dense.")
    print("\n".join(notes))
    return results


if __name__ == "__main__":
    main()

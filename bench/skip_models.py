"""Training-step time of pruned models: masked dense, row skipping, chain skipping, physically pruned.

Every model of :func:`cases` is prepared by ``structprune_triton.pruner.SaliencyPruner`` (masks set by
its ``step()``); one training step is forward, backward, SGD step. Each entry of :data:`VARIANTS`
turns the masked model into the model it trains:

* masked dense: the prepared model as is (the baseline);
* rows: ``skip_masked_rows(model, chains=False)``;
* chains: ``skip_masked_rows(model)``;
* compact: the prepared model trained inside ``compact_training(model, optimizer)``;
* pruned: ``pruner.prune()`` (smaller dense layers).

The variants run interleaved (``structprune_triton.timing.interleaved``: one step of each per round
after untimed warm-up steps, order rotating), timed by the process's CPU time. Reported: the median
and interquartile range per step, and the speed-up over masked dense (per round, masked dense's
time / the variant's; median [quartiles]). Every variant's first output is checked against masked
dense before timing. ``--json PATH`` writes the run (every round's times, and their median and
quartiles) for ``bench/report.py``.

    python bench/skip_models.py --threads 1 --json bench/out/skip_models.json
    python bench/skip_models.py --quick        # CI-sized sanity run (seconds)
    python bench/skip_models.py --keep-memory  # glibc keeps freed memory (see keep_freed_memory)
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from structprune_triton import compact_training, run_info, skip_masked_rows, timing
from structprune_triton.pruner import SaliencyPruner
from structprune_triton.skip import LiveRowsForward


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


class ResidualBlock(nn.Module):
    """Conv(c -> inner)-BN-ReLU-Conv(inner -> c)-BN plus the residual, then ReLU."""

    def __init__(self, channels: int, inner: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, inner, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + x)


class ResNetCNN(nn.Module):
    """ResNet-style CNN: stem 3 -> ``channels`` (conv, BN, ReLU), two residual blocks, global average
    pool, Linear head."""

    def __init__(self, channels: int, inner: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.b1 = ResidualBlock(channels, inner)
        self.b2 = ResidualBlock(channels, inner)
        self.fc = nn.Linear(channels, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.b2(self.b1(F.relu(self.bn(self.stem(x)))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def resnet_inner_channels(model: nn.Module) -> list[dict]:
    """Pruner config: the blocks' inner channels (conv1 and, with prune_norm, its BatchNorm)."""
    return [{"tensor_fqn": f"{block}.conv1.weight", "prune_norm": True} for block in ("b1", "b2")]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class SwiGLU(nn.Module):
    """``x + down(silu(gate(norm(x))) * up(norm(x)))``, LLaMA-style (no biases)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = RMSNorm(dim)
        self.gate = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(x)
        return x + self.down(F.silu(self.gate(y)) * self.up(y))


def swiglu_stack(dim: int, hidden: int) -> nn.Module:
    return nn.Sequential(SwiGLU(dim, hidden), SwiGLU(dim, hidden))


def swiglu_gate_and_up(model: nn.Module) -> list[dict]:
    """Pruner config: gate and up of each layer share one mask (a hidden channel is one unit, so the
    density is the hidden width's; saliency then picks the rows dead in either)."""
    config = []
    for i, layer in enumerate(model):
        shared = torch.ones(layer.gate.out_features, dtype=torch.bool)
        config += [{"tensor_fqn": f"{i}.{name}.weight", "mask": shared} for name in ("gate", "up")]
    return config


def cases(quick: bool) -> list[tuple[str, Callable[[], nn.Module], list[str], float, tuple[int, ...]]]:
    """(name, model factory, pruned layer names or a function model -> pruner config, density,
    input shape)."""
    if quick:
        return [
            ("MLP 64-256-256-64-10, batch 16, d=0.5", lambda: mlp(64, 256), ["0", "2", "4"], 0.5, (16, 64)),
            ("Conv2d 8-32-32-8, input 4x8x8x8, d=0.5", lambda: convnet(8, 32), ["0", "2"], 0.5, (4, 8, 8, 8)),
            (
                "ResNet-style 8/16, input 4x3x8x8, d=0.5",
                lambda: ResNetCNN(8, 16),
                resnet_inner_channels,
                0.5,
                (4, 3, 8, 8),
            ),
            (
                "SwiGLU 32/128 x2, input 2x8x32, d=0.5",
                lambda: swiglu_stack(32, 128),
                swiglu_gate_and_up,
                0.5,
                (2, 8, 32),
            ),
        ]
    return [
        (
            "ResNet-style CNN, stem 3->64, 2 blocks 64->128->64 + BN + residual, input 16x3x32x32, d=0.5",
            lambda: ResNetCNN(64, 128),
            resnet_inner_channels,
            0.5,
            (16, 3, 32, 32),
        ),
        (
            "SwiGLU MLP x2, RMSNorm, d=512, hidden 2048, input 8x64x512, d=0.5",
            lambda: swiglu_stack(512, 2048),
            swiglu_gate_and_up,
            0.5,
            (8, 64, 512),
        ),
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


# A variant: (masked model, its pruner, skip_masked_rows keyword arguments) -> the model it trains.
Build = Callable[[nn.Module, SaliencyPruner, dict], nn.Module]


def _rows(model: nn.Module, pruner: SaliencyPruner, skip: dict) -> nn.Module:
    skip_masked_rows(model, chains=False, **skip)
    return model


def _chains(model: nn.Module, pruner: SaliencyPruner, skip: dict) -> nn.Module:
    skip_masked_rows(model, **skip)
    return model


VARIANTS: dict[str, Build] = {
    "masked dense": lambda model, pruner, skip: model,
    "rows": _rows,
    "chains": _chains,
    "compact": lambda model, pruner, skip: model,  # trained inside compact_training: see step_fn
    "pruned": lambda model, pruner, skip: pruner.prune(),
}
BASELINE = "masked dense"


def build(variant: str, factory: Callable[[], nn.Module], layers: list[str], density: float, quick: bool) -> nn.Module:
    torch.manual_seed(0)
    model = factory()
    pruner = SaliencyPruner({"sparsity_level": 1.0 - density})
    config = layers(model) if callable(layers) else [{"tensor_fqn": f"{name}.weight"} for name in layers]
    pruner.prepare(model, config)
    pruner.step()  # masks: the rows of smallest L1 norm die
    small = {"min_numel": 0, "row_multiple": 8} if quick else {}  # let the tiny quick models skip too
    return VARIANTS[variant](model, pruner, small)


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
    """Seconds per step of every variant, one entry per round, and what the skipping variants skip."""
    torch.manual_seed(1)
    x = torch.randn(shape)
    steps, first, skips = {}, {}, []
    for variant in VARIANTS:
        model = build(variant, factory, layers, density, quick)
        if any(isinstance(m.__dict__.get("forward"), LiveRowsForward) for m in model.modules()):
            skips.append(f"{variant}: {skipping(model)}")  # e.g. "chains: rows 3, input columns 2"
        steps[variant] = step_fn(model, x, compact=variant == "compact")
        with torch.no_grad():
            first[variant] = model(x)
    scale = max(first[BASELINE].abs().max().item(), 1.0)
    for variant, out in first.items():  # the same function as masked dense before any step
        err = (out - first[BASELINE]).abs().max().item()
        if not err <= 1e-4 * scale:
            raise AssertionError(f"{name}: {variant} differs from {BASELINE} by {err:.3g}")
    return timing.interleaved(steps, rounds=rounds), "; ".join(skips)


def keep_freed_memory() -> None:
    """Make glibc's malloc serve blocks up to 1 GiB from its heap and never give freed memory back
    to the OS. By default blocks above 32 MiB are mapped for each allocation and unmapped when freed,
    so every training step page-faults its full-size gradients in again (and zero-fills them): that
    was a third of a chain-skipping MLP step at d=0.25. Applies to every variant alike."""
    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_threshold = -1, -3
    if libc.mallopt(m_mmap_threshold, 1 << 30) != 1 or libc.mallopt(m_trim_threshold, 2**31 - 1) != 1:
        raise RuntimeError("mallopt refused the settings")


def table_header(variants: list[str]) -> list[str]:
    return ["| model | " + " | ".join(variants) + " |", "|---" * (len(variants) + 1) + "|"]


def table_row(case: dict, variants: list[str]) -> str:
    """``| name | 841 ms [762-924] | 447 ms [407-485] (1.88x [1.80-1.95] faster) | ...``: per variant
    the median [IQR] per step, and the speed-up over the baseline per round."""
    cells = []
    for v in variants:
        t = case["step_s"][v]
        c = f"{t['median'] * 1e3:.3g} ms [{t['q1'] * 1e3:.3g}-{t['q3'] * 1e3:.3g}]"
        cells.append(c + (f" ({timing.Spread(**case['vs_baseline'][v])})" if v in case["vs_baseline"] else ""))
    return f"| {case['name']} | " + " | ".join(cells) + " |"


def describe(run: dict) -> str:
    """Date, machine, versions, timing and command of a run, in one line (a plot's caption)."""
    memory = ", glibc keeps freed memory" if run["keep_memory"] else ""
    return (
        f"{run['date']}; {run['device']}; {run['versions']}; {run['rounds']} interleaved rounds, "
        f"{run['clock']}{memory}; command: {run['command']}"
    )


def table(run: dict) -> list[str]:
    """The markdown table of a run (what ``main`` prints, and ``bench/report.py`` writes)."""
    rows = [table_row(case, run["variants"]) for case in run["cases"]]
    legend = f"Median [interquartile range] per training step; (x): per round, {run['baseline']}'s time / this one's."
    return [*table_header(run["variants"]), *rows, "", legend]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 11, quick 3)")
    parser.add_argument("--quick", action="store_true", help="small models, few rounds: a sanity run")
    parser.add_argument("--keep-memory", action="store_true", help="glibc malloc keeps freed memory (Linux)")
    parser.add_argument("--json", type=Path, help="also write the run (every round's times) to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.keep_memory:
        keep_freed_memory()
    rounds = args.rounds or (3 if args.quick else 11)
    machine = dict(run_info.describe("cpu"))
    run = {
        "command": shlex.join(["python", "bench/skip_models.py", *(sys.argv[1:] if argv is None else argv)]),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": machine["device"],
        "versions": machine["versions"],
        "clock": timing.clock_name("cpu"),
        "threads": torch.get_num_threads(),
        "rounds": rounds,
        "keep_memory": args.keep_memory,
        "baseline": BASELINE,
        "variants": list(VARIANTS),
        "cases": [],
    }
    print(f"# {run['date']}; {run['device']}; {run['versions']}")
    print(
        f"# {rounds} interleaved rounds, {run['clock']} per training step"
        + (", glibc keeps freed memory" if args.keep_memory else "")
    )
    print("\n".join(table_header(run["variants"])))
    for name, factory, layers, density, shape in cases(args.quick):
        times, skips = measure(name, factory, layers, density, shape, rounds, args.quick)
        case = {
            "name": name,
            "density": density,
            "skipping": skips,
            "times_s": times,
            "step_s": {v: timing.Spread.of(t).as_dict() for v, t in times.items()},
            "vs_baseline": {v: s.as_dict() for v, s in timing.ratios(times, BASELINE).items()},
        }
        run["cases"].append(case)
        print(table_row(case, run["variants"]), flush=True)
    print("\n" + table(run)[-1])
    print("\n".join(f"{c['name']}: layers skipping {c['skipping']}" for c in run["cases"]))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(run, indent=1) + "\n")
        print(f"wrote {args.json}")
    return run["cases"]


if __name__ == "__main__":
    main()

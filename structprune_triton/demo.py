"""End-to-end demo: structured pruning of a small CNN with upstream's pruner and with this package's.

Run ``python -m structprune_triton`` (``--help`` for the options). Everything is embedded: a small
CNN (three Conv2d layers with ReLU and max-pooling, then AdaptiveAvgPool2d / Flatten / Linear, so
that upstream's prune patterns apply) and synthetic, learnable data; nothing is downloaded.

Each variant is a copy of the same model, masked by ``step()`` of a ``SaliencyPruner``: upstream's
(the baseline), ours (masked dense), ours with ``skip_masked_rows`` skipping rows and chains, ours
fine-tuned inside ``compact_training``, and the physically pruned model (``prune()`` right after the
first ``step()``: the speed fine-tuning would have if the model were pruned first). Each is
fine-tuned in interleaved timed rounds (see :mod:`structprune_triton.timing`), then the masks are
updated and the model ``prune()``d; the demo checks that the pruned model computes what the
masked model did (exit status 1 on FAIL).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import statistics
import sys
import time
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.ao.pruning._experimental import pruner as upstream_pruner

import structprune_triton
from structprune_triton import pruner as our_pruner
from structprune_triton import timing
from structprune_triton.demo_model import IMAGE_SIZE, PRUNE_CONFIG, SmallCNN, count_params, synthetic_data
from structprune_triton.run_info import describe

LR = 0.01
# Pruned vs masked output, fp32: the pruned model sums fewer terms (the dropped ones were exact
# zeros), so only the order of fp32 additions changes: a few ulp of O(1) activations. A pruning
# error (a wrong channel or bias) would be off by O(0.1).
TOLERANCE = 1e-4


_start = time.perf_counter()


def progress(message: str) -> None:
    """One line per phase, prefixed with the seconds since the demo started."""
    print(f"[{time.perf_counter() - _start:6.1f}s] {message}", flush=True)


@contextlib.contextmanager
def exact_fp32() -> Iterator[None]:
    """Full-precision fp32 matmuls and convolutions on CUDA (no TF32) while checking outputs."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# (row label, pruner, skip_masked_rows chains argument or None, fine-tuned inside compact_training,
# pruned before fine-tuning)
SPECS = [
    ("upstream (baseline)", upstream_pruner.SaliencyPruner, None, False, False),
    ("ours: masked dense", our_pruner.SaliencyPruner, None, False, False),
    ("ours + skip rows", our_pruner.SaliencyPruner, False, False, False),
    ("ours + skip chains", our_pruner.SaliencyPruner, True, False, False),
    ("ours + compact_training", our_pruner.SaliencyPruner, None, True, False),
    ("pruned model", our_pruner.SaliencyPruner, None, False, True),
]


class Variant:
    """One row: a prepared and masked copy of the model, trained one step at a time (so variants
    can be interleaved), then pruned and checked."""

    def __init__(self, spec: tuple, compiled: bool, base: nn.Module, sparsity: float, backend: str) -> None:
        self.name, pruner_cls, chains, compact, self.pruned_first = spec
        self.compiled = compiled
        self.label = f"{self.name}, {'compiled' if compiled else 'eager'}"
        self.model = copy.deepcopy(base)
        self.pruner = pruner_cls({"sparsity_level": sparsity})
        self.pruner.prepare(self.model, copy.deepcopy(PRUNE_CONFIG))
        self.pruner.step()  # masks from the initial weights' saliency
        self.skipping = None
        if chains is not None:
            structprune_triton.skip_masked_rows(self.model, chains=chains)
            self.skipping = structprune_triton.refresh_live_rows(self.model)
        if self.pruned_first:
            self.model = self.pruner.prune()
        self.counter = timing.GraphCounter(backend) if compiled else None
        self.forward = (
            torch.compile(timing.fresh_forward(self.model, f"v{id(self)}"), backend=self.counter)
            if compiled
            else self.model
        )
        self.opt = torch.optim.SGD(self.model.parameters(), lr=LR, momentum=0.9)
        self.block = structprune_triton.compact_training(self.model, self.opt) if compact else None
        if self.block is not None:  # left in finish(), before the pruner's step and prune()
            self.block.__enter__()
        self.batches: list[tuple[Tensor, Tensor]] = []
        self.steps_done = 0
        self.compile_s = math.nan
        self.loss = [math.nan, math.nan]
        self.max_diff, self.params_after, self.pruned_out = math.nan, count_params(self.model), None

    def step(self) -> None:
        images, labels = self.batches[self.steps_done % len(self.batches)]
        self.opt.zero_grad(set_to_none=True)
        F.cross_entropy(self.forward(images), labels).backward()
        self.opt.step()
        self.steps_done += 1

    def warm_up(self, steps: int) -> None:
        """Untimed steps; a compiled variant compiles in the first one (graphs and breaks counted)."""
        t0 = time.perf_counter()
        if self.counter is not None:
            self.counter.track(lambda: [self.step() for _ in range(steps)])
        else:
            for _ in range(steps):
                self.step()
        self.compile_s = time.perf_counter() - t0

    def eval_loss(self, images: Tensor, labels: Tensor) -> float:
        with torch.no_grad():
            return float(F.cross_entropy(self.model(images), labels))

    @property
    def passed(self) -> bool:
        return self.pruned_first or self.max_diff <= TOLERANCE

    def finish(self, x_eval: Tensor) -> None:
        """Update the masks, prune, and compare the pruned model's output with the masked one's."""
        with torch.no_grad(), exact_fp32():
            if self.pruned_first:
                self.pruned_out = self.model(x_eval)
                return
            if self.block is not None:
                self.block.__exit__(None, None, None)  # writes the full parameters back
            self.pruner.step()  # masks from the fine-tuned weights
            masked = self.model(x_eval)
            pruned = self.pruner.prune()
            out = pruned(x_eval)
        self.params_after = count_params(pruned)
        scale = max(1.0, float(masked.abs().max()))
        self.max_diff = float((out - masked).abs().max()) / scale if out.shape == masked.shape else math.inf
        self.pruned_out = out


def run(variants: list[Variant], data: list, args: argparse.Namespace) -> dict[str, list[float]]:
    """Warm up each variant, time them in interleaved rounds, then prune and check each."""
    images, labels = data[0]
    for v in variants:
        v.batches = data
        v.loss[0] = v.eval_loss(images, labels)
        progress(f"{v.label}: {args.warmup} warm-up steps" + (" (compiles)" if v.compiled else ""))
        v.warm_up(args.warmup)
    progress(f"{args.rounds} rounds x {args.steps} steps per variant, interleaved, {len(variants)} variants")
    steps = {v.label: v.step for v in variants}
    times = timing.interleaved(steps, rounds=args.rounds, number=args.steps, device=images.device)
    for v in variants:
        v.loss[1] = v.eval_loss(images, labels)
        v.finish(images)
        if not v.pruned_first:
            progress(
                f"{v.label}: step() + prune(), max |pruned - masked| / max |masked| = {v.max_diff:.1e} "
                f"({'PASS' if v.passed else 'FAIL'})"
            )
    return times


def print_report(
    args: argparse.Namespace,
    device: torch.device,
    params_before: int,
    variants: list[Variant],
    times: dict[str, list[float]],
) -> None:
    print("\nstructprune_triton demo: SaliencyPruner on a small CNN with synthetic data")
    for key, value in describe(device):
        print(f"  {key:<9} {value}")
    print(
        f"  setup     batch {args.batch_size}x3x{IMAGE_SIZE}x{IMAGE_SIZE}, width {args.width}, sparsity "
        f"{args.sparsity}, {args.rounds} rounds x {args.steps} steps after {args.warmup} warm-up, "
        f"seed {args.seed}\n"
    )
    header = (
        f"{'variant':<23} {'mode':<8} {'ms/step':>8}  {'vs upstream eager [IQR]':<27} "
        f"{'graphs/breaks':>13} {'compile s':>9} {'loss before->after':>18} {'params':>7} {'check':>5}"
    )
    print(header)
    print("-" * len(header))
    spreads = timing.ratios(times, variants[0].label)
    for v in variants:
        ratio = str(spreads[v.label]) if v.label in spreads else "baseline"
        graphs = f"{v.counter.graphs}/{v.counter.breaks}" if v.counter else "-"
        compile_s = f"{v.compile_s:.1f}" if v.compiled else "-"
        check = "-" if v.pruned_first else ("PASS" if v.passed else "FAIL")
        loss = f"{v.loss[0]:.3f}->{v.loss[1]:.3f}"
        mode, ms = "compiled" if v.compiled else "eager", 1e3 * statistics.median(times[v.label])
        print(
            f"{v.name:<23} {mode:<8} {ms:>8.2f}  {ratio:<27} {graphs:>13} {compile_s:>9} {loss:>18} "
            f"{v.params_after:>7,} {check:>5}"
        )
    print(
        f"ms/step: median over rounds of a training step's {timing.clock_name(device)} (forward, backward, SGD\n"
        "  update); per round, a block of --steps steps of each variant after 2 untimed ones, order rotating.\n"
        "vs upstream eager: per round, upstream eager's time / this row's; median [interquartile range];\n"
        "  'same' when the range contains 1.0. graphs/breaks: graphs Dynamo compiled for this row alone\n"
        "  (its own code object and backend) and graph breaks. params: after prune(). pruned model: pruned\n"
        "  right after the first step(), then fine-tuned (no mask, nothing to check)."
    )
    eager_skips = [v for v in variants if v.skipping is not None and not v.compiled]
    skips = [f"{v.name} {v.skipping} of {len(PRUNE_CONFIG)}" for v in eager_skips]
    if skips:
        print(f"layers that skip: {', '.join(skips)} (smaller or denser layers keep the dense path:")
        print("  skip_masked_rows' min_numel and max_density)")
    after = variants[0].params_after
    fewer = 100 * (1 - after / params_before)
    print(f"\nparameters: {params_before:,} before, {after:,} after pruning ({fewer:.0f}% fewer)")
    ref = variants[0].pruned_out
    for v in variants[1:]:
        if not v.pruned_first and v.pruned_out is not None and v.pruned_out.shape == ref.shape:
            diff = float((v.pruned_out - ref).abs().max())
            print(f"pruned output, {v.label} vs upstream eager: max abs difference {diff:.1e}")
    checked = [v for v in variants if not v.pruned_first]
    worst = max(v.max_diff for v in checked)
    print(
        f"{'PASS' if all(v.passed for v in checked) else 'FAIL'}: pruned model output matches the masked model "
        f"(max relative difference {worst:.1e}, tolerance {TOLERANCE:.0e})"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m structprune_triton",
        description=(
            "Structured-pruning demo: prepare a small CNN with upstream's SaliencyPruner "
            "(torch.ao.pruning._experimental.pruner) and with structprune_triton's drop-in one, fine-tune on "
            "synthetic data, prune, check that the pruned model computes what the masked model did, and compare "
            "the time per training step (interleaved rounds, median and interquartile range). Exit status 1 if "
            "the check fails."
        ),
        epilog="The model and data are built in (no downloads). structprune_triton.settings() chooses the backend.",
    )
    add = parser.add_argument
    add("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: cuda when available, else cpu")
    add("--rounds", type=int, default=20, help="timed rounds; every variant runs in each (default: 20)")
    add("--steps", type=int, default=3, help="timed training steps per variant per round (default: 3)")
    add("--warmup", type=int, default=3, help="untimed steps per variant first; they compile (default: 3)")
    add("--sparsity", type=float, default=0.5, help="fraction of output channels to prune, in [0, 1) (default: 0.5)")
    add("--batch-size", type=int, default=32, help="images per training step (default: 32)")
    add("--width", type=int, default=32, help="channels of the first convolution, then 2x, 4x (default: 32)")
    add(
        "--compile",
        action=argparse.BooleanOptionalAction,
        help="also time every variant under torch.compile "
        "(default: on with CUDA; off on CPU, where Inductor takes 10-30 s per variant)",
    )
    add("--compile-backend", default="inductor", help="torch.compile backend of the compiled rows (default: inductor)")
    add(
        "--threads",
        type=int,
        default=1,
        help="CPU: torch threads (default: 1, so that process CPU time is this "
        "run's work, not threads spinning while another process holds a core; 0: torch's default)",
    )
    add("--seed", type=int, default=0, help="seed for the model and the data (default: 0)")
    args = parser.parse_args(argv)
    for name in ("rounds", "steps", "batch_size", "width"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0:
        parser.error("--warmup must be at least 0")
    if not 0.0 <= args.sparsity < 1.0:
        parser.error("--sparsity must be in [0, 1)")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if cuda else "cpu")
    if args.compile is None:
        args.compile = device.type == "cuda"
    if device.type == "cpu" and args.threads > 0:
        torch.set_num_threads(args.threads)
    global _start
    _start = time.perf_counter()
    progress(f"device {device}, torch.compile {'on' if args.compile else 'off'}")
    torch.manual_seed(args.seed)
    base = SmallCNN(args.width).to(device)
    data = synthetic_data(args.batch_size, device, torch.Generator().manual_seed(args.seed))
    specs = SPECS
    modes = [False, True] if args.compile else [False]
    progress(f"prepare {len(specs) * len(modes)} copies of the model, step() sets the masks")
    if args.compile:
        torch._dynamo.reset()
    variants = [
        Variant(spec, compiled, base, args.sparsity, args.compile_backend) for compiled in modes for spec in specs
    ]
    times = run(variants, data, args)
    progress("done")
    print_report(args, device, count_params(base), variants, times)
    return 0 if all(v.passed for v in variants) else 1


if __name__ == "__main__":
    sys.exit(main())

"""End-to-end demo: structured pruning of a small CNN with upstream's pruner and with this package's.

Run ``python -m structprune_triton`` (``--help`` for the options). Everything is embedded: a small
CNN (three Conv2d layers with ReLU and max-pooling, then AdaptiveAvgPool2d / Flatten / Linear, so
that upstream's prune patterns apply) and synthetic, learnable data; nothing is downloaded.

For each variant (upstream's ``SaliencyPruner`` and ours; eager, and ``torch.compile``d where
enabled) the demo prepares a copy of the same model, sets the masks (``step()``), fine-tunes for
``--steps`` timed steps, updates the masks again, and ``prune()``s. It checks that the pruned model
computes what the masked model did (PASS/FAIL, exit status 1 on FAIL) and prints a table: parameters
before and after, time per training step, and the device and versions.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.ao.pruning._experimental import pruner as upstream_pruner

import structprune_triton
from structprune_triton import _backend
from structprune_triton import pruner as our_pruner

IMAGE_SIZE = 32
NUM_CLASSES = 10
NUM_BATCHES = 4  # distinct synthetic batches cycled through during fine-tuning
WARMUP_STEPS = 3  # default untimed training steps before timing (the first one compiles, when compiling)
LR = 0.03
# Pruned vs masked output, fp32: the pruned model sums fewer terms (the dropped ones were exact
# zeros), so only the order of fp32 additions changes: a few ulp of O(1) activations. A pruning
# error (a wrong channel or bias) would be off by O(0.1).
TOLERANCE = 1e-4


class SmallCNN(nn.Module):
    """Three 3x3 convolutions (ReLU and 2x2 max-pool after the first two), then global average
    pooling and a linear classifier. The first two convolutions have no bias: upstream's pattern for
    a biased conv followed by a padded conv only zeroes channels instead of removing them."""

    def __init__(self, width: int = 16, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1, bias=False),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 4 * width, 3, padding=1, bias=True),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


# The convolutions are pruned; the classifier is not (pruning it would remove classes).
PRUNE_CONFIG = [{"tensor_fqn": f"features.{i}.weight"} for i in (0, 3, 6)]


def synthetic_data(batch_size: int, device: torch.device, generator: torch.Generator) -> list[tuple[Tensor, Tensor]]:
    """Batches of noisy copies of one random template per class (a colour plus a pattern), so the
    loss visibly falls within a few steps."""
    colours = torch.randn(NUM_CLASSES, 3, 1, 1, generator=generator)
    templates = colours + 0.5 * torch.randn(NUM_CLASSES, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    batches = []
    for _ in range(NUM_BATCHES):
        labels = torch.randint(NUM_CLASSES, (batch_size,), generator=generator)
        images = templates[labels] + 0.5 * torch.randn(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
        batches.append((images.to(device), labels.to(device)))
    return batches


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class Progress:
    """One line per phase, prefixed with the time since the start."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        print(f"[{time.perf_counter() - self.start:6.1f}s] {message}", flush=True)


@dataclass
class Result:
    name: str
    compiled: bool
    step_ms: float = math.nan
    first_step_ms: float = math.nan
    loss_start: float = math.nan
    loss_end: float = math.nan
    params_after: int = 0
    max_diff: float = math.nan
    passed: bool = False
    pruned_out: Tensor | None = field(default=None, repr=False)


@contextlib.contextmanager
def exact_fp32() -> Iterator[None]:
    """Full-precision fp32 matmuls and convolutions on CUDA (no TF32) while checking outputs."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Variant:
    """One pruner on one copy of the model, eager or compiled: prepared and masked at construction,
    then trained one step at a time (so variants can be interleaved), then pruned and checked."""

    def __init__(
        self,
        name: str,
        pruner_cls: Callable[[dict], upstream_pruner.BaseStructuredSparsifier],
        compiled: bool,
        base: nn.Module,
        sparsity: float,
        skip: bool = False,
    ) -> None:
        self.result = Result(name, compiled)
        self.label = f"{name} {'compiled' if compiled else 'eager'}"
        self.model = copy.deepcopy(base)
        self.pruner = pruner_cls({"sparsity_level": sparsity})
        self.pruner.prepare(self.model, copy.deepcopy(PRUNE_CONFIG))
        self.pruner.step()  # masks from the initial weights' saliency
        # skip_masked_rows: layers above the size/density thresholds compute only their live rows
        self.skipping: int | None = None
        if skip:
            structprune_triton.skip_masked_rows(self.model)
            self.skipping = structprune_triton.refresh_live_rows(self.model)  # layers that skip
        self.train_model = torch.compile(self.model) if compiled else self.model
        self.opt = torch.optim.SGD(self.model.parameters(), lr=LR, momentum=0.9)
        self.times: list[float] = []
        self.steps_done = 0

    def train_step(self, images: Tensor, labels: Tensor, timed: bool) -> None:
        """One SGD step; its wall time (device synchronised) is recorded if ``timed``."""
        device = images.device
        _sync(device)
        t0 = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.train_model(images), labels)
        loss.backward()
        self.opt.step()
        _sync(device)
        elapsed = time.perf_counter() - t0
        if self.steps_done == 0:
            self.result.first_step_ms = 1e3 * elapsed
        if timed:
            self.times.append(elapsed)
        self.steps_done += 1

    def eval_loss(self, images: Tensor, labels: Tensor) -> float:
        """Cross-entropy of the masked model (eager) on a fixed batch."""
        with torch.no_grad():
            return float(F.cross_entropy(self.model(images), labels))

    def finish(self, x_eval: Tensor) -> Result:
        """Update the masks, prune, and compare the pruned model's output with the masked one's."""
        res = self.result
        res.step_ms = 1e3 * statistics.median(self.times) if self.times else math.nan
        self.pruner.step()  # masks from the fine-tuned weights
        with torch.no_grad(), exact_fp32():
            masked = self.model(x_eval)
            pruned = self.pruner.prune()
            out = pruned(x_eval)
        res.params_after = count_params(pruned)
        res.max_diff = float((out - masked).abs().max()) if out.shape == masked.shape else math.inf
        res.passed = res.max_diff <= TOLERANCE * max(1.0, float(masked.abs().max()))
        res.pruned_out = out
        return res


def run_variants(
    variants: list[Variant],
    data: list[tuple[Tensor, Tensor]],
    steps: int,
    warmup: int,
    progress: Progress,
) -> list[Result]:
    """Warm up each variant (compiling it if compiled), then run the timed steps round-robin across
    variants, so that background load and clock changes affect them all alike; then prune each.
    The masked model's loss on the first batch is recorded before and after fine-tuning."""
    images, labels = data[0]
    for v in variants:
        v.result.loss_start = v.eval_loss(images, labels)
        compiles = " (the first one compiles)" if v.result.compiled else ""
        progress(f"{v.label}: {warmup} warm-up steps{compiles}")
        for i in range(warmup):
            v.train_step(*data[i % len(data)], timed=False)
    progress(f"{steps} timed fine-tuning steps per variant, interleaved across {len(variants)} variants")
    for i in range(warmup, warmup + steps):
        for v in variants:
            v.train_step(*data[i % len(data)], timed=True)
    results = []
    for v in variants:
        v.result.loss_end = v.eval_loss(images, labels)
        res = v.finish(images)
        progress(f"{v.label}: step() + prune(), max |pruned - masked| = {res.max_diff:.1e} "
                 f"({'PASS' if res.passed else 'FAIL'})")
        results.append(res)
    return results


def kernel_description(device: torch.device) -> str:
    """Which implementation of this package's ops runs on ``device`` (see ``_backend``)."""
    if not _backend.HAS_TRITON:
        return "torch path (Triton not installed)"
    backend = _backend.get_backend()
    if backend == "torch":
        return "torch path (STRUCTPRUNE_BACKEND=torch)"
    if device.type == "cuda":
        if backend == "triton":
            return "Triton kernels"
        return (f"Triton kernels (eager: tensors >= {_backend.TRITON_MIN_NUMEL} elements, torch path "
                "below; compiled: custom ops)")
    if _backend.INTERPRET:
        return "Triton kernels under the interpreter (TRITON_INTERPRET=1)"
    return "torch path (no Triton on CPU)"


def versions(device: torch.device) -> list[tuple[str, str]]:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    if device.type == "cuda":
        dev = f"cuda ({torch.cuda.get_device_name(device)})"
    else:
        dev = f"cpu ({torch.get_num_threads()} threads, {platform.machine()})"
    return [
        ("device", dev),
        ("kernels", kernel_description(device)),
        ("versions", f"torch {torch.__version__}, triton {triton_version}, python {platform.python_version()}, "
                     f"structprune_triton {structprune_triton.__version__}"),
    ]


def print_report(args: argparse.Namespace, device: torch.device, params_before: int, results: list[Result]) -> None:
    print()
    print("structprune_triton demo: SaliencyPruner on a small CNN with synthetic data")
    for key, value in versions(device):
        print(f"  {key:<9} {value}")
    print(f"  setup     batch {args.batch_size}x3x{IMAGE_SIZE}x{IMAGE_SIZE}, sparsity {args.sparsity}, "
          f"{args.steps} timed steps after {args.warmup} warm-up, seed {args.seed}")
    print()
    header = (f"{'pruner':<38} {'mode':<9} {'ms/step':>8} {'speedup':>8} {'1st step ms':>11} "
              f"{'loss before->after':>18} {'params before->after':>21} {'max|pruned-masked|':>18} {'check':>5}")
    print(header)
    print("-" * len(header))
    baseline = {r.compiled: r.step_ms for r in results if r.name == "upstream"}
    for r in results:
        ref = baseline.get(r.compiled, math.nan)
        speedup = f"{ref / r.step_ms:.2f}x" if r.name != "upstream" and r.step_ms > 0 else "-"
        mode = "compiled" if r.compiled else "eager"
        loss = f"{r.loss_start:.3f}->{r.loss_end:.3f}"
        params = f"{params_before:,}->{r.params_after:,}"
        first = f"{r.first_step_ms:.1f}" if r.compiled else "-"
        print(f"{r.name:<38} {mode:<9} {r.step_ms:>8.2f} {speedup:>8} {first:>11} "
              f"{loss:>18} {params:>21} {r.max_diff:>18.1e} {'PASS' if r.passed else 'FAIL':>5}")
    print("ms/step: median wall time of a training step (forward, backward, SGD update), variants "
          "interleaved;")
    print("speedup: upstream's ms/step in the same mode / this row's; 1st step (compiled rows): "
          "includes compilation;")
    print("loss: masked model on a fixed batch before and after fine-tuning.")
    print()
    after = results[-1].params_after
    print(f"parameters: {params_before:,} before, {after:,} after pruning "
          f"({100 * (1 - after / params_before):.0f}% fewer)")
    ref = next((r for r in results if r.name == "upstream" and not r.compiled), None)
    if ref is not None and ref.pruned_out is not None:
        for r in results:
            if r is not ref and r.pruned_out is not None and r.pruned_out.shape == ref.pruned_out.shape:
                diff = float((r.pruned_out - ref.pruned_out).abs().max())
                mode = "compiled" if r.compiled else "eager"
                print(f"pruned output, {r.name} {mode} vs upstream eager: max abs difference {diff:.1e}")
    ok = all(r.passed for r in results)
    worst = max(r.max_diff for r in results)
    print(f"{'PASS' if ok else 'FAIL'}: pruned model output matches the masked model "
          f"(max abs difference {worst:.1e}, tolerance {TOLERANCE:.0e})")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m structprune_triton",
        description=(
            "Structured-pruning demo: prepare a small CNN with upstream's SaliencyPruner "
            "(torch.ao.pruning._experimental.pruner) and with structprune_triton's drop-in one, "
            "fine-tune on synthetic data, prune, check that the pruned model computes what the masked "
            "model did, and compare the time per training step. Exit status 1 if the check fails."
        ),
        epilog=(
            "The model and data are built in (no downloads). On CUDA this package runs its Triton "
            "kernels; on CPU it runs plain torch ops, or the Triton kernels under the interpreter "
            "(slow; for testing) when TRITON_INTERPRET=1 is set. STRUCTPRUNE_BACKEND=torch|triton|auto "
            "overrides the choice."
        ),
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where to run: auto picks cuda when available, else cpu (default: auto)")
    parser.add_argument("--steps", type=int, default=20,
                        help="timed fine-tuning steps per variant (default: 20)")
    parser.add_argument("--warmup", type=int, default=WARMUP_STEPS,
                        help="untimed fine-tuning steps per variant before the timed ones; with --compile the "
                             f"first one compiles (default: {WARMUP_STEPS})")
    parser.add_argument("--sparsity", type=float, default=0.5,
                        help="fraction of each pruned convolution's output channels to remove, in [0, 1) "
                             "(default: 0.5)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per training step (default: 32)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="also time the models under torch.compile (default: on with CUDA, off on CPU, "
                             "where an inductor compile takes 15-30 s)")
    parser.add_argument("--width", type=int, default=16,
                        help="channels of the first convolution (then 2x, 4x); skip_masked_rows pays from about "
                             "32 (default: 16)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the model and the data (default: 0)")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    if args.warmup < 0:
        parser.error("--warmup must be at least 0")
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    if args.width < 1:
        parser.error("--width must be at least 1")
    if not 0.0 <= args.sparsity < 1.0:
        parser.error("--sparsity must be in [0, 1)")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    if args.compile is None:
        args.compile = device.type == "cuda"
    progress = Progress()
    note = " (an inductor compile on CPU takes 15-30 s per variant)" if args.compile and device.type == "cpu" else ""
    progress(f"device {device}, torch.compile {'on' if args.compile else 'off'}{note}")

    torch.manual_seed(args.seed)
    base = SmallCNN(args.width).to(device)
    generator = torch.Generator().manual_seed(args.seed)
    data = synthetic_data(args.batch_size, device, generator)
    params_before = count_params(base)

    skip_name = "structprune_triton + skip_masked_rows"
    specs: list[tuple[str, Callable, bool]] = [
        ("upstream", upstream_pruner.SaliencyPruner, False),
        ("structprune_triton", our_pruner.SaliencyPruner, False),
        (skip_name, our_pruner.SaliencyPruner, False),
    ]
    if args.compile:
        specs += [
            ("upstream", upstream_pruner.SaliencyPruner, True),
            ("structprune_triton", our_pruner.SaliencyPruner, True),
            (skip_name, our_pruner.SaliencyPruner, True),
        ]
    progress(f"prepare {len(specs)} copies of the model, step() sets the masks")
    variants = [Variant(name, cls, compiled, base, args.sparsity, skip=name == skip_name)
                for name, cls, compiled in specs]
    for v in variants:
        if v.skipping is not None:
            progress(f"{v.label}: {v.skipping} of {len(PRUNE_CONFIG)} pruned layers skip their masked rows "
                     "(the others are below skip.SKIP_MIN_NUMEL or above skip.SKIP_MAX_DENSITY)")
    results = run_variants(variants, data, args.steps, args.warmup, progress)
    progress("done")
    print_report(args, device, params_before, results)
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

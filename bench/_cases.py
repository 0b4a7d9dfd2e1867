"""The benchmark suite's settings (filled in by ``conftest.pytest_configure``) and its cases: which
shapes, dtypes and densities each group times, on CPU and on CUDA. Not a test module."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class Settings:
    quick: bool = False
    compile_backend_option: str | None = None  # --bench-compile-backend; None: see compile_backend
    benchmark_disabled: bool = False
    threads: tuple[int, ...] = (1, 2)  # CPU thread counts of the interleaved comparison; the first times the table
    cuda: bool = field(default_factory=torch.cuda.is_available)

    @property
    def device(self) -> str:
        return "cuda" if self.cuda else "cpu"

    @property
    def compile_backend(self) -> str:
        """The torch.compile backend of the compiled implementations."""
        # With --benchmark-disable only agreement with upstream is checked: aot_eager compiles in a
        # fraction of Inductor's CPU compile time.
        return self.compile_backend_option or ("aot_eager" if self.benchmark_disabled else "inductor")

    @property
    def target_s(self) -> float:
        """About this much timed time per implementation and case."""
        return 0.05 if self.quick else 0.15


SETTINGS = Settings()
IMPLS = ("upstream-eager", "upstream-compiled", "ours-eager", "ours-compiled")
COPY = "copy"
DTYPE_SHORT = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64"}


def shape_str(shape: tuple) -> str:
    return "x".join(str(s) for s in shape)


@dataclass(frozen=True)
class Case:
    """One (op, shape, dtype[, density][, prune_bias]) point; its group holds every implementation."""

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
        return "-".join(parts + ([f"d{self.density}"] if self.density is not None else []))

    @property
    def group(self) -> str:
        g = f"{self.op} | {shape_str(self.shape)} {DTYPE_SHORT[self.dtype]}"
        if self.prune_bias is not None:
            g += f" | prune_bias={self.prune_bias}"
        return g + (f" | density {self.density}" if self.density is not None else "")


def densities() -> list[float]:
    # Checking (--benchmark-disable) needs one density: the code path is the same for every density.
    return [0.5] if SETTINGS.quick or SETTINGS.benchmark_disabled else [0.5, 0.9]


def weight_cases(op: str) -> list[Case]:
    """Weights for the parametrization forward (``fss_fwd``) and forward+backward (``fss_fwdbwd``)."""
    bf16, fp32 = torch.bfloat16, torch.float32
    if not SETTINGS.cuda:
        pts = [((1024, 512), fp32), ((256, 128), fp32), ((128, 64, 3, 3), fp32)]
    elif SETTINGS.quick:
        pts = [((16384, 4096), bf16), ((1024, 1024, 3, 3), fp32), ((256, 128), fp32)]
        pts += [((4096, 4096), bf16)] if op == "fss_fwd" else []
    else:
        pts = [
            ((16384, 4096), bf16),
            ((16384, 4096), fp32),
            ((4096, 4096), bf16),
            ((4096, 4096), fp32),
            ((1024, 1024, 3, 3), fp32),
            ((256, 128, 3, 3), fp32),
            ((256, 128), fp32),
        ]
    # density innermost: the next case reuses the compiled objects (see compiled_holder)
    return [Case(op, s, dt, d) for s, dt in pts for d in densities()]


def activation_cases() -> list[Case]:
    """Module outputs for the BiasHook (bias along dim 1). Density only matters with prune_bias."""
    bf16, fp32 = torch.bfloat16, torch.float32
    if not SETTINGS.cuda:
        pts = [((256, 512), fp32), ((8, 64, 28, 28), fp32), ((32, 256), fp32)]
    elif SETTINGS.quick:
        pts = [((8192, 4096), bf16), ((64, 256, 56, 56), bf16), ((32, 256), fp32)]
    else:
        pts = [
            ((8192, 4096), bf16),
            ((8192, 4096), fp32),
            ((64, 256, 56, 56), bf16),
            ((64, 256, 56, 56), fp32),
            ((32, 256), fp32),
        ]
    cases = []
    for s, dt in pts:
        cases += [Case("bias_hook", s, dt, d, True) for d in densities()] + [Case("bias_hook", s, dt, None, False)]
    return cases


@dataclass(frozen=True)
class LayerCase:
    """A whole nn.Linear / nn.Conv2d, prepared as upstream's pruner prepares it (prune_bias=True)."""

    kind: str  # "linear" | "conv2d"
    mode: str  # "fwd" (under no_grad) | "fwdbwd" (input and weight gradients)
    in_shape: tuple
    weight_shape: tuple
    dtype: torch.dtype
    density: float = 0.5

    @property
    def op(self) -> str:
        return f"{self.kind}_{self.mode}"

    @property
    def id(self) -> str:
        return f"{self.op}-x{shape_str(self.in_shape)}-w{shape_str(self.weight_shape)}-{DTYPE_SHORT[self.dtype]}"

    @property
    def group(self) -> str:
        return (
            f"{self.op} | x {shape_str(self.in_shape)}, w {shape_str(self.weight_shape)} "
            f"{DTYPE_SHORT[self.dtype]} | density {self.density}"
        )

    def make(self) -> nn.Module:
        if self.kind == "linear":
            return nn.Linear(self.weight_shape[1], self.weight_shape[0])
        cout, cin, kh, kw = self.weight_shape
        return nn.Conv2d(cin, cout, (kh, kw), padding=(kh // 2, kw // 2))

    def flops(self) -> float:
        if self.kind == "linear":
            fwd = 2.0 * math.prod(self.in_shape[:-1]) * math.prod(self.weight_shape)
        else:
            b, _, h, w = self.in_shape  # stride 1, "same" padding: output is h x w
            fwd = 2.0 * b * h * w * math.prod(self.weight_shape)
        return fwd if self.mode == "fwd" else 3.0 * fwd  # backward: grad of the input and of the weight


def layer_cases() -> list[LayerCase]:
    if SETTINGS.cuda:
        lin = ((8192, 4096), (4096, 4096), torch.bfloat16)
        conv = ((64, 128, 56, 56), (256, 128, 3, 3), torch.bfloat16)
    else:
        lin = ((256, 512), (1024, 512), torch.float32)
        conv = ((8, 64, 28, 28), (128, 64, 3, 3), torch.float32)
    return [LayerCase(k, m, *pt) for k, pt in (("linear", lin), ("conv2d", conv)) for m in ("fwd", "fwdbwd")]

"""What a demo or benchmark run ran on: the device, which implementation of this package's ops serves
it, the versions, and the device's copy bandwidth (the floor of a memory-bound elementwise pass).

The demo (``python -m structprune_triton``) and the bench scripts (``bench/``) print the same header
from :func:`describe`.
"""

from __future__ import annotations

import os
import platform

import torch

import structprune_triton


def _triton_version() -> str:
    try:
        import triton
    except ImportError:
        return "not installed"
    return triton.__version__


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device | str) -> str:
    """``cuda (NVIDIA H200)`` or ``cpu (AMD EPYC, 2 cores, 1 torch threads, x86_64)``."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return (
        f"cpu ({_cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, {platform.machine()})"
    )


def versions() -> str:
    """``torch 2.13.0+cpu, triton 3.9.0, python 3.11.7, structprune_triton 0.1.0`` (and CUDA's)."""
    cuda = f", CUDA {torch.version.cuda}" if torch.version.cuda else ""
    return (
        f"torch {torch.__version__}{cuda}, triton {_triton_version()}, python {platform.python_version()}, "
        f"structprune_triton {structprune_triton.__version__}"
    )


def describe(device: torch.device | str) -> list[tuple[str, str]]:
    """``[(key, value), ...]``: device, kernels (which implementation serves ``device``), versions."""
    device = torch.device(device)
    return [
        ("device", device_name(device)),
        ("kernels", structprune_triton.describe_backend(device)),
        ("versions", versions()),
    ]


def copy_bandwidth(device: torch.device | str) -> float:
    """GB/s (bytes read + bytes written) of a large copy on ``device``.

    CUDA: 512 MiB copied (far past any L2), median device time from ``triton.testing.do_bench``.
    CPU: 32 MiB copied (past the last-level cache of an ordinary CPU), median of
    ``torch.utils.benchmark.Timer.blocked_autorange``.
    """
    device = torch.device(device)
    if device.type == "cuda":
        import triton.testing

        n = 512 << 20
        src = torch.empty(n, dtype=torch.uint8, device=device).random_()
        dst = torch.empty_like(src)
        ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=20, rep=100, return_mode="median")
        return 2 * n / (ms * 1e-3) / 1e9
    from torch.utils.benchmark import Timer

    n = 32 << 20
    src = torch.empty(n, dtype=torch.uint8).random_()
    dst = torch.empty_like(src)
    timer = Timer("dst.copy_(src)", globals={"dst": dst, "src": src}, num_threads=torch.get_num_threads())
    return 2 * n / timer.blocked_autorange(min_run_time=0.2).median / 1e9

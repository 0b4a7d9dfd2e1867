"""Which implementation runs an op: the Triton kernels or the pure-torch path.

``STRUCTPRUNE_BACKEND`` (read at import) or :func:`set_backend` chooses:

* ``auto`` (default): CUDA tensors run the Triton kernels (below ``STRUCTPRUNE_TRITON_MIN_NUMEL``
  elements a single torch op is cheaper than a Triton launch from Python, so the torch path runs);
  CPU tensors run the torch path, or the Triton kernels under the interpreter when
  ``TRITON_INTERPRET=1`` was set before Triton was imported.
* ``triton``: always the Triton kernels (CPU tensors need ``TRITON_INTERPRET=1``).
* ``torch``: always the torch path. Without Triton installed this is what ``auto`` gives.
"""

from __future__ import annotations

import os

import torch

BACKENDS = ("auto", "triton", "torch")

try:
    import triton  # noqa: F401

    HAS_TRITON = True
except ImportError:  # no Triton (or not for this platform): the torch path serves every call
    HAS_TRITON = False
INTERPRET: bool = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

# Below this many elements, auto mode on CUDA takes the torch path: a Triton launch from Python costs
# about 30 us (triton 3.6), a single eager torch op about 10 us, and the device time of either is
# smaller than that. The value is a first estimate from FACTS.md, not yet measured on the GPU.
TRITON_MIN_NUMEL: int = int(os.environ.get("STRUCTPRUNE_TRITON_MIN_NUMEL", str(1 << 20)))

_backend: str = "auto"


def set_backend(name: str) -> None:
    """Choose ``"auto"``, ``"triton"`` or ``"torch"`` for every later call (process-wide)."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"unknown structprune_triton backend {name!r}; choose one of {BACKENDS}")
    if name == "triton" and not HAS_TRITON:
        raise RuntimeError("STRUCTPRUNE_BACKEND=triton but Triton is not installed")
    _backend = name


def get_backend() -> str:
    """The backend chosen by :func:`set_backend` or ``STRUCTPRUNE_BACKEND``."""
    return _backend


set_backend(os.environ.get("STRUCTPRUNE_BACKEND", "auto").strip().lower() or "auto")

KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def kernel_dtypes(*dtypes: torch.dtype) -> bool:
    """True if the Triton kernels take every one of ``dtypes`` (other dtypes run the torch path)."""
    return all(d in KERNEL_DTYPES for d in dtypes)


def use_triton(t: torch.Tensor, *, for_eager: bool = False) -> bool:
    """True when the Triton kernels should handle tensor ``t`` (its device and size).

    ``for_eager`` applies the small-tensor threshold of auto mode: it is a per-call host cost, so
    it only matters outside a compiled graph. Kept cheap: it runs on every eager call.
    """
    if _backend == "torch" or not HAS_TRITON:
        return False
    if t.is_cuda:
        return _backend == "triton" or not for_eager or t.numel() >= TRITON_MIN_NUMEL
    if not t.is_cpu:
        return False
    if _backend == "triton" and not INTERPRET:
        raise RuntimeError(
            "STRUCTPRUNE_BACKEND=triton on a CPU tensor needs TRITON_INTERPRET=1 set before triton is imported"
        )
    return INTERPRET

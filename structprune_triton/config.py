"""Settings: which implementation runs, size thresholds, tiles. Arguments with defaults, in one place.

Every op takes ``settings=`` (a :class:`Settings`); without it the current settings apply: the
defaults, changed for a block by ``with structprune_triton.settings(backend="torch"):`` (or
``use_backend("torch")``), or for the whole process by :func:`configure`. Environment variables only
set the defaults, and are read here, once, at import:

* ``STRUCTPRUNE_BACKEND``: ``auto`` (default), ``triton`` or ``torch``;
* ``STRUCTPRUNE_TRITON_MIN_NUMEL``: :attr:`Settings.triton_min_numel`;
* ``TRITON_INTERPRET`` (Triton's own): CPU tensors run the Triton kernels under the interpreter.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass

BACKENDS = ("auto", "triton", "torch")

try:
    import triton  # noqa: F401

    HAS_TRITON = True
except ImportError:  # no Triton (or not for this platform): the torch path serves every call
    HAS_TRITON = False

# Triton reads TRITON_INTERPRET when the kernels are defined, so it cannot change later.
INTERPRET: bool = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@dataclass(frozen=True)
class Settings:
    """What the ops do when several implementations could serve a call.

    ``backend``: ``"auto"`` runs the Triton kernels on CUDA tensors of at least
    ``triton_min_numel`` elements (in eager mode; compiled graphs always take them) and on CPU
    tensors under ``TRITON_INTERPRET=1``, the torch path elsewhere; ``"triton"`` always the kernels
    (CPU tensors need the interpreter); ``"torch"`` always the torch path.

    ``exact_zeros``: on the torch path, rows whose mask is 0 come out exactly +0.0 even where the
    weight holds NaN/inf (the kernels always do this: they never read those rows). ``False`` uses
    upstream's arithmetic ``mask * x`` there instead (NaN/inf in dead rows propagate, as upstream);
    on CPU that is the cheaper formula with autograd for small weights (see BENCHMARKS.md).

    ``bits_min_numel_grad``: with autograd, CPU weights of at least this many elements zero their dead
    rows on the bits (an integer multiply inside an ``autograd.Function``); smaller ones take one
    native ``torch.where``, whose lack of Python overhead wins there.

    ``gpu_tile``, ``gpu_max_warps``, ``gpu_min_block_b``: the largest tile (elements per program),
    the most warps, and the narrowest tile row when rows are wider than that, on the GPU.
    ``interpreter_tile``: elements per program under the interpreter (each program instance costs
    about 1 ms there, so few big tiles keep the tests fast).

    ``poison_outputs``: fill every fresh kernel output with NaN before the kernel writes it (a
    debugging aid: an element a kernel fails to write then shows up).
    """

    backend: str = "auto"
    triton_min_numel: int = 1 << 20
    exact_zeros: bool = True
    bits_min_numel_grad: int = 1 << 15
    gpu_tile: int = 4096
    gpu_max_warps: int = 4
    gpu_min_block_b: int = 32
    interpreter_tile: int = 1 << 15
    poison_outputs: bool = False

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown structprune_triton backend {self.backend!r}; choose one of {BACKENDS}")
        if self.backend == "triton" and not HAS_TRITON:
            raise RuntimeError("structprune_triton backend 'triton' needs Triton installed")


def _from_environment() -> Settings:
    backend = os.environ.get("STRUCTPRUNE_BACKEND", "auto").strip().lower() or "auto"
    min_numel = os.environ.get("STRUCTPRUNE_TRITON_MIN_NUMEL")
    extra = {"triton_min_numel": int(min_numel)} if min_numel else {}
    return Settings(backend=backend, **extra)


_current: Settings = _from_environment()


def current_settings() -> Settings:
    """The settings an op uses when it is given none."""
    return _current


def configure(**changes: object) -> Settings:
    """Change the current settings for the rest of the process (e.g. ``configure(backend="torch")``);
    returns the new settings."""
    global _current
    _current = dataclasses.replace(_current, **changes)
    return _current


@contextlib.contextmanager
def settings(**changes: object) -> Iterator[Settings]:
    """``with settings(backend="torch", triton_min_numel=0): ...``: the current settings with these
    fields changed, inside the block (restored after it, also on error). Not thread-local."""
    global _current
    saved = _current
    _current = dataclasses.replace(saved, **changes)
    try:
        yield _current
    finally:
        _current = saved


def use_backend(name: str) -> contextlib.AbstractContextManager[Settings]:
    """``with use_backend("torch"): ...``: shorthand for ``settings(backend=name)``."""
    return settings(backend=name)

"""Settings: which implementation runs, size thresholds, tiles. Arguments with defaults, in one place.

Where the settings of a call come from, innermost first:

* ``settings=`` of the call (``row_mask(x, mask, settings=Settings(...))``);
* the innermost open ``with structprune_triton.settings(...):`` (or ``use_backend(name)``) block of
  the running thread or asyncio task: a block changes nothing for other threads and tasks, and
  ends with the block (also on error);
* the process default, changed by :func:`configure` and seeded from the environment at import:

  * ``STRUCTPRUNE_BACKEND``: ``auto`` (default), ``triton`` or ``torch``;
  * ``STRUCTPRUNE_TRITON_MIN_NUMEL``: :attr:`Settings.triton_min_numel`;
  * ``TRITON_INTERPRET`` (Triton's own, read by Triton's rules: ``1``/``true``/``on``/``yes`` are on,
    ``0``/``false``/``off``/``no``/empty are off): CPU tensors run the Triton kernels under the
    interpreter.

A block copies the settings in force when it opens: a later :func:`configure` changes what threads
and tasks see outside their blocks, not an open block. A thread starts outside any block (unless
Python gives it a copy of its starter's context, as 3.14's ``thread_inherit_context`` does); an
asyncio task starts inside the blocks open where it was created.

Compiled code reads the settings while Dynamo traces it and guards on them (a graph traced under
other settings is traced again, not reused). Dynamo cannot trace a ``contextvars.ContextVar``, so
compiled code reads a per-thread copy of the innermost block, updated whenever a block opens or
closes. The one difference that leaves: asyncio tasks that interleave inside their own open blocks
in one thread each see their own settings in eager calls, but a compiled function called while
they interleave runs under the block that thread opened or closed last.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

BACKENDS = ("auto", "triton", "torch")

try:
    import triton

    HAS_TRITON = True
except ImportError:  # no Triton (or not for this platform): the torch path serves every call
    HAS_TRITON = False

# Whether Triton interprets: Triton's own reading of TRITON_INTERPRET, taken at import, which is
# also when Triton reads it for the kernels (they are defined when the package is imported).
INTERPRET: bool = HAS_TRITON and bool(triton.knobs.runtime.interpret)


@dataclass(frozen=True)
class Settings:
    """What the ops do when several implementations could serve a call.

    ``backend``: ``"auto"`` runs the Triton kernels on CUDA tensors of at least
    ``triton_min_numel`` elements and on CPU tensors under ``TRITON_INTERPRET=1``, the torch path
    elsewhere; ``"triton"`` always the kernels (CPU tensors need the interpreter); ``"torch"``
    always the torch path. The kernels take float16, bfloat16, float32 and float64 tensors; other
    dtypes, and calls under ``torch.jit.trace``, forward AD or ``torch.func``, run the torch path
    whatever the backend. Eager calls and compiled graphs take the same path for the same tensors
    and settings (a compiled graph records the kernel as a custom op, the torch path as torch ops).

    ``exact_zeros``: on the torch path, rows whose mask is 0 come out exactly +0.0 even where the
    weight holds NaN/inf (the kernels always do this: they never read those rows). ``False`` uses
    upstream's arithmetic ``mask * x`` there instead (NaN/inf in dead rows propagate, and a dead
    row of a negative weight is -0.0, as upstream); on CPU that is the cheaper formula with
    autograd for small weights (see BENCHMARKS.md).

    ``bits_min_numel_grad``: with autograd, CPU weights of at least this many elements zero their
    dead rows on the bits (an integer multiply inside an ``autograd.Function``: ``torch.where``
    costs several multiplies on CPU); smaller ones take one ``torch.where``, whose lack of Python
    overhead wins there. Either way the result is the same.

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


# The fields a kernel launch reads. A custom op cannot take a Settings, so compiled graphs pass
# these to the ops as one list of ints (see launch_values / launch_settings).
LAUNCH_FIELDS = ("gpu_tile", "gpu_max_warps", "gpu_min_block_b", "interpreter_tile", "poison_outputs")


def launch_values(s: Settings) -> list[int]:
    """The launch fields of ``s`` as ints, in ``LAUNCH_FIELDS`` order (a custom op's argument)."""
    return [int(getattr(s, name)) for name in LAUNCH_FIELDS]


@functools.lru_cache(maxsize=64)
def _launch_settings(values: tuple[int, ...]) -> Settings:
    return Settings(**{name: type(getattr(Settings, name))(v) for name, v in zip(LAUNCH_FIELDS, values, strict=True)})


def launch_settings(values: Sequence[int] | None) -> Settings:
    """Settings with the launch fields ``values`` (from :func:`launch_values`), the rest default;
    the defaults for ``None``."""
    return Settings() if values is None else _launch_settings(tuple(values))


def _from_environment() -> Settings:
    backend = os.environ.get("STRUCTPRUNE_BACKEND", "auto").strip().lower() or "auto"
    min_numel = os.environ.get("STRUCTPRUNE_TRITON_MIN_NUMEL")
    extra = {"triton_min_numel": int(min_numel)} if min_numel else {}
    return Settings(backend=backend, **extra)


_default: Settings = _from_environment()
# The innermost open block of the running thread or task (None: no block open).
_block: contextvars.ContextVar[Settings | None] = contextvars.ContextVar("structprune_triton_settings", default=None)


class _ThreadBlock(threading.local):
    """Per thread: the settings of the block opened or closed last (None: none open). What compiled
    code reads: Dynamo traces attributes of a ``threading.local`` and guards on them, but not
    ``ContextVar.get``. (Set in ``__init__``: Dynamo does not guard a class-level default.)"""

    def __init__(self) -> None:
        # runs in each thread on its first use: a thread that inherits its starter's context
        # (Python 3.14's thread_inherit_context) starts inside the inherited block
        self.settings: Settings | None = _block.get()


_thread_block = _ThreadBlock()


def current_settings() -> Settings:
    """The settings an op uses when it is given none (see the module docstring)."""
    return settings_in_force(torch.compiler.is_compiling())


def settings_in_force(compiling: bool) -> Settings:
    """:func:`current_settings`, for a caller that already knows whether Dynamo is tracing."""
    block = _thread_block.settings if compiling else _block.get()
    return _default if block is None else block


def configure(**changes: object) -> Settings:
    """Change the process default (what every thread and task sees outside a ``settings()``
    block) for the rest of the process, e.g. ``configure(backend="torch")``; returns it."""
    global _default
    _default = dataclasses.replace(_default, **changes)
    return _default


@contextlib.contextmanager
def settings(**changes: object) -> Iterator[Settings]:
    """``with settings(backend="torch", triton_min_numel=0): ...``: the current settings with these
    fields changed, for this thread or asyncio task, inside the block (restored after it, also on
    error)."""
    new = dataclasses.replace(current_settings(), **changes)
    token = _block.set(new)
    _thread_block.settings = new
    try:
        yield new
    finally:
        _block.reset(token)
        _thread_block.settings = _block.get()


def use_backend(name: str) -> contextlib.AbstractContextManager[Settings]:
    """``with use_backend("torch"): ...``: shorthand for ``settings(backend=name)``."""
    return settings(backend=name)

"""pytest configuration of the benchmark suite (``pytest bench``).

* ``TRITON_INTERPRET`` is removed from the environment before ``structprune_triton`` is imported
  (the root conftest sets it on machines without CUDA for the test suite): the interpreter is a
  correctness tool, not a speed path, so on CPU the package's torch path is what gets timed. If the
  package was already imported under the interpreter (``pytest tests bench`` in one process), the
  benchmarks are skipped with that reason.
* ``--bench-quick``: fewer cases and shorter timing (one density, fewer shapes/dtypes).
* ``--bench-threads N`` (CPU): torch threads, default 1 (steadier numbers on a shared machine);
  with 1 thread the timer is ``time.process_time`` (CPU time of this process) unless
  ``--benchmark-timer`` is given.
* ``--bench-compile-backend NAME``: backend of the ``*-compiled`` implementations (default:
  ``inductor`` when timing, ``aot_eager`` with ``--benchmark-disable``, where only agreement with
  upstream is checked and inductor's CPU compile time would dominate).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

_INTERPRET_WAS_SET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
if "structprune_triton" not in sys.modules:
    # (if it is already imported, leave the environment alone for the tests that imported it; the
    # benchmarks are skipped below when that import ran under the interpreter)
    os.environ.pop("TRITON_INTERPRET", None)

import torch  # noqa: E402

import _benchlib  # noqa: E402
from _benchlib import SETTINGS  # noqa: E402


def _interpreter_active() -> bool:
    backend = sys.modules.get("structprune_triton._backend")
    return bool(backend is not None and getattr(backend, "INTERPRET", False))


def pytest_addoption(parser):
    group = parser.getgroup("structprune bench")
    group.addoption("--bench-quick", action="store_true", default=False,
                    help="fewer cases and shorter timing (GPU sessions with little time)")
    group.addoption("--bench-compile-backend", default=None,
                    help="torch.compile backend of the *-compiled implementations "
                         "(default: inductor when timing, aot_eager with --benchmark-disable)")
    group.addoption("--bench-threads", type=int, default=1,
                    help="CPU only: torch threads (default 1: steadier on a shared 2-core machine; "
                         "0 keeps torch's default)")


@pytest.hookimpl(tryfirst=True)  # before pytest-benchmark reads its options
def pytest_configure(config):
    SETTINGS.quick = bool(config.getoption("--bench-quick")) or os.environ.get("STRUCTPRUNE_BENCH_QUICK") == "1"
    SETTINGS.compile_backend = config.getoption("--bench-compile-backend")
    SETTINGS.benchmark_disabled = bool(getattr(config.option, "benchmark_disable", False))
    threads = config.getoption("--bench-threads")
    if not SETTINGS.cuda and threads and threads > 0:
        torch.set_num_threads(threads)
        # One thread: time the process's CPU time, not wall time, so that other processes on a
        # shared machine (time slices lost to them) do not count. Kept if --benchmark-timer is given.
        if threads == 1 and getattr(config.option, "benchmark_timer", None) == "time.perf_counter":
            config.option.benchmark_timer = "time.process_time"
    # Every (shape, dtype) compiles its own graph (dynamic=False); the default limits (8 per code
    # object) would make later cases fall back to eager silently.
    from torch._dynamo import config as dynamo_config

    for name, value in (("recompile_limit", 512), ("cache_size_limit", 512), ("accumulated_recompile_limit", 4096),
                        ("accumulated_cache_size_limit", 4096)):
        if hasattr(dynamo_config, name):
            setattr(dynamo_config, name, value)


def pytest_collection_modifyitems(config, items):
    if not _interpreter_active():
        return
    skip = pytest.mark.skip(reason="structprune_triton was imported under TRITON_INTERPRET=1: the Triton "
                                   "interpreter is not a speed path; run `pytest bench` on its own")
    for item in items:
        if "benchmark" in getattr(item, "fixturenames", ()) and str(item.fspath).startswith(_HERE):
            item.add_marker(skip)


_COPY_GBPS: dict = {}


@pytest.fixture(scope="session")
def copy_gbps(request):
    """The device's copy bandwidth (GB/s, read + write), measured once per timed session."""
    if SETTINGS.benchmark_disabled:
        return None
    if "value" not in _COPY_GBPS:
        _COPY_GBPS["value"] = _benchlib.measure_copy_bandwidth()
    return _COPY_GBPS["value"]


@pytest.fixture(autouse=True)
def _seed_and_sync():
    torch.manual_seed(0)
    yield
    if SETTINGS.cuda:
        torch.cuda.synchronize()


def pytest_benchmark_update_machine_info(config, machine_info):
    info = _benchlib.versions()
    info["copy_gbps"] = _COPY_GBPS.get("value")
    info["quick"] = SETTINGS.quick
    info["compile_backend"] = SETTINGS.backend
    info["interpret_was_set"] = _INTERPRET_WAS_SET
    if SETTINGS.cuda:
        info["cuda"] = torch.version.cuda
    machine_info["structprune_bench"] = info

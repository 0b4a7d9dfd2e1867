"""pytest configuration of the benchmark suite (``pytest bench``).

* ``TRITON_INTERPRET`` is removed from the environment before ``structprune_triton`` is imported
  (the root conftest sets it for the test suite on machines without CUDA): the interpreter is a
  correctness tool, not a speed path, so on CPU the package's torch path is what gets timed. If the
  package was already imported under the interpreter (``pytest tests bench`` in one process), the
  benchmarks are skipped with that reason.
* Timing writes pytest-benchmark's JSON to ``bench/out/run.json`` unless ``--benchmark-json`` says
  otherwise; ``python bench/report.py`` turns it into ``bench/out/report.md``.
* ``--bench-quick``: fewer cases, shorter timing. ``--bench-threads 1,2`` (CPU): the thread counts of
  the interleaved ours-vs-upstream comparison; the first one also times pytest-benchmark's table.
  On CPU the timer is the process's CPU time (``time.process_time``) unless ``--benchmark-timer``
  is given. ``--bench-compile-backend NAME``: backend of the compiled implementations (default:
  inductor when timing, aot_eager with ``--benchmark-disable``).
"""

from __future__ import annotations

import importlib.metadata
import os
import shlex
import sys
from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent
DEFAULT_JSON = _HERE / "out" / "run.json"
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))
if "structprune_triton" not in sys.modules:
    os.environ.pop("TRITON_INTERPRET", None)  # (if already imported, leave it for the tests that imported it)

import torch  # noqa: E402
from _cases import SETTINGS  # noqa: E402

from structprune_triton import run_info  # noqa: E402


class _LazyJsonFile:
    """``bench/out/run.json`` as an open binary file, for pytest-benchmark releases before 5.3
    (whose ``--benchmark-json`` is an ``argparse.FileType('wb')``, written with ``with f as fh``):
    opened only when pytest-benchmark writes it, so a run in which no benchmark ran leaves an
    earlier JSON alone."""

    def __enter__(self):
        DEFAULT_JSON.parent.mkdir(exist_ok=True)
        self._file = open(DEFAULT_JSON, "wb")  # noqa: SIM115 (closed by __exit__)
        return self._file

    def __exit__(self, *exc) -> None:
        self._file.close()

    def __str__(self) -> str:
        return str(DEFAULT_JSON)


def default_json(version: str) -> object:
    """The value pytest-benchmark ``version`` expects in ``config.option.benchmark_json`` for
    ``bench/out/run.json``: from 5.3 on a path (it opens the file itself, and only once a benchmark
    ran), before that an open binary file (:class:`_LazyJsonFile`)."""
    major, minor = (int(part) for part in version.split(".")[:2])
    if (major, minor) >= (5, 3):
        DEFAULT_JSON.parent.mkdir(exist_ok=True)
        return DEFAULT_JSON
    return _LazyJsonFile()


def _interpreter_active() -> bool:
    return bool(getattr(sys.modules.get("structprune_triton.config"), "INTERPRET", False))


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("structprune bench")
    group.addoption("--bench-quick", action="store_true", default=False, help="fewer cases and shorter timing")
    group.addoption(
        "--bench-compile-backend",
        default=None,
        help="torch.compile backend of the *-compiled implementations "
        "(default: inductor when timing, aot_eager with --benchmark-disable)",
    )
    group.addoption(
        "--bench-threads",
        default="1,2",
        help="CPU: comma-separated torch thread counts of the interleaved comparison with upstream "
        "eager; the first also times the table (default: 1,2)",
    )


@pytest.hookimpl(tryfirst=True)  # before pytest-benchmark reads its options
def pytest_configure(config: pytest.Config) -> None:
    SETTINGS.quick = bool(config.getoption("--bench-quick"))
    SETTINGS.compile_backend_option = config.getoption("--bench-compile-backend")
    SETTINGS.benchmark_disabled = bool(getattr(config.option, "benchmark_disable", False))
    SETTINGS.threads = tuple(int(n) for n in str(config.getoption("--bench-threads")).split(",") if n.strip())
    if not SETTINGS.cuda:
        torch.set_num_threads(SETTINGS.threads[0])
        if getattr(config.option, "benchmark_timer", None) == "time.perf_counter":  # pytest-benchmark's default
            config.option.benchmark_timer = "time.process_time"
    if not SETTINGS.benchmark_disabled and getattr(config.option, "benchmark_json", None) is None:
        config.option.benchmark_json = default_json(importlib.metadata.version("pytest-benchmark"))
    # Every (shape, dtype) compiles its own graph (dynamic=False); the default limits (8 per code
    # object) would make later cases fall back to eager silently.
    from torch._dynamo import config as dynamo_config

    dynamo_config.recompile_limit = 512
    dynamo_config.accumulated_recompile_limit = 4096


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not _interpreter_active():
        return
    skip = pytest.mark.skip(
        reason="structprune_triton was imported under TRITON_INTERPRET=1: the Triton "
        "interpreter is not a speed path; run `pytest bench` on its own"
    )
    for item in items:
        if "benchmark" in getattr(item, "fixturenames", ()) and Path(str(item.fspath)).is_relative_to(_HERE):
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed_and_sync():
    torch.manual_seed(0)
    yield
    if SETTINGS.cuda:
        torch.cuda.synchronize()


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    device = torch.device(SETTINGS.device)
    info = dict(run_info.describe(device))
    info.update(
        quick=SETTINGS.quick,
        compile_backend=SETTINGS.compile_backend,
        threads=list(SETTINGS.threads),
        command=shlex.join(["python", "-m", "pytest", *config.invocation_params.args]),
    )
    if not SETTINGS.benchmark_disabled:
        info["copy_gbps"] = run_info.copy_bandwidth(device)
    machine_info["structprune_bench"] = info

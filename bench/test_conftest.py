"""The bench conftest's default JSON output works with every pytest-benchmark release pyproject.toml
allows: each release's own way of writing ``config.option.benchmark_json`` is replayed here."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

CONFTEST = Path(__file__).resolve().parent / "conftest.py"


def _load_conftest(monkeypatch: pytest.MonkeyPatch, target: Path):
    spec = importlib.util.spec_from_file_location("structprune_bench_conftest", CONFTEST)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod, "DEFAULT_JSON", target)
    return mod


def _write_like_5_2(option: object) -> None:  # pytest-benchmark 5.2.x: session.save_json
    with option as fh:
        fh.write(b"{}")


def _write_like_5_3(option: object) -> None:  # pytest-benchmark 5.3.x: session.save_json
    with open(option, mode="wb") as fh:
        fh.write(b"{}")


@pytest.mark.parametrize(
    "version,write", [("5.2.3", _write_like_5_2), ("5.3.0", _write_like_5_3), ("5.3.1", _write_like_5_3)]
)
def test_default_json_is_written_by_each_release(tmp_path, monkeypatch, version, write) -> None:
    target = tmp_path / "out" / "run.json"
    option = _load_conftest(monkeypatch, target).default_json(version)
    assert not target.exists()  # nothing is truncated before a benchmark has run
    write(option)
    assert target.read_bytes() == b"{}"
    assert str(option) == str(target)  # what pytest-benchmark logs


def test_pyproject_allows_only_the_releases_checked_here() -> None:
    pyproject = (CONFTEST.parents[1] / "pyproject.toml").read_text()
    assert '"pytest-benchmark>=5.2.3,<5.4"' in pyproject

"""bench/report.py on a tiny synthetic pytest-benchmark JSON (no torch, no timing)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPORT = Path(__file__).resolve().parent / "report.py"


def _load_report():
    spec = importlib.util.spec_from_file_location("structprune_bench_report", REPORT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _bench(group, impl, time_s, **extra):
    info = {"op": group.split(" | ")[0], "impl": impl, "time_s": time_s, "device": "FakeGPU 9000",
            "torch": "2.99.0", "triton": "9.9.9", "time_source": "device median (synthetic)", **extra}
    return {"group": group, "name": f"test_x[{impl}]", "fullname": f"bench/test_x.py::test_x[{impl}]",
            "params": {"impl": impl}, "extra_info": info,
            "stats": {"min": time_s * 0.9, "max": time_s * 1.5, "mean": time_s * 1.1, "median": time_s * 1.05,
                      "rounds": 5, "iterations": 1}}


def _synthetic(path: Path) -> Path:
    g1 = "fss_fwd | 1024x512 bf16 | density 0.5"
    g2 = "bias_hook | 32x256 fp32 | prune_bias=True | density 0.5"
    benches = [
        _bench(g1, "ours-eager", 1e-4, bytes=3 * 2**20, gbps=31.5, pct_copy=1.0, ours_path="triton"),
        _bench(g1, "upstream-eager", 4e-4, bytes=4 * 2**20, gbps=10.5, pct_copy=0.3),
        _bench(g1, "upstream-compiled", 2e-4, graphs=1, graph_breaks=0),
        _bench(g1, "ours-compiled", 1e-4, graphs=1),
        _bench(g1, "copy", 5e-5),
        _bench(g2, "upstream-eager", 1e-5, wall_us_nosync=38.0),
        _bench(g2, "ours-eager", 2e-5, wall_us_nosync=12.5, vs_upstream_eager_interleaved=0.8),
    ]
    data = {"machine_info": {"python_version": "3.12.0",
                             "structprune_bench": {"device": "FakeGPU 9000", "torch": "2.99.0", "triton": "9.9.9",
                                                   "copy_gbps": 4247.0, "compile_backend": "inductor"}},
            "commit_info": {"id": "0123456789abcdef"}, "datetime": "2026-11-29T00:00:00", "benchmarks": benches}
    path.write_text(json.dumps(data))
    return path


def test_report_markdown_and_png(tmp_path):
    run = _synthetic(tmp_path / "run.json")
    out = tmp_path / "rep"
    proc = subprocess.run([sys.executable, str(REPORT), str(run), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    md = (out / "report.md").read_text()
    assert "## fss_fwd | 1024x512 bf16 | density 0.5" in md
    assert "FakeGPU 9000" in md and "torch 2.99.0" in md and "triton 9.9.9" in md and "4247 GB/s" in md
    # groups in op order, implementations in a fixed order
    assert md.index("## fss_fwd") < md.index("## bias_hook")
    section = md[md.index("## fss_fwd"):md.index("## bias_hook")]
    impls = ("upstream-eager", "upstream-compiled", "ours-eager", "ours-compiled", "copy")
    order = [section.index(f"| {i} |") for i in impls]
    assert order == sorted(order)
    # ours-eager: 4x faster than upstream eager, 2x faster than upstream compiled
    row = next(line for line in section.splitlines() if line.startswith("| ours-eager |"))
    assert "| 4x |" in row and "| 2x |" in row and "path=triton" in row and "31.5" in row
    # bias_hook: ours eager takes twice upstream's time; the interleaved ratio (0.8x) is what is flagged
    assert "| 0.5x | 0.8x **(>10% slower)** |" in md
    assert "1 group(s) where ours eager is more than 10% slower" in md
    assert "12.5 us" in md  # no-sync wall time
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "matplotlib is not installed" in proc.stdout
    else:
        png = out / "report.png"
        assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_without_matplotlib(tmp_path, monkeypatch, capsys):
    report = _load_report()
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    run = _synthetic(tmp_path / "run.json")
    assert report.main([str(run), "--out", str(tmp_path / "rep")]) == 0
    assert "matplotlib is not installed" in capsys.readouterr().out
    assert (tmp_path / "rep" / "report.md").exists() and not (tmp_path / "rep" / "report.png").exists()


def test_report_empty_run(tmp_path):
    report = _load_report()
    run = tmp_path / "empty.json"
    run.write_text(json.dumps({"benchmarks": []}))
    assert report.main([str(run), "--out", str(tmp_path / "rep")]) == 1


@pytest.mark.parametrize("seconds,text", [(2.5, "2.5 s"), (1.5e-3, "1.5 ms"), (7.5e-6, "7.5 us"), (3e-8, "30 ns")])
def test_fmt_time(seconds, text):
    assert _load_report().fmt_time(seconds) == text

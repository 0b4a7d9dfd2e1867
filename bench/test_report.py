"""bench/report.py on tiny synthetic runs (a pytest-benchmark JSON, a skip_models.py JSON): no timing."""

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


def _bench(group, impl, median, **extra):
    info = {"op": group.split(" | ")[0], "impl": impl, **extra}
    stats = {"min": median * 0.9, "median": median, "iqr": median * 0.1, "rounds": 5, "iterations": 10}
    return {"group": group, "name": f"test_x[{impl}]", "extra_info": info, "stats": stats}


def _synthetic(path: Path, cuda: bool = False) -> Path:
    g1 = "fss_fwd | 1024x512 bf16 | density 0.5"
    g2 = "bias_hook | 32x256 fp32 | prune_bias=True | density 0.5"
    dev = {"device_s": 2e-4} if cuda else {}
    inter = {"1": {"median": 0.8, "q1": 0.75, "q3": 0.85}, "2": {"median": 1.0, "q1": 0.95, "q3": 1.05}}
    benches = [
        _bench(g1, "ours-eager", 1e-4, bytes=3 * 2**20, ours_path="kernels"),
        _bench(g1, "upstream-eager", 4e-4, bytes=4 * 2**20, **dev),
        _bench(g1, "upstream-compiled", 2e-4, graphs=1, graph_breaks=0),
        _bench(g1, "ours-compiled", 1e-4, graphs=1, graph_breaks=0),
        _bench(g1, "copy", 5e-5),
        _bench(g2, "upstream-eager", 1e-5),
        _bench(
            g2,
            "ours-eager",
            2e-5,
            vs_upstream_eager=inter,
            **{"vs_upstream_eager exact_zeros=False": {"1": {"median": 1.2, "q1": 1.1, "q3": 1.3}}},
        ),
    ]
    info = {
        "device": "FakeGPU 9000",
        "versions": "torch 2.99.0, triton 9.9.9",
        "copy_gbps": 4247.0,
        "compile_backend": "inductor",
    }
    data = {
        "machine_info": {"structprune_bench": info},
        "commit_info": {"id": "0123456789abcdef"},
        "datetime": "2026-11-29T00:00:00",
        "benchmarks": benches,
    }
    path.write_text(json.dumps(data))
    return path


def _skip_run(path: Path) -> Path:
    step = {"median": 0.2, "q1": 0.19, "q3": 0.22}
    case = {
        "name": "MLP tiny, d=0.5",
        "density": 0.5,
        "skipping": "chains: rows 1, input columns 1",
        "times_s": {v: [0.2] for v in ("masked dense", "chains", "compact")},
        "step_s": {"masked dense": step, "chains": {"median": 0.1, "q1": 0.09, "q3": 0.11}, "compact": step},
        "vs_baseline": {
            "chains": {"median": 2.0, "q1": 1.9, "q3": 2.1},
            "compact": {"median": 1.0, "q1": 0.9, "q3": 1.1},
        },
    }
    run = {
        "command": "python bench/skip_models.py --json x.json",
        "date": "2026-11-29 00:00 UTC",
        "device": "cpu (FakeCPU, 2 cores)",
        "versions": "torch 2.99.0",
        "clock": "process CPU time",
        "threads": 1,
        "rounds": 1,
        "keep_memory": False,
        "baseline": "masked dense",
        "variants": ["masked dense", "chains", "compact"],  # a later variant is drawn and tabled too
        "cases": [case, {**case, "name": "Conv tiny, d=0.5"}],
    }
    path.write_text(json.dumps(run))
    return path


def test_report_markdown_and_plots(tmp_path):
    run = _synthetic(tmp_path / "run.json")
    skip = _skip_run(tmp_path / "skip.json")
    out = tmp_path / "rep"
    proc = subprocess.run(
        [sys.executable, str(REPORT), str(run), "--skip-json", str(skip), "--out", str(out), "--plots", str(out / "p")],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    md = (out / "report.md").read_text()
    assert "## fss_fwd | 1024x512 bf16 | density 0.5" in md
    assert "FakeGPU 9000" in md and "torch 2.99.0, triton 9.9.9" in md and "4247 GB/s" in md
    # groups in op order, implementations in a fixed order
    assert md.index("## fss_fwd") < md.index("## bias_hook")
    section = md[md.index("## fss_fwd") : md.index("## bias_hook")]
    order = [
        section.index(f"| {i} |")
        for i in ("upstream-eager", "upstream-compiled", "ours-eager", "ours-compiled", "copy")
    ]
    assert order == sorted(order)
    # ours-eager: the table's median (100 us, IQR 10 us), 4x upstream eager, 2x upstream compiled, 3 MiB in 100 us
    row = next(line for line in section.splitlines() if line.startswith("| ours-eager |"))
    assert "| 100 us [10 us] |" in row and "| 4x | 2x |" in row and "| 31.46 |" in row and "path=kernels" in row
    assert "graphs/breaks 1/0" in section
    # the interleaved comparison, per thread count, with its spread; 1 thread is flagged (1/0.8 = 1.25x)
    assert "| 0.80x [0.75-0.85] slower | 1.00x [0.95-1.05] same | 1.20x [1.10-1.30] faster |  |" in md
    assert "1 case(s) where ours eager takes more than 1.10x" in md and "1 thread(s): 1.25x" in md
    # the skip_models run: every variant, the per-round speed-up with its verdict
    assert "| masked dense | chains | compact |" in md
    assert "| Conv tiny, d=0.5 | 200 ms [190-220] | 100 ms [90-110] (2.00x [1.90-2.10] faster) |" in md
    assert "(1.00x [0.90-1.10] same) |" in md
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "matplotlib is not installed" in proc.stdout
        return
    for name in ("bench_per_call.png", "bench_implementations.png", "skip_training_step.png"):
        assert (out / "p" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"](p/{name})" in md  # linked from report.md, with its run in the alt text
    assert "![run " in md and "command: python bench/skip_models.py --json x.json" in md
    assert "2026-11-29 00:00 UTC; commit 0123456789" in md


def test_report_uses_device_time_on_cuda(tmp_path):
    report = _load_report()
    run = _synthetic(tmp_path / "run.json", cuda=True)
    assert report.main([str(run), "--out", str(tmp_path / "rep"), "--no-png"]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "device time" in md and "do_bench device times" in md
    row = next(line for line in md.splitlines() if line.startswith("| upstream-eager |") and "200 us" in line)
    assert "| 400 us [40 us] | 200 us |" in row


def test_report_without_matplotlib(tmp_path, monkeypatch, capsys):
    report = _load_report()
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    monkeypatch.setitem(sys.modules, "report_plots", None)  # (if an earlier test imported it)
    run = _synthetic(tmp_path / "run.json")
    assert report.main([str(run), "--out", str(tmp_path / "rep")]) == 0
    assert "matplotlib is not installed" in capsys.readouterr().out
    assert (tmp_path / "rep" / "report.md").exists() and not list((tmp_path / "rep").glob("*.png"))


def test_report_empty_run(tmp_path):
    run = tmp_path / "empty.json"
    run.write_text(json.dumps({"benchmarks": []}))
    assert _load_report().main([str(run), "--out", str(tmp_path / "rep")]) == 1


@pytest.mark.parametrize("seconds,text", [(2.5, "2.5 s"), (1.5e-3, "1.5 ms"), (7.5e-6, "7.5 us"), (3e-8, "30 ns")])
def test_fmt_time(seconds, text):
    assert _load_report().fmt_time(seconds) == text

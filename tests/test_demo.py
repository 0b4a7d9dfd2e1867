"""``python -m structprune_triton``: the end-to-end demo runs, checks, and prints its table.

The demo runs in a subprocess with this process's environment: on a CPU runner the root conftest
has set ``TRITON_INTERPRET=1``, so the demo exercises the Triton kernels under the interpreter
(small batch and few steps keep that fast).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMALL = (
    "--device",
    "cpu",
    "--rounds",
    "2",
    "--steps",
    "1",
    "--warmup",
    "1",
    "--batch-size",
    "4",
    "--width",
    "8",
    "--sparsity",
    "0.25",
    "--seed",
    "3",
)
ROW = re.compile(
    r"^(upstream \(baseline\)|ours: masked dense|ours \+ skip rows|ours \+ skip chains|ours \+ compact_training"
    r"|pruned model) +"
    r"(eager|compiled) +([0-9.]+) +(\S+)(?: \[([0-9.]+)-([0-9.]+)\] (same|faster|slower))? +(\S+) +(\S+)"
    r" +[0-9.]+->[0-9.]+ +[0-9,]+ +(PASS|FAIL|-)$",
    re.MULTILINE,
)


def run_demo(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "structprune_triton", *args],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_help() -> None:
    proc = run_demo("--help", timeout=120)
    assert proc.returncode == 0, proc.stderr
    for option in (
        "--device",
        "--rounds",
        "--steps",
        "--warmup",
        "--sparsity",
        "--batch-size",
        "--compile",
        "--no-compile",
        "--compile-backend",
        "--threads",
        "--seed",
        "--width",
    ):
        assert option in proc.stdout


@pytest.mark.parametrize(
    "argv",
    [
        ["--sparsity", "1.5"],
        ["--steps", "0"],
        ["--rounds", "0"],
        ["--warmup", "-1"],
        ["--batch-size", "0"],
        ["--device", "tpu"],
        ["--width", "0"],
    ],
)
def test_bad_arguments_are_rejected(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from structprune_triton import demo

    with pytest.raises(SystemExit) as exc:
        demo.parse_args(argv)
    assert exc.value.code == 2
    assert argv[0] in capsys.readouterr().err


def test_demo_small_run() -> None:
    proc = run_demo(*SMALL, "--no-compile")
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    rows = ROW.findall(out)
    names = [r[0] for r in rows]
    assert names[:2] == ["upstream (baseline)", "ours: masked dense"] and "pruned model" in names, out
    assert all(r[1] == "eager" for r in rows)
    assert rows[0][3] == "baseline" and all(r[4] for r in rows[1:]), out  # every other row has its spread
    assert all(r[-1] == ("-" if r[0] == "pruned model" else "PASS") for r in rows), out
    assert "versions  torch " in out and "kernels   " in out
    assert "pruned output, ours: masked dense, eager vs upstream eager: max abs difference 0.0e+00" in out
    assert "ours + compact_training" in names, out  # fine-tuned in the block, then pruned: PASS above
    assert "\nPASS: pruned model output matches the masked model" in out
    if os.environ.get("TRITON_INTERPRET") == "1":
        assert "interpreter" in out  # the Triton kernels ran


def test_demo_compiled_rows_are_one_graph_in_any_order() -> None:
    """Ours compiled is one graph with no break even though upstream's compiled row (graph breaks:
    Dynamo skips torch/ao) is compiled first, from the same model class."""
    proc = run_demo(*SMALL, "--compile", "--compile-backend", "aot_eager", timeout=600)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    compiled = {r[0]: r for r in ROW.findall(out) if r[1] == "compiled"}
    assert int(compiled["upstream (baseline)"][7].split("/")[1]) > 0, out  # upstream's graph breaks
    for name, row in compiled.items():
        if name != "upstream (baseline)":
            assert row[7] == "1/0", (name, out)  # graphs/breaks


def test_run_info_header_names_what_serves_the_device() -> None:
    import torch

    import structprune_triton
    from structprune_triton.run_info import copy_bandwidth, describe

    cpu = torch.device("cpu")
    info = dict(describe(cpu))
    assert list(info) == ["device", "kernels", "versions"]
    assert info["device"].startswith("cpu (") and f"{torch.get_num_threads()} torch threads" in info["device"]
    assert info["kernels"] == structprune_triton.describe_backend(cpu)
    assert f"torch {torch.__version__}" in info["versions"]
    assert f"structprune_triton {structprune_triton.__version__}" in info["versions"]
    assert 0.1 < copy_bandwidth(cpu) < 1e4  # GB/s of a 32 MiB copy: any real machine is in this range

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


def run_demo(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "structprune_triton", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )


def test_help() -> None:
    proc = run_demo("--help", timeout=120)
    assert proc.returncode == 0, proc.stderr
    for option in ("--device", "--steps", "--warmup", "--sparsity", "--batch-size", "--compile", "--no-compile", "--seed",
                   "--width"):
        assert option in proc.stdout


def test_bad_arguments_are_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    from structprune_triton import demo

    for argv in (["--sparsity", "1.5"], ["--steps", "0"], ["--warmup", "-1"], ["--batch-size", "0"],
                 ["--device", "tpu"], ["--width", "0"]):
        with pytest.raises(SystemExit) as exc:
            demo.parse_args(argv)
        assert exc.value.code == 2
        assert argv[0] in capsys.readouterr().err


@pytest.mark.parametrize("device", ["cpu"])
def test_demo_small_run(device: str) -> None:
    proc = run_demo("--device", device, "--steps", "2", "--warmup", "1", "--batch-size", "4",
                    "--sparsity", "0.25", "--no-compile", "--seed", "3")
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    # progress lines, the table (a row per variant) and the verdict
    assert "[" in out and "timed fine-tuning steps" in out
    assert "ms/step" in out and "max|pruned-masked|" in out
    rows = [line for line in out.splitlines()
            if re.match(r"(upstream|structprune_triton|structprune_triton \+ skip_masked_rows) +(eager|compiled) ", line)]
    assert len(rows) == 3 and all(row.rstrip().endswith("PASS") for row in rows), out
    assert "pruned layers skip their masked rows" in out
    assert "torch " in out and "triton " in out and "python " in out
    assert "parameters: " in out and "after pruning" in out
    assert "pruned output, structprune_triton eager vs upstream eager: max abs difference 0.0e+00" in out
    assert "\nPASS: pruned model output matches the masked model" in out
    if os.environ.get("TRITON_INTERPRET") == "1" and device == "cpu":
        assert "interpreter" in out  # the Triton kernels ran

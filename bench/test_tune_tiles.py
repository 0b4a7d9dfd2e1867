"""bench/tune_tiles.py runs: on the CPU, its --smoke mode checks every tile it tries against the
torch path under the Triton interpreter (GPU timing is for scripts/gpu-check)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent / "tune_tiles.py"


def test_tune_tiles_smoke(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--out", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = (tmp_path / "tiles.md").read_text()
    assert "0 wrong outputs" in table
    assert table.count("**policy**") == 3  # one row per case for the tile the default settings pick

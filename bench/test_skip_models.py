"""CI-sized sanity run of ``skip_models.py``: every variant builds, computes what masked dense
computes (checked inside the script before timing), and chain skipping really skips input columns."""

from __future__ import annotations

import skip_models


def test_quick_run() -> None:
    results = skip_models.main(["--quick", "--rounds", "1", "--threads", "1"])
    assert len(results) == len(skip_models.cases(True))
    for _name, times, skips in results:
        assert all(len(times[v]) == 1 for v in skip_models.VARIANTS)
        assert "chains: rows " in skips and "input columns 0" not in skips.split("chains:")[1]

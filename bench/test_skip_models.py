"""CI-sized sanity run of ``skip_models.py``: every variant builds, computes what masked dense
computes (checked inside the script before timing), chain skipping really skips input columns, and
``--json`` writes the run that ``report.py`` plots."""

from __future__ import annotations

import json

import skip_models


def test_quick_run(tmp_path) -> None:
    out = tmp_path / "skip.json"
    cases = skip_models.main(["--quick", "--rounds", "1", "--threads", "1", "--json", str(out)])
    assert len(cases) == len(skip_models.cases(True))
    for case in cases:
        assert list(case["times_s"]) == list(skip_models.VARIANTS)
        assert all(len(t) == 1 and t[0] > 0 for t in case["times_s"].values())
        assert set(case["vs_baseline"]) == set(skip_models.VARIANTS) - {skip_models.BASELINE}
        assert "chains: rows " in case["skipping"] and "input columns 0" not in case["skipping"].split("chains:")[1]
    run = json.loads(out.read_text())
    assert run["cases"] == json.loads(json.dumps(cases))
    assert run["command"].startswith("python bench/skip_models.py --quick")
    assert run["threads"] == 1 and run["variants"] == list(skip_models.VARIANTS) and "torch " in run["versions"]

"""Every experiment file smoke-runs offline with debug=tiny (tiny models of each family + the fixture)."""

from __future__ import annotations

import pytest

from tests.helpers import experiment_names, run_experiment


@pytest.mark.parametrize("experiment", experiment_names())
def test_experiment_smoke_runs_with_debug_tiny(experiment, tmp_path):
    results = run_experiment([f"exp={experiment}", "debug=tiny", "trainer.fast_dev_run=true"], tmp_path)
    assert results["budget"]["steps"] >= 1
    after = results["metrics"]["after"]
    assert after is not None and 0.0 <= after["ndcg@10"] <= 1.0

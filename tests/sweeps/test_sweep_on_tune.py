"""`paal sweep` for real: two strategies as Ray Tune trials on the phantom pool (real Ray Train
rounds and queries, CPU preset, tiny budget, one held-out test patient), the report, and resuming a
finished sweep."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from paal_ray.cli.main import app
from paal_ray.runs.state import RunPaths, RunState

pytestmark = pytest.mark.slow


def test_sweep_runs_each_trial_on_tune_reports_and_resumes(ray_session, phantom_pool, tmp_path):
    ws = tmp_path / "ws"
    spec = tmp_path / "sweep.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "cmp", "base": "cpu",
        "set": [f"pool={phantom_pool}", f"workspace={ws}", "budget.init_ratio=0.05", "budget.max_ratio=0.1",
                "budget.rounds=1", "schedule.mode=iq", "schedule.max_epochs_per_round=1", "schedule.max_final_epochs=1",
                "train.samples_per_epoch=16", "train.batch_size=8", "train.augment.enabled=false",
                "test.holdout_patients=1"],
        "grid": {"strategy.name": ["paal", "random"]},
    }, sort_keys=False))
    res = CliRunner().invoke(app, ["sweep", str(spec), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "2 trial(s)" in res.output and "name-random: strategy.name=random" in res.output
    assert not (ws / "cmp").exists()  # a dry run starts nothing

    res = CliRunner().invoke(app, ["sweep", str(spec)])
    assert res.exit_code == 0, res.output
    root = ws / "cmp"
    for name in ("name-paal", "name-random"):
        state = RunState.load(RunPaths(root / name))
        assert state.phase == "done" and state.labeled_count == state.budget
        # The held-out test ran inside the trial: its evaluation task is placed outside the trial's
        # placement group (inside, it could never be scheduled: the ACDC sweep's first trial failed so).
        assert json.loads((root / name / "test.json").read_text())["num_slices"] == 16
    # Tune saw every round of each trial: a result row per round and the final training.
    results = [json.loads(line) for p in (root / ".tune" / "trials").glob("*/result.json")
               for line in p.read_text().splitlines()]
    assert len(results) == 4 and sorted(r["final"] for r in results) == [False, False, True, True]
    md = (root / "report.md").read_text()
    assert "| paal | " in md and "| random | " in md and (root / "curves.png").is_file()
    n0 = len(json.loads((root / "name-paal" / "labelled.json").read_text())["initial"])
    assert f"| paal | 0 | {n0} |" in md  # round 0 trained on the initial slices
    # The random trial adopted round 0 from the PAAL trial (same seed, training and schedule: the
    # sweep sets one schedule for both): trained once.
    assert "adopted" in res.output

    # Same sweep again: nothing is retrained, the report is rewritten; another grid is refused.
    mtime = (root / "name-paal" / "final.json").stat().st_mtime
    res = CliRunner().invoke(app, ["sweep", str(spec)])
    assert res.exit_code == 0, res.output
    assert (root / "name-paal" / "final.json").stat().st_mtime == mtime
    res = CliRunner().invoke(app, ["sweep", str(spec), "--set", "seed=3"])
    assert res.exit_code == 2 and "holds a different sweep" in res.output


def test_a_failing_trial_fails_the_sweep_and_is_named(ray_session, phantom_pool, tmp_path):
    """b = 0 passes config validation but fails the run's init (BudgetError) inside its trial."""
    spec = tmp_path / "sweep.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "bad", "base": "cpu", "set": [f"pool={phantom_pool}", f"workspace={tmp_path}"],
        "grid": {"budget.max_ratio": [0.05]},
    }))
    res = CliRunner().invoke(app, ["sweep", str(spec)])
    assert res.exit_code == 1
    assert "1 trial(s) failed: max_ratio-0.05" in res.output

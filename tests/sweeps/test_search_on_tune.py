"""`paal sweep` with `search:` for real, on the phantom pool (real Ray Train rounds and queries, CPU
preset, tiny budget): random search with ASHA stopping weak trials after their first round, an
interrupted search resumed with Tuner.restore, the search report, and two trials side by side."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from paal_ray.cli.main import app
from paal_ray.runs.report import status_text
from paal_ray.runs.state import RunPaths, RunState

pytestmark = pytest.mark.slow

# Round 0 trains 4 epochs of 16 steps without LR warm-up (IQ's patience beyond the cap): enough for
# the sampled learning rates to differ in Dice there. With 2-16 steps every trial still predicts
# background alike (the same Dice to 10 digits), and ASHA rightly has nothing to cut.
TINY = ["budget.init_ratio=0.05", "budget.max_ratio=0.1", "budget.rounds=1", "schedule.max_epochs_per_round=4",
        "schedule.iq_patience=10", "schedule.max_final_epochs=1", "train.samples_per_epoch=128",
        "train.batch_size=8", "train.warmup_epochs=0", "train.augment.enabled=false"]
LIGHTEST = ["budget.init_ratio=0.05", "budget.max_ratio=0.1", "budget.rounds=1", "schedule.max_epochs_per_round=1",
            "schedule.mode=fixed", "schedule.fixed_warmup=1", "schedule.max_final_epochs=1",
            "train.samples_per_epoch=16", "train.batch_size=8", "train.augment.enabled=false", "strategy.name=random"]


def search_spec(path: Path, pool: Path, ws: Path, *, asha: bool = True, name: str = "search") -> Path:
    """The acceptance sweep: 3 sampled segmenter learning rates, ASHA with a grace period of 1 round."""
    search = {"space": {"train.lr": {"loguniform": [1.0e-4, 3.0e-2]}}, "num_samples": 3, "metric": "auc",
              "algorithm": "random", "seed": 0}
    if asha:
        search["asha"] = {"grace_period": 1, "reduction_factor": 2}
    path.write_text(yaml.safe_dump({"name": name, "base": "cpu", "set": [f"pool={pool}", f"workspace={ws}", *TINY],
                                    "search": search, "max_concurrent": 1}, sort_keys=False))
    return path


def _runs(root: Path) -> dict[str, RunState]:
    return {p.name: RunState.load(RunPaths(p)) for p in sorted(root.iterdir()) if (p / "state.json").is_file()}


def test_search_with_asha_stops_weak_trials_resumes_and_reports_the_best(ray_session, phantom_pool, tmp_path):
    ws = tmp_path / "ws"
    spec = search_spec(tmp_path / "search.yaml", phantom_pool, ws)
    root = ws / "search"
    res = CliRunner().invoke(app, ["sweep", str(spec), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "each sampled 3 time(s) (random, seed 0) over train.lr ~ loguniform" in res.output

    # Interrupt the search: a second driver on this Ray cluster, killed once a trial has ended.
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address,
           "TUNE_GLOBAL_CHECKPOINT_S": "0", "PYTHONPATH": os.pathsep.join(sys.path)}
    log = tmp_path / "driver.log"
    with open(log, "w") as out:
        driver = subprocess.Popen([sys.executable, "-m", "paal_ray.cli.main", "sweep", str(spec)], env=env,
                                  stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 1200
        while time.monotonic() < deadline and driver.poll() is None:
            ended = [n for n, s in _runs(root).items() if s.phase == "done"] if root.is_dir() else []
            if ended:
                time.sleep(3)  # let Tune record the trial's end
                break
            time.sleep(1)
        assert ended, "no trial ended before the deadline; the driver said:\n" + log.read_text()[-4000:]
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    before = {n: (root / n / "final.json").stat().st_mtime for n, s in _runs(root).items() if s.phase == "done"}

    res = CliRunner().invoke(app, ["sweep", str(spec)])
    assert res.exit_code == 0, res.output
    assert "resuming from" in res.output and "ASHA's record is rebuilt from the reports of" in res.output
    runs = _runs(root)
    assert len(runs) == 3  # the same 3 sampled trials: none added, none lost
    for name, mtime in before.items():  # finished before the interruption: not trained again
        assert (root / name / "final.json").stat().st_mtime == mtime
        assert f"ASHA's record: {name}'s" in res.output  # and ASHA compares the rest with what it reported
    stopped = [n for n in runs if RunPaths(root / n).stopped.is_file()]
    assert stopped, "ASHA (grace period 1 round, 3 samples) stopped no trial"
    for n in stopped:
        assert runs[n].phase != "done" and not (root / n / "final.json").exists()
        assert "stopped    by the sweep's scheduler (ASHA) after 1 round(s): auc" in status_text(root / n)
    finished = [n for n in runs if runs[n].phase == "done"]
    assert len(finished) + len(stopped) == 3
    lrs = {n: v["train.lr"] for n, v in json.loads((root / "trials.json").read_text()).items()}
    assert len(set(lrs.values())) == 3 and all(1e-4 <= v <= 3e-2 for v in lrs.values())
    assert all(yaml.safe_load((root / n / "config.yaml").read_text())["train"]["lr"] == lrs[n] for n in runs)

    # The report names the best finished trial by the metric, lists all four and plots them.
    search_md = (root / "search.md").read_text()
    rows = [line for line in search_md.splitlines() if line.startswith("| t0")]
    assert len(rows) == 3 and sum("stopped by ASHA after 1 round(s)" in r for r in rows) == len(stopped)
    best = max(finished, key=lambda n: float(next(r for r in rows if r.startswith(f"| {n} ")).split("|")[3]))
    assert f"**{best}**: train.lr={lrs[best]:.4g}" in search_md
    assert f"Best configuration by `auc`: **{best}**" in (root / "report.md").read_text()
    assert (root / "search.png").read_bytes()[:4] == b"\x89PNG"


def test_two_trials_run_at_once_with_their_declared_resources(ray_session, phantom_pool, tmp_path):
    ws = tmp_path / "ws"
    spec = tmp_path / "pair.yaml"
    spec.write_text(yaml.safe_dump({
        # What is learnt does not matter here, only when each trial runs: the lightest run there is.
        "name": "pair", "base": "cpu", "set": [f"pool={phantom_pool}", f"workspace={ws}", *LIGHTEST,
                                               "scaling.num_workers=1", "scaling.score_actors=1"],
        "grid": {"seed": [0, 1]}, "max_concurrent": 2}, sort_keys=False))
    res = CliRunner().invoke(app, ["sweep", str(spec)])
    assert res.exit_code == 0, res.output
    # Each trial declares 1 CPU for its Ray Train worker or its scoring actor, plus its driver's share:
    # the session's 4 CPUs hold both at once.
    assert "2 trial(s), 2 at a time (each needs 1.01 CPU at its peak)" in res.output
    spans = {}
    for name in ("seed-0", "seed-1"):
        run = ws / "pair" / name
        assert RunState.load(RunPaths(run)).phase == "done"
        spans[name] = ((run / "config.yaml").stat().st_mtime, (run / "final.json").stat().st_mtime)
    (a0, a1), (b0, b1) = spans.values()
    assert a0 < b1 and b0 < a1, f"the trials ran one after the other: {spans}"

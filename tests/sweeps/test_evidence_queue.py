"""jobs/evidence_queue.py: which labelled sets are ready to retrain, in which order, and that
stopping the queue stops its children."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "jobs"))

from evidence_queue import Lanes, pending_retrainings, ready_runs  # noqa: E402


def _run(ws: Path, sweep: str, name: str, rnd: int, phase: str) -> Path:
    run = ws / sweep / name
    run.mkdir(parents=True)
    (run / "state.json").write_text(json.dumps({"round": rnd, "rounds": 5, "phase": phase}))
    return run


def _workspace(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    ws = tmp_path / "ws"
    runs = {"done": _run(ws, "sweep-a", "done", 5, "done"), "final": _run(ws, "sweep-a", "final", 5, "final"),
            "training": _run(ws, "sweep-a", "training", 3, "train"),  # still querying: its set is not final
            "last-query": _run(ws, "sweep-a", "last-query", 5, "select"), "other": _run(ws, "sweep-b", "other", 5, "test")}
    return ws, runs


def test_sets_are_retrained_once_final_seed_0_of_every_set_first(tmp_path):
    ws, runs = _workspace(tmp_path)
    assert ready_runs(ws, ["sweep-a"]) == [runs["done"], runs["final"]]
    assert ready_runs(ws, ["sweep-a", "sweep-b", "not-begun"]) == [runs["done"], runs["final"], runs["other"]]
    records = tmp_path / "noise.jsonl"
    sets = ["train.lr=0.003", "scaling.train_threads=1"]
    records.write_text("".join(json.dumps(r) + "\n" for r in [
        {"run": str(runs["done"]), "seed": 0, "set": ["train.lr=0.003", "scaling.train_threads=2"]},  # threads: same
        {"run": str(runs["done"]), "seed": 1, "set": ["train.lr=0.001"]},  # another variant: not this one's
    ]))
    ready = ready_runs(ws, ["sweep-a"])
    assert pending_retrainings(ready, records, sets, [0, 1]) == [(runs["final"], 0), (runs["done"], 1), (runs["final"], 1)]
    assert pending_retrainings(ready, tmp_path / "none.jsonl", sets, [0]) == [(runs["done"], 0), (runs["final"], 0)]


def test_dry_run_plans_with_absolute_paths_and_refuses_unknown_sweeps(tmp_path, monkeypatch):
    ws, runs = _workspace(tmp_path)
    pool = tmp_path / "pool"
    pool.mkdir()
    monkeypatch.chdir(tmp_path)
    base = [sys.executable, str(REPO / "jobs/evidence_queue.py"), "--workspace", str(ws), "--pool", "pool",
            "--records", "noise.jsonl", "--archive", "archive", "--retrain-set", "train.lr=0.003", "--dry-run"]
    res = subprocess.run([*base, "--sweeps", "acdc-ablation-qlr"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].startswith("lane 1: ") and f"jobs/sweeps/acdc-ablation-qlr.yaml --set pool={pool} " in lines[0]
    assert f"--set workspace={ws} --set scaling.train_threads=1" in lines[0]
    assert len(lines) == 2 and lines[1].startswith("after each retraining: ")  # no sweep begun: nothing to retrain
    assert f"--out {tmp_path / 'archive'} --final-noise {tmp_path / 'noise.jsonl'}" in lines[1]
    bad = subprocess.run([*base, "--sweeps", "no-such-sweep"], capture_output=True, text=True)
    assert bad.returncode != 0 and "--sweeps no-such-sweep: no jobs/sweeps/no-such-sweep.yaml" in bad.stderr
    rel = subprocess.run([*base[:3], "ws", *base[4:], "--sweeps", "acdc-ablation-qlr"], capture_output=True, text=True)
    assert rel.returncode != 0 and "must be an absolute path" in rel.stderr


def test_stopping_the_lanes_stops_a_running_child(tmp_path):
    lanes = Lanes({"PATH": "/usr/bin:/bin"}, tmp_path)
    codes = []
    with (tmp_path / "log").open("w") as log:
        worker = threading.Thread(target=lambda: codes.append(lanes.call(["sleep", "60"], log)))
        worker.start()
        while not lanes.children:
            time.sleep(0.05)
        lanes.stop()
        worker.join(10)
    assert not worker.is_alive() and codes == [-15]  # SIGTERM, not a minute's sleep
    assert lanes.call(["true"], None) == -1  # nothing new starts once stopping

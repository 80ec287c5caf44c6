"""`paal run` end to end on phantoms with the real Ray Train rounds and query engine (CPU preset,
tiny budget, two held-out test patients): state, selections, labelled counts and metrics; the final
model judged on the held-out patients (test.json, `paal evaluate` agrees); SIGKILL of the driver in
training and between selection and label ingest, then resume; the human-oracle path."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from paal_ray.atomic import read_jsonl
from paal_ray.cli.main import app
from paal_ray.data.pool import Pool
from paal_ray.evaluation.report import table
from paal_ray.runs.oracle import safe_name
from paal_ray.runs.state import Labelled, RunPaths, RunState

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def tiny(pool: Path, workspace: Path, name: str = "run", strategy: str = "paal", holdout: int = 2) -> list[str]:
    """10 phantom patients, 2 held out for the test; fold 0 of the 8 left validates on 2: 96 training
    slices; init 4, two rounds of 5; 2 epochs a round and 2 final. (No hold-out: 128, init 6, rounds of 6.)"""
    sets = [f"pool={pool}", f"workspace={workspace}", f"name={name}", f"strategy.name={strategy}",
            f"test.holdout_patients={holdout}",
            "budget.init_ratio=0.05", "budget.max_ratio=0.15", "budget.rounds=2",
            "schedule.max_epochs_per_round=2", "schedule.max_final_epochs=2", "train.samples_per_epoch=32",
            "train.batch_size=16", "train.augment.enabled=false", "ray.num_cpus=4"]
    return [a for s in sets for a in ("--set", s)]


def labelled(root: Path) -> list[str]:
    return Labelled.load(RunPaths(root)).all()


@pytest.fixture(scope="module")
def finished_run(ray_session, phantom_pool, tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp("e2e")
    res = CliRunner().invoke(app, ["run", "cpu", *tiny(phantom_pool, ws)])
    assert res.exit_code == 0, res.output
    assert "[test] Dice" in res.output
    return ws / "run"


def test_two_round_run_state_selections_metrics(finished_run):
    root = finished_run
    state = RunState.load(RunPaths(root))
    assert (state.phase, state.round, state.n_train, state.per_round) == ("done", 2, 96, 5)
    assert state.labeled_count == state.budget == 14 and 0 <= state.final_dice <= 1
    lab = json.loads((root / "labelled.json").read_text())
    assert len(lab["initial"]) == 4
    for r in (0, 1):
        sel = pq.read_table(root / "rounds" / f"{r:03d}" / "selection.parquet").column("slice_id").to_pylist()
        assert sel[:5] == lab["rounds"][f"{r:03d}"] and len(set(sel[:5])) == 5
    assert lab["labelled"] == lab["initial"] + lab["rounds"]["000"] + lab["rounds"]["001"]
    assert len(set(lab["labelled"])) == 14
    metrics = read_jsonl(root / "metrics.jsonl")
    rounds = [m for m in metrics if m["kind"] == "round"]
    assert [(m["round"], m["labeled_count"], m["labeled_after"]) for m in rounds] == [(0, 4, 9), (1, 9, 14)]
    for m in rounds:
        assert len(m["val_dice_per_class"]) == 4 and m["query_s"] > 0 and m["ap_error"] is not None
        assert m["ap_pearson"] is None or -1 <= m["ap_pearson"] <= 1
    epochs = [m for m in metrics if m["kind"] == "epoch"]
    assert [e["round"] for e in epochs] == [0, 0, 1, 1, 2, 2]
    assert [e["epoch"] for e in epochs] == sorted({e["epoch"] for e in epochs})
    assert [m["labeled_count"] for m in metrics if m["kind"] == "final"] == [14]
    res = CliRunner().invoke(app, ["status", str(root)])
    assert res.exit_code == 0 and "labelled   14 / 14" in res.output and "final" in res.output


def test_held_out_patients_judge_the_final_model(finished_run):
    """The 2 held-out patients never enter training, validation or selection; the final model is
    judged on them into RUN/test.json (by the evaluation task), and `paal evaluate RUN` agrees."""
    root = finished_run
    split = json.loads((root / "split.json").read_text())
    test = json.loads((root / "test.json").read_text())
    assert len(test["patients"]) == 2 and test["patients"] == split["test"]["patients"]
    assert test["num_slices"] == 32 and test["num_volumes"] == 2 and test["image_size"] == [64, 64]
    # patient-level: no slice of a test patient in training or validation (ids from the pool's index)
    index = Pool.open(yaml.safe_load((root / "config.yaml").read_text())["pool"]).index(["slice_id", "patient_id"])
    patient = dict(zip(index.column("slice_id").to_pylist(), index.column("patient_id").to_pylist(), strict=True))
    seen = {patient[s] for s in split["train_ids"] + split["val_ids"]}
    assert seen and not seen & set(test["patients"])
    assert {patient[s] for s in split["test"]["slice_ids"]} == set(test["patients"])
    assert not set(labelled(root)) & set(split["test"]["slice_ids"])
    assert 0 <= test["dice"] <= 1 and len(test["dice_per_class"]) == 4
    assert sorted(test["classes"]) == sorted(test["class_names"][1:]) and len(test["classes"]) == 3
    metrics = read_jsonl(root / "metrics.jsonl")
    final = [m for m in metrics if m["kind"] == "final"][-1]
    assert test["checkpoint"] == final["checkpoint"]
    rec = [m for m in metrics if m["kind"] == "test"]
    assert len(rec) == 1 and rec[0]["dice"] == test["dice"]
    res = CliRunner().invoke(app, ["status", str(root)])
    assert res.exit_code == 0 and f"test       Dice {test['dice']:.4f}" in res.output
    # test.json lists classes alphabetically (sorted keys); the table keeps the pool's order.
    rows = [line.split()[0] for line in table(test).splitlines() if line.split()[:1] and line.split()[0] in test["classes"]]
    assert rows == test["class_names"][1:]
    # The same model on the same test set from the CLI: the same figures.
    res = CliRunner().invoke(app, ["evaluate", str(root), "--json"])
    assert res.exit_code == 0, res.output
    again = json.loads(res.stdout[res.stdout.index("{"):])
    assert again["dice_per_class"] == pytest.approx(test["dice_per_class"])
    assert again["volume_dice"] == pytest.approx(test["volume_dice"])
    assert again["hd95"]["n"] == test["hd95"]["n"]


def _wait_for(pred, timeout: float, proc: subprocess.Popen, what: str) -> None:
    t0 = time.time()
    while not pred():
        if proc.poll() is not None:
            raise AssertionError(f"driver exited ({proc.returncode}) before {what}:\n{proc.stdout.read()}")
        if time.time() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def _kill_group(proc: subprocess.Popen) -> None:
    """The driver was SIGKILLed; also end anything else it started, by our group id."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_sigkill_in_training_and_before_label_ingest_then_resume(finished_run, ray_session, phantom_pool, tmp_path):
    # The drivers attach to the test session's Ray (as `paal run` does to a cluster): starting a
    # local Ray in each would cost more than the rest of the test. Ray ends a dead driver's actors.
    env = dict(os.environ, PYTHONUNBUFFERED="1", RAY_ADDRESS=ray_session.get_runtime_context().gcs_address)
    # Beside the finished run, in its folder: round 0 is adopted from it (trained identically), so
    # the kills land in round 1, which continues from an init checkpoint (the round's own wins).
    ws = finished_run.parent
    root = ws / "killed"
    # 1. `paal run` killed by SIGKILL while round 1 trains (its first epoch checkpoint is on disk).
    proc = subprocess.Popen([str(REPO / ".venv" / "bin" / "paal"), "run", "cpu", *tiny(phantom_pool, ws, name="killed")],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        _wait_for(lambda: any((root / "train" / "round-001").glob("checkpoint_*")), 900, proc, "a training checkpoint")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        _kill_group(proc)
    assert RunState.load(RunPaths(root)).phase == "train"
    assert (root / "train" / "round-000-shared").is_dir() and not (root / "train" / "round-000").exists()  # adopted
    # 2. Resume in a driver that is SIGKILLed after labelled.json took round 1's selection and
    #    before state.json recorded the ingest.
    script = (
        "import os, signal\n"
        "from paal_ray.runs.launch import launch\n"
        "def hook(point, state):\n"
        "    if point == 'ingest:labelled' and state.round == 1:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        f"launch(resume={str(root)!r}, hook=hook)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=1200)
    finally:
        _kill_group(proc)
    assert proc.returncode == -signal.SIGKILL, out
    state = RunState.load(RunPaths(root))
    assert state.phase == "ingest" and len(labelled(root)) == 14
    # 3. Resume to the end (here, on the test session's Ray): the same run as the uninterrupted one.
    res = CliRunner().invoke(app, ["run", "--resume", str(root)])
    assert res.exit_code == 0, res.output
    assert RunState.load(RunPaths(root)).phase == "done"
    assert labelled(root) == labelled(finished_run)
    keys = [(m["kind"], m["round"], m["epoch"]) for m in read_jsonl(root / "metrics.jsonl")]
    assert len(keys) == len(set(keys)) == len(read_jsonl(finished_run / "metrics.jsonl"))


def test_human_oracle_export_reject_accept_continue(ray_session, phantom_pool, tmp_path):
    from PIL import Image

    runner = CliRunner()
    args = tiny(phantom_pool, tmp_path, strategy="random", holdout=0) + ["--set", "oracle.kind=human", "--set", "budget.rounds=1",
                                                           "--set", "budget.max_ratio=0.1"]
    res = runner.invoke(app, ["run", "cpu", *args])
    root = tmp_path / "run"
    assert res.exit_code == 0, res.output
    assert "waiting for 6 of 6 masks" in res.output
    export = root / "rounds" / "000" / "annotate"
    manifest = json.loads((export / "manifest.json").read_text())
    ids = [e["slice_id"] for e in manifest["slices"]]
    assert len(ids) == 6 and all((export / f"{safe_name(s)}.nii.gz").is_file() for s in ids)
    inbox = root / "rounds" / "000" / "inbox"
    for s in ids:
        Image.fromarray(np.ones((64, 64), np.uint8)).save(inbox / f"{safe_name(s)}.png")
    Image.fromarray(np.full((64, 64), 9, np.uint8)).save(inbox / f"{safe_name(ids[0])}.png")
    res = runner.invoke(app, ["run", "--resume", str(root)])
    assert res.exit_code == 2
    assert f"{safe_name(ids[0])}.png: class values [9] outside 0..3" in res.output
    Image.fromarray(np.ones((64, 64), np.uint8)).save(inbox / f"{safe_name(ids[0])}.png")
    res = runner.invoke(app, ["run", "--resume", str(root)])
    assert res.exit_code == 0, res.output
    state = RunState.load(RunPaths(root))
    assert state.phase == "done" and state.labeled_count == 12
    assert [m["kind"] for m in read_jsonl(root / "metrics.jsonl")].count("final") == 1

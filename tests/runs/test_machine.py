"""The run state machine with fake trainer/query: persistence, budget arithmetic, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from fakes import FakeQuery, FakeTrainer, fake_services, fake_strategy, small_cfg

from paal_ray.atomic import read_jsonl
from paal_ray.config import load_config
from paal_ray.runs.machine import BudgetError, RunMachine, Services
from paal_ray.runs.state import Labelled, RunPaths, RunState

HERE = Path(__file__).parent


def labelled_of(root: Path) -> list[str]:
    return Labelled.load(RunPaths(root)).all()


def test_full_run_writes_state_selections_and_metrics(blob_pool, tmp_path):
    cfg = small_cfg(blob_pool, tmp_path)
    services = fake_services()
    m = RunMachine.create(cfg, services=services, echo=lambda s: None)
    out = m.run()
    root = tmp_path / "r"
    assert out.status == "done"
    state = json.loads((root / "state.json").read_text())
    # 6 patients, fold 0 holds out 2 of them: 32 training slices; init 3, b = (16 - 3) // 2 = 6.
    assert state["n_train"] == 32 and state["per_round"] == 6 and state["budget"] == 15
    assert state["phase"] == "done" and state["round"] == 2 and state["labeled_count"] == 15
    assert state["strategy"] == "fake" and state["final_dice"] is not None
    assert (root / "config.yaml").is_file() and "ray" in json.loads((root / "versions.json").read_text())
    lab = json.loads((root / "labelled.json").read_text())
    assert len(lab["initial"]) == 3 and [len(v) for v in lab["rounds"].values()] == [6, 6]
    assert lab["labelled"] == lab["initial"] + lab["rounds"]["000"] + lab["rounds"]["001"]
    assert len(set(lab["labelled"])) == 15
    for r in (0, 1):
        sel = pq.read_table(root / "rounds" / f"{r:03d}" / "selection.parquet").column("slice_id").to_pylist()
        assert sel == lab["rounds"][f"{r:03d}"]
    # Each round trains on exactly the previous set; validation patients never enter it.
    trainer: FakeTrainer = services.train
    assert [len(s.train_ids) for s in trainer.specs] == [3, 9, 15]
    assert [s.phase for s in trainer.specs] == ["query", "query", "final"]
    assert trainer.specs[1].init_checkpoint == str(root / "train" / "round-000" / "checkpoint")
    val = set(json.loads((root / "split.json").read_text())["val_ids"])
    assert not val & set(lab["labelled"]) and {s.split("/")[0] for s in val} == {"case000", "case001"}
    metrics = read_jsonl(root / "metrics.jsonl")
    assert len([m for m in metrics if m["kind"] == "epoch"]) == 9
    rounds = [m for m in metrics if m["kind"] == "round"]
    assert [(m["round"], m["labeled_count"], m["labeled_after"]) for m in rounds] == [(0, 3, 9), (1, 9, 15)]
    assert all(m["ap_pearson"] == 0.5 and m["query_s"] == 0.01 for m in rounds)
    assert [m["labeled_count"] for m in metrics if m["kind"] == "final"] == [15]


def test_same_seed_same_initial_set_for_every_strategy(blob_pool, tmp_path):
    a = RunMachine.create(small_cfg(blob_pool, tmp_path / "a"), services=fake_services(), echo=lambda s: None)
    b = RunMachine.create(small_cfg(blob_pool, tmp_path / "b", **{"strategy.name": "other"}),
                          services=fake_services(), echo=lambda s: None)
    c = RunMachine.create(small_cfg(blob_pool, tmp_path / "c", seed=1), services=fake_services(), echo=lambda s: None)
    for m in (a, b, c):
        m.run(max_steps=1)
    assert labelled_of(tmp_path / "a" / "r") == labelled_of(tmp_path / "b" / "r")
    assert labelled_of(tmp_path / "a" / "r") != labelled_of(tmp_path / "c" / "r")


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 5, 7, 9])
def test_resume_after_any_step_gives_the_uninterrupted_result(blob_pool, tmp_path, steps):
    full = RunMachine.create(small_cfg(blob_pool, tmp_path / "full"), services=fake_services(), echo=lambda s: None)
    full.run()
    part = RunMachine.create(small_cfg(blob_pool, tmp_path / "part"), services=fake_services(), echo=lambda s: None)
    assert part.run(max_steps=steps).status == "stopped"
    again = RunMachine.open(tmp_path / "part" / "r", services=fake_services(), echo=lambda s: None)
    assert again.run().status == "done"
    assert labelled_of(tmp_path / "part" / "r") == labelled_of(tmp_path / "full" / "r")
    keys = [(m["kind"], m["round"], m["epoch"]) for m in read_jsonl(tmp_path / "part" / "r" / "metrics.jsonl")]
    assert len(keys) == len(set(keys)) == len(read_jsonl(tmp_path / "full" / "r" / "metrics.jsonl"))


class Crash(Exception):
    pass


@pytest.mark.parametrize("point", ["query:selected", "ingest:labelled", "after:train"])
def test_crash_inside_a_step_is_resumed_without_loss_or_duplicates(blob_pool, tmp_path, point):
    full = RunMachine.create(small_cfg(blob_pool, tmp_path / "full"), services=fake_services(), echo=lambda s: None)
    full.run()

    def crash(p, state):
        if p == point and state.round == 1:
            raise Crash(p)

    m = RunMachine.create(small_cfg(blob_pool, tmp_path / "part"), services=fake_services(), hook=crash,
                          echo=lambda s: None)
    with pytest.raises(Crash):
        m.run()
    root = tmp_path / "part" / "r"
    services = fake_services()
    assert RunMachine.open(root, services=services, echo=lambda s: None).run().status == "done"
    assert labelled_of(root) == labelled_of(tmp_path / "full" / "r")
    # A selection written before the crash is reused, not queried again.
    assert len(services.query.requests) == (0 if point != "after:train" else 1)
    keys = [(m["kind"], m["round"], m["epoch"]) for m in read_jsonl(root / "metrics.jsonl")]
    assert len(keys) == len(set(keys))


def test_sigkill_between_selection_and_label_ingest(blob_pool, tmp_path):
    """A real SIGKILL of the driver after labelled.json is written but before state.json moves on."""
    cfg = small_cfg(blob_pool, tmp_path / "full")
    RunMachine.create(cfg, services=fake_services(), echo=lambda s: None).run()
    part_ws = tmp_path / "part"
    script = f"""
import os, signal
from fakes import fake_services
from paal_ray.config import load_config
from paal_ray.runs.machine import RunMachine
cfg = load_config({str(RunPaths(tmp_path / 'full' / 'r').config)!r}, ["workspace={part_ws}"])
def hook(point, state):
    if point == "ingest:labelled" and state.round == 0:
        os.kill(os.getpid(), signal.SIGKILL)
RunMachine.create(cfg, services=fake_services(), hook=hook, echo=lambda s: None).run()
"""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    root = part_ws / "r"
    assert RunState.load(RunPaths(root)).phase == "ingest"  # killed mid-step
    assert len(labelled_of(root)) == 9  # the round's selection already in labelled.json
    RunMachine.open(root, services=fake_services(), echo=lambda s: None).run()
    assert labelled_of(root) == labelled_of(tmp_path / "full" / "r")
    assert len(set(labelled_of(root))) == 15


def test_budget_with_nothing_to_query_is_a_clear_error(blob_pool, tmp_path):
    cfg = small_cfg(blob_pool, tmp_path, **{"budget.max_ratio": 0.12, "budget.rounds": 5})
    with pytest.raises(BudgetError, match="budget.max_ratio or lower budget.rounds"):
        RunMachine.create(cfg, services=fake_services(), echo=lambda s: None).run()


def test_existing_run_is_not_overwritten(blob_pool, tmp_path):
    cfg = small_cfg(blob_pool, tmp_path)
    RunMachine.create(cfg, services=fake_services(), echo=lambda s: None).run(max_steps=1)
    with pytest.raises(FileExistsError, match="--resume"):
        RunMachine.create(cfg, services=fake_services(), echo=lambda s: None)


def test_strategy_model_overrides_and_extension_reach_training(blob_pool, tmp_path):
    cfg = small_cfg(blob_pool, tmp_path, **{"strategy.params": "{extension: lpl, model_overrides: {decoder_dropout: 0.3}}"})
    trainer = FakeTrainer()
    m = RunMachine.create(cfg, services=Services(train=trainer, query=FakeQuery(), strategy=fake_strategy),
                          echo=lambda s: None)
    m.run(max_steps=2)
    assert trainer.specs[0].extension == "lpl" and trainer.specs[0].config.model.decoder_dropout == 0.3
    # The effective config is saved, so a resumed run trains the same model.
    assert load_config(tmp_path / "r" / "config.yaml").model.decoder_dropout == 0.3


def test_round0_is_trained_once_for_runs_that_would_train_it_identically(blob_pool, tmp_path):
    """Same pool, initial set, seed and training config: the second run adopts round 0 (its own
    copy); a different seed, a training extension or reuse_round0=false train it again."""
    trainer = FakeTrainer()
    services = Services(train=trainer, query=FakeQuery(), strategy=fake_strategy)

    def run(name, **over):
        cfg = small_cfg(blob_pool, tmp_path, name=name, **over)
        RunMachine.create(cfg, services=services, echo=lambda s: None).run()
        return tmp_path / name

    def round0_trainings():
        return sum(s.name == "round-000" for s in trainer.specs)

    a = run("a")
    b = run("b", **{"strategy.name": "other"})
    assert round0_trainings() == 1
    res_a = json.loads((a / "rounds" / "000" / "train.json").read_text())
    res_b = json.loads((b / "rounds" / "000" / "train.json").read_text())
    assert res_b["checkpoint"].startswith(str(b)) and Path(res_b["checkpoint"], "state.json").is_file()
    assert {k: v for k, v in res_a.items() if k != "checkpoint"} == {k: v for k, v in res_b.items() if k != "checkpoint"}
    assert json.loads(Path(res_b["checkpoint"], "state.json").read_text())["train_ids"] == labelled_of(a)[:3]
    # Round 1 of b continues from its own copy; its metrics hold round 0's epochs like a's.
    assert trainer.specs[-2].init_checkpoint.startswith(str(b))
    assert [m for m in read_jsonl(RunPaths(b).metrics) if m["round"] == 0 and m["kind"] == "epoch"] == \
        [m for m in read_jsonl(RunPaths(a).metrics) if m["round"] == 0 and m["kind"] == "epoch"]

    run("c", seed=1)
    assert round0_trainings() == 2
    run("d", **{"strategy.params": "{extension: lpl}"})
    assert round0_trainings() == 3
    run("e", reuse_round0="false")
    assert round0_trainings() == 4
    run("f", **{"scaling.score_batch_size": 7, "strategy.name": "third"})  # query-only settings: shared
    assert round0_trainings() == 4
    run("g", **{"budget.max_ratio": 0.6, "budget.rounds": 3})  # another budget, the same initial set: shared
    assert round0_trainings() == 4
    run("h", **{"budget.init_ratio": 0.2})  # another initial set: trained again
    assert round0_trainings() == 5

"""A real run on phantoms (Ray Train rounds, query engine, evaluation task) with held-out test
patients: the final model is judged on them into RUN/test.json; `paal evaluate RUN` agrees."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from paal_ray.atomic import read_jsonl
from paal_ray.cli.main import app
from paal_ray.evaluation.report import table

pytestmark = pytest.mark.slow


def test_run_with_held_out_patients_writes_test_json(ray_session, phantom_pool, tmp_path):
    # 10 phantom patients, 2 held out; fold 0 of the 8 left validates on 2: 96 training slices,
    # init 4, one round of 10; one epoch a round.
    sets = [f"pool={phantom_pool}", f"workspace={tmp_path}", "name=run", "strategy.name=random",
            "test.holdout_patients=2", "budget.init_ratio=0.05", "budget.max_ratio=0.15", "budget.rounds=1",
            "schedule.max_epochs_per_round=1", "schedule.max_final_epochs=1", "train.samples_per_epoch=16",
            "train.batch_size=8", "train.augment.enabled=false", "ray.num_cpus=4"]
    runner = CliRunner()
    res = runner.invoke(app, ["run", "cpu", *[a for s in sets for a in ("--set", s)]])
    assert res.exit_code == 0, res.output
    root = tmp_path / "run"
    assert "[test] Dice" in res.output
    split = json.loads((root / "split.json").read_text())
    test = json.loads((root / "test.json").read_text())
    assert len(test["patients"]) == 2 and test["patients"] == split["test"]["patients"]
    assert test["num_slices"] == 32 and test["num_volumes"] == 2 and test["image_size"] == [64, 64]
    assert not {s.split("/")[0] for s in split["train_ids"] + split["val_ids"]} & set(split["test"]["slice_ids"])
    assert 0 <= test["dice"] <= 1 and len(test["dice_per_class"]) == 4
    assert sorted(test["classes"]) == sorted(test["class_names"][1:]) and len(test["classes"]) == 3
    final = [m for m in read_jsonl(root / "metrics.jsonl") if m["kind"] == "final"][-1]
    assert test["checkpoint"] == final["checkpoint"]
    rec = [m for m in read_jsonl(root / "metrics.jsonl") if m["kind"] == "test"]
    assert len(rec) == 1 and rec[0]["dice"] == test["dice"]
    assert json.loads((root / "state.json").read_text())["phase"] == "done"
    res = runner.invoke(app, ["status", str(root)])
    assert res.exit_code == 0 and f"test       Dice {test['dice']:.4f}" in res.output
    # The same model on the same test set from the CLI: the same figures.
    # test.json lists classes alphabetically (sorted keys); the table keeps the pool's order.
    rows = [line.split()[0] for line in table(test).splitlines() if line.split()[:1] and line.split()[0] in test["classes"]]
    assert rows == test["class_names"][1:]
    res = runner.invoke(app, ["evaluate", str(root), "--json"])
    assert res.exit_code == 0, res.output
    again = json.loads(res.stdout[res.stdout.index("{"):])
    assert again["dice_per_class"] == pytest.approx(test["dice_per_class"])
    assert again["volume_dice"] == pytest.approx(test["volume_dice"])
    assert again["hd95"]["n"] == test["hd95"]["n"]

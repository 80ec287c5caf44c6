"""Patient-level folds, the initial set, `paal status`, cross-validation (fake trainer/query)."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
from fakes import fake_services, small_cfg
from typer.testing import CliRunner

from paal_ray.cli.main import app
from paal_ray.runs.cv import run_folds
from paal_ray.runs.machine import RunMachine
from paal_ray.runs.report import status_text
from paal_ray.runs.splits import SplitError, initial_set, patient_fold_split


def _index(patients: dict[str, int]) -> pa.Table:
    ids, pats = [], []
    for p, n in patients.items():
        for z in range(n):
            ids.append(f"{p}-vol/{z:04d}")
            pats.append(p)
    return pa.table({"slice_id": ids, "patient_id": pats})


def test_folds_are_contiguous_fifths_of_sorted_patients():
    idx = _index({f"p{i:02d}": 2 for i in range(11, 0, -1)})  # unsorted on purpose
    folds = [patient_fold_split(idx, k, 5) for k in range(5)]
    assert [f.val_patients for f in folds] == [["p01", "p02", "p03"], ["p04", "p05"], ["p06", "p07"],
                                               ["p08", "p09"], ["p10", "p11"]]
    for f in folds:
        assert not set(f.train_ids) & set(f.val_ids) and len(f.train_ids) + len(f.val_ids) == 22
    assert sorted(sum((f.val_ids for f in folds), [])) == sorted(idx.column("slice_id").to_pylist())


def test_split_errors_name_the_setting():
    with pytest.raises(SplitError, match="fewer than cv.num_folds=5"):
        patient_fold_split(_index({"a": 3, "b": 3}), 0, 5)
    with pytest.raises(SplitError, match="cv.fold=5 is outside 0..4"):
        patient_fold_split(_index({f"p{i}": 1 for i in range(5)}), 5, 5)


def test_initial_set_is_seeded():
    ids = [f"c/{i:04d}" for i in range(100)]
    assert initial_set(ids, 5, 1) == initial_set(list(reversed(ids)), 5, 1)
    assert initial_set(ids, 5, 1) != initial_set(ids, 5, 2)
    assert len(set(initial_set(ids, 50, 3))) == 50


def test_status_shows_rounds_and_writes_the_curve(blob_pool, tmp_path):
    RunMachine.create(small_cfg(blob_pool, tmp_path), services=fake_services(), echo=lambda s: None).run(max_steps=5)
    text = status_text(tmp_path / "r")
    assert "phase      train   round 1/2" in text and "labelled   9 / 15" in text
    row = [ln for ln in text.splitlines() if ln.split()[:2] == ["0", "3"]]
    assert len(row) == 1 and "0.2600" in row[0]  # fake Dice 0.2 + 0.02 x 3 labelled
    res = CliRunner().invoke(app, ["status", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    assert "labelled   9 / 15" in res.output
    png = tmp_path / "r" / "learning_curve.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_errors_are_one_clear_line(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["status", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "state.json: missing" in res.output
    res = runner.invoke(app, ["run", "--resume", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "config.yaml: missing" in res.output
    res = runner.invoke(app, ["run", "cpu", "--resume", str(tmp_path)])
    assert res.exit_code == 2 and "drop CONFIG" in res.output
    res = runner.invoke(app, ["run", "cpu", "--set", "pool=/does/not/exist"])
    assert res.exit_code == 2 and "/does/not/exist: no such pool folder" in res.output


def test_cross_validation_reports_mean_and_std(blob_pool, tmp_path):
    cfg = small_cfg(blob_pool, tmp_path, **{"budget.max_ratio": 0.3})
    lines: list[str] = []
    summary = run_folds(cfg, tmp_path / "cv", 3, services=fake_services(), echo=lines.append)
    assert summary["status"] == "done" and [r["fold"] for r in summary["results"]] == [0, 1, 2]
    splits = [json.loads((tmp_path / "cv" / f"fold-{k}" / "split.json").read_text()) for k in range(3)]
    assert [s["fold"] for s in splits] == [0, 1, 2]
    assert [s["val_patients"] for s in splits] == [["case000", "case001"], ["case002", "case003"],
                                                   ["case004", "case005"]]
    dice = [r["final_dice"] for r in summary["results"]]
    assert summary["mean_dice"] == pytest.approx(sum(dice) / 3)
    assert "cross-validation (3 folds)" in lines[-1]
    assert json.loads((tmp_path / "cv" / "cv.json").read_text())["std_dice"] == pytest.approx(summary["std_dice"])

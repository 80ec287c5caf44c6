"""A run's held-out test set: which patients, that they never enter training, validation or
selection, and the `test` step after the final phase (fake trainer, query and evaluation)."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
from fakes import fake_services, small_cfg
from typer.testing import CliRunner

from paal_ray.atomic import read_jsonl
from paal_ray.cli.main import app
from paal_ray.config import ConfigError, load_config
from paal_ray.evaluation.predict import EvaluationError
from paal_ray.runs.machine import RunMachine
from paal_ray.runs.splits import SplitError, hold_out_test_patients
from paal_ray.runs.state import RunPaths, RunState


class FakeEvaluate:
    """Stands in for the Ray evaluation task: records requests, returns fixed metrics."""

    def __init__(self, fail_first: bool = False):
        self.requests = []
        self.fail_first = fail_first

    def __call__(self, req):
        self.requests.append(req)
        if self.fail_first and len(self.requests) == 1:
            raise RuntimeError("evaluation task died")
        return {"class_names": ["background", "c1", "c2"], "num_volumes": 1, "num_slices": len(req.slice_ids),
                "dice": 0.7, "dice_per_class": [0.99, 0.6, 0.8], "volume_dice": {"mean": 0.65, "std": 0.05, "n": 1},
                "hd95": {"mean": 2.5, "std": 0.0, "n": 1}, "classes": {}, "volumes": [], "hd95_unit": "voxels"}


def _index(n_patients: int, slices: int = 2) -> pa.Table:
    ids = [f"p{p:02d}/{z:04d}" for p in range(n_patients) for z in range(slices)]
    return pa.table({"slice_id": ids, "patient_id": [s.split("/")[0] for s in ids]})


def test_holdout_is_seeded_by_test_seed_alone_and_leaves_enough_patients():
    idx = _index(10)
    a = hold_out_test_patients(idx, 3, seed=0)
    assert a.test_patients == hold_out_test_patients(idx, 3, seed=0).test_patients
    assert len(a.test_patients) == 3 and a.test_ids == sorted(f"{p}/{z:04d}" for p in a.test_patients for z in (0, 1))
    assert not set(a.test_patients) & set(a.rest.column("patient_id").to_pylist()) and a.rest.num_rows == 14
    others = {tuple(hold_out_test_patients(idx, 3, seed=s).test_patients) for s in range(1, 6)}
    assert len(others | {tuple(a.test_patients)}) > 1  # the seed chooses
    with pytest.raises(SplitError, match="test.holdout_patients=6 leaves 4 of the pool's 10 patients, fewer than the 5"):
        hold_out_test_patients(idx, 6, seed=0, min_left=5)


def test_pool_and_holdout_together_are_refused(blob_pool):
    with pytest.raises(ConfigError, match="both set: a run has one test set"):
        load_config("cpu", [f"pool={blob_pool}", "test.holdout_patients=1", f"test.pool={blob_pool}"])


def _run(blob_pool, ws, evaluate=None, **over):
    services = fake_services()
    services.evaluate = evaluate or FakeEvaluate()
    m = RunMachine.create(small_cfg(blob_pool, ws, **over), services=services, echo=lambda s: None)
    return m, services


@pytest.mark.parametrize("seed,fold", [(0, 0), (1, 0), (0, 3)])
def test_held_out_patients_never_train_validate_or_get_selected(blob_pool, tmp_path, seed, fold):
    m, services = _run(blob_pool, tmp_path, **{"test.holdout_patients": 1, "seed": seed, "cv.fold": fold})
    assert m.run().status == "done"
    root = tmp_path / "r"
    split = json.loads((root / "split.json").read_text())
    test = split["test"]
    # The same patient for every run seed and fold of the config (test.seed = 0).
    assert test["source"] == "holdout" and test["patients"] == ["case005"] and test["test_seed"] == 0
    assert test["slice_ids"] == [f"case005/{z:04d}" for z in range(8)]
    held = set(test["slice_ids"])
    assert not held & set(split["train_ids"]) and not held & set(split["val_ids"])
    for spec in services.train.specs:
        assert not held & set(spec.train_ids) and not held & set(spec.val_ids)
    for req in services.query.requests:
        assert not held & set(req.unlabelled_ids) and not held & set(req.labelled_ids)
    # 5 patients left: fold 0/5 validates on one, trains on 4 (32 slices) as without a test set.
    assert m.state.n_train == 32 and len(split["val_ids"]) == 8


def test_test_step_writes_test_json_once_and_status_shows_it(blob_pool, tmp_path):
    evaluate = FakeEvaluate(fail_first=True)
    m, services = _run(blob_pool, tmp_path, evaluate=evaluate, **{"test.holdout_patients": 1})
    root = tmp_path / "r"
    with pytest.raises(RuntimeError, match="evaluation task died"):
        m.run()
    assert RunState.load(RunPaths(root)).phase == "test" and not (root / "test.json").exists()
    m2 = RunMachine.open(root, services=services, echo=lambda s: None)
    assert m2.run().status == "done"
    final = [r for r in read_jsonl(root / "metrics.jsonl") if r["kind"] == "final"][-1]
    test = json.loads((root / "test.json").read_text())
    assert test["checkpoint"] == final["checkpoint"] == evaluate.requests[-1].checkpoint
    assert test["format"] == 1 and test["source"] == "holdout" and test["dice"] == 0.7
    assert test["patients"] == json.loads((root / "split.json").read_text())["test"]["patients"]
    assert evaluate.requests[-1].slice_ids == json.loads((root / "split.json").read_text())["test"]["slice_ids"]
    assert test["val_dice"] == final["val_dice"]
    records = [r for r in read_jsonl(root / "metrics.jsonl") if r["kind"] == "test"]
    assert len(records) == 1 and records[0]["dice"] == 0.7 and records[0]["volume_dice"] == 0.65
    # Done is done: opening again evaluates nothing more.
    RunMachine.open(root, services=services, echo=lambda s: None).run()
    assert len(evaluate.requests) == 2
    res = CliRunner().invoke(app, ["status", str(root)])
    assert res.exit_code == 0 and "test       Dice 0.7000 (per volume 0.6500 ± 0.0500), HD95 2.50" in res.output


def test_no_test_set_goes_from_final_to_done(blob_pool, tmp_path):
    evaluate = FakeEvaluate()
    m, _ = _run(blob_pool, tmp_path, evaluate=evaluate)
    assert m.run().status == "done"
    assert evaluate.requests == [] and not (tmp_path / "r" / "test.json").exists()
    assert "test" not in json.loads((tmp_path / "r" / "split.json").read_text())


def test_separate_test_pool(blob_pool, tmp_path):
    from pool_builders import make_blob_pool

    other = make_blob_pool(tmp_path / "other", cases=2, seed=5)
    said = []
    services = fake_services()
    services.evaluate = FakeEvaluate()
    m = RunMachine.create(small_cfg(blob_pool, tmp_path, **{"test.pool": other}), services=services, echo=said.append)
    assert m.run().status == "done"
    test = json.loads((tmp_path / "r" / "split.json").read_text())["test"]
    assert test["source"] == "pool" and test["pool"] == str(other) and test["patients"] == ["case000", "case001"]
    assert len(test["slice_ids"]) == 16 and services.evaluate.requests[0].pool_path == str(other)
    assert m.state.n_train == 32  # the run's own pool is untouched
    assert any("shares patient ids with the run's pool" in s for s in said)  # the blob pools reuse case ids

    with pytest.raises(EvaluationError, match="test.pool is the run's own pool"):
        RunMachine.create(small_cfg(blob_pool, tmp_path, name="same", **{"test.pool": blob_pool}),
                          services=services, echo=lambda s: None).run()
    four = make_blob_pool(tmp_path / "four", cases=2, num_classes=4)
    with pytest.raises(EvaluationError, match="classes"):
        RunMachine.create(small_cfg(blob_pool, tmp_path, name="four", **{"test.pool": four}),
                          services=services, echo=lambda s: None).run()

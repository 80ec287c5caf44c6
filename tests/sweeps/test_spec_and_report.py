"""Sweep files (reading, expanding, refusing) and the comparison report, on run folders made by the
real state machine with fake training and queries (milliseconds, no Ray)."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
import yaml
from fakes import fake_services
from pool_builders import make_blob_pool

from paal_ray.config import ConfigError
from paal_ray.sweeps.report import write_report
from paal_ray.sweeps.spec import TRIALS_FILE, expand, load_sweep, trial_name


def _write(path, data):
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture()
def pool(tmp_path):
    return make_blob_pool(tmp_path / "pool")


def _spec(tmp_path, pool, **over):
    data = {"name": "sw", "base": "cpu",
            "set": [f"pool={pool}", f"workspace={tmp_path / 'ws'}", "budget.init_ratio=0.1", "budget.max_ratio=0.5"],
            "grid": {"strategy.name": ["paal", "random"], "seed": [0, 1]}}
    data.update(over)
    return _write(tmp_path / "sweep.yaml", data)


def test_expand_makes_one_validated_config_per_combination(tmp_path, pool):
    trials = expand(load_sweep(_spec(tmp_path, pool), ["budget.rounds=3"]))
    assert [t.name for t in trials] == ["name-paal_seed-0", "name-paal_seed-1", "name-random_seed-0",
                                        "name-random_seed-1"]
    t = trials[3]
    assert (t.config.strategy.name, t.config.seed, t.config.budget.rounds) == ("random", 1, 3)
    assert t.config.workspace == str((tmp_path / "ws" / "sw").absolute()) and t.config.name == t.name
    assert t.values == {"strategy.name": "random", "seed": 1}
    folds = expand(load_sweep(_spec(tmp_path, pool, grid={"cv.fold": [0, 1]})))
    assert [(t.name, t.config.cv.fold) for t in folds] == [("fold-0", 0), ("fold-1", 1)]
    assert load_sweep(_spec(tmp_path, pool)).replicates == ["seed", "cv.fold"]  # the config's own keys


def test_trial_names_are_safe_folder_names():
    assert trial_name({"budget.max_ratio": 0.1, "strategy.params": {"a": 1}}) == "max_ratio-0.1_params-a1"


@pytest.mark.parametrize(("over", "message"), [
    ({"grid": {"seed": []}}, "invalid sweep\n  grid: Value error, grid.seed: give a non-empty list"),
    ({"grid": {"name": ["a"]}}, "set by the sweep itself"),
    ({"grid": {}}, "give at least one key to vary"),
    ({"grid": {"budget.rouns": [2]}}, "(?s)trial rouns-2: .*budget.rouns: Extra inputs are not permitted"),
    ({"grid": {"budget.rounds": [0]}}, "(?s)trial rounds-0: .*budget.rounds: Input should be greater than or equal to 1"),
    ({"grid": {"oracle.kind": ["human"]}}, "oracle.kind must be 'simulated'"),
    ({"max_concurrent": 0}, "max_concurrent: Input should be greater than or equal to 1"),
    ({"grid": {"seed": [1, "1"]}}, "two grid combinations give the trial name 'seed-1'"),
])
def test_bad_sweeps_are_refused_naming_the_field(tmp_path, pool, over, message):
    with pytest.raises(ConfigError, match=message):
        expand(load_sweep(_spec(tmp_path, pool, **over)))


def test_missing_or_broken_sweep_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: no such sweep file"):
        load_sweep(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("grid: [unclosed")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_sweep(tmp_path / "bad.yaml")


def _fake_sweep(tmp_path, pool):
    """Four finished runs (2 strategies x 2 seeds) made by the real RunMachine with fakes, and the
    sweep's trials.json as run_sweep writes it."""
    from paal_ray.runs.machine import RunMachine

    spec = load_sweep(_spec(tmp_path, pool))
    trials = expand(spec)
    root = tmp_path / "ws" / "sw"
    for t in trials:
        # FakeTrainer's Dice depends on the labelled count only: make random's lower so groups differ.
        services = fake_services()
        if t.values["strategy.name"] == "random":
            real = services.train
            services.train = lambda s, real=real, seed=t.values["seed"]: _scaled(real(s), 0.5 + 0.1 * seed)
        RunMachine.create(t.config, services=services, echo=lambda m: None).run()
    (root / TRIALS_FILE).write_text(json.dumps({t.name: t.values for t in trials}))
    return root


def _scaled(result, f):
    for e in result.epochs:
        e["val_dice"] *= f
    result.best_score *= f
    return result


def test_report_groups_replicates_and_writes_table_csv_and_curves(tmp_path, pool):
    root = _fake_sweep(tmp_path, pool)
    (root / "stray").mkdir()  # not a run: ignored
    md = write_report(root).read_text()
    rows = list(csv.DictReader((root / "report.csv").open()))
    assert {r["setting"] for r in rows} == {"paal", "random"}
    assert (root / "curves.png").read_bytes()[:4] == b"\x89PNG"
    finals = {}
    for r in rows:
        if r["round"] == "final":
            finals.setdefault(r["setting"], []).append(float(r["val_dice"]))
    assert len(finals["paal"]) == 2 and len(finals["random"]) == 2
    m, s = np.mean(finals["random"]), np.std(finals["random"], ddof=1)
    assert s > 0  # the two seeds differ, and the table shows their mean +- std over 2 runs
    assert f"| random | 46.9% | {m:.4f} ± {s:.4f} (2) |" in md
    assert f"| paal | 46.9% | {np.mean(finals['paal']):.4f} ± 0.0000 (2) |" in md
    assert "| paal | 0 | 3 |" in md  # Dice by round: round 0 trained on 3 labelled slices
    tables = md.split("## Validation and held-out test Dice")[0]  # the evidence sections follow
    assert tables.count("| random | ") == 1 + 3  # one final row, rounds 0, 1 and final
    assert "## Paired differences against random" in md


def test_report_on_a_plain_runs_folder_groups_by_strategy(tmp_path, pool):
    root = _fake_sweep(tmp_path, pool)
    (root / TRIALS_FILE).unlink()
    md = write_report(root).read_text()  # no trials.json: grouped by each run's strategy, seeds averaged
    assert re.search(r"\| paal \| 46.9% \| [0-9.]+ ± 0.0000 \(2\) \|", md)
    assert re.search(r"\| random \| 46.9% \| [0-9.]+ ± [0-9.]+ \(2\) \|", md)
    with pytest.raises(FileNotFoundError, match="no run folders"):
        write_report(tmp_path / "pool")


def test_unknown_strategies_are_refused_before_anything_starts(tmp_path, pool):
    with pytest.raises(ConfigError, match="trial name-nope: strategy: unknown strategy 'nope'; available: "):
        expand(load_sweep(_spec(tmp_path, pool, grid={"strategy.name": ["paal", "nope"]})))

"""The paper's protocol (issue 11): each strategy's default query schedule, T from the budget table,
the full-data reference, and CEAL's pseudo-label count in the round metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from fakes import FakeQuery, FakeTrainer, fake_services, small_cfg

from paal_ray.atomic import read_jsonl
from paal_ray.config import ConfigError, load_config
from paal_ray.query import strategies
from paal_ray.query.api import QueryResult
from paal_ray.runs.machine import RunMachine, Services, effective_config

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name,mode", [("paal", "iq"), ("paal_ap_only", "iq"), ("random", "fixed"),
                                       ("max_entropy", "fixed"), ("coreset", "fixed"), ("badge", "fixed"),
                                       ("ceal", "fixed"), ("lpl", "fixed"), ("mc_dropout", "fixed")])
def test_each_strategy_gets_the_papers_schedule_unless_the_config_says_otherwise(name, mode):
    cfg = load_config("acdc", ["pool=/p", f"strategy.name={name}"])
    assert cfg.schedule.mode is None
    assert effective_config(cfg, strategies.get(name)).schedule.mode == mode
    other = {"iq": "fixed", "fixed": "iq"}[mode]
    forced = load_config("acdc", ["pool=/p", f"strategy.name={name}", f"schedule.mode={other}"])
    assert effective_config(forced, strategies.get(name)).schedule.mode == other


def test_the_run_records_the_schedule_it_used(blob_pool, tmp_path):
    cfg = small_cfg(blob_pool, tmp_path, **{"strategy.name": "random"})
    services = Services(train=FakeTrainer(), query=FakeQuery(), strategy=strategies.get)
    m = RunMachine.create(cfg, services=services, echo=lambda s: None)
    assert yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())["schedule"]["mode"] == "fixed"
    m.run()
    assert all(s.config.schedule.mode == "fixed" for s in services.train.specs)
    resumed = RunMachine.open(tmp_path / "r", services=services, echo=lambda s: None)
    assert resumed.cfg.schedule.mode == "fixed"


@pytest.mark.parametrize("preset,ratio,rounds", [("acdc", 0.1, 5), ("acdc", 0.2, 15), ("acdc", 0.5, 20),
                                                 ("segthor", 0.2, 15), ("brain_tumour", 0.05, 10),
                                                 ("brain_tumour", 0.1, 15), ("brain_tumour", 0.2, 15),
                                                 ("acdc-cpu", 0.1, 5), ("acdc-cpu", 0.2, 15)])
def test_the_number_of_queries_follows_the_budget_as_in_the_paper(preset, ratio, rounds):
    assert load_config(preset, ["pool=/p", f"budget.max_ratio={ratio}"]).budget.rounds == rounds
    # an explicit T wins, in either order of the overrides
    assert load_config(preset, ["pool=/p", "budget.rounds=3", f"budget.max_ratio={ratio}"]).budget.rounds == 3


def test_a_budget_outside_the_table_asks_for_rounds():
    with pytest.raises(ConfigError, match=r"budget.max_ratio=0.3 is not in budget.rounds_by_ratio.*set budget.rounds"):
        load_config("acdc", ["pool=/p", "budget.max_ratio=0.3"])


def test_a_sweep_over_budgets_gets_the_matching_rounds(blob_pool, tmp_path):
    from paal_ray.sweeps.spec import expand, load_sweep

    f = tmp_path / "s.yaml"
    f.write_text(f"name: s\nbase: acdc\nset: [pool={blob_pool}, workspace={tmp_path}]\n"
                 "grid: {budget.max_ratio: [0.1, 0.2, 0.5]}\n")
    assert [t.config.budget.rounds for t in expand(load_sweep(f))] == [5, 15, 20]


def test_full_data_trains_the_final_phase_on_every_training_slice(blob_pool, tmp_path):
    cfg = small_cfg(blob_pool, tmp_path, **{"budget.full_data": "true"})
    services = fake_services()
    out = RunMachine.create(cfg, services=services, echo=lambda s: None).run()
    assert out.status == "done"
    root = tmp_path / "r"
    split = json.loads((root / "split.json").read_text())
    state = json.loads((root / "state.json").read_text())
    assert state["rounds"] == 0 and state["strategy"] == "full" and state["labeled_count"] == len(split["train_ids"])
    assert [s.phase for s in services.train.specs] == ["final"]
    assert sorted(services.train.specs[0].train_ids) == sorted(split["train_ids"])
    assert not set(split["val_ids"]) & set(services.train.specs[0].train_ids)
    assert services.query.requests == []
    assert [m["kind"] for m in read_jsonl(root / "metrics.jsonl") if m["kind"] != "epoch"] == ["final"]


def test_final_phase_from_scratch_starts_every_strategy_from_the_same_point(blob_pool, tmp_path):
    seeds = {}
    for name in ("a", "b"):
        cfg = small_cfg(blob_pool, tmp_path, name=name, **{"strategy.name": name, "schedule.final_epochs": 3,
                                                           "schedule.final_init": "scratch", "reuse_round0": "false"})
        services = fake_services()
        RunMachine.create(cfg, services=services, echo=lambda s: None).run()
        final = services.train.specs[-1]
        assert final.phase == "final" and final.init_checkpoint is None  # fresh weights, not the last round's
        assert services.train.specs[1].init_checkpoint is not None
        seeds[name] = final.seed
    assert seeds["a"] == seeds["b"]
    rec = [m for m in read_jsonl(tmp_path / "b" / "metrics.jsonl") if m["kind"] == "final"][0]
    assert rec["final_model"] == "last" and rec["checkpoint"].endswith("checkpoint")


def test_scratch_final_needs_a_fixed_length():
    with pytest.raises(ConfigError, match="final_init=scratch needs schedule.final_epochs"):
        load_config("acdc", ["pool=/p", "schedule.final_init=scratch"])


def test_ceal_pseudo_label_count_is_logged_each_round(blob_pool, tmp_path):
    class PseudoQuery(FakeQuery):
        def __call__(self, req):
            res = super().__call__(req)
            chosen = set(res.slice_ids)
            pseudo = [s for s in sorted(req.unlabelled_ids) if s not in chosen][:4]
            return QueryResult(slice_ids=res.slice_ids, table_path=res.table_path, timings=res.timings,
                               pseudo_ids=pseudo)

    cfg = small_cfg(blob_pool, tmp_path)
    services = Services(train=FakeTrainer(), query=PseudoQuery(), strategy=fake_services().strategy)
    RunMachine.create(cfg, services=services, echo=lambda s: None).run()
    rounds = [m for m in read_jsonl(tmp_path / "r" / "metrics.jsonl") if m["kind"] == "round"]
    assert [m["pseudo_labelled"] for m in rounds] == [4, 4]
    assert len(services.train.specs[1].pseudo_ids) == 4  # and the next round trains on them


def test_the_acdc_comparison_sweeps_pair_every_strategy_on_each_fold(blob_pool, tmp_path):
    from paal_ray.sweeps.spec import expand, load_sweep

    sets = [f"pool={blob_pool}", f"workspace={tmp_path}"]  # the sweeps' preflight reads the pool
    trials = expand(load_sweep(REPO / "jobs/sweeps/acdc-comparison.yaml", sets))
    assert [(t.values["cv.fold"], t.config.strategy.name) for t in trials[:2]] == [(0, "paal"), (0, "random")]
    ablation = expand(load_sweep(REPO / "jobs/sweeps/acdc-ablation.yaml", sets))
    assert [(t.values["cv.fold"], t.config.strategy.name) for t in ablation[:2]] == [(0, "max_entropy"), (0, "paal_ap_only")]
    assert [t.config.model_dump(exclude={"strategy", "name", "workspace"}) for t in ablation] == [
        t.config.model_dump(exclude={"strategy", "name", "workspace"}) for t in trials]  # the same folds, budget, test set
    trials += ablation
    assert len(trials) == 12 and {t.config.budget.rounds for t in trials} == {5}
    assert all(t.config.test.holdout_patients == 20 and t.config.seed == 0 for t in trials)
    assert {t.config.schedule.final_init for t in trials} == {"scratch"}
    full = expand(load_sweep(REPO / "jobs/sweeps/acdc-full.yaml", sets))
    assert [t.values["cv.fold"] for t in full] == [0, 1, 2] and all(t.config.budget.full_data for t in full)
    assert full[0].config.schedule == trials[0].config.schedule  # the same final phase as the strategies
    # Folds 3 and 4 of the pair (acdc-comparison-more): the same protocol, only the fold differs.
    more = expand(load_sweep(REPO / "jobs/sweeps/acdc-comparison-more.yaml", sets))
    assert [(t.values["cv.fold"], t.config.strategy.name) for t in more] == [
        (3, "paal"), (3, "random"), (4, "paal"), (4, "random")]
    assert [t.config.model_dump(exclude={"name", "workspace", "cv"}) for t in more] == [
        t.config.model_dump(exclude={"name", "workspace", "cv"}) for t in trials[:4]]
    assert {t.config.cv.num_folds for t in more} == {5}
    # The query-phase-lr comparison (acdc-comparison-qlr): acdc-comparison's first six trials, the
    # query rounds' peak lr alone changed (the final phase keeps its own lr).
    qlr = expand(load_sweep(REPO / "jobs/sweeps/acdc-comparison-qlr.yaml", sets))
    assert [t.config.train.lr for t in qlr] == [0.01] * 6 and {t.config.schedule.final_lr for t in qlr} == {0.003}
    assert [t.config.model_dump(exclude={"name", "workspace"}) for t in qlr] == [
        t.config.model_copy(update={"train": t.config.train.model_copy(update={"lr": 0.01})}).model_dump(
            exclude={"name", "workspace"}) for t in trials[:6]]
    # Its folds 3 and 4 (acdc-comparison-qlr-more): the same protocol, only the fold differs.
    qmore = expand(load_sweep(REPO / "jobs/sweeps/acdc-comparison-qlr-more.yaml", sets))
    assert [(t.values["cv.fold"], t.config.strategy.name) for t in qmore] == [
        (3, "paal"), (3, "random"), (4, "paal"), (4, "random")]
    assert [t.config.model_dump(exclude={"name", "workspace", "cv"}) for t in qmore] == [
        t.config.model_dump(exclude={"name", "workspace", "cv"}) for t in qlr[:4]]
    assert [t.config.cv for t in qmore] == [t.config.cv for t in more]
    # The ablation on that protocol (acdc-ablation-qlr): acdc-ablation's trials, the same lr change.
    aqlr = expand(load_sweep(REPO / "jobs/sweeps/acdc-ablation-qlr.yaml", sets))
    assert [t.config.model_dump(exclude={"name", "workspace"}) for t in aqlr] == [
        t.config.model_copy(update={"train": t.config.train.model_copy(update={"lr": 0.01})}).model_dump(
            exclude={"name", "workspace"}) for t in ablation]
    # The AP-on-validation variant (acdc-variant-apval): fold for fold acdc-comparison-qlr's PAAL run,
    # with only train.ap_target changed, so each fold pairs with PAAL and random there.
    apval = expand(load_sweep(REPO / "jobs/sweeps/acdc-variant-apval.yaml", sets))
    paal = [t for t in qlr if t.config.strategy.name == "paal"]
    assert [t.values["cv.fold"] for t in apval] == [0, 1, 2] and {t.config.train.ap_target for t in apval} == {"validation"}
    assert [t.config.model_dump(exclude={"name", "workspace", "train"}) for t in apval] == [
        t.config.model_dump(exclude={"name", "workspace", "train"}) for t in paal]
    assert [t.config.train.model_copy(update={"ap_target": "labelled"}) for t in apval] == [t.config.train for t in paal]

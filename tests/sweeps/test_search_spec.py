"""Search sweeps without Ray Train: reading and refusing `search:`, the metrics, what a trial
declares and how many fit, the per-combination Optuna searcher, and the search report on run
folders made by the real state machine with fake training (milliseconds)."""

from __future__ import annotations

import json

import pytest
import yaml
from fakes import fake_services
from pool_builders import make_blob_pool

from paal_ray.config import ConfigError
from paal_ray.runs.report import status_text
from paal_ray.sweeps.spec import expand, load_sweep, search_metric, trial_config


@pytest.fixture()
def pool(tmp_path):
    return make_blob_pool(tmp_path / "pool")


def _spec(tmp_path, pool, **over):
    data = {"name": "sr", "base": "cpu",
            "set": [f"pool={pool}", f"workspace={tmp_path / 'ws'}", "budget.init_ratio=0.1", "budget.max_ratio=0.5"],
            "search": {"space": {"train.lr": {"loguniform": [1.0e-4, 1.0e-2]},
                                 "schedule.iq_patience": {"randint": [2, 6]},
                                 "strategy.params.n_init": {"choice": [1, 10]}},
                       "num_samples": 3, "metric": "auc", "asha": {"grace_period": 1}}}
    data.update(over)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return tmp_path / "s.yaml"


def test_a_search_without_grid_is_one_combination_and_sampled_values_make_the_trial_config(tmp_path, pool):
    spec = load_sweep(_spec(tmp_path, pool))
    (point,) = expand(spec)
    assert point.name == "" and spec.search.sampled() and spec.search.asha.reduction_factor == 2
    cfg = trial_config(point.config.model_dump(mode="json"), "t003",
                       {"train.lr": 0.002, "schedule.iq_patience": 4, "strategy.params.n_init": 1})
    assert (cfg.name, cfg.train.lr, cfg.schedule.iq_patience, cfg.strategy.params) == ("t003", 0.002, 4, {"n_init": 1})
    assert cfg.workspace == str((tmp_path / "ws" / "sr").absolute())
    grid = expand(load_sweep(_spec(tmp_path, pool, grid={"strategy.name": ["paal", "random"]},
                                   search={"space": {"train.lr": {"uniform": [1e-4, 1e-3]}}})))
    assert [t.name for t in grid] == ["name-paal", "name-random"]


@pytest.mark.parametrize(("space", "message"), [
    ({"train.lr": {"normal": [0, 1]}}, "search.space.train.lr: unknown distribution 'normal'"),
    ({"train.lr": {"loguniform": [0, 1]}}, "loguniform: low must be above 0"),
    ({"train.lr": {"uniform": [1, 0.5]}}, "low 1 must be below high 0.5"),
    ({"schedule.iq_patience": {"randint": [1.5, 4]}}, "randint: give integer bounds"),
    ({"train.lr": {"uniform": [1e-4, 1e-3], "loguniform": [1e-4, 1e-3]}}, "give one distribution"),
    ({"name": {"choice": ["a"]}}, "search.space.name: set by the sweep itself"),
    ({"train.lrr": {"uniform": [1e-4, 1e-3]}}, r"(?s)trial \(search\): .*train.lrr: Extra inputs are not permitted"),
    ({"schedule.iq_patience": {"choice": ["x"]}}, "(?s)schedule.iq_patience: Input should be a valid integer"),
    ({"strategy.params.nope": {"choice": [1]}}, "strategy: .*nope"),
])
def test_bad_search_spaces_are_refused_naming_the_key(tmp_path, pool, space, message):
    with pytest.raises(ConfigError, match=message):
        expand(load_sweep(_spec(tmp_path, pool, search={"space": space})))


def test_a_key_in_both_grid_and_search_and_an_unknown_metric_are_refused(tmp_path, pool):
    with pytest.raises(ConfigError, match="train.lr: in both grid and search.space"):
        load_sweep(_spec(tmp_path, pool, grid={"train.lr": [1e-3]}))
    with pytest.raises(ConfigError, match="search.metric: Input should be 'final', 'round' or 'auc'"):
        load_sweep(_spec(tmp_path, pool, search={"space": {"train.lr": {"uniform": [1e-4, 1e-3]}}, "metric": "dice"}))
    with pytest.raises(ConfigError, match="give at least one key to vary in grid or search.space"):
        load_sweep(_spec(tmp_path, pool, search={"num_samples": 2}))


def test_metrics_final_round_and_area_under_the_learning_curve():
    pts = [{"labeled_count": 10, "val_dice": 0.2}, {"labeled_count": 20, "val_dice": 0.6},
           {"labeled_count": 40, "val_dice": 0.6}]
    assert search_metric(pts, 100, "final") == 0.6
    assert search_metric(pts, 100, "round") == pytest.approx(1.4 / 3)
    # Trapezoids over labelled fraction 0.1 -> 0.2 -> 0.4, divided by the span 0.3: (0.04 + 0.12) / 0.3.
    assert search_metric(pts, 100, "auc") == pytest.approx(0.16 / 0.3)
    # Early Dice counts: the same end, reached later, scores lower.
    late = [{"labeled_count": 10, "val_dice": 0.2}, {"labeled_count": 20, "val_dice": 0.2}, pts[2]]
    assert search_metric(late, 100, "auc") < search_metric(pts, 100, "auc")
    assert search_metric(pts[:1], 100, "auc") == 0.2 and search_metric([], 100, "auc") is None


def test_a_trial_declares_its_peak_and_concurrency_is_capped_by_what_fits(tmp_path, pool):
    from paal_ray.sweeps.tuner import trial_footprint, trials_that_fit

    spec = load_sweep(_spec(tmp_path, pool, set=[f"pool={pool}", f"workspace={tmp_path}", "scaling.num_workers=2",
                                                 "scaling.cpus_per_worker=2", "scaling.score_actors=3"]))
    need = trial_footprint(expand(spec), spec.trial_cpus)
    assert need == {"CPU": 4.01, "GPU": 0.0}  # training's 2 x 2 CPUs outweigh 3 scoring actors' 3
    assert trials_that_fit(need, {"CPU": 16.0}) == 3 and trials_that_fit(need, {"CPU": 4.0}) == 0
    gpu = load_sweep(_spec(tmp_path, pool, set=[f"pool={pool}", f"workspace={tmp_path}", "scaling.use_gpu=true",
                                                "scaling.num_workers=2", "scaling.score_actors=4",
                                                "scaling.gpus_per_score_actor=0.25"]))
    need = trial_footprint(expand(gpu), gpu.trial_cpus)
    assert need == {"CPU": 4.01, "GPU": 2.0}
    assert trials_that_fit(need, {"CPU": 64.0, "GPU": 8.0}) == 4 and trials_that_fit(need, {"CPU": 64.0}) == 0


def test_trials_at_once_with_more_torch_threads_than_cpus_are_warned_about(tmp_path, pool):
    from paal_ray.sweeps.tuner import thread_warning

    base = [f"pool={pool}", f"workspace={tmp_path}"]
    two = expand(load_sweep(_spec(tmp_path, pool, set=[*base, "scaling.train_threads=2"])))
    warning = thread_warning(two, 2, 2.0)
    assert warning and "2 trials at a time with up to 2 torch thread(s) each (4 on 2 CPUs)" in warning
    assert thread_warning(two, 1, 2.0) is None  # alone on the machine: its threads are its own
    assert thread_warning(two, 2, 4.0) is None  # 4 threads on 4 CPUs
    one = expand(load_sweep(_spec(tmp_path, pool, set=base)))  # Ray's default: a thread per reserved CPU
    assert thread_warning(one, 2, 2.0) is None
    scoring = expand(load_sweep(_spec(tmp_path, pool, set=[*base, "scaling.score_threads=3"])))
    assert "up to 3 torch thread(s)" in thread_warning(scoring, 2, 4.0)


def test_optuna_searches_within_each_grid_combination_and_survives_a_restore(tmp_path):
    pytest.importorskip("optuna")
    from ray import tune

    from paal_ray.sweeps.tuner import PerCombinationSearcher

    points = [{"name": "name-paal", "strategy.name": "paal"}, {"name": "name-random", "strategy.name": "random"}]
    s = PerCombinationSearcher(points, num_samples=2, seed=0, metric="score")
    assert s.set_search_properties("score", "max", {"search": {"train.lr": tune.loguniform(1e-4, 1e-2)}})
    got = [s.suggest(f"id{i}") for i in range(4)]
    assert [g["trial"]["name"] for g in got] == ["name-paal", "name-paal", "name-random", "name-random"]
    assert all(1e-4 <= g["search"]["train.lr"] <= 1e-2 for g in got)
    s.on_trial_complete("id0", {"score": 0.5, "training_iteration": 1})
    s.save(str(tmp_path / "searcher.pkl"))
    again = PerCombinationSearcher(points, num_samples=2, seed=0, metric="score")
    again.restore(str(tmp_path / "searcher.pkl"))
    assert again.suggest("id4") == again.FINISHED  # 2 x 2 suggested before the restore: nothing left
    twin = PerCombinationSearcher(points, num_samples=2, seed=0, metric="score")
    twin.set_search_properties("score", "max", {"search": {"train.lr": tune.loguniform(1e-4, 1e-2)}})
    assert twin.suggest("x") == got[0]  # same seed, same samples


def test_search_report_names_the_best_finished_trial_and_shows_stopped_ones(tmp_path, pool):
    from paal_ray.runs.machine import RunMachine
    from paal_ray.sweeps.report import write_report
    from paal_ray.sweeps.search_report import write_search_report

    spec = load_sweep(_spec(tmp_path, pool))
    (point,) = expand(spec)
    root = tmp_path / "ws" / "sr"
    values = {}
    for i, (lr, scale) in enumerate([(1e-3, 0.9), (3e-3, 1.0), (5e-4, 0.5)]):
        name = f"t{i:03d}"
        cfg = trial_config(point.config.model_dump(mode="json"), name, {"train.lr": lr})
        services = fake_services()
        real = services.train

        def train(s, real=real, f=scale):
            r = real(s)
            for e in r.epochs:
                e["val_dice"] *= f
            r.best_score *= f
            return r

        services.train = train
        m = RunMachine.create(cfg, services=services, echo=lambda m: None)
        if i == 2:  # stopped by ASHA after its first round
            m.run(max_steps=5)
            (root / name / "stopped.json").write_text(json.dumps({"scheduler": "asha", "rounds_done": 1,
                                                                  "metric": "auc", "value": 0.1}))
        else:
            m.run()
        values[name] = {"train.lr": lr}
    (root / "trials.json").write_text(json.dumps(values))
    write_report(root)
    md = write_search_report(root, spec).read_text()
    assert "3 trial(s): 2 finished, 1 stopped early by the scheduler" in md
    assert "**t001**: train.lr=0.003; auc " in md  # the larger Dice scale wins
    assert "| t002 | 0.0005 | " in md and "stopped by ASHA after 1 round(s) |" in md
    assert "Best configuration by `auc`: **t001**: train.lr=0.003" in (root / "report.md").read_text()
    write_search_report(root, spec)  # again: the Search section is replaced, not repeated
    assert (root / "report.md").read_text().count("## Search") == 1
    assert (root / "search.png").read_bytes()[:4] == b"\x89PNG"
    assert "stopped    by the sweep's scheduler (ASHA) after 1 round(s): auc 0.1000" in status_text(root / "t002")


def test_tune_gets_the_concurrency_cap_asha_over_rounds_and_a_seeded_sampler(tmp_path, pool):
    """Tune ignores max_concurrent_trials when a search algorithm is passed in: the cap must be the
    algorithm's own (random: the variant generator; Optuna: Tune's ConcurrencyLimiter)."""
    from paal_ray.sweeps.tuner import StoppingASHA, _tune_config

    spec = load_sweep(_spec(tmp_path, pool, set=[f"pool={pool}", f"workspace={tmp_path}", "budget.rounds=3"]))
    trials = expand(spec)
    cfg, space = _tune_config(spec, trials, tmp_path, concurrent=2)
    assert cfg.search_alg.max_concurrent == 2 and cfg.num_samples == 3 and cfg.metric == "score"
    assert isinstance(cfg.scheduler, StoppingASHA) and cfg.scheduler._max_t == 4  # 3 rounds + the final
    assert set(space["search"]) == {"train.lr", "schedule.iq_patience", "strategy.params.n_init"}
    plain = load_sweep(_spec(tmp_path, pool, search=None, grid={"seed": [0, 1]}))
    cfg, space = _tune_config(plain, expand(plain), tmp_path, concurrent=1)
    assert cfg.max_concurrent_trials == 1 and cfg.scheduler is None and "search" not in space


def test_asha_gets_its_record_back_from_the_trials_reports_on_a_resume(tmp_path):
    """Tune unpickles the scheduler as it was at the start: the rungs come back from each restored
    trial's result.json, so a weak trial that reports after the resume is stopped against them."""
    from types import SimpleNamespace

    from ray.tune.schedulers import TrialScheduler

    from paal_ray.sweeps.tuner import METRIC, TIME_ATTR, StoppingASHA

    def scheduler():
        s = StoppingASHA(str(tmp_path), "auc", time_attr=TIME_ATTR, max_t=4, grace_period=1, reduction_factor=2,
                         brackets=1, stop_last_trials=False)
        s.set_search_properties(METRIC, "max")
        return s

    earlier = tmp_path / "t000"
    earlier.mkdir()
    (earlier / "result.json").write_text(
        json.dumps({TIME_ATTR: 1, METRIC: 0.342, "round": 0}) + "\n" + '{"rounds_done": 2, "sco')  # a torn last line
    def trial(name, folder):  # Tune's Trial as the scheduler reads it: a new trial has no folder name yet
        return SimpleNamespace(trial_id=name, storage=SimpleNamespace(trial_dir_name=folder and folder.name,
                                                                      trial_fs_path=str(folder)))

    t000 = trial("t000", earlier)
    t001 = trial("t001", tmp_path / "t001")  # nothing reported yet

    fresh = scheduler()  # what Tune restores: no record
    fresh.on_trial_add(None, trial("t000", None))
    fresh.on_trial_add(None, t001)
    assert fresh.on_trial_result(None, t001, {TIME_ATTR: 1, METRIC: 0.244}) == TrialScheduler.CONTINUE

    resumed = scheduler()
    resumed.on_trial_add(None, t000)
    assert resumed.replay(t001) == 0
    resumed.on_trial_add(None, t001)
    assert resumed.on_trial_result(None, t001, {TIME_ATTR: 1, METRIC: 0.244}) == TrialScheduler.STOP
    # the replayed trial was judged at that rung before the interruption: not judged there again
    assert resumed.on_trial_result(None, t000, {TIME_ATTR: 1, METRIC: 0.0}) == TrialScheduler.CONTINUE

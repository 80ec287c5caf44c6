"""Run a sweep's trials on Ray Tune: one trial = one active-learning run folder.

Each trial drives an ordinary ``RunMachine`` (its rounds start Ray Train runs and Ray Data queries
of their own) and reports every finished round to Tune (labelled count, validation Dice, AP error
and Pearson r, and the search metric), so Tune's progress table shows the sweep's learning curves
as they grow and a scheduler can act on them: a round is Tune's time step (``rounds_done``).

A sweep with ``search`` samples settings within each grid combination (random sampling, or Optuna's
TPE with one study per combination) and may stop weak trials early with ASHA; a stopped trial's run
folder gets ``stopped.json`` (``paal status`` shows it) and is never continued.

Resources: a trial's driver reserves ``trial_cpus`` through Tune; its Ray Train workers and scoring
actors reserve their own when they run (Ray Train V2 places its workers in a placement group of its
own, outside the trial's, so a trial-level group covering them would count them twice and could
never be filled by a lone trial). What one trial needs at its peak (``trial_footprint``) caps how
many run at once: trials that all fit together never wait on each other, so none can hold half of
what another needs (the deadlock of two scoring pools each holding one actor of two).

Re-running the same sweep resumes it with ``Tuner.restore``: finished and stopped trials are not
run again, interrupted ones continue from their run folder's last finished step. The report is
written at the end.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ray.tune.schedulers import AsyncHyperBandScheduler
from ray.tune.search import Searcher

from paal_ray.atomic import atomic_write_json, atomic_write_text, read_jsonl
from paal_ray.config import ConfigError
from paal_ray.sweeps.spec import (
    SWEEP_FILE,
    TRIALS_FILE,
    SweepSpec,
    Trial,
    expand,
    sampled_trial_name,
    search_metric,
    sweep_root,
    trial_config,
)

_REPORTED = ("round", "labeled_count", "val_dice", "ap_error", "ap_pearson", "query_s")
METRIC = "score"  # the key of the search metric in each Tune result
TIME_ATTR = "rounds_done"  # Tune's time step: round and final points reported so far
EXPERIMENT = "trials"  # Tune's experiment folder under SWEEP/.tune


def _trial(config: dict[str, Any], runs: dict[str, dict], metric: str) -> None:
    """The Tune trainable: create or resume the trial's run and report each round as it ends.
    ``config["trial"]`` is the grid combination (name and values), ``config["search"]`` the sampled
    values; ``runs`` holds every combination's full run config (through the object store)."""
    from ray import tune

    from paal_ray.cluster import configure_data_context
    from paal_ray.runs.machine import RunMachine, run_root
    from paal_ray.runs.report import write_learning_curve
    from paal_ray.runs.state import RunPaths, RunState

    # A trial runs in a Ray worker process: the driver's Ray Data settings are not there.
    configure_data_context(progress_bars=False)
    name = tune.get_context().get_trial_name()  # the run folder's name (``_trial_name``)
    cfg = trial_config(runs[config["trial"]["name"]], name, config.get("search") or {})
    root = run_root(cfg)
    paths = RunPaths(root)
    reported: set[tuple] = set()
    points: list[dict] = []

    def report_new(point: str = "", state: Any = None) -> None:
        for m in read_jsonl(paths.metrics):
            key = (m.get("kind"), m.get("round"))
            if m.get("kind") in ("round", "final") and key not in reported:
                reported.add(key)
                points.append(m)
                n_train = RunState.load(paths).n_train or 0
                tune.report({"final": m["kind"] == "final", TIME_ATTR: len(points),
                             METRIC: search_metric(points, n_train, metric), **{k: m.get(k) for k in _REPORTED}})

    if paths.stopped.is_file():  # stopped by the scheduler before an interruption: never continued
        report_new()
        return
    machine = RunMachine.open_or_create(cfg, root, hook=report_new)
    report_new()  # a resumed trial: the rounds it had already finished
    outcome = machine.run()
    report_new()
    write_learning_curve(root)
    if outcome.status != "done":
        raise RuntimeError(f"trial {cfg.name} ended {outcome.status}: {outcome.message}")


def _trial_name(trial) -> str:
    """A grid-only sweep's trial is named by its combination; a sampled one also by Tune's number."""
    point = trial.config["trial"]["name"]
    if not trial.config.get("search") and not trial.config["trial"].get("sampled"):
        return point
    return sampled_trial_name(point, int(str(trial.experiment_tag).split("_")[0] or 0))


def _trial_dirname(trial) -> str:
    return f"{_trial_name(trial)}-{trial.trial_id}"


class StoppingASHA(AsyncHyperBandScheduler):
    """ASHA that also says so in the run folder of each trial it stops (``stopped.json``), and that
    gets its record back on a resumed sweep (below)."""

    def __init__(self, root: str, metric_name: str, **kwargs):
        super().__init__(**kwargs)
        self._root = root
        self._metric_name = metric_name

    def on_trial_add(self, tune_controller, trial) -> None:
        super().on_trial_add(tune_controller, trial)
        if n := self.replay(trial):
            print(f"[sweep] ASHA's record: {trial}'s {n} earlier report(s) replayed", flush=True)

    def replay(self, trial) -> int:
        """Give ASHA back the rung values ``trial`` reported before this driver started.

        ``Tuner.restore`` re-adds every restored trial but unpickles the scheduler as it was when the
        sweep began, so its rungs would be empty and a resumed trial would be compared only with
        trials that report after it. The trial's own ``result.json`` (Tune's record of each report)
        holds what ASHA saw: replayed through the trial's bracket, the rungs are as they were (a
        trial already judged at a rung is not judged there again). Returns the reports replayed."""
        storage = getattr(trial, "storage", None)
        if storage is None or not getattr(storage, "trial_dir_name", None):
            return 0  # a trial Tune has just created: no folder yet (trial.path would raise)
        folder = storage.trial_fs_path
        if not folder or "://" in str(folder) or not (Path(folder) / "result.json").is_file():
            return 0  # a new trial, or remote storage (not read here: the record starts afresh there)
        bracket = self._trial_info[trial.trial_id]
        n = 0
        for rec in read_jsonl(Path(folder) / "result.json"):
            if rec.get(self._time_attr) is not None and rec.get(self._metric) is not None:
                bracket.on_result(trial, rec[self._time_attr], self._metric_op * rec[self._metric])
                n += 1
        return n

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        if action == self.STOP and not result.get("final"):
            run = Path(self._root) / str(trial)
            if run.is_dir():
                atomic_write_json(run / "stopped.json", {
                    "by": "scheduler", "scheduler": "asha", "rounds_done": result.get(TIME_ATTR),
                    "round": result.get("round"), "metric": self._metric_name, "value": result.get(METRIC),
                    "at": datetime.now(UTC).isoformat(timespec="seconds"),
                })
        return action


class PerCombinationSearcher(Searcher):
    """One searcher (Optuna's TPE) per grid combination, ``num_samples`` trials each: a search within
    each combination rather than across them, as a grid of strategies x a search of settings means."""

    def __init__(self, points: list[dict], num_samples: int, seed: int, metric: str, mode: str = "max"):
        super().__init__(metric=metric, mode=mode)
        from ray.tune.search.optuna import OptunaSearch

        try:
            import optuna
        except ImportError as e:
            raise ConfigError("search.algorithm optuna: Optuna is not installed (pip install 'paal-ray[search]')") from e
        # One sampler seed per combination, so that each has its own reproducible sequence.
        self._subs = {p["name"]: OptunaSearch(metric=metric, mode=mode,
                                              sampler=optuna.samplers.TPESampler(seed=seed + i))
                      for i, p in enumerate(points)}
        self._points = {p["name"]: p for p in points}
        self._left = {p["name"]: num_samples for p in points}
        self._owner: dict[str, str] = {}

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        space = {"search": config.get("search", {})}
        for sub in self._subs.values():
            sub.set_search_properties(metric, mode, space, **spec)
        return True

    def suggest(self, trial_id: str):
        for name, left in self._left.items():
            if left > 0:
                sampled = self._subs[name].suggest(trial_id)
                if sampled is None:
                    return None
                self._left[name] -= 1
                self._owner[trial_id] = name
                return {"trial": self._points[name], **sampled}
        return Searcher.FINISHED

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._owner:
            self._subs[self._owner[trial_id]].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._owner:
            self._subs[self._owner[trial_id]].on_trial_complete(trial_id, result, error)

    def save(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "wb") as f:
            pickle.dump((self._subs, self._left, self._owner), f)

    def restore(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "rb") as f:
            self._subs, self._left, self._owner = pickle.load(f)


def trial_footprint(trials: list[Trial], trial_cpus: float) -> dict[str, float]:
    """What one trial holds at its peak: its driver plus the larger of its Ray Train workers and its
    scoring actors (a trial trains, then scores: never both). The largest over the grid."""
    need = {"CPU": 0.0, "GPU": 0.0}
    for t in trials:
        sc = t.config.scaling
        train = {"CPU": sc.num_workers * sc.cpus_per_worker, "GPU": sc.num_workers if sc.use_gpu else 0}
        score = {"CPU": sc.score_actors * 1.0,  # scoring.py: num_cpus=1 per actor
                 "GPU": sc.score_actors * sc.gpus_per_score_actor if sc.use_gpu else 0}
        for k in need:
            need[k] = max(need[k], max(train[k], score[k]))
    need["CPU"] += trial_cpus
    return need


def thread_warning(trials: list[Trial], concurrent: int, cluster_cpus: float) -> str | None:
    """A warning when trials that run at once would start more torch threads than the cluster has
    CPUs. ``scaling.train_threads`` above the reserved CPUs suits a run alone on its machine; beside
    another such training, threads that outnumber the cores stall at every parallel region, waiting
    for a descheduled partner (measured on 2 cores: a 2-thread training beside another 2-thread one
    took 28-31 s an epoch; with its neighbour at 1 thread, 10-14 s)."""
    scalings = [t.config.scaling for t in trials]
    threads = max(max(sc.num_workers * (sc.train_threads or sc.cpus_per_worker),
                      sc.score_actors * (sc.score_threads or 1)) for sc in scalings)
    if concurrent < 2 or concurrent * threads <= cluster_cpus:
        return None
    return (f"[sweep] warning: {concurrent} trials at a time with up to {threads} torch thread(s) each "
            f"({concurrent * threads} on {cluster_cpus:g} CPUs): threads that outnumber the cores wait on each other "
            "and every trial slows down several times over. Set scaling.train_threads (and scaling.score_threads) "
            "to at most the CPUs each worker reserves, or lower max_concurrent.")


def trials_that_fit(footprint: dict[str, float], cluster: dict[str, float]) -> int:
    """How many trials of ``footprint`` the cluster holds at once (0: not even one)."""
    fits = [math.floor(cluster.get(k, 0.0) / v + 1e-9) for k, v in footprint.items() if v > 0]
    return min(fits) if fits else 1


def _search_space(spec: SweepSpec) -> dict[str, Any]:
    from ray import tune

    make = {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint,
            "choice": lambda *values: tune.choice(list(values))}
    return {key: make[kind](*args) for key, dist in spec.search.space.items() for kind, args in dist.items()}


def _tune_config(spec: SweepSpec, trials: list[Trial], root: Path, concurrent: int) -> tuple[Any, dict]:
    """TuneConfig and param_space: a grid, a grid x random samples, or a searcher per combination."""
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    search = spec.search
    sampled = bool(search and search.sampled())
    points = [{"name": t.name, **t.values, **({"sampled": True} if sampled else {})} for t in trials]
    naming = {"trial_name_creator": _trial_name, "trial_dirname_creator": _trial_dirname,
              "max_concurrent_trials": concurrent}
    if search is None:
        return tune.TuneConfig(**naming), {"trial": tune.grid_search(points)}
    space = {"search": _search_space(spec)} if search.space else {}
    scheduler = None
    if search.asha:
        rounds = max(t.config.budget.rounds for t in trials)
        scheduler = StoppingASHA(str(root), search.metric, time_attr=TIME_ATTR, max_t=rounds + 1,
                                 grace_period=min(search.asha.grace_period, rounds + 1),
                                 reduction_factor=search.asha.reduction_factor, brackets=search.asha.brackets,
                                 stop_last_trials=False)
    common = {"metric": METRIC, "mode": "max", "scheduler": scheduler, **naming}
    if search.algorithm == "optuna" and search.space:
        alg = PerCombinationSearcher(points, search.num_samples, search.seed, METRIC)
        return tune.TuneConfig(search_alg=alg, num_samples=len(points) * search.num_samples, **common), space
    # Tune ignores max_concurrent_trials for a search algorithm passed in: the generator limits itself.
    alg = BasicVariantGenerator(random_state=search.seed, max_concurrent=concurrent)
    return (tune.TuneConfig(search_alg=alg, num_samples=search.num_samples, **common),
            {"trial": tune.grid_search(points), **space})


def _trial_values(result) -> tuple[str, dict[str, Any]]:
    """A finished Tune trial's run name and its values: grid, then sampled."""
    name = Path(result.path).name.rsplit("-", 1)[0]
    point = {k: v for k, v in result.config["trial"].items() if k not in ("name", "sampled")}
    sampled = {k: (v.item() if hasattr(v, "item") else v) for k, v in (result.config.get("search") or {}).items()}
    return name, {**point, **sampled}


def run_sweep(spec: SweepSpec, *, address: str | None = None, echo: Callable[[str], None] = print,
              connect: bool = True) -> tuple[Path, list[str]]:
    """Run (or resume) every trial of ``spec``; returns the sweep folder (with report.md) and the
    names of the trials that failed (re-running the sweep resumes them)."""
    import json

    import ray
    from ray import tune

    from paal_ray.sweeps.report import write_report

    trials = expand(spec)  # every trial's config is checked before anything starts
    root = sweep_root(trials)
    saved = root / SWEEP_FILE
    text = spec_yaml(spec)
    if saved.is_file() and saved.read_text() != text:
        raise ConfigError(f"{saved}: this folder holds a different sweep; choose another name (name: ...) "
                          "or remove the folder")
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(saved, text)
    known = json.loads((root / TRIALS_FILE).read_text()) if (root / TRIALS_FILE).is_file() else {}
    if not (spec.search and spec.search.sampled()):
        # What the report groups by: each trial's grid values (a sweep folder explains itself).
        known.update({t.name: t.values for t in trials})
    atomic_write_json(root / TRIALS_FILE, known)
    if connect:
        from paal_ray.cluster import connect as connect_ray

        ray_cfg = trials[0].config.ray  # the base config's (a grid over ray.* would make no sense)
        connect_ray(address or ray_cfg.address, num_cpus=ray_cfg.num_cpus,
                    object_store_memory=ray_cfg.object_store_memory)
    footprint = trial_footprint(trials, spec.trial_cpus)
    fits = trials_that_fit(footprint, ray.cluster_resources())
    concurrent = max(1, min(spec.max_concurrent, fits))
    need = ", ".join(f"{v:g} {k}" for k, v in footprint.items() if v)
    if fits < spec.max_concurrent:
        echo(f"[sweep] max_concurrent {spec.max_concurrent}, but the cluster holds {fits} trial(s) of {need} at "
             f"once: running {concurrent} at a time")
    n = len(trials) * (spec.search.num_samples if spec.search else 1)
    echo(f"[sweep] {spec.name}: {n} trial(s), {concurrent} at a time (each needs {need} at its peak), in {root}")
    if warning := thread_warning(trials, concurrent, ray.cluster_resources().get("CPU", 0.0)):
        echo(warning)
    runs = {t.name: t.config.model_dump(mode="json") for t in trials}
    metric = spec.search.metric if spec.search else "final"
    trainable = tune.with_resources(tune.with_parameters(_trial, runs=runs, metric=metric),
                                    tune.PlacementGroupFactory([{"CPU": spec.trial_cpus}]))
    experiment = root / ".tune" / EXPERIMENT
    if tune.Tuner.can_restore(str(experiment)):
        echo(f"[sweep] resuming from {experiment}: finished and stopped trials are not run again")
        if spec.search and spec.search.asha:
            # Tune restores the search algorithm's state but not the scheduler's: StoppingASHA
            # replays each restored trial's reports (StoppingASHA.replay).
            reported = sum(1 for p in experiment.glob("*/result.json") if p.stat().st_size)
            echo(f"[sweep] ASHA's record is rebuilt from the reports of {reported} earlier trial(s)")
        tuner = tune.Tuner.restore(str(experiment), trainable=trainable, resume_unfinished=True,
                                   resume_errored=True)
    else:
        tune_config, param_space = _tune_config(spec, trials, root, concurrent)
        tuner = tune.Tuner(trainable, param_space=param_space, tune_config=tune_config,
                           run_config=tune.RunConfig(storage_path=str(root / ".tune"), name=EXPERIMENT, verbose=1))
    grid = tuner.fit()
    failed = sorted(_trial_values(r)[0] for r in grid if r.error)
    if spec.search and spec.search.sampled():
        known.update(dict(_trial_values(r) for r in grid))
        atomic_write_json(root / TRIALS_FILE, known)
    try:
        report = write_report(root)
        echo(report.read_text())
        echo(f"[sweep] report: {report} (and report.csv, curves.png beside it)")
        if spec.search:
            from paal_ray.sweeps.search_report import write_search_report

            search_md = write_search_report(root, spec)
            echo(search_md.read_text())
            echo(f"[sweep] search report: {search_md} (and search.csv, search.png beside it)")
    except FileNotFoundError:
        echo("[sweep] no trial got as far as a run folder: nothing to report")
    if failed:
        echo(f"[sweep] {len(failed)} trial(s) failed: {', '.join(failed)}; their errors are in "
             f"{experiment}; re-run the sweep to resume them")
    return root, failed


def spec_yaml(spec: SweepSpec) -> str:
    import yaml

    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)

"""Run a sweep's trials on Ray Tune: one trial = one active-learning run folder.

Each trial drives an ordinary ``RunMachine`` (its rounds start Ray Train runs and Ray Data queries
of their own) and reports every finished round to Tune (labelled count, validation Dice, AP error
and Pearson r), so Tune's progress table shows the sweep's learning curves as they grow.
Re-running the same sweep resumes it: finished trials report their results again at once,
unfinished ones continue from their last finished step. The report is written at the end.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from paal_ray.atomic import atomic_write_json, atomic_write_text, read_jsonl
from paal_ray.config import ConfigError, RunConfig
from paal_ray.sweeps.spec import SWEEP_FILE, TRIALS_FILE, SweepSpec, expand, sweep_root

_REPORTED = ("round", "labeled_count", "val_dice", "ap_error", "ap_pearson", "query_s")


def _trial(config: dict[str, Any], runs: dict[str, dict]) -> None:
    """The Tune trainable: create or resume the trial's run and report each round as it ends.
    ``config["trial"]`` is the trial's name and grid values (what Tune shows); ``runs`` holds every
    trial's full run config (passed through the object store, not shown)."""
    from ray import tune

    from paal_ray.cluster import configure_data_context
    from paal_ray.runs.machine import RunMachine, run_root
    from paal_ray.runs.report import write_learning_curve
    from paal_ray.runs.state import RunPaths

    # A trial runs in a Ray worker process: the driver's Ray Data settings are not there.
    configure_data_context(progress_bars=False)
    cfg = RunConfig.model_validate(runs[config["trial"]["name"]])
    root = run_root(cfg)
    paths = RunPaths(root)
    reported: set[tuple] = set()

    def report_new(point: str = "", state: Any = None) -> None:
        for m in read_jsonl(paths.metrics):
            key = (m.get("kind"), m.get("round"))
            if m.get("kind") in ("round", "final") and key not in reported:
                reported.add(key)
                tune.report({"final": m["kind"] == "final", **{k: m.get(k) for k in _REPORTED}})

    machine = RunMachine.open_or_create(cfg, root, hook=report_new)
    report_new()  # a resumed trial: the rounds it had already finished
    outcome = machine.run()
    report_new()
    write_learning_curve(root)
    if outcome.status != "done":
        raise RuntimeError(f"trial {cfg.name} ended {outcome.status}: {outcome.message}")


def _trial_name(trial) -> str:
    return trial.config["trial"]["name"]


def _trial_dirname(trial) -> str:
    return f"{trial.config['trial']['name']}-{trial.trial_id}"


def run_sweep(spec: SweepSpec, *, address: str | None = None, echo: Callable[[str], None] = print,
              connect: bool = True) -> tuple[Path, list[str]]:
    """Run (or resume) every trial of ``spec``; returns the sweep folder (with report.md) and the
    names of the trials that failed (re-running the sweep resumes them)."""
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
    # What the report groups by: each trial's grid values (a sweep folder explains itself).
    atomic_write_json(root / TRIALS_FILE, {t.name: t.values for t in trials})
    if connect:
        from paal_ray.cluster import connect as connect_ray

        ray_cfg = trials[0].config.ray  # the base config's (a grid over ray.* would make no sense)
        connect_ray(address or ray_cfg.address, num_cpus=ray_cfg.num_cpus,
                    object_store_memory=ray_cfg.object_store_memory)
    echo(f"[sweep] {spec.name}: {len(trials)} trial(s), {spec.max_concurrent} at a time, in {root}")
    runs = {t.name: t.config.model_dump(mode="json") for t in trials}
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(_trial, runs=runs), {"cpu": spec.trial_cpus}),
        param_space={"trial": tune.grid_search([{"name": t.name, **t.values} for t in trials])},
        tune_config=tune.TuneConfig(max_concurrent_trials=spec.max_concurrent,
                                    trial_name_creator=_trial_name, trial_dirname_creator=_trial_dirname),
        run_config=tune.RunConfig(storage_path=str(root / ".tune"), name="trials", verbose=1),
    )
    grid = tuner.fit()
    failed = sorted(r.config["trial"]["name"] for r in grid if r.error)
    try:
        report = write_report(root)
        echo(report.read_text())
        echo(f"[sweep] report: {report} (and report.csv, curves.png beside it)")
    except FileNotFoundError:
        echo("[sweep] no trial got as far as a run folder: nothing to report")
    if failed:
        echo(f"[sweep] {len(failed)} trial(s) failed: {', '.join(failed)}; their errors are in "
             f"{root / '.tune' / 'trials'}; re-run the sweep to resume them")
    return root, failed


def spec_yaml(spec: SweepSpec) -> str:
    import yaml

    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)

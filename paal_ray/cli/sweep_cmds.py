"""CLI: `paal sweep` (many runs on Ray Tune) and `paal report` (compare a folder of runs)."""

from __future__ import annotations

from pathlib import Path

import typer

from paal_ray.cli.errors import user_errors


def sweep(
    spec: Path = typer.Argument(..., help="Sweep file (YAML): name, base (preset or config file), set (overrides for every trial), "
                         "grid (config key: list of values), search (space of Tune distributions uniform/loguniform/"
                         "choice/randint, num_samples, metric final/round/auc, algorithm random/optuna, asha), "
                         "replicates (keys averaged in the report), max_concurrent. Examples: jobs/sweeps/*.yaml."),
    set_: list[str] = typer.Option(None, "--set", help="Override a field of every trial: --set pool=/data/pool."),
    address: str = typer.Option(None, "--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the trials and their folders; start nothing."),
) -> None:
    """Run every combination of a grid of settings (strategies, budgets, seeds, ...) as active-learning
    runs on Ray Tune, or search settings within each (random or Optuna TPE, ASHA early stopping),
    then write the comparison (report.md, report.csv, curves.png; search.md, search.png for a search).

    Each trial is an ordinary run folder in WORKSPACE/NAME/.
    Trials that train round 0 identically (one seed, several strategies or budgets) train it once.
    Re-running the same command resumes the sweep (Tuner.restore: finished and stopped trials stay).
    """
    from paal_ray.config import ConfigError
    from paal_ray.sweeps.spec import expand, load_sweep, sweep_root
    from paal_ray.sweeps.tuner import run_sweep

    def _sweep() -> None:
        spec_obj = load_sweep(spec, set_ or None)
        if dry_run:
            trials = expand(spec_obj)
            search = spec_obj.search
            if search and search.sampled():
                typer.echo(f"{len(trials) * search.num_samples} trial(s) ({len(trials)} grid combination(s) x "
                           f"{search.num_samples} sample(s)) in {sweep_root(trials)}:")
            else:
                typer.echo(f"{len(trials)} trial(s) in {sweep_root(trials)}:")
            for t in trials:
                typer.echo(f"  {t.name or '(no grid)'}: " + ", ".join(f"{k}={v}" for k, v in t.values.items()))
            if spec_obj.search and spec_obj.search.sampled():
                s = spec_obj.search
                typer.echo(f"each sampled {s.num_samples} time(s) ({s.algorithm}, seed {s.seed}) over "
                           + (", ".join(f"{k} ~ {kind}{args}" for k, d in s.space.items() for kind, args in d.items())
                              or "no search keys")
                           + f"; metric {s.metric}" + (f"; ASHA grace period {s.asha.grace_period} round(s)"
                                                        if s.asha else ""))
            return
        _, failed = run_sweep(spec_obj, address=address, echo=typer.echo)
        if failed:
            raise typer.Exit(1)

    user_errors(ConfigError, FileExistsError)(_sweep)()


def report(folder: Path = typer.Argument(..., help="A sweep folder, or any folder of run folders.")) -> None:
    """Compare the runs in FOLDER: final Dice per setting (mean +- std over seeds and folds), Dice by
    round, and learning curves; writes report.md, report.csv and curves.png there."""
    from paal_ray.sweeps.report import write_report

    def _report() -> None:
        path = write_report(folder)
        search = _search_of(folder)
        if search is not None:
            from paal_ray.sweeps.search_report import write_search_report

            md = write_search_report(folder, search)
        typer.echo(path.read_text())
        typer.echo(f"written: {path}, {path.with_name('report.csv')}, {path.with_name('curves.png')}"
                   + (f", {md}, {md.with_name('search.csv')}, {md.with_name('search.png')}" if search else ""))

    user_errors(FileNotFoundError)(_report)()


def _search_of(folder: Path):
    """The sweep spec saved in a sweep folder, when that sweep searched (else None)."""
    import yaml

    from paal_ray.sweeps.spec import SWEEP_FILE, SweepSpec

    saved = Path(folder) / SWEEP_FILE
    if not saved.is_file():
        return None
    spec = SweepSpec.model_validate(yaml.safe_load(saved.read_text()))
    return spec if spec.search else None


def register(app: typer.Typer) -> None:
    app.command("sweep")(sweep)
    app.command("report")(report)

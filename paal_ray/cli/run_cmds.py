"""CLI: `paal run`, `paal status`, `paal demo` (owned by the runs area)."""

from __future__ import annotations

from pathlib import Path

import typer

from paal_ray.cli.errors import user_errors


def _user_error_types() -> tuple[type[BaseException], ...]:
    from paal_ray.evaluation.predict import EvaluationError
    from paal_ray.runs.machine import BudgetError
    from paal_ray.runs.oracle import MaskError
    from paal_ray.runs.splits import SplitError
    from paal_ray.runs.state import RunStateError

    extra: tuple[type[BaseException], ...] = (BudgetError, MaskError, SplitError, RunStateError, EvaluationError)
    try:  # the query and training areas' own "bad input" errors
        from paal_ray.query.engine import QueryError
        from paal_ray.query.scoring import ScoringError
        from paal_ray.query.strategies.base import StrategyError
        from paal_ray.training.round import RoundSpecError

        extra += (StrategyError, RoundSpecError, QueryError, ScoringError)
    except ImportError:
        pass
    return extra


def run(
    config: str = typer.Argument(None, help="YAML config file or preset name (cpu, acdc, segthor, brain_tumour, paper)."),
    set_: list[str] = typer.Option(None, "--set", help="Override a field: --set budget.rounds=3 (repeatable)."),
    resume: Path = typer.Option(None, "--resume", help="Continue the run in this folder from its last finished step."),
    address: str = typer.Option(None, "--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)."),
    folds: int = typer.Option(None, "--folds", help="Cross-validation: run folds 0..N-1, report mean +- std Dice."),
    full_data: bool = typer.Option(False, "--full-data", help="The reference: label the whole training pool and "
                                   "train the final phase only (same as --set budget.full_data=true)."),
) -> None:
    """Run active learning: init -> {train -> query -> annotate -> ingest} x T -> final training.

    The run folder is WORKSPACE/NAME (config `workspace`, `name`). State is saved after every step,
    so `paal run --resume RUN` continues a run that was stopped or killed. With the human oracle
    the run stops in `annotate` until masks for the exported slices are in the inbox.
    """
    from paal_ray.runs.launch import launch
    from paal_ray.runs.machine import Outcome

    sets = [*(set_ or []), *(["budget.full_data=true"] if full_data else [])]
    result = user_errors(*_user_error_types())(launch)(
        config, sets or None, resume=str(resume) if resume else None, folds=folds, address=address, echo=typer.echo)
    if isinstance(result, Outcome) and result.status == "waiting":
        typer.echo("the run is waiting for annotations (see above); it is not an error")


def status(run_dir: Path = typer.Argument(..., help="Run folder (WORKSPACE/NAME).")) -> None:
    """Print a run's state, rounds, labelled count and learning curve; write RUN/learning_curve.png."""
    from paal_ray.runs.report import status_text, write_learning_curve

    def _status() -> None:
        cv_summary = run_dir / "cv.json"
        if cv_summary.is_file():
            import json

            data = json.loads(cv_summary.read_text())
            typer.echo(f"cross-validation: {data.get('folds')} folds, {data.get('status')}")
            if "mean_dice" in data:
                typer.echo(f"final Dice {data['mean_dice']:.4f} +- {data['std_dice']:.4f}")
            for fold_dir in sorted(run_dir.glob("fold-*")):
                if (fold_dir / "state.json").is_file():
                    typer.echo("")
                    typer.echo(status_text(fold_dir))
            return
        typer.echo(status_text(run_dir))
        png = write_learning_curve(run_dir)
        if png:
            typer.echo(f"\nlearning curve: {png}")

    user_errors(*_user_error_types())(_status)()


def demo(
    workspace: Path = typer.Option(Path("demo-workspace"), "--workspace", help="Folder for phantoms, pool and runs."),
    rounds: int = typer.Option(2, "--rounds", help="Query rounds of each run."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Phantoms -> ingest (64 px) -> a PAAL run and a random-selection run from the same initial set
    on the local Ray with the CPU preset -> Dice by round for both. A few minutes on 2 cores."""
    from paal_ray.demo import run_demo

    user_errors(*_user_error_types())(run_demo)(workspace, rounds=rounds, seed=seed, echo=typer.echo)


def register(app: typer.Typer) -> None:
    app.command("run")(run)
    app.command("status")(status)
    app.command("demo")(demo)

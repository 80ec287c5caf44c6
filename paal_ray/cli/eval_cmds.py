"""CLI: `paal evaluate` (a trained model on any labelled pool; owned by the evaluation area)."""

from __future__ import annotations

from pathlib import Path

import typer

from paal_ray.cli.errors import user_errors


def evaluate(
    run_dir: Path = typer.Argument(..., help="Run folder (WORKSPACE/NAME) whose model is evaluated."),
    pool: Path = typer.Option(None, "--pool", help="A labelled pool (`paal ingest`); every slice is evaluated. "
                              "Default: the run's held-out test set."),
    checkpoint: Path = typer.Option(None, "--checkpoint", help="A checkpoint folder (with model.pt) or model.pt "
                                    "file. Default: the run's final model (the checkpoint of its final record)."),
    as_json: bool = typer.Option(False, "--json", help="Print the full result as JSON (per class and per volume)."),
    address: str = typer.Option(None, "--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)."),
) -> None:
    """Evaluate a run's model on a labelled pool: per class, Dice from TP/FP/FN over all slices, Dice
    per volume and HD95 per volume (mean ± std over volumes; MONAI's metrics), and which volumes
    missed a class. Runs as a Ray task placed like training (a GPU with scaling.use_gpu)."""
    import json

    from paal_ray.cli.run_cmds import _user_error_types
    from paal_ray.evaluation.predict import evaluate_on_ray
    from paal_ray.evaluation.report import table
    from paal_ray.evaluation.testset import evaluate_request
    from paal_ray.runs.launch import connect_for

    def _evaluate() -> None:
        cfg, req = evaluate_request(run_dir, pool, checkpoint)
        typer.echo(f"evaluating {req.checkpoint} on {len(req.slice_ids)} slices of {req.pool_path}", err=True)
        connect_for(cfg, address)
        result = evaluate_on_ray(req)
        typer.echo(json.dumps(result, indent=2) if as_json else table(result))

    user_errors(*_user_error_types())(_evaluate)()


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)

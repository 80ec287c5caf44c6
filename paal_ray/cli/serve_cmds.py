"""CLI: `paal serve` (owned by the serve area): the selection service over a workspace."""

from __future__ import annotations

from pathlib import Path

import typer


def serve(
    workspace: Path = typer.Argument(..., help="Folder holding the runs (the config's `workspace`)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, "--port"),
    ray_serve: bool = typer.Option(False, "--ray-serve", help="Run on Ray Serve (the local Ray, or RAY_ADDRESS) "
                                   "instead of a single uvicorn process."),
    replicas: int = typer.Option(1, "--replicas", help="Ray Serve replicas (with --ray-serve)."),
) -> None:
    """Serve the runs' selections to annotators and take their masks over HTTP.

    GET /runs, /runs/NAME, /runs/NAME/selection, /runs/NAME/images/SLICE; PUT /runs/NAME/masks/SLICE
    (body = the mask file). API docs at /docs. Resume a run (`paal run --resume`) once its masks are in.
    """
    if not workspace.is_dir():
        typer.echo(f"error: {workspace}: no such folder (the workspace holding the runs)", err=True)
        raise typer.Exit(2)
    typer.echo(f"serving the runs of {workspace.absolute()} on http://{host}:{port} (API docs: /docs)")
    if ray_serve:
        from ray import serve as ray_serve_api

        from paal_ray.cluster import connect
        from paal_ray.serve.app import deployment

        connect(None)
        ray_serve_api.start(http_options={"host": host, "port": port})
        ray_serve_api.run(deployment({"workspace": str(workspace.absolute()), "num_replicas": replicas}),
                          name="paal", route_prefix="/", blocking=True)
        return
    import uvicorn

    from paal_ray.serve.app import create_app

    uvicorn.run(create_app(str(workspace.absolute())), host=host, port=port, log_level="info")


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)

"""CLI: `paal serve` (owned by the serve area): the selection service over a workspace."""

from __future__ import annotations

from pathlib import Path

import typer

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


def serve(
    workspace: Path = typer.Argument(..., help="Folder holding the runs (the config's `workspace`)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on (0.0.0.0: every interface; "
                             "needs --tokens or --insecure-no-auth)."),
    port: int = typer.Option(8000, "--port"),
    tokens: Path | None = typer.Option(None, "--tokens", help="Token file: one line `TOKEN ROLE NAME` per person, "
                                         "ROLE = viewer (reads), annotator (reads, mask uploads) or admin."),
    insecure_no_auth: bool = typer.Option(False, "--insecure-no-auth", help="Serve without tokens on a "
                                          "non-loopback interface (only on a network you trust entirely)."),
    allowed_hosts: list[str] = typer.Option([], "--allowed-host", help="A Host header to accept (repeat). "
                                            "Default: localhost names on loopback, any elsewhere."),
    ray_serve: bool = typer.Option(False, "--ray-serve", help="Run on Ray Serve (the local Ray, or RAY_ADDRESS) "
                                   "instead of a single uvicorn process."),
    replicas: int = typer.Option(1, "--replicas", help="Ray Serve replicas (with --ray-serve)."),
    workers: int = typer.Option(1, "--workers", min=1, help="uvicorn worker processes (one a core serves the most "
                                "requests; each reads the token file itself)."),
) -> None:
    """Serve the runs' selections to annotators and take their masks over HTTP.

    The annotators' page is at /; the API (GET /runs, /runs/NAME, /runs/NAME/selection,
    /runs/NAME/images/SLICE; PUT /runs/NAME/masks/SLICE with the mask file as body) is documented
    at /docs. With --tokens every request but /health and the page's shell needs
    `Authorization: Bearer TOKEN`; uploads are recorded in RUN/audit.jsonl. Resume a run
    (`paal run --resume`) once its masks are in.
    """
    from paal_ray.serve.auth import TokenFileError, TokenTable, check_bind, is_loopback

    if not workspace.is_dir():
        typer.echo(f"error: {workspace}: no such folder (the workspace holding the runs)", err=True)
        raise typer.Exit(2)
    try:
        table = TokenTable.read(tokens) if tokens else None
        check_bind(host, table, insecure_no_auth)
    except TokenFileError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    hosts = tuple(allowed_hosts) or (LOOPBACK_HOSTS if is_loopback(host) else ("*",))
    auth = (f"{len(table)} tokens from {tokens}" if table else "no authentication")
    typer.echo(f"serving the runs of {workspace.absolute()} on http://{host}:{port} ({auth}; "
               f"page: /, API docs: /docs)")
    if ray_serve:
        from ray import serve as ray_serve_api

        from paal_ray.cluster import connect
        from paal_ray.serve.app import deployment

        connect(None)
        ray_serve_api.start(http_options={"host": host, "port": port})
        args = {"workspace": str(workspace.absolute()), "num_replicas": replicas, "allowed_hosts": list(hosts),
                "insecure_no_auth": table is None}
        if tokens:
            args["tokens_file"] = str(tokens.absolute())
        ray_serve_api.run(deployment(args), name="paal", route_prefix="/", blocking=True)
        return
    import uvicorn

    from paal_ray.serve.app import ServeSettings, create_app

    if workers > 1:  # worker processes build the app themselves, from the environment
        import json
        import os

        from paal_ray.serve import app as serve_app
        from paal_ray.serve.auth import TOKENS_ENV, TOKENS_FILE_ENV

        os.environ.pop(TOKENS_ENV, None)
        os.environ.pop(TOKENS_FILE_ENV, None)
        if tokens:
            os.environ[TOKENS_FILE_ENV] = str(tokens.absolute())
        os.environ[serve_app.WORKSPACE_ENV] = str(workspace.absolute())
        os.environ[serve_app.ALLOWED_HOSTS_ENV] = json.dumps(list(hosts))
        # Workers import numpy, pyarrow and pydantic before they answer: on a busy machine that
        # takes longer than uvicorn's 5 s health check, which would restart them forever.
        uvicorn.run("paal_ray.serve.app:app_from_environment", factory=True, workers=workers, host=host, port=port,
                    log_level="info", server_header=False, timeout_worker_healthcheck=120)
        return
    settings = ServeSettings(tokens=table, allowed_hosts=hosts)
    uvicorn.run(create_app(str(workspace.absolute()), settings), host=host, port=port, log_level="info",
                server_header=False)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)

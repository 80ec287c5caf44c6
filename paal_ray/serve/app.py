"""The selection service: FastAPI, runnable with uvicorn (`paal serve`) or on Ray Serve.

Routes (one router per resource, ``paal_ray.serve.routers``) over the runs of one workspace:

    GET  /health
    GET  /runs                                   the runs, their phase, round, labelled count, Dice
    GET  /runs/{name}                            one run with its learning curve
    GET  /runs/{name}/selection[?round=R]        the selected slices, ranked, with scores
    GET  /runs/{name}/images/{slice}?format=     a selected slice as PNG or NIfTI, for annotators
    PUT  /runs/{name}/masks/{slice}?format=      an annotator's mask (body = the file)

The logic lives in ``paal_ray.runs.catalog`` (no HTTP there). ``deployment`` is a Ray Serve
application builder (``import_path: paal_ray.serve.app:deployment`` in deploy/serve.yaml); nothing
is built at import time.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI


def create_app(workspace: str) -> FastAPI:
    from paal_ray import __version__
    from paal_ray.runs.catalog import RunCatalog
    from paal_ray.serve.deps import install_error_handlers
    from paal_ray.serve.routers import masks, predictions, runs, selections

    app = FastAPI(title="paal-ray", version=__version__,
                  description="Active-learning selections for annotators: what to label next, and mask upload.")
    app.state.catalog = RunCatalog(workspace)
    install_error_handlers(app)
    for module in (runs, selections, masks, predictions):
        app.include_router(module.router)

    @app.get("/health", tags=["service"])
    def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__, "workspace": str(app.state.catalog.workspace)}

    return app


def deployment(args: dict[str, Any]):
    """Ray Serve application builder: ``args`` come from the Serve config (``workspace``,
    ``num_replicas``, ``num_cpus``). The workspace must be a folder every replica can read."""
    from ray import serve

    if not args.get("workspace"):
        raise ValueError("serve config: args.workspace is required (the folder holding the runs)")
    workspace = str(args["workspace"])
    fastapi_app = create_app(workspace)

    @serve.deployment(name="paal-api", num_replicas=int(args.get("num_replicas", 1)),
                      ray_actor_options={"num_cpus": float(args.get("num_cpus", 0.5))})
    @serve.ingress(fastapi_app)
    class PaalAPI:
        pass

    return PaalAPI.bind()

"""The HTTP service (FastAPI) and its Ray Serve deployment.

For now it answers ``/health``; the selection and mask-upload routes come in a later issue (the
upload route will reuse ``paal_ray.runs.oracle.validate_mask``). ``deployment`` is a Ray Serve
application builder (``import_path: paal_ray.serve.app:deployment`` in deploy/serve.yaml): nothing
is built at import time.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI


def create_app(workspace: str | None = None) -> FastAPI:
    from paal_ray import __version__

    app = FastAPI(title="paal-ray", version=__version__)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__, "workspace": workspace}

    return app


def deployment(args: dict[str, Any]):
    """Ray Serve application builder: ``args`` come from the Serve config (``workspace``, ``num_replicas``)."""
    from ray import serve

    workspace = args.get("workspace")
    fastapi_app = create_app(workspace)

    @serve.deployment(name="paal-api", num_replicas=int(args.get("num_replicas", 1)),
                      ray_actor_options={"num_cpus": float(args.get("num_cpus", 0.5))})
    @serve.ingress(fastapi_app)
    class PaalAPI:
        def __init__(self, workspace: str | None):
            self.workspace = workspace

    return PaalAPI.bind(workspace)

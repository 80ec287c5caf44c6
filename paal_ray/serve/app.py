"""The selection service: FastAPI, runnable with uvicorn (`paal serve`) or on Ray Serve.

Routes (one router per resource, ``paal_ray.serve.routers``) over the runs of one workspace:

    GET  /                                       the annotators' page (open shell; data needs a token)
    GET  /health                                 open
    GET  /runs                                   the runs, their phase, round, labelled count, Dice
    GET  /runs/{name}                            one run with its learning curve
    GET  /runs/{name}/uploads                    the upload audit log (admins)
    GET  /runs/{name}/selection[?round=&offset=&limit=]   a page of the selected slices, ranked, with scores
    GET  /runs/{name}/images/{slice}?format=     a selected slice as PNG or NIfTI, for annotators
    PUT  /runs/{name}/masks/{slice}?format=      an annotator's mask (body = the file)

With tokens (``ServeSettings.tokens``) every route but the open ones needs a bearer token whose
role allows it (``paal_ray.serve.auth``: an app-level dependency, so it covers every router the app
includes). Request bodies are capped before they are read (``paal_ray.serve.limits``), Host
headers are checked (TrustedHost), and responses carry no-store and no-sniff headers.

The logic lives in ``paal_ray.runs.catalog`` (no HTTP there). ``deployment`` is a Ray Serve
application builder (``import_path: paal_ray.serve.app:deployment`` in deploy/serve.yaml); the
app is built on each replica, which reads the tokens there; nothing is built at import time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Depends, FastAPI

from paal_ray.serve.auth import TokenTable

DEFAULT_MAX_BODY_BYTES = 64 * 2**20  # the most any request may send; a mask's own cap is derived from its slice


@dataclass(frozen=True)
class ServeSettings:
    tokens: TokenTable | None = None  # None: no authentication (loopback, or --insecure-no-auth)
    allowed_hosts: tuple[str, ...] = ("*",)  # Host headers accepted (TrustedHost)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES


class _SecurityHeaders:
    """Patient data must not linger in caches, and nothing is to be sniffed or framed."""

    HEADERS = [(b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff"),
               (b"referrer-policy", b"no-referrer"), (b"x-frame-options", b"DENY")]

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": list(message.get("headers", [])) + self.HEADERS}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(workspace: str, settings: ServeSettings | None = None) -> FastAPI:
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    from paal_ray import __version__
    from paal_ray.runs.catalog import RunCatalog
    from paal_ray.serve.auth import authenticate, public
    from paal_ray.serve.deps import error_responses, install_error_handlers
    from paal_ray.serve.limits import ContentLengthLimit
    from paal_ray.serve.routers import masks, page, predictions, runs, selections

    settings = settings or ServeSettings()
    app = FastAPI(title="paal-ray", version=__version__, dependencies=[Depends(authenticate)],
                  description="Active-learning selections for annotators: what to label next, and mask upload. "
                              "Send `Authorization: Bearer TOKEN` (roles: viewer reads, annotator uploads, "
                              "admin reads the audit log).")
    app.state.catalog = RunCatalog(workspace)
    app.state.tokens = settings.tokens
    app.state.max_body_bytes = settings.max_body_bytes
    install_error_handlers(app)
    for module in (page, runs, selections, masks, predictions):
        # Every router's routes may answer 401/403 (the app-level auth) and 500: documented here,
        # so a new router's schema is complete without edits to it.
        app.include_router(module.router, responses=error_responses(401, 403, 500))

    @app.get("/health", tags=["service"])
    @public
    def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__, "auth": settings.tokens is not None}

    def openapi() -> dict[str, Any]:
        """FastAPI's schema, with the open routes saying they need no token."""
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            for route in app.routes:
                if getattr(getattr(route, "endpoint", None), "__paal_public__", False):
                    for method in getattr(route, "methods", ()):
                        op = schema["paths"].get(route.path, {}).get(method.lower())
                        if op is not None:
                            op["security"] = []
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi

    app.add_middleware(ContentLengthLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(settings.allowed_hosts))
    app.add_middleware(_SecurityHeaders)
    return app


WORKSPACE_ENV = "PAAL_SERVE_WORKSPACE"
ALLOWED_HOSTS_ENV = "PAAL_SERVE_ALLOWED_HOSTS"


def app_from_environment() -> FastAPI:
    """uvicorn app factory for `paal serve --workers N`: each worker process builds the app from
    its environment (``PAAL_SERVE_WORKSPACE``, ``PAAL_SERVE_ALLOWED_HOSTS`` as a JSON list, and the
    tokens from ``PAAL_TOKENS_FILE``/``PAAL_TOKENS``: none means no authentication, which the
    CLI allows only where it would allow it for one process)."""
    import json
    import os

    return create_app(os.environ[WORKSPACE_ENV], ServeSettings(
        tokens=TokenTable.from_environment(), allowed_hosts=tuple(json.loads(os.environ.get(ALLOWED_HOSTS_ENV, '["*"]')))))


def deployment(args: dict[str, Any]):
    """Ray Serve application builder: ``args`` come from the Serve config.

    ``workspace`` (required): the folder holding the runs, readable (and writable, for uploads)
    from every replica. Tokens are read on each replica, never passed through Ray: from
    ``tokens_file`` (a mounted secret) if given, else from the replica's environment
    (``PAAL_TOKENS_FILE``: a path; ``PAAL_TOKENS``: the token file's contents). Without tokens
    a replica refuses to start unless ``insecure_no_auth: true``. Also ``num_replicas``,
    ``num_cpus``, ``allowed_hosts`` (list) and ``max_body_bytes``.
    """
    from ray import serve

    if not args.get("workspace"):
        raise ValueError("serve config: args.workspace is required (the folder holding the runs)")
    workspace = str(args["workspace"])
    tokens_file = args.get("tokens_file")
    insecure = bool(args.get("insecure_no_auth", False))
    allowed_hosts = tuple(args.get("allowed_hosts") or ("*",))
    max_body = int(args.get("max_body_bytes", DEFAULT_MAX_BODY_BYTES))

    def build_on_replica() -> FastAPI:
        return create_app(workspace, ServeSettings(tokens=replica_tokens(tokens_file, insecure),
                                                   allowed_hosts=allowed_hosts, max_body_bytes=max_body))

    @serve.deployment(name="paal-api", num_replicas=int(args.get("num_replicas", 1)),
                      ray_actor_options={"num_cpus": float(args.get("num_cpus", 0.5))})
    @serve.ingress(build_on_replica)
    class PaalAPI:
        pass

    return PaalAPI.bind()


def replica_tokens(tokens_file: str | None, insecure_no_auth: bool) -> TokenTable | None:
    """The tokens a replica serves with: the mounted file, else the environment; an error when
    there are none unless authentication is explicitly off."""
    from paal_ray.serve.auth import TOKENS_ENV, TOKENS_FILE_ENV, TokenFileError

    tokens = TokenTable.read(tokens_file) if tokens_file else TokenTable.from_environment()
    if tokens is None and not insecure_no_auth:
        raise TokenFileError(f"no tokens: set args.tokens_file (a mounted secret), or {TOKENS_FILE_ENV} / {TOKENS_ENV} "
                             "in the replicas' environment, or args.insecure_no_auth: true on a trusted network")
    return tokens

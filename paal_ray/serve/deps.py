"""What the routers share: the run catalog of the app's workspace, and how its errors map to HTTP
status codes (each error's message names the run, slice or file and what is wrong)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from paal_ray.runs.catalog import NotAcceptingMasks, RunCatalog, RunNotFound
from paal_ray.runs.oracle import MaskError
from paal_ray.runs.state import RunStateError

_STATUS = {
    RunNotFound: 404,  # no such run, round or selected slice
    NotAcceptingMasks: 409,  # the run's state does not allow it now
    MaskError: 422,  # the uploaded mask is unusable
    RunStateError: 500,  # the run folder itself is damaged
    ValueError: 400,  # any other bad argument
}


def get_catalog(request: Request) -> RunCatalog:
    return request.app.state.catalog


def install_error_handlers(app: FastAPI) -> None:
    for exc_type, status in _STATUS.items():
        app.add_exception_handler(exc_type, _handler(status))


def _handler(status: int):
    async def handle(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(status_code=status, content={"detail": str(exc), "error": type(exc).__name__})

    return handle

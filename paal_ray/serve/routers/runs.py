"""GET /runs, GET /runs/{name} and GET /runs/{name}/uploads: the runs of the workspace, their
state, and (admins only) who uploaded which mask."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from paal_ray.runs.catalog import RunCatalog
from paal_ray.serve.auth import Role, requires
from paal_ray.serve.deps import error_responses, get_catalog, json_response

router = APIRouter(prefix="/runs", tags=["runs"])


# The run listing and a run's detail answer on the event loop: their files are small and cached
# (parsed once per change: ~1 ms for 10 runs, ~7 ms for a detail), and a thread hop cost more than
# the work on a 2-core machine under load.
@router.get("", responses=error_responses(401, 403, 500))
async def list_runs(catalog: RunCatalog = Depends(get_catalog)) -> list[dict[str, Any]]:
    """Every run of the workspace: strategy, phase, round, labelled count, Dice. A run folder that
    cannot be read is listed with ``readable: false`` and the reason."""
    return json_response(catalog.listing())


@router.get("/{name}", responses=error_responses(401, 403, 404, 500, 503))
async def get_run(name: str, catalog: RunCatalog = Depends(get_catalog)) -> dict[str, Any]:
    """One run: its state and learning curve (validation Dice, AP error and Pearson r by round)."""
    return json_response(catalog.detail(name))


@router.get("/{name}/uploads", responses=error_responses(401, 403, 404, 500),
            dependencies=[Depends(requires(Role.admin))])
def get_uploads(name: str, catalog: RunCatalog = Depends(get_catalog)) -> list[dict[str, Any]]:
    """The run's upload audit log (admins only): time, annotator, slice, sha256 and size of each
    accepted mask, oldest first."""
    return json_response(catalog.audit(name))

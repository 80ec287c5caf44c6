"""GET /runs and GET /runs/{name}: the runs of the workspace and their state."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from paal_ray.runs.catalog import RunCatalog
from paal_ray.serve.deps import get_catalog

router = APIRouter(prefix="/runs", tags=["runs"])


@router.get("")
def list_runs(catalog: RunCatalog = Depends(get_catalog)) -> list[dict[str, Any]]:
    """Every run of the workspace: strategy, phase, round, labelled count, Dice."""
    return [catalog.summary(name) for name in catalog.names()]


@router.get("/{name}")
def get_run(name: str, catalog: RunCatalog = Depends(get_catalog)) -> dict[str, Any]:
    """One run: its state and learning curve (validation Dice, AP error and Pearson r by round)."""
    return catalog.detail(name)

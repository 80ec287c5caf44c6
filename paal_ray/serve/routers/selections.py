"""A run's selections: which slices the strategy chose, and their images for annotators."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response

from paal_ray.runs.catalog import IMAGE_FORMATS, RunCatalog
from paal_ray.runs.oracle import safe_name
from paal_ray.serve.deps import get_catalog

router = APIRouter(prefix="/runs/{name}", tags=["selections"])

_MEDIA = {"png": "image/png", "nii.gz": "application/gzip"}


@router.get("/selection")
def get_selection(name: str, round: int | None = Query(None, ge=0, description="default: the latest round"),
                  catalog: RunCatalog = Depends(get_catalog)) -> dict[str, Any]:
    """The round's selected slices in rank order, with scores (and clusters and the AP's predicted
    Dice where the strategy has them) and, while the run waits for annotations, which masks arrived."""
    return catalog.selection(name, round)


@router.get("/images/{slice_id:path}")
def get_image(name: str, slice_id: str, format: str = Query("png", description=" or ".join(IMAGE_FORMATS)),
              catalog: RunCatalog = Depends(get_catalog)) -> Response:
    """A selected slice to annotate: PNG (first channel) or NIfTI (all channels, H x W x C)."""
    data = catalog.image(name, slice_id, format)
    return Response(content=data, media_type=_MEDIA[format],
                    headers={"Content-Disposition": f'attachment; filename="{safe_name(slice_id)}.{format}"'})

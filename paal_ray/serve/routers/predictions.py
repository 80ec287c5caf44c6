"""GET /runs/{name}/predictions/{slice_id}: a selected slice's pre-annotation, the current model's
predicted mask, for an annotator to correct instead of drawing from nothing. PNG grey levels are
class indices (the format the mask upload takes back); NIfTI is uint8 [H, W]."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response

from paal_ray.runs.catalog import IMAGE_FORMATS, RunCatalog
from paal_ray.runs.oracle import prediction_names
from paal_ray.serve.deps import get_catalog

router = APIRouter(prefix="/runs/{name}/predictions", tags=["predictions"])

_MEDIA = {"png": "image/png", "nii.gz": "application/gzip"}


@router.get("/{slice_id:path}")
def get_prediction(name: str, slice_id: str, format: str = Query("png", description=" or ".join(IMAGE_FORMATS)),
                   catalog: RunCatalog = Depends(get_catalog)) -> Response:
    """The model's predicted mask for a selected slice (written when the run exported the round)."""
    data = catalog.prediction(name, slice_id, format)
    return Response(content=data, media_type=_MEDIA[format],
                    headers={"Content-Disposition": f'attachment; filename="{prediction_names(slice_id)[format]}"'})

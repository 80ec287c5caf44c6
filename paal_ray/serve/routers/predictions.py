"""GET /runs/{name}/predictions/{slice_id}: a selected slice's pre-annotation, the current model's
predicted mask, for an annotator to correct instead of drawing from nothing. PNG grey levels are
class indices (the format the mask upload takes back); NIfTI is uint8 [H, W]."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response

from paal_ray.runs.catalog import RunCatalog
from paal_ray.runs.oracle import prediction_names
from paal_ray.serve.deps import get_catalog
from paal_ray.serve.routers.selections import _MEDIA, ImageFormat, image_responses

router = APIRouter(prefix="/runs/{name}/predictions", tags=["predictions"])


@router.get("/{slice_id:path}", response_class=Response,
            responses=image_responses("The predicted mask as PNG (grey levels = class indices) or gzipped NIfTI"))
def get_prediction(name: str, slice_id: str, format: ImageFormat = Query("png"),
                   catalog: RunCatalog = Depends(get_catalog)) -> Response:
    """The model's predicted mask for a selected slice (written when the run exported the round)."""
    data = catalog.prediction(name, slice_id, format)
    return Response(content=data, media_type=_MEDIA[format],
                    headers={"Content-Disposition": f'attachment; filename="{prediction_names(slice_id)[format]}"'})

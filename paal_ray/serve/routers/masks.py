"""PUT /runs/{name}/masks/{slice_id}: an annotator's mask for a selected slice.

The body is the mask file itself (``curl -T case__0007.png URL?format=png``): a PNG whose grey
levels are class indices, a .npy array, or a NIfTI; same height and width as the slice. It is
checked like a file dropped into the inbox and stored there; resume the run to train on it.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request

from paal_ray.runs.catalog import RunCatalog
from paal_ray.runs.oracle import MASK_SUFFIXES, safe_name
from paal_ray.serve.deps import get_catalog

router = APIRouter(prefix="/runs/{name}/masks", tags=["masks"])

FORMATS = tuple(s.lstrip(".") for s in MASK_SUFFIXES)
MAX_MASK_BYTES = 64 * 2**20  # a 1024 x 1024 int64 .npy is 8 MiB


@router.put("/{slice_id:path}")
async def put_mask(name: str, slice_id: str, request: Request,
                   format: str = Query("png", description=" | ".join(FORMATS)),
                   catalog: RunCatalog = Depends(get_catalog)) -> dict[str, Any]:
    if format not in FORMATS:
        raise HTTPException(400, f"format {format!r}: expected one of {', '.join(FORMATS)}")
    data = await request.body()
    if not data:
        raise HTTPException(400, f"mask for slice {slice_id!r}: empty body (send the mask file as the request body)")
    if len(data) > MAX_MASK_BYTES:
        raise HTTPException(413, f"mask for slice {slice_id!r}: {len(data):,} bytes, more than {MAX_MASK_BYTES:,}")
    return catalog.put_mask(name, slice_id, data, f"{safe_name(slice_id)}.{format}")

"""PUT /runs/{name}/masks/{slice_id}: an annotator's mask for a selected slice.

The body is the mask file itself (``curl -T case__0007.png URL?format=png``): a PNG whose grey
levels are class indices, a .npy array, or a NIfTI; same height and width as the slice. The run,
its phase and the slice are checked before the body is read; the body is read with a cap derived
from the slice's shape and decoded off the event loop with bounds from that shape
(``paal_ray.serve.limits``); then it is checked like a file dropped into the inbox, stored there,
and recorded in the run's audit log. Resume the run to train on it.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from starlette.concurrency import run_in_threadpool

from paal_ray.runs.catalog import RunCatalog
from paal_ray.serve import limits
from paal_ray.serve.deps import error_responses, get_catalog

router = APIRouter(prefix="/runs/{name}/masks", tags=["masks"])

MaskFormat = Literal["png", "npy", "nii", "nii.gz"]
_BINARY = {"schema": {"type": "string", "format": "binary"}}


@router.put("/{slice_id:path}", responses=error_responses(400, 401, 403, 404, 409, 413, 422, 500, 503),
            openapi_extra={"requestBody": {"required": True, "description": "The mask file, same height and width as "
                                           "the slice, values = class indices (0 = background)",
                                           "content": {"application/octet-stream": _BINARY, "image/png": _BINARY,
                                                       "application/gzip": _BINARY}}})
async def put_mask(name: str, slice_id: str, request: Request, format: MaskFormat = Query("png"),
                   catalog: RunCatalog = Depends(get_catalog)) -> dict[str, Any]:
    """Upload a mask for a slice of the round being annotated (annotators and admins)."""
    target = await run_in_threadpool(catalog.mask_target, name, slice_id)
    what = f"mask for slice {slice_id!r}"
    body = await limits.read_body(request, limits.mask_body_limit(target.shape, request.app.state.max_body_bytes), what)
    if not body:
        raise HTTPException(400, f"{what}: empty body (send the mask file as the request body)")
    source = f"upload ({format}) for slice {slice_id!r}"
    mask = await run_in_threadpool(limits.decode_mask, body, format, target.shape, source)
    return await run_in_threadpool(catalog.store_mask, target, mask, body=body, fmt=format,
                                   annotator=request.state.principal.name, source=source)

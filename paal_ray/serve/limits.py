"""Limits that hold before memory is spent.

- ``ContentLengthLimit`` (ASGI middleware): a request announcing a body over the service's cap is
  refused with 413 before a byte of it is read.
- ``read_body`` reads a body as a stream with a running cap (chunked uploads announce no length).
- ``decode_mask`` decodes an uploaded mask with every size derived from the slice's shape: the
  body cap, the .nii.gz inflation bound, a PNG's IHDR and a .npy header are checked before any
  pixel is decoded, so a decompression bomb is refused without memory growth.
"""

from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
from fastapi import HTTPException, Request

from paal_ray.runs.oracle import MaskError, read_mask_bytes

MAX_BYTES_PER_PIXEL = 16  # complex128 / float128: the widest voxel a NIfTI or .npy mask could use
HEADER_ALLOWANCE = 64 * 2**10  # NIfTI header and extensions, .npy header, PNG chunks


def mask_body_limit(shape: tuple[int, int], service_cap: int) -> int:
    """The most bytes a mask for a slice of ``shape`` can take in any accepted format."""
    return min(service_cap, MAX_BYTES_PER_PIXEL * shape[0] * shape[1] + HEADER_ALLOWANCE)


class ContentLengthLimit:
    """Refuse (413) any request whose Content-Length exceeds ``max_bytes``, before reading it."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            for key, value in scope["headers"]:
                if key == b"content-length":
                    problem = None
                    if not value.isdigit():
                        status, problem = 400, f"Content-Length {value[:40].decode('latin-1')!r} is not a number"
                    elif int(value) > self.max_bytes:
                        status, problem = 413, (f"request body of {int(value):,} bytes: more than this service "
                                                f"takes ({self.max_bytes:,})")
                    if problem:
                        body = json.dumps({"detail": problem, "error": "RequestTooLarge" if status == 413
                                           else "BadRequest"}).encode()
                        await send({"type": "http.response.start", "status": status,
                                    "headers": [(b"content-type", b"application/json"),
                                                (b"content-length", str(len(body)).encode()),
                                                (b"connection", b"close")]})
                        await send({"type": "http.response.body", "body": body})
                        return
        await self.app(scope, receive, send)


async def read_body(request: Request, limit: int, what: str) -> bytes:
    """The request body, refused with 413 as soon as it (announced or streamed) passes ``limit``."""
    announced = request.headers.get("content-length")
    if announced is not None and announced.isdigit() and int(announced) > limit:
        raise HTTPException(413, f"{what}: {int(announced):,} bytes, more than the {limit:,} such a mask can take")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise HTTPException(413, f"{what}: more than the {limit:,} bytes such a mask can take")
        chunks.append(chunk)
    return b"".join(chunks)


# -- bounded decoding ---------------------------------------------------------------------------
def _shape_problem(source: str, got: tuple[int, ...], shape: tuple[int, int]) -> MaskError:
    return MaskError(f"{source}: mask shape {list(got)} does not match the slice's shape {list(shape)}")


def _fits(got: tuple[int, ...], shape: tuple[int, int]) -> bool:
    return tuple(got) == tuple(shape) or tuple(got) == (*shape, 1)


def gunzip_bounded(data: bytes, limit: int, source: str) -> bytes:
    """Inflate gzip ``data`` (every member) to at most ``limit`` bytes, else MaskError; never
    holds more than ``limit`` (+ one block) of output."""
    out = bytearray()
    rest = data
    while rest:
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            chunk = inflater.decompress(rest, limit + 1 - len(out))
        except zlib.error as e:
            raise MaskError(f"{source}: cannot be read as a .nii.gz mask (gzip: {e})") from None
        out += chunk
        if len(out) > limit or inflater.unconsumed_tail:
            raise MaskError(f"{source}: inflates to more than {limit:,} bytes, more than a mask of this slice's "
                            "shape can take (a decompression bomb?)")
        if not inflater.eof:
            raise MaskError(f"{source}: cannot be read as a .nii.gz mask (truncated gzip stream)")
        rest = inflater.unused_data
    return bytes(out)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_KEPT = {b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"IEND"}  # ancillary chunks (text, profiles) are dropped


def png_critical_chunks(data: bytes, shape: tuple[int, int], source: str) -> bytes:
    """The PNG with only the chunks a mask needs, after checking its IHDR dimensions against the
    slice: a 12000 x 12000 image is refused before one pixel (or compressed text chunk) is inflated."""
    if not data.startswith(PNG_SIGNATURE):
        raise MaskError(f"{source}: cannot be read as a .png mask (no PNG signature)")
    pos, kept = len(PNG_SIGNATURE), [PNG_SIGNATURE]
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        end = pos + 12 + length
        if end > len(data):
            raise MaskError(f"{source}: cannot be read as a .png mask (chunk {kind!r} truncated)")
        if kind == b"IHDR" and len(kept) == 1:
            width, height = struct.unpack(">II", data[pos + 8:pos + 16])
            if (height, width) != tuple(shape):
                raise _shape_problem(source, (height, width), shape)
        elif len(kept) == 1:
            raise MaskError(f"{source}: cannot be read as a .png mask (IHDR is not the first chunk)")
        if kind in _PNG_KEPT:
            kept.append(data[pos:end])
        pos = end
        if kind == b"IEND":
            break
    return b"".join(kept)


def _check_npy_header(data: bytes, shape: tuple[int, int], source: str) -> None:
    f = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(f)
        header = (np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0)
        got, _, dtype = header(f)
    except Exception as e:
        raise MaskError(f"{source}: cannot be read as a .npy mask ({type(e).__name__}: {e})") from None
    if dtype.hasobject:
        raise MaskError(f"{source}: a .npy mask of Python objects (pickled data is refused)")
    if not _fits(got, shape):
        raise _shape_problem(source, got, shape)


def _check_nifti_header(raw: bytes, shape: tuple[int, int], source: str) -> None:
    import nibabel as nib

    try:
        header = nib.Nifti1Header.from_fileobj(io.BytesIO(raw[:348]))
        got = tuple(int(d) for d in header.get_data_shape())
    except Exception as e:
        raise MaskError(f"{source}: cannot be read as a .nii mask ({type(e).__name__}: {e})") from None
    if not _fits(got, shape):
        raise _shape_problem(source, got, shape)


def decode_mask(data: bytes, fmt: str, shape: tuple[int, int], source: str) -> np.ndarray:
    """Decode an uploaded mask (format ``png``, ``npy``, ``nii`` or ``nii.gz``) for a slice of
    ``shape``, bounding every step by that shape. Validation of values is ``validate_mask``'s."""
    if fmt == "nii.gz":
        data = gunzip_bounded(data, shape[0] * shape[1] * MAX_BYTES_PER_PIXEL + HEADER_ALLOWANCE, source)
        fmt = "nii"
    if fmt == "nii":
        _check_nifti_header(data, shape, source)
    elif fmt == "png":
        data = png_critical_chunks(data, shape, source)
    elif fmt == "npy":
        _check_npy_header(data, shape, source)
    return read_mask_bytes(data, f"upload.{fmt}", source=source)

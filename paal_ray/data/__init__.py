"""Data: ingest of 3D volumes into 2D slice pools, synthetic phantoms, and pool reading."""

from paal_ray.data.pool import (
    SLICE_SCHEMA,
    Pool,
    PoolError,
    decode_images,
    decode_labels,
    encode_slice_row,
    make_slice_id,
)

__all__ = [
    "SLICE_SCHEMA", "Pool", "PoolError", "decode_images", "decode_labels", "encode_slice_row", "make_slice_id",
]

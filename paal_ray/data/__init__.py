"""Data: ingest of 3D volumes into 2D slice pools, synthetic phantoms, and pool reading.

    from paal_ray.data import IngestOptions, PhantomSpec, Pool, ingest, write_phantoms

    write_phantoms("ph", PhantomSpec(cases=8, slices=16, size=64))          # MSD layout
    ingest("ph", "pool", IngestOptions(layout="msd", size=64))               # -> manifest dict
    pool = Pool.open("pool")
    pool.index()                      # slice_id, case_id, patient_id, slice_index, present (no pixels)
    ds = pool.dataset()               # streaming Ray Dataset, one row per slice
    for batch in ds.iter_batches(batch_size=64):
        x, y = decode_images(batch), decode_labels(batch)   # [B,C,H,W] float32, [B,H,W] int64
"""

from paal_ray.data.ingest import IngestOptions, ingest, summarize
from paal_ray.data.layouts import LAYOUTS, IngestError
from paal_ray.data.nifti import VolumeError
from paal_ray.data.phantoms import PhantomError, PhantomSpec, write_phantoms
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
    "LAYOUTS", "SLICE_SCHEMA", "IngestError", "IngestOptions", "PhantomError", "PhantomSpec", "Pool", "PoolError",
    "VolumeError", "decode_images", "decode_labels", "encode_slice_row", "ingest", "make_slice_id", "summarize",
    "write_phantoms",
]

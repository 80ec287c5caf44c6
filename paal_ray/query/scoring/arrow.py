"""Arrow batch -> arrays: zero-copy views of the pool's binary tensor columns."""

from __future__ import annotations

import numpy as np

from paal_ray.query.scoring.errors import ScoringError


def _binary_chunk_view(chunk, what: str, sid_hint: str) -> tuple[np.ndarray, np.ndarray]:
    """The data bytes of a (large_)binary Arrow chunk and its offsets, without copying."""
    import pyarrow as pa

    if chunk.null_count:
        raise ScoringError(f"{what}: {chunk.null_count} null values in a batch starting at slice {sid_hint}")
    bufs = chunk.buffers()
    off_dtype = np.int64 if pa.types.is_large_binary(chunk.type) else np.int32
    offsets = np.frombuffer(bufs[1], dtype=off_dtype)[chunk.offset : chunk.offset + len(chunk) + 1]
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    return data, offsets


def fixed_arrays(table, column: str, dtype_col: str, shape_col: str, as_chunks: bool = False):
    """[B, *shape] array of a binary tensor column: zero-copy views on the Arrow buffers (all
    slices of a batch must share dtype and shape). A batch that spans several Arrow chunks is
    concatenated, or with ``as_chunks`` returned as a list of views so the caller can copy each
    straight to the device."""
    import pyarrow.compute as pc

    n = table.num_rows
    sid0 = table.column("slice_id")[0].as_py() if n else "?"
    dtypes = pc.unique(table.column(dtype_col)).to_pylist()
    if len(dtypes) != 1 or dtypes[0] is None:
        raise ScoringError(f"column {column}: expected one dtype per batch, got {dtypes} (batch at slice {sid0})")
    dtype = np.dtype(dtypes[0])
    shape_col_arr = table.column(shape_col).combine_chunks()
    flat = np.asarray(shape_col_arr.flatten().to_numpy(zero_copy_only=False))
    ndim = len(shape_col_arr[0].as_py())
    shapes = flat.reshape(n, ndim)
    if (shapes != shapes[0]).any():
        raise ScoringError(f"column {column}: slices of different shapes in one batch (at slice {sid0}); "
                           "set model.image_size and re-ingest, or score them separately")
    shape = tuple(int(s) for s in shapes[0])
    nbytes = int(np.prod(shape)) * dtype.itemsize
    parts = []
    for chunk in table.column(column).chunks:
        data, offsets = _binary_chunk_view(chunk, column, sid0)
        if not (np.diff(offsets) == nbytes).all():
            raise ScoringError(f"column {column}: byte lengths do not match shape {shape} x {dtype} (batch at slice {sid0})")
        parts.append(data[offsets[0] : offsets[-1]].view(dtype).reshape((len(chunk), *shape)))
    if not parts:
        parts = [np.zeros((0, *shape), dtype)]
    if as_chunks:
        return parts
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


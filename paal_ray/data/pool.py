"""A slice pool: the Parquet shards and manifest written by ``paal ingest``, read back on Ray Data.

Layout of a pool folder::

    POOL/manifest.json          counts, class names, channels, image size, ingest parameters, versions
    POOL/slices/part-*.parquet  one row per 2D slice (schema below)

Row schema (``SLICE_SCHEMA``): ``slice_id`` is stable (``"<case_id>/<slice_index:04d>"``); images are
stored as raw bytes of a C-contiguous array (``image_dtype``, ``image_shape`` = [C, H, W], float16
in [0, 1] after normalisation); labels likewise (``label_dtype`` uint8, ``label_shape`` = [H, W]),
null for an unlabelled slice; ``present`` holds one flag per class, background included, and
``pixels`` the pixel count of each class (null in pools written before the column existed).

Public API: ``Pool.open(path)``, ``pool.index()`` (metadata only, no image bytes read),
``pool.dataset(slice_ids)`` (a streaming Ray Dataset), ``pool.read_slices(ids)`` (small local reads),
``pool.locate(ids)`` + ``read_rows(parts)`` (where slices live, and reading just those rows back in
the process that needs them: how the scoring actors read), and ``decode_images`` /
``decode_labels`` to turn a batch into arrays.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

SLICE_SCHEMA = pa.schema(
    [
        ("slice_id", pa.string()),
        ("case_id", pa.string()),
        ("patient_id", pa.string()),
        ("slice_index", pa.int32()),
        ("image", pa.binary()),
        ("image_dtype", pa.string()),
        ("image_shape", pa.list_(pa.int32())),
        ("label", pa.binary()),
        ("label_dtype", pa.string()),
        ("label_shape", pa.list_(pa.int32())),
        ("present", pa.list_(pa.bool_())),
        ("pixels", pa.list_(pa.int64())),
    ]
)
META_COLUMNS = ["slice_id", "case_id", "patient_id", "slice_index", "present"]
IMAGE_COLUMNS = ["slice_id", "image", "image_dtype", "image_shape"]  # what decoding an image needs
LABEL_COLUMNS = ["label", "label_dtype", "label_shape"]
MANIFEST = "manifest.json"
SLICES_DIR = "slices"


class PoolError(ValueError):
    """A pool folder is missing, incomplete or inconsistent; the message names the path."""


def make_slice_id(case_id: str, slice_index: int) -> str:
    return f"{case_id}/{slice_index:04d}"


def encode_slice_row(
    *, case_id: str, patient_id: str, slice_index: int, image: np.ndarray, label: np.ndarray | None,
    num_classes: int,
) -> dict[str, Any]:
    """One Parquet row for a slice; ``image`` is [C, H, W], ``label`` is [H, W] or None."""
    image = np.ascontiguousarray(image)
    row: dict[str, Any] = {
        "slice_id": make_slice_id(case_id, slice_index),
        "case_id": case_id,
        "patient_id": patient_id,
        "slice_index": int(slice_index),
        "image": image.tobytes(),
        "image_dtype": str(image.dtype),
        "image_shape": list(image.shape),
        "label": None,
        "label_dtype": None,
        "label_shape": None,
        "present": None,
        "pixels": None,
    }
    if label is not None:
        label = np.ascontiguousarray(label.astype(np.uint8, copy=False))
        counts = np.bincount(label.ravel(), minlength=num_classes)
        row.update(
            label=label.tobytes(), label_dtype="uint8", label_shape=list(label.shape),
            present=[bool(c > 0) for c in counts[:num_classes]],
            pixels=[int(c) for c in counts[:num_classes]],
        )
    return row


def _resize_stack(arrs: list[np.ndarray], size: int, mode: str) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    out = []
    for a in arrs:
        if a.shape[-2:] == (size, size):
            out.append(a)
            continue
        t = torch.from_numpy(np.array(a))  # a writable copy: Arrow buffers are read-only
        if mode == "nearest":
            t = F.interpolate(t[None, None].float(), size=(size, size), mode="nearest")[0, 0].to(t.dtype)
        else:
            t = F.interpolate(t[None].float(), size=(size, size), mode="bilinear", align_corners=False)[0]
        out.append(t.numpy())
    return np.stack(out)


def decode_images(batch: dict[str, Any], size: int | None = None, dtype=np.float32) -> np.ndarray:
    """[B, C, H, W] from a batch's image bytes; resized (bilinear) to ``size`` when given."""
    arrs = [
        np.frombuffer(b, dtype=np.dtype(d)).reshape(tuple(s)).astype(dtype)
        for b, d, s in zip(batch["image"], batch["image_dtype"], batch["image_shape"], strict=True)
    ]
    if size is not None:
        return _resize_stack(arrs, size, "bilinear").astype(dtype, copy=False)
    shapes = {a.shape for a in arrs}
    if len(shapes) > 1:
        raise PoolError(f"slices of different shapes {sorted(shapes)} in one batch: set model.image_size")
    return np.stack(arrs) if arrs else np.zeros((0,), dtype)


def decode_labels(batch: dict[str, Any], size: int | None = None) -> np.ndarray:
    """[B, H, W] int64 class indices; resized (nearest) to ``size`` when given."""
    arrs = []
    for b, d, s, sid in zip(batch["label"], batch["label_dtype"], batch["label_shape"], batch["slice_id"], strict=True):
        if b is None:
            raise PoolError(f"slice {sid} has no label")
        arrs.append(np.frombuffer(b, dtype=np.dtype(d)).reshape(tuple(s)))
    if size is not None:
        return _resize_stack(arrs, size, "nearest").astype(np.int64)
    shapes = {a.shape for a in arrs}
    if len(shapes) > 1:
        raise PoolError(f"labels of different shapes {sorted(shapes)} in one batch: set model.image_size")
    return np.stack(arrs).astype(np.int64) if arrs else np.zeros((0,), np.int64)


@dataclass(frozen=True)
class RowGroupRows:
    """Where some slices live: positions ``rows`` (ascending) in row group ``row_group`` of the
    Parquet file ``path``. Small and JSON-able: it is what a reader is sent instead of the images."""

    path: str
    row_group: int
    rows: tuple[int, ...]

    def to_json(self) -> list:
        return [self.path, self.row_group, list(self.rows)]

    @classmethod
    def from_json(cls, item: list) -> RowGroupRows:
        return cls(str(item[0]), int(item[1]), tuple(int(r) for r in item[2]))


def _runs(rows: Sequence[int]) -> list[tuple[int, int]]:
    """(start, length) of each run of consecutive positions."""
    runs: list[tuple[int, int]] = []
    for r in rows:
        if runs and runs[-1][0] + runs[-1][1] == r:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((r, 1))
    return runs


def read_rows(parts: Sequence[RowGroupRows], columns: Sequence[str]) -> pa.Table:
    """The given rows, in the order of ``parts``: each row group is read once (only ``columns``)
    and the rows are zero-copy slices of it, so the images are decoded once and never copied here."""
    pieces = []
    for part in parts:
        try:
            group = pq.ParquetFile(part.path).read_row_group(part.row_group, columns=list(columns))
        except (OSError, pa.ArrowException, IndexError) as e:
            raise PoolError(f"{part.path}: cannot read row group {part.row_group} ({e})") from e
        if part.rows and part.rows[-1] >= group.num_rows:
            raise PoolError(f"{part.path}: row group {part.row_group} has {group.num_rows} rows, "
                            f"asked for row {part.rows[-1]} (was the pool rewritten during the query?)")
        pieces.extend(group.slice(start, length) for start, length in _runs(part.rows))
    if not pieces:
        return pa.schema([SLICE_SCHEMA.field(c) for c in columns]).empty_table()
    return pa.concat_tables(pieces)


class Pool:
    """A read-only handle on a pool folder. Cheap to create; reads nothing but the manifest."""

    def __init__(self, path: str | Path, manifest: dict):
        self.path = Path(path).absolute()
        self.manifest = manifest

    @classmethod
    def open(cls, path: str | Path) -> Pool:
        path = Path(path).absolute()
        mf = path / MANIFEST
        if not path.is_dir():
            raise PoolError(f"{path}: no such pool folder (create one with `paal ingest`)")
        if not mf.is_file():
            raise PoolError(f"{mf}: missing; {path} is not a complete pool (was `paal ingest` interrupted?)")
        try:
            manifest = json.loads(mf.read_text())
        except json.JSONDecodeError as e:
            raise PoolError(f"{mf}: not valid JSON ({e})") from e
        pool = cls(path, manifest)
        if not pool.files:
            raise PoolError(f"{path / SLICES_DIR}: no Parquet shards")
        return pool

    # -- manifest shortcuts -------------------------------------------------------------------
    @property
    def class_names(self) -> list[str]:
        return list(self.manifest["class_names"])

    @property
    def num_classes(self) -> int:
        return len(self.manifest["class_names"])

    @property
    def channels(self) -> int:
        return int(self.manifest["channels"])

    @property
    def image_size(self) -> int | None:
        return self.manifest.get("image_size")

    @property
    def files(self) -> list[str]:
        return sorted(str(p) for p in (self.path / SLICES_DIR).glob("*.parquet"))

    # -- reading ------------------------------------------------------------------------------
    @cached_property
    def _arrow_dataset(self) -> pads.Dataset:
        return pads.dataset(self.files, format="parquet", schema=SLICE_SCHEMA)

    def index(self, columns: Sequence[str] = META_COLUMNS) -> pa.Table:
        """Metadata of every slice (no image bytes are read), sorted by slice_id."""
        table = self._arrow_dataset.to_table(columns=list(columns))
        if "slice_id" in columns:
            table = table.sort_by("slice_id")
        return table

    def slice_ids(self) -> list[str]:
        return self.index(["slice_id"]).column("slice_id").to_pylist()

    def read_slices(self, slice_ids: Iterable[str], columns: Sequence[str] | None = None) -> pa.Table:
        """A small set of whole rows, in the order given (for exports, tests and inspection)."""
        ids = list(slice_ids)
        table = self._arrow_dataset.to_table(
            columns=list(columns) if columns else None, filter=pc.field("slice_id").isin(ids)
        )
        order = {s: i for i, s in enumerate(ids)}
        found = table.column("slice_id").to_pylist()
        missing = set(ids) - set(found)
        if missing:
            raise PoolError(f"{self.path}: unknown slice ids {sorted(missing)[:5]}")
        return table.take(pa.array(sorted(range(len(found)), key=lambda i: order[found[i]])))

    def locate(self, slice_ids: Iterable[str], *, threads: int = 8) -> list[RowGroupRows]:
        """Which row group of which file holds each of these slices (reads only the slice_id
        column). Every id must be in the pool exactly once."""
        wanted = pa.array(sorted(set(slice_ids)), pa.string())
        files = self.files

        def one_file(path: str) -> list[RowGroupRows]:
            pf = pq.ParquetFile(path)
            found = []
            for g in range(pf.num_row_groups):
                ids = pf.read_row_group(g, columns=["slice_id"]).column("slice_id")
                rows = np.flatnonzero(pc.is_in(ids, value_set=wanted).to_numpy(zero_copy_only=False))
                if len(rows):
                    found.append(RowGroupRows(path, g, tuple(int(r) for r in rows)))
            return found

        with ThreadPoolExecutor(max(1, min(threads, len(files)))) as ex:
            parts = [p for per_file in ex.map(one_file, files) for p in per_file]
        if sum(len(p.rows) for p in parts) != len(wanted):
            found = read_rows(parts, ["slice_id"]).column("slice_id")
            missing = pc.filter(wanted, pc.invert(pc.is_in(wanted, value_set=found))).to_pylist()
            if missing:
                raise PoolError(f"{self.path}: {len(missing)} requested slices are not in the pool, "
                                f"e.g. {missing[:5]}")
            counts = pc.value_counts(found)
            dup = [c["values"] for c in counts.to_pylist() if c["counts"] > 1]
            raise PoolError(f"{self.path}: slice ids stored more than once: {dup[:5]}")
        return parts

    def dataset(self, slice_ids: Iterable[str] | None = None, columns: Sequence[str] | None = None,
                override_num_blocks: int | None = None):
        """A streaming Ray Dataset over the pool (or the given slices). Nothing is materialised."""
        import ray.data
        from ray.data.expressions import col

        kwargs: dict[str, Any] = {}
        if override_num_blocks is not None:
            kwargs["override_num_blocks"] = override_num_blocks
        cols = list(columns) if columns else None
        if cols is not None and slice_ids is not None and "slice_id" not in cols:
            cols = ["slice_id", *cols]
        ds = ray.data.read_parquet(self.files, columns=cols, **kwargs)
        if slice_ids is not None:
            # An Arrow predicate: pushed down to the Parquet reader, rows never leave it unfiltered.
            ds = ds.filter(expr=col("slice_id").is_in(list(slice_ids)))
        return ds


def write_pool_shard(rows: list[dict[str, Any]], path: str | Path) -> None:
    """Write rows as one Parquet shard (used by ingest and by tests that build tiny pools)."""
    pq.write_table(pa.Table.from_pylist(rows, schema=SLICE_SCHEMA), str(path))

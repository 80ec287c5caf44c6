"""Pools for tests, built once and shared: plain functions (not conftest fixtures) so that a test
module can import them by name whatever conftest.py files other folders hold."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def make_blob_pool(path: Path, *, cases: int = 6, slices: int = 8, size: int = 32, channels: int = 1,
                   num_classes: int = 3, seed: int = 0) -> Path:
    """A tiny pool of bright discs on noise, written directly (no ingest): for unit tests of
    training and querying that must not depend on the ingest code."""
    import json

    from paal_ray.data.pool import MANIFEST, SLICES_DIR, encode_slice_row, write_pool_shard

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    (path / SLICES_DIR).mkdir(parents=True)
    rows = []
    for c in range(cases):
        for z in range(slices):
            label = np.zeros((size, size), np.uint8)
            for k in range(1, num_classes):
                if rng.random() < 0.8:
                    cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
                    r = rng.integers(size // 10, size // 5)
                    label[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = k
            image = (label[None].astype(np.float32) / num_classes + rng.normal(0, 0.1, (channels, size, size)))
            image = np.clip(image, 0, 1).astype(np.float16)
            rows.append(encode_slice_row(case_id=f"case{c:03d}", patient_id=f"case{c:03d}", slice_index=z,
                                         image=image, label=label, num_classes=num_classes))
    write_pool_shard(rows, path / SLICES_DIR / "part-00000.parquet")
    (path / MANIFEST).write_text(json.dumps({
        "num_cases": cases, "num_volumes": cases, "num_slices": len(rows),
        "class_names": ["background"] + [f"c{k}" for k in range(1, num_classes)],
        "channels": channels, "image_size": size, "layout": "blobs",
    }))
    return path


def make_phantom_pool(path: Path, *, cases: int = 10, modalities: int = 1, classes: int = 4, size: int = 64,
                      slices: int = 16, seed: int = 0, image_size: int | None = 64, layout: str = "msd",
                      kind: str = "mr") -> Path:
    """phantoms -> ingest: a pool of realistic synthetic slices (nested and separate structures,
    one class in few slices, empty slices), built by the product's own code path. Needs Ray:
    request the ``ray_session`` fixture. The phantom source is written beside ``path``."""
    from paal_ray.data.ingest import IngestOptions, ingest
    from paal_ray.data.phantoms import PhantomSpec, write_phantoms

    path = Path(path)
    src = path.parent / f"{path.name}-source"
    spec = PhantomSpec(cases=cases, modalities=modalities, classes=classes, size=size, slices=slices, seed=seed,
                       kind=kind)
    write_phantoms(src, spec, layout=layout)
    ingest(src, path, IngestOptions(layout=layout, size=image_size))
    return path

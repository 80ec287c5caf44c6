"""Shared fixtures. One local Ray cluster per test session (explicit CPUs, capped object store,
no dashboard); fixtures that build pools are session-scoped so the suite stays fast on 2 cores."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pool_builders import make_blob_pool, make_phantom_pool

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")

REPO = Path(__file__).resolve().parents[1]
ACDC = REPO.parent / "shared" / "data" / "acdc"


@pytest.fixture(scope="session")
def ray_session():
    """The test session's one local Ray. 4 logical CPUs on 2 cores: Ray Train's 2 workers plus
    headroom for Ray Data, which otherwise stalls behind them."""
    import ray

    from paal_ray.cluster import connect

    connect(None, num_cpus=4, object_store_memory=400_000_000)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def acdc_dir() -> Path:
    if not ACDC.is_dir():
        pytest.skip(f"real ACDC data not found at {ACDC}")
    return ACDC


@pytest.fixture(scope="session")
def blob_pool(tmp_path_factory) -> Path:
    return make_blob_pool(tmp_path_factory.mktemp("blob") / "pool")


@pytest.fixture(scope="session")
def phantom_pool(ray_session, tmp_path_factory) -> Path:
    """10 cases x 16 slices = 160 slices of 1 x 64 x 64 (MR), 4 classes: background, organ,
    core (nested in the organ), lesion (small, in few slices). Built once per session."""
    return make_phantom_pool(tmp_path_factory.mktemp("phantom") / "pool")

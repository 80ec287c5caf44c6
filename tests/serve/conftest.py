"""Fixtures of the selection-service tests: a workspace with a run waiting for masks."""

from __future__ import annotations

import pytest
from fakes import fake_services, small_cfg

from paal_ray.runs.machine import RunMachine


@pytest.fixture()
def workspace(blob_pool, tmp_path):
    """Two runs: 'human' waits for the masks of round 0; 'sim' (simulated oracle) has finished."""
    ws = tmp_path / "ws"
    services = fake_services()
    human = RunMachine.create(small_cfg(blob_pool, ws, **{"name": "human", "oracle.kind": "human"}),
                              services=services, echo=lambda s: None)
    assert human.run().status == "waiting"
    RunMachine.create(small_cfg(blob_pool, ws, name="sim"), services=fake_services(), echo=lambda s: None).run()
    return ws, services

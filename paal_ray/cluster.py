"""Connecting to Ray: the embedded default and a real cluster share one code path.

With no address (and no RAY_ADDRESS), a local Ray is started in-process with explicit CPUs, a
capped object store and no dashboard. With an address, we attach to that cluster. Either way
the rest of the product only sees ``ray``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import ray


@dataclass(frozen=True)
class RaySession:
    address: str | None
    local: bool


def connect(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    object_store_memory: int | None = 1_000_000_000,
    quiet: bool = False,
) -> RaySession:
    """Attach to Ray once per process; later calls reuse the running session.

    Workers' output reaches this process unless ``quiet``: training prints one progress line per
    epoch from rank 0, and users of a long run want to see it live.
    """
    address = address or os.environ.get("RAY_ADDRESS") or None
    if ray.is_initialized():
        return RaySession(address=address, local=address is None)
    if address:
        ray.init(address=address, log_to_driver=not quiet, ignore_reinit_error=True)
        return RaySession(address=address, local=False)
    # A throwaway local cluster needs no token; a user's own setting wins.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(
        num_cpus=num_cpus or os.cpu_count(),
        object_store_memory=object_store_memory,
        include_dashboard=False,
        log_to_driver=not quiet,
        configure_logging=True,
        logging_level="WARNING",
    )
    _quiet_data_context()
    return RaySession(address=None, local=True)


def _quiet_data_context() -> None:
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False

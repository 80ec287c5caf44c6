"""Connecting to Ray: the embedded default and a real cluster share one code path.

With no address (and no RAY_ADDRESS), a local Ray is started in-process with explicit CPUs, a
capped object store and no dashboard. With an address, we attach to that cluster. Either way
the rest of the product only sees ``ray``.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import ray

WORKER_SETUP_HOOK = "paal_ray.cluster.setup_worker"


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
        # The same quiet workers as locally, for this job's workers on the cluster (Ray merges this
        # into a job's runtime env); a job whose runtime env sets any of it keeps its own.
        try:
            ray.init(address=address, log_to_driver=not quiet, ignore_reinit_error=True,
                     runtime_env={"worker_process_setup_hook": WORKER_SETUP_HOOK, "env_vars": worker_env()})
        except ValueError as e:
            if "merge" not in str(e):
                raise
            ray.init(address=address, log_to_driver=not quiet, ignore_reinit_error=True)
        # Progress bars only on a terminal: in `ray job submit` logs they are thousands of lines.
        configure_data_context(progress_bars=sys.stdout.isatty())
        quiet_local_workers()  # and this driver's Ray Data and Ray Train INFO lines
        return RaySession(address=address, local=False)
    # A throwaway local cluster needs no token; a user's own setting wins.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    for key, value in worker_env().items():  # the local raylet and its workers inherit these
        os.environ.setdefault(key, value)
    ray.init(
        runtime_env={"worker_process_setup_hook": WORKER_SETUP_HOOK},
        num_cpus=num_cpus or os.cpu_count(),
        object_store_memory=object_store_memory,
        include_dashboard=False,
        log_to_driver=not quiet,
        configure_logging=True,
        logging_level="WARNING",
    )
    configure_data_context(progress_bars=False)
    quiet_local_workers()
    return RaySession(address=None, local=True)


def own_resources():
    """The scheduling strategy for a task or actor that asks the cluster for its own resources, out
    of any placement group the caller runs in. A sweep trial's driver runs in a placement group that
    reserves only its own share ({CPU: 0.01}); a task started from it inherits that group by default
    and, asking for a worker's CPUs, could never be placed (KMeans and the held-out test both hung so)."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    return PlacementGroupSchedulingStrategy(placement_group=None)


def worker_env() -> dict[str, str]:
    """Environment of the workers, each a user's own setting if there is one:

    - Ray Data's own logging config sets its loggers to INFO whenever ``ray.data`` is imported (so
      after a setup hook): every execution in a worker (a Ray Train worker iterating its shard)
      printed an "execution finished" line. ``RAY_DATA_LOG_LEVEL`` is what that config obeys.
    - Ray Train's preemption watcher (an actor per round) is created with its arguments in the
      object store and restarts allowed, and Ray prints a core_worker.cc error line about that
      every round. Off: a preempted node then counts as one of ``scaling.max_failures``.
    - Ray Train's controller polls its workers every ``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S`` (2 s by
      default) and takes one report a poll, and a worker blocks on its second unread report: we
      report every epoch, so epochs shorter than the interval ran one per 2 s (the paper's epochs at
      10% of a pool are one or two batches; on a GPU, a fraction of a second). At 0.1 s a tiny
      epoch cost 0.24 s where it cost 1.94 s, and a round's start and end 12.9 s where 20.0 s
      (`jobs/bench_round_overhead.py`, docs/BENCHMARKS.md).
    """
    return {key: os.environ.get(key, default) for key, default in
            (("RAY_DATA_LOG_LEVEL", "WARNING"), ("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0"),
             ("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1"))}


def setup_worker() -> None:
    """The setup hook of every worker process of this job: it knows its own cluster (RAY_ADDRESS,
    for Ray's internals that look one up, such as Ray Train's placement-group cleaner: on a machine
    running several Ray instances it died in a thread with "Found multiple active Ray instances"
    on every round), then is quiet."""
    if not os.environ.get("RAY_ADDRESS"):
        try:
            os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
        except Exception:  # not connected yet in this Ray version: leave it to Ray
            pass
    quiet_local_workers()


def quiet_local_workers() -> None:
    """Runs in every worker process of this job (embedded local cluster or a real one) and in the
    driver, so that a run shows our progress lines rather than Ray's internals:

    - without a dashboard Ray's state API is absent, and Ray Train's placement-group cleaner warns
      about it once a second for the whole round; on a machine running several Ray instances it
      logs a traceback at ERROR instead (it cannot tell which is its own). It only removes the
      placement groups of a controller that died; its failures are not the run's;
    - Ray Train logs every ``report`` (one per epoch) at INFO under a logger named by file path,
      outside the ``ray.train`` hierarchy that ``LoggingConfig`` filters;
    - Ray Data logs each execution and each Parquet read estimate at INFO, and says once per
      process that progress bars are off (we turned them off); see also ``worker_env``.
    Warnings and errors still show."""
    import logging
    import warnings

    ray_dir = os.path.dirname(ray.__file__)
    for name, level in (
        ("ray.train.v2._internal.execution.controller.placement_group_cleaner", logging.CRITICAL),
        (os.path.join(ray_dir, "train", "v2", "_internal", "execution", "context.py"), logging.WARNING),
        ("ray.data", logging.WARNING),
        ("ray.data._internal.progress", logging.ERROR),
    ):
        logging.getLogger(name).setLevel(level)
    # Ray Train's own DatasetManager sets a deprecated Ray Data option (not ours to fix).
    warnings.filterwarnings("ignore", message=".*exclude_resources.*")


def configure_data_context(*, progress_bars: bool | None = None) -> None:
    """The driver's Ray Data settings, read when a dataset is planned.

    Parquet reads use Ray Data's V1 datasource: in Ray 2.60 the V2 path starts a file-listing
    stage for every read, which costs 5-9 s per execution on a 2-core machine where V1 takes
    0.4 s (measured on a 320-slice pool); the pool is re-read every round, so that is per round.
    """
    ctx = ray.data.DataContext.get_current()
    ctx.use_datasource_v2 = False
    if progress_bars is not None:
        ctx.enable_progress_bars = progress_bars
        ctx.print_on_execution_start = progress_bars

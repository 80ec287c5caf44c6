"""``train_round``: one training round of an active-learning run, as a Ray Train TorchTrainer run.

The driver only assembles the run: it checks the spec, opens the pool, materialises the labelled
and validation slices once per round (one Ray Data read, kept in the object store), and starts a
``TorchTrainer`` whose workers run ``loop.train_loop_per_worker``. Every worker receives that
dataset in full (no ``streaming_split``: its equal mode drops up to world-1 rows, and the labelled
set is small); batches and validation slices are divided among ranks inside the loop.

Re-running with the same ``storage_path`` + ``name`` resumes (Ray Train V2 restores the run's
checkpoints); a round that had already ended returns its result again without training.
"""

from __future__ import annotations

from pathlib import Path

from paal_ray.data.pool import IMAGE_COLUMNS, LABEL_COLUMNS
from paal_ray.training import extensions
from paal_ray.training.api import RoundResult, RoundSpec

DATA_COLUMNS = IMAGE_COLUMNS + LABEL_COLUMNS


class RoundSpecError(ValueError):
    """A RoundSpec cannot be trained; the message names the field."""


def check_spec(spec: RoundSpec) -> None:
    if not spec.train_ids:
        raise RoundSpecError("RoundSpec.train_ids: empty; a round needs labelled slices")
    if not spec.val_ids:
        raise RoundSpecError("RoundSpec.val_ids: empty; IQ, early stopping and the reported Dice need a validation set")
    if not Path(spec.storage_path).is_absolute():
        raise RoundSpecError(f"RoundSpec.storage_path {spec.storage_path!r}: must be an absolute path (Ray Train storage)")
    if not spec.name or "/" in spec.name:
        raise RoundSpecError(f"RoundSpec.name {spec.name!r}: must be a non-empty folder name")
    if spec.phase not in ("query", "final"):
        raise RoundSpecError(f"RoundSpec.phase {spec.phase!r}: expected 'query' or 'final'")
    if spec.num_classes < 2 or spec.in_channels < 1:
        raise RoundSpecError(f"RoundSpec: need in_channels >= 1 and num_classes >= 2, got {spec.in_channels}, {spec.num_classes}")
    if spec.init_checkpoint and not (Path(spec.init_checkpoint) / "train_state.pt").is_file():
        raise RoundSpecError(f"RoundSpec.init_checkpoint {spec.init_checkpoint}: no train_state.pt there")
    extensions.get(spec.extension)  # unknown names fail here, before any worker starts


def _trainer(spec: RoundSpec):
    import ray.train
    from ray.train.torch import TorchTrainer

    from paal_ray.data.pool import Pool
    from paal_ray.training.loop import train_loop_per_worker

    cfg = spec.config
    pool = Pool.open(spec.pool_path)
    ext = extensions.get(spec.extension)
    extra = ext.extra_ids(spec)
    wanted = sorted(set(spec.train_ids) | set(spec.val_ids) | {i for ids in extra.values() for i in ids})
    # One read of the pool per round (each Ray Data execution has a fixed start-up cost).
    datasets = {"slices": pool.dataset(wanted, columns=DATA_COLUMNS).materialize()}
    sc = cfg.scaling
    resources = {"CPU": sc.cpus_per_worker, **({"GPU": 1} if sc.use_gpu else {}), **sc.custom_resources}
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"spec": spec},
        scaling_config=ray.train.ScalingConfig(num_workers=sc.num_workers, use_gpu=sc.use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=spec.name, storage_path=spec.storage_path,
            failure_config=ray.train.FailureConfig(max_failures=sc.max_failures),
            # The latest checkpoint resumes the round; one more guards against a torn latest.
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            # Our workers print one line per epoch; Ray Train's INFO lines (one per report) drown it.
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        ),
        datasets=datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split=[]),
    )


def train_round(spec: RoundSpec) -> RoundResult:
    """Train until the round's trigger fires; return where its checkpoint is and what happened."""
    from paal_ray.cluster import connect
    from paal_ray.training.loop import load_checkpoint_folder

    check_spec(spec)
    rc = spec.config.ray
    connect(rc.address, num_cpus=rc.num_cpus, object_store_memory=rc.object_store_memory)
    result = _trainer(spec).fit()
    if result.error is not None:
        raise RuntimeError(f"training round {spec.name} failed (storage {spec.storage_path}): {result.error}") from result.error
    if result.checkpoint is None:
        raise RuntimeError(f"training round {spec.name}: finished without a checkpoint under {spec.storage_path}")
    folder = result.checkpoint.path
    _, state = load_checkpoint_folder(folder)
    if state["stopped_by"] is None:
        raise RuntimeError(f"training round {spec.name}: last checkpoint {folder} is not the end of the round")
    return RoundResult(
        checkpoint=str(folder), epochs=list(state["epochs"]), global_epoch=int(state["global_epoch"]),
        best_score=float(state["best_score"]), stopped_by=str(state["stopped_by"]),
        best_checkpoint=state.get("best_checkpoint"),
    )

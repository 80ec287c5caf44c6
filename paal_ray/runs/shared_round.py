"""Round 0 trained once for runs that would train it identically.

Runs that differ only in how they query or how far they go (the demo's PAAL vs random, a strategy
comparison, a sweep over strategies and budgets) start from the same initial set with the same
seed and training config, so their round-0 training is the same computation (bit for bit on CPU).
The first run to finish it publishes the checkpoint and result in ``<runs folder>/.shared/``, keyed
by a fingerprint of everything that decides that training; a later run with the same fingerprint
adopts a copy (hard links where the file system allows: checkpoints are never modified in place)
instead of training. ``reuse_round0: false`` in the config turns this off.

The fingerprint covers the pool, the initial labelled and the validation slices, the seed and fold,
the whole config except what only queries, later rounds or bookkeeping read (name, workspace,
strategy, budget, Ray connection, scoring settings, logging), the strategy's training extension, and the package
versions. Anything else differing means a different key, so a miss costs only the training the
run would have done anyway.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from paal_ray.atomic import atomic_directory, atomic_write_json
from paal_ray.training.api import RoundResult

SHARED_DIR = ".shared"
_RESULT = "result.json"
_CHECKPOINT = "checkpoint"
# Config fields that do not change round-0 training. The budget only sets the initial set (its
# slice ids are part of the fingerprint) and later rounds: trials of one seed at several budgets
# (a sweep's usual grid) share round 0 too.
_IGNORED = {"name", "workspace", "strategy", "ray", "reuse_round0", "log_ap_health", "budget",
            "test"}  # the test set: held-out patients change train/val ids, which are in the key
_IGNORED_SCALING = {"score_actors", "score_batch_size", "gpus_per_score_actor", "score_threads",
                    "score_calls_per_gpu_actor", "compile_scoring"}


def fingerprint(cfg, *, pool: str, train_ids: list[str], val_ids: list[str], extension: str | None,
                versions: dict[str, Any]) -> str:
    data = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in _IGNORED}
    data["scaling"] = {k: v for k, v in data["scaling"].items() if k not in _IGNORED_SCALING}
    data["oracle"] = {"kind": data["oracle"]["kind"]}  # where the inbox is does not matter
    data["pool"] = str(Path(pool).absolute())
    key = {"config": data, "train_ids": sorted(train_ids), "val_ids": sorted(val_ids), "extension": extension,
           "versions": versions}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]


def shared_folder(runs_folder: Path, key: str) -> Path:
    return runs_folder / SHARED_DIR / f"round0-{key}"


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(src, dst)


def adopt(runs_folder: Path, key: str, dest: Path) -> RoundResult | None:
    """The shared round-0 result as this run's own (checkpoint copied to ``dest``), or None."""
    src = shared_folder(runs_folder, key)
    if not (src / _RESULT).is_file():
        return None
    result = RoundResult(**json.loads((src / _RESULT).read_text()))
    with atomic_directory(dest, overwrite=True) as tmp:
        shutil.copytree(src / _CHECKPOINT, tmp / _CHECKPOINT, copy_function=_link_or_copy)
    return replace(result, checkpoint=str(dest / _CHECKPOINT))


def publish(runs_folder: Path, key: str, result: RoundResult) -> None:
    """Offer a finished round 0 to later runs (first publisher wins; a failure only costs reuse)."""
    final = shared_folder(runs_folder, key)
    if (final / _RESULT).is_file():
        return
    try:
        with atomic_directory(final) as tmp:
            shutil.copytree(result.checkpoint, tmp / _CHECKPOINT, copy_function=_link_or_copy)
            atomic_write_json(tmp / _RESULT, asdict(replace(result, checkpoint=_CHECKPOINT)))
    except OSError:  # FileExistsError included: another run published first
        pass

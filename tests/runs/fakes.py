"""Small stand-ins for the training round and the query engine: the run loop's tests exercise the
state machine (persistence, resume, oracles) in milliseconds, without Ray."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from paal_ray.query.api import QueryRequest, QueryResult
from paal_ray.training.api import RoundResult, RoundSpec


class FakeTrainer:
    """Three 'epochs' a round; Dice grows with the labelled count. Records every spec it gets."""

    def __init__(self, epochs: int = 3):
        self.epochs = epochs
        self.specs: list[RoundSpec] = []

    def __call__(self, spec: RoundSpec) -> RoundResult:
        self.specs.append(spec)
        start = 0
        if spec.init_checkpoint:
            start = json.loads((Path(spec.init_checkpoint) / "state.json").read_text())["global_epoch"]
        ckpt = Path(spec.storage_path) / spec.name / "checkpoint"
        ckpt.mkdir(parents=True, exist_ok=True)
        end = start + self.epochs
        (ckpt / "state.json").write_text(json.dumps({"global_epoch": end, "train_ids": spec.train_ids}))
        dice = min(0.95, 0.2 + 0.02 * len(spec.train_ids))
        epochs = [{"global_epoch": e, "lr": 1e-3, "train_loss": 1.0 / (e + 1), "ap_loss": 0.1, "val_dice": dice,
                   "val_dice_per_class": [0.99, dice, dice], "val_ap_mae": 0.2, "seconds": 0.01}
                  for e in range(start, end)]
        return RoundResult(checkpoint=str(ckpt), epochs=epochs, global_epoch=end, best_score=dice,
                           stopped_by="final" if spec.phase == "final" else "iq",
                           best_checkpoint=str(ckpt) if spec.phase == "final" else None)


class FakeQuery:
    """Seeded random choice of b unlabelled slices; writes the selection table like the engine."""

    def __init__(self):
        self.requests: list[QueryRequest] = []

    def __call__(self, req: QueryRequest) -> QueryResult:
        self.requests.append(req)
        rng = np.random.default_rng(req.seed)
        ids = sorted(req.unlabelled_ids)
        chosen = [ids[i] for i in rng.choice(len(ids), size=min(req.budget, len(ids)), replace=False)]
        Path(req.out_path).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"slice_id": chosen, "rank": list(range(len(chosen)))}), req.out_path)
        return QueryResult(slice_ids=chosen, table_path=req.out_path, timings={"total_s": 0.01},
                           ap_pearson=0.5 if req.compute_true_dice else None)


def fake_strategy(name: str, **params):
    return SimpleNamespace(name=name, training_extension=params.get("extension"),
                           model_overrides=params.get("model_overrides", {}),
                           default_schedule=params.get("default_schedule", "iq"))


def small_cfg(pool: Path, workspace: Path, **over):
    """CPU preset on a tiny pool: 32 training slices at fold 0, init 3, two rounds of 6."""
    from paal_ray.config import load_config

    sets = [f"pool={pool}", f"workspace={workspace}", "name=r", "budget.init_ratio=0.1", "budget.max_ratio=0.5",
            "budget.rounds=2", "strategy.name=fake"]
    sets += [f"{k}={v}" for k, v in over.items()]
    return load_config("cpu", sets)


def fake_services():
    from paal_ray.runs.machine import Services

    return Services(train=FakeTrainer(), query=FakeQuery(), strategy=fake_strategy)

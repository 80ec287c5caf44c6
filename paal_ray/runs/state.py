"""A run's persisted state: the folder layout and ``state.json``.

``state.json`` is rewritten atomically after every step, so a run killed at any point restarts
from the last finished step. ``phase`` names the step to run next::

    init -> train -> query -> annotate -> ingest -> (train ... x T) -> final [-> test] -> done

``labelled.json`` holds the initial set and each round's selection; the labelled set is their
union, in that order.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from paal_ray.atomic import atomic_write_json

PHASES = ("init", "train", "query", "annotate", "ingest", "final", "test", "done")
STATE_VERSION = 1


class RunStateError(ValueError):
    """A run folder is missing, incomplete or inconsistent; the message names the file."""


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def versions(self) -> Path:
        return self.root / "versions.json"

    @property
    def labelled(self) -> Path:
        return self.root / "labelled.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def split(self) -> Path:
        return self.root / "split.json"

    @property
    def train_storage(self) -> Path:
        return self.root / "train"

    @property
    def labels(self) -> Path:
        """Human-oracle labels, one Parquet file per round (rows in the pool's schema)."""
        return self.root / "labels"

    @property
    def train_pool(self) -> Path:
        """Human oracle: the pool training reads (pool labels + annotators' labels)."""
        return self.root / "train-pool"

    @property
    def learning_curve(self) -> Path:
        return self.root / "learning_curve.png"

    @property
    def stopped(self) -> Path:
        """Written when a sweep's scheduler (ASHA) stopped this run early: who, when, on what figure."""
        return self.root / "stopped.json"

    def round_dir(self, r: int) -> Path:
        return self.root / "rounds" / f"{r:03d}"

    def selection(self, r: int) -> Path:
        return self.round_dir(r) / "selection.parquet"

    def query_result(self, r: int) -> Path:
        return self.round_dir(r) / "query.json"

    def train_result(self, r: int) -> Path:
        return self.round_dir(r) / "train.json"


@dataclass
class RunState:
    name: str
    strategy: str
    fold: int
    rounds: int  # T
    per_round: int  # b
    n_train: int
    budget: int  # slices labelled when the budget is spent: initial + T * b
    round: int = 0  # the round in progress (0-based); == rounds once the queries are done
    phase: str = "init"  # the step to run next
    labeled_count: int = 0
    checkpoint: str | None = None  # latest training checkpoint (model.pt inside)
    global_epoch: int = 0
    best_score: float | None = None
    final_dice: float | None = None
    waiting_for: str | None = None  # human oracle: the folder where masks are expected
    version: int = STATE_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def save(self, paths: RunPaths) -> None:
        atomic_write_json(paths.state, asdict(self))

    @classmethod
    def load(cls, paths: RunPaths) -> RunState:
        if not paths.state.is_file():
            raise RunStateError(f"{paths.state}: missing; {paths.root} is not a run folder (start one with `paal run CONFIG`)")
        try:
            data = json.loads(paths.state.read_text())
        except json.JSONDecodeError as e:
            raise RunStateError(f"{paths.state}: not valid JSON ({e})") from e
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise RunStateError(f"{paths.state}: unknown fields {sorted(unknown)} (written by a newer paal-ray?)")
        if data.get("phase") not in PHASES:
            raise RunStateError(f"{paths.state}: phase {data.get('phase')!r} is not one of {PHASES}")
        return cls(**data)


@dataclass
class Labelled:
    """The initial set and each round's selection (round index -> slice ids, rank order)."""

    initial: list[str]
    rounds: dict[int, list[str]] = field(default_factory=dict)

    def all(self) -> list[str]:
        out = list(self.initial)
        for r in sorted(self.rounds):
            out.extend(self.rounds[r])
        return out

    def save(self, paths: RunPaths) -> None:
        atomic_write_json(paths.labelled, {
            "initial": self.initial,
            "rounds": {f"{r:03d}": ids for r, ids in sorted(self.rounds.items())},
            "labelled": self.all(),
        })

    @classmethod
    def load(cls, paths: RunPaths) -> Labelled:
        if not paths.labelled.is_file():
            raise RunStateError(f"{paths.labelled}: missing (the run's init step did not finish)")
        data = json.loads(paths.labelled.read_text())
        return cls(initial=list(data["initial"]), rounds={int(k): list(v) for k, v in data["rounds"].items()})

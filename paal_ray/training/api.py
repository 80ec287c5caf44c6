"""The training contract: what the run loop asks of a training round, and what it gets back.

Implemented by ``paal_ray.training.round.train_round`` on Ray Train. Kept apart so the run state
machine (and its tests) depend on this small surface only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from paal_ray.config import RunConfig


@dataclass
class RoundSpec:
    pool_path: str
    train_ids: list[str]  # labelled slice ids the segmenter and AP learn from
    val_ids: list[str]  # held-out fold: IQ trigger, early stopping, reported Dice
    # "query": end when the schedule asks for a query (IQ or fixed interval);
    # "final": budget spent, train to convergence with early stopping.
    phase: Literal["query", "final"]
    storage_path: str  # absolute; Ray Train's storage for this run (RUN/train)
    name: str  # e.g. "round-003"; re-running with the same storage_path + name resumes the round
    config: RunConfig  # model, train, schedule and scaling sections are used
    in_channels: int
    num_classes: int
    seed: int
    init_checkpoint: str | None = None  # previous round's checkpoint folder; None: fresh models from seed
    extension: str | None = None  # training extension name declared by the strategy (e.g. "lpl", "ceal")
    pseudo_ids: list[str] = field(default_factory=list)  # CEAL: slices trained on with pseudo-labels
    fault_injection: dict[str, Any] | None = None  # tests only: e.g. {"kill_rank": 1, "at_epoch": 2}


@dataclass
class RoundResult:
    checkpoint: str  # folder with model.pt (model bundle) and train_state.pt
    epochs: list[dict[str, Any]]  # one dict per epoch: global_epoch, lr, train_loss, ap_loss,
    #                               val_dice (mean fg), val_dice_per_class, val_ap_mae, seconds
    global_epoch: int  # epochs trained so far in the whole run, after this round
    best_score: float  # best validation mean foreground Dice so far in the run
    stopped_by: str  # "iq" | "fixed" | "early_stop" | "max_epochs" | "final_epochs"
    best_checkpoint: str | None = None  # folder with the best-validation model.pt (final phase)

"""When a round ends: small pure objects fed one validation score per epoch.

``update(score)`` returns True when the round should end after this epoch. Each trigger has a
``state_dict`` / ``load_state_dict`` pair so that its counters live in the training checkpoint and
survive worker restarts, driver restarts and the passage from one round to the next.

- ``IQTrigger``: incremental querying (paper section 3.4). Fires when the score has not improved by
  more than ``min_delta`` over the best so far for ``patience`` epochs. Firing resets the counter
  only; the best score is never reset. Epochs inside the LR warm-up are not counted.
- ``FixedIntervalTrigger``: baselines and the "w/o IQ" ablation. Counts epochs of the whole run
  and fires after ``warmup`` epochs, then every ``interval`` epochs.
- ``EarlyStopping``: the final phase. Fires after ``patience`` epochs without a new best.
"""

from __future__ import annotations

import math


class _PatienceTrigger:
    """A best score and a count of epochs without beating it by more than ``min_delta``."""

    name = "patience"

    def __init__(self, patience: int, min_delta: float):
        if patience < 1:
            raise ValueError(f"{type(self).__name__}: patience must be >= 1, got {patience}")
        self.patience = patience
        self.min_delta = min_delta
        self.best = -math.inf
        self.counter = 0

    def improved(self, score: float) -> bool:
        """Would ``score`` be a new best? (The caller keeps the best model when it is.)"""
        return score > self.best + self.min_delta

    def update(self, score: float) -> bool:
        if self.improved(score):
            self.best = score
            self.counter = 0
            return False
        self.counter += 1
        return self.counter >= self.patience

    def state_dict(self) -> dict:
        return {"best": self.best, "counter": self.counter}

    def load_state_dict(self, state: dict) -> None:
        self.best = float(state["best"])
        self.counter = int(state["counter"])


class IQTrigger(_PatienceTrigger):
    """``warmup``: the first epochs of the run (the LR warm-up) are not counted. While the
    learning rate still rises a flat validation curve says nothing about the labelled set, and a
    tiny initial set would otherwise fire IQ before the model has learnt anything."""

    name = "iq"

    def __init__(self, patience: int = 10, min_delta: float = 1e-3, warmup: int = 0):
        super().__init__(patience, min_delta)
        self.warmup = warmup
        self.epochs = 0  # epochs of the whole run seen so far

    def update(self, score: float) -> bool:
        self.epochs += 1
        if self.epochs <= self.warmup:
            return False
        fired = super().update(score)
        if fired:
            self.counter = 0  # a query happens now; the best score stays
        return fired

    def state_dict(self) -> dict:
        return {**super().state_dict(), "epochs": self.epochs}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.epochs = int(state.get("epochs", self.warmup))  # older checkpoints: past the warm-up


class FixedIntervalTrigger:
    name = "fixed"

    def __init__(self, warmup: int = 10, interval: int = 5):
        if interval < 1 or warmup < 0:
            raise ValueError(f"FixedIntervalTrigger: need warmup >= 0 and interval >= 1, got {warmup}, {interval}")
        self.warmup = warmup
        self.interval = interval
        self.epochs = 0  # epochs of the whole run seen so far

    def update(self, score: float) -> bool:
        self.epochs += 1
        return self.epochs >= self.warmup and (self.epochs - self.warmup) % self.interval == 0

    def state_dict(self) -> dict:
        return {"epochs": self.epochs}

    def load_state_dict(self, state: dict) -> None:
        self.epochs = int(state["epochs"])


class EarlyStopping(_PatienceTrigger):
    name = "early_stop"

    def __init__(self, patience: int = 40, min_delta: float = 0.0):
        super().__init__(patience, min_delta)


def build_triggers(schedule_cfg, warmup_epochs: int = 0) -> dict[str, IQTrigger | FixedIntervalTrigger | EarlyStopping]:
    """Every trigger of a run, keyed by name (``iq`` and ``fixed`` are also ``schedule.mode``'s
    values): the training loop keeps all their states in each checkpoint. IQ skips the LR warm-up."""
    sc = schedule_cfg
    return {"iq": IQTrigger(sc.iq_patience, sc.iq_min_delta, warmup=warmup_epochs),
            "fixed": FixedIntervalTrigger(sc.fixed_warmup, sc.fixed_interval),
            "early_stop": EarlyStopping(sc.early_stop_patience)}


def query_trigger(schedule_cfg, warmup_epochs: int = 0) -> IQTrigger | FixedIntervalTrigger:
    """The trigger that ends a query round, from ``cfg.schedule``."""
    return build_triggers(schedule_cfg, warmup_epochs)[schedule_cfg.mode]

"""Training rounds on Ray Train: ``train_round(RoundSpec) -> RoundResult`` and its parts."""

from paal_ray.training.api import RoundResult, RoundSpec
from paal_ray.training.round import train_round
from paal_ray.training.triggers import EarlyStopping, FixedIntervalTrigger, IQTrigger, query_trigger

__all__ = ["EarlyStopping", "FixedIntervalTrigger", "IQTrigger", "RoundResult", "RoundSpec", "query_trigger",
           "train_round"]

"""Query strategies behind one registry: ``available()`` lists names, ``get(name, **params)`` builds one.

Each strategy lives in its own module and implements ``base.Strategy``. The registry is a plain
mapping from name to class, built on first use (no work at import time beyond defining it).
"""

from __future__ import annotations

from typing import Any

from paal_ray.query.strategies.base import QueryContext, Selection, Strategy, StrategyError


def _registry() -> dict[str, type[Strategy]]:
    from paal_ray.query.strategies.badge import BADGEStrategy
    from paal_ray.query.strategies.ceal import CEALStrategy
    from paal_ray.query.strategies.coreset import CoreSetStrategy
    from paal_ray.query.strategies.entropy_kmeans import EntropyKMeansStrategy
    from paal_ray.query.strategies.kmeans import KMeansStrategy
    from paal_ray.query.strategies.least_conf import LeastConfStrategy
    from paal_ray.query.strategies.lpl import LPLStrategy
    from paal_ray.query.strategies.margin import MarginStrategy
    from paal_ray.query.strategies.max_entropy import MaxEntropyStrategy
    from paal_ray.query.strategies.mc_dropout import MCDropoutStrategy
    from paal_ray.query.strategies.paal import PAALStrategy
    from paal_ray.query.strategies.paal_ap_only import PAALAPOnlyStrategy
    from paal_ray.query.strategies.random_sampling import RandomStrategy
    from paal_ray.query.strategies.var_ratio import VarRatioStrategy

    classes = [
        RandomStrategy, MaxEntropyStrategy, LeastConfStrategy, VarRatioStrategy, MarginStrategy,
        KMeansStrategy, CoreSetStrategy, EntropyKMeansStrategy, MCDropoutStrategy, CEALStrategy,
        LPLStrategy, PAALAPOnlyStrategy, PAALStrategy, BADGEStrategy,
    ]
    return {c.name: c for c in classes}


def available() -> list[str]:
    """Names of every registered strategy (paper Table 2, the ablations, and BADGE)."""
    return list(_registry())


def get(name: str, **params: Any) -> Strategy:
    """Build the strategy ``name`` with its params; unknown names or params raise StrategyError."""
    reg = _registry()
    if name not in reg:
        raise StrategyError(f"unknown strategy {name!r}; available: {', '.join(reg)}")
    return reg[name](**params)


def from_config(cfg: Any) -> Strategy:
    """Build from a ``StrategyConfig`` (``name`` + ``params``)."""
    return get(cfg.name, **dict(cfg.params or {}))


__all__ = ["QueryContext", "Selection", "Strategy", "StrategyError", "available", "from_config", "get"]

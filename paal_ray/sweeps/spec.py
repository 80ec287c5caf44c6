"""A sweep file: which runs to make, as a base config plus a grid of overrides.

    name: strategies-acdc          # the sweep's folder: WORKSPACE/NAME (WORKSPACE from the base)
    base: acdc                     # preset or YAML file every trial starts from
    set: [pool=/data/acdc-pool]    # overrides for every trial (same syntax as --set)
    grid:                          # every combination is one trial, in this order
      strategy.name: [paal, random, max_entropy]
      budget.max_ratio: [0.1, 0.2]
      seed: [0, 1, 2]
    replicates: [seed, cv.fold] # grid keys the report averages over (mean +- std)
    max_concurrent: 1              # trials at once (capped by what fits the cluster: see tuner.py)
    search:                        # optional: sample settings within each grid combination
      space:                       # dotted config key -> one Tune distribution
        train.ap_lr: {loguniform: [1.0e-4, 1.0e-2]}
        schedule.iq_patience: {randint: [3, 12]}     # upper bound excluded, as in Tune
        train.augment.enabled: {choice: [true, false]}
      num_samples: 8               # trials per grid combination
      metric: auc                  # final | round | auc (see ``METRICS``)
      algorithm: random            # random | optuna (TPE; the `search` extra)
      seed: 0
      asha: {grace_period: 1, reduction_factor: 2}   # stop weak trials after their first rounds

Trials in one sweep share a runs folder, so the ones that train round 0 identically (same seed,
fold and training config: all strategies and budgets of one seed) train it once (``runs.shared_round``).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from paal_ray.config import ConfigError, RunConfig, _Strict, apply_overrides, build_config, load_config

SWEEP_FILE = "sweep.yaml"
TRIALS_FILE = "trials.json"  # trial name -> its grid values
DEFAULT_REPLICATES = ("seed", "cv.fold")  # what a comparison averages over
# What a search maximises, computed from a run's round and final points (``search_metric``):
METRICS = {
    "final": "validation Dice of the latest point (at the end: the final training's)",
    "round": "mean validation Dice over the points so far (rounds, then the final training)",
    "auc": "area under validation Dice against labelled fraction, divided by the fraction's span "
           "(a mean Dice over the labelling range: rewards being good early as well as at the end)",
}
DISTRIBUTIONS = ("uniform", "loguniform", "choice", "randint")


class AshaSpec(_Strict):
    """Asynchronous successive halving over rounds: at each rung (grace_period, x reduction_factor,
    ... rounds) a trial whose metric is below the rung's top 1/reduction_factor stops."""

    grace_period: int = Field(1, ge=1, description="rounds every trial runs before it can be stopped")
    reduction_factor: float = Field(2.0, gt=1, description="keep the top 1/reduction_factor at each rung")
    brackets: int = Field(1, ge=1, description="ASHA brackets (1: plain successive halving)")


class SearchSpec(_Strict):
    space: dict[str, dict[str, list[Any]]] = Field(
        default_factory=dict, description="dotted config key -> {uniform|loguniform|randint: [low, high]} "
        "or {choice: [values]}")
    num_samples: int = Field(1, ge=1, description="trials sampled per grid combination")
    metric: Literal["final", "round", "auc"] = Field("auc", description="what the search maximises: "
                                                     + "; ".join(f"{k}: {v}" for k, v in METRICS.items()))
    algorithm: Literal["random", "optuna"] = Field("random", description="random sampling, or Optuna's TPE "
                                                   "(pip install 'paal-ray[search]')")
    seed: int = Field(0, description="the sampler's seed (same seed, same sampled settings)")
    asha: AshaSpec | None = Field(None, description="stop weak trials early (ASHA over rounds); none: run all")

    @field_validator("space")
    @classmethod
    def _distributions(cls, space: dict[str, dict[str, list[Any]]]) -> dict[str, dict[str, list[Any]]]:
        for key, dist in space.items():
            if key in ("name", "workspace"):
                raise ValueError(f"search.space.{key}: set by the sweep itself (trial names, the sweep folder)")
            if not isinstance(dist, dict) or len(dist) != 1:
                raise ValueError(f"search.space.{key}: give one distribution, e.g. {{loguniform: [1.0e-4, 1.0e-2]}}")
            (kind, args), = dist.items()
            if kind not in DISTRIBUTIONS:
                raise ValueError(f"search.space.{key}: unknown distribution {kind!r}; use one of "
                                 f"{', '.join(DISTRIBUTIONS)}")
            if not isinstance(args, list) or not args:
                raise ValueError(f"search.space.{key}.{kind}: give a non-empty list")
            if kind == "choice":
                continue
            if len(args) != 2 or not all(isinstance(a, int | float) and not isinstance(a, bool) for a in args):
                raise ValueError(f"search.space.{key}.{kind}: give [low, high] as numbers")
            low, high = args
            if not low < high:
                raise ValueError(f"search.space.{key}.{kind}: low {low} must be below high {high}")
            if kind == "loguniform" and low <= 0:
                raise ValueError(f"search.space.{key}.loguniform: low must be above 0")
            if kind == "randint" and not (isinstance(low, int) and isinstance(high, int)):
                raise ValueError(f"search.space.{key}.randint: give integer bounds (high excluded)")
        return space

    def sampled(self) -> bool:
        """Whether a grid combination runs more than one trial (trial names then get a number)."""
        return bool(self.space) or self.num_samples > 1

    def representative(self, key: str) -> Any:
        """A value of ``key``'s distribution, to check before starting that the key and its values
        fit the config (its low bound, or its first choice)."""
        (args,) = self.space[key].values()
        return args[0]


class SweepSpec(_Strict):
    name: str = Field("sweep", description="the sweep's folder name, under the base config's workspace")
    base: str = Field(..., description="preset name or YAML config file the trials extend")
    set: list[str] = Field(default_factory=list, description="overrides applied to every trial")
    grid: dict[str, list[Any]] = Field(default_factory=dict,
                                       description="dotted config key -> values; every combination runs")
    search: SearchSpec | None = Field(None, description="settings sampled within each grid combination, "
                                      "the metric they are judged by, early stopping")
    replicates: list[str] = Field(default_factory=lambda: list(DEFAULT_REPLICATES),
                                  description="grid keys the report averages over")
    max_concurrent: int = Field(1, ge=1, description="trials running at once")
    trial_cpus: float = Field(0.01, gt=0, description="CPUs reserved for a trial's driver (it mostly waits "
                              "on the Ray Train and Ray Data work it starts, which reserve their own)")

    @field_validator("grid")
    @classmethod
    def _non_empty(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in grid.items():
            if not isinstance(values, list) or not values:
                raise ValueError(f"grid.{key}: give a non-empty list of values")
            if key in ("name", "workspace"):
                raise ValueError(f"grid.{key}: set by the sweep itself (trial names, the sweep folder)")
        return grid

    @model_validator(mode="after")
    def _something_varies(self) -> SweepSpec:
        if not self.grid and not (self.search and self.search.space):
            raise ValueError("give at least one key to vary in grid or search.space (for one run, use `paal run`)")
        both = set(self.grid) & set(self.search.space if self.search else {})
        if both:
            raise ValueError(f"{', '.join(sorted(both))}: in both grid and search.space; give each key once")
        return self


@dataclass(frozen=True)
class Trial:
    """One grid combination: a run when the sweep has no search, else the base of its sampled trials."""

    name: str
    values: dict[str, Any]  # grid key -> value
    config: RunConfig


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> SweepSpec:
    """Read a sweep file; ``overrides`` are added to its ``set`` list (the CLI's --set)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such sweep file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    base = data.get("base")
    if isinstance(base, str) and not Path(base).is_absolute() and (path.parent / base).is_file():
        data["base"] = str((path.parent / base).absolute())  # a base file next to the sweep file
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as e:
        lines = [f"  {'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()]
        raise ConfigError(f"{path}: invalid sweep\n" + "\n".join(lines)) from None
    return spec.model_copy(update={"set": spec.set + list(overrides or [])})


def _slug(value: Any) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "", str(value)) or "x"


def trial_name(values: dict[str, Any]) -> str:
    """``name-paal_max_ratio-0.1_seed-0``: each grid key's last part and its value."""
    return "_".join(f"{key.split('.')[-1]}-{_slug(v)}" for key, v in values.items())


def sampled_trial_name(point: str, number: int) -> str:
    """A sampled trial's run folder: its grid combination's name and Tune's trial number."""
    return f"{point}_t{number:03d}" if point else f"t{number:03d}"


def override(key: str, value: Any) -> str:
    """``key=value`` in --set syntax (the value as YAML)."""
    if hasattr(value, "item"):  # numpy scalars from Tune's samplers
        value = value.item()
    return f"{key}={yaml.safe_dump(value, default_flow_style=True).strip()}"


def expand(spec: SweepSpec) -> list[Trial]:
    """Every grid combination as a validated run config (absolute paths: trials run elsewhere)."""
    from paal_ray.query import strategies
    from paal_ray.runs.preflight import preflight

    keys = list(spec.grid)
    # A search key must name a config field that takes its distribution's values: checked with one.
    probe = [override(k, spec.search.representative(k)) for k in spec.search.space] if spec.search else []
    try:
        base = load_config(spec.base, spec.set)
    except ConfigError as e:
        raise ConfigError(f"sweep {spec.name}, base with the sweep's overrides: {e}") from None
    root = (Path(base.workspace) / spec.name).absolute()
    trials, seen = [], set()
    for combo in itertools.product(*(spec.grid[k] for k in keys)):
        values = dict(zip(keys, combo, strict=True))
        name = trial_name(values)
        if name in seen:
            raise ConfigError(f"sweep {spec.name}: two grid combinations give the trial name {name!r}")
        seen.add(name)
        grid_set = spec.set + [override(k, v) for k, v in values.items()] + [f"name={name or 'sweep'}",
                                                                              f"workspace={root}"]
        try:
            cfg = load_config(spec.base, grid_set)
            checked = load_config(spec.base, grid_set + probe) if probe else cfg
        except ConfigError as e:
            raise ConfigError(f"sweep {spec.name}, trial {name or '(search)'}: {e}") from None
        try:  # an unknown strategy or parameter fails here, not minutes into the sweep
            strategies.get(checked.strategy.name, **checked.strategy.params)
        except strategies.StrategyError as e:
            raise ConfigError(f"sweep {spec.name}, trial {name or '(search)'}: strategy: {e}") from None
        if checked.oracle.kind != "simulated":
            raise ConfigError(f"sweep {spec.name}, trial {name}: oracle.kind must be 'simulated' "
                              "(a sweep cannot wait for annotators)")
        cfg = cfg.model_copy(update={"pool": str(Path(cfg.pool).absolute())})
        preflight(cfg, where=f"sweep {spec.name}, trial {name}")  # before Ray starts
        trials.append(Trial(name, values, cfg))
    return trials


def sweep_root(trials: list[Trial]) -> Path:
    """The sweep's folder: every trial's workspace (``expand`` sets it)."""
    return Path(trials[0].config.workspace)


def trial_config(point: dict, name: str, sampled: dict[str, Any]) -> RunConfig:
    """A trial's run config: its grid combination's (``Trial.config`` as a dict) with the values the
    search sampled, under the trial's own name."""
    data = apply_overrides(point, [override(k, v) for k, v in sampled.items()] + [f"name={name}"])
    return build_config(data, where=f"trial {name}")


def search_metric(points: list[dict], n_train: int, metric: str) -> float | None:
    """The value a search maximises (``METRICS``) from a run's round and final points so far."""
    dice = [(p["labeled_count"] / max(n_train, 1), p["val_dice"]) for p in points if p.get("val_dice") is not None]
    if not dice:
        return None
    if metric == "final":
        return float(dice[-1][1])
    if metric == "round":
        return float(sum(d for _, d in dice) / len(dice))
    span = dice[-1][0] - dice[0][0]
    if span <= 0:
        return float(dice[-1][1])
    area = sum((x1 - x0) * (d0 + d1) / 2 for (x0, d0), (x1, d1) in zip(dice, dice[1:], strict=False))
    return float(area / span)

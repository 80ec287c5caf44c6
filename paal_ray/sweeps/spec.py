"""A sweep file: which runs to make, as a base config plus a grid of overrides.

    name: strategies-acdc          # the sweep's folder: WORKSPACE/NAME (WORKSPACE from the base)
    base: acdc                     # preset or YAML file every trial starts from
    set: [pool=/data/acdc-pool]    # overrides for every trial (same syntax as --set)
    grid:                          # every combination is one trial, in this order
      strategy.name: [paal, random, max_entropy]
      budget.max_ratio: [0.1, 0.2]
      seed: [0, 1, 2]
    replicates: [seed, cv.fold] # grid keys the report averages over (mean +- std)
    max_concurrent: 1              # trials at once

Trials in one sweep share a runs folder, so the ones that train round 0 identically (same seed,
fold and training config: all strategies and budgets of one seed) train it once (``runs.shared_round``).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator

from paal_ray.config import ConfigError, RunConfig, _Strict, load_config

SWEEP_FILE = "sweep.yaml"
TRIALS_FILE = "trials.json"  # trial name -> its grid values
DEFAULT_REPLICATES = ("seed", "cv.fold")  # what a comparison averages over


class SweepSpec(_Strict):
    name: str = Field("sweep", description="the sweep's folder name, under the base config's workspace")
    base: str = Field(..., description="preset name or YAML config file the trials extend")
    set: list[str] = Field(default_factory=list, description="overrides applied to every trial")
    grid: dict[str, list[Any]] = Field(..., description="dotted config key -> values; every combination runs")
    replicates: list[str] = Field(default_factory=lambda: list(DEFAULT_REPLICATES),
                                  description="grid keys the report averages over")
    max_concurrent: int = Field(1, ge=1, description="trials running at once")
    trial_cpus: float = Field(0.01, gt=0, description="CPUs reserved for a trial's driver (it mostly waits "
                              "on the Ray Train and Ray Data work it starts, which reserve their own)")

    @field_validator("grid")
    @classmethod
    def _non_empty(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        if not grid:
            raise ValueError("give at least one key to vary (for one run, use `paal run`)")
        for key, values in grid.items():
            if not isinstance(values, list) or not values:
                raise ValueError(f"grid.{key}: give a non-empty list of values")
            if key in ("name", "workspace"):
                raise ValueError(f"grid.{key}: set by the sweep itself (trial names, the sweep folder)")
        return grid


@dataclass(frozen=True)
class Trial:
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


def expand(spec: SweepSpec) -> list[Trial]:
    """Every grid combination as a validated run config (absolute paths: trials run elsewhere)."""
    from paal_ray.query import strategies
    from paal_ray.runs.preflight import preflight

    keys = list(spec.grid)
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
        try:
            cfg = load_config(spec.base, spec.set + [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip()}"
                                                     for k, v in values.items()]
                              + [f"name={name}", f"workspace={root}"])
        except ConfigError as e:
            raise ConfigError(f"sweep {spec.name}, trial {name}: {e}") from None
        try:  # an unknown strategy or parameter fails here, not minutes into the sweep
            strategies.get(cfg.strategy.name, **cfg.strategy.params)
        except strategies.StrategyError as e:
            raise ConfigError(f"sweep {spec.name}, trial {name}: strategy: {e}") from None
        if cfg.oracle.kind != "simulated":
            raise ConfigError(f"sweep {spec.name}, trial {name}: oracle.kind must be 'simulated' "
                              "(a sweep cannot wait for annotators)")
        cfg = cfg.model_copy(update={"pool": str(Path(cfg.pool).absolute())})
        preflight(cfg, where=f"sweep {spec.name}, trial {name}")  # before Ray starts
        trials.append(Trial(name, values, cfg))
    return trials


def sweep_root(trials: list[Trial]) -> Path:
    """The sweep's folder: every trial's workspace (``expand`` sets it)."""
    return Path(trials[0].config.workspace)

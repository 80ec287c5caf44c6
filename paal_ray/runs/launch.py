"""Start, resume or cross-validate a run: the one entry point behind `paal run` and jobs/run_al.py."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from paal_ray.config import ConfigError, RunConfig, load_config
from paal_ray.runs import cv
from paal_ray.runs.machine import Outcome, RunMachine, run_root
from paal_ray.runs.preflight import preflight
from paal_ray.runs.report import write_learning_curve
from paal_ray.runs.state import RunPaths


def connect_for(cfg: RunConfig, address: str | None = None) -> None:
    from paal_ray.cluster import connect

    connect(address or cfg.ray.address, num_cpus=cfg.ray.num_cpus, object_store_memory=cfg.ray.object_store_memory)


def launch(config: str | None = None, overrides: list[str] | None = None, *, resume: str | None = None,
           folds: int | None = None, address: str | None = None, echo: Callable[[str], None] = print,
           connect: bool = True, **machine_kwargs) -> Outcome | dict:
    """Run a config from the start, or resume a run folder. Returns the Outcome (a dict for CV)."""
    if resume:
        if config or overrides or folds:
            raise ConfigError("--resume continues a run with its saved config; drop CONFIG, --set and --folds")
        root = Path(resume).absolute()
        if cv.is_cv_root(root):
            cfg = load_config(root / cv.CV_CONFIG)
            if connect:
                connect_for(cfg, address)
            return cv.resume_folds(root, echo=echo, **machine_kwargs)
        machine = RunMachine.open(root, echo=echo, **machine_kwargs)
        if connect:
            connect_for(machine.cfg, address)
        return _finish(machine.run(), root, echo)
    if not config:
        raise ConfigError("give a CONFIG (file or preset) to start a run, or --resume RUN to continue one")
    cfg = load_config(config, overrides)
    preflight(cfg)  # everything that would fail later, before Ray starts
    if connect:
        connect_for(cfg, address)
    if folds:
        if folds < 2:
            raise ConfigError(f"--folds {folds}: cross-validation needs at least 2 folds")
        root = run_root(cfg)
        if root.exists() and any(root.iterdir()):
            raise FileExistsError(f"{root}: already exists; continue with `paal run --resume {root}`")
        return cv.run_folds(cfg, root, folds, echo=echo, **machine_kwargs)
    machine = RunMachine.create(cfg, echo=echo, **machine_kwargs)
    return _finish(machine.run(), machine.paths.root, echo)


def _finish(outcome: Outcome, root: Path, echo: Callable[[str], None]) -> Outcome:
    if RunPaths(root).metrics.exists():
        write_learning_curve(root)
    echo(outcome.message)
    return outcome

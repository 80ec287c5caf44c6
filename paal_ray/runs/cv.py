"""Cross-validation: the same run on each patient-level fold, then mean and std of the final Dice.

Folds run one after the other (each is a full run with its own Ray Train rounds); every fold is
its own run folder ``RUN/fold-K`` and resumes like any run. ``RUN/cv.json`` holds the summary.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from paal_ray.atomic import atomic_write_json
from paal_ray.config import RunConfig, dump_config, load_config
from paal_ray.runs.machine import Outcome, RunMachine

CV_CONFIG = "cv-config.yaml"


def fold_config(cfg: RunConfig, fold: int, folds: int) -> RunConfig:
    return cfg.model_copy(update={"cv": cfg.cv.model_copy(update={"fold": fold, "num_folds": folds}),
                                  "name": f"{cfg.name}-fold{fold}"}, deep=True)


def run_folds(cfg: RunConfig, root: Path, folds: int, *, echo: Callable[[str], None] = print,
              **machine_kwargs) -> dict:
    """Run (or resume) every fold under ``root``; return the summary written to ``root/cv.json``."""
    root = Path(root).absolute()
    root.mkdir(parents=True, exist_ok=True)
    cfg_path = root / CV_CONFIG
    if not cfg_path.exists():
        from paal_ray.atomic import atomic_write_text

        atomic_write_text(cfg_path, dump_config(cfg))
        atomic_write_json(root / "cv.json", {"folds": folds, "status": "running"})
    results = []
    for k in range(folds):
        fold_root = root / f"fold-{k}"
        echo(f"=== fold {k + 1}/{folds}: {fold_root}")
        machine = RunMachine.open_or_create(fold_config(cfg, k, folds), fold_root, echo=echo, **machine_kwargs)
        outcome: Outcome = machine.run()
        if outcome.status != "done":
            summary = {"folds": folds, "status": outcome.status, "waiting_fold": k, "message": outcome.message}
            atomic_write_json(root / "cv.json", summary)
            return summary
        results.append({"fold": k, "final_dice": outcome.state.final_dice, "run": str(fold_root)})
    dice = np.array([r["final_dice"] for r in results], dtype=float)
    # Population std over the folds (ddof=0), as mean +- std in the paper's tables.
    summary = {"folds": folds, "status": "done", "results": results, "mean_dice": float(dice.mean()),
               "std_dice": float(dice.std())}
    atomic_write_json(root / "cv.json", summary)
    echo(f"cross-validation ({folds} folds): final Dice {summary['mean_dice']:.4f} +- {summary['std_dice']:.4f}")
    return summary


def is_cv_root(root: Path) -> bool:
    return (Path(root) / CV_CONFIG).is_file()


def resume_folds(root: Path, **kwargs) -> dict:
    import json

    root = Path(root).absolute()
    cfg = load_config(root / CV_CONFIG)
    folds = json.loads((root / "cv.json").read_text())["folds"]
    return run_folds(cfg, root, folds, **kwargs)

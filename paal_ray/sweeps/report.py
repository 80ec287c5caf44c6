"""Compare the runs of a folder (a sweep's, or any runs folder): the paper's table and figures.

Runs are grouped into settings by their grid values minus the replicate keys (seed, fold) when
the folder is a sweep's, else by strategy; each group's Dice is reported as mean +- std over its
runs, at every round and at the end. Writes, atomically, beside the runs:

    report.md    final Dice per setting (the paper's Table 2 layout), then Dice by round
    report.csv   one row per run and round: the numbers behind both, for your own plots
    curves.png   mean validation Dice against % of the training pool labelled (+- std band), and
                 the AP's Pearson r by round for the strategies that have an AP
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from paal_ray.atomic import atomic_write_bytes, atomic_write_text, read_jsonl
from paal_ray.runs.state import RunPaths, RunState
from paal_ray.sweeps.spec import DEFAULT_REPLICATES, SWEEP_FILE, TRIALS_FILE


@dataclass
class RunPoints:
    name: str
    setting: str
    points: list[dict]  # the run's "round" and "final" metrics records, in order
    n_train: int
    done: bool
    root: Path | None = None
    replicate: str = ""  # the replicate keys' values (fold, seed): same replicate = same split and initial set


def _setting_of(name: str, root: Path, values: dict[str, Any] | None, replicates: list[str]) -> str:
    if RunState.load(RunPaths(root)).strategy == "full":
        return "full"  # the full-data reference, whatever its sweep's grid
    if values is not None:
        kept = {k: v for k, v in values.items() if k not in replicates}
        # The strategy is named by itself ("paal"), other settings by key and value ("max_ratio 0.1").
        return ", ".join(str(v) if k == "strategy.name" else f"{k.split('.')[-1]} {v}"
                         for k, v in kept.items()) or "all"
    cfg = yaml.safe_load(RunPaths(root).config.read_text())
    return str(cfg.get("strategy", {}).get("name", name))


def collect(folder: str | Path) -> list[RunPoints]:
    folder = Path(folder).absolute()
    trials = json.loads((folder / TRIALS_FILE).read_text()) if (folder / TRIALS_FILE).is_file() else None
    replicates = list(DEFAULT_REPLICATES)
    if (folder / SWEEP_FILE).is_file():
        replicates = list((yaml.safe_load((folder / SWEEP_FILE).read_text()) or {}).get("replicates", replicates))
    runs = []
    for root in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        paths = RunPaths(root)
        if not (paths.config.is_file() and paths.state.is_file()):
            continue
        if trials is not None and root.name not in trials:
            continue  # a folder the sweep does not know (left from an earlier grid)
        state = RunState.load(paths)
        points = [m for m in read_jsonl(paths.metrics) if m.get("kind") in ("round", "final")]
        values = trials[root.name] if trials is not None else None
        runs.append(RunPoints(root.name, _setting_of(root.name, root, values, replicates), points,
                              int(state.n_train or 0), state.phase == "done", root, _replicate_of(root, replicates)))
    return runs


def _replicate_of(root: Path, replicates: list[str]) -> str:
    """'cv.fold=0, seed=1': the run's values of the replicate keys, read from its config."""
    cfg = yaml.safe_load(RunPaths(root).config.read_text()) or {}
    parts = []
    for key in replicates:
        node: Any = cfg
        for k in key.split("."):
            node = node.get(k) if isinstance(node, dict) else None
        parts.append(f"{key}={node}")
    return ", ".join(parts)


def _mean_std(xs: list[float]) -> tuple[float, float]:
    a = np.asarray(xs, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def _cell(xs: list[float], digits: int = 4) -> str:
    if not xs:
        return "-"
    m, s = _mean_std(xs)
    return f"{m:.{digits}f} ± {s:.{digits}f} ({len(xs)})"


def _by_setting(runs: list[RunPoints]) -> dict[str, list[RunPoints]]:
    groups: dict[str, list[RunPoints]] = defaultdict(list)
    for r in runs:
        groups[r.setting].append(r)
    return dict(groups)


def _steps(run: RunPoints) -> list[tuple[str, dict]]:
    return [("final" if p["kind"] == "final" else str(p["round"]), p) for p in run.points]


def report_markdown(folder: Path, runs: list[RunPoints]) -> str:
    groups = _by_setting(runs)
    lines = [f"# Comparison: {folder.name}", "",
             f"{len(runs)} run(s), {sum(r.done for r in runs)} finished. Dice: dataset-level, mean over foreground "
             "classes, on each run's validation patients; mean ± std (number of runs).", "",
             "## Final Dice (budget spent)", "",
             "| setting | labelled (% of training pool) | final Dice | AP Pearson r (mean over rounds) |",
             "| --- | --- | --- | --- |"]
    for setting, members in groups.items():
        finals = [p for r in members for k, p in _steps(r) if k == "final" and p.get("val_dice") is not None]
        frac = [p["labeled_count"] / r.n_train for r in members for k, p in _steps(r) if k == "final" and r.n_train]
        pear = [p["ap_pearson"] for r in members for k, p in _steps(r) if p.get("ap_pearson") is not None]
        lab = f"{100 * np.mean(frac):.1f}%" if frac else "-"
        lines.append(f"| {setting} | {lab} | {_cell([p['val_dice'] for p in finals])} | {_cell(pear, 3)} |")
    lines += ["", "## Dice by round", "", "| setting | round | labelled (mean) | Dice |", "| --- | --- | --- | --- |"]
    for setting, members in groups.items():
        by_step: dict[str, list[dict]] = defaultdict(list)
        for r in members:
            for k, p in _steps(r):
                by_step[k].append(p)
        for k, ps in by_step.items():
            dice = [p["val_dice"] for p in ps if p.get("val_dice") is not None]
            lines.append(f"| {setting} | {k} | {np.mean([p['labeled_count'] for p in ps]):.0f} | {_cell(dice)} |")
    return "\n".join(lines) + "\n"


def report_csv(runs: list[RunPoints]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["setting", "run", "round", "labelled", "labelled_frac", "val_dice", "ap_error", "ap_pearson"])
    for r in runs:
        for k, p in _steps(r):
            w.writerow([r.setting, r.name, k, p["labeled_count"],
                        f"{p['labeled_count'] / r.n_train:.5f}" if r.n_train else "",
                        p.get("val_dice"), p.get("ap_error"), p.get("ap_pearson")])
    return buf.getvalue()


def curves_png(runs: list[RunPoints]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for setting, members in _by_setting(runs).items():
        steps = [k for k, _ in _steps(max(members, key=lambda r: len(r.points)))]
        xs, ms, ss, pr, pr_x = [], [], [], [], []
        for i, k in enumerate(steps):
            ps = [(r, r.points[i]) for r in members if i < len(r.points) and r.points[i].get("val_dice") is not None]
            if not ps:
                continue
            xs.append(100 * np.mean([p["labeled_count"] / max(r.n_train, 1) for r, p in ps]))
            m, s = _mean_std([p["val_dice"] for _, p in ps])
            ms.append(m)
            ss.append(s)
            rs = [p["ap_pearson"] for _, p in ps if p.get("ap_pearson") is not None]
            if rs and k != "final":
                pr.append(np.mean(rs))
                pr_x.append(int(k))
        if len(xs) == 1 and xs[0] >= 99:  # the full-data reference: a level to reach, not a point at 100%
            # grey, outside the colour cycle: an explicit cycle colour would not advance the cycle and
            # the next strategy's curve would take the same colour
            ax1.axhline(ms[0], ls="--", color="0.35", label=f"{setting} (all labelled)")
            ax1.axhspan(ms[0] - ss[0], ms[0] + ss[0], color="0.35", alpha=0.1)
            continue
        (line,) = ax1.plot(xs, ms, "o-", label=setting)
        ax1.fill_between(xs, np.subtract(ms, ss), np.add(ms, ss), color=line.get_color(), alpha=0.15)
        if pr:
            ax2.plot(pr_x, pr, "o-", color=line.get_color(), label=setting)
    ax1.set_xlabel("labelled (% of training pool)")
    ax1.set_ylabel("validation Dice (mean fg)")
    ax1.set_ylim(0, 1)
    ax1.legend(fontsize=7)
    ax1.set_title("learning curves (mean ± std)")
    ax2.set_xlabel("round")
    ax2.set_ylabel("Pearson r, AP vs actual Dice")
    ax2.set_ylim(-1, 1)
    ax2.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax2.set_title("accuracy predictor health")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def write_report(folder: str | Path) -> Path:
    folder = Path(folder).absolute()
    runs = collect(folder)
    if not runs:
        raise FileNotFoundError(f"{folder}: no run folders (with config.yaml and state.json) to compare")
    atomic_write_text(folder / "report.csv", report_csv(runs))
    atomic_write_bytes(folder / "curves.png", curves_png(runs))
    text = report_markdown(folder, runs)
    evidence = _evidence(folder, runs)
    return atomic_write_text(folder / "report.md", text + ("\n" + evidence if evidence else ""))


def _evidence(folder: Path, runs: list[RunPoints]) -> str:
    """Validation and test side by side, paired differences against random, what was selected, AP
    consistency (evidence.png). Needs the runs' pool (class presence); skipped when it is gone."""
    from paal_ray.data.pool import Pool
    from paal_ray.sweeps.evidence_report import RunRef, evidence_markdown, evidence_png

    refs = [RunRef(r.root, r.setting, r.replicate) for r in runs if r.done and r.root is not None]
    if not refs:
        return ""
    try:
        pool = Pool.open((yaml.safe_load(RunPaths(refs[0].root).config.read_text()) or {})["pool"])
    except (OSError, KeyError, ValueError):
        return ""
    atomic_write_bytes(folder / "evidence.png", evidence_png(refs, pool.class_names))
    reference = "random" if any(r.setting == "random" for r in refs) else None
    return evidence_markdown(refs, pool.class_names, reference) + "\n![AP consistency and annotation distribution](evidence.png)\n"

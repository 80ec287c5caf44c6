"""A search sweep's report: the best configuration found, every trial with its sampled values and
metric, and the metric plotted against each searched value. Writes, atomically, beside report.md:

    search.md    the best configuration (overall and per grid combination), then all trials by metric
    search.csv   one row per trial: grid values, sampled values, metric, final Dice, rounds, status
    search.png   one panel per searched key: the metric against the sampled value (finished trials
                 as dots, trials the scheduler stopped as crosses; one colour per grid combination)

and adds a short "Search" section to report.md naming the best configuration. The metric is
recomputed from each run folder (``spec.search_metric``), so the report does not depend on Tune's
own records.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paal_ray.atomic import atomic_write_bytes, atomic_write_text, read_jsonl
from paal_ray.runs.state import RunPaths, RunState
from paal_ray.sweeps.spec import METRICS, TRIALS_FILE, SweepSpec, search_metric, trial_name


@dataclass
class SearchTrial:
    name: str
    combination: str  # the grid combination's name ("" without a grid)
    sampled: dict[str, Any]
    metric: float | None
    final_dice: float | None
    points: int  # round and final points reached
    status: str  # finished | stopped after N round(s) | unfinished


def collect_search(folder: Path, spec: SweepSpec) -> list[SearchTrial]:
    folder = Path(folder).absolute()
    trials = json.loads((folder / TRIALS_FILE).read_text()) if (folder / TRIALS_FILE).is_file() else {}
    keys = list(spec.search.space) if spec.search else []
    out = []
    for name, values in sorted(trials.items()):
        paths = RunPaths(folder / name)
        if not paths.state.is_file():
            continue
        state = RunState.load(paths)
        points = [m for m in read_jsonl(paths.metrics) if m.get("kind") in ("round", "final")]
        final = next((p.get("val_dice") for p in points if p["kind"] == "final"), None)
        if paths.stopped.is_file():
            stop = json.loads(paths.stopped.read_text())
            status = f"stopped by {stop.get('scheduler', 'the scheduler').upper()} after {len(points)} round(s)"
        else:
            status = "finished" if state.phase == "done" else f"unfinished ({state.phase})"
        out.append(SearchTrial(
            name=name, combination=trial_name({k: v for k, v in values.items() if k in spec.grid}),
            sampled={k: values[k] for k in keys if k in values},
            metric=search_metric(points, int(state.n_train or 0), spec.search.metric if spec.search else "final"),
            final_dice=final, points=len(points), status=status))
    return out


def best_trial(trials: list[SearchTrial]) -> SearchTrial | None:
    """The best finished trial by metric (a stopped trial's metric covers fewer rounds: not comparable);
    if none finished yet, the best so far."""
    scored = [t for t in trials if t.metric is not None]
    finished = [t for t in scored if t.status == "finished"]
    pool = finished or scored
    return max(pool, key=lambda t: t.metric) if pool else None


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def _config_line(t: SearchTrial, spec: SweepSpec) -> str:
    grid = f"{t.combination}; " if t.combination else ""
    return grid + ", ".join(f"{k}={_fmt(v)}" for k, v in t.sampled.items())


def search_markdown(folder: Path, spec: SweepSpec, trials: list[SearchTrial]) -> str:
    metric = spec.search.metric
    best = best_trial(trials)
    stopped = sum(t.status.startswith("stopped") for t in trials)
    lines = [f"# Search: {Path(folder).name}", "",
             f"{len(trials)} trial(s): {sum(t.status == 'finished' for t in trials)} finished, {stopped} stopped "
             f"early by the scheduler. Metric `{metric}`: {METRICS[metric]}.", "", "## Best configuration", ""]
    if best is None:
        lines.append("No trial has reported a metric yet.")
    else:
        lines += [f"**{best.name}**: {_config_line(best, spec)}; {metric} {best.metric:.4f}, final Dice "
                  f"{_fmt(best.final_dice)} ({best.status})", ""]
        combos = sorted({t.combination for t in trials})
        if len(combos) > 1:
            lines += ["| grid combination | best trial | sampled values | metric |", "| --- | --- | --- | --- |"]
            for c in combos:
                b = best_trial([t for t in trials if t.combination == c])
                if b is not None:
                    lines.append(f"| {c} | {b.name} | {_config_line(b, spec).split('; ')[-1]} | {b.metric:.4f} |")
            lines.append("")
    keys = list(spec.search.space)
    lines += ["## All trials (best first)", "",
              "| trial | " + " | ".join(keys) + f" | {metric} | final Dice | rounds | status |",
              "| --- | " + " | ".join("---" for _ in keys) + " | --- | --- | --- | --- |"]
    for t in sorted(trials, key=lambda t: -(t.metric if t.metric is not None else -1)):
        lines.append(f"| {t.name} | " + " | ".join(_fmt(t.sampled.get(k)) for k in keys)
                     + f" | {_fmt(t.metric)} | {_fmt(t.final_dice)} | {t.points} | {t.status} |")
    return "\n".join(lines) + "\n"


def search_csv(spec: SweepSpec, trials: list[SearchTrial]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    keys = list(spec.search.space)
    w.writerow(["trial", "combination", *keys, spec.search.metric, "final_dice", "rounds", "status"])
    for t in trials:
        w.writerow([t.name, t.combination, *(t.sampled.get(k) for k in keys), t.metric, t.final_dice, t.points,
                    t.status])
    return buf.getvalue()


def search_png(spec: SweepSpec, trials: list[SearchTrial]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    keys = list(spec.search.space) or ["(none)"]
    fig, axes = plt.subplots(1, len(keys), figsize=(max(6, 4 * len(keys)), 3.6), squeeze=False)
    combos = sorted({t.combination for t in trials})
    colours = {c: f"C{i % 10}" for i, c in enumerate(combos)}
    best = best_trial(trials)
    for ax, key in zip(axes[0], keys, strict=True):
        (kind, args), = spec.search.space.get(key, {"choice": [None]}).items()
        cats = [str(a) for a in args] if kind == "choice" else None
        for t in trials:
            if t.metric is None or key not in t.sampled:
                continue
            x = cats.index(str(t.sampled[key])) if cats else t.sampled[key]
            stopped = t.status.startswith("stopped")
            ax.scatter([x], [t.metric], marker="x" if stopped else "o", color=colours[t.combination],
                       s=60 if t is best else 30, edgecolors="black" if t is best else None,
                       label=(t.combination or "trials") + (" (stopped)" if stopped else ""))
        if cats:
            ax.set_xticks(range(len(cats)), cats)
            ax.set_xlim(-0.5, len(cats) - 0.5)
        if kind == "loguniform":
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # 2x10^-3 labels overlap
        ax.set_xlabel(key)
        ax.set_ylabel(f"{spec.search.metric} (validation Dice)")
        handles, labels = ax.get_legend_handles_labels()
        uniq = dict(zip(labels, handles, strict=True))
        if uniq and ax is axes[0][0]:  # one legend: the colours are the same in every panel
            ax.legend(uniq.values(), uniq.keys(), fontsize=7)
    fig.suptitle("metric against each searched value (o finished, x stopped early; large: best)", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def write_search_report(folder: str | Path, spec: SweepSpec) -> Path:
    """search.md, search.csv and search.png beside report.md, and a Search section in report.md."""
    folder = Path(folder).absolute()
    trials = collect_search(folder, spec)
    atomic_write_text(folder / "search.csv", search_csv(spec, trials))
    atomic_write_bytes(folder / "search.png", search_png(spec, trials))
    md = atomic_write_text(folder / "search.md", search_markdown(folder, spec, trials))
    report = folder / "report.md"
    best = best_trial(trials)
    if report.is_file() and best is not None:
        text = report.read_text().split("\n## Search\n")[0].rstrip("\n")
        atomic_write_text(report, text + "\n\n## Search\n\n"
                          f"Best configuration by `{spec.search.metric}`: **{best.name}**: {_config_line(best, spec)} "
                          f"({spec.search.metric} {best.metric:.4f}). All {len(trials)} trials and their sampled "
                          "values: search.md, search.csv; the metric against each searched value: search.png.\n")
    return md

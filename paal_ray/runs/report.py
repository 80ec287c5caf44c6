"""`paal status`: the state of a run, its rounds and learning curve (text table + PNG)."""

from __future__ import annotations

import json
from pathlib import Path

from paal_ray.atomic import read_jsonl
from paal_ray.runs.state import RunPaths, RunState


def _f(x, digits: int = 4) -> str:
    return "-" if x is None else f"{float(x):.{digits}f}"


def curve_points(metrics: list[dict]) -> list[dict]:
    """One point per finished round and the final training: labelled count -> validation Dice."""
    return [m for m in metrics if m.get("kind") in ("round", "final")]


def status_text(root: str | Path) -> str:
    paths = RunPaths(Path(root).absolute())
    state = RunState.load(paths)
    metrics = read_jsonl(paths.metrics)
    lines = [
        f"run        {paths.root}",
        f"strategy   {state.strategy}   fold {state.fold}",
        f"phase      {state.phase}   round {min(state.round, state.rounds)}/{state.rounds}",
        f"labelled   {state.labeled_count} / {state.budget}   (b = {state.per_round} a round, "
        f"{state.n_train} training slices)",
        f"epochs     {state.global_epoch}   best val Dice {_f(state.best_score)}",
    ]
    if state.waiting_for:
        lines.append(f"waiting    for masks in {state.waiting_for} (then `paal run --resume {paths.root}`)")
    if state.final_dice is not None:
        lines.append(f"final      val Dice {_f(state.final_dice)}")
    test_json = paths.root / "test.json"
    if test_json.is_file():
        from paal_ray.evaluation.report import one_line

        lines.append(f"test       {one_line(json.loads(test_json.read_text()))}")
    if paths.stopped.is_file():  # written by a sweep's early-stopping scheduler (sweeps/tuner.py)
        stop = json.loads(paths.stopped.read_text())
        lines.append(f"stopped    by the sweep's scheduler ({str(stop.get('scheduler', '?')).upper()}) after "
                     f"{stop.get('rounds_done')} round(s): {stop.get('metric')} {_f(stop.get('value'))} below the "
                     "rung's cutoff; not continued")
    points = curve_points(metrics)
    if points:
        lines += ["", f"{'round':>6} {'labelled':>8} {'val Dice':>9} {'per class':<28} {'AP err':>7} {'AP r':>7} "
                      f"{'query s':>8}"]
        for m in points:
            per = m.get("val_dice_per_class")
            per_s = " ".join(f"{v:.3f}" for v in per) if per else "-"
            rnd = "final" if m["kind"] == "final" else str(m["round"])
            lines.append(f"{rnd:>6} {m['labeled_count']:>8} {_f(m.get('val_dice')):>9} {per_s:<28} "
                         f"{_f(m.get('ap_error'), 3):>7} {_f(m.get('ap_pearson'), 3):>7} {_f(m.get('query_s'), 1):>8}")
    return "\n".join(lines)


def write_learning_curve(root: str | Path) -> Path | None:
    """RUN/learning_curve.png: validation Dice against labelled slices (rounds, then final)."""
    paths = RunPaths(Path(root).absolute())
    points = curve_points(read_jsonl(paths.metrics))
    epochs = [m for m in read_jsonl(paths.metrics) if m.get("kind") == "epoch" and m.get("val_dice") is not None]
    if not points and not epochs:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from paal_ray.atomic import atomic_write_bytes

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    if points:
        ax1.plot([p["labeled_count"] for p in points], [p.get("val_dice") or 0 for p in points], "o-")
    ax1.set_xlabel("labelled slices")
    ax1.set_ylabel("validation Dice (mean fg)")
    ax1.set_title("learning curve")
    if epochs:
        ax2.plot([e["epoch"] for e in epochs], [e["val_dice"] for e in epochs], ".-")
    ax2.set_xlabel("epoch")
    ax2.set_title("validation Dice by epoch")
    for ax in (ax1, ax2):
        ax.set_ylim(0, 1)  # Dice: the same scale for every run, so curves compare at a glance
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return atomic_write_bytes(paths.learning_curve, buf.getvalue())

"""The evidence sections of a comparison report (``paal report``), from finished runs.

Each run is a ``RunRef``: its folder, setting (e.g. the strategy) and replicate (the fold and seed
it shares with the other settings' runs: the same split and initial labelled set). Sections:

- Final Dice on validation and held-out test patients side by side (mean ± std over replicates);
- paired differences: every setting minus a reference setting, per replicate, and wins;
- the AP's Pearson r by round;
- the annotation distribution (share of queried slices showing each class, and the pool's);
- query time per strategy;
and one figure: AP consistency at the last round, annotation distribution.
"""

from __future__ import annotations

import io
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from paal_ray.atomic import read_jsonl
from paal_ray.runs.state import RunPaths
from paal_ray.sweeps.evidence import (
    TIMING_PARTS,
    annotation_distribution,
    ap_consistency,
    paired_differences,
    query_seconds,
    query_timings,
)


@dataclass(frozen=True)
class RunRef:
    root: Path
    setting: str
    replicate: str


def _records(ref: RunRef, kind: str) -> list[dict]:
    return [m for m in read_jsonl(RunPaths(ref.root).metrics) if m.get("kind") == kind]


def final_val_dice(ref: RunRef) -> float | None:
    recs = _records(ref, "final")
    return recs[-1].get("val_dice") if recs else None


def final_test_dice(ref: RunRef) -> float | None:
    """Mean foreground Dice (dataset-level) of the final model on the held-out test patients."""
    recs = _records(ref, "test")
    return recs[-1].get("dice") if recs else None


def _ms(xs: list[float | None], digits: int = 4) -> str:
    """The report's 'mean ± std (n)' cell over the values a run has (None and NaN left out)."""
    from paal_ray.sweeps.report import _cell

    return _cell([x for x in xs if x is not None and np.isfinite(x)], digits)


def _group(refs: list[RunRef]) -> dict[str, list[RunRef]]:
    out: dict[str, list[RunRef]] = defaultdict(list)
    for r in refs:
        out[r.setting].append(r)
    return dict(out)


def final_table(refs: list[RunRef]) -> list[str]:
    lines = ["| setting | validation Dice | test Dice (held-out patients) |", "| --- | --- | --- |"]
    for setting, members in _group(refs).items():
        lines.append(f"| {setting} | {_ms([final_val_dice(r) for r in members])} | "
                     f"{_ms([final_test_dice(r) for r in members])} |")
    return lines


def paired_table(refs: list[RunRef], reference: str, metric=final_test_dice, label: str = "test") -> list[str]:
    values = {(r.setting, r.replicate): metric(r) for r in refs}
    values = {k: v for k, v in values.items() if v is not None}
    if not any(s == reference for s, _ in values):
        return [f"(no finished '{reference}' runs to pair with)"]
    lines = [f"| setting | {label} Dice minus {reference}, per replicate | mean ± std | wins |", "| --- | --- | --- | --- |"]
    for p in paired_differences(values, reference):
        if not p.diffs:
            continue
        per = ", ".join(f"{rep}: {d:+.4f}" for rep, d in p.diffs.items())
        lines.append(f"| {p.setting} | {per} | {_ms(list(p.diffs.values()))} | {p.wins} of {len(p.diffs)} |")
    return lines


def pearson_table(refs: list[RunRef]) -> list[str]:
    rows = []
    for setting, members in _group(refs).items():
        by_round: dict[int, list[float]] = defaultdict(list)
        for r in members:
            for m in _records(r, "round"):
                if m.get("ap_pearson") is not None:
                    by_round[int(m["round"])].append(float(m["ap_pearson"]))
        if by_round:
            rows.append(f"| {setting} | " + " | ".join(f"{k}: {_ms(v, 3)}" for k, v in sorted(by_round.items())) + " |")
    if not rows:
        return ["(no strategy with an accuracy predictor)"]
    return ["| setting | Pearson r by round (mean ± std over replicates) |", "| --- | --- |", *rows]


def annotation_table(refs: list[RunRef], class_names: list[str]) -> list[str]:
    names = class_names[1:]
    lines = ["| setting | queried slices | " + " | ".join(f"show {n}" for n in names) + " | no structure |",
             "| --- | --- | " + " | ".join("---" for _ in names) + " | --- |"]
    pool_row = None
    for setting, members in _group(refs).items():
        dists = [annotation_distribution(r.root) for r in members]
        dists = [d for d in dists if d["count"][0]]
        if not dists:
            continue
        sel = np.mean([d["selected"] for d in dists], axis=0)
        none = np.mean([d["none"][0] for d in dists])
        lines.append(f"| {setting} | {np.mean([d['count'][0] for d in dists]):.0f} | "
                     + " | ".join(f"{100 * v:.1f}%" for v in sel[1:]) + f" | {100 * none:.1f}% |")
        pool_row = pool_row or dists[0]
    if pool_row:
        lines.append(f"| *training pool* | {pool_row['count'][1]} | "
                     + " | ".join(f"{100 * v:.1f}%" for v in pool_row["pool"][1:]) + f" | {100 * pool_row['none'][1]:.1f}% |")
    return lines


def query_time_table(refs: list[RunRef]) -> list[str]:
    """Per setting, a query's seconds in all and by part. Scoring is every model pass over the
    unlabelled pool, including the AP-health log's (segmenter and AP on every slice, with true Dice)
    when a run logs it for every strategy, so a strategy's own cost beyond random shows in its
    scoring's extra passes, clustering and selection."""
    lines = ["| setting | query time per round, s | scoring | clustering (KMeans) | selection |",
             "| --- | --- | --- | --- | --- |"]
    for setting, members in _group(refs).items():
        parts = [t for r in members for t in query_timings(r.root)]
        if parts:
            lines.append(f"| {setting} | " + " | ".join(_ms([t[k] for t in parts], 1 if k != "selection_s" else 3)
                                                       for k in ("total_s", *TIMING_PARTS)) + " |")
        else:  # runs from before the per-part record: the total from metrics.jsonl
            secs = [s for r in members for s in query_seconds(r.root)]
            if secs:
                lines.append(f"| {setting} | {_ms(secs, 1)} | - | - | - |")
    return lines


def evidence_markdown(refs: list[RunRef], class_names: list[str], reference: str | None) -> str:
    lines = ["## Validation and held-out test Dice", "",
             "Final model of each run; validation = the run's validation patients (the paper's number), "
             "test = held-out patients that no run trained, validated or selected on. Mean ± std (runs).", "",
             *final_table(refs)]
    if reference:
        lines += ["", f"## Paired differences against {reference}", "",
                  "Same replicate = same split and initial labelled set.", "",
                  *paired_table(refs, reference), "", *paired_table(refs, reference, final_val_dice, "validation")]
    lines += ["", "## Accuracy predictor: Pearson r (predicted vs actual Dice, unlabelled slices)", "",
              *pearson_table(refs), "", "## Annotation distribution (queried slices, initial set excluded)", "",
              *annotation_table(refs, class_names), "", "## Query time", "",
              "Mean ± std over all rounds of the runs, in seconds of wall time on the machine that ran them. *Scoring*: the "
              "model passes over the unlabelled pool, including the Pearson-r log's (segmenter and AP on every slice) "
              "where runs log it for every strategy, so random's scoring is that log's cost alone.", "",
              *query_time_table(refs)]
    return "\n".join(lines) + "\n"


def evidence_png(refs: list[RunRef], class_names: list[str]) -> bytes:
    """Left: AP consistency at the last round (one point a slice; first replicate of each setting
    with an AP). Right: share of queried slices showing each class, per setting, and the pool's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = _group(refs)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for setting, members in groups.items():
        cons = next((c for c in (ap_consistency(r.root) for r in sorted(members, key=lambda r: r.replicate)) if c), None)
        if cons is not None:
            ax1.scatter(cons["actual"], cons["predicted"], s=5, alpha=0.4,
                        label=f"{setting} (round {cons['round']}, r = {cons['pearson']:.2f})")
    ax1.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax1.set_xlabel("actual Dice (mean foreground)")
    ax1.set_ylabel("AP-predicted Dice")
    ax1.set_xlim(0, 1)
    ax1.set_ylim(0, 1)
    ax1.set_title("AP consistency, last round, unlabelled slices")
    if ax1.get_legend_handles_labels()[0]:
        ax1.legend(fontsize=7, markerscale=3)
    names = [*class_names[1:], "none"]
    bars: dict[str, list[float]] = {}
    pool = None
    for setting, members in groups.items():
        dists = [d for d in (annotation_distribution(r.root) for r in members) if d["count"][0]]
        if dists:
            bars[setting] = [*np.mean([d["selected"][1:] for d in dists], axis=0), np.mean([d["none"][0] for d in dists])]
            pool = pool or [*dists[0]["pool"][1:], dists[0]["none"][1]]
    if pool:
        bars["training pool"] = pool
    width = 0.8 / max(len(bars), 1)
    x = np.arange(len(names))
    for i, (setting, vals) in enumerate(bars.items()):
        ax2.bar(x + i * width, 100 * np.asarray(vals), width, label=setting,
                color="lightgrey" if setting == "training pool" else None, edgecolor="k" if setting == "training pool" else None)
    ax2.set_xticks(x + width * (len(bars) - 1) / 2, names)
    ax2.set_ylabel("% of slices showing it")
    ax2.set_title("annotation distribution (queried slices)")
    # Headroom above 100% for the legend, so that it never covers a bar however many settings there are.
    ax2.set_ylim(0, 100 + 8 * (1 + (len(bars) + 2) // 3))
    ax2.set_yticks(range(0, 101, 20))
    ax2.legend(fontsize=7, loc="upper center", ncol=3, frameon=False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()

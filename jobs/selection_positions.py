"""Where in the heart a strategy's queried slices lie, and what the model knew about them (issue 11,
item 6: does PAAL's AP pull it to the basal and apical slices?).

    python jobs/selection_positions.py docs/results/runs/acdc-comparison-qlr --pool pools/acdc128

For every finished run of the given sweep folders (workspaces or docs/results/runs), each round's
queried slices (rounds/NNN/selection.parquet, the initial set excluded) against that round's
unlabelled pool (rounds/NNN/ap_health.parquet, written when a run logs the AP's Pearson r):

- *ends*: the share lying in the outer slice (``--ends``: slices) of their volume at either end (the
  apex and the base of a short-axis stack, where structures appear and vanish), against the pool's;
- *empty*: the share whose label shows no foreground class;
- *predicted* and *actual*: the AP's predicted and the segmenter's actual mean foreground Dice on
  the queried slices at the time they were queried, against the unlabelled pool's means;
- the criterion itself: as many slices a round taken by the lowest actual Dice (an oracle that
  knows the labels: where a perfect AP would point) and by the highest polling weight (the AP alone),
  their ends and empty shares, and how many of the strategy's picks each would have made too.

Prints one table per sweep folder: a row per strategy (its runs pooled), and the pool.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from paal_ray.query.polling import polling_weights


def volume_positions(slice_ids: list[str], end_slices: int = 1) -> dict[str, bool]:
    """slice id ('case/0007') -> whether it is among the ``end_slices`` first or last of its volume."""
    by_volume: dict[str, list[int]] = defaultdict(list)
    for s in slice_ids:
        case, idx = s.rsplit("/", 1)
        by_volume[case].append(int(idx))
    out = {}
    for case, idxs in by_volume.items():
        lo, hi = min(idxs), max(idxs)
        for i in idxs:
            out[f"{case}/{i:04d}"] = i - lo < end_slices or hi - i < end_slices
    return out


def _fg_mean(a: np.ndarray) -> np.ndarray:
    return a[:, 1:].mean(axis=1) if a.ndim == 2 and a.shape[1] > 1 else np.full(len(a), np.nan)


def run_rows(run: Path, at_end: dict[str, bool], empty: set[str]) -> dict[str, list] | None:
    """The queried slices of one run, round by round, with what the round's unlabelled pool held."""
    out: dict[str, list] = defaultdict(list)
    for d in sorted((run / "rounds").glob("[0-9][0-9][0-9]")):
        sel, health = d / "selection.parquet", d / "ap_health.parquet"
        if not (sel.is_file() and health.is_file()):
            continue
        chosen = pq.read_table(sel, columns=["slice_id"]).column("slice_id").to_pylist()
        h = pq.read_table(health)
        ids = h.column("slice_id").to_pylist()
        pred_acc = np.asarray(h.column("pred_acc").to_pylist(), dtype=np.float32)  # [N, C], read once
        pred, true = _fg_mean(pred_acc), _fg_mean(np.asarray(h.column("true_dice").to_pylist(), dtype=float))
        where = {s: i for i, s in enumerate(ids)}
        picked = [where[s] for s in chosen if s in where]
        out["ends"] += [at_end[s] for s in chosen]
        out["empty"] += [s in empty for s in chosen]
        out["pred"] += list(pred[picked])
        out["true"] += list(true[picked])
        # The same number of slices chosen by the criterion itself: the lowest actual Dice (an oracle
        # that knows the labels) and the highest polling weight (the AP alone, no clusters: PAAL (AP
        # only)'s choice, from the same model's predictions).
        k = len(picked)
        oracle = np.argsort(np.nan_to_num(true, nan=np.inf), kind="stable")[:k]
        weight = polling_weights(pred_acc)
        lowest = np.lexsort((np.arange(len(weight)), -weight))[:k]
        in_oracle, in_lowest = set(oracle.tolist()), set(lowest.tolist())
        out["in_oracle"] += [i in in_oracle for i in picked]
        out["in_lowest"] += [i in in_lowest for i in picked]
        for name, idx in (("oracle", oracle), ("lowest", lowest)):
            out[f"{name}_ends"] += [at_end[ids[i]] for i in idx]
            out[f"{name}_empty"] += [ids[i] in empty for i in idx]
        out["pool_pred"].append(float(np.nanmean(pred)))
        out["pool_true"].append(float(np.nanmean(true)))
    return out if out["ends"] else None


def position_tables(groups: dict[str, list[Path]], pool, ends: int = 1) -> list[str]:
    """Markdown lines: the two tables for finished runs grouped by label (label -> run folders)."""
    from paal_ray.sweeps.evidence import class_presence

    ids = pool.slice_ids()
    at_end = volume_positions(ids, ends)
    empty = {s for s, shows in zip(ids, class_presence(pool, ids), strict=True) if not shows[1:].any()}
    by_label: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    train_ids: set[str] = set()
    for label, runs in groups.items():
        for run in runs:
            rows = run_rows(run, at_end, empty)
            if rows is None:
                continue
            for k, v in rows.items():
                by_label[label][k] += v
            train_ids |= set(json.loads((run / "split.json").read_text()).get("train_ids", []))
    if not by_label:
        return []
    lines = [f"Ends: the {ends} outer slice(s) at each end of a volume (the apex and the base); Dice: mean "
             "foreground, at the time of the query.", "",
             "| strategy | queried | at the ends | empty | AP's predicted Dice | actual Dice | "
             "unlabelled pool: predicted / actual |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in by_label.items():
        lines.append(f"| {name} | {len(r['ends'])} | {np.mean(r['ends']):.1%} | {np.mean(r['empty']):.1%} | "
                     f"{np.nanmean(r['pred']):.3f} | {np.nanmean(r['true']):.3f} | "
                     f"{np.mean(r['pool_pred']):.3f} / {np.mean(r['pool_true']):.3f} |")
    ref = sorted(train_ids) or ids
    lines += [f"| *training pools (union) of these runs* | {len(ref)} | {np.mean([at_end[s] for s in ref]):.1%} | "
              f"{np.mean([s in empty for s in ref]):.1%} | - | - | - |", "",
              "The criterion against the strategy: each round, as many slices as it queried, taken by the lowest "
              "actual Dice (an oracle that knows the labels: where a perfect AP would point) and by the highest "
              "polling weight mean_j -log p_ij (the AP alone, no clusters: PAAL (AP only)'s rule).", "",
              "| strategy | its picks among the oracle's | oracle's: at the ends | oracle's: empty | "
              "its picks among the top weights | top weights: at the ends | top weights: empty |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in by_label.items():
        lines.append(f"| {name} | {np.mean(r['in_oracle']):.1%} | {np.mean(r['oracle_ends']):.1%} | "
                     f"{np.mean(r['oracle_empty']):.1%} | {np.mean(r['in_lowest']):.1%} | "
                     f"{np.mean(r['lowest_ends']):.1%} | {np.mean(r['lowest_empty']):.1%} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("sweeps", nargs="+", type=Path, help="sweep folders holding finished run folders")
    p.add_argument("--pool", type=Path, required=True, help="the runs' pool (its labels say which slices are empty)")
    p.add_argument("--ends", type=int, default=1, help="slices at each end of a volume counted as its ends (default 1)")
    a = p.parse_args(argv)
    from paal_ray.data.pool import Pool, PoolError

    try:
        pool = Pool.open(a.pool)
    except (PoolError, OSError) as e:
        raise SystemExit(f"--pool {a.pool}: {e}") from e
    for sweep in a.sweeps:
        if not sweep.is_dir():
            raise SystemExit(f"{sweep}: no such folder")
        groups: dict[str, list[Path]] = defaultdict(list)
        for run in sorted(d for d in sweep.iterdir() if (d / "state.json").is_file()):
            state = json.loads((run / "state.json").read_text())
            if state.get("phase") == "done":
                groups[state["strategy"]].append(run)
        print(f"\n{sweep}\n")
        print("\n".join(position_tables(dict(sorted(groups.items())), pool, a.ends)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

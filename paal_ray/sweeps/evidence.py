"""What a strategy comparison needs beyond mean Dice: paired differences, what was selected, how
well the AP predicted, how long queries took. Read from finished run folders only.

- ``paired_differences``: per replicate (same fold and seed: the same initial set and split), a
  strategy's final Dice minus a reference strategy's, and how many replicates it wins.
- ``annotation_distribution``: the share of queried slices (the initial set excluded) that show
  each class, against the training pool's share (the paper's Figure 3).
- ``ap_consistency``: predicted against actual per-slice Dice on the unlabelled pool at a round,
  with Pearson r (the paper's Figure 1; from ``rounds/NNN/ap_health.parquet``).
- ``query_seconds``: wall time of each query (the paper's Table 3: reading, inference, KMeans and
  selection; training excluded); ``query_timings`` splits it into scoring, clustering and selection.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from paal_ray.atomic import read_jsonl
from paal_ray.query.api import AP_HEALTH_FILE
from paal_ray.runs.state import Labelled, RunPaths


@dataclass(frozen=True)
class Paired:
    setting: str
    reference: str
    diffs: dict[str, float]  # replicate -> setting's Dice minus the reference's

    @property
    def wins(self) -> int:
        return sum(d > 0 for d in self.diffs.values())


def paired_differences(values: dict[tuple[str, str], float], reference: str) -> list[Paired]:
    """``values[(setting, replicate)]`` = a final Dice. For each other setting: its difference to
    ``reference`` on every replicate both have."""
    settings = sorted({s for s, _ in values} - {reference})
    out = []
    for s in settings:
        diffs = {rep: v - values[(reference, rep)] for (ss, rep), v in values.items()
                 if ss == s and (reference, rep) in values}
        out.append(Paired(s, reference, dict(sorted(diffs.items()))))
    return out


def _pool_of(root: Path):
    from paal_ray.data.pool import Pool

    cfg = yaml.safe_load(RunPaths(root).config.read_text())
    return Pool.open(cfg["pool"])


def class_presence(pool, slice_ids: list[str]) -> np.ndarray:
    """[N, K] bool: which classes each slice shows (from the pool's index; no images read)."""
    index = pool.index(["slice_id", "present"])
    present = dict(zip(index.column("slice_id").to_pylist(), index.column("present").to_pylist(), strict=True))
    return np.asarray([present[s] for s in slice_ids], dtype=bool).reshape(len(slice_ids), pool.num_classes)


def annotation_distribution(root: str | Path, pool=None) -> dict[str, list[float]]:
    """{"selected": share of queried slices showing each class, "pool": the same for the training
    pool, "none": [share of queried slices with no foreground, the pool's]}; index 0 = background."""
    root = Path(root)
    pool = pool or _pool_of(root)
    labelled = Labelled.load(RunPaths(root))
    queried = [s for r in sorted(labelled.rounds) for s in labelled.rounds[r]]
    train_ids = json.loads(RunPaths(root).split.read_text())["train_ids"]
    sel, all_ = class_presence(pool, queried), class_presence(pool, train_ids)
    return {"selected": sel.mean(0).tolist() if len(sel) else [], "pool": all_.mean(0).tolist(),
            "none": [float((~sel[:, 1:].any(1)).mean()) if len(sel) else float("nan"),
                     float((~all_[:, 1:].any(1)).mean())],
            "count": [len(queried), len(train_ids)]}


def ap_consistency(root: str | Path, round_index: int | None = None) -> dict | None:
    """Predicted and actual mean foreground Dice of every unlabelled slice at a round (default: the
    last round with AP health data), and their Pearson r; None when the run has none."""
    import pyarrow.parquet as pq

    paths = RunPaths(Path(root))
    rounds = sorted(int(p.parent.name) for p in paths.root.glob(f"rounds/*/{AP_HEALTH_FILE}"))
    if not rounds:
        return None
    r = rounds[-1] if round_index is None else round_index
    table = pq.read_table(paths.round_dir(r) / AP_HEALTH_FILE)
    pred = np.asarray(table.column("pred_acc").to_pylist(), np.float64)
    true = np.asarray(table.column("true_dice").to_pylist(), np.float64)
    p, t = pred[:, 1:].mean(1), true[:, 1:].mean(1)  # foreground classes, as the reported Dice
    return {"round": r, "predicted": p, "actual": t, "pearson": float(np.corrcoef(p, t)[0, 1]),
            "pearson_all_classes": float(np.corrcoef(pred.mean(1), true.mean(1))[0, 1])}


def query_seconds(root: str | Path) -> list[float]:
    return [float(m["query_s"]) for m in read_jsonl(RunPaths(Path(root)).metrics)
            if m.get("kind") == "round" and m.get("query_s") is not None]


TIMING_PARTS = ("scoring_s", "clustering_s", "selection_s")


def query_timings(root: str | Path) -> list[dict[str, float]]:
    """Each query's time split as the query engine measured it (rounds/NNN/query.json ``timings``):
    scoring (the model passes over the unlabelled pool), clustering (KMeans) and selection, with
    the total. Rounds without a record are left out."""
    out = []
    for d in sorted((Path(root) / "rounds").glob("[0-9][0-9][0-9]")):
        q = d / "query.json"
        timings = (json.loads(q.read_text()).get("timings") or {}) if q.is_file() else {}
        if "total_s" in timings:
            out.append({k: float(timings.get(k, 0.0)) for k in ("total_s", *TIMING_PARTS)})
    return out


def by_setting(pairs: list[tuple[str, float]]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = defaultdict(list)
    for k, v in pairs:
        out[k].append(v)
    return dict(out)

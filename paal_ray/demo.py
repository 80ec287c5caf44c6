"""`paal demo`: the whole product on a laptop in a few minutes.

phantoms -> ingest (64 px) -> a PAAL run and a random-selection run from the same initial set (same
seed and fold), both with the CPU preset on the embedded local Ray -> validation Dice by round,
side by side. Every step is the product's own code path; re-running resumes what is there. Both
runs query by IQ (the paper gives the baselines a fixed interval; sweeps and ``paal run`` do), so
the random run adopts the PAAL run's round 0 (identical training, see ``runs.shared_round``) and
the two differ by their selections alone.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from paal_ray.atomic import read_jsonl
from paal_ray.config import load_config
from paal_ray.data.pool import Pool
from paal_ray.runs.machine import RunMachine
from paal_ray.runs.report import write_learning_curve
from paal_ray.runs.state import RunPaths

DEMO_CASES = 20
DEMO_SIZE = 64


def demo_overrides(pool: Path, runs: Path, rounds: int, seed: int) -> list[str]:
    # 4 logical CPUs on the local Ray: Ray Train's worker plus headroom for Ray Data, which stalls
    # behind training otherwise (the machine may still have only 2 cores).
    return [f"pool={pool}", f"workspace={runs}", f"seed={seed}", f"budget.rounds={rounds}",
            "budget.init_ratio=0.05", "budget.max_ratio=0.2", "schedule.mode=iq", "ray.num_cpus=4",
            "scaling.cpus_per_worker=2", "scaling.score_threads=2"]


def _run(strategy: str, overrides: list[str], echo: Callable[[str], None]) -> Path:
    cfg = load_config("cpu", overrides + [f"name={strategy}", f"strategy.name={strategy}"])
    root = (Path(cfg.workspace) / cfg.name).absolute()
    machine = RunMachine.open_or_create(cfg, root, echo=echo)
    t0 = time.perf_counter()
    machine.run()
    write_learning_curve(root)
    echo(f"[{strategy}] finished in {time.perf_counter() - t0:.0f} s: {root}")
    return root


def dice_table(runs: dict[str, Path]) -> str:
    """Rows: round (labelled count) and final; columns: one Dice a run."""
    curves = {name: [m for m in read_jsonl(RunPaths(root).metrics) if m["kind"] in ("round", "final")]
              for name, root in runs.items()}
    names = list(runs)
    n = max(len(c) for c in curves.values())
    lines = [f"{'round':>6} {'labelled':>8} " + " ".join(f"{name + ' Dice':>12}" for name in names)]
    for i in range(n):
        first = next(c[i] for c in curves.values() if i < len(c))
        label = "final" if first["kind"] == "final" else str(first["round"])
        cells = []
        for name in names:
            c = curves[name]
            cells.append(f"{c[i]['val_dice']:>12.4f}" if i < len(c) and c[i].get("val_dice") is not None else f"{'-':>12}")
        lines.append(f"{label:>6} {first['labeled_count']:>8} " + " ".join(cells))
    # Per class at the end, and what each strategy chose to label: where strategies differ
    # (small structures in few slices).
    for name, c in curves.items():
        final = c[-1] if c else {}
        per = final.get("val_dice_per_class") or []
        pool = Pool.open(load_config(RunPaths(runs[name]).config).pool)
        classes = pool.class_names[1:]
        if per:
            lines.append(f"{name} {final['kind']} Dice per class: "
                         + ", ".join(f"{n} {d:.3f}" for n, d in zip(classes, per[1:], strict=False)))
        labelled_path = RunPaths(runs[name]).labelled
        if labelled_path.is_file():
            ids = set(json.loads(labelled_path.read_text())["labelled"])
            present = pool.index(["slice_id", "present"]).to_pydict()
            shown = [flags for sid, flags in zip(present["slice_id"], present["present"], strict=True) if sid in ids]
            lines.append(f"{name} labelled {len(shown)} slices; showing each class: " + ", ".join(
                f"{n} {sum(f[k] for f in shown)}" for k, n in enumerate(classes, start=1)))
    return "\n".join(lines)


def run_demo(workspace: str | Path, *, rounds: int = 2, seed: int = 0,
             echo: Callable[[str], None] = print) -> str:
    from paal_ray.cluster import connect
    from paal_ray.data.ingest import IngestOptions, ingest
    from paal_ray.data.phantoms import PhantomSpec, write_phantoms

    ws = Path(workspace).absolute()
    ws.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    overrides = demo_overrides(ws / "pool", ws / "runs", rounds, seed)
    cfg = load_config("cpu", overrides)
    connect(cfg.ray.address, num_cpus=cfg.ray.num_cpus, object_store_memory=cfg.ray.object_store_memory)
    source, pool = ws / "phantoms", ws / "pool"
    if not source.exists():
        echo(f"[demo] writing {DEMO_CASES} phantom volumes to {source}")
        write_phantoms(source, PhantomSpec(cases=DEMO_CASES, size=DEMO_SIZE, slices=16, seed=seed), log=echo)
    if not pool.exists():
        echo(f"[demo] ingesting into {pool} at {DEMO_SIZE} px")
        ingest(source, pool, IngestOptions(layout="msd", size=DEMO_SIZE), log=echo)
    runs = {name: _run(name, overrides, echo) for name in ("paal", "random")}
    table = dice_table(runs)
    echo("")
    echo(f"Validation Dice (mean foreground) by round, same initial set, seed {seed}:")
    echo(table)
    from paal_ray.sweeps.report import write_report

    report = write_report(ws / "runs")
    echo(f"\n[demo] learning curves: {report.with_name('curves.png')}; one seed decides little (the "
         "lesion is learnt or not by chance): `paal sweep jobs/sweeps/demo-strategies.yaml` compares "
         "strategies over seeds")
    echo(f"[demo] done in {time.perf_counter() - t0:.0f} s; `paal status {runs['paal']}` for details, "
         f"`paal serve {runs['paal'].parent}` to browse the selections over HTTP")
    return table

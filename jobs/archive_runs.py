"""Keep a finished sweep's evidence in the repository: every run folder without its weights.

    python jobs/archive_runs.py WORKSPACE/acdc-comparison-qlr WORKSPACE/acdc-full --out docs/results/runs \\
        --final-noise final-noise.jsonl

Run folders live in a workspace on the machine that ran them, and a machine can be lost with them
(session 12 lost every ACDC run folder the pages were written from). What a page reads from a run
(config.yaml, state.json, split.json, labelled.json, metrics.jsonl, versions.json, each round's
query.json, train.json, selection.parquet and ap_health.parquet) is a few hundred kilobytes; the
checkpoints under train/ are megabytes and are not evidence. This copies each *finished* run folder
of each sweep, less train/, train-pool/, labels/ and pictures, to OUT/SWEEP/RUN (with the sweep's
sweep.yaml and trials.json), so that ``jobs/acdc_results.py OUT/SWEEP ... --pool POOL`` writes the
same page and ``jobs/final_noise.py OUT/SWEEP/RUN`` retrains the same labelled set.

``--final-noise``: the retraining records (jobs/final_noise.py --out) of the archived runs are merged
into OUT/final-noise.jsonl with ``run`` rewritten to ``SWEEP/RUN`` (one line per run, seed, settings
and epochs; a record already there is kept). Each run folder is written to a temporary name and
renamed; an archived run is replaced only by a finished copy of itself.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

# What is not evidence: weights (train/), a human oracle's pool and masks (kept by the hospital),
# pictures regenerated from the records.
SKIP_DIRS = {"train", "train-pool", "labels", ".tune"}
SKIP_SUFFIXES = {".png", ".pt", ".pkl"}
SWEEP_FILES = ("sweep.yaml", "trials.json")
MAX_FILE_BYTES = 5 << 20  # a record larger than this is not a record: refuse it, naming it


def run_key(run: str | Path) -> str:
    """``.../acdc-comparison-qlr/fold-0_name-paal`` -> ``acdc-comparison-qlr/fold-0_name-paal``: a
    run's name wherever its folder lies (a workspace or this archive)."""
    return "/".join(Path(run).parts[-2:])


def _finished(run: Path) -> bool:
    state = run / "state.json"
    return state.is_file() and json.loads(state.read_text()).get("phase") == "done"


def _evidence_files(run: Path) -> list[Path]:
    out = []
    for p in sorted(run.rglob("*")):
        rel = p.relative_to(run)
        if p.is_dir() or rel.parts[0] in SKIP_DIRS or p.suffix in SKIP_SUFFIXES or p.name.startswith("."):
            continue
        if p.stat().st_size > MAX_FILE_BYTES:
            raise SystemExit(f"{p}: {p.stat().st_size / 2**20:.1f} MiB, more than a run record should be "
                             f"({MAX_FILE_BYTES >> 20} MiB); not archived")
        out.append(rel)
    return out


def archive_run(run: Path, dest: Path) -> int:
    """Copy ``run``'s evidence to ``dest`` through a temporary folder; returns the bytes copied."""
    files = _evidence_files(run)
    # Hidden names: a reader of the archive (collect) skips them if a copy is interrupted.
    tmp, old = dest.with_name(f".{dest.name}.tmp"), dest.with_name(f".{dest.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    size = 0
    for rel in files:
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(run / rel, tmp / rel)
        size += (run / rel).stat().st_size
    if dest.exists():
        dest.rename(old)
    tmp.rename(dest)
    shutil.rmtree(old, ignore_errors=True)
    return size


def merge_final_noise(sources: list[Path], archived: set[str], out: Path) -> int:
    """Append the records of archived runs to ``out`` (run rewritten to its key); returns how many."""
    from final_noise import variant  # jobs/, this script's folder, is on sys.path

    from paal_ray.atomic import atomic_write_text

    lines = out.read_text().splitlines() if out.is_file() else []
    seen = set()
    for line in lines:
        r = json.loads(line)
        seen.add((r["run"], r["seed"], variant(r["set"]), r["epochs"]))
    added = 0
    for src in sources:
        for n, line in enumerate(src.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
                key = (run_key(r["run"]), r["seed"], variant(r["set"]), r["epochs"])
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise SystemExit(f"{src}:{n}: not a jobs/final_noise.py record ({e})") from e
            if key[0] in archived and key not in seen:
                seen.add(key)
                lines.append(json.dumps({**r, "run": key[0]}))
                added += 1
    if added:
        atomic_write_text(out, "\n".join(lines) + "\n")
    return added


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("sweeps", nargs="+", type=Path, help="sweep folders (WORKSPACE/NAME) holding run folders")
    p.add_argument("--out", type=Path, required=True, help="the archive (e.g. docs/results/runs)")
    p.add_argument("--final-noise", type=Path, action="append", default=[],
                   help="jobs/final_noise.py --out files whose records of the archived runs are kept (repeatable)")
    a = p.parse_args(argv)
    for f in [*a.sweeps, *a.final_noise]:
        if not f.exists():
            raise SystemExit(f"{f}: no such {'file' if f in a.final_noise else 'folder'}")
    archived = {run_key(d) for d in a.out.glob("*/*") if (d / "state.json").is_file()}
    for sweep in a.sweeps:
        dest = a.out / sweep.name
        dest.mkdir(parents=True, exist_ok=True)
        runs = sorted(d for d in sweep.iterdir() if d.is_dir() and (d / "config.yaml").is_file())
        finished = {d: _finished(d) for d in runs}  # one read of each state.json
        waiting = [d.name for d in runs if not finished[d]]
        done = [d for d in runs if finished[d]]
        for name in SWEEP_FILES:
            if (sweep / name).is_file():
                shutil.copy2(sweep / name, dest / name)
        for run in done:
            size = archive_run(run, dest / run.name)
            archived.add(run_key(run))
            print(f"{run_key(run)}: {size / 1024:.0f} KiB")
        print(f"{sweep}: {len(done)} finished run(s) archived"
              + (f"; not finished, left out: {', '.join(waiting)}" if waiting else ""))
    if a.final_noise:
        n = merge_final_noise(a.final_noise, archived, a.out / "final-noise.jsonl")
        print(f"{a.out / 'final-noise.jsonl'}: {n} retraining record(s) added")
    return 0


if __name__ == "__main__":
    sys.exit(main())

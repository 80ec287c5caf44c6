"""Run an evidence campaign unattended and resumably: AL sweeps one after another, each finished
labelled set retrained seed by seed beside them, every finished run archived into the repository.

    python jobs/evidence_queue.py --workspace /work/exp/ws12 --pool /work/exp/pools/acdc128 \\
        --sweeps acdc-ablation-qlr acdc-variant-apval acdc-comparison-qlr-more \\
        --records /work/exp/final-noise.jsonl --archive docs/results/runs \\
        --retrain-set train.channels_last=true --retrain-set train.lr=0.003 --code /work/wt/exp12

Two lanes, one thread each (`scaling.train_threads=1`: two 2-thread trainings on 2 cores spin
against each other). Lane 1 runs `paal sweep jobs/sweeps/SWEEP.yaml` for each sweep in turn; a
sweep resumes from its workspace, so the same command after a stop (or a lost session) goes on
where it stopped. Lane 2 retrains the final phase of every labelled set that is final (its queries
done) with `jobs/final_noise.py`, seed 0 of every ready set before seed 1 of any (a partial
ranking on one seed comes early), appends each result to --records, and after each archives the
finished runs with `jobs/archive_runs.py` (run folders less weights: evidence that outlives the
machine). `--code DIR` runs the AL loops and the retraining from another checkout (a frozen
worktree, so that every run of a campaign has one commit while this one moves on). `--dry-run`
prints what would run. Stopping this process (Ctrl-C, SIGTERM) stops both lanes' children.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from final_noise import variant  # jobs/, this script's folder, is on sys.path

REPO = Path(__file__).resolve().parents[1]


def ready_runs(workspace: Path, sweeps: list[str]) -> list[Path]:
    """Run folders whose labelled set is final: every query done, the final phase begun or over."""
    out = []
    for sweep in sweeps:
        for state in sorted((workspace / sweep).glob("*/state.json")):
            s = json.loads(state.read_text())
            if s["round"] >= s["rounds"] and s["phase"] in ("final", "test", "done"):
                out.append(state.parent)
    return out


def pending_retrainings(runs: list[Path], records: Path, overrides: list[str], seeds: list[int]) -> list[tuple[Path, int]]:
    """(run, seed) pairs not yet in --records with these settings, seed-major (the thread count is
    where a training runs, not what it trains, so it does not tell two records apart)."""
    key = variant(overrides)
    done = set()
    if records.is_file():
        for line in records.read_text().splitlines():
            r = json.loads(line)
            if variant(r["set"]) == key:
                done.add((r["run"], r["seed"]))
    return [(run, seed) for seed in seeds for run in runs if (str(run), seed) not in done]


class Lanes:
    """The children of both lanes, each in its own process group, stopped together."""

    def __init__(self, env: dict[str, str], cwd: Path):
        self.env, self.cwd, self.children, self.stopping = env, cwd, [], False

    def call(self, cmd: list[str], log, cwd: Path | None = None) -> int:
        if self.stopping:
            return -1
        env = self.env if cwd is None else {**self.env, "PYTHONPATH": str(cwd)}
        child = subprocess.Popen(cmd, cwd=cwd or self.cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        self.children.append(child)
        try:
            return child.wait()
        finally:
            self.children.remove(child)

    def stop(self) -> None:
        self.stopping = True
        for child in list(self.children):
            try:
                os.killpg(child.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--workspace", type=Path, required=True, help="the campaign's workspace (absolute path)")
    p.add_argument("--pool", type=Path, required=True, help="the pool every sweep runs on")
    p.add_argument("--sweeps", nargs="+", required=True, help="sweep names (jobs/sweeps/NAME.yaml), run in this order")
    p.add_argument("--records", type=Path, required=True, help="retraining records (jobs/final_noise.py --out)")
    p.add_argument("--seeds", default="0,1,2", help="retraining seeds, comma-separated (default 0,1,2)")
    p.add_argument("--retrain-set", action="append", default=[], help="jobs/final_noise.py --set (repeatable)")
    p.add_argument("--archive", type=Path, default=None, help="jobs/archive_runs.py --out after each retraining")
    p.add_argument("--code", type=Path, default=REPO, help="the checkout whose code runs (default: this one)")
    p.add_argument("--log-dir", type=Path, default=None, help="where the lanes' logs go (default: the workspace)")
    p.add_argument("--dry-run", action="store_true", help="print what would run, run nothing")
    a = p.parse_args(argv)
    for name in a.sweeps:
        if not (REPO / "jobs" / "sweeps" / f"{name}.yaml").is_file():
            raise SystemExit(f"--sweeps {name}: no jobs/sweeps/{name}.yaml")
    if not a.workspace.is_absolute():
        raise SystemExit(f"--workspace {a.workspace}: must be an absolute path (Ray Train's storage_path is)")
    if not a.pool.is_dir():
        raise SystemExit(f"--pool {a.pool}: no such pool (paal ingest writes one)")
    seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    # the children run in --code's folder: every path they get is absolute
    a.pool, a.records = a.pool.resolve(), a.records.resolve()
    a.archive = a.archive.resolve() if a.archive else None
    overrides = [*a.retrain_set, "scaling.train_threads=1"]
    code = a.code.resolve()
    sweep_cmds = [[sys.executable, "-m", "paal_ray.cli.main", "sweep", str(REPO / "jobs" / "sweeps" / f"{n}.yaml"),
                   "--set", f"pool={a.pool}", "--set", f"workspace={a.workspace}", "--set", "scaling.train_threads=1"]
                  for n in a.sweeps]

    def retrain_cmd(run: Path, seed: int) -> list[str]:
        return [sys.executable, str(code / "jobs" / "final_noise.py"), str(run), "--seeds", str(seed),
                "--out", str(a.records), *(x for o in overrides for x in ("--set", o))]

    def archive_cmd() -> list[str]:  # the sweeps begun so far
        return [sys.executable, str(REPO / "jobs" / "archive_runs.py"),
                *(str(a.workspace / n) for n in a.sweeps if (a.workspace / n).is_dir()),
                "--out", str(a.archive), "--final-noise", str(a.records)]

    if a.dry_run:
        for cmd in sweep_cmds:
            print("lane 1:", " ".join(cmd))
        for run, seed in pending_retrainings(ready_runs(a.workspace, a.sweeps), a.records, overrides, seeds):
            print("lane 2:", " ".join(retrain_cmd(run, seed)))
        if a.archive:
            print("after each retraining:", " ".join(archive_cmd()))
        return 0

    logs = a.log_dir or a.workspace
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(code), "PYTHONUNBUFFERED": "1", "RAY_AUTH_MODE": "disabled"}
    lanes = Lanes(env, code)
    signal.signal(signal.SIGTERM, lambda *_: (lanes.stop(), sys.exit(143)))
    sweeps_done = threading.Event()

    def lane1() -> None:
        with (logs / "queue-al.log").open("a") as log:
            for name, cmd in zip(a.sweeps, sweep_cmds, strict=True):
                print(f"[{time.strftime('%H:%M:%S')}] sweep {name}", flush=True)
                rc = lanes.call(cmd, log)
                if rc:
                    print(f"[{time.strftime('%H:%M:%S')}] sweep {name} exited {rc} (see {log.name})", flush=True)
        sweeps_done.set()

    threading.Thread(target=lane1, daemon=True).start()
    try:
        with (logs / "queue-retrain.log").open("a") as log:
            while True:
                finished = sweeps_done.is_set()  # read before looking, so that the last sets are not missed
                todo = pending_retrainings(ready_runs(a.workspace, a.sweeps), a.records, overrides, seeds)
                if not todo:
                    if finished:
                        break
                    time.sleep(30)
                    continue
                run, seed = todo[0]
                print(f"[{time.strftime('%H:%M:%S')}] retrain {run.parent.name}/{run.name} seed {seed} "
                      f"({len(todo)} pending)", flush=True)
                if lanes.call(retrain_cmd(run, seed), log):
                    raise SystemExit(f"retraining {run} seed {seed} failed (see {log.name})")
                if a.archive:
                    lanes.call(archive_cmd(), log, cwd=REPO)  # this checkout's archiver, whatever --code
    except KeyboardInterrupt:
        return 130
    finally:  # however this process ends, its children end with it
        lanes.stop()
    print(f"[{time.strftime('%H:%M:%S')}] queue done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Selection-service throughput and latency: 50 concurrent clients for 30 s on loopback.

A workspace of 10 runs (one waiting for the masks of a 5,000-slice selection, which annotators page
through 100 rows at a time) is served by a real `paal serve --tokens` (uvicorn; `--workers N` processes); the
clients (asyncio, keep-alive HTTP/1.1 with a bearer token) read `/runs` and random 100-row pages of
the selection, half each. Prints requests/s, p50, p99, max and errors. Goal on the 2-core
reference machine: p99 < 100 ms and no errors; on a shared machine the figures are indicative.

    python jobs/bench_serve.py
    python jobs/bench_serve.py --clients 50 --seconds 30 --rows 5000 --page 100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def write_workspace(root: Path, *, rows: int, runs: int) -> Path:
    """Run folders as the state machine leaves them (state.json, config.yaml, metrics, a round-0
    selection with the engine's columns); no pool is needed to list or page them."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from paal_ray.config import dump_config, load_config
    from paal_ray.runs.state import RunPaths, RunState

    ws = root / "ws"
    rng = np.random.default_rng(0)
    for i in range(runs):
        name = "annotate" if i == 0 else f"run-{i:02d}"
        paths = RunPaths(ws / name)
        paths.root.mkdir(parents=True)
        cfg = load_config("cpu", [f"pool={root / 'pool'}", f"workspace={ws}", f"name={name}", "oracle.kind=human"])
        paths.config.write_text(dump_config(cfg))
        RunState(name=name, strategy="paal", fold=0, rounds=5, per_round=rows, n_train=rows * 30, budget=rows * 6,
                 round=0, phase="annotate", labeled_count=rows, best_score=0.71,
                 waiting_for=str(paths.round_dir(0) / "inbox")).save(paths)
        paths.metrics.write_text("".join(json.dumps({"kind": "round", "round": r, "labeled_count": rows * (r + 1),
                                                      "val_dice": 0.5 + 0.04 * r}) + "\n" for r in range(3)))
        ids = [f"case{k // 40:04d}/{k % 40:04d}" for k in range(rows)]
        table = pa.table({"slice_id": ids, "rank": np.arange(rows, dtype=np.int32),
                          "score": np.sort(rng.random(rows))[::-1], "cluster": rng.integers(0, 50, rows).astype(np.int32),
                          "pred_acc": pa.FixedSizeListArray.from_arrays(pa.array(rng.random(rows * 4).astype(np.float32)), 4)})
        paths.round_dir(0).mkdir(parents=True)
        pq.write_table(table, paths.selection(0))
        inbox = paths.round_dir(0) / "inbox"
        inbox.mkdir()
        for sid in ids[: rows // 3]:  # a third of the masks have arrived
            (inbox / f"{sid.replace('/', '__')}.npy").write_bytes(b"")
    return ws


async def client(port: int, token: str, rows: int, page: int, stop_at: float, latencies: list, errors: list) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < stop_at:
            if random.random() < 0.5:
                path = "/runs"
            else:
                path = f"/runs/annotate/selection?offset={random.randrange(0, rows, page)}&limit={page}"
            t0 = time.perf_counter()
            writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - t0)
            if status != 200:
                errors.append(status)
    except (OSError, asyncio.IncompleteReadError) as e:
        errors.append(type(e).__name__)
    finally:
        writer.close()


async def load(port: int, token: str, args) -> tuple[list, list, float]:
    latencies, errors = [], []
    start = time.perf_counter()
    stop_at = start + args.seconds
    await asyncio.gather(*(client(port, token, args.rows, args.page, stop_at, latencies, errors)
                           for _ in range(args.clients)))
    return latencies, errors, time.perf_counter() - start


def _cpu_seconds(procs) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--rows", type=int, default=5000, help="slices in the selection being annotated")
    ap.add_argument("--page", type=int, default=100, help="rows per selection page")
    ap.add_argument("--runs", type=int, default=10, help="runs in the workspace")
    ap.add_argument("--workers", type=int, default=1, help="`paal serve --workers`")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        root = Path(tmp)
        ws = write_workspace(root, rows=args.rows, runs=args.runs)
        token = secrets.token_urlsafe(24)
        (root / "tokens").write_text(f"{token} viewer Bench\n")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        log = open(root / "serve.log", "w")
        server = subprocess.Popen([sys.executable, "-m", "paal_ray.cli.main", "serve", str(ws), "--port", str(port),
                                   "--tokens", str(root / "tokens"), "--workers", str(args.workers)],
                                  stdout=log, stderr=subprocess.STDOUT,
                                  env={**os.environ, "PYTHONPATH": str(REPO)})
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
                    break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit("server did not start:\n" + (root / "serve.log").read_text()) from None
                    time.sleep(0.3)
            print(f"server: paal serve --tokens --workers {args.workers}")
            print(f"workspace: {args.runs} runs, selection of {args.rows:,} slices; {args.clients} clients for "
                  f"{args.seconds:g} s on loopback; /runs and {args.page}-row selection pages, half each", flush=True)
            asyncio.run(load(port, token, argparse.Namespace(**{**vars(args), "seconds": 2})))  # warm-up
            load_before = os.getloadavg()[0]
            procs = [psutil.Process(server.pid), *psutil.Process(server.pid).children(recursive=True)]
            cpu = _cpu_seconds(procs)
            latencies, errors, wall = asyncio.run(load(port, token, args))
            server_cpu = _cpu_seconds(procs) - cpu
        finally:
            server.terminate()
            try:
                server.wait(60)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(10)
            log.close()
    latencies.sort()
    n = len(latencies)

    def q(p: float) -> float:
        return latencies[min(n - 1, int(p * n))] * 1e3 if n else float("nan")

    print(f"requests   {n:,} in {wall:.1f} s = {n / wall:,.0f} requests/s")
    print(f"latency    p50 {q(0.50):.1f} ms   p90 {q(0.90):.1f} ms   p99 {q(0.99):.1f} ms   max {q(1.0):.1f} ms")
    print(f"server CPU {server_cpu:.1f} s = {server_cpu / max(n, 1) * 1e3:.2f} ms a request "
          f"(at most ~{max(n, 1) / max(server_cpu, 1e-9):,.0f} requests/s a free core)")
    print(f"errors     {len(errors)}" + (f" ({sorted(set(map(str, errors)))})" if errors else ""))
    print(f"machine    {os.cpu_count()} cores, load average {load_before:.1f} before the run "
          f"(other work on the machine makes these figures indicative)")
    print(f"goal       p99 < 100 ms, no errors: {'met' if n and q(0.99) < 100 and not errors else 'NOT met'}")


if __name__ == "__main__":
    main()

"""`ray job submit` path: a real local Ray head (`ray start --head --block`, own temp dir and ports),
a small `jobs/run_al.py` job submitted with JobSubmissionClient, SUCCEEDED, run folder checked.
Independent of the test session's in-process Ray; the head is stopped by SIGTERM to its PID."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from ray_ports import free_port, worker_port_args

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture
def ray_head():
    temp = Path(tempfile.mkdtemp(prefix="paalray-", dir="/tmp"))  # short: Ray's socket paths have a length limit
    gcs, dash, client, agent_listen, agent_grpc, runtime_env, metrics = (free_port() for _ in range(7))
    cmd = [str(REPO / ".venv" / "bin" / "ray"), "start", "--head", "--block", f"--temp-dir={temp}",
           f"--port={gcs}", f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1",
           f"--ray-client-server-port={client}", *worker_port_args(),
           f"--dashboard-agent-listen-port={agent_listen}", f"--dashboard-agent-grpc-port={agent_grpc}",
           f"--runtime-env-agent-port={runtime_env}", f"--metrics-export-port={metrics}",
           "--num-cpus=4", "--object-store-memory=300000000", "--include-dashboard=true", "--disable-usage-stats"]
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    env.pop("RAY_ADDRESS", None)
    log = open(temp / "head.log", "w")
    # Its own process group: raylet, GCS and workers are children of `ray start`, and a graceful
    # shutdown of all of them takes ~30 s on 2 cores; the group is ended as a whole afterwards.
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{dash}"
    try:
        from ray.job_submission import JobSubmissionClient

        t0 = time.time()
        while True:
            try:
                client_ = JobSubmissionClient(url)
                break
            except Exception:
                if proc.poll() is not None or time.time() - t0 > 120:
                    raise AssertionError("ray head did not start:\n" + (temp / "head.log").read_text()) from None
                time.sleep(1)
        yield client_, url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # only this head's group: never other Ray processes
        except ProcessLookupError:
            pass
        proc.wait(30)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def test_run_al_job_on_a_real_head(ray_head, blob_pool, tmp_path):
    from ray.job_submission import JobStatus

    client, _ = ray_head
    runtime_env = yaml.safe_load((REPO / "deploy" / "runtime_env.yaml").read_text())
    runtime_env["working_dir"] = str(REPO)
    runtime_env["excludes"] = runtime_env["excludes"] + ["tests/", "docs/"]
    runtime_env["env_vars"]["RAY_AUTH_MODE"] = "disabled"
    sets = [f"pool={blob_pool}", f"workspace={tmp_path}", "name=job", "strategy.name=random",
            "budget.init_ratio=0.1", "budget.max_ratio=0.3", "budget.rounds=1", "model.image_size=32",
            "schedule.max_epochs_per_round=1", "schedule.max_final_epochs=1", "train.samples_per_epoch=16", "train.batch_size=8",
            "train.augment.enabled=false"]
    entry = f"{sys.executable} jobs/run_al.py --config cpu " + " ".join(f"--set {s}" for s in sets)
    job = client.submit_job(entrypoint=entry, runtime_env=runtime_env)
    t0 = time.time()
    while (status := client.get_job_status(job)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        assert time.time() - t0 < 300, client.get_job_logs(job)[-3000:]
        time.sleep(2)
    logs = client.get_job_logs(job)
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    assert "RAY_ADDRESS=" in logs and "(local)" not in logs  # attached to the head, not a local Ray
    state = json.loads((tmp_path / "job" / "state.json").read_text())
    assert state["phase"] == "done" and state["labeled_count"] == 9
    assert (tmp_path / "job" / "rounds" / "000" / "selection.parquet").is_file()

"""A real two-node Ray cluster on one machine: a head (1 CPU) and a worker node (3 CPUs and a custom
resource ``paal_worker``), each `ray start --block` in its own process group with its own ports
(the head its own --temp-dir), stopped by PID, never `ray stop`. Phantoms are ingested by one job, then a
small PAAL run on them is submitted as another with ``scaling.custom_resources={paal_worker: 1}``, the
way the README deploys (deploy/runtime_env.yaml, the repository shipped as the job's working_dir):
Ray Train workers, scoring actors and the KMeans task must run on the worker node (checked with
Ray's state API), the job attaches to the head (not a local Ray), and it prints no Ray internal
error lines. Then the same run again, the worker node killed (SIGKILL to its
whole process group) in the middle of round 0's training and a fresh worker node started: the run
finishes with the same labelled set as the undisturbed one (training is seeded per epoch and resumes
from the round's last epoch checkpoint, so nothing differs)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from ray_ports import free_port, worker_port_args

REPO = Path(__file__).resolve().parents[2]
RAY = Path(sys.executable).parent / "ray"
pytestmark = pytest.mark.slow
WORKER_RESOURCE = "paal_worker"


def _env() -> dict:
    env = dict(os.environ, RAY_AUTH_MODE="disabled", PYTHONPATH=str(REPO),
               # a lost node is noticed in seconds, not the default ~30 s
               RAY_health_check_period_ms="1000", RAY_health_check_failure_threshold="3",
               RAY_health_check_initial_delay_ms="1000")
    env.pop("RAY_ADDRESS", None)
    return env


class Node:
    """One `ray start --block` process (its own session, so its raylet and workers die with it)."""

    def __init__(self, temp: Path, name: str, args: list[str]):
        ports = [*worker_port_args(),
                 f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
                 f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
                 f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}"]
        self.log_path = temp / f"{name}.log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([str(RAY), "start", "--block", "--disable-usage-stats", *ports, *args],
                                     env=_env(), stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # only this node's group: never other Ray processes
        except ProcessLookupError:
            pass
        self.proc.wait(30)
        self.log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        self.kill()


def _start_head(temp: Path) -> tuple[Node, str]:
    """The head and its dashboard URL, once the job API answers. On a loaded machine a raylet may
    miss Ray's fixed 30 s start-up window and `ray start` gives up: start it again (new ports)."""
    from ray.job_submission import JobSubmissionClient

    for attempt in range(5):
        gcs, dash = free_port(), free_port()
        head = Node(temp, f"head{attempt}", ["--head", f"--temp-dir={temp}", f"--port={gcs}",
                                             f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1",
                                             f"--ray-client-server-port={free_port()}", "--num-cpus=1",
                                             "--object-store-memory=200000000", "--include-dashboard=true"])
        head.gcs = gcs
        url = f"http://127.0.0.1:{dash}"
        t0 = time.time()
        while head.proc.poll() is None and time.time() - t0 < 180:
            try:
                JobSubmissionClient(url)
                time.sleep(5)  # `ray start` still checks its raylet for a while after the API is up
                if head.proc.poll() is None:
                    return head, url
            except Exception:
                time.sleep(1)
        head.stop()
    raise AssertionError("ray head did not start:\n" + head.log_path.read_text()[-3000:])


@pytest.fixture
def cluster():
    temp = Path(tempfile.mkdtemp(prefix="paalmn-", dir="/tmp"))  # short: socket paths have a length limit
    nodes: list[Node] = []
    try:
        from ray.job_submission import JobSubmissionClient

        head, url = _start_head(temp)
        nodes.append(head)

        def add_worker() -> Node:
            for _ in range(5):
                node = Node(temp, f"worker{len(nodes)}", [f"--address=127.0.0.1:{head.gcs}", "--num-cpus=3",
                                                          f"--resources={json.dumps({WORKER_RESOURCE: 100})}",
                                                          "--object-store-memory=200000000"])
                nodes.append(node)
                try:
                    _worker_node_ids(url, node)
                    return node
                except AssertionError:
                    node.stop()
            raise AssertionError("no worker node joined:\n" + node.log_path.read_text()[-3000:])

        client = JobSubmissionClient(url)
        client.gcs = head.gcs
        yield {"client": client, "url": url, "add_worker": add_worker, "nodes": nodes,
               "temp": temp}
    finally:
        for node in reversed(nodes):
            node.stop()
        if not os.environ.get("PAAL_KEEP_CLUSTER_LOGS"):  # set it to read the nodes' logs afterwards
            shutil.rmtree(temp, ignore_errors=True)


def _state(fn, *args, timeout: float = 300, **kwargs):
    """A state API call, retried while the head's dashboard is busy (a loaded 2-core machine)."""
    from ray.util.state.exception import RayStateApiException

    t0 = time.time()
    while True:
        try:
            return fn(*args, **kwargs)
        except (RayStateApiException, ConnectionError, OSError):
            if time.time() - t0 > timeout:
                raise
            time.sleep(2)


def _worker_node_ids(url: str, node: Node | None = None, timeout: float = 180) -> set[str]:
    """The alive worker nodes' ids, once there is one (and ``node``'s process is still up)."""
    from ray.util.state import list_nodes

    t0 = time.time()
    while time.time() - t0 < timeout:
        if node is not None and node.proc.poll() is not None:
            break
        ids = {n.node_id for n in _state(list_nodes, address=url, detail=True)
               if n.state == "ALIVE" and WORKER_RESOURCE in (n.resources_total or {})}
        if ids:
            return ids
        time.sleep(1)
    raise AssertionError("no worker node joined the cluster")


def _job_env(gcs: int) -> dict:
    # RAY_ADDRESS for the job's workers too: this machine runs other Ray instances (other tests,
    # other developers), and Ray Train's placement-group cleaner would not know which is its own.
    return {"env_vars": {"PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": f"127.0.0.1:{gcs}"}}


def _phantom_pool(client, tmp_path: Path) -> Path:
    """Phantoms written here, ingested by a job on the cluster (its tasks run on the worker node)."""
    from paal_ray.data.phantoms import PhantomSpec, write_phantoms

    src, pool = tmp_path / "phantoms", tmp_path / "pool"
    write_phantoms(src, PhantomSpec(cases=8, size=32, slices=8, seed=0))
    entry = f"{sys.executable} {REPO / 'jobs' / 'ingest.py'} {src} --layout msd --out {pool} --size 32"
    _wait(client, client.submit_job(entrypoint=entry, runtime_env=_job_env(client.gcs)))
    return pool


def _deploy_env(gcs: int) -> dict:
    """deploy/runtime_env.yaml as the README uses it: the repository shipped as the working_dir."""
    import yaml

    env = yaml.safe_load((REPO / "deploy" / "runtime_env.yaml").read_text())
    env["working_dir"] = str(REPO)
    env["excludes"] = env["excludes"] + ["tests/", "docs/"]
    env["env_vars"].update(RAY_AUTH_MODE="disabled", RAY_ADDRESS=f"127.0.0.1:{gcs}")
    return env


def _submit(client, pool: Path, workspace: Path, name: str, *, deploy: bool = False) -> str:
    sets = [f"pool={pool}", f"workspace={workspace}", f"name={name}", "strategy.name=paal", "seed=3",
            "budget.init_ratio=0.1", "budget.max_ratio=0.2", "budget.rounds=1", "reuse_round0=false",
            "schedule.max_epochs_per_round=4", "schedule.max_final_epochs=1", "schedule.mode=fixed",
            "schedule.fixed_warmup=4", "train.samples_per_epoch=32", "train.batch_size=8",
            "train.augment.enabled=false", "scaling.score_batch_size=32", "scaling.score_threads=1",
            "model.image_size=32",
            f"scaling.custom_resources={{{WORKER_RESOURCE}: 1}}"]
    # Shipped as the working_dir, the job runs the copy Ray unpacked (a relative entrypoint).
    script = "jobs/run_al.py" if deploy else str(REPO / "jobs" / "run_al.py")
    entry = f"{sys.executable} {script} --config cpu " + " ".join(f"--set {shlex.quote(s)}" for s in sets)
    return client.submit_job(entrypoint=entry, runtime_env=_deploy_env(client.gcs) if deploy else _job_env(client.gcs))


def _wait(client, job: str, timeout: float = 420) -> str:
    from ray.job_submission import JobStatus

    t0 = time.time()
    while (status := _state(client.get_job_status, job)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED,
                                                                 JobStatus.STOPPED}:
        assert time.time() - t0 < timeout, _state(client.get_job_logs, job)[-4000:]
        time.sleep(2)
    logs = _state(client.get_job_logs, job)
    assert status == JobStatus.SUCCEEDED, logs[-4000:]
    return logs


def _labelled(run: Path) -> list[str]:
    data = json.loads((run / "labelled.json").read_text())
    return sorted(data["labelled"])


def test_a_run_on_two_nodes_then_with_the_worker_node_killed_mid_round(cluster, tmp_path):
    from ray.util.state import list_actors, list_tasks

    client, url = cluster["client"], cluster["url"]
    cluster["add_worker"]()
    workers = _worker_node_ids(url)
    phantom_pool = _phantom_pool(client, tmp_path)

    # 1. undisturbed, deployed as the README says
    logs = _wait(client, _submit(client, phantom_pool, tmp_path, "calm", deploy=True))
    assert "RAY_ADDRESS=" in logs and "(local)" not in logs
    noise = [line for line in logs.splitlines() if "core_worker.cc" in line or "execution finished" in line]
    assert not noise, "\n".join(noise[:10])  # no Ray internal error lines, no Ray Data chatter
    calm = tmp_path / "calm"
    state = json.loads((calm / "state.json").read_text())
    assert state["phase"] == "done" and state["labeled_count"] == state["budget"]
    assert (calm / "rounds" / "000" / "selection.parquet").is_file()
    kmeans = [t for t in _state(list_tasks, address=url, filters=[("name", "=", "paal_kmeans")], detail=True)
              if t.state == "FINISHED"]
    assert kmeans and {t.node_id for t in kmeans} <= workers, kmeans  # not in the driver, on the worker node
    query = json.loads((calm / "rounds" / "000" / "query.json").read_text())
    assert query["kmeans_backend"] == "sklearn" and query["extra"]["kmeans"]["node_id"] in workers
    assert query["extra"]["kmeans"]["threads"] == 3  # sized to the worker node, not the 1-CPU head
    actors = _state(list_actors, address=url, detail=True, limit=1000)
    train = [a for a in actors if "TrainWorker" in a.class_name]
    score = [a for a in actors if "ScoreActor" in a.class_name]
    assert train and score, sorted({a.class_name for a in actors})
    assert {a.node_id for a in train + score} <= workers

    # 2. the worker node killed while round 0 trains, a fresh one started
    job = _submit(client, phantom_pool, tmp_path, "killed")
    storage = tmp_path / "killed" / "train"
    t0 = time.time()
    while not list(storage.glob("round-000*/**/checkpoint_*")):  # an epoch of round 0 is done
        assert time.time() - t0 < 300, client.get_job_logs(job)[-3000:]
        time.sleep(0.5)
    cluster["nodes"][-1].kill()
    assert not (tmp_path / "killed" / "rounds" / "000" / "train.json").exists()  # really mid-round
    time.sleep(3)
    cluster["add_worker"]()
    _wait(client, job)
    killed = tmp_path / "killed"
    assert json.loads((killed / "state.json").read_text())["phase"] == "done"
    assert _labelled(killed) == _labelled(calm)

"""Authentication and roles: token files, the bind rule, the auth matrix on uvicorn (`paal serve`)
and on Ray Serve, tokens never logged, the upload audit log, allowed Host headers."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
from service_helpers import (
    TOKENS,
    UNKNOWN_TOKEN,
    assert_matrix,
    auth_matrix,
    free_port,
    paal_serve,
    png,
    request,
    write_tokens,
)

from paal_ray.serve.app import replica_tokens
from paal_ray.serve.auth import Role, TokenFileError, TokenTable, check_bind, is_loopback


def test_token_file_lines_roles_and_errors_that_never_show_a_token(tmp_path):
    table = TokenTable.read(write_tokens(tmp_path / "tokens"))
    assert len(table) == 3
    who = table.lookup(TOKENS["annotator"][0])
    assert who.name == "Ann Annotator" and who.role is Role.annotator
    assert table.lookup(UNKNOWN_TOKEN) is None and table.lookup("") is None

    secret = "s3cret-token-value-0123456789"
    for text, words in [
        (f"{secret} root Someone\n", "line 1: role 'root' is not one of viewer, annotator, admin"),
        (f"# header\n{secret} viewer\n", "line 2: expected `TOKEN ROLE NAME`, got 2 fields"),
        ("short viewer Someone\n", "line 1: the token is shorter than 16 characters"),
        (f"{secret} viewer A\n{secret} admin B\n", "line 2: the same token as another line"),
        ("# nothing but comments\n", "no tokens"),
    ]:
        with pytest.raises(TokenFileError) as e:
            TokenTable.parse(text, "tokens.txt")
        assert words in str(e.value) and secret not in str(e.value) and "short viewer" not in str(e.value)
    with pytest.raises(TokenFileError, match="cannot read the token file"):
        TokenTable.read(tmp_path / "missing")


def test_tokens_from_the_environment_or_a_mounted_secret(tmp_path):
    path = write_tokens(tmp_path / "secret")
    assert len(TokenTable.from_environment({"PAAL_TOKENS_FILE": str(path)})) == 3
    assert TokenTable.from_environment({"PAAL_TOKENS": path.read_text()}).lookup(TOKENS["admin"][0]).role is Role.admin
    assert TokenTable.from_environment({}) is None
    # A Ray Serve replica: the mounted file first, else the environment, else refuse unless told not to.
    assert len(replica_tokens(str(path), insecure_no_auth=False)) == 3
    with pytest.raises(TokenFileError, match="no tokens: set args.tokens_file"):
        replica_tokens(None, insecure_no_auth=False)
    assert replica_tokens(None, insecure_no_auth=True) is None


def test_binding_beyond_loopback_needs_tokens_or_an_explicit_opt_out(workspace, tmp_path):
    assert all(is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.1.2.3", "paal.hospital.example"))
    table = TokenTable.read(write_tokens(tmp_path / "tokens"))
    with pytest.raises(TokenFileError, match="refusing to listen on 0.0.0.0 without authentication"):
        check_bind("0.0.0.0", None, insecure_no_auth=False)
    check_bind("0.0.0.0", table, insecure_no_auth=False)
    check_bind("0.0.0.0", None, insecure_no_auth=True)
    check_bind("127.0.0.1", None, insecure_no_auth=False)

    ws, _ = workspace
    out = subprocess.run([sys.executable, "-m", "paal_ray.cli.main", "serve", str(ws), "--host", "0.0.0.0",
                          "--port", str(free_port())], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "refusing to listen on 0.0.0.0" in out.stderr and "--insecure-no-auth" in out.stderr
    bad = tmp_path / "bad-tokens"
    bad.write_text("not-long-enough viewer X\n")
    out = subprocess.run([sys.executable, "-m", "paal_ray.cli.main", "serve", str(ws), "--tokens", str(bad)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "line 1: the token is shorter" in out.stderr and "not-long-enough" not in out.stderr


def _selected(base: str, run: str = "human") -> list[str]:
    status, body = request(f"{base}/runs/{run}/selection", token=TOKENS["viewer"][0])
    assert status == 200, body
    return [s["slice_id"] for s in json.loads(body)["slices"]]


def test_auth_matrix_on_uvicorn_tokens_never_logged_audit_log_and_allowed_hosts(workspace, tmp_path):
    ws, _ = workspace
    tokens = write_tokens(tmp_path / "tokens")
    log = tmp_path / "serve.log"
    body = png(np.full((32, 32), 1, np.uint8))
    with paal_serve(ws, "--tokens", str(tokens), log=log) as (base, _):
        sid = _selected(base)[0]
        got = auth_matrix(base, "human", sid, body)
        assert_matrix(got, "human")
        status, text = request(f"{base}/runs", token=UNKNOWN_TOKEN)
        assert status == 401 and UNKNOWN_TOKEN.encode() not in text
        # Host headers: only the loopback names are accepted by default on loopback.
        assert request(f"{base}/health", headers={"Host": "evil.example"})[0] == 400
        assert request(f"{base}/health", headers={"Host": "localhost"})[0] == 200
    logged = log.read_text()
    assert "PUT /runs/human/masks/" in logged and "401" in logged  # uvicorn's access log is on
    for secret in [t for t, _ in TOKENS.values()] + [UNKNOWN_TOKEN]:
        assert secret not in logged, "a token was written to the log"

    audit = [json.loads(line) for line in (ws / "human" / "audit.jsonl").read_text().splitlines()]
    assert [(a["annotator"], a["slice_id"]) for a in audit] == [("Ann Annotator", sid), ("Ada Admin", sid)]
    assert all(a["sha256"] == hashlib.sha256(body).hexdigest() and a["bytes"] == len(body) and a["round"] == 0
               and a["time"].endswith("Z") and a["stored"] == f"human/rounds/000/inbox/{sid.replace('/', '__')}.npy"
               for a in audit)


def test_allowed_hosts_are_configurable(workspace, tmp_path):
    ws, _ = workspace
    with paal_serve(ws, "--allowed-host", "paal.hospital.example", "--allowed-host", "127.0.0.1", log=tmp_path / "log") as (base, _):
        assert request(f"{base}/runs", headers={"Host": "paal.hospital.example"})[0] == 200
        assert request(f"{base}/runs", headers={"Host": "localhost"})[0] == 400


def test_auth_matrix_on_ray_serve(workspace, ray_session, tmp_path):
    """The Serve application builder of deploy/serve.yaml on the session's local Ray: the replica
    reads the token file itself (a mounted secret in deploy/)."""
    from ray import serve

    from paal_ray.serve.app import deployment

    ws, _ = workspace
    tokens = write_tokens(tmp_path / "tokens")
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(deployment({"workspace": str(ws), "num_cpus": 0.25, "tokens_file": str(tokens)}),
                  name="paal", route_prefix="/")
        base = f"http://127.0.0.1:{port}"
        sid = _selected(base)[1]
        assert_matrix(auth_matrix(base, "human", sid, png(np.full((32, 32), 2, np.uint8))), "human")
        assert (ws / "human" / "rounds" / "000" / "inbox" / f"{sid.replace('/', '__')}.npy").is_file()
        status, text = request(f"{base}/runs/human/selection", token=TOKENS["viewer"][0])
        assert json.loads(text)["masks_missing"] == 5
    finally:
        serve.shutdown()


def test_deploy_files_mount_the_token_secret_where_the_serve_config_reads_it():
    from pathlib import Path

    import yaml

    deploy = Path(__file__).resolve().parents[2] / "deploy"
    args = yaml.safe_load((deploy / "serve.yaml").read_text())["applications"][0]["args"]
    assert args.get("insecure_no_auth") is not True and args["tokens_file"].startswith("/etc/paal/tokens/")
    secret = yaml.safe_load((deploy / "kuberay" / "serve-tokens-secret.yaml").read_text())
    cluster = yaml.safe_load((deploy / "kuberay" / "raycluster.yaml").read_text())
    pods = [cluster["spec"]["headGroupSpec"]["template"]["spec"]] + [
        g["template"]["spec"] for g in cluster["spec"]["workerGroupSpecs"]]
    for pod in pods:
        volume = next(v for v in pod["volumes"] if v.get("secret", {}).get("secretName") == secret["metadata"]["name"])
        mounts = [m for c in pod["containers"] for m in c["volumeMounts"] if m["name"] == volume["name"]]
        assert mounts and all(m["mountPath"] == "/etc/paal/tokens" for m in mounts)
    assert Path(args["tokens_file"]).name in secret["stringData"]
    with pytest.raises(TokenFileError):  # the example secret holds no usable token
        TokenTable.parse(secret["stringData"]["tokens"], "example secret")


def test_worker_processes_read_the_tokens_themselves(workspace, tmp_path):
    """`paal serve --workers 2`: each uvicorn worker builds the app from the environment, with the
    token file's tokens, so authentication holds in every worker."""
    ws, _ = workspace
    log = tmp_path / "serve.log"
    with paal_serve(ws, "--workers", "2", "--tokens", str(write_tokens(tmp_path / "tokens")), log=log) as (base, _):
        for _ in range(4):  # requests spread over the workers
            assert request(f"{base}/runs")[0] == 401
            assert request(f"{base}/runs", token=TOKENS["viewer"][0])[0] == 200
            assert request(f"{base}/runs/human/uploads", token=TOKENS["annotator"][0])[0] == 403
    assert log.read_text().count("Application startup complete") == 2
    assert not any(t in log.read_text() for t, _ in TOKENS.values())


def test_a_router_added_later_is_protected_without_edits_to_it(workspace, tmp_path):
    """Auth is an app-level dependency: a new router (here a stand-in for a future 'notes' router)
    included into the app needs a token with the method's role, and its schema says so."""
    from fastapi import APIRouter
    from fastapi.testclient import TestClient

    from paal_ray.serve.app import ServeSettings, create_app

    ws, _ = workspace
    router = APIRouter(prefix="/runs/{name}/notes")

    @router.get("/{slice_id:path}")
    def get_note(name: str, slice_id: str) -> dict:
        return {"run": name, "slice_id": slice_id}

    @router.put("/{slice_id:path}")
    def put_note(name: str, slice_id: str) -> dict:
        return {"run": name}

    app = create_app(str(ws), ServeSettings(tokens=TokenTable.read(write_tokens(tmp_path / "tokens"))))
    app.include_router(router)
    client = TestClient(app)
    url = "/runs/human/notes/case000/0001"
    assert client.get(url).status_code == 401
    assert client.get(url, headers={"Authorization": f"Bearer {UNKNOWN_TOKEN}"}).status_code == 401
    assert client.get(url, headers={"Authorization": f"Bearer {TOKENS['viewer'][0]}"}).status_code == 200
    assert client.put(url, headers={"Authorization": f"Bearer {TOKENS['viewer'][0]}"}).status_code == 403
    assert client.put(url, headers={"Authorization": f"Bearer {TOKENS['annotator'][0]}"}).status_code == 200
    op = client.get("/openapi.json").json()["paths"]["/runs/{name}/notes/{slice_id}"]["get"]
    assert op["security"] == [{"HTTPBearer": []}]


def test_a_token_may_hold_a_hash_sign():
    table = TokenTable.parse("  # a comment line\nab#cdefghijklmnopq annotator Hash Holder\n", "t")
    assert table.lookup("ab#cdefghijklmnopq").name == "Hash Holder"

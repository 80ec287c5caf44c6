"""Helpers of the selection-service tests: tokens, mask bodies, a live `paal serve` process, and the
auth matrix that must hold on every way of serving (uvicorn, Ray Serve)."""

from __future__ import annotations

import contextlib
import io
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

TOKENS = {  # role -> (token, name)
    "viewer": ("viewer-7f3a9c1e5b2d4a68", "Vera Viewer"),
    "annotator": ("annotator-2b8e6d0f4c1a9e37", "Ann Annotator"),
    "admin": ("admin-5c9d1e7a3f0b8c24", "Ada Admin"),
}
UNKNOWN_TOKEN = "unknown-token-9d8c7b6a5f4e3d21"


def write_tokens(path: Path) -> Path:
    path.write_text("# test tokens\n" + "".join(f"{t} {role} {name}\n" for role, (t, name) in TOKENS.items()))
    return path


def png(mask: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def npy(mask: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, mask)
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(url: str, *, method: str = "GET", token: str | None = None, data: bytes | None = None,
            headers: dict | None = None, timeout: float = 30) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@contextlib.contextmanager
def paal_serve(workspace: Path, *args: str, log: Path):
    """`paal serve WORKSPACE ARGS` on a free loopback port; yields (base URL, process)."""
    port = free_port()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "paal_ray.cli.main", "serve", str(workspace), "--port", str(port),
                                 *args], stdout=out, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if request(f"{base}/health", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "server did not answer within 60 s:\n" + log.read_text()
            time.sleep(0.3)
        yield base, proc
    finally:
        proc.terminate()
        proc.wait(10)


def auth_matrix(base: str, run: str, slice_id: str, mask_body: bytes) -> dict[tuple[str, str], int]:
    """Every route with no token, an unknown token and each role: route -> status. The mask upload
    is valid, so its status tells only whether the caller may upload."""
    routes = [("GET", "/health"), ("GET", "/"), ("GET", "/runs"), ("GET", f"/runs/{run}"),
              ("GET", f"/runs/{run}/selection?limit=2"), ("GET", f"/runs/{run}/images/{slice_id}?format=png"),
              ("PUT", f"/runs/{run}/masks/{slice_id}?format=png"), ("GET", f"/runs/{run}/uploads")]
    callers = {"none": None, "unknown": UNKNOWN_TOKEN, **{role: t for role, (t, _) in TOKENS.items()}}
    out = {}
    for who, token in callers.items():
        for method, path in routes:
            status, _ = request(base + path, method=method, token=token, data=mask_body if method == "PUT" else None)
            out[(who, f"{method} {path.split('?')[0].replace(slice_id, '{slice}')}")] = status
    return out


def expected_matrix(run: str) -> dict[tuple[str, str], int]:
    open_routes = {"GET /health", "GET /"}
    reads = {"GET /runs", f"GET /runs/{run}", f"GET /runs/{run}/selection", f"GET /runs/{run}/images/{{slice}}"}
    upload, audit = f"PUT /runs/{run}/masks/{{slice}}", f"GET /runs/{run}/uploads"
    out = {}
    for who in ("none", "unknown", "viewer", "annotator", "admin"):
        for route in open_routes:
            out[(who, route)] = 200
        for route in reads:
            out[(who, route)] = 401 if who in ("none", "unknown") else 200
        out[(who, upload)] = {"none": 401, "unknown": 401, "viewer": 403}.get(who, 200)
        out[(who, audit)] = {"none": 401, "unknown": 401, "admin": 200}.get(who, 403)
    return out


def assert_matrix(got: dict, run: str) -> None:
    want = expected_matrix(run)
    wrong = {k: (got.get(k), v) for k, v in want.items() if got.get(k) != v}
    assert not wrong, "auth matrix (caller, route): (got, expected)\n" + json.dumps(
        {f"{k[0]:9} {k[1]}": v for k, v in wrong.items()}, indent=1)

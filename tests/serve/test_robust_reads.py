"""Robust reads: run names are catalog names, unreadable runs are listed as such, server-side
damage is 500/503 with a message, responses name no absolute path, the OpenAPI schema is complete,
and the selection is paginated."""

from __future__ import annotations

import shutil

import numpy as np
import yaml
from fastapi.testclient import TestClient
from service_helpers import png

from paal_ray.serve.app import create_app


def _client(ws) -> TestClient:
    return TestClient(create_app(str(ws)), raise_server_exceptions=False)


def test_run_names_are_catalog_names(workspace):
    ws, _ = workspace
    sid = _client(ws).get("/runs/human/selection").json()["slices"][0]["slice_id"]
    # The workspace's parent is a run folder: `..` must not reach it.
    inner = ws / "human" / "inner"
    inner.mkdir()
    shutil.copytree(ws / "sim", inner / "sim")
    shutil.copytree(ws / "sim", ws / ".trash")  # a dot-folder holding a run: skipped
    client = _client(inner)
    assert [r["name"] for r in client.get("/runs").json()] == ["sim"]
    assert [r["name"] for r in _client(ws).get("/runs").json()] == ["human", "sim"]
    # (httpx would normalise a literal `..`; encoded, it reaches the server as `..`)
    for name in ["%2E%2E", "%2E", "x" * 300, "%00", "sim%2F..%2F..", ".trash"]:
        for method, path in [("GET", f"/runs/{name}"), ("GET", f"/runs/{name}/selection"),
                             ("GET", f"/runs/{name}/images/{sid}"), ("PUT", f"/runs/{name}/masks/{sid}")]:
            r = client.request(method, path, content=png(np.ones((32, 32))) if method == "PUT" else None)
            assert r.status_code == 404, (method, path[:60], r.status_code, r.text[:200])
    assert not list((ws / "human" / "rounds" / "000" / "inbox").iterdir()), "nothing may be written through `..`"
    assert client.get("/health").status_code == 200


def test_unreadable_runs_are_listed_and_server_damage_is_5xx_with_a_message(workspace, tmp_path):
    ws, _ = workspace
    shutil.copytree(ws / "sim", ws / "truncated")
    (ws / "truncated" / "state.json").write_text('{"name": "truncated", "strat')
    shutil.copytree(ws / "sim", ws / "copying")  # a folder being copied: config.yaml not there yet
    (ws / "copying" / "config.yaml").unlink()
    shutil.copytree(ws / "human", ws / "nopool")  # its pool moved away or unmounted
    cfg = yaml.safe_load((ws / "nopool" / "config.yaml").read_text())
    cfg["pool"] = str(tmp_path / "gone")
    (ws / "nopool" / "config.yaml").write_text(yaml.safe_dump(cfg))
    shutil.copytree(ws / "sim", ws / "badtable")
    (ws / "badtable" / "rounds" / "000" / "selection.parquet").write_bytes(b"PAR1 not really")
    client = _client(ws)
    bodies = []

    r = client.get("/runs")
    bodies.append(r.text)
    runs = {x["name"]: x for x in r.json()}
    assert r.status_code == 200 and set(runs) == {"badtable", "copying", "human", "nopool", "sim", "truncated"}
    assert runs["truncated"]["readable"] is False and "truncated/state.json: not valid JSON" in runs["truncated"]["error"]
    assert runs["sim"]["readable"] is True and runs["sim"]["phase"] == "done"

    sid = client.get("/runs/human/selection").json()["slices"][0]["slice_id"]
    for method, path, status, words in [
        ("GET", "/runs/truncated", 500, "run 'truncated' cannot be read: truncated/state.json: not valid JSON"),
        ("GET", "/runs/copying", 500, "copying/config.yaml cannot be read"),
        ("GET", "/runs/badtable/selection?round=0", 500, "badtable/rounds/000/selection.parquet cannot be read"),
        ("GET", f"/runs/nopool/images/{sid}", 503, "the run's pool 'gone' cannot be read now"),
        ("PUT", f"/runs/nopool/masks/{sid}", 503, "the run's pool 'gone' cannot be read now"),
        ("GET", "/runs/human/selection?round=7", 404, "round 7 has no selection"),
        ("GET", "/runs/human/selection?round=-1", 422, "query round"),
    ]:
        r = client.request(method, path, content=png(np.ones((32, 32))) if method == "PUT" else None)
        bodies.append(r.text)
        assert r.status_code == status and words in r.json()["detail"], (path, r.status_code, r.text)
        assert set(r.json()) == {"detail", "error"}
    r = client.put(f"/runs/human/masks/{sid}", content=png(np.ones((32, 32))))
    bodies.append(r.text)
    assert r.status_code == 200 and r.json()["stored"] == f"human/rounds/000/inbox/{sid.replace('/', '__')}.npy"
    bodies += [client.get("/runs/human").text, client.get("/runs/human/selection").text, client.get("/health").text]
    for body in bodies:
        assert str(tmp_path) not in body, f"an absolute server path in a response: {body[:300]}"


def test_selection_pages(workspace):
    ws, _ = workspace
    client = _client(ws)
    whole = client.get("/runs/human/selection").json()
    assert whole["total"] == 6 and whole["next_offset"] is None and len(whole["slices"]) == 6
    pages, offset = [], 0
    while offset is not None:
        page = client.get(f"/runs/human/selection?limit=4&offset={offset}").json()
        pages.append([s["rank"] for s in page["slices"]])
        assert page["masks_missing"] == 6 and page["total"] == 6
        offset = page["next_offset"]
    assert pages == [[0, 1, 2, 3], [4, 5]]
    assert client.get("/runs/human/selection?offset=10").json()["slices"] == []
    for bad in ("limit=0", "limit=1001", "offset=-1"):
        assert client.get(f"/runs/human/selection?{bad}").status_code == 422, bad


def test_openapi_schema_is_complete(workspace):
    ws, _ = workspace
    spec = _client(ws).get("/openapi.json").json()
    put = spec["paths"]["/runs/{name}/masks/{slice_id}"]["put"]
    assert put["requestBody"]["required"] is True
    assert put["requestBody"]["content"]["application/octet-stream"]["schema"]["format"] == "binary"
    enums = {p["name"]: p["schema"] for p in put["parameters"]}
    assert enums["format"]["enum"] == ["png", "npy", "nii", "nii.gz"]
    image = spec["paths"]["/runs/{name}/images/{slice_id}"]["get"]
    assert {p["name"]: p["schema"] for p in image["parameters"]}["format"]["enum"] == ["png", "nii.gz"]
    assert set(image["responses"]["200"]["content"]) == {"image/png", "application/gzip"}
    assert {"400", "401", "403", "404", "409", "413", "422", "500", "503"} <= set(put["responses"])
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            codes = set(op["responses"])
            if path != "/health":
                assert {"401", "403", "500"} <= codes, (method, path, codes)
                assert op["responses"]["401"]["content"]["application/json"]["schema"] == {
                    "$ref": "#/components/schemas/ErrorBody"}
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    selection = {p["name"] for p in spec["paths"]["/runs/{name}/selection"]["get"]["parameters"]}
    assert {"round", "offset", "limit"} <= selection

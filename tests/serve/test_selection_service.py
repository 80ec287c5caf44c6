"""The selection service over a workspace: runs, selections, images, mask upload reaching training."""

from __future__ import annotations

import gzip
import io

import nibabel as nib
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from service_helpers import npy, png

from paal_ray.data.pool import Pool, decode_labels
from paal_ray.runs.machine import RunMachine
from paal_ray.runs.oracle import safe_name
from paal_ray.serve.app import create_app


def test_runs_and_selection_views(workspace):
    ws, _ = workspace
    client = TestClient(create_app(str(ws)))
    runs = {r["name"]: r for r in client.get("/runs").json()}
    assert set(runs) == {"human", "sim"}
    assert runs["human"]["phase"] == "annotate" and runs["human"]["waiting_for_masks"] is True
    assert runs["sim"]["phase"] == "done" and runs["sim"]["labelled"] == runs["sim"]["budget"]
    detail = client.get("/runs/sim").json()
    assert [p["kind"] for p in detail["curve"]] == ["round", "round", "final"] and detail["oracle"] == "simulated"

    sel = client.get("/runs/human/selection").json()
    assert sel["round"] == 0 and sel["annotating"] is True and sel["masks_missing"] == 6
    assert [s["rank"] for s in sel["slices"]] == list(range(6))
    assert not any(s["mask_received"] for s in sel["slices"])
    assert client.get("/runs/sim/selection?round=1").json()["annotating"] is False

    sid = sel["slices"][0]["slice_id"]  # "case00x/000y": the route takes slashes
    png = client.get(f"/runs/human/images/{sid}")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert np.asarray(Image.open(io.BytesIO(png.content))).shape == (32, 32)
    nii = client.get(f"/runs/human/images/{sid}?format=nii.gz")
    assert nib.Nifti1Image.from_bytes(gzip.decompress(nii.content)).shape == (32, 32, 1)

    for url, status, words in [
        ("/runs/nope", 404, "run 'nope': not found"),
        ("/runs/human/selection?round=5", 404, "round 5 has no selection"),
        ("/runs/human/images/case999/0000", 404, "not selected in any round"),
        (f"/runs/human/images/{sid}?format=jpg", 422, "query format: Input should be 'png' or 'nii.gz'"),
    ]:
        r = client.get(url)
        assert r.status_code == status and words in r.json()["detail"], (url, r.status_code, r.text)
    from paal_ray.runs.catalog import RunCatalog, RunNotFound

    with pytest.raises(RunNotFound):  # a run name never leads out of the workspace
        RunCatalog(ws / "human" / "rounds").paths("../../sim")

    # The async route answers a parsed selection on the event loop and parses a new one in a
    # thread: the catalog says which, and both give the same page.
    from paal_ray.runs.catalog import NotParsed

    catalog = RunCatalog(ws)
    with pytest.raises(NotParsed):
        catalog.selection("human", limit=1000, may_parse=False)
    first = catalog.selection("human", limit=1000)  # the route's default page
    import json
    served = client.get("/runs/human/selection").json()
    assert catalog.selection("human", limit=1000, may_parse=False) == first
    assert json.loads(json.dumps(first)) == served


def test_mask_upload_is_checked_stored_and_reaches_training(workspace, blob_pool):
    ws, services = workspace
    client = TestClient(create_app(str(ws)))
    chosen = [s["slice_id"] for s in client.get("/runs/human/selection").json()["slices"]]
    inbox = ws / "human" / "rounds" / "000" / "inbox"
    good = np.full((32, 32), 2, np.uint8)

    # Unusable masks: rejected with the slice, the problem, and nothing stored.
    bad = [
        (chosen[0], "png", png(np.zeros((16, 16))), 422, "mask shape [16, 16] does not match the slice's shape [32, 32]"),
        (chosen[0], "npy", npy(np.full((32, 32), 7)), 422, "class values [7] outside 0..2"),
        (chosen[0], "png", b"not a png", 422, "cannot be read as a .png mask"),
        (chosen[0], "tif", png(good), 422, "query format: Input should be"),
        (chosen[0], "png", b"", 400, "empty body"),
        ("case999/0000", "png", png(good), 409, "not in round 0's selection"),
    ]
    for sid, fmt, body, status, words in bad:
        r = client.put(f"/runs/human/masks/{sid}?format={fmt}", content=body)
        assert r.status_code == status and words in r.json()["detail"], (fmt, r.status_code, r.text)
    assert not list(inbox.glob("*")), "a rejected upload must store nothing"
    r = client.put(f"/runs/sim/masks/{chosen[0]}", content=png(good))
    assert r.status_code == 409 and "oracle.kind=simulated" in r.json()["detail"]

    # An earlier file dropped in another format would shadow the upload: it is replaced.
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(inbox / f"{safe_name(chosen[0])}.png")
    bodies = {"png": png(good), "npy": npy(good.astype(np.int64)),
              "nii.gz": gzip.compress(nib.Nifti1Image(good, np.eye(4)).to_bytes())}
    for i, sid in enumerate(chosen):
        fmt = list(bodies)[i % 3]
        r = client.put(f"/runs/human/masks/{sid}?format={fmt}", content=bodies[fmt])
        assert r.status_code == 200, r.text
        assert r.json()["masks_missing"] == len(chosen) - i - 1 and r.json()["classes_present"] == [2]
    assert sorted(p.name for p in inbox.iterdir()) == sorted(f"{safe_name(s)}.npy" for s in chosen)
    assert "resume the run" in r.json()["next"]
    assert client.get("/runs/human/selection").json()["masks_missing"] == 0

    # Resuming the run trains on exactly the uploaded masks (not the pool's labels).
    out = RunMachine.open(ws / "human", services=services, echo=lambda s: None).run()
    assert out.status == "waiting" and out.state.round == 1
    spec = services.train.specs[-1]
    assert set(chosen) <= set(spec.train_ids)
    assert (decode_labels(Pool.open(spec.pool_path).read_slices(chosen).to_pydict()) == 2).all()
    # Round 0 is closed: its masks are no longer accepted.
    r = client.put(f"/runs/human/masks/{chosen[0]}", content=png(good))
    assert r.status_code == 409 and "not in round 1's selection" in r.json()["detail"]


def test_paal_serve_command_serves_the_workspace(workspace):
    """`paal serve` starts a real HTTP server over the workspace (uvicorn)."""
    import json
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    ws, _ = workspace
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "paal_ray.cli.main", "serve", str(ws), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, runs = time.monotonic() + 60, None
        while time.monotonic() < deadline and runs is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/runs", timeout=2) as r:
                    runs = json.loads(r.read())
            except OSError:
                assert proc.poll() is None, proc.stdout.read()
                time.sleep(0.3)
        assert runs is not None, "server did not answer within 60 s"
        assert {r["name"] for r in runs} == {"human", "sim"}
    finally:
        proc.terminate()
        proc.wait(10)
    missing = subprocess.run([sys.executable, "-m", "paal_ray.cli.main", "serve", str(ws / "nope")],
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "no such folder" in missing.stderr

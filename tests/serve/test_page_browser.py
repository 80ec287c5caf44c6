"""The annotators' page in a real browser: headless Chromium (Debian's `chromium`, installed by
`make test` when missing) opens the page, takes the token once, shows the runs, the learning curve
and the selection as a gallery, uploads a mask from the page and marks it received.

PAAL_SCREENSHOT=docs/annotator-page.png saves the final screenshot there (the committed one)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from service_helpers import TOKENS, npy, paal_serve, png, request, write_tokens

from paal_ray.runs.machine import RunMachine

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


def _wait_for_thumbnails(page, timeout: float = 30) -> None:
    """Every thumbnail decoded (polled from Python: the page's CSP forbids evaluating strings)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        widths = page.locator("#gallery img").evaluate_all("imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
        if widths and all(w == 32 for w in widths):
            return
        assert time.monotonic() < deadline, f"thumbnails not shown: natural widths {widths}"
        time.sleep(0.2)


def _to_round_1(ws: Path, services, token: str, base: str) -> None:
    """Annotate all of round 0 through the API and resume the run: round 1 waits, with a curve."""
    sel = json.loads(request(f"{base}/runs/human/selection", token=token)[1])
    for s in sel["slices"]:
        status, text = request(f"{base}/runs/human/masks/{s['slice_id']}?format=npy", method="PUT", token=token,
                               data=npy(np.full((32, 32), 1, np.uint8)))
        assert status == 200, text
    out = RunMachine.open(ws / "human", services=services, echo=lambda s: None).run()
    assert out.status == "waiting" and out.state.round == 1
    # The fake query writes ids and ranks only; give the table the engine's score and AP columns.
    table = pq.read_table(ws / "human" / "rounds" / "001" / "selection.parquet")
    n = table.num_rows
    table = table.append_column("score", pa.array(np.linspace(2.4, 1.1, n))).append_column(
        "pred_acc", pa.FixedSizeListArray.from_arrays(pa.array(np.tile([0.98, 0.61, 0.34], n).astype(np.float32)), 3))
    pq.write_table(table, ws / "human" / "rounds" / "001" / "selection.parquet")


def test_annotator_page_in_headless_chromium(workspace, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    assert Path(CHROMIUM).exists(), "Debian's chromium is missing: `make test` installs it (apt-get install chromium)"
    ws, services = workspace
    token = TOKENS["annotator"][0]
    mask_file = tmp_path / "mask.png"
    mask = np.zeros((32, 32), np.uint8)
    mask[8:20, 10:24] = 1
    mask[12:16, 14:18] = 2
    mask_file.write_bytes(png(mask))
    with paal_serve(ws, "--tokens", str(write_tokens(tmp_path / "tokens")), log=tmp_path / "serve.log") as (base, _):
        _to_round_1(ws, services, token, base)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 1000})
                errors: list[str] = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.goto(base + "/")
                # The open shell shows nothing but the token form.
                expect(page.locator("#login")).to_be_visible()
                expect(page.locator("#runs-section")).to_be_hidden()
                page.fill("#token", TOKENS["viewer"][0][:-1] + "x")  # a wrong token first
                page.click("#login-form button")
                expect(page.locator("#login-error")).to_contain_text("not accepted")
                page.fill("#token", token)
                page.click("#login-form button")

                rows = page.locator("#runs tbody tr")
                expect(rows).to_have_count(2)
                expect(page.locator("#runs tbody tr[data-run=human]")).to_contain_text("waiting for masks")
                expect(page.locator("#run-title")).to_contain_text("human")
                expect(page.locator("#curve-svg circle")).to_have_count(1)  # round 0's validation Dice
                cards = page.locator("#gallery .card")
                expect(cards).to_have_count(6)
                expect(page.locator("#received-count")).to_have_text("0 of 6 masks received")
                first = cards.nth(0)
                expect(first).to_contain_text("#1")
                expect(first).to_contain_text("score 2.400")
                expect(first).to_contain_text("AP's predicted Dice 0.98 / 0.61 / 0.34")
                _wait_for_thumbnails(page)

                first.locator("input[type=file]").set_input_files(str(mask_file))
                expect(first.locator(".received-mark")).to_have_text("mask received")
                expect(page.locator("#received-count")).to_have_text("1 of 6 masks received")
                second = cards.nth(1)
                second.locator("input[type=file]").set_input_files(str(mask_file))
                expect(second.locator(".received-mark")).to_be_visible()
                # A bad file is refused on the page with the server's reason, and not marked.
                bad = tmp_path / "bad.png"
                bad.write_bytes(png(np.zeros((16, 16), np.uint8)))
                third = cards.nth(2)
                third.locator("input[type=file]").set_input_files(str(bad))
                expect(third.locator(".status .error")).to_contain_text("does not match the slice's shape")

                # The token is entered once: a reload keeps it, and the server remembers the masks.
                page.reload()
                expect(page.locator("#login")).to_be_hidden()
                expect(page.locator("#gallery .card.received")).to_have_count(2)
                _wait_for_thumbnails(page)
                shot = Path(os.environ.get("PAAL_SCREENSHOT") or tmp_path / "annotator-page.png")
                page.screenshot(path=str(shot), full_page=True)
                assert shot.stat().st_size > 10_000
                assert not errors, errors
            finally:
                browser.close()
    stored = np.load(ws / "human" / "rounds" / "001" / "inbox" / sorted(
        p.name for p in (ws / "human" / "rounds" / "001" / "inbox").iterdir())[0])
    assert stored.shape == (32, 32) and set(np.unique(stored)) <= {0, 1, 2}
    audit = [json.loads(line) for line in (ws / "human" / "audit.jsonl").read_text().splitlines()]
    assert [a["annotator"] for a in audit[-2:]] == ["Ann Annotator", "Ann Annotator"] and audit[-1]["round"] == 1


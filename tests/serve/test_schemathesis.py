"""A bounded schemathesis run (~1,000 cases) against the live OpenAPI schema of `paal serve` with
tokens: no 5xx, and responses that conform to the schema. Two passes: free parameters (random run
names and slices), then the run waiting for masks and one of its slices, so that random bodies
reach the mask decoders."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from service_helpers import TOKENS, paal_serve, request, write_tokens

# Any schema-valid body is not a usable mask: refusing one with 422 is right, not a failure.
EXCLUDED = "positive_data_acceptance"


def _schemathesis(url: str, token: str, examples: int, config: Path | None, out: Path) -> tuple[int, int, str]:
    cmd = [str(Path(sys.executable).with_name("schemathesis"))]
    if config:
        cmd += ["--config-file", str(config)]
    cmd += ["run", url, "-n", str(examples), "--seed", "7", "-H", f"Authorization: Bearer {token}",
            "--exclude-checks", EXCLUDED, "--request-timeout", "20"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=540, cwd=out)
    text = proc.stdout + proc.stderr
    found = re.search(r"(\d+) generated", text)
    return proc.returncode, int(found.group(1)) if found else 0, text


@pytest.mark.slow
def test_schemathesis_finds_no_server_error(workspace, tmp_path):
    ws, _ = workspace
    token = TOKENS["admin"][0]
    with paal_serve(ws, "--tokens", str(write_tokens(tmp_path / "tokens")), log=tmp_path / "serve.log") as (base, _):
        sid = json.loads(request(f"{base}/runs/human/selection", token=token)[1])["slices"][0]["slice_id"]
        fixed = tmp_path / "fixed.toml"
        fixed.write_text(f'[parameters]\n"path.name" = "human"\n"path.slice_id" = "{sid}"\n')
        total = 0
        for config, examples in [(None, 25), (fixed, 30)]:
            code, cases, text = _schemathesis(f"{base}/openapi.json", token, examples, config, tmp_path)
            print(f"schemathesis ({'fixed run and slice' if config else 'free parameters'}): {cases} cases, "
                  f"exit {code}")
            assert "Server error" not in text and " 500 " not in text, text[-3000:]
            assert code == 0, text[-3000:]
            total += cases
    print(f"schemathesis: {total} cases in all, no failure")
    assert 800 <= total <= 3000, total
    log = (tmp_path / "serve.log").read_text()
    assert '" 500 ' not in log and '" 503 ' not in log and token not in log

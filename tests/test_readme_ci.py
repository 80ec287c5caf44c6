"""README, Makefile and .ci/run must agree: the set-up commands the README gives are the Makefile's
targets, `.ci/run` runs exactly the README's test command and fails when it fails, and every
`paal` command and option the README shows exists."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _code_lines(text: str) -> list[str]:
    """Lines inside ``` fenced blocks, comments stripped."""
    lines, inside = [], False
    for line in text.splitlines():
        if line.strip().startswith("```"):
            inside = not inside
            continue
        if inside and line.split("#", 1)[0].strip():
            lines.append(line.split("#", 1)[0].strip())
    return lines


def _make_targets() -> dict[str, str]:
    """target -> its recipe lines (joined)."""
    targets: dict[str, list[str]] = {}
    current = None
    for line in (REPO / "Makefile").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.$()/-]+):", line)
        if m and not line.startswith("\t"):
            current = m.group(1)
            targets[current] = [line]
        elif line.startswith("\t") and current:
            targets[current].append(line.strip())
    return {k: "\n".join(v) for k, v in targets.items()}


def test_readme_set_up_commands_are_make_targets():
    readme = (REPO / "README.md").read_text()
    make_cmds = [line for line in _code_lines(readme) if line.startswith("make ")]
    assert "make demo" in make_cmds and "make test" in make_cmds
    targets = _make_targets()
    for cmd in make_cmds:
        target = cmd.split()[1]
        assert target in targets, f"README says `{cmd}` but the Makefile has no {target} target"
        assert "install" in targets[target].splitlines()[0], f"`{cmd}` must install into the venv first"
    assert "pytest" in targets["test"]
    assert "venv" in targets["$(STAMP)"]  # install creates the local virtual environment


def test_ci_runs_the_readme_test_command_and_fails_with_it(tmp_path):
    ci = REPO / ".ci" / "run"
    assert os.access(ci, os.X_OK), ".ci/run must be executable"
    commands = [ln.strip() for ln in ci.read_text().splitlines()
                if ln.strip() and not ln.strip().startswith("#") and not ln.startswith(("set ", "cd "))]
    assert commands == ["make test"], f".ci/run must run the README's `make test`, runs {commands}"
    # A stand-in `make` records its arguments and exits with the status we choose.
    fake = tmp_path / "bin" / "make"
    fake.parent.mkdir()
    fake.write_text('#!/usr/bin/env bash\necho "$@" >> "$FAKE_MAKE_LOG"\nexit "$FAKE_MAKE_STATUS"\n')
    fake.chmod(0o755)
    log = tmp_path / "log"
    for status in (0, 1):
        env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}", "FAKE_MAKE_LOG": str(log),
               "FAKE_MAKE_STATUS": str(status)}
        result = subprocess.run([str(ci)], env=env, capture_output=True, timeout=60)
        assert result.returncode == status, f"tests exiting {status} must make .ci/run exit {status}"
    assert log.read_text().split("\n")[:2] == ["test", "test"]


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_make_dry_run_shows_what_readme_promises():
    out = subprocess.run(["make", "-n", "-W", "pyproject.toml", "test"], cwd=REPO, capture_output=True,
                         text=True, timeout=60).stdout
    assert "venv" in out and "pip install" in out and "pytest" in out
    demo = subprocess.run(["make", "-n", "demo"], cwd=REPO, capture_output=True, text=True, timeout=60).stdout
    assert "paal demo" in demo


def test_readme_paal_commands_and_options_exist():
    import typer.main

    from paal_ray.cli.main import app

    group = typer.main.get_command(app)
    shown = [line for line in _code_lines((REPO / "README.md").read_text()) if line.startswith("paal ")]
    assert shown, "README shows no paal command"
    for line in shown:
        words = shlex.split(line.replace("[", " ").replace("]", " ").replace("|", " "))
        if words[1].startswith("-"):
            continue  # paal --help
        assert words[1] in group.commands, f"README shows `paal {words[1]}`, which does not exist"
        options = {o for p in group.commands[words[1]].params for o in (*p.opts, *p.secondary_opts)}
        for word in words[2:]:
            if word.startswith("--"):
                assert word.split("=")[0] in options, f"README shows `paal {words[1]} {word}`: no such option"

"""Ports for the real Ray nodes that tests start with `ray start`.

Single ports come from the OS (the ephemeral range, 32768-60999 on Linux). A node's worker ports are
a block of 200 that must not meet any of them: CI once failed because a random block overlapped the
GCS port the OS had just handed out. Blocks are therefore taken below the ephemeral range and above
Ray's default worker range (10002-19999, used by the test session's own cluster), never twice in one
process, and only when every port in the block is free. Under pytest-xdist each test process takes
blocks from its own share (gw0 the 1st, 3rd, ... block of two processes), so two processes never
pick the same free block at the same moment."""

from __future__ import annotations

import os
import random
import socket
from pathlib import Path

BLOCK = 200
_taken: set[int] = set()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _block_is_free(base: int) -> bool:
    for port in range(base, base + BLOCK):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def _xdist_share() -> tuple[int, int]:
    """This test process's index among pytest-xdist's workers, and their count ((0, 1) without xdist)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    return (int(worker[2:]) % count if worker.startswith("gw") and worker[2:].isdigit() else 0), count


def worker_port_args() -> list[str]:
    """`--min-worker-port` / `--max-worker-port` for one node: a free block outside the ephemeral range."""
    share, shares = _xdist_share()
    bases = [b for i, b in enumerate(range(20000, _ephemeral_start() - BLOCK + 1, BLOCK))
             if i % shares == share and b not in _taken]
    random.shuffle(bases)
    for base in bases:
        if _block_is_free(base):
            _taken.add(base)
            return [f"--min-worker-port={base}", f"--max-worker-port={base + BLOCK - 1}"]
    raise RuntimeError("no free block of 200 worker ports between 20000 and the ephemeral range")

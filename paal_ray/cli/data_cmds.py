"""CLI: `paal phantoms` and `paal ingest` (owned by the data area)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    pass

"""CLI: `paal run`, `paal status`, `paal demo` (owned by the runs area)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    pass

"""Turn user-fixable errors into one clear line and exit status 2 (no traceback)."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

import typer

from paal_ray.config import ConfigError
from paal_ray.data.pool import PoolError

USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, PoolError, FileNotFoundError, FileExistsError)


def user_errors(*extra: type[BaseException]) -> Callable:
    """Decorator for CLI commands: known error types print ``error: <message>`` and exit 2."""

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except USER_ERRORS + extra as e:
                typer.echo(f"error: {e}", err=True)
                sys.exit(2)

        return inner

    return wrap

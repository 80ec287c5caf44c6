"""Turn errors into one clear line on stderr, without a traceback.

- Errors the user can fix (bad input, bad config; the types given to ``user_errors``) print
  ``error: <message>`` and exit 2.
- Errors raised inside Ray (a task, an actor, a Ray Data UDF, a Ray Train worker) reach the
  driver wrapped several times over, and their text is a remote traceback. ``explain`` digs out the
  cause and prints it as one line naming where it happened; the whole traceback goes to a file
  whose path is printed. Exit 2 when the cause is one of the user's errors, 1 otherwise.
- Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import os
import sys
import tempfile
import traceback
from collections.abc import Callable

import typer

from paal_ray.config import ConfigError
from paal_ray.data.pool import PoolError

USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, PoolError, FileNotFoundError, FileExistsError)


def _children(e: BaseException) -> list[BaseException]:
    """What ``e`` wraps: a RayTaskError's cause, Ray Train's worker and controller failures, and
    Python's own chaining."""
    out: list[BaseException] = []
    cause = getattr(e, "cause", None)
    if isinstance(cause, BaseException):
        out.append(cause)
    failures = getattr(e, "worker_failures", None)
    if isinstance(failures, dict):
        out.extend(v for _, v in sorted(failures.items()) if isinstance(v, BaseException))
    ctrl = getattr(e, "controller_failure", None)
    if isinstance(ctrl, BaseException):
        out.append(ctrl)
    out.extend(x for x in (e.__cause__, e.__context__) if x is not None)
    return out


def _is_ray(e: BaseException) -> bool:
    return type(e).__module__.startswith("ray.")


def _walk(exc: BaseException) -> list[BaseException]:
    seen: set[int] = set()
    order: list[BaseException] = []
    stack = [exc]
    while stack:
        e = stack.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        order.append(e)
        stack.extend(_children(e))
    return order


def _where(chain: list[BaseException]) -> str:
    names = {type(e).__name__ for e in chain}
    if names & {"WorkerGroupError", "TrainingFailedError", "ControllerError"}:
        return "in a Ray Train worker"
    if names & {"ActorDiedError", "RayActorError", "ActorUnavailableError"}:
        return "a Ray actor died"
    if names & {"NodeDiedError", "WorkerCrashedError", "OutOfMemoryError", "ObjectLostError"}:
        return "a Ray worker or node was lost"
    if "UserCodeException" in names:
        return "in a Ray Data step"
    return "in a Ray task"


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    if not _is_ray(e):
        first = text.splitlines()[0] if text else ""
        return f"{first}" if isinstance(e, USER_ERRORS) or first else type(e).__name__
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # A Ray error's text is a traceback or a paragraph: its first sentence says what happened.
    return lines[0] if lines else type(e).__name__


def explain(exc: BaseException, user_types: tuple[type[BaseException], ...] = USER_ERRORS) -> tuple[str, bool]:
    """(one line naming the cause, whether the cause is the user's to fix) for an error that came
    through Ray. The cause: the first of our own errors in the chain, else the innermost non-Ray
    exception, else the innermost Ray error."""
    chain = _walk(exc)
    ours = [e for e in chain if isinstance(e, user_types) and not _is_ray(e)]
    plain = [e for e in chain if not _is_ray(e)]
    cause = ours[0] if ours else (plain[-1] if plain else chain[-1])
    kind = "" if isinstance(cause, user_types) else f"{type(cause).__name__}: "
    return f"{_where(chain)}: {kind}{_one_line(cause)}", bool(ours)


def through_ray(exc: BaseException) -> bool:
    return any(_is_ray(e) for e in _walk(exc))


def _save_traceback(exc: BaseException) -> str:
    fd, path = tempfile.mkstemp(prefix="paal-error-", suffix=".txt")
    with os.fdopen(fd, "w") as f:
        f.write("".join(traceback.format_exception(exc)))
    return path


def user_errors(*extra: type[BaseException]) -> Callable:
    """Decorator for CLI commands: known error types print ``error: <message>`` and exit 2; errors
    that came through Ray print their cause in one line (exit 2 if it is a known type, else 1)."""
    known = USER_ERRORS + extra

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except known as e:
                if through_ray(e):  # one of ours, raised remotely: Ray made it pose as its type
                    line, _ = explain(e, known)
                    typer.echo(f"error: {line}", err=True)
                else:
                    typer.echo(f"error: {e}", err=True)
                sys.exit(2)
            except Exception as e:
                if not through_ray(e):
                    raise
                line, user = explain(e, known)
                typer.echo(f"error: {line} (full traceback: {_save_traceback(e)})", err=True)
                sys.exit(2 if user else 1)

        return inner

    return wrap

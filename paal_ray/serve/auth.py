"""Who may call the selection service: bearer tokens with roles.

A token file has one line per person, ``TOKEN ROLE NAME`` (a line starting with ``#`` is a
comment); ROLE is ``viewer`` (reads), ``annotator`` (reads and mask uploads) or ``admin``
(everything, the upload audit log included). The role a route needs follows from its HTTP method (reads need a viewer,
anything else an annotator) unless the route asks for more with ``requires(Role.admin)``; the
check is an app-level dependency, so every router the app includes is covered without edits to it.
Routes marked ``public`` (health, the page's empty shell) are open.

Tokens are held only as SHA-256 digests and never written to a log or a response: errors about
a token file name the line, never its token.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import ipaddress
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fastapi import HTTPException, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

MIN_TOKEN_CHARS = 16
TOKENS_ENV = "PAAL_TOKENS"  # the token file's contents (e.g. from a Kubernetes Secret)
TOKENS_FILE_ENV = "PAAL_TOKENS_FILE"  # the path of a token file (e.g. a mounted Secret)


class Role(enum.IntEnum):
    viewer = 1
    annotator = 2
    admin = 3


class TokenFileError(ValueError):
    """A token file is unusable; the message names the file and line, never a token."""


@dataclass(frozen=True)
class Principal:
    name: str
    role: Role


ANONYMOUS = Principal("anonymous", Role.admin)  # who calls when auth is off (loopback only)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


class TokenTable:
    """Token digests -> principals. ``lookup`` compares digests in constant time."""

    def __init__(self, principals: dict[bytes, Principal]):
        if not principals:
            raise TokenFileError("no tokens: a token file needs at least one line `TOKEN ROLE NAME`")
        self._principals = principals

    def __len__(self) -> int:
        return len(self._principals)

    @classmethod
    def parse(cls, text: str, where: str) -> TokenTable:
        principals: dict[bytes, Principal] = {}
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):  # whole-line comments only: a token may hold '#'
                continue
            parts = line.split(maxsplit=2)
            if len(parts) < 3:
                raise TokenFileError(f"{where} line {number}: expected `TOKEN ROLE NAME`, got {len(parts)} fields")
            token, role, name = parts
            if role not in Role.__members__:
                raise TokenFileError(f"{where} line {number}: role {role!r} is not one of {', '.join(Role.__members__)}")
            if len(token) < MIN_TOKEN_CHARS:
                raise TokenFileError(f"{where} line {number}: the token is shorter than {MIN_TOKEN_CHARS} characters "
                                     "(make one with `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)")
            digest = _digest(token)
            if digest in principals:
                raise TokenFileError(f"{where} line {number}: the same token as another line")
            principals[digest] = Principal(name.strip(), Role[role])
        return cls(principals)

    @classmethod
    def read(cls, path: str | os.PathLike) -> TokenTable:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise TokenFileError(f"{path}: cannot read the token file ({e.strerror or e})") from None
        return cls.parse(text, str(path))

    @classmethod
    def from_environment(cls, env: dict[str, str] | None = None) -> TokenTable | None:
        """Tokens from ``PAAL_TOKENS_FILE`` (a path, e.g. a mounted secret) or ``PAAL_TOKENS`` (the
        file's contents); None when neither is set."""
        env = os.environ if env is None else env
        if env.get(TOKENS_FILE_ENV):
            return cls.read(env[TOKENS_FILE_ENV])
        if env.get(TOKENS_ENV):
            return cls.parse(env[TOKENS_ENV], f"${TOKENS_ENV}")
        return None

    def lookup(self, token: str) -> Principal | None:
        digest = _digest(token)
        found = None
        for known, principal in self._principals.items():  # no early exit: same time for every token
            if hmac.compare_digest(known, digest):
                found = principal
        return found


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, tokens: TokenTable | None, insecure_no_auth: bool) -> None:
    """Refuse to listen beyond this machine without tokens, unless explicitly asked to."""
    if tokens is None and not insecure_no_auth and not is_loopback(host):
        raise TokenFileError(f"refusing to listen on {host} without authentication: anyone who reaches the port could "
                             "read patient slices and overwrite masks. Give --tokens FILE (lines `TOKEN ROLE NAME`), "
                             "or --insecure-no-auth if the network itself is trusted")


def public(endpoint: Callable) -> Callable:
    """Mark a route open to everyone (no token)."""
    endpoint.__paal_public__ = True  # type: ignore[attr-defined]
    return endpoint


_READS = {"GET", "HEAD", "OPTIONS"}


_bearer = HTTPBearer(auto_error=False, description="A token from the service's token file (`paal serve --tokens`).")


async def authenticate(request: Request,
                       credentials: HTTPAuthorizationCredentials | None = Security(_bearer)) -> Principal:
    """The app-level dependency: who is calling, and may they call this route with this method?"""
    endpoint = request.scope.get("endpoint")
    tokens: TokenTable | None = request.app.state.tokens
    if getattr(endpoint, "__paal_public__", False) or tokens is None:
        request.state.principal = ANONYMOUS
        return ANONYMOUS
    token = credentials.credentials.strip() if credentials else ""
    if not token:
        raise HTTPException(401, "missing token: send `Authorization: Bearer TOKEN`",
                            headers={"WWW-Authenticate": "Bearer"})
    principal = tokens.lookup(token)
    if principal is None:
        raise HTTPException(401, "unknown token", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
    needed = Role.viewer if request.method in _READS else Role.annotator
    if principal.role < needed:
        raise HTTPException(403, f"{principal.name} ({principal.role.name}) may not {request.method} here: "
                                 f"needs the {needed.name} role")
    request.state.principal = principal
    return principal


def requires(role: Role):
    """A route-level dependency asking for more than the method's default role."""

    async def check(request: Request) -> Principal:
        principal: Principal = request.state.principal
        if principal.role < role:
            raise HTTPException(403, f"{principal.name} ({principal.role.name}) may not do this: needs the "
                                     f"{role.name} role")
        return principal

    return check

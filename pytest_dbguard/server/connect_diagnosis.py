"""Why a connection attempt failed: the step, a short error without the password, and the remedy.

A failed connect or ``SELECT 1`` is put in one of the :data:`STAGES` (name resolution, TCP
connect, TLS, authentication, database missing, query) from the driver's SQLSTATE or, as drivers
report most connect failures as text only, from its message. The stage decides whether waiting
can help (a refused connect may, a wrong password will not) and which remedy the message gives.
Pure code with no I/O: the readiness wait loop, the janitor and the recovery check share it.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any, Final, NamedTuple

from pytest_dbguard.db.urls import hide_password_in
from pytest_dbguard.exceptions import ReadinessError, masked, sqlstate

NAME_RESOLUTION: Final = "name resolution"
TCP_CONNECT: Final = "TCP connect"
TLS: Final = "TLS"
AUTHENTICATION: Final = "authentication"
DATABASE_MISSING: Final = "database missing"
QUERY: Final = "query"
STAGES: Final = (NAME_RESOLUTION, TCP_CONNECT, TLS, AUTHENTICATION, DATABASE_MISSING, QUERY)

_WAIT_LONGER: Final = (
    "give the server longer to start with --dbguard-wait SECONDS (ini dbguard_wait), "
    "or 'dbguard wait --timeout SECONDS' as a CI step before the tests"
)
REMEDIES: Final[dict[str, str]] = {
    NAME_RESOLUTION: (
        "check the host name in the URL (in Docker Compose or a CI service container, use the "
        "service name and make sure both containers share a network); if the name only appears "
        f"once the server container is up, {_WAIT_LONGER}."
    ),
    TCP_CONNECT: (
        "check that the server is running and listening on that host and port "
        f"(listen_addresses, a container's published port, a firewall), or {_WAIT_LONGER}."
    ),
    TLS: (
        "check the sslmode (psycopg) or ssl (asyncpg) parameter of the URL against the server's "
        "TLS setup: the server may not offer TLS, or its certificate does not verify."
    ),
    AUTHENTICATION: (
        "check the user name and password in the URL (or DBGUARD_URL) and the server's "
        "pg_hba.conf; PostgreSQL reports an unknown role as a failed password too."
    ),
    DATABASE_MISSING: (
        "create that database (createdb, or CREATE DATABASE), or point the URL at one that "
        "exists; dbguard creates its test databases beside it and never writes to it."
    ),
    QUERY: (
        "the server took the connection but did not answer SELECT 1; it may still be starting, "
        f"recovering or out of connection slots: check the server log, or {_WAIT_LONGER}."
    ),
}
# libpq's variables that demand TLS (or GSS encryption) of every connection whose URL does not
# set the parameter: dbguard's own embedded server offers neither.
LIBPQ_DEMANDS: Final = {
    "PGSSLMODE": ("require", "verify-ca", "verify-full"),
    "PGREQUIRESSL": ("1",),
    "PGSSLNEGOTIATION": ("direct",),
    "PGGSSENCMODE": ("require",),
}
_TLS_FROM_ENVIRONMENT: Final = (
    " This environment sets {variables}, which libpq applies to every connection whose URL does "
    "not set that parameter, and a server without TLS (dbguard's embedded one has none) refuses "
    "it: unset it for the tests (env -u {first} pytest ...), or set the parameter in the URL."
)
_SQLITE_REMEDY: Final = "check that the file's folder exists and that this user may write there."
_NOT_READY: Final = (
    "{target} is not ready (URL {url}); failed step: {stage}. Last error: {error}. {outcome} "
    "What to try: {remedy}"
)
_GAVE_UP: Final = "Gave up after {attempts} attempt{s} in {elapsed:.1f} s."
_FINAL: Final = "Stopped after {attempts} attempt{s} in {elapsed:.2f} s: waiting does not fix this."


# NamedTuples, not frozen dataclasses: every run defines them (see the package docstring).
class Failure(NamedTuple):
    """Why an attempt failed: the step, a short error without the password, whether to retry."""

    stage: str
    error: str
    retryable: bool


def from_setting(error: ReadinessError, source: str) -> ReadinessError:
    """``error`` saying which setting gave the URL (``environment variable DBGUARD_URL``, ``ini
    dbguard_url in tox.ini``): where a wrong password or host is to be fixed."""
    return ReadinessError(f"{error} The URL comes from {source}.")


class NotReady(ReadinessError):
    """The database did not answer ``SELECT 1`` in time, or failed in a way waiting cannot fix."""

    def __init__(
        self,
        stage: str,
        host: str | None,
        port: int | None,
        database: str | None,
        last_error: str,
        attempts: int,
        elapsed: float,
        url: str,
        retryable: bool = True,
    ) -> None:
        self.stage = stage
        self.host = host
        self.port = port
        self.database = database
        self.last_error = last_error
        self.attempts = attempts
        self.elapsed = elapsed
        self.url = url
        self.retryable = retryable
        super().__init__(self._explain())

    def __reduce__(self) -> tuple[Any, ...]:
        fields = (self.stage, self.host, self.port, self.database, self.last_error)
        return (type(self), (*fields, self.attempts, self.elapsed, self.url, self.retryable))

    def _explain(self) -> str:
        sqlite = self.url.startswith("sqlite")
        if sqlite:
            target = f"The SQLite database {self.database or ':memory:'!r}"
        else:
            where = (
                f"{self.host}:{self.port}" if self.host else f"the local socket, port {self.port}"
            )
            target = f"Database {self.database or '(default)'!r} on {where}"
        outcome = _GAVE_UP if self.retryable else _FINAL
        return _NOT_READY.format(
            target=target,
            stage=self.stage,
            error=self.last_error.rstrip("."),
            outcome=outcome.format(
                attempts=self.attempts, s="" if self.attempts == 1 else "s", elapsed=self.elapsed
            ),
            url=self.url,
            remedy=_SQLITE_REMEDY if sqlite else REMEDIES.get(self.stage, REMEDIES[QUERY]),
        ) + (_tls_from_environment(self.url) if self.stage == TLS else "")


def _tls_from_environment(url: str) -> str:
    """What libpq's environment demands of TLS, when the URL leaves it to it (``PGSSLMODE=require``
    and a URL without ``sslmode``)."""
    if "sslmode=" in url or "gssencmode=" in url:
        return ""
    found = [
        name
        for name, demanding in LIBPQ_DEMANDS.items()
        if os.environ.get(name, "").strip().lower() in demanding
    ]
    if not found:
        return ""
    shown = ", ".join(f"{name}={os.environ[name]}" for name in found)
    return _TLS_FROM_ENVIRONMENT.format(variables=shown, first=found[0])


class _Rule(NamedTuple):
    stage: str | None  # None: TCP connect before the connection was made, query after
    retryable: bool
    sqlstates: tuple[str, ...]
    pattern: str


# Drivers report failed connections as text without a SQLSTATE, so the text decides; order matters.
_RULES: Final = (
    _Rule(
        DATABASE_MISSING, False, ("3D000",), r'database ".*" does not exist|unable to open database'
    ),
    _Rule(
        AUTHENTICATION,
        False,
        ("28P01", "28000"),
        r"authentication failed|no password supplied|password is required|pg_hba\.conf"
        r'|role ".*" does not exist|not permitted to log in',
    ),
    _Rule(
        NAME_RESOLUTION,
        True,
        (),
        r"could not translate host name|failed to resolve host|Name or service not known"
        r"|nodename nor servname|name resolution",
    ),
    _Rule(TLS, False, (), r"does not support SSL|SSL was required|certificate|sslmode|sslrootcert"),
    _Rule(TLS, True, (), r"SSL SYSCALL|SSL error|SSL connection has been closed"),
    _Rule(
        QUERY,
        True,
        ("57P01", "57P02", "57P03", "53300"),
        r"starting up|shutting down|in recovery|not yet accepting connections"
        r"|too many (?:clients|connections)|connection slots are reserved|terminating connection",
    ),
    _Rule(TCP_CONNECT, True, (), r"Connection refused|No route to host|Network is unreachable"),
    _Rule(
        None,
        True,
        (),
        r"timeout expired|timed out|Connection reset|server closed the connection|Broken pipe"
        r"|EOF detected|consuming input failed|connection is lost|No such file or directory",
    ),
)


def classify_error(
    error: BaseException, *, connected: bool = False, password: str | None = None
) -> Failure:
    """The stage, short message and retryability of a driver or SQLAlchemy error."""
    original = getattr(error, "orig", None) or error
    message = str(original)
    code = sqlstate(original)
    short = scrub(_shorten(message), password)
    for rule in _RULES:
        if code in rule.sqlstates or re.search(rule.pattern, message, re.IGNORECASE):
            stage = rule.stage or (QUERY if connected else TCP_CONNECT)
            return Failure(stage, short, rule.retryable)
    # Unknown text: an operational error (PEP 249 name) may pass with time; others will not.
    names = {cls.__name__ for cls in type(original).__mro__}
    exc = sys.modules.get("sqlalchemy.exc")  # not imported: no SQLAlchemy error to be had
    retryable = (
        isinstance(error, OSError)
        or (exc is not None and isinstance(error, exc.OperationalError))
        or "OperationalError" in names
    )
    return Failure(QUERY if connected else TCP_CONNECT, short, retryable)


def _shorten(message: str) -> str:
    """The reason of a libpq-style message, without its 'connection to server at ...' preamble."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    first = lines[0] if lines else "unknown error"
    first = re.sub(r"^connection failed:\s*", "", first)
    first = re.sub(r"^connection to server (?:at|on) .*? failed:\s*", "", first)
    first = re.sub(r"^(?:FATAL|ERROR):\s+", "", first)
    return first[:300]


def scrub(text: str, password: str | None) -> str:
    """``text`` with URL passwords masked and, defensively, every occurrence of ``password``."""
    return masked(hide_password_in(text), password)

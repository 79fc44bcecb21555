"""Startup readiness: prove the database answers a real ``SELECT 1``, or say why it does not.

Works without pytest: applications call :func:`wait_until_ready` (or :func:`await_ready`) at
startup, CI calls it through ``dbguard wait``, the plugin calls it before the first test, and a
``/health/deep`` endpoint can return :func:`probe` as JSON.

The retry policy is a small frozen dataclass of our own rather than tenacity, because the package
depends on pytest and SQLAlchemy only, the policy is a dozen lines, and this loop needs what a
generic retry library makes awkward: one hard deadline that also bounds every attempt (a hung DNS
lookup or connect is abandoned at the deadline), progress lines on a clock rather than per
attempt, and errors such as a wrong password that stop the loop at once.

Each attempt opens a new DBAPI connection exactly as SQLAlchemy's engine would (the dialect's
own connect arguments and ``connect``) and runs ``SELECT 1`` on it, but skips the engine's
first-connect initialisation queries: on a server that has just started they add 20-40 ms of lag.
For psycopg and psycopg2 URLs the check builds those arguments itself (SQLAlchemy's dialect only
passes the URL's parts and query on as keywords) and does not import SQLAlchemy: in the xdist
controller the check runs before any worker is started, and the import cost a quarter second.

The diagnosis of a failed attempt (its stage, whether waiting helps, the message and the
remedy) is :mod:`pytest_dbguard.server.connect_diagnosis`, shared with the janitor and the recovery check.
"""

from __future__ import annotations

import dataclasses
import importlib
import ipaddress
import math
import random
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from pytest_dbguard.db.urls import DatabaseURL, driver_installed
from pytest_dbguard.exceptions import ConfigError
from pytest_dbguard.server.connect_diagnosis import (
    NAME_RESOLUTION,
    QUERY,
    TCP_CONNECT,
    Failure,
    NotReady,
    classify_error,
)

if TYPE_CHECKING:
    from sqlalchemy.engine import Dialect

__all__ = ["Probe", "Readiness", "RetryPolicy", "await_ready", "probe", "wait_until_ready"]

PROGRESS_AFTER: Final = 1.0  # seconds of waiting before the first progress line
PROGRESS_EVERY: Final = 2.0  # seconds between progress lines after that
MIN_ATTEMPT: Final = 0.05  # an attempt gets at least this long; none starts closer to the deadline
DEFAULT_PORT: Final = 5432


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff with jitter, and how long one attempt may take."""

    first_delay: float = 0.005
    max_delay: float = 0.02
    multiplier: float = 2.0
    jitter: float = 0.2  # each pause is shortened by up to this fraction, so workers drift apart
    attempt_timeout: float = 5.0

    def delay(self, attempt: int) -> float:
        """The pause after failed attempt number ``attempt`` (counted from 1)."""
        base = min(self.max_delay, self.first_delay * self.multiplier ** min(attempt - 1, 64))
        return base * (1.0 - self.jitter * random.random())

    @staticmethod
    def for_host(host: str | None) -> RetryPolicy:
        """The tight loopback policy for local servers, the gentle remote one otherwise."""
        return LOOPBACK_POLICY if is_local_host(host) else REMOTE_POLICY


# A refused loopback connect costs microseconds, so polling every 5-20 ms is free; measured with
# benchmarks/readiness_lag.py a 20 ms cap beat 50 ms (median 32 vs 39 ms, p90 46 vs 81 ms of lag).
# A remote server is not polled more than about once a second.
LOOPBACK_POLICY: Final = RetryPolicy(first_delay=0.005, max_delay=0.02, attempt_timeout=5.0)
REMOTE_POLICY: Final = RetryPolicy(first_delay=0.1, max_delay=1.0, attempt_timeout=10.0)


def is_local_host(host: str | None) -> bool:
    """Whether ``host`` is a unix socket, ``localhost`` or a loopback address."""
    if not host or host.startswith(("/", "@")):
        return True
    name = host.lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@dataclasses.dataclass(frozen=True)
class Readiness:
    """A successful readiness check: attempts made, time spent, and the server's version."""

    attempts: int
    elapsed_ms: float
    server_version: str | None


@dataclasses.dataclass(frozen=True)
class Probe:
    """One check, as a ``/health/deep`` endpoint reports it; ``stage``/``error`` set on failure."""

    status: str  # "ok" or "error"
    latency_ms: float
    server_version: str | None = None
    stage: str | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The probe as a JSON-ready dict."""
        return dataclasses.asdict(self)


class _Target:
    """The database one check is about: its sync URL, what to print, and how to connect to it."""

    def __init__(self, url: str | DatabaseURL) -> None:
        parsed = url if isinstance(url, DatabaseURL) else DatabaseURL.parse(url)
        self.url = _sync_twin(parsed)
        self.shown = parsed.render(hide_password=True)
        self.password = parsed.password
        self.database = parsed.database
        self.is_sqlite = parsed.is_sqlite
        self.host = None if self.is_sqlite else parsed.host
        self.port = None if self.is_sqlite else (parsed.port or DEFAULT_PORT)
        if not self.is_sqlite and self.url.driver and not driver_installed(self.url.driver):
            raise ConfigError(
                f"{self.shown}: the driver {self.url.driver!r} is not installed; install it "
                "(pip install 'pytest-dbguard[postgres]') or name an installed one in the URL."
            )
        self._dbapi: Any = None  # the driver module, once imported
        self._connect: Callable[..., Any] | None = None
        self._cargs: tuple[Any, ...] = ()
        self._cparams: dict[str, Any] = {}

    @property
    def resolvable_host(self) -> str | None:
        """The host name to resolve first; None for SQLite and unix sockets."""
        if not self.host or self.host.startswith(("/", "@")):
            return None
        return self.host

    def prepare(self) -> None:
        """Import the driver and turn the URL into connect arguments, once; SQLAlchemy only for
        a URL whose arguments its dialect alone knows how to build."""
        if self._connect is not None:
            return
        plain = _plain_connect_args(self.url)
        if plain is not None:
            assert self.url.driver is not None
            self._dbapi = importlib.import_module(self.url.driver)
            self._connect, self._cparams = self._dbapi.connect, plain
            return
        from sqlalchemy import create_engine
        from sqlalchemy.pool import NullPool

        engine = create_engine(self.url.to_sqlalchemy(), poolclass=NullPool)  # never connects
        cargs, cparams = engine.dialect.create_connect_args(engine.url)
        self._cargs, self._cparams = tuple(cargs), dict(cparams)
        dialect: Dialect = engine.dialect
        self._dbapi, self._connect = dialect.loaded_dbapi, dialect.connect

    def connect(self, limit: float) -> Any:
        """A new DBAPI connection, opened the way an engine opens one."""
        self.prepare()
        assert self._connect is not None
        params = dict(self._cparams)
        if not self.is_sqlite:  # libpq counts whole seconds; the attempt's own timer is exact
            params["timeout" if self.url.driver == "pg8000" else "connect_timeout"] = max(
                1, math.ceil(limit)
            )
        return self._connect(*self._cargs, **params)

    @property
    def dbapi(self) -> Any:
        """The driver module (PEP 249)."""
        self.prepare()
        return self._dbapi

    @property
    def dbapi_error(self) -> type[Exception]:
        """The driver's base exception class (PEP 249 ``Error``)."""
        error: type[Exception] = self.dbapi.Error
        return error


PLAIN_DRIVERS: Final = ("psycopg", "psycopg2")


def _plain_connect_args(url: DatabaseURL) -> dict[str, Any] | None:
    """The keywords SQLAlchemy's psycopg and psycopg2 dialects pass to ``connect`` for ``url``
    (its parts, then its query); None for other drivers and for several hosts in the query,
    which only the dialect splits."""
    if url.is_sqlite or url.driver not in PLAIN_DRIVERS or any(k == "host" for k, _ in url.query):
        return None
    parts = {
        "host": url.host,
        "dbname": url.database,
        "user": url.username,
        "password": url.password,
        "port": url.port,
    }
    params: dict[str, Any] = {name: value for name, value in parts.items() if value}
    params.update(url.query)
    return params or None


def _sync_twin(url: DatabaseURL) -> DatabaseURL:
    """The URL the check connects with: asyncpg's ``ssl`` query parameter becomes ``sslmode``."""
    sync = url.sync()
    if url.driver == "asyncpg" and any(key == "ssl" for key, _ in url.query):
        modes = {"true": "require", "false": "disable"}
        query = tuple(
            ("sslmode", modes.get(value.lower(), value)) if key == "ssl" else (key, value)
            for key, value in url.query
        )
        sync = dataclasses.replace(sync, query=query)
    return sync


def _server_version(connection: Any, dbapi: Any) -> str | None:
    """The version the server announced at connect time (no extra round trip)."""
    number = getattr(getattr(connection, "info", None), "server_version", None)  # psycopg 3
    if number is None:
        number = getattr(connection, "server_version", None)  # psycopg2
    if isinstance(number, int) and number > 0:
        major, rest = divmod(number, 10000)
        return f"{major}.{rest}" if major >= 10 else f"{major}.{rest // 100}.{rest % 100}"
    sqlite_version = getattr(dbapi, "sqlite_version", None)
    return str(sqlite_version) if sqlite_version else None


class _Attempt:
    """One check, run in a daemon thread so a hung DNS lookup or connect is abandoned in time."""

    def __init__(self, target: _Target, limit: float) -> None:
        self.target = target
        self.limit = limit
        self.stage: str = NAME_RESOLUTION
        self.version: str | None = None
        self.failure: Failure | None = None
        self.crash: BaseException | None = None
        self.done = threading.Event()

    def run(self) -> None:
        try:
            self._check()
        except BaseException as error:  # handed to the waiting thread, which raises it
            self.crash = error
        finally:
            self.done.set()

    def _check(self) -> None:
        target = self.target
        host = target.resolvable_host
        if host is not None:
            try:
                socket.getaddrinfo(host, target.port, type=socket.SOCK_STREAM)
            except (socket.gaierror, UnicodeError) as error:
                reason = getattr(error, "strerror", None) or str(error)
                self.failure = Failure(NAME_RESOLUTION, f"cannot resolve {host!r}: {reason}", True)
                return
        self.stage = TCP_CONNECT
        connected = False
        try:
            connection = target.connect(self.limit)
            connected = True
            self.stage = QUERY
            try:
                cursor = connection.cursor()
                cursor.execute("SELECT 1")
                cursor.fetchone()
                self.version = _server_version(connection, target.dbapi)
            finally:
                connection.close()
        except (target.dbapi_error, OSError) as error:
            self.failure = classify_error(error, connected=connected, password=target.password)


def _attempt(target: _Target, limit: float) -> _Attempt:
    """Run one check; after ``limit`` seconds it counts as failed at the stage it had reached."""
    attempt = _Attempt(target, limit)
    threading.Thread(target=attempt.run, name="dbguard-readiness", daemon=True).start()
    if not attempt.done.wait(limit):
        error = f"no answer within {limit:.2f} s"
        attempt.failure = Failure(attempt.stage, error, retryable=True)
    elif attempt.crash is not None:
        raise attempt.crash
    return attempt


def wait_until_ready(
    url: str | DatabaseURL,
    *,
    timeout: float = 30.0,
    progress: Callable[[str], None] | None = None,
    policy: RetryPolicy | None = None,
) -> Readiness:
    """Retry ``SELECT 1`` until it succeeds or ``timeout`` passes; NotReady says what failed."""
    return _wait(_Target(url), timeout, progress, policy, threading.Event())


async def await_ready(
    url: str | DatabaseURL,
    *,
    timeout: float = 30.0,
    progress: Callable[[str], None] | None = None,
    policy: RetryPolicy | None = None,
) -> Readiness:
    """:func:`wait_until_ready` for async code: runs in a thread; ``progress`` is called from it."""
    import asyncio

    target = _Target(url)
    stop = threading.Event()
    try:
        return await asyncio.to_thread(_wait, target, timeout, progress, policy, stop)
    finally:
        stop.set()  # a cancelled caller ends the loop at its next pause


def _wait(
    target: _Target,
    timeout: float,
    progress: Callable[[str], None] | None,
    policy: RetryPolicy | None,
    stop: threading.Event,
) -> Readiness:
    policy = policy or RetryPolicy.for_host(target.host)
    target.prepare()  # imports off the clock
    start = time.monotonic()
    deadline = start + max(timeout, 0.0)
    next_report = start + PROGRESS_AFTER
    attempts = 0
    while True:
        attempts += 1
        left = deadline - time.monotonic()
        attempt = _attempt(target, min(policy.attempt_timeout, max(left, MIN_ATTEMPT)))
        now = time.monotonic()
        failure = attempt.failure
        if failure is None:
            return Readiness(attempts, round((now - start) * 1000, 1), attempt.version)
        left = deadline - now
        if not failure.retryable or left < MIN_ATTEMPT or stop.is_set():
            raise _not_ready(target, failure, attempts, now - start)
        if progress is not None and now >= next_report:
            progress(_progress_line(target, attempts, failure, left))
            next_report = now + PROGRESS_EVERY
        if stop.wait(min(policy.delay(attempts), left - MIN_ATTEMPT)):
            raise _not_ready(target, failure, attempts, time.monotonic() - start)


def _not_ready(target: _Target, failure: Failure, attempts: int, elapsed: float) -> NotReady:
    return NotReady(
        stage=failure.stage,
        host=target.host,
        port=target.port,
        database=target.database,
        last_error=failure.error,
        attempts=attempts,
        elapsed=elapsed,
        url=target.shown,
        retryable=failure.retryable,
    )


def _progress_line(target: _Target, attempts: int, failure: Failure, left: float) -> str:
    where = f"{target.host}:{target.port}" if target.host else target.shown
    return (
        f"waiting for {where}: attempt {attempts}, failed step: {failure.stage} "
        f"({failure.error}), {left:.1f} s left"
    )


def probe(url: str | DatabaseURL, *, timeout: float = 5.0) -> Probe:
    """One check, no retries: status, latency, server version, and the failing stage if any."""
    target = _Target(url)
    target.prepare()  # the driver is imported before the clock starts
    start = time.monotonic()
    attempt = _attempt(target, max(timeout, MIN_ATTEMPT))
    latency = round((time.monotonic() - start) * 1000, 2)
    if attempt.failure is None:
        return Probe("ok", latency, attempt.version)
    return Probe("error", latency, None, attempt.failure.stage, attempt.failure.error)


def first_row(url: str | DatabaseURL, statement: str, *, timeout: float = 5.0) -> Any:
    """``statement``'s first row (None without one), on a new connection opened the way the
    check opens one; the driver's error when that fails. For a question asked before anything
    else connects (may this role create databases?), without importing SQLAlchemy."""
    connection = _Target(url).connect(timeout)
    try:
        cursor = connection.cursor()
        cursor.execute(statement)
        return cursor.fetchone()
    finally:
        connection.close()

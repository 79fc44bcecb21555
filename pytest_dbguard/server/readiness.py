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
own connect arguments and ``connect``, see :mod:`pytest_dbguard.server.connect_target`) and runs
``SELECT 1`` on it, but skips the engine's first-connect initialisation queries: on a server that
has just started they add 20-40 ms of lag. The run's own check (:func:`wait_for_run`) keeps the
connection that answered for the maintenance engine (:mod:`pytest_dbguard.server.handover`).

The diagnosis of a failed attempt (its stage, whether waiting helps, the message and the
remedy) is :mod:`pytest_dbguard.server.connect_diagnosis`, shared with the janitor and the recovery check.
"""

from __future__ import annotations

import ipaddress
import random
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Final

from pytest_dbguard.db.urls import DatabaseURL
from pytest_dbguard.records import Record
from pytest_dbguard.server import handover
from pytest_dbguard.server.connect_diagnosis import (
    AUTHENTICATION,
    DATABASE_MISSING,
    NAME_RESOLUTION,
    QUERY,
    TCP_CONNECT,
    TLS,
    Failure,
    NotReady,
    classify_error,
)
from pytest_dbguard.server.connect_target import ConnectTarget, server_version

__all__ = ["Probe", "Readiness", "RetryPolicy", "await_ready", "probe", "wait_until_ready"]

PROGRESS_AFTER: Final = 1.0  # seconds of waiting before the first progress line
PROGRESS_EVERY: Final = 2.0  # seconds between progress lines after that
MIN_ATTEMPT: Final = 0.05  # an attempt gets at least this long; none starts closer to the deadline
REFUSED_AT_CONNECT: Final = (AUTHENTICATION, DATABASE_MISSING, TLS)  # the server's answer: final


class RetryPolicy(Record):
    """Capped exponential backoff with jitter, and how long one attempt may take."""

    __slots__ = ("attempt_timeout", "first_delay", "jitter", "max_delay", "multiplier")
    first_delay: float
    max_delay: float
    multiplier: float
    jitter: float  # each pause is shortened by up to this fraction, so workers drift apart
    attempt_timeout: float

    def __init__(
        self,
        first_delay: float = 0.005,
        max_delay: float = 0.02,
        multiplier: float = 2.0,
        jitter: float = 0.2,
        attempt_timeout: float = 5.0,
    ) -> None:
        self._set_from(locals())

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


class Readiness(Record):
    """A successful readiness check: attempts made, time spent, and the server's version."""

    __slots__ = ("attempts", "elapsed_ms", "server_version")
    attempts: int
    elapsed_ms: float
    server_version: str | None

    def __init__(self, attempts: int, elapsed_ms: float, server_version: str | None) -> None:
        self._set_from(locals())


class Probe(Record):
    """One check, as a ``/health/deep`` endpoint reports it; ``stage``/``error`` set on failure."""

    __slots__ = ("error", "latency_ms", "server_version", "stage", "status")
    status: str  # "ok" or "error"
    latency_ms: float
    server_version: str | None
    stage: str | None
    error: str | None

    def __init__(
        self,
        status: str,
        latency_ms: float,
        server_version: str | None = None,
        stage: str | None = None,
        error: str | None = None,
    ) -> None:
        self._set_from(locals())

    def as_dict(self) -> dict[str, Any]:
        """The probe as a JSON-ready dict."""
        return {
            "status": self.status,
            "latency_ms": self.latency_ms,
            "server_version": self.server_version,
            "stage": self.stage,
            "error": self.error,
        }


class _Attempt:
    """One check, run in a daemon thread so a hung DNS lookup or connect is abandoned in time."""

    def __init__(self, target: ConnectTarget, limit: float, *, keep: bool = False) -> None:
        self.target = target
        self.limit = limit
        self.keep = keep and target.can_hand_over
        self.connection: Any = None  # the connection that answered, when kept
        self._abandoned = False
        self._lock = threading.Lock()
        self.stage: str = NAME_RESOLUTION
        self.version: str | None = None
        self.failure: Failure | None = None
        self.crash: BaseException | None = None
        self.done = threading.Event()

    def abandon(self) -> None:
        """The waiter gave up on this attempt: a connection it opens after all is closed."""
        with self._lock:
            self._abandoned = True
            connection, self.connection = self.connection, None
        if connection is not None:
            handover.close_quietly(connection)

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
            connection = target.connect(self.limit, maintenance=self.keep)
            connected = True
            self.stage = QUERY
            try:
                cursor = connection.cursor()
                cursor.execute("SELECT 1")
                cursor.fetchone()
                self.version = server_version(connection, target.dbapi)
                with self._lock:
                    if self.keep and not self._abandoned:
                        self.connection, connection = connection, None
            finally:
                if connection is not None:
                    connection.close()
        except (target.dbapi_error, OSError) as error:
            self.failure = classify_error(error, connected=connected, password=target.password)


def _attempt(target: ConnectTarget, limit: float, *, keep: bool = False) -> _Attempt:
    """Run one check; after ``limit`` seconds it counts as failed at the stage it had reached."""
    attempt = _Attempt(target, limit, keep=keep)
    threading.Thread(target=attempt.run, name="dbguard-readiness", daemon=True).start()
    if not attempt.done.wait(limit):
        attempt.abandon()
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
    return _wait(ConnectTarget(url), timeout, progress, policy, threading.Event())


def wait_for_run(
    url: DatabaseURL, *, timeout: float, progress: Callable[[str], None] | None = None
) -> Readiness:
    """:func:`wait_until_ready` for dbguard's own run. A connection an earlier check kept (the
    role check) proves the server with ``SELECT 1``, and no new one is opened; the connection
    that answers is kept for the maintenance engine, which would otherwise open its own."""
    target = ConnectTarget(url)
    taken = handover.take_timed(target.url)
    if taken is not None:
        kept, opened_ms = taken
        started = time.monotonic()
        try:
            cursor = kept.cursor()
            cursor.execute("SELECT 1")
            cursor.fetchone()
        except (target.dbapi_error, OSError):  # broken since: check the usual way
            handover.close_quietly(kept)
        else:
            round_trip = (time.monotonic() - started) * 1000  # < 0.1 ms
            handover.keep(target.url, kept, opened_ms=opened_ms)
            # What it took to open that connection: the round trip alone reads "0 ms".
            elapsed = round(opened_ms + round_trip, 2)
            return Readiness(1, elapsed, server_version(kept, target.dbapi))
    return _wait(target, timeout, progress, None, threading.Event(), keep=True)


async def await_ready(
    url: str | DatabaseURL,
    *,
    timeout: float = 30.0,
    progress: Callable[[str], None] | None = None,
    policy: RetryPolicy | None = None,
) -> Readiness:
    """:func:`wait_until_ready` for async code: runs in a thread; ``progress`` is called from it."""
    import asyncio

    target = ConnectTarget(url)
    stop = threading.Event()
    try:
        return await asyncio.to_thread(_wait, target, timeout, progress, policy, stop)
    finally:
        stop.set()  # a cancelled caller ends the loop at its next pause


def _wait(
    target: ConnectTarget,
    timeout: float,
    progress: Callable[[str], None] | None,
    policy: RetryPolicy | None,
    stop: threading.Event,
    *,
    keep: bool = False,
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
        attempt = _attempt(target, min(policy.attempt_timeout, max(left, MIN_ATTEMPT)), keep=keep)
        now = time.monotonic()
        failure = attempt.failure
        if failure is None:
            if attempt.connection is not None:
                handover.keep(target.url, attempt.connection, opened_ms=(now - start) * 1000)
            return Readiness(attempts, round((now - start) * 1000, 1), attempt.version)
        left = deadline - now
        if not failure.retryable or left < MIN_ATTEMPT or stop.is_set():
            raise _not_ready(target, failure, attempts, now - start)
        if progress is not None and now >= next_report:
            progress(_progress_line(target, attempts, failure, left))
            next_report = now + PROGRESS_EVERY
        if stop.wait(min(policy.delay(attempts), left - MIN_ATTEMPT)):
            raise _not_ready(target, failure, attempts, time.monotonic() - start)


def _not_ready(target: ConnectTarget, failure: Failure, attempts: int, elapsed: float) -> NotReady:
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


def _progress_line(target: ConnectTarget, attempts: int, failure: Failure, left: float) -> str:
    where = f"{target.host}:{target.port}" if target.host else target.shown
    return (
        f"waiting for {where}: attempt {attempts}, failed step: {failure.stage} "
        f"({failure.error}), {left:.1f} s left"
    )


def probe(url: str | DatabaseURL, *, timeout: float = 5.0) -> Probe:
    """One check, no retries: status, latency, server version, and the failing stage if any."""
    target = ConnectTarget(url)
    target.prepare()  # the driver is imported before the clock starts
    start = time.monotonic()
    attempt = _attempt(target, max(timeout, MIN_ATTEMPT))
    latency = round((time.monotonic() - start) * 1000, 2)
    if attempt.failure is None:
        return Probe("ok", latency, attempt.version)
    return Probe("error", latency, None, attempt.failure.stage, attempt.failure.error)


def refused_for_good(url: DatabaseURL, error: BaseException, elapsed: float) -> NotReady | None:
    """The readiness check's error for a connection that failed in a way waiting does not fix (a
    wrong password, a missing database, TLS the server refuses), as the check itself would stop
    with it; None when a retry might succeed (a server still starting: the check waits for it)."""
    target = ConnectTarget(url)
    failure = classify_error(error, password=target.password)
    if failure.retryable or failure.stage not in REFUSED_AT_CONNECT:
        return None
    return _not_ready(target, failure, 1, elapsed)


def first_row(url: DatabaseURL, statement: str, *, timeout: float = 5.0) -> Any:
    """``statement``'s first row (None without one), on a new connection opened the way the
    check opens one; the driver's error when that fails. For a question asked before anything
    else connects (may this role create databases?), without importing SQLAlchemy. The
    connection is kept for the readiness check and the maintenance engine where they can take it."""
    target = ConnectTarget(url)
    target.prepare()  # the driver's import is not the server's time
    started = time.monotonic()
    connection = target.connect(timeout, maintenance=True)
    try:
        cursor = connection.cursor()
        cursor.execute(statement)
        row = cursor.fetchone()
    except BaseException:
        handover.close_quietly(connection)
        raise
    if target.can_hand_over:
        handover.keep(target.url, connection, opened_ms=(time.monotonic() - started) * 1000)
    else:
        connection.close()
    return row

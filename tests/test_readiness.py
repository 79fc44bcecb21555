"""Startup readiness against real servers: one up, one starting late, and ones that never come."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_dbguard.db import maintenance
from pytest_dbguard.db.urls import DatabaseURL
from pytest_dbguard.exceptions import ConfigError, ReadinessError
from pytest_dbguard.server import handover
from pytest_dbguard.server.connect_diagnosis import (
    AUTHENTICATION,
    DATABASE_MISSING,
    NAME_RESOLUTION,
    TCP_CONNECT,
    TLS,
    NotReady,
)
from pytest_dbguard.server.handover import MAINTENANCE_APP
from pytest_dbguard.server.readiness import (
    LOOPBACK_POLICY,
    REMOTE_POLICY,
    RetryPolicy,
    await_ready,
    first_row,
    is_local_host,
    probe,
    wait_for_run,
    wait_until_ready,
)
from tests.pgserver import SUPERUSER_PASSWORD, TestServer, delayed_server, free_port

WRONG_PASSWORD = "Wr0ng-Pw-Never-Shown"


def dead_url(pg_server: TestServer) -> str:
    """The live server's URL on a loopback port nobody listens on."""
    return pg_server.url().replace(f":{pg_server.port}/", f":{free_port()}/")


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts TCP connections (kernel backlog) but never says a word."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield int(listener.getsockname()[1])


def test_live_server_is_ready_at_first_attempt(pg_server: TestServer) -> None:
    result = wait_until_ready(pg_server.url(), timeout=10)
    assert result.attempts == 1
    assert result.server_version is not None and result.server_version.startswith("15")
    assert 0 < result.elapsed_ms < 5000


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2", "asyncpg"])
def test_every_driver_is_checked_through_a_sync_connection(
    pg_server: TestServer, driver: str
) -> None:
    assert wait_until_ready(pg_server.url(driver=driver), timeout=10).attempts == 1


def test_await_ready_for_async_applications(pg_server: TestServer) -> None:
    result = asyncio.run(await_ready(pg_server.url(driver="asyncpg"), timeout=10))
    assert result.attempts == 1


def test_cancelled_await_ready_stops_waiting(pg_server: TestServer) -> None:
    async def give_up_early() -> None:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(await_ready(dead_url(pg_server), timeout=30), 0.3)

    began = time.monotonic()
    asyncio.run(give_up_early())  # asyncio.run waits for the worker thread before returning
    # A wait that ignored the cancel would hold asyncio.run for its whole 30 s.
    assert time.monotonic() - began < 15


def test_server_that_starts_late_is_waited_for() -> None:
    lines: list[str] = []
    with delayed_server(3.0) as delayed:
        began = time.monotonic()
        result = wait_until_ready(delayed.server.url(), timeout=25, progress=lines.append)
        assert delayed.error is None
    assert delayed.launched_at is not None
    assert result.attempts > 10
    assert time.monotonic() - began >= 2.5
    assert lines, "a wait of seconds prints progress"
    assert len(lines) < 6, "progress comes now and then, not at every attempt"
    assert f"127.0.0.1:{delayed.server.port}" in lines[0]
    assert "attempt" in lines[0] and TCP_CONNECT in lines[0] and "s left" in lines[0]


def test_server_that_never_comes_fails_at_the_deadline(pg_server: TestServer) -> None:
    url = dead_url(pg_server)
    port = url.rsplit(":", 1)[1].split("/")[0]
    began = time.monotonic()
    with pytest.raises(NotReady) as caught:
        wait_until_ready(url, timeout=2.0)
    spent = time.monotonic() - began
    assert spent >= 1.8  # it kept trying until the deadline ...
    assert spent < 12  # ... and then stopped, where a loop without one would run on
    error = caught.value
    assert error.stage == TCP_CONNECT
    assert error.attempts > 5
    assert (error.host, error.port) == ("127.0.0.1", int(port))
    message = str(error)
    assert "TCP connect" in message and f"127.0.0.1:{port}" in message
    assert "'postgres'" in message and "--dbguard-wait" in message
    assert SUPERUSER_PASSWORD not in message


def test_an_attempt_never_outlives_the_deadline(pg_server: TestServer, silent_port: int) -> None:
    # libpq's own connect timeout is at least 2 s; the deadline still holds.
    url = pg_server.url().replace(f":{pg_server.port}/", f":{silent_port}/")
    began = time.monotonic()
    with pytest.raises(NotReady) as caught:
        wait_until_ready(url, timeout=0.5)
    assert time.monotonic() - began < 1.9  # libpq alone would wait at least 2 s
    assert caught.value.stage == TCP_CONNECT
    assert "no answer within" in caught.value.last_error


def test_wrong_password_fails_at_once_without_showing_it(pg_server: TestServer) -> None:
    with pytest.raises(NotReady) as caught:
        wait_until_ready(pg_server.url(password=WRONG_PASSWORD), timeout=20)
    error = caught.value  # at once: one attempt, not retried
    assert (error.stage, error.attempts, error.retryable) == (AUTHENTICATION, 1, False)
    message = str(error)
    assert "authentication" in message and "password" in message
    assert WRONG_PASSWORD not in message and WRONG_PASSWORD not in repr(error.__dict__)
    assert "postgres:***@" in message


def test_missing_role_is_an_authentication_failure(pg_server: TestServer) -> None:
    with pytest.raises(NotReady) as caught:
        wait_until_ready(pg_server.url(user="ghost", password="whatever"), timeout=20)
    assert (caught.value.stage, caught.value.attempts) == (AUTHENTICATION, 1)


def test_missing_database_says_so(pg_server: TestServer) -> None:
    with pytest.raises(NotReady) as caught:
        wait_until_ready(pg_server.url("no_such_db"), timeout=20)
    error = caught.value
    assert (error.stage, error.database, error.attempts) == (DATABASE_MISSING, "no_such_db", 1)
    assert "database missing" in str(error) and "CREATE DATABASE" in str(error)


def test_unresolvable_host_names_name_resolution(pg_server: TestServer) -> None:
    url = pg_server.url().replace("127.0.0.1", "nohost.invalid")
    with pytest.raises(NotReady) as caught:
        wait_until_ready(url, timeout=1.0)
    error = caught.value
    assert error.stage == NAME_RESOLUTION
    assert "name resolution" in str(error) and "nohost.invalid" in str(error)


def test_tls_required_by_the_url_but_not_offered(pg_server: TestServer) -> None:
    with pytest.raises(NotReady) as caught:
        wait_until_ready(pg_server.url() + "?sslmode=require", timeout=20)
    assert (caught.value.stage, caught.value.attempts) == (TLS, 1)


def test_not_ready_is_a_readiness_error_that_pickles(pg_server: TestServer) -> None:
    with pytest.raises(ReadinessError) as caught:
        wait_until_ready(pg_server.url("no_such_db"), timeout=5)
    copy = pickle.loads(pickle.dumps(caught.value))
    assert isinstance(copy, NotReady) and str(copy) == str(caught.value)


def test_probe_reports_status_latency_and_version(pg_server: TestServer) -> None:
    ok = probe(pg_server.url())
    assert (ok.status, ok.stage, ok.error) == ("ok", None, None)
    assert ok.server_version is not None and ok.latency_ms > 0
    failed = probe(dead_url(pg_server), timeout=1.0)
    assert (failed.status, failed.stage) == ("error", TCP_CONNECT)
    assert json.loads(json.dumps(failed.as_dict()))["stage"] == TCP_CONNECT


def test_sqlite_is_ready_once_the_file_opens(tmp_path: Path) -> None:
    assert wait_until_ready(f"sqlite:///{tmp_path / 'app.db'}", timeout=5).attempts == 1
    with pytest.raises(NotReady) as caught:
        wait_until_ready(f"sqlite:///{tmp_path / 'missing' / 'app.db'}", timeout=5)
    assert caught.value.stage == DATABASE_MISSING


def test_a_bad_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not a database URL"):
        wait_until_ready("not a url")


@pytest.mark.parametrize(
    ("host", "local"),
    [
        pytest.param(None, True, id="default-socket"),
        pytest.param("/var/run/postgresql", True, id="socket-dir"),
        pytest.param("localhost", True, id="localhost"),
        pytest.param("127.0.0.1", True, id="ipv4-loopback"),
        pytest.param("::1", True, id="ipv6-loopback"),
        pytest.param("db.example.com", False, id="remote-name"),
        pytest.param("10.0.0.5", False, id="remote-address"),
    ],
)
def test_policy_follows_the_host(host: str | None, local: bool) -> None:
    assert is_local_host(host) is local
    assert RetryPolicy.for_host(host) is (LOOPBACK_POLICY if local else REMOTE_POLICY)


def test_backoff_grows_to_its_cap_with_jitter_below_it() -> None:
    policy = RetryPolicy(first_delay=0.01, max_delay=0.08, jitter=0.25)
    for attempt, ceiling in [(1, 0.01), (2, 0.02), (4, 0.08), (50, 0.08), (10_000, 0.08)]:
        delays = [policy.delay(attempt) for _ in range(200)]
        assert all(ceiling * 0.75 <= delay <= ceiling for delay in delays)
        assert len(set(delays)) > 1


@pytest.fixture
def own_database(pg_server: TestServer) -> Iterator[str]:
    """A database of the test's own (the process-wide maintenance engines and kept connections
    are keyed by URL), dropped afterwards with whatever dbguard kept open on it."""
    database = f"handover_{os.getpid()}_{time.monotonic_ns()}"
    pg_server.sql(f"CREATE DATABASE {database}")
    try:
        yield database
    finally:
        maintenance.close_shared()
        handover.close_all()
        pg_server.sql(f"DROP DATABASE {database} WITH (FORCE)")


def test_a_server_proven_on_the_role_checks_connection_reports_that_connections_time(
    pg_server: TestServer, own_database: str
) -> None:
    # The role check connects first and keeps its connection; the readiness check then proves
    # the server with one round trip on it. What the header reports is the connect (a TCP and
    # SCRAM handshake) plus that round trip, not the round trip alone ("0 ms" in pretix's trial).
    url = DatabaseURL.parse(pg_server.url(own_database))
    assert first_row(url, "SELECT 1") == (1,)
    started = time.monotonic()
    ready = wait_for_run(url, timeout=10)
    own_ms = (time.monotonic() - started) * 1000
    assert ready.attempts == 1
    assert ready.elapsed_ms > own_ms  # it includes the earlier connect


def test_importing_readiness_does_not_import_sqlalchemy() -> None:
    code = "import sys, pytest_dbguard.server.readiness; print('sqlalchemy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_runs_own_check_hands_its_connection_to_the_maintenance_engine(
    pg_server: TestServer, own_database: str
) -> None:
    url = DatabaseURL.parse(pg_server.url(own_database))
    offset = pg_server.log_offset()
    assert wait_for_run(url, timeout=10).attempts == 1
    assert wait_for_run(url, timeout=10).attempts == 1  # proven on the kept connection
    with maintenance.shared(url) as connection:
        name = connection.scalar("SHOW application_name")
        on_its_own = connection.scalar("SELECT now() = statement_timestamp()")
    assert name == MAINTENANCE_APP
    assert on_its_own  # autocommit: the SELECT is not inside the SHOW's transaction
    assert pg_server.connections_since(offset).count(own_database) == 1


def test_an_application_waiting_at_startup_imports_no_pytest(pg_server: TestServer) -> None:
    """``wait_until_ready`` is for an application's startup, where importing pytest (~0.1 s) is
    waste."""
    code = (
        "import sys; from pytest_dbguard import wait_until_ready; "
        f"wait_until_ready({pg_server.url()!r}, timeout=10); "
        "print('pytest' in sys.modules, '_pytest.config' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"]  # only the module of PytestWarning

"""The fault proxy against a real server: pass-through for three drivers, bind before start,
cut, refuse, latency, retarget, and a clean stop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator

import psycopg
import pytest
import sqlalchemy as sa

from pytest_dbguard.exceptions import FaultError
from pytest_dbguard.faults.proxy import FaultProxy
from tests.pgserver import TestServer

BIG = 1_000_000  # larger than any socket buffer: the result crosses the proxy in many chunks


@pytest.fixture
def proxy(pg_server: TestServer) -> Iterator[FaultProxy]:
    """Function: a started proxy in front of the test server; stopped at the end."""
    with FaultProxy("127.0.0.1", pg_server.port) as started:
        yield started


def via(proxy: FaultProxy, pg_server: TestServer, driver: str = "psycopg") -> sa.URL:
    """The test server's URL, reached through ``proxy``."""
    return sa.make_url(pg_server.url(driver=driver)).set(port=proxy.port)


def dsn(url: sa.URL) -> str:
    """A libpq URI for the drivers themselves."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def connect(
    proxy: FaultProxy, pg_server: TestServer, application_name: str = "dbguard-test"
) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(
        dsn(via(proxy, pg_server)),
        autocommit=True,
        connect_timeout=10,
        application_name=application_name,
    )


def fastest_round_trip(conn: psycopg.Connection[tuple[object, ...]], times: int = 5) -> float:
    """The quickest of a few ``SELECT 1``: immune to a busy machine slowing one of them down."""
    best = float("inf")
    for _ in range(times):
        start = time.perf_counter()
        conn.execute("SELECT 1").fetchone()
        best = min(best, time.perf_counter() - start)
    return best


def socket_count() -> int:
    """Sockets this process has open (Linux)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except FileNotFoundError:  # the descriptor listdir itself used
            continue
    return count


def query_psycopg(url: sa.URL) -> tuple[int, int]:
    with psycopg.connect(dsn(url)) as conn:
        row = conn.execute("SELECT 41 + 1, length(repeat('x', %s))", (BIG,)).fetchone()
        assert row is not None
        return row[0], row[1]


def query_psycopg2(url: sa.URL) -> tuple[int, int]:
    import psycopg2  # type: ignore[import-untyped]

    conn = psycopg2.connect(dsn(url))
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT 41 + 1, length(repeat('x', %s))", (BIG,))
            first, second = cursor.fetchone()
            return int(first), int(second)
    finally:
        conn.close()


def query_asyncpg(url: sa.URL) -> tuple[int, int]:
    import asyncpg  # type: ignore[import-untyped]

    async def scenario() -> tuple[int, int]:
        conn = await asyncpg.connect(dsn(url))
        try:
            row = await conn.fetchrow("SELECT 41 + 1, length(repeat('x', $1))", BIG)
            return int(row[0]), int(row[1])
        finally:
            await conn.close()

    return asyncio.run(scenario())


@pytest.mark.parametrize(
    ("driver", "query"),
    [
        pytest.param("psycopg", query_psycopg, id="psycopg"),
        pytest.param("psycopg2", query_psycopg2, id="psycopg2"),
        pytest.param("asyncpg", query_asyncpg, id="asyncpg"),
    ],
)
def test_queries_pass_through(
    proxy: FaultProxy,
    pg_server: TestServer,
    driver: str,
    query: Callable[[sa.URL], tuple[int, int]],
) -> None:
    assert query(via(proxy, pg_server, driver)) == (42, BIG)


def test_a_client_connecting_before_start_waits_in_the_backlog(pg_server: TestServer) -> None:
    proxy = FaultProxy("127.0.0.1", pg_server.port)
    port = proxy.bind()
    assert proxy.bind() == port  # idempotent, and no thread yet
    assert not [
        thread for thread in threading.enumerate() if thread.name.startswith("dbguard-proxy")
    ]
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            early = pool.submit(query_psycopg, via(proxy, pg_server))
            time.sleep(0.3)
            assert not early.done()
            proxy.start()
            assert early.result(timeout=10) == (42, BIG)
        assert proxy.port == port
    finally:
        proxy.stop()


def test_cut_resets_open_connections_and_new_ones_work(
    proxy: FaultProxy, pg_server: TestServer
) -> None:
    first = connect(proxy, pg_server, application_name="dbguard-cut")
    second = connect(proxy, pg_server, application_name="dbguard-cut")
    with first, second:
        assert proxy.connections == 2
        assert proxy.cut() == 2
        assert proxy.connections == 0
        for conn in (first, second):
            with pytest.raises(psycopg.OperationalError):
                conn.execute("SELECT 1")
    # The server side was closed too: its backends go away instead of idling on.
    deadline = time.monotonic() + 5
    count = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'dbguard-cut'"
    while pg_server.sql(count).stdout.strip() != "0":
        assert time.monotonic() < deadline, "the cut connections' backends are still there"
        time.sleep(0.05)
    with connect(proxy, pg_server) as fresh:
        assert fresh.execute("SELECT 1").fetchone() == (1,)
    assert proxy.cut() == 0


@pytest.mark.parametrize(
    "pre_ping", [pytest.param(False, id="no-pre-ping"), pytest.param(True, id="pre-ping")]
)
def test_cut_finds_a_pool_without_pre_ping(
    proxy: FaultProxy, pg_server: TestServer, pre_ping: bool
) -> None:
    engine = sa.create_engine(via(proxy, pg_server), pool_pre_ping=pre_ping, pool_size=1)
    try:
        with engine.connect() as conn:
            assert conn.scalar(sa.text("SELECT 1")) == 1
        assert proxy.cut() == 1  # the pooled connection, idle
        with engine.connect() as conn:
            if pre_ping:
                assert conn.scalar(sa.text("SELECT 1")) == 1
            else:
                with pytest.raises(sa.exc.OperationalError) as failure:
                    conn.scalar(sa.text("SELECT 1"))
                assert failure.value.connection_invalidated
    finally:
        engine.dispose()


def test_refuse_resets_new_connections_for_the_window(
    proxy: FaultProxy, pg_server: TestServer
) -> None:
    with connect(proxy, pg_server) as existing:
        proxy.refuse(1.0)
        start = time.monotonic()
        with pytest.raises(psycopg.OperationalError):
            connect(proxy, pg_server)
        assert existing.execute("SELECT 1").fetchone() == (1,)  # open connections carry on
        failures = 1
        while True:
            try:
                late = connect(proxy, pg_server)
            except psycopg.OperationalError:
                failures += 1
                assert time.monotonic() - start < 10, "the refusal window never ended"
                time.sleep(0.05)
                continue
            break
        elapsed = time.monotonic() - start
        with late:
            assert late.execute("SELECT 1").fetchone() == (1,)
    assert elapsed >= 0.8
    assert failures >= 2


def test_refuse_ends_with_reset(proxy: FaultProxy, pg_server: TestServer) -> None:
    proxy.refuse(60)
    with pytest.raises(psycopg.OperationalError):
        connect(proxy, pg_server)
    proxy.reset()
    with connect(proxy, pg_server) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_latency_slows_new_connections_until_reset(
    proxy: FaultProxy, pg_server: TestServer
) -> None:
    with connect(proxy, pg_server) as before:
        proxy.latency(50)
        with connect(proxy, pg_server) as slow:
            # 50 ms each way: a round trip can never be quicker than that.
            assert fastest_round_trip(slow, times=3) >= 0.050
            assert slow.execute("SELECT length(repeat('x', %s))", (BIG,)).fetchone() == (BIG,)
            assert fastest_round_trip(before) < 0.025
            proxy.reset()
            # reset() ends the delay on connections opened during latency() too (pooled ones).
            assert fastest_round_trip(slow) < 0.025
        with connect(proxy, pg_server) as after:
            assert fastest_round_trip(after) < 0.025


def test_pass_on_server_ends_waits_until_the_client_is_told(
    proxy: FaultProxy, pg_server: TestServer
) -> None:
    """A backend ended on the server reaches the client later through the proxy (here 300 ms
    later: latency holds its last message back); the wait covers that gap."""
    proxy.latency(300)
    with connect(proxy, pg_server) as client:
        pid = client.info.backend_pid
        port = int(
            pg_server.sql(f"SELECT client_port FROM pg_stat_activity WHERE pid = {pid}").stdout
        )
        other = connect(proxy, pg_server)  # a connection nobody ends
        other_port = int(
            pg_server.sql(
                f"SELECT client_port FROM pg_stat_activity WHERE pid = {other.info.backend_pid}"
            ).stdout
        )
        pg_server.sql(f"SELECT pg_terminate_backend({pid}, 5000)")  # returns once it is gone
        readable = select.poll()
        readable.register(client.fileno(), select.POLLIN)
        assert not readable.poll(0), "the proxy held the end back: the client cannot know yet"
        assert proxy.pass_on_server_ends([port], timeout=0.01) is False
        assert proxy.pass_on_server_ends([port], timeout=5) is True
        assert readable.poll(0), "once passed on, the client's socket shows the end"
        assert proxy.pass_on_server_ends([other_port], timeout=0.05) is False  # still open
        other.close()


@pytest.mark.parametrize("amount", [-1, float("nan"), float("inf")])
def test_fault_amounts_are_checked(proxy: FaultProxy, amount: float) -> None:
    with pytest.raises(FaultError, match="finite number >= 0"):
        proxy.latency(amount)
    with pytest.raises(FaultError, match="finite number >= 0"):
        proxy.refuse(amount)


def test_retarget_moves_new_connections_only(proxy: FaultProxy, pg_server: TestServer) -> None:
    with socket.socket() as placeholder:  # a port where nothing listens
        placeholder.bind(("127.0.0.1", 0))
        nowhere = placeholder.getsockname()[1]
    with connect(proxy, pg_server) as existing:
        proxy.retarget("127.0.0.1", nowhere)
        assert proxy.upstream == ("127.0.0.1", nowhere)
        with pytest.raises(psycopg.OperationalError):
            connect(proxy, pg_server)
        assert existing.execute("SELECT 1").fetchone() == (1,)
        proxy.retarget("127.0.0.1", pg_server.port)
        with connect(proxy, pg_server) as moved:
            assert moved.execute("SELECT 1").fetchone() == (1,)


def test_stop_leaves_no_threads_and_no_sockets(pg_server: TestServer) -> None:
    threads, sockets = set(threading.enumerate()), socket_count()
    proxy = FaultProxy("127.0.0.1", pg_server.port)
    proxy.start()
    port = proxy.port
    fast = connect(proxy, pg_server)
    proxy.latency(5)
    slow = connect(proxy, pg_server)
    with fast, slow:
        assert proxy.connections == 2
        proxy.stop()
        assert set(threading.enumerate()) == threads
        for conn in (fast, slow):
            with pytest.raises(psycopg.OperationalError):
                conn.execute("SELECT 1")
    with (
        pytest.raises(ConnectionRefusedError),
        socket.create_connection(("127.0.0.1", port), timeout=5),
    ):
        pass
    gc.collect()  # an unclosed socket would raise a ResourceWarning here
    assert socket_count() == sockets
    proxy.stop()  # twice is harmless


def test_a_stopped_proxy_starts_again(pg_server: TestServer) -> None:
    with FaultProxy("127.0.0.1", pg_server.port) as proxy:
        with connect(proxy, pg_server) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        proxy.stop()
        proxy.start()
        with connect(proxy, pg_server) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.parametrize(
    ("url", "why", "upstream"),
    [
        ("postgresql+psycopg://u:p@db:6432/app", None, ("db", 6432)),
        ("postgresql+psycopg://u:p@/app", "default Unix socket", None),  # libpq: the socket
        ("postgresql+psycopg://u:p@/app?host=/run/pg&port=5433", "socket (/run/pg)", None),
        ("postgresql+psycopg://u:p@x/app?host=127.0.0.2&port=7", None, ("127.0.0.2", 7)),
        ("postgresql+psycopg://u:p@/app?host=db:6543", None, ("db", 6543)),
        (
            "postgresql+psycopg://u:p@/app?host=/run/pg&hostaddr=127.0.0.3",
            None,
            ("127.0.0.3", 5432),
        ),
        ("postgresql+psycopg://u:p@/app?host=a&host=b", "several servers (a, b)", None),
        ("postgresql+psycopg2://u:p@/app?host=a,b", "several servers (a,b)", None),
        ("postgresql+pg8000://u:p@/app", None, ("127.0.0.1", 5432)),  # pg8000: localhost TCP
        ("postgresql+pg8000://u:p@/app?unix_sock=/run/pg/.s.PGSQL.5432", "socket (/run/pg/", None),
    ],
)
def test_where_a_url_goes(
    url: str, why: str | None, upstream: tuple[str, int] | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pytest_dbguard.db.urls import DatabaseURL
    from pytest_dbguard.faults.proxy import not_proxied, through, upstream_of

    monkeypatch.delenv("PGHOST", raising=False)
    monkeypatch.delenv("PGPORT", raising=False)
    parsed = DatabaseURL.parse(url)
    reason = not_proxied(parsed)
    assert (reason is None) == (why is None) and (why is None or why in str(reason)), reason
    if upstream is not None:
        assert upstream_of(parsed) == upstream
        routed = through(parsed, 4321)
        assert (routed.host, routed.port) == ("127.0.0.1", 4321)
        assert not {"host", "hostaddr", "port"} & {key for key, _ in routed.query}


def test_a_url_without_a_host_goes_where_pghost_and_pgport_say(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As libpq finds the server (pg8000 reads neither)."""
    from pytest_dbguard.db.urls import DatabaseURL
    from pytest_dbguard.faults.proxy import not_proxied, upstream_of

    monkeypatch.setenv("PGHOST", "127.0.0.9")
    monkeypatch.setenv("PGPORT", "6000")
    hostless = DatabaseURL.parse("postgresql+psycopg://u:p@/app")
    assert not_proxied(hostless) is None and upstream_of(hostless) == ("127.0.0.9", 6000)
    assert upstream_of(DatabaseURL.parse("postgresql+pg8000://u:p@/app")) == ("127.0.0.1", 5432)
    monkeypatch.setenv("PGHOST", "/run/postgresql")
    assert "socket (/run/postgresql)" in str(not_proxied(hostless))

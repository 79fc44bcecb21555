"""dbguard_faults finds real recovery bugs: whole runs on the embedded server (or the external test
server where stated), real drivers, no mocks."""

from __future__ import annotations

import re
from pathlib import Path

import psycopg
import pytest

from pytest_dbguard.server import machine
from tests.helpers import run_dbguard
from tests.pgserver import LIMITED_USER, SUPERUSER_PASSWORD, TestServer

ASYNCIO = ("pytest_asyncio.plugin",)

HELPERS = """
    import time
    import pytest
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.pool import NullPool

    def select_one(engine):
        with engine.connect() as connection:
            return connection.execute(text("SELECT 1")).scalar()

    # settle() asks the server's maintenance database, on purpose: dbguard lets it through.
    pytestmark = pytest.mark.dbguard(allow=["postgres"])

    def settle(dbguard_faults):
        # An earlier test's closed connections end on the server a moment later, and terminate()
        # counts every backend on the database: wait until they are gone. Asked from another
        # database, so the asking connection is not one of them.
        other = make_url(dbguard_faults.url).set(database="postgres")
        # Autocommit: PostgreSQL keeps one snapshot of pg_stat_activity per transaction, so a
        # backend seen once would stay "there" for as long as the loop asked inside one.
        probe = create_engine(other, poolclass=NullPool, isolation_level="AUTOCOMMIT")
        query = text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = :db AND backend_type = 'client backend'"
        )
        deadline = time.monotonic() + 10
        with probe.connect() as connection:
            while connection.execute(query, {"db": dbguard_faults.database}).scalar():
                if time.monotonic() > deadline:  # what they are, for the failure's report
                    left = connection.execute(
                        text(
                            "SELECT pid, application_name, state, backend_start, state_change, "
                            "client_port, query FROM pg_stat_activity WHERE datname = :db"
                        ),
                        {"db": dbguard_faults.database},
                    ).all()
                    pytest.fail(f"an earlier test's backends never ended: {left}")
                time.sleep(0.01)
        probe.dispose()

    @pytest.fixture
    def engines(dbguard_faults):
        made = []
        def make(**options):
            made.append(create_engine(dbguard_faults.url, **options))
            return made[-1]
        yield make
        for engine in made:
            engine.dispose()
"""

DROPPED = (
    HELPERS
    + """
    @pytest.mark.parametrize("fault", ["terminate", "cut"])
    def test_without_pre_ping_the_next_use_fails(dbguard_faults, engines, fault):
        settle(dbguard_faults)
        engine = engines()
        assert select_one(engine) == 1
        assert getattr(dbguard_faults, fault)() == 1
        with pytest.raises(DBAPIError) as info:
            select_one(engine)
        assert info.value.connection_invalidated
        assert dbguard_faults.assert_recovers(engine).attempts == 1

    @pytest.mark.parametrize("fault", ["terminate", "cut"])
    def test_with_pre_ping_the_next_use_works(dbguard_faults, engines, fault):
        settle(dbguard_faults)
        engine = engines(pool_pre_ping=True)
        assert select_one(engine) == 1
        assert getattr(dbguard_faults, fault)() == 1
        assert select_one(engine) == 1

    @pytest.mark.parametrize("fault", ["terminate", "cut"])
    def test_first_try_tells_whether_the_next_request_works(dbguard_faults, engines, fault):
        settle(dbguard_faults)
        careless, careful = engines(), engines(pool_pre_ping=True)
        assert select_one(careless) == select_one(careful) == 1
        assert getattr(dbguard_faults, fault)() >= 2  # both engines (cut: lingering pipes too)
        assert dbguard_faults.assert_recovers(careful, first_try=True).attempts == 1
        with pytest.raises(pytest.fail.Exception, match="the first SELECT 1 after the fault failed"):
            dbguard_faults.assert_recovers(careless, first_try=True)
        assert dbguard_faults.assert_recovers(careless, first_try=True).attempts == 1  # replaced
"""
)


def _external(server: TestServer) -> list[str]:
    """The shared external server, for runs whose test is not about the embedded one: its start
    and stop would be most of such a run's cost."""
    return ["--dbguard-url", server.url()]


@pytest.mark.parametrize("backend", ["embedded", "external"])
def test_terminate_and_cut_break_an_engine_without_pre_ping(
    pytester: pytest.Pytester, pg_server: TestServer, backend: str
) -> None:
    pytester.makepyfile(test_dropped=DROPPED)
    args = ["--dbguard-url", pg_server.url()] if backend == "external" else []
    result = run_dbguard(pytester, *args, inprocess=True)
    result.assert_outcomes(passed=6)
    assert SUPERUSER_PASSWORD not in result.stdout.str()


CLOSED = (
    HELPERS
    + """
    import importlib
    from sqlalchemy.engine import make_url

    @pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
    def test_a_closed_connection_fails_and_a_fresh_one_works(dbguard_faults, driver):
        module = importlib.import_module(driver)
        url = make_url(dbguard_faults.url).set(drivername="postgresql")
        dsn = url.render_as_string(hide_password=False)
        connection = module.connect(dsn)
        assert dbguard_faults.close(connection) == 1
        with pytest.raises((module.InterfaceError, module.OperationalError), match="closed"):
            connection.cursor().execute("SELECT 1")
        assert dbguard_faults.assert_recovers(lambda: module.connect(dsn)).attempts == 1

    def test_a_closed_sqlalchemy_connection_is_invalidated(dbguard_faults, engines):
        with engines().connect() as connection:
            assert dbguard_faults.close(connection) == 1
            with pytest.raises(DBAPIError) as info:
                connection.execute(text("SELECT 1"))
            assert info.value.connection_invalidated

    @pytest.mark.parametrize("pre_ping", [False, True])
    def test_closing_an_engine_kills_its_pooled_connections(dbguard_faults, engines, pre_ping):
        engine = engines(pool_pre_ping=pre_ping)
        with engine.connect(), engine.connect():
            pass  # two connections back in the pool, which does not hear of the close
        assert dbguard_faults.close(engine) == 2
        if pre_ping:
            assert select_one(engine) == 1
        else:
            with pytest.raises(DBAPIError, match="closed"):
                select_one(engine)
"""
)


def test_close_is_seen_by_the_driver_and_by_sqlalchemy(
    pytester: pytest.Pytester, pg_server: TestServer
) -> None:
    pytester.makepyfile(test_closed=CLOSED)
    run_dbguard(pytester, *_external(pg_server), inprocess=True).assert_outcomes(passed=5)


REFUSED = (
    HELPERS
    + """
    def test_refuse_delays_recovery(dbguard_faults, engines):
        engine = engines(poolclass=NullPool)
        assert select_one(engine) == 1
        dbguard_faults.refuse(2)
        with pytest.raises(DBAPIError):
            select_one(engine)
        recovery = dbguard_faults.assert_recovers(engine, within=6)
        assert 1.5 <= recovery.seconds < 5, recovery
        assert recovery.attempts > 1 and recovery.first_error, recovery
"""
)


def test_refuse_holds_new_connections_off_for_the_window(
    pytester: pytest.Pytester, pg_server: TestServer
) -> None:
    pytester.makepyfile(test_refused=REFUSED)
    run_dbguard(pytester, *_external(pg_server), inprocess=True).assert_outcomes(passed=1)


LATENCY = (
    HELPERS
    + """
    def test_latency_slows_new_connections(dbguard_faults, engines):
        engine = engines(poolclass=NullPool)

        def round_trip():
            with engine.connect() as connection:
                started = time.perf_counter()
                connection.execute(text("SELECT 1"))
                return time.perf_counter() - started

        before = round_trip()
        dbguard_faults.latency(100)
        after = round_trip()
        assert after >= 0.19 and after > before + 0.15, (before, after)  # 100 ms each way
"""
)


def test_latency_makes_a_query_slower(pytester: pytest.Pytester, pg_server: TestServer) -> None:
    pytester.makepyfile(test_latency=LATENCY)
    run_dbguard(pytester, *_external(pg_server), inprocess=True).assert_outcomes(passed=1)


RESTART = (
    HELPERS
    + """
    def started_at(engine):
        with engine.connect() as connection:
            return connection.execute(text("SELECT pg_postmaster_start_time()")).scalar()

    def test_restart(dbguard_faults, engines):
        careful, naive = engines(pool_pre_ping=True), engines()
        before = started_at(careful)
        assert select_one(naive) == 1
        assert dbguard_faults.restart() < 10
        with pytest.raises(DBAPIError):
            select_one(naive)
        assert dbguard_faults.assert_recovers(careful).attempts == 1
        assert started_at(careful) > before
"""
)


def assert_no_server_left(result: pytest.RunResult) -> None:
    """No process still runs from the run's cluster folder, restarted servers included."""
    run = re.search(r"_dbg_([0-9a-f]+)_", result.stdout.str())
    assert run is not None, "the header names no test database"
    folder = str(machine.storage_root() / run.group(1)).encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                assert folder not in (entry / "cmdline").read_bytes(), f"pid {entry.name} is left"
            except OSError:
                continue


def test_restart_on_the_embedded_server_recovers(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_restart=RESTART)
    result = run_dbguard(pytester, inprocess=True)
    result.assert_outcomes(passed=1)
    assert_no_server_left(result)


def test_restart_skips_on_an_external_server(
    pytester: pytest.Pytester, pg_server: TestServer
) -> None:
    pytester.makepyfile(test_restart=RESTART)
    result = run_dbguard(pytester, "--dbguard-url", pg_server.url(), "-rs", inprocess=True)
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(
        [
            "SKIPPED * dbguard_faults.restart() stops and starts the embedded server that dbguard "
            "manages; this run uses the external server postgresql+psycopg://postgres:***@127.0.0.1:*"
            "which dbguard never stops. Unset --dbguard-url*"
        ]
    )


NEVER = (
    HELPERS
    + """
    def test_an_engine_that_never_recovers(dbguard_faults, engines):
        dbguard_faults.refuse(60)
        dbguard_faults.assert_recovers(engines(poolclass=NullPool), within=0.5)

    def test_a_callable_that_never_recovers(dbguard_faults):
        def always_broken():
            raise ValueError("still broken")

        dbguard_faults.assert_recovers(always_broken, within=0.3)
"""
)


def test_assert_recovers_fails_with_attempts_time_and_last_error(
    pytester: pytest.Pytester, pg_server: TestServer
) -> None:
    pytester.makepyfile(test_never=NEVER)
    result = run_dbguard(pytester, *_external(pg_server), inprocess=True)
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "E   *Failed: Engine(postgresql+psycopg://postgres:***@127.0.0.1:*) did not recover within "
            "0.5 s: SELECT 1 failed * attempt(s) in 0.5* s. Last error: OperationalError: *",
            "E   *Failed: *always_broken did not recover within 0.3 s: call failed "
            "* attempt(s) in 0.3* s. Last error: ValueError: still broken",
        ]
    )
    result.stdout.no_fnmatch_line("*During handling of the above exception*")


UNDONE = (
    HELPERS
    + """
    import os
    import signal
    from pathlib import Path

    def test_a_faults_everything_and_fails(dbguard_faults):
        dbguard_faults.refuse(60)
        dbguard_faults.latency(500)
        assert False, "fails with its faults still on"

    def test_b_is_unaffected():
        engine = create_engine(os.environ["DBGUARD_URL"], poolclass=NullPool)
        started = time.perf_counter()
        assert select_one(engine) == 1  # refuse(60) would have failed it
        # Still delayed, a connect and a query cross the proxy four times: at least 2 s.
        assert time.perf_counter() - started < 1.0

    def test_c_restarts_then_the_server_dies(dbguard_faults):
        dbguard_faults.restart()
        pid_file = Path(dbguard_faults.cluster.datadir) / "postmaster.pid"
        os.kill(int(pid_file.read_text().split()[0]), signal.SIGQUIT)
        assert False, "leaves the server down"

    def test_d_finds_the_server_up():
        assert select_one(create_engine(os.environ["DBGUARD_URL"], poolclass=NullPool)) == 1
"""
)


def test_faults_are_undone_after_a_failing_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_undone=UNDONE)
    result = run_dbguard(pytester, inprocess=True)
    result.assert_outcomes(failed=2, passed=2)
    result.stdout.no_fnmatch_line("*could not undo*")
    assert_no_server_left(result)


XDIST_SUITE = (
    HELPERS
    + """
    @pytest.mark.xdist_group("busy")  # one worker runs these while the other injects faults
    @pytest.mark.parametrize("n", range(8))
    def test_busy(dbguard_connection, n):
        # One connection held through the test: a restart from the other worker would break it.
        for _ in range(8):
            dbguard_connection.execute(text("SELECT pg_sleep(0.02)"))

    @pytest.mark.xdist_group("faults")
    @pytest.mark.parametrize("fault", ["restart", "terminate", "cut", "restart", "refuse"])
    def test_fault(dbguard_faults, engines, fault):
        options = {"poolclass": NullPool} if fault == "refuse" else {}
        engine = engines(pool_pre_ping=True, **options)
        assert select_one(engine) == 1
        if fault == "refuse":
            dbguard_faults.refuse(0.3)
        else:
            getattr(dbguard_faults, fault)()
        dbguard_faults.assert_recovers(engine)
"""
)


@pytest.mark.needs_xdist
def test_faults_under_xdist_keep_the_other_workers_safe(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_mixed=XDIST_SUITE)
    args = ["-n", "2", "--dist", "loadgroup", "-W", "error::pytest.PytestWarning"]
    result = run_dbguard(pytester, *args)
    result.assert_outcomes(passed=13)
    assert_no_server_left(result)  # restarted by a worker, stopped by the controller


ASYNC = (
    HELPERS
    + """
    import asyncpg
    from sqlalchemy.ext.asyncio import create_async_engine

    async def select_one(engine):
        async with engine.connect() as connection:
            return (await connection.execute(text("SELECT 1"))).scalar()

    @pytest.mark.asyncio(loop_scope="session")
    @pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
    async def test_async_engine_recovers_after_terminate(dbguard_faults, driver):
        url = make_url(dbguard_faults.async_url).set(drivername=f"postgresql+{driver}")
        settle(dbguard_faults)
        careful, naive = create_async_engine(url, pool_pre_ping=True), create_async_engine(url)
        try:
            assert await select_one(careful) == await select_one(naive) == 1
            assert dbguard_faults.terminate() == 2
            with pytest.raises(DBAPIError) as info:
                await select_one(naive)
            assert info.value.connection_invalidated
            assert (await dbguard_faults.assert_recovers_async(careful)).attempts == 1
        finally:
            await careful.dispose()
            await naive.dispose()

    @pytest.mark.asyncio(loop_scope="session")
    async def test_raw_asyncpg_connection_closed(dbguard_faults):
        url = make_url(dbguard_faults.url).set(drivername="postgresql")
        dsn = url.render_as_string(hide_password=False)
        connection = await asyncpg.connect(dsn)
        assert dbguard_faults.close(connection) == 1
        with pytest.raises(asyncpg.InterfaceError, match="closed"):
            await connection.fetchval("SELECT 1")
        recovery = await dbguard_faults.assert_recovers_async(lambda: asyncpg.connect(dsn))
        assert recovery.attempts == 1

    @pytest.mark.asyncio(loop_scope="session")
    @pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
    async def test_closing_an_async_engine_kills_its_pooled_connections(dbguard_faults, driver):
        url = make_url(dbguard_faults.async_url).set(drivername=f"postgresql+{driver}")
        engine = create_async_engine(url)
        try:
            assert await select_one(engine) == 1
            assert dbguard_faults.close(engine) == 1
            with pytest.raises(DBAPIError) as info:
                await select_one(engine)
            assert info.value.connection_invalidated
        finally:
            await engine.dispose()

    def test_sync_helper_drives_an_async_engine(dbguard_faults):
        engine = create_async_engine(dbguard_faults.async_url)
        dbguard_faults.refuse(0.5)
        assert dbguard_faults.assert_recovers(engine).seconds >= 0.3

    @pytest.mark.asyncio(loop_scope="session")
    async def test_the_sync_helper_in_an_async_test_names_the_async_one(dbguard_faults):
        engine = create_async_engine(dbguard_faults.async_url)
        try:
            with pytest.raises(pytest.fail.Exception) as info:
                dbguard_faults.assert_recovers(engine)
            assert "is an AsyncEngine, and this test's event loop is already running" in str(info.value)
            assert str(info.value).endswith("await dbguard_faults.assert_recovers_async(engine)")

            async def connect():
                return await engine.connect()

            with pytest.raises(Exception, match="returned a coroutine: an async factory") as info:
                dbguard_faults.assert_recovers(connect)
            assert "is not an Engine" not in str(info.value)
        finally:
            await engine.dispose()
"""
)


def test_async_engines_recover_after_terminate(
    pytester: pytest.Pytester, pg_server: TestServer
) -> None:
    pytester.makepyfile(test_async=ASYNC)
    run_dbguard(pytester, *_external(pg_server), plugins=ASYNCIO).assert_outcomes(passed=7)


def test_the_proxy_is_on_only_when_a_test_mentions_dbguard_faults(
    pytester: pytest.Pytester, pg_server: TestServer
) -> None:
    pytester.makepyfile(test_plain="def test_plain(dbguard_url):\n    pass\n")
    result = run_dbguard(pytester, *_external(pg_server), inprocess=True)
    result.assert_outcomes(passed=1)
    result.stdout.no_fnmatch_line("*fault proxy*")
    pytester.makepyfile(test_faulty="def test_faulty(dbguard_faults):\n    pass\n")
    result = run_dbguard(pytester, *_external(pg_server), inprocess=True)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["dbguard: fault proxy on 127.0.0.1:* in front of the server"])


@pytest.mark.parametrize(
    ("args", "env", "ini", "proxied"),
    [
        pytest.param(["--dbguard-proxy", "off"], {}, "", False, id="flag-off"),
        pytest.param(["--dbguard-proxy=on"], {}, "", True, id="flag-on"),
        pytest.param(["--dbguard-proxy"], {}, "", True, id="bare-flag-on"),
        pytest.param(["--dbguard-proxy", "auto"], {}, "", True, id="flag-auto"),
        pytest.param([], {"DBGUARD_PROXY": "0"}, "", False, id="env-0"),
        pytest.param([], {}, "dbguard_proxy = off", False, id="ini-off"),
        pytest.param([], {}, "dbguard_proxy = true", True, id="ini-true"),
    ],
)
def test_the_proxy_can_be_switched_on_and_off(
    pytester: pytest.Pytester,
    pg_server: TestServer,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    env: dict[str, str],
    ini: str,
    proxied: bool,
) -> None:
    """on, off or auto (the default): auto is on here, because the test file mentions the fixture."""
    pytester.makepyfile(
        test_x="""
        import os
        def test_x(dbguard_faults):
            assert (dbguard_faults.proxy is not None) == (os.environ["EXPECT"] == "1")
        """
    )
    if ini:
        pytester.makeini(f"[pytest]\n{ini}\n")
    for name, value in {**env, "EXPECT": "1" if proxied else "0"}.items():
        monkeypatch.setenv(name, value)
    run_dbguard(pytester, *_external(pg_server), *args, inprocess=True).assert_outcomes(passed=1)


MISSED = """
    import pytest

    NAME = "dbguard_" + "faults"  # the early scan looks for the name and misses it

    @pytest.mark.parametrize("fault", ["refuse(1)", "latency(10)", "cut()"])
    def test_needs_the_proxy(request, fault):
        faults = request.getfixturevalue(NAME)
        eval("faults." + fault)

    def test_terminate_needs_no_proxy(request):
        assert request.getfixturevalue(NAME).terminate() == 0
"""


def test_proxy_faults_say_how_to_switch_the_proxy_on(
    pytester: pytest.Pytester, pg_server: TestServer
) -> None:
    pytester.makepyfile(test_missed=MISSED)
    result = run_dbguard(pytester, *_external(pg_server), inprocess=True)
    result.assert_outcomes(failed=3, passed=1)
    for call in ("refuse(seconds)", "latency(ms)", "cut()"):
        result.stdout.fnmatch_lines(
            [
                f"E   *Failed: dbguard_faults.{call} needs dbguard's fault proxy, which is off in "
                "this run*Pass --dbguard-proxy (or set ini dbguard_proxy = true)."
            ]
        )


BY_SOCKET = """
    import pytest

    @pytest.mark.parametrize("fault", ["refuse(1)", "latency(10)", "cut()"])
    def test_needs_a_tcp_url(dbguard_faults, fault):
        eval("dbguard_faults." + fault)

    def test_terminate_works(dbguard_faults, dbguard_connection):
        assert dbguard_faults.terminate() >= 1
"""


def test_a_server_named_in_the_query_string_is_reached_through_the_proxy(
    pytester: pytest.Pytester, pg_server: TestServer
) -> None:
    """``?host=…&port=…`` wins over the URL's own host for the driver: the test URL went around
    the proxy, and refuse() had no effect."""
    pytester.makepyfile(test_refused=REFUSED)
    tcp = pg_server.url()
    url = tcp.replace(f"127.0.0.1:{pg_server.port}/postgres", "/postgres")
    url += f"?host=127.0.0.1&port={pg_server.port}"
    run_dbguard(pytester, "--dbguard-url", url, inprocess=True).assert_outcomes(passed=1)


def test_proxy_faults_on_a_socket_url_say_that_they_need_tcp(
    pytester: pytest.Pytester, pg_server: TestServer
) -> None:
    """A URL that reaches the server by its socket: the proxy (TCP) is not put in front of it,
    which would let every local account through as this one; the faults that need it say so.
    They had no effect: the test URL kept its ``host=/…`` and went around the proxy."""
    pytester.makepyfile(test_socket=BY_SOCKET)
    tcp = pg_server.url()
    url = tcp.replace(f"127.0.0.1:{pg_server.port}/postgres", "/postgres")
    url += f"?host={pg_server.root}&port={pg_server.port}"
    result = run_dbguard(pytester, "--dbguard-url", url, inprocess=True)
    result.assert_outcomes(failed=3, passed=1)
    for call in ("refuse(seconds)", "latency(ms)", "cut()"):
        result.stdout.fnmatch_lines(
            [
                f"E   *Failed: dbguard_faults.{call}: the run's URL reaches the server by its Unix "
                f"socket ({pg_server.root}), and the fault proxy*point the URL at one server's "
                "TCP address*"
            ]
        )
    on = run_dbguard(pytester, "--dbguard-url", url, "--dbguard-proxy", "on", inprocess=True)
    assert on.ret == pytest.ExitCode.USAGE_ERROR
    on.stderr.fnmatch_lines(["ERROR: --dbguard-proxy = on: the run's URL reaches the server by*"])


SQLITE = (
    HELPERS
    + """
    CANNOT = [("terminate", ()), ("restart", ()), ("refuse", (1,)), ("latency", (1,)), ("cut", ())]

    @pytest.mark.parametrize("fault, args", CANNOT)
    def test_needs_postgres(dbguard_faults, fault, args):
        getattr(dbguard_faults, fault)(*args)

    def test_close_and_recover_work_on_sqlite(dbguard_faults, engines):
        engine = engines()
        assert select_one(engine) == 1
        assert dbguard_faults.close(engine) == 1
        assert dbguard_faults.assert_recovers(engine).attempts == 2
"""
)


def test_sqlite_skips_what_it_cannot_do(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_sqlite=SQLITE)
    result = run_dbguard(pytester, "--dbguard-url", "sqlite", "-rs", inprocess=True)
    result.assert_outcomes(skipped=5, passed=1)
    result.stdout.fnmatch_lines(
        [
            f"SKIPPED * test_sqlite.py:*: dbguard_faults.{call} needs PostgreSQL; this run uses "
            "SQLite. Unset --dbguard-url*"
            for call in ("terminate()", "restart()", "refuse(seconds)", "latency(ms)", "cut()")
        ],
        consecutive=True,
    )


SCHEMA = (
    HELPERS
    + """
    def test_terminate_ends_only_this_runs_backends(dbguard_faults, engines):
        assert select_one(engines()) == 1
        assert dbguard_faults.terminate() == 1
"""
)


def test_terminate_in_schema_mode_spares_other_clients(
    pytester: pytest.Pytester, pg_server: TestServer
) -> None:
    pytester.makepyfile(test_schema=SCHEMA)
    url = pg_server.url(database="app_limited", user=LIMITED_USER, driver="psycopg")
    libpq = url.replace("postgresql+psycopg", "postgresql")
    with psycopg.connect(libpq, autocommit=True) as bystander:  # same role, same database
        # A subprocess: terminate() in schema mode ends the backends of its own process, and
        # the bystander must be another process's.
        result = run_dbguard(pytester, "--dbguard-url", url, "-rs")
        result.assert_outcomes(passed=1)
        result.stdout.fnmatch_lines(["dbguard: *schemas dbg_*_<worker> in app_limited*"])
        assert bystander.execute("SELECT 1").fetchone() == (1,)


def test_a_worker_schemas_async_url_keeps_its_driver_through_the_proxy(
    pytester: pytest.Pytester, pg_server: TestServer
) -> None:
    """Schema mode's async URL takes psycopg (asyncpg reads no search_path from a URL); routed
    through the fault proxy it became asyncpg's, and async tests ran in the shared schema."""
    pytester.makepyfile(
        test_async_url="""
        import os

        def test_async_url(dbguard_faults):
            async_url = os.environ["ASYNC_URL"]
            assert async_url.startswith("postgresql+psycopg://"), async_url
            assert "search_path" in async_url and f":{dbguard_faults.proxy.port}/" in async_url
        """
    )
    pytester.makeini("[pytest]\ndbguard_env =\n    ASYNC_URL={async_url}\n")
    # psycopg2 tests: their async URL is not the sync driver's own (psycopg's would be).
    url = pg_server.url(database="app_limited", user=LIMITED_USER, driver="psycopg2")
    result = run_dbguard(pytester, "--dbguard-url", url, "--dbguard-proxy", "on", inprocess=True)
    result.assert_outcomes(passed=1)


def test_recovering_an_async_engine_from_sync_code_keeps_the_threads_event_loop(
    pg_server: TestServer,
) -> None:
    """A sync test's assert_recovers(async_engine) drives the engine on a loop of its own and
    leaves the thread's current loop as it found it: asyncio.run() left none, and pytest-asyncio
    0.24 then failed the next async test ("There is no current event loop"). In a thread of its
    own, so this process's loop state is not touched."""
    import asyncio
    import threading

    from sqlalchemy.ext.asyncio import create_async_engine

    from pytest_dbguard.faults.recovery import recover

    url = pg_server.url().replace("+psycopg", "+asyncpg")
    kept: list[bool] = []

    def in_a_thread() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            engine = create_async_engine(url)
            assert recover(engine, 10, password=None, fail=pytest.fail).attempts == 1
            kept.append(asyncio.get_event_loop() is loop)
        finally:
            asyncio.set_event_loop(None)
            loop.close()

    thread = threading.Thread(target=in_a_thread)
    thread.start()
    thread.join(60)
    assert kept == [True]

"""Async support: the async fixtures, the event-loop policy and its diagnosis, clean teardown.

Every run is a subprocess on a real PostgreSQL (the embedded default or the ``pg_server``), or
SQLite through aiosqlite, with pytest-asyncio loaded explicitly and warnings as errors.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import textwrap

import pytest

from tests.helpers import plugin_args, run_dbguard
from tests.pgserver import SUPERUSER_PASSWORD, TestServer

ASYNCIO_VERSION = tuple(
    int(part) for part in importlib.metadata.version("pytest-asyncio").split(".")[:2]
)
# asyncio_default_test_loop_scope exists from pytest-asyncio 0.26 on; 0.24 only has the mark.
HAS_TEST_SCOPE_INI = ASYNCIO_VERSION >= (0, 26)
# What a clean exit never prints, whatever the warning filters.
EXIT_NOISE = (
    "*Event loop is closed*",
    "*was never awaited*",
    "*ResourceWarning*",
    "*Exception ignored*",
    "*unclosed*",
)

MODELS = """
    from sqlalchemy import String
    from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


    class Base(DeclarativeBase):
        pass


    class Item(Base):
        __tablename__ = "items"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(String(50))
"""
INI = """
    [pytest]
    dbguard_metadata = models:Base
    filterwarnings = error
"""
WRITER = """
    @pytest.mark.asyncio
    async def test_writer(dbguard_async_session):
        assert dbguard_async_session.bind.dialect.is_async
        assert dbguard_async_session.bind.dialect.driver == "{driver}"
        dbguard_async_session.add_all([Item(name="a"), Item(name="b"), Item(name="c")])
        await dbguard_async_session.commit()  # a savepoint: dbguard's transaction stays open
        dbguard_async_session.add(Item(name="d"))
        await dbguard_async_session.rollback()  # back to the last savepoint, not to empty
        assert await count(dbguard_async_session) == 3
"""
READER = """
    @pytest.mark.asyncio
    async def test_reader(dbguard_async_session, dbguard_async_engine):
        assert await count(dbguard_async_session) == 0
        async with dbguard_async_engine.connect() as other:
            assert await count(other) == 0
"""
ROLLBACK_HEAD = """
    import pytest
    from sqlalchemy import func, select

    from models import Item


    async def count(session_or_connection):
        return await session_or_connection.scalar(select(func.count()).select_from(Item))
"""
APP_DB = """
    import os

    from sqlalchemy.engine import make_url
    from sqlalchemy.ext.asyncio import create_async_engine

    # What an application does: one engine, made at import from the environment.
    url = make_url(os.environ["DBGUARD_ASYNC_URL"])
    engine = create_async_engine(url.set(drivername=url.get_backend_name() + "+{driver}"))
"""
APP_TESTS = """
    import pytest
    from sqlalchemy import func, select, text

    from app_db import engine
    from models import Item


    @pytest.mark.asyncio
    @pytest.mark.parametrize("n", range(10))
    async def test_app_engine(n, dbguard_async_session):
        async with engine.connect() as connection:
            assert (await connection.execute(text("SELECT CAST(:n AS integer)"), {{"n": n}})).scalar() == n
        dbguard_async_session.add(Item(name=str(n)))
        await dbguard_async_session.commit()
        assert await dbguard_async_session.scalar(select(func.count()).select_from(Item)) == 1
        assert engine.pool.checkedout() == 0
"""


def run_async(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """A sealed subprocess run with pytest-asyncio (and xdist for ``-n``) and dbguard activated
    by ``-p``.

    pytest-asyncio is named first: pytest 8 warns that ``-p asyncio`` "cannot be rewritten"
    when a plugin loaded before it has imported the asyncio module already.
    """
    plugins = plugin_args(*args, plugins=("asyncio",))
    return pytester.runpytest_subprocess(*plugins, "-p", "pytest_dbguard", *args, timeout=300)


def source(*parts: str) -> str:
    """Python source from pieces indented differently."""
    return "\n".join(textwrap.dedent(part) for part in parts)


def write_project(pytester: pytest.Pytester, ini: str = INI, **files: str) -> None:
    """The models, pytest.ini and the given test modules, in the pytester folder."""
    pytester.makepyfile(models=textwrap.dedent(MODELS))
    pytester.makefile(".ini", pytest=textwrap.dedent(ini))
    if files:
        pytester.makepyfile(**{name: textwrap.dedent(text) for name, text in files.items()})


def target(request: pytest.FixtureRequest, name: str, driver: str = "psycopg") -> list[str]:
    """Command-line arguments that point dbguard at ``name``: embedded, pg_server or sqlite."""
    if name == "pg_server":
        server: TestServer = request.getfixturevalue("pg_server")
        return ["--dbguard-url", server.url(driver=driver)]
    if name == "sqlite":
        return ["--dbguard-url", "sqlite"]
    return []


def assert_quiet_exit(result: pytest.RunResult) -> None:
    """Nothing from event loops, coroutines or unclosed connections, during the run or at exit."""
    for pattern in EXIT_NOISE:
        result.stdout.no_fnmatch_line(pattern)
        result.stderr.no_fnmatch_line(pattern)


@pytest.fixture
def strict_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inner runs: warnings are errors from interpreter start to exit, in development mode."""
    monkeypatch.setenv("PYTHONWARNINGS", "error")
    monkeypatch.setenv("PYTHONDEVMODE", "1")


def test_import_loads_no_async_machinery() -> None:
    code = (
        "import sys, pytest_dbguard.aio.asyncloop;"
        "bad = [m for m in ('asyncio', 'pytest_asyncio', 'sqlalchemy') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.usefixtures("strict_warnings")
@pytest.mark.parametrize(
    "order",
    [
        pytest.param("writer-first", id="writer-first"),
        pytest.param("reader-first", id="reader-first"),
    ],
)
@pytest.mark.parametrize(
    ("where", "driver"),
    [
        pytest.param("embedded", "psycopg", id="embedded-psycopg"),
        pytest.param("pg_server", "psycopg", id="pg_server-psycopg"),
        pytest.param("pg_server", "asyncpg", id="pg_server-asyncpg"),
        pytest.param("sqlite", "aiosqlite", id="sqlite-aiosqlite"),
    ],
)
def test_async_session_rolls_back(
    pytester: pytest.Pytester, request: pytest.FixtureRequest, where: str, driver: str, order: str
) -> None:
    """Commits inside a test are savepoints; the next test (either order) sees an empty table."""
    tests = (WRITER, READER) if order == "writer-first" else (READER, WRITER)
    body = source(ROLLBACK_HEAD, *tests).format(driver=driver)
    write_project(pytester, test_rollback=body)
    result = run_async(pytester, *target(request, where, driver), "-v")
    result.assert_outcomes(passed=2)
    names = ["*test_writer PASSED*", "*test_reader PASSED*"]
    result.stdout.fnmatch_lines(names if order == "writer-first" else names[::-1])
    assert SUPERUSER_PASSWORD not in result.stdout.str()
    assert_quiet_exit(result)


@pytest.mark.usefixtures("strict_warnings")
@pytest.mark.parametrize(
    ("where", "drivers"),
    [
        # The embedded URL names no driver: the two differ only in the application's engine,
        # so one run holds an application for each.
        pytest.param("embedded", ("psycopg", "asyncpg"), id="embedded-psycopg-and-asyncpg"),
        pytest.param("pg_server", ("psycopg",), id="pg_server-psycopg"),
        pytest.param("pg_server", ("asyncpg",), id="pg_server-asyncpg"),
        pytest.param("sqlite", ("aiosqlite",), id="sqlite-aiosqlite"),
    ],
)
def test_module_level_app_engine_across_ten_tests(
    pytester: pytest.Pytester, request: pytest.FixtureRequest, where: str, drivers: tuple[str, ...]
) -> None:
    """An application's import-time AsyncEngine keeps its pool across tests on the session loop."""
    files = {}
    for driver in drivers:
        files[f"app_db_{driver}"] = APP_DB.format(driver=driver)
        tests = APP_TESTS.format().replace("from app_db import", f"from app_db_{driver} import")
        assert f"from app_db_{driver} import engine" in tests
        files[f"test_app_{driver}"] = tests
    write_project(pytester, **files)
    result = run_async(pytester, *target(request, where, drivers[0]))
    result.assert_outcomes(passed=10 * len(drivers))
    result.stdout.fnmatch_lines(["dbguard: asyncio loop scope session for fixtures and tests*"])
    assert_quiet_exit(result)


@pytest.mark.needs_xdist
@pytest.mark.usefixtures("strict_warnings")
@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
def test_xdist_two_workers(pytester: pytest.Pytester, driver: str) -> None:
    """Under -n 2 each worker has its own database, engine and session loop."""
    rollback = source(ROLLBACK_HEAD, WRITER, READER).format(driver="psycopg")
    write_project(
        pytester,
        app_db=APP_DB.format(driver=driver),
        test_app=APP_TESTS.format(),
        test_rollback=rollback,
        test_worker="""
            import os

            def test_worker_database(dbguard_url):
                assert os.environ["DBGUARD_WORKER"] in ("gw0", "gw1")
                assert os.environ["DBGUARD_WORKER"] in dbguard_url
        """,
    )
    result = run_async(pytester, "-n", "2")
    result.assert_outcomes(passed=13)
    assert_quiet_exit(result)


ASYNC_FIXTURE_STRICT = """
    import pytest
    import pytest_asyncio
    from sqlalchemy import text

    @pytest_asyncio.fixture
    async def answer(dbguard_async_session):
        return (await dbguard_async_session.execute(text("SELECT 42"))).scalar()

    @pytest.mark.asyncio
    async def test_answer(answer, dbguard_async_session):
        assert answer == 42
        assert (await dbguard_async_session.execute(text("SELECT 1"))).scalar() == 1
"""
ASYNC_FIXTURE_AUTO = """
    import pytest
    from sqlalchemy import text

    @pytest.fixture
    async def answer(dbguard_async_session):
        return (await dbguard_async_session.execute(text("SELECT 42"))).scalar()

    async def test_answer(answer, dbguard_async_session):
        assert answer == 42
        assert (await dbguard_async_session.execute(text("SELECT 1"))).scalar() == 1
"""


@pytest.mark.parametrize(
    ("mode", "source"),
    [
        pytest.param("strict", ASYNC_FIXTURE_STRICT, id="strict"),
        pytest.param("auto", ASYNC_FIXTURE_AUTO, id="auto"),
    ],
)
def test_asyncio_modes(
    pytester: pytest.Pytester, on_server: list[str], mode: str, source: str
) -> None:
    """A user's own async fixture on top of dbguard's works in both modes without loop settings."""
    write_project(pytester, INI + f"    asyncio_mode = {mode}\n", test_modes=source)
    result = run_async(pytester, *on_server)
    result.assert_outcomes(passed=1)
    result.stdout.re_match_lines([rf"(?i)asyncio: mode=(mode\.)?{mode}\b.*"])


def test_async_fixtures_honour_isolation_marker(
    pytester: pytest.Pytester, on_server: list[str]
) -> None:
    """isolation="none" commits for real; "truncate" commits and what it wrote is emptied
    afterwards (what the "none" test kept stays)."""
    write_project(
        pytester,
        test_isolation=source(
            ROLLBACK_HEAD,
            """
            @pytest.mark.asyncio
            @pytest.mark.dbguard(isolation="none")
            async def test_commits_for_real(dbguard_async_session):
                dbguard_async_session.add(Item(name="kept"))
                await dbguard_async_session.commit()

            @pytest.mark.asyncio
            async def test_sees_the_committed_row(dbguard_async_session):
                assert await count(dbguard_async_session) == 1

            @pytest.mark.asyncio
            @pytest.mark.dbguard(isolation="truncate")
            async def test_truncated_afterwards(dbguard_async_session):
                dbguard_async_session.add(Item(name="gone"))
                await dbguard_async_session.commit()
                assert await count(dbguard_async_session) == 2

            @pytest.mark.asyncio
            async def test_after_truncate(dbguard_async_session):
                assert await count(dbguard_async_session) == 1
            """,
        ),
    )
    result = run_async(pytester, *on_server)
    result.assert_outcomes(passed=4)


def test_header_reports_policy(pytester: pytest.Pytester, on_server: list[str]) -> None:
    """Unset: dbguard makes the scopes session. Set (ini or -o): the user's values stay."""
    write_project(pytester, test_plain=source(ROLLBACK_HEAD, READER))
    result = run_async(pytester, *on_server)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "dbguard: asyncio loop scope session for fixtures and tests*unset: set them to keep your own)",
            "asyncio: *session*",
        ]
    )
    # The unset run above is the same for both ways of setting the scope: it runs once.
    for how in ("-o", "ini"):
        args: list[str] = []
        if how == "ini":
            write_project(pytester, INI + "    asyncio_default_fixture_loop_scope = function\n")
        else:
            args = ["-o", "asyncio_default_fixture_loop_scope=function"]
        where = "pytest.ini" if how == "ini" else "-o"
        line = f"dbguard: asyncio loop scopes as configured (asyncio_default_fixture_loop_scope=function ({where}))*"
        result = run_async(pytester, *on_server, *args, "-v")
        result.stdout.fnmatch_lines([line])
        # Without -v the project's own choice is not news on every run (pretix's trial); a
        # test that uses dbguard's async fixtures on another loop is told all the same.
        quiet = run_async(pytester, *on_server, *args)
        quiet.stdout.no_fnmatch_line("dbguard: asyncio loop scope*")
        quiet.stdout.fnmatch_lines(["*EventLoopMismatchError: test_plain.py::test_reader uses*"])


NARROW_TEST = """
    import pytest
    from sqlalchemy import text

    @pytest.mark.asyncio{mark}
    async def test_uses_session(dbguard_async_session):
        await dbguard_async_session.execute(text("SELECT 1"))

    @pytest.mark.asyncio(loop_scope="session")
    async def test_on_session_loop(dbguard_async_session):
        await dbguard_async_session.execute(text("SELECT 1"))
"""
NARROW_CASES = [
    pytest.param(
        "", '(loop_scope="function")', '@pytest.mark.asyncio(loop_scope="function")', id="marker"
    ),
    pytest.param(
        "asyncio_default_fixture_loop_scope = session",
        "",
        "pytest-asyncio's default",
        id="only-fixture-scope-set",
    ),
]
if HAS_TEST_SCOPE_INI:
    NARROW_CASES += [
        pytest.param(
            "asyncio_default_fixture_loop_scope = session\n    asyncio_default_test_loop_scope = function",
            "",
            "asyncio_default_test_loop_scope = function in pytest.ini",
            id="ini-test-scope",
        ),
        pytest.param(
            "-o asyncio_default_fixture_loop_scope=session -o asyncio_default_test_loop_scope=function",
            "",
            "asyncio_default_test_loop_scope = function in -o",
            id="cli-test-scope",
        ),
    ]


@pytest.mark.parametrize(("setting", "mark", "source"), NARROW_CASES)
def test_narrower_test_loop_fails_clearly(
    pytester: pytest.Pytester, on_server: list[str], setting: str, mark: str, source: str
) -> None:
    """A test on a narrower loop using a dbguard async fixture fails at setup, saying how to fix it."""
    ini = INI + (f"    {setting}\n" if setting and not setting.startswith("-o") else "")
    args = setting.split() if setting.startswith("-o") else []
    write_project(pytester, ini, test_narrow=NARROW_TEST.format(mark=mark))
    result = run_async(pytester, *on_server, *args)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at setup of test_uses_session*",
            "E   *EventLoopMismatchError: test_narrow.py::test_uses_session uses dbguard_async_engine and "
            "dbguard_async_session, made on the session-scoped event loop, but the test runs on a "
            f"function-scoped loop ({source}).*"
            'Fix: mark the test @pytest.mark.asyncio(loop_scope="session"), or *',
        ]
    )
    result.stdout.no_fnmatch_line("*attached to a different loop*")
    result.stdout.no_fnmatch_line("*Event loop is closed*")


# pytest-asyncio 0.24 itself refuses a function-loop fixture in a session-loop test.
FIXTURE_LOOPS = ["function", "module"] if HAS_TEST_SCOPE_INI else ["module"]


@pytest.mark.parametrize("loop", FIXTURE_LOOPS)
def test_narrower_fixture_loop_fails_clearly(
    pytester: pytest.Pytester, on_server: list[str], loop: str
) -> None:
    """A user's async fixture on a narrower loop that uses dbguard's session is named, with the fix."""
    write_project(
        pytester,
        test_fixture="""
            import pytest
            import pytest_asyncio
            from sqlalchemy import text

            @pytest_asyncio.fixture(loop_scope="LOOP")
            async def client(dbguard_async_session):
                yield dbguard_async_session

            @pytest.mark.asyncio(loop_scope="session")
            async def test_client(client):
                await client.execute(text("SELECT 1"))
        """.replace("LOOP", loop),
    )
    result = run_async(pytester, *on_server)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "E   *EventLoopMismatchError: test_fixture.py::test_client: the fixture 'client' uses "
            "dbguard_async_session, made on the session-scoped event loop, but 'client' runs on a "
            f'{loop}-scoped loop (loop_scope="{loop}").*'
            '@pytest_asyncio.fixture(loop_scope="session")*',
        ]
    )
    result.stdout.no_fnmatch_line("*attached to a different loop*")


# An application engine's pooled connection used on a loop other than the one that made it:
# the raw RuntimeError becomes an EventLoopMismatchError that blames whoever made it.
APP_ENGINE_PING = """
    import asyncio

    import pytest
    from sqlalchemy import text

    from app_db import engine

    async def ping():
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
"""


@pytest.mark.parametrize(
    ("tests", "outcomes", "expected"),
    [
        pytest.param(
            """
            @pytest.mark.asyncio(loop_scope="function")
            @pytest.mark.parametrize("n", range(2))
            async def test_app_engine(n):
                await ping()
            """,
            {"passed": 1, "failed": 1},
            "E   *EventLoopMismatchError: test_loops.py::test_app_engine[[]1[]]: a database "
            "connection was used on an event loop other than the one it was made on (*). An "
            "engine keeps pooled connections across tests*a function-scoped loop*",
            id="on-its-own-function-loop",
        ),
        # The test that fails runs on the session loop, as the advice would have it: the
        # message names the earlier test whose loop made the connection.
        pytest.param(
            """
            @pytest.mark.asyncio(loop_scope="function")
            async def test_on_its_own_loop():
                await ping()

            def test_sync_between():
                pass

            @pytest.mark.asyncio
            async def test_on_the_session_loop():
                await ping()
            """,
            {"passed": 2, "failed": 1},
            "E   *EventLoopMismatchError: test_loops.py::test_on_the_session_loop: a database "
            "connection was used on an event loop other than the one it was made on (*). This "
            "test runs on the session-scoped loop (*); the connection was made earlier and left "
            "in an engine's pool by test_loops.py::test_on_its_own_loop (a function-scoped loop: "
            '@pytest.mark.asyncio(loop_scope="function")), on a loop that is gone now. Fix: run '
            "that test on the session loop too*",
            id="left-by-an-earlier-async-test",
        ),
        # No async test ran on another loop: the message says where else it comes from.
        pytest.param(
            """
            def test_sync_runs_its_own_loop():
                asyncio.run(ping())

            @pytest.mark.asyncio
            async def test_on_the_session_loop():
                await ping()
            """,
            {"passed": 1, "failed": 1},
            "E   *EventLoopMismatchError: test_loops.py::test_on_the_session_loop: a database "
            "connection was used on an event loop other than the one it was made on (*). This "
            "test runs on the session-scoped loop (*); the connection was made earlier on another "
            "loop and left in an engine's pool: by a synchronous test or fixture that ran its own "
            "loop (asyncio.run()), or by code at import.*",
            id="left-by-a-sync-tests-own-loop",
        ),
    ],
)
def test_an_app_engines_connection_from_another_loop_is_explained(
    pytester: pytest.Pytester,
    on_server: list[str],
    tests: str,
    outcomes: dict[str, int],
    expected: str,
) -> None:
    write_project(
        pytester,
        app_db=APP_DB.format(driver="asyncpg"),
        test_loops=source(APP_ENGINE_PING, tests),
    )
    result = run_async(pytester, *on_server)
    result.assert_outcomes(**outcomes)
    result.stdout.fnmatch_lines([expected])


def test_conftest_opt_in_applies_the_policy_too(pytester: pytest.Pytester) -> None:
    """With ``pytest_plugins`` in the root conftest, the scopes are set before pytest-asyncio reads them."""
    write_project(
        pytester, test_rollback=source(ROLLBACK_HEAD, WRITER, READER).format(driver="aiosqlite")
    )
    pytester.makeconftest('pytest_plugins = ["pytest_dbguard"]\n')
    result = pytester.runpytest_subprocess("-p", "asyncio", "--dbguard-url", "sqlite", timeout=300)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["dbguard: asyncio loop scope session for fixtures and tests*"])


def test_explicit_session_scopes_win_and_work(
    pytester: pytest.Pytester, on_server: list[str]
) -> None:
    """The user's own session settings are kept (not dbguard's), and the fixtures work with them."""
    settings = "    asyncio_default_fixture_loop_scope = session\n"
    if HAS_TEST_SCOPE_INI:
        settings += "    asyncio_default_test_loop_scope = session\n"
    body = source(ROLLBACK_HEAD, WRITER, READER).format(driver="psycopg")
    if not HAS_TEST_SCOPE_INI:  # no run-wide setting for tests: each says which loop
        body = body.replace(
            "@pytest.mark.asyncio\n", '@pytest.mark.asyncio(loop_scope="session")\n'
        )
    write_project(pytester, INI + settings, test_rollback=body)
    result = run_async(pytester, *on_server, "-v")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        ["dbguard: asyncio loop scopes as configured (*session (pytest.ini)*"]
    )


# One test of each kind: the sync fixtures work whatever happens to the async ones.
ASYNC_AND_SYNC_FIXTURES = """
    def test_needs_async_session(dbguard_async_session):
        pass

    def test_sync_still_works(dbguard_session):
        pass
"""


def test_without_pytest_asyncio_says_how_to_get_it(pytester: pytest.Pytester) -> None:
    """No pytest-asyncio in the run: the async fixtures exist and fail with the remedy."""
    write_project(pytester, test_needs=ASYNC_AND_SYNC_FIXTURES)
    result = run_dbguard(pytester, "--dbguard-url", "sqlite")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "dbguard_async_session needs the pytest-asyncio plugin*pip install 'pytest-dbguard[[]async[]]'*"
        ]
    )
    result.stdout.no_fnmatch_line("dbguard: asyncio*")


# pytest-asyncio 0.23 (baserow's pin), first on sys.path: its fixtures take no loop_scope, and
# it registers no asyncio_default_fixture_loop_scope.
OLD_PYTEST_ASYNCIO = {
    "__init__": """
        __version__ = "0.23.6"

        def fixture(fixture_function=None, *, scope="function", **kwargs):
            if "loop_scope" in kwargs:
                raise TypeError("fixture() got an unexpected keyword argument 'loop_scope'")
            raise AssertionError("dbguard made no async fixture with this pytest-asyncio")
    """,
    "plugin": """
        def pytest_addoption(parser):
            parser.addini("asyncio_mode", "default mode for async fixtures", default="strict")
    """,
}


def test_pytest_asyncio_older_than_0_24_leaves_the_sync_fixtures_working(
    pytester: pytest.Pytester,
) -> None:
    """Every run of a project that pins pytest-asyncio 0.23 crashed with an INTERNALERROR
    (``fixture() got an unexpected keyword argument 'loop_scope'``), async fixtures used or not
    (baserow's trial). Now only the async fixtures fail, with the remedy."""
    package = pytester.mkpydir("pytest_asyncio")
    for name, text in OLD_PYTEST_ASYNCIO.items():
        (package / f"{name}.py").write_text(textwrap.dedent(text))
    write_project(pytester, test_needs=ASYNC_AND_SYNC_FIXTURES)
    result = run_dbguard(pytester, "--dbguard-url", "sqlite", plugins=("pytest_asyncio.plugin",))
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "dbguard_async_session needs pytest-asyncio 0.24 or newer (its fixtures' loop_scope), "
            "and 0.23.6 is installed: pip install 'pytest-asyncio>=0.24'.*"
        ]
    )
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    result.stdout.no_fnmatch_line("dbguard: asyncio*")


OVERRIDDEN_URL_CONFTEST = """
    import os
    import pytest

    @pytest.fixture(scope="session")
    def dbguard_url():
        return os.environ["OVERRIDE_URL"]  # a plain string, not dbguard's own URL object
"""
OVERRIDDEN_URL_TESTS = """
    import pytest
    from sqlalchemy import text

    def test_sync(dbguard_engine):
        with dbguard_engine.connect() as connection:
            assert connection.scalar(text("SELECT current_database()")) == "override_target"

    @pytest.mark.asyncio
    async def test_async(dbguard_async_engine):
        async with dbguard_async_engine.connect() as connection:
            name = await connection.scalar(text("SELECT current_database()"))
        assert name == "override_target"
"""


def test_an_overridden_dbguard_url_redirects_sync_and_async_engines(
    pytester: pytest.Pytester, pg_server: TestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A project's own ``dbguard_url`` fixture moves every dbguard engine, the async one too."""
    pg_server.sql("DROP DATABASE IF EXISTS override_target")
    pg_server.sql("CREATE DATABASE override_target")
    try:
        monkeypatch.setenv("OVERRIDE_URL", pg_server.url("override_target"))
        write_project(
            pytester,
            "[pytest]\ndbguard_allow_databases = override_target\nfilterwarnings = error\n",
            conftest=OVERRIDDEN_URL_CONFTEST,
            test_override=OVERRIDDEN_URL_TESTS,
        )
        result = run_dbguard(pytester, "--dbguard-url", pg_server.url(), plugins=("asyncio",))
        result.assert_outcomes(passed=2)
    finally:
        pg_server.sql("DROP DATABASE IF EXISTS override_target WITH (FORCE)")


ANYIO_TESTS = """
import pytest
from sqlalchemy import text


@pytest.fixture(scope="{scope}")
def anyio_backend():
    return "asyncio"


@pytest.mark.anyio
async def test_on_anyio(dbguard_async_session):
    await dbguard_async_session.execute(text("SELECT 1"))


@pytest.mark.asyncio(loop_scope="session")
async def test_on_pytest_asyncio(dbguard_async_session):
    assert await dbguard_async_session.scalar(text("SELECT 1")) == 1


@pytest.mark.anyio
def test_sync_under_the_mark(dbguard_async_engine):  # anyio runs coroutines only
    assert dbguard_async_engine.url.database
"""


@pytest.mark.parametrize("scope", ["session", "module"])
def test_an_anyio_test_is_told_that_dbguards_async_fixtures_are_pytest_asyncios(
    pytester: pytest.Pytester, on_server: list[str], scope: str
) -> None:
    """anyio's plugin runs a ``pytest.mark.anyio`` test on a loop of its own, where the session
    loop's engine fails with "attached to a different loop" (or, with a module-scoped
    ``anyio_backend``, pytest's own ScopeMismatch): the test fails at setup with the fix, and
    the pytest-asyncio test beside it runs. Found by adopting dbguard on sqladmin."""
    write_project(pytester, test_anyio=ANYIO_TESTS.replace("{scope}", scope))
    plugins = ["-p", "asyncio", "-p", "anyio", "-p", "pytest_dbguard"]
    result = pytester.runpytest_subprocess(*plugins, *on_server, timeout=300)
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*test_on_anyio runs on anyio's event loop (pytest.mark.anyio)*dbguard_async_session*"
            "pytest-asyncio's session loop*@pytest.mark.asyncio(loop_scope='session')*"
            "pytestmark*DBGUARD_ASYNC_URL*"
        ]
    )
    output = result.stdout.str()
    assert "got Future" not in output and "You tried to access" not in output

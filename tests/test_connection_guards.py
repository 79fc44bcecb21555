"""Connection guards: no test reaches a database that is not a test database; leaks are reported."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine
from sqlalchemy.ext.asyncio import create_async_engine

from pytest_dbguard.db.urls import DatabaseURL
from pytest_dbguard.guards.foreign_databases import (
    ALLOW_BY_NAME,
    CLOSED,
    FOREIGN_MESSAGE,
    REFUSED,
    AllowList,
    Target,
)
from pytest_dbguard.guards.leaks import LEAK_MESSAGE, LEAK_WITHOUT_FIXTURES
from tests.helpers import (
    README,
    blocks,
    copy_project,
    plugin_args,
    run_dbguard,
    run_dbguard_inprocess,
)
from tests.pgserver import SUPERUSER_PASSWORD, TestServer

# The guard reads the keywords each dialect hands its driver: checked against SQLAlchemy itself.


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2", "asyncpg"])
@pytest.mark.parametrize(
    ("url", "expected"),
    [
        pytest.param(
            "postgresql+{driver}://u:pw@localhost:5433/app",
            Target("local", 5433, "app"),
            id="loopback-name",
        ),
        pytest.param(
            "postgresql+{driver}://u:pw@db.example:6000/reports",
            Target("db.example", 6000, "reports"),
            id="remote",
        ),
        pytest.param(
            "postgresql+{driver}://u:pw@127.0.0.1/app",
            Target("local", 5432, "app"),
            id="default-port",
        ),
        pytest.param(
            "postgresql+{driver}://u:pw@/app?host=/run/postgresql&port=5439",
            Target("local", 5439, "app"),
            id="socket-in-query",
        ),
    ],
)
def test_targets_from_each_drivers_connect_keywords(
    driver: str, url: str, expected: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PGPORT", raising=False)
    monkeypatch.delenv("PGHOST", raising=False)
    text = url.format(driver=driver)
    engine = create_async_engine(text) if driver == "asyncpg" else create_engine(text)
    sync = getattr(engine, "sync_engine", engine)
    _, params = sync.dialect.create_connect_args(sync.url)
    assert Target.from_params(params) == expected
    assert Target.from_url(DatabaseURL.parse(text)) == expected


def test_pg8000_reads_none_of_libpqs_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """pg8000 connects to localhost:5432 whatever PGHOST and PGPORT say (psycopg, psycopg2 and
    asyncpg read them): the guard took PGPORT for its target, and a suite whose URLs leave the
    port out reached another server on 5432. Found by adopting dbguard on sqlalchemy-utils."""
    monkeypatch.setenv("PGPORT", "6000")
    monkeypatch.setenv("PGHOST", "db.example")
    params = {"user": "u", "database": "app"}
    assert Target.from_params(params, driver="pg8000") == Target("local", 5432, "app")
    assert Target.from_params(params, driver="psycopg") == Target("db.example", 6000, "app")
    assert Target.from_params({"user": "u"}, driver="pg8000") == Target("local", 5432, "u")


@pytest.mark.parametrize(
    ("cparams", "cargs"),
    [
        pytest.param({"conninfo": "host=db.example port=6000 dbname=reports"}, (), id="conninfo"),
        pytest.param({"dsn": "postgresql://u:pw@db.example:6000/reports"}, (), id="dsn-uri"),
        pytest.param({}, ("host=db.example port=6000 dbname=reports",), id="positional"),
        pytest.param(
            {"conninfo": "host=db.example port=6000 dbname=app", "dbname": "reports"},
            (),
            id="keyword-wins",
        ),
    ],
)
def test_targets_from_connection_strings_in_connect_args(
    cparams: dict[str, str], cargs: tuple[str, ...]
) -> None:
    """``connect_args={"conninfo": ...}`` (psycopg) or ``{"dsn": ...}`` (psycopg2) name the target."""
    assert Target.from_params(cparams, cargs) == Target("db.example", 6000, "reports")


def test_a_target_without_database_or_user_is_the_login_names_database(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """libpq's defaults: no database named, then the user's name, then PGUSER, then the OS
    login name."""
    import getpass

    monkeypatch.delenv("PGDATABASE", raising=False)
    monkeypatch.delenv("PGUSER", raising=False)
    assert Target.from_params({"host": "db.example"}) == Target(
        "db.example", 5432, getpass.getuser()
    )
    assert Target.from_params({"host": "db.example", "user": "app"}).database == "app"
    monkeypatch.setenv("PGUSER", "ci")
    assert Target.from_params({"host": "db.example"}).database == "ci"


def test_allow_list_by_name_by_database_url_and_by_server() -> None:
    allowed = AllowList.of(
        ["analytics", "postgresql://u@db.example:6000/reports", "postgresql://u@localhost:5433"]
    )
    assert allowed.admits(Target("elsewhere", 1, "analytics"))
    assert allowed.admits(Target("db.example", 6000, "reports"))
    assert not allowed.admits(Target("db.example", 6000, "billing"))
    assert allowed.admits(Target("local", 5433, "anything"))
    assert not allowed.admits(Target("local", 5432, "anything"))
    assert (AllowList() | AllowList.of(["*"])).admits(Target("local", 5432, "anything"))


# Whole runs. The "developer's database" is a real database on the password-protected test
# server, with a table the tests would write to: after each run it must still be empty.


@pytest.fixture
def developer_db(pg_server: TestServer) -> Iterator[str]:
    """Function: a fresh database on ``pg_server`` with an empty ``notes`` table; dropped after."""
    name = f"developer_{uuid.uuid4().hex[:8]}"
    pg_server.sql(f'CREATE DATABASE "{name}"')
    pg_server.sql("CREATE TABLE notes (id serial PRIMARY KEY, body text)", database=name)
    yield name
    pg_server.sql(f'DROP DATABASE "{name}" WITH (FORCE)')


def _notes(pg_server: TestServer, database: str) -> list[str]:
    out = pg_server.sql("SELECT body FROM notes ORDER BY id", database=database).stdout
    return out.splitlines()


APP_SETTINGS = """
    import os

    DATABASE_URL = os.environ["DATABASE_URL"]  # read once, at import, as settings modules do
"""
APP_DB = """
    from sqlalchemy import create_engine
    from sqlalchemy.ext.asyncio import create_async_engine

    import app_settings

    ENGINE = create_engine(app_settings.DATABASE_URL)
    ASYNC_ENGINE = create_async_engine(
        app_settings.DATABASE_URL.replace("+psycopg", "+asyncpg")
    )
"""
# The reproduction: conftest opt-in, settings imported at the top of the conftest.
EARLY_CONFTEST = """
    import app_db  # imports the settings: DATABASE_URL is still the developer's

    pytest_plugins = ["pytest_dbguard"]
"""
APP_TESTS = """
    import asyncio
    import os
    from sqlalchemy import text
    from app_db import ASYNC_ENGINE, ENGINE

    def test_sync_write():
        assert os.environ["DATABASE_URL"] != ENGINE.url.render_as_string(False)  # read too early
        with ENGINE.begin() as conn:
            conn.execute(text("INSERT INTO notes (body) VALUES ('sync')"))

    def test_async_write():
        async def write():
            async with ASYNC_ENGINE.begin() as conn:
                await conn.execute(text("INSERT INTO notes (body) VALUES ('async')"))
            await ASYNC_ENGINE.dispose()

        asyncio.run(write())
"""


@pytest.mark.parametrize(
    "server",
    ["same-server", "other-server", pytest.param("xdist", marks=pytest.mark.needs_xdist)],
)
def test_app_engine_reading_settings_too_early_cannot_reach_the_developers_database(
    pytester: pytest.Pytester,
    pg_server: TestServer,
    developer_db: str,
    monkeypatch: pytest.MonkeyPatch,
    server: str,
) -> None:
    monkeypatch.setenv("DATABASE_URL", pg_server.url(developer_db))
    pytester.makepyfile(app_settings=APP_SETTINGS, app_db=APP_DB, test_app=APP_TESTS)
    pytester.makeconftest(EARLY_CONFTEST)
    pytester.makeini("[pytest]\ndbguard_env =\n    DATABASE_URL={url}\n")
    # same-server: the test databases live on pg_server too; other-server: the embedded default;
    # xdist: the embedded default, a database per worker.
    args = {
        "same-server": ["--dbguard-url", pg_server.url()],
        "other-server": [],
        "xdist": ["-n", "2"],
    }[server]
    result = pytester.runpytest_subprocess(
        *plugin_args(*args), *args, "-p", "no:randomly", timeout=300
    )
    result.assert_outcomes(failed=2)
    # Under xdist the workers inherit the controller's exported DATABASE_URL, which names the
    # controller's own (never created) database: read too early, it is refused just the same.
    worker, database, port = ("main", developer_db, str(pg_server.port))
    if server == "xdist":
        worker, database, port = ("gw?", "*_dbg_*_main", "*")
    for test in ("test_sync_write", "test_async_write"):
        result.stdout.fnmatch_lines(
            [
                f"E *ForeignDatabaseError: test_app.py::{test} tried to connect to the database "
                f"'{database}' on 127.0.0.1:{port}, which is not one of this run's test "
                f"databases (this worker's is '*_dbg_*_{worker}' on 127.0.0.1:*); dbguard refused "
                "the connection, so nothing reached that database. *`-p pytest_dbguard`* "
                "dbguard_env, e.g. DATABASE_URL={url}. *"
                f"@pytest.mark.dbguard(allow=?'{database}'?)*dbguard_allow_databases = "
                # Nothing more: never "allow the whole server" where the developer's data lives.
                f"{database}."
            ]
        )
    assert SUPERUSER_PASSWORD not in result.stdout.str() + result.stderr.str()
    assert _notes(pg_server, developer_db) == []


CONNECTION_STRING_TESTS = """
    import os
    import psycopg
    import psycopg2
    from sqlalchemy import create_engine, text

    DSN = os.environ["DEVELOPER_DSN"]  # key=value form, password included, as apps hold it

    def write(engine):
        try:
            with engine.begin() as conn:
                conn.execute(text("INSERT INTO notes (body) VALUES ('x')"))
        finally:
            engine.dispose()

    def test_psycopg_conninfo():
        write(create_engine("postgresql+psycopg://", connect_args={"conninfo": DSN}))

    def test_psycopg2_dsn():
        write(create_engine("postgresql+psycopg2://", connect_args={"dsn": DSN}))

    def test_psycopg_creator():
        write(create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(DSN)))

    def test_psycopg2_creator():
        write(create_engine("postgresql+psycopg2://", creator=lambda: psycopg2.connect(DSN)))
"""


def test_connection_strings_and_creators_cannot_reach_the_developers_database(
    pytester: pytest.Pytester,
    pg_server: TestServer,
    developer_db: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Engines whose target is not in their URL: a connection string in connect_args, or a
    ``creator`` that connects by itself (no do_connect event: caught at first use, closed)."""
    monkeypatch.setenv(
        "DEVELOPER_DSN",
        f"host=127.0.0.1 port={pg_server.port} dbname={developer_db} user=postgres "
        f"password={SUPERUSER_PASSWORD}",
    )
    pytester.makepyfile(test_strings=CONNECTION_STRING_TESTS)
    result = run_dbguard(
        pytester, inprocess=True
    )  # the embedded default: the developer's server is another
    result.assert_outcomes(failed=4)
    for test, how in (
        ("test_psycopg_conninfo", REFUSED),
        ("test_psycopg2_dsn", REFUSED),
        ("test_psycopg_creator", CLOSED),
        ("test_psycopg2_creator", CLOSED),
    ):
        result.stdout.fnmatch_lines(
            [
                f"E *ForeignDatabaseError: test_strings.py::{test} tried to connect to the "
                f"database '{developer_db}' on 127.0.0.1:{pg_server.port}, which is not one of "
                f"this run's test databases (*); {how}. *"
            ]
        )
    assert SUPERUSER_PASSWORD not in result.stdout.str() + result.stderr.str()
    assert _notes(pg_server, developer_db) == []


ALLOW_TESTS = """
    import asyncio
    import os
    import pytest
    from sqlalchemy import create_engine, text
    from sqlalchemy.ext.asyncio import create_async_engine
    from pytest_dbguard.exceptions import ForeignDatabaseError

    ALLOWED = os.environ["ALLOWED_URL"]
    REFUSED = os.environ["REFUSED_URL"]

    def write(url, body):
        engine = create_engine(url)
        try:
            with engine.begin() as conn:
                conn.execute(text("INSERT INTO notes (body) VALUES (:b)"), {"b": body})
        finally:
            engine.dispose()

    def write_async(url, body):
        async def go():
            engine = create_async_engine(url.replace("+psycopg", "+asyncpg"))
            try:
                async with engine.begin() as conn:
                    await conn.execute(text("INSERT INTO notes (body) VALUES (:b)"), {"b": body})
            finally:
                await engine.dispose()

        asyncio.run(go())

    @pytest.mark.dbguard(allow=[os.environ["MARKED_DB"]])
    def test_marker_allows(dbguard_session):
        write(REFUSED, "marked")
        write_async(REFUSED, "marked-async")

    def test_ini_allows():
        write(ALLOWED, "ini")
        write_async(ALLOWED, "ini-async")

    def test_refused_sync_and_async():
        with pytest.raises(ForeignDatabaseError, match="tried to connect"):
            write(REFUSED, "refused")
        with pytest.raises(ForeignDatabaseError, match="tried to connect"):
            write_async(REFUSED, "refused-async")

    def test_psycopg2_refused_too():
        with pytest.raises(ForeignDatabaseError):
            write(REFUSED.replace("+psycopg", "+psycopg2"), "refused-psycopg2")

    @pytest.mark.dbguard(allow=["some_other_db"])
    def test_marker_allows_only_what_it_names():
        with pytest.raises(ForeignDatabaseError):
            write(REFUSED, "refused-other-name")
"""


@pytest.mark.parametrize("ini_entry", ["name", "url"])
def test_allow_by_marker_and_by_ini_sync_and_async(
    pytester: pytest.Pytester,
    pg_server: TestServer,
    developer_db: str,
    monkeypatch: pytest.MonkeyPatch,
    ini_entry: str,
) -> None:
    allowed = f"allowed_{uuid.uuid4().hex[:8]}"
    pg_server.sql(f'CREATE DATABASE "{allowed}"')
    try:
        pg_server.sql("CREATE TABLE notes (id serial PRIMARY KEY, body text)", database=allowed)
        monkeypatch.setenv("ALLOWED_URL", pg_server.url(allowed))
        monkeypatch.setenv("REFUSED_URL", pg_server.url(developer_db))
        monkeypatch.setenv("MARKED_DB", developer_db)
        entry = allowed if ini_entry == "name" else pg_server.url(allowed, password="")
        pytester.makeini(f"[pytest]\ndbguard_allow_databases = {entry}\n")
        pytester.makepyfile(test_allow=ALLOW_TESTS)
        result = run_dbguard(pytester, "-p", "no:randomly", inprocess=True)
        result.assert_outcomes(passed=5)
        assert _notes(pg_server, developer_db) == ["marked", "marked-async"]
        assert _notes(pg_server, allowed) == ["ini", "ini-async"]
    finally:
        pg_server.sql(f'DROP DATABASE "{allowed}" WITH (FORCE)')


ALLOW_ALL_TESTS = """
    import os
    from sqlalchemy import create_engine, text

    def test_writes_to_the_developers_database(dbguard_url):
        engine = create_engine(os.environ["REFUSED_URL"])
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO notes (body) VALUES ('allowed by *')"))
        engine.dispose()
"""


def test_allow_everything_with_a_star_given_by_dash_o(
    pytester: pytest.Pytester,
    pg_server: TestServer,
    developer_db: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`-o dbguard_allow_databases=*` (pytest 8 keeps -o values apart from the ini file's)."""
    monkeypatch.setenv("REFUSED_URL", pg_server.url(developer_db))
    pytester.makepyfile(test_star=ALLOW_ALL_TESTS)
    refused = run_dbguard(pytester, inprocess=True)
    refused.assert_outcomes(failed=1)
    assert _notes(pg_server, developer_db) == []
    result = run_dbguard(pytester, "-o", "dbguard_allow_databases=*", inprocess=True)
    result.assert_outcomes(passed=1)
    assert _notes(pg_server, developer_db) == ["allowed by *"]


def test_on_a_sqlite_run_every_postgresql_database_is_foreign(
    pytester: pytest.Pytester,
    pg_server: TestServer,
    developer_db: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_URL", pg_server.url(developer_db))
    pytester.makepyfile(
        """
        import os
        from sqlalchemy import create_engine, text

        def test_write():
            engine = create_engine(os.environ["DATABASE_URL"])
            with engine.begin() as conn:
                conn.execute(text("INSERT INTO notes (body) VALUES ('sqlite run')"))
        """
    )
    result = run_dbguard(pytester, "--dbguard-url", "sqlite", inprocess=True)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            f"E *ForeignDatabaseError: *::test_write tried to connect to the database "
            f"'{developer_db}' on 127.0.0.1:{pg_server.port}, which is not one of this run's test "
            "databases (this run's test databases are SQLite files); *"
        ]
    )
    assert SUPERUSER_PASSWORD not in result.stdout.str()
    assert _notes(pg_server, developer_db) == []


@pytest.mark.parametrize(
    ("marker", "pattern"),
    [
        pytest.param(
            "allow='reports'", "*allow='reports'): allow takes a list of database names*", id="str"
        ),
        pytest.param("allow=[1]", "*allow=?1?): allow takes a list*", id="not-a-name"),
        pytest.param(
            "allow=['postgresql://u@h:99999/x']", "*port '99999'*1 to 65535*", id="bad-url"
        ),
        pytest.param("alow=['x']", "*unexpected keyword argument 'alow'*", id="misspelled"),
        pytest.param("isolation='rolback'", "*isolation='rolback'*", id="bad-isolation"),
    ],
)
def test_bad_marker_argument_names_the_test(
    pytester: pytest.Pytester, marker: str, pattern: str
) -> None:
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.dbguard({marker})
        def test_marked():
            pass
        """
    )
    result = run_dbguard_inprocess(pytester, "--dbguard-url", "sqlite")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [f"*test_bad_marker_argument_names_the_test.py::test_marked: {pattern}"]
    )


def test_markers_list_shows_the_values(pytester: pytest.Pytester) -> None:
    """`pytest --markers` shows what each marker takes and does, not a docstring about itself."""
    result = run_dbguard(pytester, "--dbguard-url", "sqlite", "--markers", inprocess=True)
    lines = result.stdout.lines
    assert any(
        line.startswith(
            "@pytest.mark.dbguard(isolation='rollback'|'truncate'|'none', "
            "allow=['name or URL', ...]): how this test is isolated"
        )
        for line in lines
    ), result.stdout.str()
    assert any(
        line.startswith("@pytest.mark.dbguard_without('module', ...): inside this test the modules")
        for line in lines
    ), result.stdout.str()
    result.stdout.no_fnmatch_line("*Signature of*")


def test_bad_allow_url_in_ini_names_the_key(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ndbguard_allow_databases = reports postgresql://u:secret@h:0/x\n")
    pytester.makepyfile("def test_x(): pass")
    result = run_dbguard_inprocess(pytester, "--dbguard-url", "sqlite")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*ini dbguard_allow_databases in tox.ini*port '0'*"])
    assert "secret" not in result.stderr.str()


# Leaks. A seed row is part of the schema (an after_create DDL, as a migration would insert it):
# it is no leak. The application's engine commits; dbguard's fixtures roll back.

# The library project's models, with a table no test writes to and a seed row in the schema.
LEAK_MODELS = """
    from sqlalchemy import DDL, event
    from sqlalchemy.orm import Mapped, mapped_column

    from models import Author, Base

    class Untouched(Base):
        __tablename__ = "untouched"
        id: Mapped[int] = mapped_column(primary_key=True)

    event.listen(
        Author.__table__, "after_create", DDL("INSERT INTO authors (name) VALUES ('seed')")
    )
"""
LEAK_TESTS = """
    import asyncio
    import os
    import pytest
    from sqlalchemy import create_engine, func, select, text
    from sqlalchemy.ext.asyncio import create_async_engine
    from models import Author

    ENGINE = create_engine(os.environ["DBGUARD_URL"])  # the application's own engine

    def test_1_reads_the_seed_row():
        with ENGINE.begin() as conn:  # commits, but wrote nothing
            assert conn.execute(text("SELECT name FROM authors")).scalars().all() == ["seed"]

    def test_2_app_commits():
        with ENGINE.begin() as conn:
            conn.execute(text("INSERT INTO authors (name) VALUES ('leaked')"))
            conn.execute(text("INSERT INTO books (author_id, title) SELECT id, 't' FROM authors"))

    def test_3_fixture_session_rolls_back(dbguard_session):
        dbguard_session.add(Author(name="rolled back"))
        dbguard_session.commit()
        assert dbguard_session.scalar(select(func.count()).select_from(Author)) == 3

    def test_4_app_commits_to_books_only():
        with ENGINE.begin() as conn:
            conn.execute(text("INSERT INTO books (author_id, title) VALUES (1, 'again')"))

    def test_5_async_app_engine_commits():
        async def write():
            engine = create_async_engine(os.environ["DBGUARD_ASYNC_URL"])
            async with engine.begin() as conn:
                await conn.execute(text("UPDATE authors SET name = 'renamed' WHERE name = 'seed'"))
            await engine.dispose()

        asyncio.run(write())

    @pytest.mark.dbguard(isolation="truncate")
    def test_6_truncate_is_not_a_leak():
        with ENGINE.begin() as conn:
            conn.execute(text("INSERT INTO authors (name) VALUES ('truncated')"))
"""


def _shared(server: TestServer) -> list[str]:
    """The shared external server, for leak runs: leaks are not about the embedded server, whose
    start and stop would be most of such a run's cost."""
    return ["--dbguard-url", server.url()]


def _leak_project(pytester: pytest.Pytester, leaks: str | None) -> None:
    copy_project(pytester, "library")
    pytester.makepyfile(leak_models=LEAK_MODELS, test_leaks=LEAK_TESTS)
    ini = "[pytest]\ndbguard_metadata = leak_models:Base\n"
    if leaks is not None:
        ini += f"dbguard_leaks = {leaks}\n"
    pytester.makeini(ini)


# The first report of the process, for a test that uses no rolled-back fixture of dbguard's.
REPORT = "*test_leaks.py::" + LEAK_WITHOUT_FIXTURES.replace("{where}", "test_{test}")
# A test that uses dbguard's rolled-back fixtures, whose application engine committed beside them.
REPORT_BESIDE_FIXTURES = (
    "*test_leaks.py::test_{test} left rows in {tables}: an engine that is not one of dbguard's "
    "fixtures (the application's own, for example) committed them, so the rollback after the "
    "test did not remove them and the next tests see them. Bind the application's session to "
    'dbguard_connection (README: "The application\'s own session"), or mark the test '
    '@pytest.mark.dbguard(isolation="truncate") (or set ini dbguard_isolation = truncate) to '
    'empty the tables it writes to after it, or isolation="none" for a suite that deletes its '
    "own rows; dbguard_leaks = off silences this report."
)
# The process's later reports: the explanation once is enough.
REPORT_AGAIN = (
    "*test_leaks.py::test_{test} left rows in {tables}, committed by an engine that is not one "
    "of dbguard's fixtures (what to do: README \"The application's own session\", or "
    'isolation="truncate"; dbguard_leaks = off silences this).'
)


@pytest.mark.parametrize(
    "how", ["default", "ini", pytest.param("xdist", marks=pytest.mark.needs_xdist)]
)
def test_leaks_are_warnings_naming_the_tables_and_the_fix(
    pytester: pytest.Pytester, pg_server: TestServer, how: str
) -> None:
    _leak_project(pytester, "warn" if how == "ini" else None)
    # Under xdist the file stays on one worker (its tests build on each other), the other idles.
    args = ["-n", "2", "--dist", "loadfile"] if how == "xdist" else []
    inprocess = how != "xdist"  # xdist's workers need a process of their own
    result = run_dbguard(
        pytester,
        *_shared(pg_server),
        "-p",
        "no:randomly",
        *args,
        inprocess=inprocess,
    )
    result.assert_outcomes(passed=6, warnings=3)
    result.stdout.fnmatch_lines(
        [
            "test_leaks.py::test_2_app_commits",
            "*LeakWarning: " + REPORT.format(test="2_app_commits", tables="authors, books"),
            "test_leaks.py::test_4_app_commits_to_books_only",
            "*LeakWarning: "
            + REPORT_AGAIN.format(test="4_app_commits_to_books_only", tables="books"),
            "test_leaks.py::test_5_async_app_engine_commits",
            "*LeakWarning: "
            + REPORT_AGAIN.format(test="5_async_app_engine_commits", tables="authors"),
        ]
    )
    for quiet in ("test_1", "test_3", "test_6"):
        result.stdout.no_fnmatch_line(f"*::{quiet}_* left rows*")


def test_leaked_tables_are_named_without_sql_quotes(
    pytester: pytest.Pytester, pg_server: TestServer
) -> None:
    """A reserved word or a name with a space: the warning and the report name the table, not
    the SQL that quotes it (full-stack-fastapi-template's ``user``)."""
    pytester.makepyfile(
        quoted_models="""
        from sqlalchemy import Column, Integer, MetaData, Table

        metadata = MetaData()
        Table("user", metadata, Column("id", Integer, primary_key=True))
        Table("Order Lines", metadata, Column("id", Integer, primary_key=True))
        """,
        test_quoted="""
        import os

        from sqlalchemy import create_engine, text

        def test_app_commits():
            engine = create_engine(os.environ["DBGUARD_URL"])
            with engine.begin() as conn:
                conn.execute(text('INSERT INTO "user" (id) VALUES (1)'))
                conn.execute(text('INSERT INTO "Order Lines" (id) VALUES (1)'))
            engine.dispose()
        """,
    )
    pytester.makeini("[pytest]\ndbguard_metadata = quoted_models:metadata\n")
    result = run_dbguard(
        pytester, *_shared(pg_server), "--dbguard-report", "report.json", inprocess=True
    )
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(["*test_app_commits left rows in Order Lines, user, committed *"])
    report = json.loads((pytester.path / "report.json").read_text())
    assert [test["leaked_tables"] for test in report["tests"]] == [["Order Lines", "user"]]


def test_a_leak_beside_dbguards_rolled_back_fixture_says_the_rollback_missed_it(
    pytester: pytest.Pytester, pg_server: TestServer
) -> None:
    """The test's own connection is rolled back; what the application's engine committed beside
    it is not (the other text is for tests that use no such fixture)."""
    _leak_project(pytester, None)
    beside = LEAK_TESTS.replace(
        "def test_2_app_commits():", "def test_2_app_commits(dbguard_connection):"
    )
    pytester.makepyfile(test_leaks=beside)
    result = run_dbguard(pytester, *_shared(pg_server), "-p", "no:randomly", inprocess=True)
    result.assert_outcomes(passed=6, warnings=3)
    result.stdout.fnmatch_lines(
        [
            "*LeakWarning: "
            + REPORT_BESIDE_FIXTURES.format(test="2_app_commits", tables="authors, books")
        ]
    )


WIDER_FIXTURES_TESTS = """
    import os

    import pytest
    from sqlalchemy import create_engine, text

    ENGINE = create_engine(os.environ["DBGUARD_URL"])  # the application's own engine

    def commit(sql):
        with ENGINE.begin() as conn:
            conn.execute(text(sql))

    @pytest.fixture(scope="session", autouse=True)
    def seeded_once():
        # An application's own set-up, in the first test's setup (as mealie's is).
        commit("INSERT INTO authors (name) VALUES ('admin')")
        yield
        commit("DELETE FROM authors WHERE name = 'admin'")  # in the last test's teardown

    @pytest.fixture(scope="module")
    def module_books():
        commit("INSERT INTO books (author_id, title) SELECT id, 'shelf' FROM authors LIMIT 1")

    @pytest.fixture
    def function_author():
        commit("INSERT INTO authors (name) VALUES ('per test')")

    def test_1_writes_nothing(module_books):
        pass

    def test_2_function_fixture_commits(function_author):
        pass

    def test_3_sees_the_seed():
        with ENGINE.connect() as conn:
            names = conn.execute(text("SELECT name FROM authors ORDER BY id")).scalars().all()
        assert names[:2] == ["seed", "admin"]
"""


def test_rows_of_wider_fixtures_are_not_the_tests_leak(
    pytester: pytest.Pytester, pg_server: TestServer
) -> None:
    """A session or module fixture that commits while a test sets up (or tears down) commits
    for the whole run: the test is not told to truncate them, which would delete the seed. A
    function fixture's commit is the test's."""
    _leak_project(pytester, None)
    pytester.makepyfile(test_leaks=WIDER_FIXTURES_TESTS)
    result = run_dbguard(pytester, *_shared(pg_server), "-p", "no:randomly", inprocess=True)
    result.assert_outcomes(passed=3, warnings=1)
    result.stdout.fnmatch_lines(
        ["*LeakWarning: " + REPORT.format(test="2_function_fixture_commits", tables="authors")]
    )
    for quiet in ("test_1", "test_3"):
        result.stdout.no_fnmatch_line(f"*::{quiet}_* left rows*")


@pytest.mark.parametrize("how", ["ini", "cli", "env"])
def test_leaks_error_mode_errors_the_test_in_teardown(
    pytester: pytest.Pytester, pg_server: TestServer, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    _leak_project(pytester, "error" if how == "ini" else "off")
    args = ["--dbguard-leaks", "error"] if how == "cli" else []
    if how == "env":
        monkeypatch.setenv("DBGUARD_LEAKS", "error")
    result = run_dbguard(pytester, *_shared(pg_server), "-p", "no:randomly", *args, inprocess=True)
    result.assert_outcomes(passed=6, errors=3)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_2_app_commits*",
            "E *LeakError: " + REPORT.format(test="2_app_commits", tables="authors, books"),
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "ERROR test_leaks.py::test_2_app_commits - *",
            "ERROR test_leaks.py::test_4_app_commits_to_books_only - *",
            "ERROR test_leaks.py::test_5_async_app_engine_commits - *",
        ]
    )


def test_a_tests_own_allow_marker_keeps_its_class_isolation(
    pytester: pytest.Pytester, pg_server: TestServer, developer_db: str
) -> None:
    """The closest marker that names an isolation wins: allow=[...] alone does not reset it."""
    copy_project(pytester, "library")
    pytester.makepyfile(leak_models=LEAK_MODELS)
    pytester.makeini("[pytest]\ndbguard_metadata = leak_models:Base\ndbguard_leaks = error\n")
    pytester.makepyfile(
        f"""
        import os
        import pytest
        from sqlalchemy import create_engine, text

        ENGINE = create_engine(os.environ["DBGUARD_URL"])

        @pytest.mark.dbguard(isolation="truncate")
        class TestCommits:
            @pytest.mark.dbguard(allow=[{developer_db!r}])
            def test_1_commits(self):
                with ENGINE.begin() as conn:
                    conn.execute(text("INSERT INTO authors (name) VALUES ('committed')"))
                other = create_engine({pg_server.url(developer_db)!r})
                with other.begin() as conn:
                    conn.execute(text("INSERT INTO notes (body) VALUES ('allowed')"))
                other.dispose()

        def test_2_emptied_after_the_truncate_test():
            with ENGINE.connect() as conn:  # the schema's seed row stays
                assert conn.execute(text("SELECT name FROM authors")).scalars().all() == ["seed"]
        """
    )
    result = run_dbguard(pytester, "-p", "no:randomly", inprocess=True)
    result.assert_outcomes(passed=2)
    assert _notes(pg_server, developer_db) == ["allowed"]


def test_leaks_off_reports_nothing(pytester: pytest.Pytester, pg_server: TestServer) -> None:
    _leak_project(pytester, "off")
    result = run_dbguard(pytester, *_shared(pg_server), "-p", "no:randomly", inprocess=True)
    result.assert_outcomes(passed=6)
    result.stdout.no_fnmatch_line("*left rows in*")


def test_rollback_test_with_the_session_fixture_reports_nothing(
    pytester: pytest.Pytester, pg_server: TestServer
) -> None:
    """Commits through dbguard's fixtures (savepoints, the session-scoped engine) are no leaks."""
    copy_project(pytester, "library")
    pytester.makepyfile(leak_models=LEAK_MODELS)
    pytester.makeini("[pytest]\ndbguard_metadata = leak_models:Base\ndbguard_leaks = error\n")
    pytester.makepyfile(
        """
        import pytest
        from sqlalchemy import text
        from models import Author

        @pytest.fixture(scope="session", autouse=True)
        def reference(dbguard_engine):
            with dbguard_engine.begin() as conn:
                conn.execute(text("INSERT INTO authors (name) VALUES ('reference')"))

        @pytest.mark.parametrize("n", range(3))
        def test_session(dbguard_session, n):
            dbguard_session.add(Author(name=f"temp{n}"))
            dbguard_session.commit()
            assert dbguard_session.query(Author).count() == 3
        """
    )
    result = run_dbguard(pytester, *_shared(pg_server), inprocess=True)
    result.assert_outcomes(passed=3)
    result.stdout.no_fnmatch_line("*left rows in*")


SPY_CONFTEST = """
    import psycopg
    import pytest

    SENT = []  # every statement any psycopg cursor sends, dbguard's raw ones included
    _execute = psycopg.Cursor.execute

    def _spy(self, query, *args, **kwargs):
        SENT.append(str(query))
        return _execute(self, query, *args, **kwargs)

    psycopg.Cursor.execute = _spy

    @pytest.fixture
    def sent():
        return SENT
"""
SPIED_TESTS = """
    import os
    from sqlalchemy import create_engine, text
    from models import Author

    ENGINE = create_engine(os.environ["DBGUARD_URL"])
    LEAK_QUERIES = ("txid_current_if_assigned", "xmin")

    def test_1_rollback_only(dbguard_session, sent):
        dbguard_session.add(Author(name="rolled back"))
        dbguard_session.commit()
        with ENGINE.connect() as conn:  # the app reads, and does not commit
            conn.execute(text("SELECT count(*) FROM authors"))
        sent.clear()

    def test_2_nothing_was_sent_for_test_1(sent):
        assert not [sql for sql in sent if any(word in sql for word in LEAK_QUERIES)]

    def test_3_app_commits(sent):
        sent.clear()
        with ENGINE.begin() as conn:
            conn.execute(text("INSERT INTO authors (name) VALUES ('leaked')"))

    def test_4_the_check_ran_for_test_3(sent):
        assert [word for word in LEAK_QUERIES if any(word in sql for sql in sent)] == list(
            LEAK_QUERIES
        )
"""


def test_a_rollback_only_test_sends_no_leak_query(
    pytester: pytest.Pytester, pg_server: TestServer
) -> None:
    """No query is spent on leaks unless an engine that is not dbguard's committed."""
    copy_project(pytester, "library")
    pytester.makepyfile(leak_models=LEAK_MODELS, test_spied=SPIED_TESTS)
    pytester.makeconftest(SPY_CONFTEST)
    pytester.makeini("[pytest]\ndbguard_metadata = leak_models:Base\n")
    result = run_dbguard(pytester, *_shared(pg_server), "-p", "no:randomly", inprocess=True)
    result.assert_outcomes(passed=4, warnings=1)
    result.stdout.fnmatch_lines(["*test_spied.py::test_3_app_commits left rows in authors, *"])


def test_readme_recipe_runs_and_shows_the_real_messages(pytester: pytest.Pytester) -> None:
    (recipe,) = blocks("Isolation per test", "python")
    pytester.makepyfile(test_recipe=recipe)
    run_dbguard(pytester, "--dbguard-url", "sqlite", inprocess=True).assert_outcomes(passed=1)
    section = README.split("### Isolation per test", 1)[1].split("\n### ", 1)[0]
    shown = [line for line in section.splitlines() if line.startswith(("Foreign", "Leak"))]
    where = "tests/test_signup.py::test_signup"
    assert shown == [
        "ForeignDatabaseError: "
        + FOREIGN_MESSAGE.format(
            where=where,
            database="app",
            server="127.0.0.1:5432",
            own="this worker's is 'postgres_dbg_1a2b3c4d_main' on 127.0.0.1:41234",
            refused=REFUSED,
            allow=ALLOW_BY_NAME.format(database="app"),
        ),
        "LeakWarning: " + LEAK_MESSAGE.format(where=where, tables="audit_log, users"),
    ]


# A suite that makes a database per test on the run's server (CTFd's create_ctfd()): the
# embedded server's port is new every run, so only the placeholders can name that server.
DATABASE_PER_TEST = """
    import uuid

    import pytest
    from sqlalchemy import create_engine, text


    @pytest.fixture
    def own_database(dbguard_engine):
        name = "per_test_" + uuid.uuid4().hex[:12]
        admin = dbguard_engine.execution_options(isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        engine = create_engine(dbguard_engine.url.set(database=name))
        yield engine
        engine.dispose()
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE "{name}"'))


    def test_ini_allows_the_server(own_database):
        with own_database.connect() as connection:
            assert connection.execute(text("SELECT 1")).scalar() == 1


    @pytest.mark.dbguard(allow=["postgresql://{host}:{port}"])
    def test_mark_allows_the_server(own_database):
        with own_database.connect() as connection:
            assert connection.execute(text("SELECT 2")).scalar() == 2
"""


@pytest.mark.parametrize("ini", [True, False], ids=["allowed-by-ini", "mark-only"])
def test_a_database_per_test_on_the_runs_server_is_allowed_by_placeholders(
    pytester: pytest.Pytester, ini: bool
) -> None:
    pytester.makepyfile(test_per_test=DATABASE_PER_TEST)
    if ini:
        pytester.makeini("[pytest]\ndbguard_allow_databases = postgresql://{host}:{port}\n")
    result = run_dbguard(pytester, "-p", "no:randomly")
    if ini:
        result.assert_outcomes(passed=2)
        return
    # Without the ini line only the marked test may reach it; the other is told how.
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "E *ForeignDatabaseError: test_per_test.py::test_ini_allows_the_server tried to "
            "connect to the database 'per_test_*' on 127.0.0.1:*, which is not one of this run's "
            "test databases* It is on the PostgreSQL server dbguard started for this run, so "
            "the tests made it*dbguard_allow_databases = postgresql://{host}:{port} *"
        ]
    )


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ("postgresql://{host}:{port}/{db}", "has braces other than {host} and {port}"),
        ("postgresql://app:Pw-In-Entry@{host}/x", "lacks {port}"),
        ("postgresql://{host}:{port}:/", "is not a database URL"),
    ],
)
def test_an_allowed_url_takes_only_the_servers_placeholders(
    pytester: pytest.Pytester, entry: str, problem: str
) -> None:
    pytester.makepyfile("def test_x(): pass")
    pytester.makeini(f"[pytest]\ndbguard_allow_databases = {entry}\n")
    result = run_dbguard_inprocess(pytester)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    shown = entry.replace("Pw-In-Entry", "***")
    result.stderr.fnmatch_lines([f"*dbguard_allow_databases*{shown!r} {problem}; *"])
    assert "Pw-In-Entry" not in result.stdout.str() + result.stderr.str()


def test_an_allowed_name_with_a_placeholder_is_an_error(pytester: pytest.Pytester) -> None:
    """``{db}_archive`` was taken as written and admitted nothing, silently. Other braces in a
    name are a name's own (a database may be called ``arch{1}``)."""
    pytester.makepyfile("def test_x(): pass")
    pytester.makeini("[pytest]\ndbguard_allow_databases = {db}_archive arch{1}\n")
    result = run_dbguard_inprocess(pytester)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*ini dbguard_allow_databases*'{db}_archive' is a database name with a placeholder, "
            "which is not filled in*postgresql://{host}:{port} (every database there)."
        ]
    )
    assert "arch{1}" not in result.stderr.str()
    assert AllowList.of(["arch{1}"]).admits(Target.make("h", 5432, "arch{1}"))


def test_a_database_named_after_the_test_database_is_said_to_be_the_tests(
    pytester: pytest.Pytester,
) -> None:
    """jupyterhub's upgrade tests reach '<test database>_upgrade_N': the refusal said to allow
    that name, which holds the run's id, and left out the run's server that would admit it."""
    pytester.makepyfile(
        """
        import os

        from sqlalchemy import create_engine


        def test_archive():
            create_engine(os.environ["DBGUARD_URL"] + "_archive").connect()
        """
    )
    result = run_dbguard(pytester)
    result.assert_outcomes(failed=1)
    assert "allow=['postgres_dbg_" not in result.stdout.str()  # a name new each run
    result.stdout.fnmatch_lines(
        [
            "E *ForeignDatabaseError: *'postgres_dbg_*_main_archive'* Its name is the test "
            "database's ('postgres_dbg_*_main') with a suffix, and holds the run's id*It is on "
            "the PostgreSQL server dbguard started for this run, so the tests made it*"
            "dbguard_allow_databases = postgresql://{host}:{port} *"
        ]
    )


@pytest.mark.parametrize(
    "server",
    [
        pytest.param(Target.make("::1", 5433, "t"), id="ipv6"),
        pytest.param(Target.make("/var/run/postgresql", 5432, "t"), id="socket"),
        pytest.param(Target.make("127.0.0.1", 41234, "t"), id="loopback"),
    ],
)
def test_the_servers_placeholders_admit_its_databases_however_it_is_reached(
    server: Target,
) -> None:
    allowed = AllowList.of(["postgresql://{host}:{port}"], servers=[server])
    made = Target.make(server.shown_host, server.port, "per_test_1")
    assert allowed.admits(made)
    assert not allowed.admits(Target.make(server.shown_host, server.port + 1, "per_test_1"))
    one = AllowList.of(["postgresql://{host}:{port}/reports"], servers=[server])
    assert one.admits(Target.make(server.shown_host, server.port, "reports"))
    assert not one.admits(made)

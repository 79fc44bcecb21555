"""--dbguard-keep-failed: a failed test's view of the database is copied, before its rollback or
truncate, into a marked database ``<db>_failed_<n>``; the report names it with a psql command.

Whole runs in subprocesses on real PostgreSQL. The external runs use a server of this module's
own (a TestServer like ``pg_server``): ``dbguard janitor --older-than 0`` sweeps a whole server,
and the shared one holds other tests' databases (and another test sweeps it so).
"""

from __future__ import annotations

import re
import shlex
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_dbguard.server import processes
from tests.helpers import APP_ENGINE_TESTS_HEAD, as_shown, blocks, dbguard_cli, run_dbguard
from tests.pgserver import (
    LIMITED_PASSWORD,
    LIMITED_USER,
    SUPERUSER_PASSWORD,
    TestServer,
    find_bindir,
    running_server,
)

MODELS = """
    from sqlalchemy import ForeignKey
    from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


    class Base(DeclarativeBase):
        pass


    class Thing(Base):
        __tablename__ = "things"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str]


    class Tag(Base):
        __tablename__ = "tags"
        id: Mapped[int] = mapped_column(primary_key=True)
        thing_id: Mapped[int] = mapped_column(ForeignKey("things.id"))
        label: Mapped[str]
"""
INI = """
    [pytest]
    dbguard_metadata = models:Base
"""
ODD = """it's "odd", (x) \\ y"""  # quotes, a comma, parentheses and a backslash in one value
SYNC_TESTS = {
    "connection": f"""
        from sqlalchemy import text

        def test_passes(dbguard_connection):
            dbguard_connection.execute(text("INSERT INTO things (name) VALUES ('passing')"))

        def test_fails(dbguard_connection):
            dbguard_connection.execute(
                text("INSERT INTO things (name) VALUES ('failing'), (:odd)"), {{"odd": {ODD!r}}}
            )
            dbguard_connection.execute(
                text("INSERT INTO tags (thing_id, label) SELECT id, 'tag' FROM things "
                     "WHERE name = 'failing'")
            )
            assert False, "the failure"

        def test_passes_after(dbguard_connection):
            assert dbguard_connection.execute(text("SELECT count(*) FROM things")).scalar() == 0
    """,
    "session": f"""
        from sqlalchemy import func, select
        from models import Tag, Thing

        def test_passes(dbguard_session):
            dbguard_session.add(Thing(name="passing"))
            dbguard_session.commit()

        def test_fails(dbguard_session):
            failing = Thing(name="failing")
            dbguard_session.add_all([failing, Thing(name={ODD!r})])
            dbguard_session.commit()  # a savepoint released: in dbguard's transaction
            dbguard_session.add(Tag(thing_id=failing.id, label="tag"))
            dbguard_session.flush()  # in the session's savepoint, which close() rolls back
            assert False, "the failure"

        def test_passes_after(dbguard_session):
            assert dbguard_session.scalar(select(func.count()).select_from(Thing)) == 0
    """,
}
KEPT = re.compile(r"is kept in (\S+):$", re.MULTILINE)


@pytest.fixture(scope="module")
def server() -> Iterator[TestServer]:
    """Module: a password-protected PostgreSQL server of this module's own."""
    with running_server() as started:
        yield started


def _project(pytester: pytest.Pytester, **tests: str) -> None:
    pytester.makepyfile(models=textwrap.dedent(MODELS))
    pytester.makeini(textwrap.dedent(INI))
    pytester.makepyfile(**{name: textwrap.dedent(text) for name, text in tests.items()})


def _kept_on(server: TestServer) -> list[str]:
    return [name for name in server.databases() if "_failed_" in name]


def _rows(server: TestServer, database: str, query: str) -> list[str]:
    return [line for line in server.sql(query, database=database).stdout.splitlines() if line]


def _kept_names(result: pytest.RunResult) -> list[str]:
    return KEPT.findall(result.stdout.str())


@pytest.fixture
def clean(server: TestServer) -> Iterator[None]:
    """Function: the kept databases a test leaves on the module's server are dropped after it."""
    yield
    for name in _kept_on(server):
        server.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.usefixtures("clean")
@pytest.mark.parametrize("fixture", ["connection", "session"])
def test_rollback_keeps_exactly_the_failed_tests_rows(
    pytester: pytest.Pytester, server: TestServer, fixture: str
) -> None:
    _project(pytester, test_things=SYNC_TESTS[fixture])
    result = run_dbguard(
        pytester, "--dbguard-url", server.url(), "--dbguard-keep-failed", inprocess=True
    )
    result.assert_outcomes(passed=2, failed=1)
    [name] = _kept_names(result)
    assert name.endswith("_main_failed_1") and "_dbg_" in name
    result.stdout.fnmatch_lines(
        [
            "*- dbguard: the failed test's data (teardown) -*",
            "test_things.py::test_fails failed; its view of the database "
            f"(3 rows in 2 tables: things 2, tags 1) is kept in {name}:",
            f"  psql -h 127.0.0.1 -p {server.port} -U postgres -d {name}",
            "  (the password is not shown: psql asks for it, or set PGPASSWORD to the password "
            "of the run's URL (--dbguard-url); *",
            "dbguard: kept 1 failed test database; they stay on the server*",
            f"  test_things.py::test_fails: psql -h 127.0.0.1 -p {server.port} -U postgres -d {name}",
        ]
    )
    assert SUPERUSER_PASSWORD not in result.stdout.str() + result.stderr.str()
    # The run's own sweep dropped its worker database, and left the kept one alone.
    assert _kept_on(server) == [name]
    assert [db for db in server.databases() if "_dbg_" in db] == [name]
    assert _rows(server, name, "SELECT name FROM things ORDER BY id") == ["failing", ODD]
    assert _rows(
        server,
        name,
        "SELECT t.name || '/' || g.label FROM tags g JOIN things t ON t.id = g.thing_id",
    ) == ["failing/tag"]
    comment = _rows(
        server,
        "postgres",
        f"SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = '{name}'",
    )
    assert '"failed_test":"test_things.py::test_fails"' in comment[0]


@pytest.mark.usefixtures("clean")
def test_passing_tests_keep_nothing(pytester: pytest.Pytester, server: TestServer) -> None:
    passing = SYNC_TESTS["connection"].replace('assert False, "the failure"', "pass")
    _project(pytester, test_things=passing)
    result = run_dbguard(
        pytester, "--dbguard-url", server.url(), "--dbguard-keep-failed", inprocess=True
    )
    result.assert_outcomes(passed=3)
    assert _kept_on(server) == []
    result.stdout.no_fnmatch_line("*dbguard kept*")
    result.stdout.no_fnmatch_line("*failed test database*")


def test_without_the_option_a_failure_keeps_nothing(
    pytester: pytest.Pytester, server: TestServer
) -> None:
    _project(pytester, test_things=SYNC_TESTS["connection"])
    result = run_dbguard(pytester, "--dbguard-url", server.url(), inprocess=True)
    result.assert_outcomes(passed=2, failed=1)
    assert _kept_on(server) == []
    result.stdout.no_fnmatch_line("*dbguard kept*")


# Counts every statement any engine in the inner run sends (dbguard's own engines too) while
# tests run, from the first test's setup to the last one's teardown.
COUNTING_CONFTEST = """
    import pytest
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    statements = []

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(item, nextitem):
        listener = lambda *args: statements.append(args[2])
        event.listen(Engine, "before_cursor_execute", listener)
        try:
            return (yield)
        finally:
            event.remove(Engine, "before_cursor_execute", listener)

    def pytest_sessionfinish(session):
        with open("statements.txt", "w") as out:
            out.write("\\n".join(statements))
"""


@pytest.mark.usefixtures("clean")
@pytest.mark.parametrize("where", ["sqlite", "worker-schemas"])
def test_where_nothing_can_be_kept_the_report_says_why(
    pytester: pytest.Pytester, server: TestServer, where: str
) -> None:
    _project(pytester, test_things=SYNC_TESTS["connection"])
    url = "sqlite" if where == "sqlite" else server.url("app_limited", user=LIMITED_USER)
    result = run_dbguard(pytester, "--dbguard-url", url, "--dbguard-keep-failed", inprocess=True)
    result.assert_outcomes(passed=2, failed=1)
    why = {
        "sqlite": "SQLite test files are not kept",
        "worker-schemas": "the role may not create databases (worker schemas in one database)",
    }[where]
    result.stdout.fnmatch_lines(
        [
            "*- dbguard: the failed test's data (teardown) -*",
            f"test_things.py::test_fails failed, but dbguard could not keep its data: {why}. *",
        ]
    )
    result.stdout.no_fnmatch_line("dbguard: kept *")
    assert _kept_on(server) == []
    assert LIMITED_PASSWORD not in result.stdout.str()


@pytest.mark.usefixtures("clean")
def test_no_extra_statement_when_no_test_fails(
    pytester: pytest.Pytester, server: TestServer
) -> None:
    passing = SYNC_TESTS["connection"].replace('assert False, "the failure"', "pass")
    _project(pytester, test_things=passing)
    pytester.makeconftest(textwrap.dedent(COUNTING_CONFTEST))
    counted = {}
    for option in ("", "--dbguard-keep-failed"):
        result = run_dbguard(
            pytester, "--dbguard-url", server.url(), *filter(None, [option]), inprocess=True
        )
        result.assert_outcomes(passed=3)
        counted[option] = (pytester.path / "statements.txt").read_text().splitlines()
    assert counted[""] == counted["--dbguard-keep-failed"]
    # The counter does see dbguard's own statements: a failure's copy shows up in it.
    pytester.makepyfile(test_things=SYNC_TESTS["connection"])
    failing = run_dbguard(
        pytester, "--dbguard-url", server.url(), "--dbguard-keep-failed", inprocess=True
    )
    failing.assert_outcomes(passed=2, failed=1)
    with_failure = (pytester.path / "statements.txt").read_text()
    assert "pg_sequence_last_value" in with_failure and "CAST(ROW(" in with_failure


@pytest.mark.needs_xdist
@pytest.mark.usefixtures("clean")
def test_two_workers_each_keep_their_failure(pytester: pytest.Pytester, server: TestServer) -> None:
    tests = """
        import os
        import pytest
        from sqlalchemy import text

        ran = []

        @pytest.mark.parametrize("n", range(6))
        def test_n(dbguard_connection, n):
            worker = os.environ["PYTEST_XDIST_WORKER"]
            dbguard_connection.execute(
                text("INSERT INTO things (name) VALUES (:name)"), {"name": f"{worker}-{n}"}
            )
            ran.append(n)
            assert len(ran) > 1, "each worker's first test fails"
    """
    _project(pytester, test_workers=tests)
    result = run_dbguard(
        pytester,
        "-n",
        "2",
        "--dbguard-url",
        server.url(),
        "--dbguard-keep-failed",
        plugins=("xdist",),
        inprocess=True,
    )
    result.assert_outcomes(passed=4, failed=2)
    names = sorted(_kept_names(result))
    assert len(names) == 2 and names[0] != names[1]
    assert names[0].endswith("_gw0_failed_1") and names[1].endswith("_gw1_failed_1")
    assert sorted(_kept_on(server)) == names
    result.stdout.fnmatch_lines(
        [
            "dbguard: kept 2 failed test databases; *",
            "  test_workers.py::test_n[[]*]: psql -h 127.0.0.1 * -d *_failed_1",
            "  test_workers.py::test_n[[]*]: psql -h 127.0.0.1 * -d *_failed_1",
        ]
    )
    for name, worker in zip(names, ("gw0", "gw1"), strict=True):
        [row] = _rows(server, name, "SELECT name FROM things")
        assert row.startswith(f"{worker}-")


@pytest.mark.usefixtures("clean")
def test_a_failed_setup_keeps_its_rows_and_the_summary_names_it(
    pytester: pytest.Pytester, server: TestServer
) -> None:
    tests = """
        import pytest
        from models import Thing

        @pytest.fixture
        def seeded(dbguard_session):
            dbguard_session.add(Thing(name="from setup"))
            dbguard_session.flush()
            raise RuntimeError("the setup failure")

        def test_uses_it(seeded):
            pass
    """
    _project(pytester, test_setup=tests)
    result = run_dbguard(
        pytester, "--dbguard-url", server.url(), "--dbguard-keep-failed", inprocess=True
    )
    result.assert_outcomes(errors=1)
    [name] = _kept_on(server)
    result.stdout.fnmatch_lines(
        [
            "dbguard: kept 1 failed test database; *",
            f"  test_setup.py::test_uses_it: psql -h 127.0.0.1 -p {server.port} -U postgres -d {name}",
        ]
    )
    assert _rows(server, name, "SELECT name FROM things") == ["from setup"]


@pytest.mark.usefixtures("clean")
def test_truncate_isolation_keeps_the_committed_rows_before_emptying(
    pytester: pytest.Pytester, server: TestServer
) -> None:
    tests = """
        import pytest
        from sqlalchemy import text

        pytestmark = pytest.mark.dbguard(isolation="truncate")

        def test_fails(dbguard_engine):
            with dbguard_engine.begin() as connection:
                connection.execute(text("INSERT INTO things (name) VALUES ('committed')"))
            assert False, "the failure"

        def test_emptied_after(dbguard_connection):
            assert dbguard_connection.execute(text("SELECT count(*) FROM things")).scalar() == 0
    """
    _project(pytester, test_truncate=tests)
    result = run_dbguard(
        pytester, "--dbguard-url", server.url(), "--dbguard-keep-failed", inprocess=True
    )
    result.assert_outcomes(passed=1, failed=1)
    [name] = _kept_names(result)
    result.stdout.fnmatch_lines(["*(1 row in 1 table: things 1) is kept in*"])
    assert _rows(server, name, "SELECT name FROM things") == ["committed"]


@pytest.mark.usefixtures("clean")
def test_async_session_keeps_its_rows(pytester: pytest.Pytester, server: TestServer) -> None:
    tests = """
        import pytest
        from models import Thing

        @pytest.mark.asyncio(loop_scope="session")
        async def test_fails(dbguard_async_session):
            dbguard_async_session.add_all([Thing(name="async-one"), Thing(name="async-two")])
            await dbguard_async_session.commit()  # a savepoint: still dbguard's transaction
            assert False, "the failure"
    """
    _project(pytester, test_async=tests)
    result = pytester.runpytest_subprocess(
        "-p",
        "asyncio",
        "-p",
        "pytest_dbguard",
        "--dbguard-url",
        server.url(),
        "--dbguard-keep-failed",
        timeout=300,
    )
    result.assert_outcomes(failed=1)
    [name] = _kept_names(result)
    assert _rows(server, name, "SELECT name FROM things ORDER BY id") == ["async-one", "async-two"]


@pytest.mark.usefixtures("clean")
def test_janitor_lists_and_drops_a_kept_database(
    pytester: pytest.Pytester, server: TestServer
) -> None:
    _project(pytester, test_things=SYNC_TESTS["connection"])
    # A subprocess: the janitor spares a database while the process that made it is alive.
    run_dbguard(pytester, "--dbguard-url", server.url(), "--dbguard-keep-failed").assert_outcomes(
        passed=2, failed=1
    )
    [name] = _kept_on(server)
    # Too young for the default --older-than (6h), it is listed all the same.
    young = dbguard_cli("janitor", "--dry-run", server.url())
    assert young.returncode == 0, young.stderr
    assert f"kept {name} (run " in young.stdout
    assert "data of failed test test_things.py::test_fails" in young.stdout
    assert "younger than --older-than; --older-than 0 drops it" in young.stdout
    dry = dbguard_cli("janitor", "--dry-run", "--older-than", "0", server.url())
    assert dry.returncode == 0, dry.stderr
    assert f"would drop {name} (run " in dry.stdout
    assert _kept_on(server) == [name]
    dropped = dbguard_cli("janitor", "--older-than", "0", server.url())
    assert dropped.returncode == 0, dropped.stderr
    assert f"dropped {name} (run " in dropped.stdout
    assert _kept_on(server) == []
    assert SUPERUSER_PASSWORD not in young.stdout + dry.stdout + dropped.stdout + dropped.stderr


README_MODELS = """
    from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


    class Base(DeclarativeBase):
        pass


    class User(Base):
        __tablename__ = "users"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str]
"""
SECTION = "Keep a failed test's data"


def test_readme_example_on_the_embedded_server_stays_up_until_dbguard_stop(
    pytester: pytest.Pytester,
) -> None:
    """The README's example, run as shown: its output, its psql command, and `dbguard stop`."""
    [example] = blocks(SECTION, "python")
    output = blocks(SECTION, "")[0]
    pytester.makepyfile(models=textwrap.dedent(README_MODELS), test_users=example)
    pytester.makeini(textwrap.dedent(INI))
    # A subprocess: the server must outlive the pytest process that started it.
    result = run_dbguard(pytester, "--dbguard-keep-failed")
    try:
        result.assert_outcomes(failed=1)
        shown = output.split("...\n---", 1)[1].split("$ psql", 1)[0]
        # The run folder (and its run id) differs from run to run.
        shown = re.sub(r"\S*/pytest-dbguard-\d+/[0-9a-f]+", "...", "---" + shown)
        result.stdout.fnmatch_lines(as_shown(shown))
        [command] = [
            line.strip() for line in result.stdout.lines if line.strip().startswith("psql -h ")
        ]
        folder = Path(shlex.split(command)[2])
        pid = int((folder / "data" / "postmaster.pid").read_text().splitlines()[0])
        assert processes.process_alive(pid)  # pytest has exited; the server has not
        # The report's own command, as printed, reaches the kept rows.
        psql = [str(find_bindir() / "psql"), *shlex.split(command)[1:], "-At", "-c"]
        listed = subprocess.run(
            [*psql, "SELECT name FROM users ORDER BY id"], capture_output=True, text=True
        )
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.splitlines() == ["ada", "grace"]
        databases = subprocess.run(
            [*psql, "SELECT datname FROM pg_database WHERE datname LIKE '%\\_dbg\\_%'"],
            capture_output=True,
            text=True,
        )
        # The copy only: the template it was cloned from went with the run.
        assert databases.stdout.split() == [shlex.split(command)[-1]], databases.stdout
    finally:
        stopped = dbguard_cli("stop", cwd=pytester.path)
    assert stopped.returncode == 0, stopped.stderr
    assert f"stopped the kept PostgreSQL cluster for {pytester.path}" in stopped.stdout
    assert not processes.process_alive(pid)
    assert not folder.exists()


def test_embedded_run_without_failures_stops_its_cluster(pytester: pytest.Pytester) -> None:
    passing = SYNC_TESTS["connection"].replace('assert False, "the failure"', "pass")
    _project(pytester, test_things=passing)
    run_dbguard(pytester, "--dbguard-keep-failed", inprocess=True).assert_outcomes(passed=3)
    stopped = dbguard_cli("stop", cwd=pytester.path)
    assert stopped.returncode == 0, stopped.stderr
    assert "nothing to stop" in stopped.stdout


@pytest.mark.parametrize("how", ["env", "ini"])
def test_env_and_ini_switch_it_on(
    pytester: pytest.Pytester,
    server: TestServer,
    monkeypatch: pytest.MonkeyPatch,
    how: str,
    clean: None,
) -> None:
    _project(pytester, test_things=SYNC_TESTS["connection"])
    if how == "env":
        monkeypatch.setenv("DBGUARD_KEEP_FAILED", "1")
    else:
        pytester.makeini(textwrap.dedent(INI) + "dbguard_keep_failed = true\n")
    result = run_dbguard(pytester, "--dbguard-url", server.url(), inprocess=True)
    result.assert_outcomes(passed=2, failed=1)
    assert len(_kept_names(result)) == 1
    assert _kept_on(server) == _kept_names(result)


PARTITIONED_MODELS = """
    from sqlalchemy import DDL, Column, Integer, MetaData, String, Table, event

    metadata = MetaData()
    events = Table(
        "events",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("body", String),
        postgresql_partition_by="RANGE (id)",
    )
    event.listen(
        events,
        "after_create",
        DDL(
            "CREATE TABLE events_low PARTITION OF events FOR VALUES FROM (0) TO (100); "
            "CREATE TABLE events_high PARTITION OF events FOR VALUES FROM (100) TO (1000)"
        ),
    )
"""
PARTITIONED_TESTS = (
    APP_ENGINE_TESTS_HEAD
    + """

    @pytest.mark.dbguard(isolation="truncate")
    def test_1_truncate_writes_both_partitions():
        with ENGINE.begin() as conn:
            conn.execute(text("INSERT INTO events (id, body) VALUES (1, 'a'), (150, 'b')"))

    def test_2_fails(dbguard_connection):
        assert dbguard_connection.execute(text("SELECT count(*) FROM events")).scalar() == 0
        dbguard_connection.execute(text("INSERT INTO events (id, body) VALUES (5, 'x'), (500, 'y')"))
        assert False
"""
)


@pytest.mark.usefixtures("clean")
def test_a_partitioned_tables_rows_are_kept_once(
    pytester: pytest.Pytester, server: TestServer
) -> None:
    """A partitioned table stands for its partitions: its rows are copied once (the copy of the
    parent's and each partition's rows failed on the partitions' primary keys), and truncate
    empties it through the parent."""
    pytester.makepyfile(
        models=textwrap.dedent(PARTITIONED_MODELS), test_events=textwrap.dedent(PARTITIONED_TESTS)
    )
    pytester.makeini("[pytest]\ndbguard_metadata = models:metadata\n")
    result = run_dbguard(
        pytester,
        "--dbguard-url",
        server.url(),
        "--dbguard-keep-failed",
        "-p",
        "no:randomly",
        inprocess=True,
    )
    result.assert_outcomes(passed=1, failed=1)
    [name] = _kept_names(result)
    result.stdout.fnmatch_lines(
        [
            "test_events.py::test_2_fails failed; its view of the database (2 rows in 1 table: "
            f"events 2) is kept in {name}:"
        ]
    )
    assert _rows(server, name, "SELECT body FROM events ORDER BY id") == ["x", "y"]


CREATES_A_TABLE = """
    from sqlalchemy import text
    from models import Thing

    def test_fails(dbguard_session):
        dbguard_session.add(Thing(name="kept"))
        dbguard_session.execute(text("CREATE TABLE scratch (id serial PRIMARY KEY, note text)"))
        dbguard_session.execute(text("INSERT INTO scratch (note) VALUES ('made in the test')"))
        dbguard_session.flush()
        assert False
"""


@pytest.mark.usefixtures("clean")
def test_a_table_the_test_created_is_named_not_copied(
    pytester: pytest.Pytester, server: TestServer
) -> None:
    """The copy is cloned from the run's schema: a table the failed test created itself is not
    in it. The schema's tables are still copied, and the report names the one left out (the
    whole copy failed with 'relation "scratch" does not exist'; a security audit's finding)."""
    _project(pytester, test_creates=CREATES_A_TABLE)
    args = ["--dbguard-url", server.url(), "--dbguard-keep-failed"]
    result = run_dbguard(pytester, *args, inprocess=True)
    result.assert_outcomes(failed=1)
    [name] = _kept_names(result)
    result.stdout.fnmatch_lines(
        [
            "test_creates.py::test_fails failed; its view of the database (1 row in 1 table: "
            f"things 1) is kept in {name}:",
            "  psql *",
            "  not copied: scratch (tables created after dbguard built the run's schema, by the "
            "test or a fixture, which the copy, cloned from that schema, does not have: let "
            "dbguard build them, with dbguard_metadata or dbguard_alembic_ini)",
        ]
    )
    assert _rows(server, name, "SELECT name FROM things") == ["kept"]


WRITES_NOTHING = """
    import pytest

    def test_plain():
        assert 1 == 2

    def test_reads_only(dbguard_connection):
        assert dbguard_connection.exec_driver_sql("SELECT count(*) FROM things").scalar() == 1
"""


@pytest.mark.usefixtures("clean")
@pytest.mark.parametrize("isolation", ["rollback", "truncate"])
def test_a_failed_test_that_left_no_row_keeps_no_copy(
    pytester: pytest.Pytester, server: TestServer, isolation: str
) -> None:
    """A copy identical to the schema as built shows nothing, and on the embedded server it kept
    the cluster running after the run: under truncate every test was copied, one that never
    touched the database too (advanced-alchemy's trial)."""
    _project(pytester, test_nothing=WRITES_NOTHING)
    args = ["--dbguard-url", server.url(), "--dbguard-keep-failed"]
    result = run_dbguard(pytester, *args, "-o", f"dbguard_isolation={isolation}", inprocess=True)
    result.assert_outcomes(failed=2)
    # Under rollback a test that uses no dbguard fixture is not looked at; under truncate it is.
    tests = ("test_plain", "test_reads_only") if isolation == "truncate" else ("test_reads_only",)
    for test in tests:
        result.stdout.fnmatch_lines(
            [
                f"test_nothing.py::{test} failed; its view of the database is the run's schema "
                "as built (the test left no row of its own there), so no copy was kept."
            ]
        )
    assert "dbguard: kept" not in result.stdout.str()
    assert "test_plain failed" not in result.stdout.str() or isolation == "truncate"
    assert _kept_on(server) == []

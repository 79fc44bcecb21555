"""Test databases: only dbguard's own are dropped; roles without CREATEDB get a schema per worker."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import time

import pytest
import sqlalchemy

from pytest_dbguard.db import databases, maintenance, worker_schemas
from pytest_dbguard.db.marks import make_mark
from pytest_dbguard.db.urls import DatabaseURL
from pytest_dbguard.exceptions import DatabaseSetupError
from tests.helpers import SCHEMAS_MODELS, copy_project, mark_text, run_dbguard, stopped_once
from tests.pgserver import LIMITED_PASSWORD, LIMITED_USER, SUPERUSER_PASSWORD, TestServer

NOTE_TESTS = """
    import os
    import pytest
    from sqlalchemy import create_engine, text
    from models import Note

    @pytest.mark.parametrize("n", range(6))
    def test_notes(dbguard_session, n):
        dbguard_session.add(Note(body=os.environ["DBGUARD_WORKER"]))
        dbguard_session.commit()
        assert [note.body for note in dbguard_session.query(Note)] == [os.environ["DBGUARD_WORKER"]]

    def test_app_engine_sees_the_worker_schema():
        engine = create_engine(os.environ["DBGUARD_URL"])
        with engine.connect() as conn:
            assert conn.execute(text("SELECT current_schema()")).scalar().startswith("dbg_")
            assert conn.execute(text("SELECT count(*) FROM notes")).scalar() == 0
        engine.dispose()
"""


def test_unmarked_database_is_never_dropped(pg_server: TestServer) -> None:
    pg_server.sql('CREATE DATABASE "app_dbg_abc123_gw0"')  # dbguard's name shape, but not its mark
    pg_server.sql('CREATE DATABASE "app_dbg_abc123_gw1"')
    pg_server.sql(f"COMMENT ON DATABASE \"app_dbg_abc123_gw1\" IS '{make_mark('abc123', 'gw1')}'")
    url = DatabaseURL.parse(pg_server.url())
    try:
        assert databases.drop_database(url, "app_dbg_abc123_gw0") is False
        assert databases.drop_database(url, "postgres") is False
        assert "app_dbg_abc123_gw0" in pg_server.databases()
        assert databases.drop_database(url, "app_dbg_abc123_gw1") is True
        assert "app_dbg_abc123_gw1" not in pg_server.databases()
    finally:
        pg_server.sql('DROP DATABASE IF EXISTS "app_dbg_abc123_gw0"')


def _finished_pid() -> int:
    process = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(process.stdout)


def _wait_until_nobody_is_connected(pg_server: TestServer, database: str) -> None:
    query = f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{database}'"
    deadline = time.monotonic() + 10
    while pg_server.sql(query).stdout.strip() != "0":
        assert time.monotonic() < deadline, f"sessions still connected to {database} after 10 s"
        time.sleep(0.05)


def test_same_named_leftover_is_replaced_only_when_its_run_is_over(pg_server: TestServer) -> None:
    """Two runs that draw one id must not take each other's database; a crashed run's is replaced."""
    name = "app_dbg_feed0001_gw0"
    url = DatabaseURL.parse(pg_server.url())
    provision = functools.partial(
        databases.provision_database, url, name, None, None, run="feed0001", worker="gw0"
    )
    pg_server.sql(f'CREATE DATABASE "{name}"')
    pg_server.sql("CREATE TABLE left_behind (id int)", database=name)
    try:
        pg_server.sql(f"COMMENT ON DATABASE \"{name}\" IS '{make_mark('feed0001', 'gw0')}'")
        with pytest.raises(
            DatabaseSetupError, match=r"another run is using it \(its creator, process \d+"
        ):
            provision()  # this very process made the mark: a live run
        assert (
            pg_server.sql("SELECT count(*) FROM left_behind", database=name).stdout.strip() == "0"
        )

        pg_server.sql(
            f"COMMENT ON DATABASE \"{name}\" IS '{mark_text('feed0001', 'gw0', pid=_finished_pid())}'"
        )
        holder = sqlalchemy.create_engine(pg_server.url(name), poolclass=sqlalchemy.pool.NullPool)
        try:
            with (
                holder.connect(),
                pytest.raises(DatabaseSetupError, match=r"1 session\(s\) are connected to it"),
            ):
                provision()
        finally:
            holder.dispose()
        # The server ends a backend shortly after its client goes: still listed, it counts.
        _wait_until_nobody_is_connected(pg_server, name)

        assert provision().database == name  # a dead creator, nobody connected: a leftover
        tables = pg_server.sql(
            "SELECT count(*) FROM pg_tables WHERE tablename = 'left_behind'", database=name
        )
        assert tables.stdout.strip() == "0"
        comment = pg_server.sql(
            f"SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = '{name}'"
        )
        assert f'"pid":{os.getpid()}' in comment.stdout
    finally:
        pg_server.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_run_teardown_leaves_a_same_id_run_that_is_still_going(pg_server: TestServer) -> None:
    """drop_run drops its run id's databases, but not those another live process created."""
    from pytest_dbguard.db.janitor import drop_run

    theirs, ours = "app_dbg_feed0002_gw0", "app_dbg_feed0002_main"
    for name in (theirs, ours):
        pg_server.sql(f'CREATE DATABASE "{name}"')
    try:
        live = mark_text("feed0002", "gw0", pid=1)  # pid 1: alive, started long before
        pg_server.sql(f"COMMENT ON DATABASE \"{theirs}\" IS '{live}'")
        pg_server.sql(f"COMMENT ON DATABASE \"{ours}\" IS '{make_mark('feed0002', 'main')}'")
        assert drop_run(pg_server.url(), "feed0002") == [ours]
        assert theirs in pg_server.databases() and ours not in pg_server.databases()
    finally:
        for name in (theirs, ours):
            pg_server.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_same_named_schema_is_replaced_only_when_its_run_is_over(pg_server: TestServer) -> None:
    schema = "dbg_feed0003_gw0"
    url = DatabaseURL.parse(pg_server.url())
    provision = functools.partial(
        worker_schemas.provision_schema, url, schema, None, run="feed0003", worker="gw0"
    )
    pg_server.sql(f"CREATE SCHEMA {schema}; CREATE TABLE {schema}.left_behind (id int)")
    try:
        pg_server.sql(f"COMMENT ON SCHEMA {schema} IS '{make_mark('feed0003', 'gw0')}'")
        with pytest.raises(DatabaseSetupError, match=r"another run is using it \(its creator"):
            provision()  # this very process made the mark: a live run
        assert pg_server.sql(f"SELECT count(*) FROM {schema}.left_behind").stdout.strip() == "0"
        pg_server.sql(
            f"COMMENT ON SCHEMA {schema} IS '{mark_text('feed0001', 'gw0', pid=_finished_pid())}'"
        )
        assert provision().schema == schema  # a crashed run's: replaced
        tables = pg_server.sql(
            f"SELECT count(*) FROM pg_tables WHERE schemaname = '{schema}'"
        ).stdout.strip()
        assert tables == "0"
    finally:
        pg_server.sql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def test_run_leaves_other_databases_alone(pytester: pytest.Pytester, pg_server: TestServer) -> None:
    pg_server.sql('CREATE DATABASE "postgres_dbg_zzzzzz_gw0"')
    try:
        copy_project(pytester, "notes")
        pytester.makepyfile(test_notes="def test_x(dbguard_session): pass")
        pytester.makeini("[pytest]\ndbguard_metadata = models:Base\n")
        run_dbguard(pytester, "--dbguard-url", pg_server.url(), inprocess=True).assert_outcomes(
            passed=1
        )
        names = pg_server.databases()
        assert "postgres_dbg_zzzzzz_gw0" in names
        assert [name for name in names if "_dbg_" in name] == ["postgres_dbg_zzzzzz_gw0"]
    finally:
        pg_server.sql('DROP DATABASE IF EXISTS "postgres_dbg_zzzzzz_gw0"')


@pytest.mark.parametrize(
    "xdist", [False, pytest.param(True, marks=pytest.mark.needs_xdist)], ids=["serial", "n2"]
)
def test_role_without_createdb_gets_a_schema_per_worker(
    pytester: pytest.Pytester, pg_server: TestServer, xdist: bool
) -> None:
    copy_project(pytester, "notes")
    pytester.makepyfile(test_notes=NOTE_TESTS)
    pytester.makeini("[pytest]\ndbguard_metadata = models:Base\n")
    url = pg_server.url(database="app_limited", user=LIMITED_USER)
    args = ["--dbguard-url", url, "-v"] + (["-n", "2"] if xdist else [])
    result = run_dbguard(pytester, *args, inprocess=True)
    result.assert_outcomes(passed=7)
    result.stdout.fnmatch_lines(
        ["dbguard: *schemas dbg_*_<worker> in app_limited (the role may not create databases)*"]
    )
    output = result.stdout.str() + result.stderr.str()
    assert LIMITED_PASSWORD not in output and SUPERUSER_PASSWORD not in output
    leftover = pg_server.sql(
        "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'dbg_%'", database="app_limited"
    )
    assert leftover.stdout.strip() == ""
    assert not [name for name in pg_server.databases() if "_dbg_" in name]


@pytest.mark.parametrize(
    "xdist", [False, pytest.param(True, marks=pytest.mark.needs_xdist)], ids=["serial", "n2"]
)
def test_tables_in_schemas_of_their_own_stop_a_schema_per_worker_run(
    pytester: pytest.Pytester, pg_server: TestServer, xdist: bool
) -> None:
    """create_all would put people.members in the shared database's own schema people, outside
    every worker's schema and out of reach of dbguard's cleanup: the run stops before it."""
    pytester.makepyfile(models=SCHEMAS_MODELS, test_one="def test_x(dbguard_connection): pass")
    pytester.makeini("[pytest]\ndbguard_metadata = models:metadata\n")
    url = pg_server.url(database="app_limited", user=LIMITED_USER)
    result = run_dbguard(pytester, "--dbguard-url", url, *(["-n", "2"] if xdist else []))
    output = stopped_once(result, "has tables in schemas of their own (people.members)")
    assert LIMITED_PASSWORD not in output
    created = pg_server.sql(
        "SELECT nspname FROM pg_namespace WHERE nspname = 'people' OR nspname LIKE 'dbg_%'",
        database="app_limited",
    )
    assert created.stdout.strip() == ""


def test_schema_isolation_on_request(pytester: pytest.Pytester, pg_server: TestServer) -> None:
    copy_project(pytester, "notes")
    pytester.makepyfile(test_notes=NOTE_TESTS)
    pytester.makeini(
        "[pytest]\ndbguard_metadata = models:Base\ndbguard_worker_isolation = schema\n"
    )
    result = run_dbguard(pytester, "--dbguard-url", pg_server.url(), inprocess=True)
    result.assert_outcomes(passed=7)


ONE_RUNS_DATABASES = """
    import fnmatch, os
    from sqlalchemy import text

    def test_databases_of_this_run(dbguard_connection):
        run = os.environ["DBGUARD_RUN"]
        names = dbguard_connection.execute(
            text("SELECT datname FROM pg_database WHERE datname LIKE :pattern ORDER BY 1"),
            {"pattern": f"%_dbg_{run}_%"},
        ).scalars().all()
        expected = os.environ["EXPECTED_DATABASES"].split(",")
        assert len(names) == len(expected), names
        assert all(fnmatch.fnmatch(n.rsplit("_", 1)[1], e) for n, e in zip(names, expected)), names
        assert dbguard_connection.execute(text("SELECT count(*) FROM notes")).scalar() == 0
"""


@pytest.mark.parametrize(
    "args, expected",
    [
        pytest.param((), "main", id="single-run-builds-in-place"),
        pytest.param(
            ("-n", "1"),
            "gw0,tpl*",
            id="xdist-clones-a-template",
            marks=pytest.mark.needs_xdist,
        ),
    ],
)
def test_single_run_needs_no_template(
    pytester: pytest.Pytester,
    pg_server: TestServer,
    monkeypatch: pytest.MonkeyPatch,
    args: tuple[str, ...],
    expected: str,
) -> None:
    # Nobody shares a single run's template: it builds the schema in its own database.
    copy_project(pytester, "notes")
    pytester.makepyfile(test_run=ONE_RUNS_DATABASES)
    pytester.makeini("[pytest]\ndbguard_metadata = models:Base\n")
    monkeypatch.setenv("EXPECTED_DATABASES", expected)
    result = run_dbguard(pytester, "--dbguard-url", pg_server.url(), *args, inprocess=True)
    result.assert_outcomes(passed=1)
    assert not [name for name in pg_server.databases() if "_dbg_" in name]


TWO_SESSION_TESTS = """
from sqlalchemy import text

def test_one(dbguard_session):
    assert dbguard_session.execute(text("SELECT 1")).scalar() == 1

def test_two(dbguard_session):
    assert dbguard_session.execute(text("SELECT 2")).scalar() == 2
"""


def test_a_single_run_connects_once_to_each_database(
    pytester: pytest.Pytester, pg_server: TestServer
) -> None:
    # The role check's connection also proves the server ready and becomes the maintenance
    # engine's; the engine that built the schema in place serves the tests. Before: three
    # connections to the server's database and two to the test database.
    base = f"handover_{os.getpid()}"
    pg_server.sql(f"CREATE DATABASE {base}")
    try:
        copy_project(pytester, "notes")
        pytester.makepyfile(test_two=TWO_SESSION_TESTS)
        pytester.makeini("[pytest]\ndbguard_metadata = models:Base\n")
        offset = pg_server.log_offset()
        result = run_dbguard(pytester, "--dbguard-url", pg_server.url(base), inprocess=True)
        result.assert_outcomes(passed=2)
        found = pg_server.connections_since(offset)
        assert [name for name in found if name == base] == [base]
        assert len([name for name in found if name.startswith(f"{base}_dbg_")]) == 1, found
    finally:
        pg_server.sql(f"DROP DATABASE {base}")


NO_SESSION_FIRST = """
import time
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

@pytest.mark.dbguard(allow=["postgres"])
def test_first_without_a_session(dbguard_url):
    # Asked from the server's own database: nobody but dbguard could be on the test database.
    url = make_url(dbguard_url)
    # Autocommit: inside one transaction PostgreSQL shows the same pg_stat_activity snapshot.
    engine = create_engine(url.set(database="postgres"), poolclass=NullPool, isolation_level="AUTOCOMMIT")
    query = text("SELECT count(*) FROM pg_stat_activity WHERE datname = :db")
    with engine.connect() as connection:
        deadline = time.monotonic() + 5  # a closed connection ends on the server a moment later
        while (count := connection.execute(query, {"db": url.database}).scalar()) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.01)
    engine.dispose()
    assert count == 0

def test_then_with_one(dbguard_session):
    assert dbguard_session.execute(text("SELECT 1")).scalar() == 1
"""


def test_the_schema_builds_engine_does_not_linger_when_the_first_test_has_no_session(
    pytester: pytest.Pytester, pg_server: TestServer
) -> None:
    copy_project(pytester, "notes")
    pytester.makepyfile(test_order=NO_SESSION_FIRST)
    pytester.makeini("[pytest]\ndbguard_metadata = models:Base\n")
    args = ("--dbguard-url", pg_server.url(), "-p", "no:randomly")
    run_dbguard(pytester, *args, inprocess=True).assert_outcomes(passed=2)


def _create_table(name: str) -> databases.SchemaBuild:
    def build(connection: sqlalchemy.Connection) -> None:
        connection.exec_driver_sql(f"CREATE TABLE {name} (id int)")

    return build


def _tables(pg_server: TestServer, database: str) -> list[str]:
    out = pg_server.sql(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public'", database=database
    )
    return out.stdout.split()


def test_a_failed_template_build_leaves_no_template(pg_server: TestServer) -> None:
    """The worker that fails takes its half-built template with it: nobody clones it."""
    url = DatabaseURL.parse(pg_server.url())
    template, worker_db = "app_dbg_feed0004_tpl", "app_dbg_feed0004_gw0"

    def broken(connection: sqlalchemy.Connection) -> None:
        connection.exec_driver_sql("CREATE TABLE half (id int)")
        connection.exec_driver_sql("CREATE TABLE broken (id nosuchtype)")

    try:
        with pytest.raises(DatabaseSetupError, match='type "nosuchtype" does not exist'):
            databases.provision_database(
                url, worker_db, template, broken, run="feed0004", worker="gw0"
            )
        assert template not in pg_server.databases()
        assert worker_db not in pg_server.databases()
        databases.provision_database(
            url, worker_db, template, _create_table("whole"), run="feed0004", worker="gw0"
        )
        assert _tables(pg_server, worker_db) == ["whole"]
    finally:
        for name in (worker_db, template):
            pg_server.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.parametrize("complete", [False, None], ids=["incomplete", "unstated"])
def test_a_template_not_marked_complete_is_rebuilt(
    pg_server: TestServer, complete: bool | None
) -> None:
    """A build killed half way (SIGKILL, Ctrl-C) leaves a template whose mark is not complete."""
    url = DatabaseURL.parse(pg_server.url())
    template, worker_db = "app_dbg_feed0005_tpl", "app_dbg_feed0005_gw0"
    pg_server.sql(f'CREATE DATABASE "{template}"')
    pg_server.sql("CREATE TABLE half (id int)", database=template)
    mark = make_mark("reuse", "tpl", complete=complete).replace(f'"pid":{os.getpid()}', '"pid":1')
    pg_server.sql(f"COMMENT ON DATABASE \"{template}\" IS '{mark}'")
    try:
        databases.provision_database(
            url, worker_db, template, _create_table("whole"), run="feed0005", worker="gw0"
        )
        assert _tables(pg_server, worker_db) == ["whole"]
        assert _tables(pg_server, template) == ["whole"]
        comment = pg_server.sql(
            f"SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = '{template}'"
        )
        assert '"complete":true' in comment.stdout
        # Complete now: the next worker clones it as it is.
        pg_server.sql(f'DROP DATABASE "{worker_db}"')
        databases.provision_database(
            url, worker_db, template, _create_table("never"), run="feed0005", worker="gw0"
        )
        assert _tables(pg_server, worker_db) == ["whole"]
    finally:
        for name in (worker_db, template):
            pg_server.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_a_template_another_role_made_is_never_cloned(pg_server: TestServer) -> None:
    """Any role with CREATEDB can make a database under a template's predictable name and mark
    it complete: cloned, its triggers would run as this run's role (a superuser here)."""
    url = DatabaseURL.parse(pg_server.url())
    template, worker_db = "app_dbg_feed0007_tpl", "app_dbg_feed0007_gw0"
    pg_server.sql(f'CREATE DATABASE "{template}" OWNER {LIMITED_USER}')
    pg_server.sql("CREATE TABLE planted (id int)", database=template)
    mark = mark_text("reuse", "tpl", pid=_finished_pid()).replace("}", ',"complete":true}')
    pg_server.sql(f"COMMENT ON DATABASE \"{template}\" IS '{mark}'")
    try:
        with pytest.raises(DatabaseSetupError) as raised:
            databases.provision_database(
                url, worker_db, template, _create_table("whole"), run="feed0007", worker="gw0"
            )
        assert f"belongs to role '{LIMITED_USER}'" in str(raised.value)
        assert "it is not cloned" in str(raised.value)
        assert worker_db not in pg_server.databases()
        assert _tables(pg_server, template) == ["planted"]
    finally:
        for name in (worker_db, template):
            pg_server.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_the_controller_tells_a_reused_kept_template_from_one_a_worker_built(
    pg_server: TestServer,
) -> None:
    """Under xdist the controller looks for the kept template while its workers run: a complete
    one marked before its session started was reused; one marked since, a worker built."""
    import time

    from pytest_dbguard.db import kept_templates
    from pytest_dbguard.run import reuse_run
    from pytest_dbguard.run.run_plan import RunPlan

    url = DatabaseURL.parse(pg_server.url())
    template = kept_templates.template_name("app", "feed0006")
    plan = RunPlan(
        run="feed0006",
        worker="main",
        owns_server=True,
        embedded=False,
        server_url=url,
        test_url=url,
        async_url=url,
        database="app",
        sqlite_dir=None,
    )
    try:
        assert reuse_run.template_word(plan, template, None, since=time.time()) == (
            reuse_run.BUILT_BY_A_WORKER
        )
        before = time.time()
        built = databases.ensure_template(
            url, template, _create_table("kept"), run=kept_templates.REUSE_RUN
        )
        after = time.time()
        assert built
        assert reuse_run.template_word(plan, template, None, since=after + 0.01) == "reused"
        assert reuse_run.template_word(plan, template, None, since=before - 0.01) == (
            reuse_run.BUILT_BY_A_WORKER
        )
    finally:
        pg_server.sql(f'DROP DATABASE IF EXISTS "{template}" WITH (FORCE)')


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
def test_a_failed_maintenance_statement_is_dbguards_error_on_every_driver(
    pg_server: TestServer, driver: str
) -> None:
    """Over the driver's own connection (no SQLAlchemy), a failed statement raises dbguard's
    MaintenanceQueryError with the driver's error as ``orig``, which the callers catch and
    explain; the driver's error escaped as it was, a traceback instead of a message."""
    connection = maintenance.connect(DatabaseURL.parse(pg_server.url(driver=driver)))
    try:
        with pytest.raises(maintenance.MaintenanceQueryError, match="no_such_table") as raised:
            connection.rows("SELECT * FROM no_such_table")
        orig = raised.value.orig
        assert (getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)) == "42P01"
        assert connection.scalar("SELECT 1") == 1  # autocommit: the connection goes on
    finally:
        connection.close()

"""Schema sources (metadata, alembic) and every driver a URL may name."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pytest_dbguard.db import alembic_ini as alembic_reader
from pytest_dbguard.db import kept_templates, schema, schema_fingerprint
from pytest_dbguard.db.urls import DatabaseURL
from tests.helpers import (
    ALEMBIC_LOGGING,
    ENV_PY_OWN_ENGINE,
    copy_project,
    run_dbguard,
    stopped_once,
    write_alembic_project,
)
from tests.pgserver import LIMITED_USER, TestServer

ALEMBIC_INI = (
    """
[alembic]
script_location = migrations

"""
    + ALEMBIC_LOGGING
)
ENV_PY = """
import os
from alembic import context
from sqlalchemy import create_engine

config = context.config
connection = config.attributes.get("connection")
if connection is not None:  # the documented way to share a connection with env.py
    context.configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()
else:
    engine = create_engine(os.environ["DATABASE_URL"])
    with engine.begin() as conn:
        context.configure(connection=conn)
        with context.begin_transaction():
            context.run_migrations()
"""
REVISION_1 = """
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None

def upgrade():
    op.create_table("accounts", sa.Column("id", sa.Integer, primary_key=True), sa.Column("email", sa.String(200)))
"""
REVISION_2 = """
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"

def upgrade():
    op.add_column("accounts", sa.Column("active", sa.Boolean, server_default=sa.true()))
"""
USES_ACCOUNTS = """
    import pytest
    from sqlalchemy import text

    @pytest.mark.parametrize("n", range(3))
    def test_migrated(dbguard_connection, n):
        dbguard_connection.execute(text("INSERT INTO accounts (email) VALUES ('a@b.c')"))
        rows = dbguard_connection.execute(text("SELECT email, active FROM accounts")).all()
        assert [tuple(row) for row in rows] == [("a@b.c", True)]
        version = dbguard_connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
        assert version == "0002"
"""


def _alembic_project(pytester: pytest.Pytester) -> None:
    write_alembic_project(
        pytester.path,
        alembic_ini=ALEMBIC_INI,
        env_py=ENV_PY,
        revisions={"0001_accounts.py": REVISION_1, "0002_active.py": REVISION_2},
    )
    pytester.makeini(
        "[pytest]\ndbguard_alembic_ini = alembic.ini\ndbguard_env =\n    DATABASE_URL={url}\n"
    )
    pytester.makepyfile(test_accounts=USES_ACCOUNTS)


@pytest.mark.parametrize(
    "xdist", [False, pytest.param(True, marks=pytest.mark.needs_xdist)], ids=["serial", "n2"]
)
def test_alembic_upgrade_head_builds_the_template(
    pytester: pytest.Pytester, on_server: list[str], xdist: bool
) -> None:
    _alembic_project(pytester)
    args = ["-v", "-n", "2"] if xdist else ["-v"]
    result = run_dbguard(pytester, *on_server, *args, inprocess=not xdist)
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["dbguard: *alembic alembic.ini*"])


@pytest.mark.needs_xdist
def test_connection_placeholders_do_not_split_the_template_per_worker(
    pytester: pytest.Pytester, pg_server: TestServer
) -> None:
    """Settings that say where the database is ({host}, {port}, {user}, {password}) are not
    part of the schema: with the fault proxy on, each worker's {port} is its own proxy's, and
    each worker built (and with --dbguard-reuse kept) a template of its own."""
    _alembic_project(pytester)
    pytester.makeini(
        "[pytest]\ndbguard_alembic_ini = alembic.ini\ndbguard_env =\n    DATABASE_URL={url}\n"
        "    APP_DB_HOST={host}\n    APP_DB_PORT={port}\n    APP_DB_USER={user}\n"
        "    APP_DB_PASSWORD={password}\n"
    )
    base = "placeholders"  # kept templates of its own name: no other test's are touched
    pg_server.sql(f"CREATE DATABASE {base}")
    url = DatabaseURL.parse(pg_server.url(base))
    args = ["--dbguard-url", str(url.render(hide_password=False)), "-n", "2"]
    try:
        result = run_dbguard(pytester, *args, "--dbguard-proxy", "on", "--dbguard-reuse")
        result.assert_outcomes(passed=3)
        kept = [name for name in pg_server.databases() if name.startswith(f"{base}_dbg_")]
        assert len(kept) == 1, kept  # one template for both workers
        assert f"kept on the server as {kept[0]}:" in result.stdout.str()  # the one named
    finally:
        dropped = kept_templates.drop_kept(url, base)
        pg_server.sql(f"DROP DATABASE {base} WITH (FORCE)")
    assert dropped == kept


PREFIXED_REVISION = """
import os
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None

def upgrade():
    op.create_table(os.environ["DB_TABLE_PREFIX"] + "_files", sa.Column("id", sa.Integer, primary_key=True))
"""
PREFIXED_TESTS = """
    import os
    import pytest
    from sqlalchemy import inspect

    @pytest.mark.parametrize("n", range(4))
    def test_prefixed(dbguard_connection, n):
        tables = set(inspect(dbguard_connection).get_table_names())
        assert tables == {"alembic_version", os.environ["DB_TABLE_PREFIX"] + "_files"}
"""


@pytest.mark.needs_xdist
def test_a_worker_prefix_the_migrations_read_gives_each_worker_its_tables(
    pytester: pytest.Pytester, on_server: list[str]
) -> None:
    """DB_TABLE_PREFIX=test_{worker}, read by the migrations: each worker's template is built
    with its own prefix (its line counts in the fingerprint); one worker got the other's."""
    write_alembic_project(
        pytester.path,
        alembic_ini=ALEMBIC_INI,
        env_py=ENV_PY,
        revisions={"0001_files.py": PREFIXED_REVISION},
    )
    pytester.makeini(
        "[pytest]\ndbguard_alembic_ini = alembic.ini\ndbguard_env =\n    DATABASE_URL={url}\n"
        "    DB_TABLE_PREFIX=test_{worker}\n"
    )
    pytester.makepyfile(test_files=PREFIXED_TESTS)
    run_dbguard(pytester, *on_server, "-n", "2").assert_outcomes(passed=4)


def test_alembic_on_sqlite(pytester: pytest.Pytester) -> None:
    _alembic_project(pytester)
    run_dbguard(pytester, "--dbguard-url", "sqlite", inprocess=True).assert_outcomes(passed=3)


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2", "asyncpg"])
def test_every_driver_in_the_url(
    pytester: pytest.Pytester, pg_server: TestServer, driver: str
) -> None:
    pytester.makepyfile(
        """
        import os
        from sqlalchemy import text

        def test_connects(dbguard_engine, dbguard_connection):
            assert dbguard_connection.execute(text("SELECT current_database()")).scalar() == os.environ["DBGUARD_DB"]
            sync_driver = os.environ["DBGUARD_URL"].split("://")[0]
            async_driver = os.environ["DBGUARD_ASYNC_URL"].split("://")[0]
            print("DRIVERS", sync_driver, async_driver)
        """
    )
    result = run_dbguard(
        pytester, "--dbguard-url", pg_server.url(driver=driver), "-s", inprocess=True
    )
    result.assert_outcomes(passed=1)
    expected = {
        "psycopg": "DRIVERS postgresql+psycopg postgresql+psycopg",
        "psycopg2": "DRIVERS postgresql+psycopg2 postgresql+asyncpg",
        "asyncpg": "DRIVERS postgresql+psycopg postgresql+asyncpg",
    }[driver]
    result.stdout.fnmatch_lines([f"*{expected}*"])


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
def test_a_table_in_a_schema_nobody_created_gets_the_fix(
    pytester: pytest.Pytester, pg_server: TestServer, driver: str
) -> None:
    """create_all makes tables, not the schemas they name (dispatch's dispatch_core): the
    message says which schemas and how to create them before the tables."""
    pytester.makepyfile(
        models="""
        from sqlalchemy import Column, Integer, MetaData, Table

        metadata = MetaData()
        Table("users", metadata, Column("id", Integer, primary_key=True), schema="accounts")
        Table("orders", metadata, Column("id", Integer, primary_key=True), schema="billing")
        """,
        test_users="def test_users(dbguard_connection):\n    pass\n",
    )
    pytester.makeini("[pytest]\ndbguard_metadata = models:metadata\n")
    result = run_dbguard(pytester, "--dbguard-url", pg_server.url(driver=driver))
    output = result.stdout.str() + result.stderr.str()
    assert "InvalidSchemaName" in output, output
    assert (
        "The metadata's tables name the schemas accounts, billing, which create_all does not "
        'create: create them first, event.listen(metadata, "before_create", '
        'DDL("CREATE SCHEMA IF NOT EXISTS accounts")), one for each.'
    ) in " ".join(output.split()), output
    assert result.ret != pytest.ExitCode.OK and " passed" not in output


@pytest.mark.parametrize(
    ("column_type", "named", "extension"),
    [
        ("CITEXT", "citext", "citext"),
        ("CITEXT[]", "citext", "citext"),  # PostgreSQL says type "citext[]"
        ("geometry", "geometry", "postgis"),
    ],
)
def test_a_column_type_of_an_extension_nobody_created_gets_the_fix(
    pytester: pytest.Pytester,
    on_server: list[str],
    column_type: str,
    named: str,
    extension: str,
) -> None:
    """polar's citext columns without the extension: the message says how to create it."""
    pytester.makepyfile(
        models=f"""
        from sqlalchemy import Column, Integer, MetaData, Table
        from sqlalchemy.types import UserDefinedType

        class Custom(UserDefinedType):
            cache_ok = True

            def get_col_spec(self, **kw):
                return "{column_type}"

        metadata = MetaData()
        Table("users", metadata, Column("id", Integer, primary_key=True), Column("x", Custom()))
        """,
        test_users="def test_users(dbguard_connection):\n    pass\n",
    )
    pytester.makeini("[pytest]\ndbguard_metadata = models:metadata\n")
    result = run_dbguard(pytester, *on_server, inprocess=True)
    output = " ".join((result.stdout.str() + result.stderr.str()).split())
    assert f'UndefinedObject: type "{column_type.lower()}" does not exist' in output, output
    assert (
        f"If {named} comes from an extension, create it first: event.listen("
        f'metadata, "before_create", DDL("CREATE EXTENSION IF NOT EXISTS {extension}")).'
    ) in output, output
    assert result.ret != pytest.ExitCode.OK and " passed" not in output


SCHEMA_MODE_TESTS = """
import pytest
from sqlalchemy import text
from models import Note


@pytest.mark.parametrize("n", range(4))
def test_notes(dbguard_session, n):
    dbguard_session.add(Note(body=str(n)))
    dbguard_session.commit()
    assert dbguard_session.execute(text("SELECT count(*) FROM notes")).scalar() == 1
"""


@pytest.mark.parametrize(
    ("workers", "expected"),
    # Each process: its maintenance connection (the role check's, kept for the run: schema,
    # mark, drop); each test process: one more, the engine that built the schema and serves
    # the tests. The xdist controller only checks, and sweeps the run's leftovers at the end.
    [
        pytest.param((), 2, id="serial"),
        pytest.param(("-n", "2"), 1 + 2 * 2, id="xdist", marks=pytest.mark.needs_xdist),
    ],
)
def test_schema_mode_does_its_own_work_on_the_maintenance_connection(
    pytester: pytest.Pytester, pg_server: TestServer, workers: tuple[str, ...], expected: int
) -> None:
    """A role without CREATEDB: the worker schema is made, marked and dropped, and the run's
    leftovers swept, on the run's one maintenance connection, not on engines of their own."""
    copy_project(pytester, "notes")
    pytester.makepyfile(test_notes=SCHEMA_MODE_TESTS)
    pytester.makeini("[pytest]\ndbguard_metadata = models:Base\n")
    url = pg_server.url(database="app_limited", user=LIMITED_USER)
    offset = pg_server.log_offset()
    result = run_dbguard(pytester, "--dbguard-url", url, *workers, inprocess=True)
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["dbguard: *schemas dbg_*_<worker> in app_limited*"])
    found = pg_server.connections_since(offset)
    assert found.count("app_limited") == expected, found
    leftover = pg_server.sql(
        "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'dbg_%'", database="app_limited"
    )
    assert leftover.stdout.strip() == ""


def test_schema_mode_failed_build_leaves_no_schema(
    pytester: pytest.Pytester, pg_server: TestServer
) -> None:
    """The worker schema is made and marked before the build, on the maintenance connection: a
    build that fails drops it again, and the run stops naming the cause."""
    copy_project(pytester, "broken")
    pytester.makepyfile(test_never="def test_never(dbguard_session):\n    pass\n")
    pytester.makeini("[pytest]\ndbguard_metadata = broken_models:Base\n")
    url = pg_server.url(database="app_limited", user=LIMITED_USER)
    result = run_dbguard(pytester, "--dbguard-url", url, inprocess=True)
    assert result.ret != 0
    result.assert_outcomes()
    output = result.stdout.str() + result.stderr.str()
    assert "Building the schema (metadata broken_models:Base)" in output
    assert "no_such_function" in output
    leftover = pg_server.sql(
        "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'dbg_%'", database="app_limited"
    )
    assert leftover.stdout.strip() == ""


FREEZE_MODELS = """
import gc
from sqlalchemy import event
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "notes"
    id: Mapped[int] = mapped_column(primary_key=True)


@event.listens_for(Base.metadata, "before_create")
def _record(*_args, **_kwargs):
    with open("frozen_during_build.txt", "w") as out:
        out.write(str(gc.get_freeze_count()))
"""
FREEZE_TESTS = """
import gc
import conftest

def test_after_the_build(dbguard_session):
    assert gc.isenabled()
    if conftest.FROZEN_BY_THE_PROJECT:  # still frozen, less whatever was freed meanwhile
        assert 0 < gc.get_freeze_count() <= conftest.FROZEN
    else:  # none added (the build's unfreeze lets go of Python 3.12's own few hundred too)
        assert gc.get_freeze_count() <= conftest.FROZEN
"""


@pytest.mark.parametrize("project_freezes", [False, True], ids=["plain", "project-froze"])
def test_the_collector_skips_older_objects_only_while_the_schema_builds(
    pytester: pytest.Pytester, on_server: list[str], project_freezes: bool
) -> None:
    """During the build the objects from before are frozen (a full collection would rescan
    them); the test finds the collector as it was. A project that froze objects itself keeps
    its own freeze, and dbguard adds none (frozen objects that are freed leave the count)."""
    pytester.makepyfile(models=FREEZE_MODELS, test_after=FREEZE_TESTS)
    freeze = "gc.freeze()\n" if project_freezes else ""
    # What the project froze: the count above what was frozen when pytest loaded dbguard
    # (Python 3.12 starts with a few hundred objects frozen; 3.10, 3.11 and 3.13 with none).
    pytester.makeconftest(
        f"import gc\nimport pytest_dbguard\n{freeze}FROZEN = gc.get_freeze_count()\n"
        "FROZEN_BY_THE_PROJECT = FROZEN - pytest_dbguard._FROZEN_AT_IMPORT\n"
        "open('frozen_by_the_project.txt', 'w').write(str(FROZEN))\n"
    )
    recorded = pytester.path / "frozen_by_the_project.txt"
    pytester.makeini("[pytest]\ndbguard_metadata = models:Base\n")
    result = run_dbguard(pytester, *on_server)  # a subprocess: freezing is process-wide
    result.assert_outcomes(passed=1)
    during = int((pytester.path / "frozen_during_build.txt").read_text())
    if project_freezes:
        assert 0 < during <= int(recorded.read_text())  # the project's own, nothing added
    else:
        assert during > 1000  # dbguard froze the objects of the imports and the conftest


# A migration that gives its table a schema of its own (schema="audit"): in schema mode that
# schema is in the shared database, outside every worker's.
AUDIT_REVISION = """
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"

def upgrade():
    op.execute("CREATE SCHEMA IF NOT EXISTS audit")
    op.create_table("events", sa.Column("id", sa.Integer, primary_key=True), schema="audit")
"""


def _schema_mode_run(
    pytester: pytest.Pytester,
    pg_server: TestServer,
    database: str,
    *,
    env_py: str,
    revision: str,
    args: tuple[str, ...] = (),
) -> tuple[pytest.RunResult, list[str]]:
    """The accounts project with ``revision`` as 0003, run with a schema per worker in a
    database of its own (dropped after); the run's result and the tables left in the schemas
    ``audit`` and ``dbg_*`` there."""
    pg_server.sql(f"CREATE DATABASE {database}")
    try:
        write_alembic_project(
            pytester.path,
            alembic_ini=ALEMBIC_INI,
            env_py=env_py,
            revisions={
                "0001_accounts.py": REVISION_1,
                "0002_active.py": REVISION_2,
                "0003_audit.py": revision,
            },
        )
        pytester.makeini(
            "[pytest]\ndbguard_alembic_ini = alembic.ini\ndbguard_worker_isolation = schema\n"
            "dbguard_env =\n    DATABASE_URL={url}\n"
        )
        pytester.makepyfile(test_accounts=USES_ACCOUNTS)
        result = run_dbguard(pytester, "--dbguard-url", pg_server.url(database=database), *args)
        left = pg_server.sql(
            "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n"
            " ON n.oid = c.relnamespace WHERE c.relkind = 'r'"
            " AND (n.nspname = 'audit' OR n.nspname LIKE 'dbg_%')",
            database=database,
        ).stdout.split()
        return result, left
    finally:
        pg_server.sql(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


# The schema stays uncommitted a while: the other worker's CREATE SCHEMA IF NOT EXISTS waits for
# it and then fails on PostgreSQL's unique index, as two workers migrating at once do.
AUDIT_REVISION_PAUSED = AUDIT_REVISION.replace(
    'op.execute("CREATE SCHEMA IF NOT EXISTS audit")',
    'op.execute("CREATE SCHEMA IF NOT EXISTS audit")\n    op.execute("SELECT pg_sleep(1.5)")',
)


@pytest.mark.parametrize(
    ("env_py", "revision", "xdist", "fate"),
    [
        pytest.param(ENV_PY, AUDIT_REVISION, False, "rolled back", id="given-connection-serial"),
        pytest.param(
            ENV_PY,
            AUDIT_REVISION,
            True,
            "rolled back",
            id="given-connection-n2",
            marks=pytest.mark.needs_xdist,
        ),
        pytest.param(
            ENV_PY_OWN_ENGINE, AUDIT_REVISION, False, "still there", id="own-engine-serial"
        ),
        # The worker that collides with what the other's env.py committed says the same, not
        # "duplicate key value violates unique constraint" (whichever worker reports first).
        pytest.param(
            ENV_PY_OWN_ENGINE,
            AUDIT_REVISION_PAUSED,
            True,
            "still there",
            id="own-engine-n2",
            marks=pytest.mark.needs_xdist,
        ),
    ],
)
def test_migrations_that_create_tables_outside_the_worker_schema_stop_the_run(
    pytester: pytest.Pytester,
    pg_server: TestServer,
    env_py: str,
    revision: str,
    xdist: bool,
    fate: str,
) -> None:
    """Schema mode: an Alembic migration's audit.events would be shared by every worker and
    left in the user's database; the run stops and says whether the build's rollback took it
    away (env.py used dbguard's connection) or it is still there (env.py committed it)."""
    database = f"audit_{'n2' if xdist else 'serial'}_{'own' if env_py != ENV_PY else 'given'}"
    result, left = _schema_mode_run(
        pytester,
        pg_server,
        database,
        env_py=env_py,
        revision=revision,
        args=("-n", "2") if xdist else (),
    )
    output = result.stdout.str() + result.stderr.str()
    assert output.count("created audit.events outside the worker schema") == 1, output
    assert fate in output
    assert result.ret != pytest.ExitCode.OK and " passed" not in output
    assert left == ([] if fate == "rolled back" else ["audit.events"])


@pytest.mark.parametrize("committed", [True, False], ids=["another-worker-committed", "nothing"])
def test_a_build_that_collides_with_tables_committed_outside_says_so(
    pg_server: TestServer, committed: bool
) -> None:
    """Schema mode, what one worker sees while another's env.py commits audit.events on its own
    connection: its own migrations then fail on what that left. Its message must be the other's
    (created outside the worker schema, still there) with its own failure after it; without
    anything committed outside, the migration's error passes through as it is."""
    from sqlalchemy import create_engine

    from pytest_dbguard.db import maintenance
    from pytest_dbguard.exceptions import SchemaError

    database = f"collide_{'committed' if committed else 'nothing'}"
    pg_server.sql(f"CREATE DATABASE {database}")
    url = DatabaseURL.parse(pg_server.url(database=database))
    engine = create_engine(url.render(hide_password=False))

    def upgrade(_connection: object) -> None:
        if committed:  # another worker's env.py, on its own connection
            pg_server.sql(
                "CREATE SCHEMA audit; CREATE TABLE audit.events (id int)", database=database
            )
        raise RuntimeError('duplicate key value violates unique constraint "pg_namespace"')

    checked = schema._kept_inside(upgrade, "alembic alembic.ini", url, "dbg_abc123_gw1")
    try:
        with engine.connect() as connection:
            if committed:
                with pytest.raises(SchemaError) as raised:
                    checked(connection)
                message = str(raised.value)
                assert "created audit.events outside the worker schema 'dbg_abc123_gw1'" in message
                assert "drop them yourself (audit.events)" in message
                assert message.endswith(
                    "This worker's build then failed: RuntimeError: duplicate key value violates "
                    'unique constraint "pg_namespace".'
                )
            else:
                with pytest.raises(RuntimeError, match="duplicate key"):
                    checked(connection)
    finally:
        engine.dispose()
        maintenance.close_shared()
        pg_server.sql(f"DROP DATABASE {database} WITH (FORCE)")


# The env.py `alembic init` writes: its fileConfig disables every logger the ini does not name.
FILE_CONFIG_ENV_PY = """
from logging.config import fileConfig
from alembic import context

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name)
context.configure(connection=config.attributes["connection"])
with context.begin_transaction():
    context.run_migrations()
"""
LOGGING_TESTS = """
    import logging

    log = logging.getLogger("shop.orders")  # created at import, before the schema build


    def test_the_projects_logger_reaches_caplog(caplog, dbguard_connection):
        log.warning("order refused")
        assert "order refused" in caplog.text


    def test_info_is_captured_at_the_level_asked(caplog, dbguard_connection):
        with caplog.at_level(logging.INFO):
            log.info("order placed")
        assert "order placed" in caplog.text
"""


@pytest.mark.parametrize(
    "args",
    [
        pytest.param((), id="serial"),
        pytest.param(("-n", "2"), id="n2", marks=pytest.mark.needs_xdist),
        pytest.param(("--log-file=run.log", "--log-file-level=INFO"), id="log-file"),
    ],
)
def test_env_py_logging_config_leaves_the_projects_logging_alone(
    pytester: pytest.Pytester, on_server: list[str], args: tuple[str, ...]
) -> None:
    """Migrations run in the test process: env.py's fileConfig disabled the project's loggers
    and set the root level, so caplog saw nothing they logged; and it closed every handler, so
    pytest's --log-file (mode "w") received nothing the tests logged after the schema build."""
    write_alembic_project(
        pytester.path,
        alembic_ini=ALEMBIC_INI,
        env_py=FILE_CONFIG_ENV_PY,
        revisions={"0001_accounts.py": REVISION_1},
    )
    pytester.makeini("[pytest]\ndbguard_alembic_ini = alembic.ini\n")
    pytester.makepyfile(test_logging=LOGGING_TESTS)
    result = run_dbguard(pytester, *on_server, *args)
    result.assert_outcomes(passed=2)
    if "--log-file=run.log" in args:
        logged = (pytester.path / "run.log").read_text()
        assert "order refused" in logged and "order placed" in logged


@pytest.mark.parametrize(
    ("ini", "pyproject", "folder"),
    [
        pytest.param("script_location = db/migrations", "", "db/migrations", id="relative"),
        pytest.param("script_location = %(here)s/db/migrations", "", "db/migrations", id="here"),
        pytest.param("script_location = migrations", "", "migrations", id="default-folder"),
        pytest.param(
            "",
            '[tool.alembic]\nscript_location = "%(here)s/db/migrations"\n',
            "db/migrations",
            id="pyproject",
        ),
    ],
)
def test_the_fingerprint_follows_the_script_location_alembic_ini_names(
    tmp_path: Path, ini: str, pyproject: str, folder: str
) -> None:
    """--dbguard-reuse keeps a template until its migrations change: migrations outside the
    folders alembic/ and migrations/ changed without changing the fingerprint, and a reused
    template kept the old schema. alembic 1.16's pyproject template keeps script_location in
    pyproject.toml."""
    (tmp_path / "alembic.ini").write_text(f"[alembic]\n{ini}\n")
    if pyproject:
        (tmp_path / "pyproject.toml").write_text(pyproject)
    versions = tmp_path / folder / "versions"
    versions.mkdir(parents=True)
    (tmp_path / folder / "env.py").write_text(ENV_PY)
    (versions / "0001_accounts.py").write_text(REVISION_1)
    alembic_ini = tmp_path / "alembic.ini"
    before = schema_fingerprint.fingerprint_alembic(alembic_ini)
    (versions / "0002_active.py").write_text(REVISION_2)
    assert schema_fingerprint.fingerprint_alembic(alembic_ini) != before
    assert alembic_reader.env_py(alembic_ini) == (tmp_path / folder / "env.py").resolve()


@pytest.mark.parametrize(
    "xdist", [False, pytest.param(True, marks=pytest.mark.needs_xdist)], ids=["serial", "n2"]
)
def test_a_script_location_without_env_py_is_named_before_the_build(
    pytester: pytest.Pytester, on_server: list[str], xdist: bool
) -> None:
    """An alembic.ini whose script_location names no env.py (litestar-fullstack's sets it in
    code) was reported as an env.py that "does not use config.attributes['connection']"."""
    _alembic_project(pytester)
    (pytester.path / "alembic.ini").write_text(
        ALEMBIC_INI.replace("script_location = migrations", "script_location = db/migrations")
    )
    result = run_dbguard(pytester, *on_server, *(["-n", "2"] if xdist else []))
    missing = pytester.path / "db" / "migrations" / "env.py"
    output = stopped_once(result, f"there is no {missing}")
    assert "config.attributes" not in output


def test_script_location_in_pyproject_toml(pytester: pytest.Pytester, on_server: list[str]) -> None:
    """alembic 1.16's pyproject template: alembic.ini without script_location, and
    [tool.alembic] in the pyproject.toml beside it, as `alembic upgrade head` reads them."""
    _alembic_project(pytester)
    (pytester.path / "alembic.ini").write_text(
        ALEMBIC_INI.replace("script_location = migrations\n", "")
    )
    (pytester.path / "pyproject.toml").write_text(
        '[tool.alembic]\nscript_location = "%(here)s/migrations"\n'
    )
    run_dbguard(pytester, *on_server, inprocess=True).assert_outcomes(passed=3)


@pytest.mark.parametrize(
    ("ini", "pyproject"),
    [
        pytest.param(
            "version_locations = %(here)s/migrations/versions %(here)s/plugins/versions\n",
            "",
            id="spaces",
        ),
        pytest.param(
            "path_separator = os\n"
            "version_locations = %(here)s/migrations/versions:%(here)s/plugins/versions\n",
            "",
            id="path-separator-os",
        ),
        pytest.param(
            "",
            '[tool.alembic]\nversion_locations = ["%(here)s/plugins/versions"]\n',
            id="pyproject",
        ),
    ],
)
def test_the_fingerprint_covers_version_locations(tmp_path: Path, ini: str, pyproject: str) -> None:
    """Migrations in a folder that version_locations adds, outside the script folder, split as
    alembic splits the list (`alembic init` now writes path_separator = os)."""
    (tmp_path / "alembic.ini").write_text("[alembic]\nscript_location = migrations\n" + ini)
    if pyproject:
        (tmp_path / "pyproject.toml").write_text(pyproject)
    for folder in ("migrations/versions", "plugins/versions"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "migrations" / "env.py").write_text(ENV_PY)
    before = schema_fingerprint.fingerprint_alembic(tmp_path / "alembic.ini")
    (tmp_path / "plugins" / "versions" / "0002_active.py").write_text(REVISION_2)
    assert schema_fingerprint.fingerprint_alembic(tmp_path / "alembic.ini") != before


# warehouse's: a migration that commits, then builds an index outside any transaction.
CONCURRENT_INDEX_REVISION = """
from alembic import op

revision = "0003"
down_revision = "0002"

def upgrade():
    op.get_bind().commit()
    with op.get_context().autocommit_block():
        op.create_index("ix_accounts_email", "accounts", ["email"], postgresql_concurrently=True)
"""


def _concurrent_index_project(
    pytester: pytest.Pytester, ini_extra: str = "", revision: str = CONCURRENT_INDEX_REVISION
) -> None:
    write_alembic_project(
        pytester.path,
        alembic_ini=ALEMBIC_INI,
        env_py=ENV_PY,
        revisions={
            "0001_accounts.py": REVISION_1,
            "0002_active.py": REVISION_2,
            "0003_index.py": revision,
        },
    )
    pytester.makeini(
        "[pytest]\ndbguard_alembic_ini = alembic.ini\ndbguard_env =\n    DATABASE_URL={url}\n"
        + ini_extra
    )
    pytester.makepyfile(
        test_index="""
        from sqlalchemy import text

        def test_the_index_is_there(dbguard_connection):
            names = dbguard_connection.execute(text("SELECT indexname FROM pg_indexes")).scalars()
            assert "ix_accounts_email" in set(names)
            version = dbguard_connection.execute(text("SELECT version_num FROM alembic_version"))
            assert version.scalar() == "0003"
        """,
    )


@pytest.mark.parametrize(
    "xdist", [False, pytest.param(True, marks=pytest.mark.needs_xdist)], ids=["serial", "n2"]
)
def test_migrations_that_commit_and_use_autocommit_block_run_on_the_given_connection(
    pytester: pytest.Pytester, on_server: list[str], xdist: bool
) -> None:
    """env.py takes dbguard's connection (the README's faster way): the connection was inside a
    transaction dbguard began, and alembic's autocommit_block() failed its assertion, a
    migration's commit() "Can't operate on closed transaction"."""
    _concurrent_index_project(pytester)
    result = run_dbguard(pytester, *on_server, *(["-n", "2"] if xdist else []))
    result.assert_outcomes(passed=1)


@pytest.mark.parametrize(
    ("commits", "how"),
    [
        pytest.param(True, "calls commit() (at ", id="commit-then-autocommit"),
        pytest.param(False, "uses autocommit_block() (at ", id="autocommit"),
    ],
)
def test_own_transactions_with_a_schema_per_worker_are_explained(
    pytester: pytest.Pytester, on_server: list[str], commits: bool, how: str
) -> None:
    """Schema mode keeps the build one transaction: a migration that needs its own says why,
    naming what it did first."""
    revision = CONCURRENT_INDEX_REVISION
    if not commits:
        revision = revision.replace("    op.get_bind().commit()\n", "")
    _concurrent_index_project(pytester, "dbguard_worker_isolation = schema\n", revision)
    output = stopped_once(run_dbguard(pytester, *on_server), how)
    assert "Give each worker a database" in output


# The same, committing between its two tables.
COMMITTING_AUDIT_REVISION = AUDIT_REVISION + (
    "    op.get_bind().commit()\n"
    '    op.create_table("more", sa.Column("id", sa.Integer, primary_key=True), schema="audit")\n'
)


def test_a_migration_that_commits_in_a_worker_schema_commits_nothing(
    pytester: pytest.Pytester, pg_server: TestServer
) -> None:
    """Schema mode: a migration's commit() made audit.log final in the shared database, and the
    build then failed with "Can't operate on closed transaction", blaming the migration."""
    result, left = _schema_mode_run(
        pytester, pg_server, "audit_commit", env_py=ENV_PY, revision=COMMITTING_AUDIT_REVISION
    )
    output = stopped_once(result, "calls commit() (at ")
    assert "0003_audit.py" in output and "nothing of this build was committed" in output
    assert left == []


def test_the_fingerprint_of_tables_whose_foreign_keys_form_a_cycle_warns_nothing() -> None:
    """zou's tables point at each other (task -> entity -> preview_file -> task): the metadata's
    dependency sort warns, an error under ``filterwarnings = error``, which stopped every run
    that fingerprints its template (-n 2, --dbguard-reuse) with an INTERNALERROR."""
    import warnings

    from sqlalchemy import Column, ForeignKey, Integer, MetaData, Table

    from pytest_dbguard.db.schema_fingerprint import fingerprint_metadata

    metadata = MetaData()
    Table(
        "task",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("entity_id", ForeignKey("entity.id")),
    )
    Table(
        "entity",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("task_id", ForeignKey("task.id")),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        first = fingerprint_metadata(metadata, "postgresql")
    assert first == fingerprint_metadata(metadata, "postgresql")  # the same DDL, the same hash


# Listeners as the README writes them, and the kinds users write besides: a function whose
# constants include a set (its order follows the string hash, which differs between processes),
# listeners registered in a loop over a set, execute_if with a set of dialects, once=True
# (SQLAlchemy wraps the function), a functools.partial, and a DDL element other than DDL.
LISTENER_MODELS = """
import functools

from sqlalchemy import DDL, Column, Integer, MetaData, Table, event
from sqlalchemy.dialects import postgresql
from sqlalchemy.schema import CreateSchema

metadata = MetaData()
things = Table("things", metadata, Column("id", Integer, primary_key=True))
event.listen(metadata, "before_create", DDL("CREATE EXTENSION IF NOT EXISTS citext"))
event.listen(things, "after_create", DDL("INSERT INTO things (id) VALUES (1)"))
for schema in {"audit", "billing", "reports"}:
    event.listen(metadata, "before_create", DDL(f"CREATE SCHEMA IF NOT EXISTS {schema}"))
event.listen(
    things,
    "after_create",
    DDL("INSERT INTO things (id) VALUES (5)").execute_if(dialect={"postgresql", "sqlite"}),
)
event.listen(metadata, "before_create", CreateSchema("events", if_not_exists=True))


def seed(target, connection, **kw):
    if connection.dialect.name in {"postgresql", "sqlite", "mysql"}:
        connection.exec_driver_sql("INSERT INTO things (id) VALUES (2)")


def seed_once(target, connection, **kw):
    connection.exec_driver_sql("INSERT INTO things (id) VALUES (6)")


def seed_value(value, target, connection, **kw):
    connection.exec_driver_sql(f"INSERT INTO things (id) VALUES ({value})")


event.listen(things, "after_create", seed)
event.listen(things, "after_create", seed_once, once=True)
event.listen(things, "after_create", functools.partial(seed_value, 7))

# A native ENUM: SQLAlchemy's own listener creates the type, whose values CREATE TABLE omits.
Table("moods", metadata, Column("mood", postgresql.ENUM("happy", "sad", name="mood")))


# Objects whose repr differs from process to process, or fails: the kind of object counts.
class Hook:
    def __repr__(self):
        return f"<Hook id={id(self)}>"


class Broken:
    def __repr__(self):
        raise RuntimeError("no repr")


def noop(*args, **kw):
    pass


itself = []
itself.append(itself)
event.listen(things, "after_create", functools.partial(noop, Hook()))
event.listen(things, "after_create", functools.partial(noop, Broken(), itself))
"""


@pytest.mark.parametrize(
    ("change", "then"),
    [
        pytest.param(None, None, id="unchanged"),
        pytest.param("citext", "hstore", id="metadata-ddl"),
        pytest.param("VALUES (1)", "VALUES (3)", id="table-ddl"),
        pytest.param("VALUES (2)", "VALUES (4)", id="function-body"),
        pytest.param('"sqlite", "mysql"', '"mysql"', id="function-constant"),
        pytest.param('"reports"}', '"reports", "sales"}', id="loop"),
        pytest.param('{"postgresql", "sqlite"}', '"postgresql"', id="execute-if"),
        pytest.param('CreateSchema("events"', 'CreateSchema("logs"', id="create-schema"),
        pytest.param("VALUES (6)", "VALUES (8)", id="once"),
        pytest.param("seed_value, 7", "seed_value, 9", id="partial"),
        pytest.param('"sad", name=', '"sad", "angry", name=', id="enum-values"),
    ],
)
def test_the_fingerprint_covers_ddl_listeners(
    tmp_path: Path, change: str | None, then: str | None
) -> None:
    """What create_all runs besides the tables counts; the hash is the same in every process
    (each xdist worker computes it, with its own string hash seed)."""
    import subprocess
    import sys

    def fingerprint(models: str, seed: str) -> str:
        folder = tmp_path / f"seed{seed}-{len(list(tmp_path.iterdir()))}"
        folder.mkdir()
        (folder / "listener_models.py").write_text(models)
        code = (
            "import sys; sys.path.insert(0, sys.argv[1]); import listener_models; "
            "from pytest_dbguard.db.schema_fingerprint import fingerprint_metadata; "
            "print(fingerprint_metadata(listener_models.metadata, 'postgresql'))"
        )
        done = subprocess.run(
            [sys.executable, "-B", "-c", code, str(folder)],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
            check=True,
        )
        return done.stdout.strip()

    before = fingerprint(LISTENER_MODELS, "1")
    assert {fingerprint(LISTENER_MODELS, seed) for seed in ("2", "3", "4")} == {before}
    if change is None:
        return
    assert change in LISTENER_MODELS
    assert fingerprint(LISTENER_MODELS.replace(change, then or ""), "1") != before

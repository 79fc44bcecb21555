"""Alembic projects whose env.py builds its own engine from settings cached at import time."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest

from pytest_dbguard.server import cluster as server
from pytest_dbguard.server import machine
from tests.helpers import (
    ALEMBIC_LOGGING,
    ENV_PY_TAKES_CONNECTION,
    blocks,
    plugin_args,
    run_dbguard,
    run_inprocess,
    worker_rows,
    write_alembic_project,
)
from tests.pgserver import SUPERUSER_PASSWORD, TestServer

ALEMBIC_INI = (
    """
[alembic]
script_location = migrations
prepend_sys_path = .
path_separator = os

"""
    + ALEMBIC_LOGGING
)
# As in the FastAPI full-stack template: settings read once, at import, cached in a module global.
CONFIG_PY = """
import os


class Settings:
    def __init__(self) -> None:
        self.database_url = os.environ["DATABASE_URL"]


settings = Settings()
"""
# It never looks at config.attributes["connection"]: it connects where its settings say.
ENV_PY = """
from alembic import context
from sqlalchemy import create_engine

from app.core.config import settings

engine = create_engine(settings.database_url)
with engine.connect() as connection:
    context.configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
"""
MIGRATIONS = {
    "0001_users.py": """
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None

def upgrade():
    op.create_table("users", sa.Column("id", sa.Integer, primary_key=True), sa.Column("email", sa.String(200)))
""",
    "0002_items.py": """
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"

def upgrade():
    op.create_table("items", sa.Column("id", sa.Integer, primary_key=True), sa.Column("owner_id", sa.Integer, sa.ForeignKey("users.id")))
""",
    "0003_active.py": """
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"

def upgrade():
    op.add_column("users", sa.Column("active", sa.Boolean, server_default=sa.true()))
""",
}
BROKEN_MIGRATION = """
from alembic import op

revision = "0004"
down_revision = "0003"

def upgrade():
    op.execute("ALTER TABLE no_such_table ADD COLUMN x integer")
"""
CONFTEST = """
from app.core.config import settings  # cached now, before any template exists
"""
TESTS = """
import os

import pytest
from sqlalchemy import text

from app.core.config import settings


@pytest.mark.parametrize("n", range(4))
def test_sees_the_migrated_tables(dbguard_connection, n):
    database = dbguard_connection.execute(text("SELECT current_database()")).scalar()
    assert database == os.environ["DBGUARD_DB"]
    assert settings.database_url.endswith("/" + database)
    version = dbguard_connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    assert version == "0003"
    dbguard_connection.execute(text("INSERT INTO users (id, email) VALUES (1, 'a@b.c')"))
    dbguard_connection.execute(text("INSERT INTO items (owner_id) VALUES (1)"))
    rows = dbguard_connection.execute(text("SELECT email, active FROM users")).all()
    assert [tuple(row) for row in rows] == [("a@b.c", True)]
"""
WORKERS = worker_rows(xdist_id="n2")


PRINTS_ITS_URL = """
import os
from alembic import op

revision = "0004"
down_revision = "0003"

def upgrade():
    print("migrating", os.environ["DATABASE_URL"])
    op.execute("ALTER TABLE no_such_table ADD COLUMN x integer")
"""


def _project(
    pytester: pytest.Pytester,
    *,
    broken: bool = False,
    env_py: str = ENV_PY,
    migration: str = "",
    ini: str = "",
) -> None:
    revisions = dict(MIGRATIONS)
    if broken or migration:
        revisions["0004_broken.py"] = migration or BROKEN_MIGRATION
    write_alembic_project(
        pytester.path, alembic_ini=ALEMBIC_INI, env_py=env_py, revisions=revisions
    )
    (pytester.path / "app" / "core").mkdir(parents=True)
    (pytester.path / "app" / "__init__.py").write_text("")
    (pytester.path / "app" / "core" / "__init__.py").write_text("")
    (pytester.path / "app" / "core" / "config.py").write_text(CONFIG_PY)
    pytester.makeconftest(CONFTEST)
    if ini:
        pytester.makefile(".ini", pytest=ini)
    else:
        pytester.makeini(
            "[pytest]\npythonpath = .\ndbguard_alembic_ini = alembic.ini\n"
            "dbguard_env =\n    DATABASE_URL={url}\n"
        )
    pytester.makepyfile(test_users=TESTS)


@pytest.mark.parametrize("workers", WORKERS)
def test_env_py_with_cached_settings_migrates_the_template(
    pytester: pytest.Pytester, on_server: list[str], workers: tuple[str, ...]
) -> None:
    _project(pytester)
    result = run_dbguard(pytester, *on_server, *workers, inprocess=True)
    result.assert_outcomes(passed=4)


@pytest.mark.parametrize("workers", WORKERS)
def test_env_py_with_cached_settings_under_reuse(
    pytester: pytest.Pytester, workers: tuple[str, ...]
) -> None:
    """With --dbguard-reuse a serial run builds a separate template too (not its own database)."""
    _project(pytester)
    try:
        result = run_dbguard(pytester, "--dbguard-reuse", *workers, inprocess=True)
        result.assert_outcomes(passed=4)
    finally:  # stop this project's kept cluster (and no other)
        folder = (
            machine.storage_root()
            / f"reuse-{hashlib.sha1(str(pytester.path).encode()).hexdigest()[:10]}"
        )
        if folder.is_dir():
            server.EmbeddedCluster(
                bindir=machine.find_bindir() or Path(), root=folder, port=0
            ).stop()
    assert not folder.exists()


@pytest.mark.parametrize("workers", WORKERS)
def test_a_failing_migration_is_one_clear_error(
    pytester: pytest.Pytester, on_server: list[str], workers: tuple[str, ...]
) -> None:
    _project(pytester, broken=True)
    result = run_dbguard(pytester, *on_server, *workers, inprocess=True)
    _assert_one_clear_error(result)


@pytest.mark.parametrize("workers", WORKERS)
def test_a_failing_migration_on_the_given_connection_names_its_file(
    pytester: pytest.Pytester, on_server: list[str], workers: tuple[str, ...]
) -> None:
    """The in-process path (env.py takes the connection) names the migration's file and line too."""
    _project(pytester, broken=True, env_py=ENV_PY_TAKES_CONNECTION)
    result = run_dbguard(pytester, *on_server, *workers, inprocess=True)
    _assert_one_clear_error(result)
    assert "separate Python process" not in result.stderr.str()


@pytest.mark.needs_xdist
@pytest.mark.parametrize("password", [None, "Enc@Pw/x:1#"], ids=["plain", "url-encoded"])
def test_the_migrations_output_hides_the_password(
    pytester: pytest.Pytester, pg_server: TestServer, password: str | None
) -> None:
    """Printed by a migration, as typed or as the URL carries it (``Enc%40Pw%2Fx%3A1%23``)."""
    _project(pytester, migration=PRINTS_ITS_URL)
    user, secret = "postgres", SUPERUSER_PASSWORD
    if password is not None:
        user, secret = f"enc_{uuid.uuid4().hex[:8]}", password
        pg_server.sql(f"CREATE ROLE {user} LOGIN CREATEDB PASSWORD '{password}'")
    try:
        url = pg_server.url(user=user, password=quote(secret, safe=""))
        result = run_dbguard(pytester, "--dbguard-url", url, "-n", "2", inprocess=True)
    finally:
        if password is not None:
            pg_server.sql(f"DROP ROLE {user}")
    _assert_one_clear_error(result, line=10)
    output = result.stdout.str() + result.stderr.str()
    assert f"migrating postgresql+psycopg://{user}:***@" in output
    assert secret not in output
    assert quote(secret, safe="") not in output


@pytest.mark.parametrize(
    "password", ["Enc@Pw/x:1#", "postgres"], ids=["url-encoded", "a-word-of-the-url"]
)
def test_a_postgres_url_given_to_sqlalchemy_is_explained(
    pytester: pytest.Pytester, pg_server: TestServer, password: str
) -> None:
    """``DATABASE_URL={pg_url}`` read by an env.py that makes a SQLAlchemy engine: SQLAlchemy
    takes no ``postgres://``. The error lists what the child's variables named, password hidden
    however the URL carries it, and says which placeholder to give instead (before, it sent the
    user to the migrations). A password that is also a word of the error keeps the hint."""
    role = f"enc_{uuid.uuid4().hex[:8]}"
    pg_server.sql(f"CREATE ROLE {role} LOGIN CREATEDB PASSWORD '{password}'")
    try:
        _project(
            pytester,
            ini=(
                "[pytest]\npythonpath = .\ndbguard_alembic_ini = alembic.ini\n"
                "dbguard_env =\n    DATABASE_URL={pg_url}\n"
            ),
        )
        url = pg_server.url(user=role, password=quote(password, safe=""))
        result = run_dbguard(pytester, "--dbguard-url", url, inprocess=True)
    finally:
        pg_server.sql(f"DROP ROLE {role}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    output = result.stdout.str() + result.stderr.str()
    assert "Its environment named the template in: " in output
    assert f"DATABASE_URL=postgres://{role}:***@127.0.0.1:" in output
    assert "SQLAlchemy was given a postgres:// URL ({pg_url} is libpq's short form" in output
    if password != "postgres":  # a word of every such URL: it is hidden wherever it appears
        assert password not in output
        assert quote(password, safe="") not in output


def _assert_one_clear_error(result: pytest.RunResult, line: int = 8) -> None:
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    output = result.stdout.str() + result.stderr.str()
    assert "INTERNALERROR" not in output
    assert output.count("no test ran") == 1, output
    assert "no_such_table" in output
    assert f"0004_broken.py:{line}" in output
    assert "dbguard_alembic_ini" in output
    result.stdout.no_fnmatch_line("*passed*")


@pytest.mark.needs_xdist
@pytest.mark.parametrize("which", [0, 1], ids=["takes-the-connection", "own-engine"])
def test_readme_env_py_recipes(pytester: pytest.Pytester, which: int) -> None:
    """Both env.py blocks of the README's alembic recipe, with its ini block, pasted as written."""
    env_py = blocks("Alembic migrations", "python")[which]
    (ini,) = blocks("Alembic migrations", "ini")
    _project(pytester, env_py=env_py, ini=ini)
    result = run_inprocess(pytester, *plugin_args("-n", "2"), "-n", "2")
    result.assert_outcomes(passed=4)


def test_the_failing_file_is_named_without_dot_segments(tmp_path: Path) -> None:
    """alembic joins the rootdir and ``script_location = ./app/db/migrations`` as written, so its
    traceback says ``proj/./app/db/...``: the message names the file once, plainly."""
    from pytest_dbguard.db.alembic_runner import failing_file

    folder = tmp_path / "proj" / "app" / "db" / "migrations"
    folder.mkdir(parents=True)
    traceback_text = f'  File "{tmp_path}/proj/./app/db/migrations/env.py", line 25, in <module>\n'
    assert failing_file(traceback_text, folder) == f" at {folder}/env.py:25"

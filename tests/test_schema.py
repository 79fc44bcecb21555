"""Schema sources (metadata, alembic) and every driver a URL may name."""

from __future__ import annotations

import pytest

from tests.helpers import ALEMBIC_LOGGING, run_dbguard, write_alembic_project
from tests.pgserver import TestServer

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
def test_alembic_upgrade_head_builds_the_template(pytester: pytest.Pytester, xdist: bool) -> None:
    _alembic_project(pytester)
    args = ["-v", "-n", "2"] if xdist else ["-v"]
    result = run_dbguard(
        pytester, *args, plugins=("xdist.plugin",) if xdist else (), inprocess=not xdist
    )
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["dbguard: *alembic alembic.ini*"])


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

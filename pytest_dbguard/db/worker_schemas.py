"""One schema per xdist worker in the named database: the fallback for roles without CREATEDB.

Each schema is made and marked on the run's maintenance connection, built on the tests' own URL
(``search_path`` set to the schema), and dropped only when it carries dbguard's mark.
"""

from __future__ import annotations

import contextlib
import time
from typing import Final

from pytest_dbguard.db import maintenance
from pytest_dbguard.db.databases import SAME_ID, Provisioned, SchemaBuild, build_in, describe
from pytest_dbguard.db.maintenance import MaintenanceConnection, query_errors
from pytest_dbguard.db.marks import Mark, creator_running, make_mark, parse_mark
from pytest_dbguard.db.sql import quote_ident, quote_literal
from pytest_dbguard.db.urls import DatabaseURL
from pytest_dbguard.exceptions import DatabaseSetupError

CAN_CREATE_DATABASES: Final = (
    "SELECT rolsuper OR rolcreatedb FROM pg_roles WHERE rolname = current_user"
)


def can_create_databases(server_url: DatabaseURL) -> bool:
    """Whether the URL's role may CREATE DATABASE (superuser or CREATEDB)."""
    with maintenance.shared(server_url) as connection:
        return bool(connection.scalar(CAN_CREATE_DATABASES))


def provision_schema(
    server_url: DatabaseURL, schema: str, build: SchemaBuild | None, *, run: str, worker: str
) -> Provisioned:
    """Fallback for roles without CREATEDB: one schema per worker in the named database.

    The schema is made and marked in one transaction on the run's maintenance connection (no
    second connection of dbguard's own); the build then runs on the tests' own URL, whose engine
    stays for them (``engines.park_engine``). A failed build drops the schema it made."""
    started = time.perf_counter()
    try:
        with maintenance.shared(server_url) as connection, connection.transaction():
            if (mark := _schema_mark(connection, schema)) is not None:
                if (reason := creator_running(mark)) is not None:  # never take a live run's
                    where = f"in {server_url.database!r}"
                    raise DatabaseSetupError(
                        SAME_ID.format(
                            what="worker schema", name=schema, where=where, reason=reason
                        )
                    )
                # left by a crashed run that drew the same id
                connection.ddl(f"DROP SCHEMA {quote_ident(schema)} CASCADE")
            connection.ddl(f"CREATE SCHEMA {quote_ident(schema)}")
            comment = quote_literal(make_mark(run, worker))
            connection.ddl(f"COMMENT ON SCHEMA {quote_ident(schema)} IS {comment}")
        if build is not None:
            try:
                build_in(schema_url(server_url, schema), build, park=True)
            except BaseException:
                with contextlib.suppress(Exception):  # the build's own error matters more
                    drop_schema(server_url, schema)
                raise
    except query_errors() as error:
        raise DatabaseSetupError(describe(error, server_url, server_url.database or "")) from error
    elapsed = (time.perf_counter() - started) * 1000
    return Provisioned(
        "schema",
        server_url.database or "",
        schema_url(server_url, schema),
        elapsed,
        0.0,
        schema,
    )


def schema_url(server_url: DatabaseURL, schema: str) -> DatabaseURL:
    """The named database with ``search_path`` set to the worker's schema (libpq ``options``)."""
    return server_url.with_query(options=f"-csearch_path={schema}")


def _schema_mark(connection: MaintenanceConnection, schema: str) -> Mark | None:
    """The mark on ``schema``: None when it does not exist or is not dbguard's."""
    comment = connection.scalar(
        "SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace WHERE nspname = :n",
        {"n": schema},
    )
    return parse_mark(comment)


def drop_schema(server_url: DatabaseURL, schema: str) -> None:
    """Drop a worker schema, only when it carries dbguard's mark (on the run's maintenance
    connection, the mark read in the drop's transaction)."""
    with maintenance.shared(server_url) as connection, connection.transaction():
        if _schema_mark(connection, schema) is not None:
            connection.ddl(f"DROP SCHEMA {quote_ident(schema)} CASCADE")

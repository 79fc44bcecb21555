"""A failed test's data, kept (``--dbguard-keep-failed``): read its view of the database from
inside its still-open transaction, then copy those rows into a new database with the same schema.

Works without pytest. Rows travel as PostgreSQL's own record text (``ROW(t.*)::text`` out,
``CAST(... AS table)`` in), so every column type round-trips through its own input and output
functions, whatever the driver makes of it.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Final, Protocol

from pytest_dbguard.db.engines import INTERNAL_OPTIONS, engine_for
from pytest_dbguard.db.names import kept_failed_name
from pytest_dbguard.db.sql import quote_ident, quote_literal, run_ddl

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from pytest_dbguard.db.maintenance import MaintenanceConnection
    from pytest_dbguard.db.urls import DatabaseURL


# On the test's own connection: not the test's statements (the query counter skips them), and a
# ``%`` in a table name is not a placeholder.
_READ_OPTIONS: Final = {"no_parameters": True, **INTERNAL_OPTIONS}


class WrittenTables(Protocol):
    """What finds the tables a test wrote (``truncation.Truncator`` is one)."""

    def written(self, connection: Connection) -> tuple[list[str], list[str]]:
        """The tables that hold rows, parents before children, and their sequences."""
        ...


@dataclasses.dataclass(frozen=True)
class View:
    """A test's view of the tables it wrote: each table's rows as record text, parents first,
    and the last value of their sequences."""

    rows: dict[str, list[str]]
    sequences: dict[str, int]

    @property
    def row_count(self) -> int:
        return sum(len(rows) for rows in self.rows.values())

    def describe(self) -> str:
        """``3 rows in 2 tables: users 2, orders 1``."""
        tables = [f"{table} {len(rows)}" for table, rows in self.rows.items() if rows]
        rows = self.row_count
        return (
            f"{rows} row{'s' if rows != 1 else ''} in {len(tables)} "
            f"table{'s' if len(tables) != 1 else ''}" + (f": {', '.join(tables)}" if tables else "")
        )


def read_view(connection: Connection, finder: WrittenTables) -> View:
    """The rows of every table that holds some, as ``connection`` sees them (inside the test's
    transaction, its uncommitted rows too): one query for the tables (``finder``'s), one for
    their rows, one for their sequences."""
    tables, sequences = finder.written(connection)
    rows: dict[str, list[str]] = {table: [] for table in tables}
    if tables:
        union = " UNION ALL ".join(
            f"SELECT {quote_literal(table)}, CAST(ROW(dbguard_row.*) AS text) "
            f"FROM {table} AS dbguard_row"
            for table in tables
        )
        for table, record in connection.exec_driver_sql(union, execution_options=_READ_OPTIONS):
            rows[table].append(record)
    last: dict[str, int] = {}
    if sequences:
        values = connection.exec_driver_sql(
            "SELECT "
            + ", ".join(
                f"pg_sequence_last_value({quote_literal(name)}::regclass)" for name in sequences
            ),
            execution_options=_READ_OPTIONS,
        ).one()
        last = {
            name: int(value)
            for name, value in zip(sequences, values, strict=True)
            if value is not None
        }
    return View(rows, last)


def free_name(connection: MaintenanceConnection, worker_database: str) -> str:
    """The first ``<worker database>_failed_<n>`` not on the server (one query)."""
    taken = {name for (name,) in connection.rows("SELECT datname FROM pg_database")}
    number = 1
    while (name := kept_failed_name(worker_database, number)) in taken:
        number += 1
    return name


def copy_view(url: DatabaseURL, view: View) -> None:
    """Insert ``view``'s rows into the database of ``url`` (same schema, empty tables) and set
    its sequences where the test left them, in one transaction.

    Foreign keys and triggers of the schema stay quiet while a superuser copies
    (``session_replication_role = replica``); otherwise parents go in before children.
    """
    from sqlalchemy.pool import NullPool

    tables = [table for table, rows in view.rows.items() if rows]
    engine = engine_for(url, poolclass=NullPool, execution_options=INTERNAL_OPTIONS)
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql(
                "SELECT set_config('session_replication_role', 'replica', true) "
                "WHERE (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)"
            )
            columns = _insertable_columns(connection, tables)
            for table in tables:
                names = ", ".join(quote_ident(column) for column in columns[table])
                picks = ", ".join(f"(copied.r).{quote_ident(column)}" for column in columns[table])
                records = ", ".join(quote_literal(record) for record in view.rows[table])
                run_ddl(
                    connection,
                    f"INSERT INTO {table} ({names}) OVERRIDING SYSTEM VALUE SELECT {picks} FROM "
                    f"(SELECT CAST(record AS {table}) AS r "
                    f"FROM unnest(ARRAY[{records}]::text[]) AS record) AS copied",
                )
            if view.sequences:
                run_ddl(
                    connection,
                    "SELECT "
                    + ", ".join(
                        f"setval({quote_literal(name)}::regclass, {value})"
                        for name, value in view.sequences.items()
                    ),
                )
    finally:
        engine.dispose()


def _insertable_columns(connection: Connection, tables: list[str]) -> dict[str, list[str]]:
    """Each table's columns that take a value (generated columns compute theirs)."""
    columns: dict[str, list[str]] = {table: [] for table in tables}
    if not tables:
        return columns
    wanted = ", ".join(
        f"({quote_literal(table)}, {quote_literal(table)}::regclass)" for table in tables
    )
    for table, column in connection.exec_driver_sql(
        f"SELECT t.name, a.attname FROM (VALUES {wanted}) AS t(name, oid) "
        "JOIN pg_attribute a ON a.attrelid = t.oid "
        "WHERE a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' "
        "ORDER BY t.name, a.attnum",
        execution_options={"no_parameters": True},
    ):
        columns[table].append(column)
    return columns

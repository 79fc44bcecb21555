"""A failed test's data, kept (``--dbguard-keep-failed``): read its view of the database from
inside its still-open transaction, then copy those rows into a new database with the same schema.

Works without pytest, and without SQLAlchemy but for :func:`read_view` (a SQLAlchemy
connection's view): :func:`read_schema_view` reads through any connection's statements (Django's),
and :func:`copy_view` writes on dbguard's maintenance connection. Rows travel as PostgreSQL's own
record text (``ROW(t.*)::text`` out, ``CAST(... AS table)`` in), so every column type round-trips
through its own input and output functions, whatever the driver makes of it; the settings that
shape that text (time zone, date style, ...) are read with the rows and applied to the copy.

The copy goes into a clone of the run's template, which may hold rows already (a Django
project's content types and permissions, seed rows of a migration): only the rows where the
test's view and the clone differ are deleted or inserted, so the kept database is the test's
view, and the report names the tables the test changed.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol

from pytest_dbguard.db.engines import INTERNAL_OPTIONS
from pytest_dbguard.db.names import kept_failed_name
from pytest_dbguard.db.sql import (
    IN_OWN_SCHEMAS,
    OWN_TABLES,
    name_parts,
    quote_ident,
    quote_literal,
)

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from pytest_dbguard.db.maintenance import MaintenanceConnection
    from pytest_dbguard.db.urls import DatabaseURL

# Runs one statement that takes no parameters and returns its rows (none for other statements).
Rows = Callable[[str], Sequence[Sequence[Any]]]

# On the test's own connection: not the test's statements (the query counter skips them), and a
# ``%`` in a table name is not a placeholder.
_READ_OPTIONS: Final = {"no_parameters": True, **INTERNAL_OPTIONS}
# The settings that decide how a value is written as text, and so how it is read back.
TEXT_SETTINGS: Final = (
    "TimeZone",
    "DateStyle",
    "IntervalStyle",
    "extra_float_digits",
    "bytea_output",
)
SCHEMA_SEQUENCES: Final = (
    "SELECT c.oid::regclass::text, pg_sequence_last_value(c.oid) "
    f"FROM pg_class c {IN_OWN_SCHEMAS}WHERE c.relkind = 'S' ORDER BY 1"
)


class WrittenTables(Protocol):
    """What finds the tables a test wrote (``truncation.Truncator`` is one)."""

    def written(self, connection: Connection) -> tuple[list[str], list[str]]:
        """The tables that hold rows, parents before children, and their sequences."""
        ...


@dataclasses.dataclass(frozen=True)
class View:
    """A test's view of the tables it wrote: each table's rows as record text, parents first,
    the last value of their sequences, and the settings the rows were written as text under."""

    rows: dict[str, list[str]]
    sequences: dict[str, int]
    settings: dict[str, str] = dataclasses.field(default_factory=dict)
    # Tables with rows that the copy's schema lacks (the test created them): not copied.
    not_copied: tuple[str, ...] = ()

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
    their rows, one for their sequences, one for the settings."""
    tables, sequences = finder.written(connection)

    def rows(statement: str) -> Sequence[Sequence[Any]]:
        return connection.exec_driver_sql(statement, execution_options=_READ_OPTIONS).all()

    return View(_table_rows(rows, tables), _last_values(rows, sequences), _settings(rows))


def read_schema_view(rows: Rows, *, skipped: Iterable[str] = ()) -> View:
    """Every table of the worker's schemas (``sql.IN_OWN_SCHEMAS``) but ``skipped`` (bare names)
    with its rows, and every sequence of it, as the connection behind ``rows`` sees them: four
    queries. For connections other than SQLAlchemy's (Django's), where no ``WrittenTables``
    finder reads the layout."""
    left_out = set(skipped)
    tables = [name for (name,) in rows(OWN_TABLES) if _bare(name) not in left_out]
    sequences = {
        str(name): int(value) for name, value in rows(SCHEMA_SEQUENCES) if value is not None
    }
    return View(_table_rows(rows, tables), sequences, _settings(rows))


def merged(views: Sequence[View]) -> View:
    """One view of several connections to one database (Django aliases): each table's rows
    that any of them sees (a committed row, which all of them see, once), each sequence at
    its highest value."""
    if len(views) == 1:
        return views[0]
    rows: dict[str, list[str]] = {}
    sequences: dict[str, int] = {}
    for view in views:
        for table, records in view.rows.items():
            have = collections.Counter(rows.setdefault(table, []))
            rows[table] += list((collections.Counter(records) - have).elements())
        for name, value in view.sequences.items():
            sequences[name] = max(value, sequences.get(name, value))
    return View(rows, sequences, views[0].settings)


def _table_rows(rows: Rows, tables: Sequence[str]) -> dict[str, list[str]]:
    """Each table's rows as record text (one query for all of them)."""
    found: dict[str, list[str]] = {table: [] for table in tables}
    if tables:
        for table, record in rows(_records_of(tables)):
            found[table].append(record)
    return found


def _records_of(tables: Sequence[str], *, ctid: bool = False) -> str:
    where = "ctid::text, " if ctid else ""
    return " UNION ALL ".join(
        f"SELECT {quote_literal(table)}, {where}CAST(ROW(dbguard_row.*) AS text) "
        f"FROM {table} AS dbguard_row"
        for table in tables
    )


def _last_values(rows: Rows, sequences: Sequence[str]) -> dict[str, int]:
    """The last value of each sequence that has one (one query)."""
    if not sequences:
        return {}
    values = rows(
        "SELECT "
        + ", ".join(
            f"pg_sequence_last_value({quote_literal(name)}::regclass)" for name in sequences
        )
    )[0]
    return {
        name: int(value) for name, value in zip(sequences, values, strict=True) if value is not None
    }


def _settings(rows: Rows) -> dict[str, str]:
    values = rows(
        "SELECT " + ", ".join(f"current_setting({quote_literal(name)})" for name in TEXT_SETTINGS)
    )[0]
    return dict(zip(TEXT_SETTINGS, (str(value) for value in values), strict=True))


def _bare(table: str) -> str:
    """``users`` of ``public.users``, ``Users`` of ``"Users"``."""
    return name_parts(table)[-1]


def free_name(connection: MaintenanceConnection, worker_database: str) -> str:
    """The first ``<worker database>_failed_<n>`` not on the server (one query)."""
    taken = {name for (name,) in connection.rows("SELECT datname FROM pg_database")}
    number = 1
    while (name := kept_failed_name(worker_database, number)) in taken:
        number += 1
    return name


def copy_view(url: DatabaseURL, view: View) -> View:
    """Make the database of ``url`` (same schema; a clone of the template, or built anew) hold
    ``view``: the rows it lacks inserted, those the view lacks deleted, sequences set where the
    test left them, in one transaction on a maintenance connection (no SQLAlchemy). Returns
    the part of ``view`` that differed: the tables the test changed, with their rows.

    Foreign keys and triggers of the schema stay quiet while a superuser copies
    (``session_replication_role = replica``); otherwise children are deleted from before
    parents, and parents inserted into before children.
    """
    from pytest_dbguard.db import maintenance

    connection = maintenance.connect(url)
    try:
        with connection.transaction():
            _apply_settings(connection, view.settings)
            absent = _absent(connection, [*view.rows, *view.sequences])
            copied = View(
                {table: rows for table, rows in view.rows.items() if table not in absent},
                {name: value for name, value in view.sequences.items() if name not in absent},
                view.settings,
            )
            changed, sequences = _copy_differences(connection, copied)
    finally:
        connection.close()
    not_copied = tuple(table for table in view.rows if table in absent)
    return View(
        {table: view.rows[table] for table in changed}, sequences, view.settings, not_copied
    )


def _absent(connection: MaintenanceConnection, names: list[str]) -> set[str]:
    """Those of ``names`` (tables, sequences) that the copy's schema does not have."""
    if not names:
        return set()
    wanted = ", ".join(f"({quote_literal(name)})" for name in names)
    rows = connection.rows(
        f"SELECT name FROM (VALUES {wanted}) AS t(name) WHERE to_regclass(name) IS NULL"
    )
    return {str(name) for (name,) in rows}


def _apply_settings(connection: MaintenanceConnection, settings: dict[str, str]) -> None:
    """The reading session's text settings for this transaction (the clone's rows then read as
    the same text when equal, and the view's text is read back as it was meant), and, for a
    superuser, no foreign-key checks or triggers."""
    values = [
        f"set_config({quote_literal(name)}, {quote_literal(value)}, true)"
        for name, value in settings.items()
    ]
    connection.ddl("SELECT " + ", ".join(["1", *values]))
    connection.ddl(
        "SELECT set_config('session_replication_role', 'replica', true) "
        "WHERE (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)"
    )


def _copy_differences(
    connection: MaintenanceConnection, view: View
) -> tuple[list[str], dict[str, int]]:
    """The deletes and inserts that make the clone hold ``view``; the tables that differed,
    parents first, and the sequences set."""
    tables = list(view.rows)
    present: dict[str, list[tuple[str, str]]] = {table: [] for table in tables}  # (ctid, record)
    if tables:
        for table, ctid, record in connection.rows(_records_of(tables, ctid=True)):
            present[table].append((ctid, record))
    deletes: dict[str, list[str]] = {}
    inserts: dict[str, list[str]] = {}
    for table in tables:
        wanted = collections.Counter(view.rows[table])
        have = collections.Counter(record for _, record in present[table])
        extra = have - wanted
        deletes[table] = []
        for ctid, record in present[table]:
            if extra[record] > 0:
                extra[record] -= 1
                deletes[table].append(ctid)
        inserts[table] = list((wanted - have).elements())
    changed = _parents_first(
        connection, [table for table in tables if deletes[table] or inserts[table]]
    )
    for table in reversed(changed):
        if deletes[table]:
            tids = ", ".join(quote_literal(ctid) for ctid in deletes[table])
            connection.ddl(f"DELETE FROM {table} WHERE ctid = ANY(ARRAY[{tids}]::tid[])")
    columns = _insertable_columns(connection, [table for table in changed if inserts[table]])
    for table in changed:
        if inserts[table]:
            names = ", ".join(quote_ident(column) for column in columns[table])
            picks = ", ".join(f"(copied.r).{quote_ident(column)}" for column in columns[table])
            records = ", ".join(quote_literal(record) for record in inserts[table])
            connection.ddl(
                f"INSERT INTO {table} ({names}) OVERRIDING SYSTEM VALUE SELECT {picks} FROM "
                f"(SELECT CAST(record AS {table}) AS r "
                f"FROM unnest(ARRAY[{records}]::text[]) AS record) AS copied"
            )
    clone = _last_values(connection.rows, list(view.sequences))
    moved = {name: value for name, value in view.sequences.items() if clone.get(name) != value}
    if moved:
        connection.ddl(
            "SELECT "
            + ", ".join(
                f"setval({quote_literal(name)}::regclass, {value})" for name, value in moved.items()
            )
        )
    return changed, moved


def _parents_first(connection: MaintenanceConnection, tables: list[str]) -> list[str]:
    """``tables`` with each after the tables it refers to (as given, on a cycle), by the
    foreign keys among them: ``truncation``'s ordering."""
    if len(tables) < 2:
        return tables
    from pytest_dbguard.db.truncation import parents_first

    wanted = ", ".join(f"{quote_literal(table)}::regclass" for table in tables)
    references = connection.rows(
        "SELECT conrelid::regclass::text, confrelid::regclass::text FROM pg_constraint "
        f"WHERE contype = 'f' AND conrelid IN ({wanted}) AND confrelid IN ({wanted})"
    )
    return parents_first(tables, [(str(child), str(parent)) for child, parent in references])


def _insertable_columns(
    connection: MaintenanceConnection, tables: list[str]
) -> dict[str, list[str]]:
    """Each table's columns that take a value (generated columns compute theirs)."""
    columns: dict[str, list[str]] = {table: [] for table in tables}
    if not tables:
        return columns
    wanted = ", ".join(
        f"({quote_literal(table)}, {quote_literal(table)}::regclass)" for table in tables
    )
    for table, column in connection.rows(
        f"SELECT t.name, a.attname FROM (VALUES {wanted}) AS t(name, oid) "
        "JOIN pg_attribute a ON a.attrelid = t.oid "
        "WHERE a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' "
        "ORDER BY t.name, a.attnum"
    ):
        columns[table].append(column)
    return columns

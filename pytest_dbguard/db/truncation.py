"""Emptying the tables a test wrote to, for ``truncate`` isolation and for finding a failed
test's rows. Works without pytest: ``Truncator`` finds which tables a test left rows in (one
query) and empties only those (a second round trip), so a test that wrote nothing costs one.
"""

from __future__ import annotations

import dataclasses
import graphlib
from typing import TYPE_CHECKING, Final

from pytest_dbguard.db.sql import (
    IN_OWN_SCHEMAS,
    OWN_TABLES,
    quote_ident,
    quote_literal,
    written_probe,
    written_since,
)

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

SKIPPED_TABLES: Final = frozenset({"alembic_version"})


class Truncator:
    """Empties the tables a test wrote to, and resets their sequences, with the fewest statements.

    The few dirty tables are emptied with ``DELETE`` (children before parents) and their sequences
    set back in the same round trip: far cheaper than ``TRUNCATE``, which makes new files for every
    table, index and sequence. Tables with ``DELETE`` triggers of their own, foreign keys in a
    cycle, or a ``DELETE`` that fails get ``TRUNCATE … RESTART IDENTITY CASCADE``.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._layout: _Layout | None = None
        self._kept: _Kept | None = None  # what clean() leaves alone, from keep_what_is_there()

    def keep_what_is_there(self) -> None:
        """From now on ``clean()`` empties only what is written later: the rows there now (seed
        rows of the schema, a session fixture's data, an ``isolation="none"`` test's) stay, and
        sequences go back to where they are now, not to their start. One round trip."""
        with self._engine.connect() as connection:
            if self._layout is None:
                self._layout = self._read_layout(connection)
            sequences = [
                sequence for pairs in self._layout.sequences.values() for sequence, _ in pairs
            ]
            values = ", ".join(
                f"pg_sequence_last_value({quote_literal(sequence)}::regclass)"
                for sequence in sequences
            )
            row = connection.exec_driver_sql(
                f"SELECT txid_current(){', ' + values if values else ''}"
            ).one()
            connection.commit()
        self._kept = _Kept(int(row[0]), dict(zip(sequences, row[1:], strict=True)))

    def _read_layout(self, connection: Connection) -> _Layout:
        from sqlalchemy import text

        tables = [
            name
            for (name,) in connection.execute(text(OWN_TABLES))
            if name.rsplit(".", 1)[-1].strip('"') not in SKIPPED_TABLES
        ]
        # Serial and identity columns' sequences, with the value each starts from.
        sequences: dict[str, list[tuple[str, int]]] = {}
        for table, sequence, start in connection.execute(
            text(
                "SELECT c.oid::regclass::text, d.objid::regclass::text, s.seqstart "
                f"FROM pg_depend d JOIN pg_class c ON c.oid = d.refobjid {IN_OWN_SCHEMAS}"
                "JOIN pg_sequence s ON s.seqrelid = d.objid "
                "WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass "
                "AND d.deptype IN ('a', 'i') ORDER BY 2"
            )
        ):
            sequences.setdefault(table, []).append((sequence, int(start)))
        listed = set(tables)
        references = [
            (child, parent)
            for child, parent in connection.execute(
                text(
                    "SELECT conrelid::regclass::text, confrelid::regclass::text FROM pg_constraint "
                    "WHERE contype = 'f'"
                )
            )
            # across schemas too (users.users referencing public.groups); a partition's own
            # copy of its parent's constraint is the parent's
            if child in listed and parent in listed
        ]
        triggered = {
            table
            for (table,) in connection.execute(
                text(
                    "SELECT DISTINCT tgrelid::regclass::text FROM pg_trigger "
                    "WHERE NOT tgisinternal AND tgtype & 8 <> 0"  # 8: a DELETE trigger
                )
            )
        }
        return _Layout(tables, sequences, references, triggered)

    def dirty_tables(self, connection: Connection, kept: _Kept | None = None) -> list[str]:
        """Qualified names of the tables that hold rows or moved sequences (with ``kept``: rows
        written, or sequences moved, since then)."""
        if self._layout is None:
            self._layout = self._read_layout(connection)
        probe = self._layout.probe if kept is None else self._layout.probe_since(kept)
        if not probe:
            return []
        return [row[0] for row in connection.exec_driver_sql(probe)]

    def written(self, connection: Connection) -> tuple[list[str], list[str]]:
        """The tables that hold rows, parents before children, and their sequences (to copy a
        failed test's rows, ``kept_failed``)."""
        dirty = self.dirty_tables(connection)
        if not dirty:
            return [], []
        assert self._layout is not None
        return self._layout.parents_first(dirty), [
            sequence for table in dirty for sequence, _ in self._layout.sequences.get(table, [])
        ]

    def clean(self) -> list[str]:
        """Empty every dirty table and reset its sequences; returns what was emptied."""
        from sqlalchemy.exc import DBAPIError

        with self._engine.connect() as connection:
            # A leaked open transaction must not hang the run. LOCAL: the connection goes back to
            # dbguard_engine's pool, which the tests' own connections come from.
            connection.exec_driver_sql("SET LOCAL lock_timeout = '5s'")
            dirty = self.dirty_tables(connection, self._kept)
            if not dirty:
                connection.commit()
                return dirty
            assert self._layout is not None
            deletes = self._layout.deletes(dirty, self._kept)
            if deletes is not None:
                try:
                    connection.exec_driver_sql(deletes)
                    connection.commit()
                    return dirty
                except DBAPIError:  # a row elsewhere still refers to one: TRUNCATE cascades
                    connection.rollback()
                    connection.exec_driver_sql("SET LOCAL lock_timeout = '5s'")
            connection.exec_driver_sql(f"TRUNCATE {', '.join(dirty)} RESTART IDENTITY CASCADE")
            connection.commit()
        return dirty


@dataclasses.dataclass
class _Layout:
    """The tables of the test database as far as cleaning goes, read once per session."""

    tables: list[str]
    sequences: dict[str, list[tuple[str, int]]]
    references: list[tuple[str, str]]  # (child, parent) foreign keys
    triggered: set[str]  # tables with DELETE triggers of their own
    probe: str = dataclasses.field(init=False)  # derived from the above, once

    def __post_init__(self) -> None:
        # A table is dirty when it has a row, or when one of its sequences has moved since the
        # clone (a test that inserted and deleted again). One planned-once query for all tables.
        self.probe = " UNION ALL ".join(
            f"SELECT {quote_literal(table)} WHERE EXISTS (SELECT 1 FROM {table})"
            + "".join(
                f" OR pg_sequence_last_value({quote_literal(sequence)}::regclass) IS NOT NULL"
                for sequence, _ in self.sequences.get(table, [])
            )
            for table in self.tables
        )

    def parents_first(self, dirty: list[str]) -> list[str]:
        """``dirty`` with each table after the tables it refers to (as given, on a cycle)."""
        return parents_first(dirty, self.references)

    def probe_since(self, kept: _Kept) -> str:
        """The probe for tables with rows written since ``kept`` (a row's ``xmin`` is the
        transaction that wrote it), or with a sequence moved since."""
        return written_probe(
            self.tables,
            kept.written_since(),
            lambda table: "".join(
                f" OR pg_sequence_last_value({quote_literal(sequence)}::regclass) IS DISTINCT "
                f"FROM {_sql_number(kept.sequences.get(sequence))}"
                for sequence, _ in self.sequences.get(table, [])
            ),
        )

    def deletes(self, dirty: list[str], kept: _Kept | None = None) -> str | None:
        """One round trip that empties ``dirty`` children first (with ``kept``, of the rows
        written since) and resets their sequences; None where only TRUNCATE will do (DELETE
        triggers, a foreign-key cycle)."""
        if self.triggered.intersection(dirty):
            return None
        order = ordered_by_references(dirty, self.references, parents_first=False)
        if order is None:
            return None
        resets = [
            _reset(sequence, start, kept)
            for table in order
            for sequence, start in self.sequences.get(table, [])
        ]
        where = f" WHERE {kept.written_since()}" if kept is not None else ""
        statements = [f"DELETE FROM {table}{where}" for table in order]
        if resets:
            statements.append("SELECT " + ", ".join(resets))
        return "; ".join(statements)


class _Kept:
    """What ``clean()`` leaves: rows of transactions before ``xid``, sequences at ``sequences``
    (None: not used yet). A plain class: a dataclass compiles its methods at import."""

    __slots__ = ("sequences", "xid")

    def __init__(self, xid: int, sequences: dict[str, int | None]) -> None:
        self.xid = xid
        self.sequences = sequences

    def written_since(self) -> str:
        """A row condition: written by the transaction ``xid`` or a later one."""
        return written_since(self.xid)


def _reset(sequence: str, start: int, kept: _Kept | None) -> str:
    """Put ``sequence`` back: where ``kept`` saw it, else to its start."""
    value = kept.sequences.get(sequence) if kept is not None else None
    if value is None:
        return f"setval({quote_literal(sequence)}::regclass, {start}, false)"
    return f"setval({quote_literal(sequence)}::regclass, {value}, true)"


def _sql_number(value: int | None) -> str:
    return "NULL" if value is None else str(int(value))


def ordered_by_references(
    tables: list[str], references: list[tuple[str, str]], *, parents_first: bool
) -> list[str] | None:
    """``tables`` ordered by the foreign keys ``(child, parent)`` among them (tables outside
    ``tables`` are empty, so no other key matters): each table after the tables it refers to, or
    before them; None on a cycle."""
    chosen = set(tables)
    after = {table: set[str]() for table in tables}
    for child, parent in references:
        if child in chosen and parent in chosen and child != parent:
            if parents_first:
                after[child].add(parent)
            else:
                after[parent].add(child)
    try:
        return list(graphlib.TopologicalSorter(after).static_order())
    except graphlib.CycleError:
        return None


def parents_first(tables: list[str], references: list[tuple[str, str]]) -> list[str]:
    """``tables`` with each after the tables it refers to (as given, on a cycle)."""
    order = ordered_by_references(tables, references, parents_first=True)
    return tables if order is None else order


def sqlite_clean(engine: Engine) -> list[str]:
    from sqlalchemy import text

    with engine.begin() as connection:
        names = [
            row[0]
            for row in connection.execute(
                text(
                    "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
                )
            )
        ]
        connection.exec_driver_sql("PRAGMA defer_foreign_keys = ON")
        for name in names:
            if name not in SKIPPED_TABLES:
                connection.exec_driver_sql(f"DELETE FROM {quote_ident(name)}")
        if connection.execute(
            text("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'")
        ).first():
            connection.exec_driver_sql("DELETE FROM sqlite_sequence")
    return names

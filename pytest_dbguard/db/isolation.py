"""Per-test isolation fixtures: rollback (outer transaction + savepoints), truncate, or none.

``Truncator`` works without pytest: it finds which tables a test left rows in (one query) and
empties only those (a second round trip), so a ``truncate`` test that wrote nothing costs one.
"""

from __future__ import annotations

import dataclasses
import graphlib
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

import pytest

from pytest_dbguard.db import kept_failed
from pytest_dbguard.db.engines import (
    INTERNAL_OPTIONS,
    discard_dead_connections,
    engine_for,
    take_parked_engine,
)
from pytest_dbguard.db.sql import quote_ident
from pytest_dbguard.exceptions import DbguardError
from pytest_dbguard.run import failed_tests
from pytest_dbguard.run.state import run_of

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine
    from sqlalchemy.orm import Session

TRUNCATE_FIXTURE: Final = "_dbguard_truncate"
SKIPPED_TABLES: Final = frozenset({"alembic_version"})


@dataclasses.dataclass(frozen=True)
class DbguardMarks:
    """What a test's ``@pytest.mark.dbguard`` markers (its own, its class's, its module's) say."""

    isolation: str | None  # the closest marker that names one; None: the run's default
    allow: tuple[str, ...]  # the databases all of them allow, added up

    @classmethod
    def read(cls, item: pytest.Item) -> DbguardMarks:
        isolation: str | None = None
        allow: list[str] = []
        for marker in item.iter_markers("dbguard"):
            if isolation is None and "isolation" in marker.kwargs:
                isolation = str(marker.kwargs["isolation"])
            allow += marker.kwargs.get("allow", ())
        return cls(isolation, tuple(allow))


_marks_key: Final = pytest.StashKey[DbguardMarks]()


def marks_of(item: pytest.Item) -> DbguardMarks:
    """The test's dbguard markers, read once when it runs: its guards and fixtures all ask (a
    walk over the markers of every node above it each time, otherwise)."""
    marks = item.stash.get(_marks_key, None)
    if marks is None:
        marks = item.stash[_marks_key] = DbguardMarks.read(item)
    return marks


def isolation_of(item: pytest.Item, marks: DbguardMarks | None = None) -> str:
    """The test's isolation: its ``@pytest.mark.dbguard(isolation=...)``, else the run's default.

    The closest marker that names an isolation wins: a test's own ``dbguard(allow=...)`` keeps
    its class's or module's isolation."""
    isolation = (marks or marks_of(item)).isolation
    if isolation is not None:
        return isolation
    run = run_of(item.config)
    return run.settings.isolation if run is not None else "rollback"


@dataclasses.dataclass
class RunningTest:
    """The test whose setup, call or teardown is running, set by the per-test hook: the isolation
    fixtures read it instead of asking for ``request``, which costs pytest 9 a new fixture
    definition (and a signature) each time it is resolved, several times per test."""

    item: pytest.Item | None = None

    def now(self) -> pytest.Item:
        if self.item is None:
            raise DbguardError(
                "dbguard's function-scoped fixtures run inside a test; this one ran outside of "
                "any test's setup (was it called directly, not requested by a test?)"
            )
        return self.item


_running_key: Final = pytest.StashKey[RunningTest]()


def running_test(config: pytest.Config) -> RunningTest:
    """The run's record of the test running now."""
    running = config.stash.get(_running_key, None)
    if running is None:
        running = config.stash[_running_key] = RunningTest()
    return running


@dataclasses.dataclass(frozen=True)
class ConnectionSource:
    """What ``dbguard_connection`` needs for every test, resolved once per session: one fixture
    in each test's fixture closure instead of three (pytest walks every name of the closure for
    every test)."""

    engine: Engine
    running: RunningTest


def connection_source(dbguard_url: str, running: RunningTest) -> Iterator[ConnectionSource]:
    """The engine behind ``dbguard_connection`` (for the session), with the running-test record.
    The engine skips ``pool_pre_ping``'s round trip on every test: dead pooled connections are
    found by a look at their socket instead."""
    from pytest_dbguard.db.urls import url_of

    url = url_of(dbguard_url, source="dbguard_url")
    engine = take_parked_engine(url) or engine_for(url)  # the one that built the schema, if kept
    if not url.is_sqlite:
        discard_dead_connections(engine)
    yield ConnectionSource(engine, running)
    engine.dispose()


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

    def _read_layout(self, connection: Connection) -> _Layout:
        from sqlalchemy import text

        in_schema = (
            "JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = current_schema() "
        )
        tables = [
            name
            for (name,) in connection.execute(
                text(
                    f"SELECT c.oid::regclass::text FROM pg_class c {in_schema}"
                    f"WHERE c.relkind IN ('r', 'p') ORDER BY 1"
                )
            )
            if name.rsplit(".", 1)[-1].strip('"') not in SKIPPED_TABLES
        ]
        # Serial and identity columns' sequences, with the value each starts from.
        sequences: dict[str, list[tuple[str, int]]] = {}
        for table, sequence, start in connection.execute(
            text(
                "SELECT c.oid::regclass::text, d.objid::regclass::text, s.seqstart "
                f"FROM pg_depend d JOIN pg_class c ON c.oid = d.refobjid {in_schema}"
                "JOIN pg_sequence s ON s.seqrelid = d.objid "
                "WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass "
                "AND d.deptype IN ('a', 'i') ORDER BY 2"
            )
        ):
            sequences.setdefault(table, []).append((sequence, int(start)))
        references = [
            (child, parent)
            for child, parent in connection.execute(
                text(
                    "SELECT conrelid::regclass::text, confrelid::regclass::text FROM pg_constraint "
                    "WHERE contype = 'f' AND connamespace = current_schema()::regnamespace"
                )
            )
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

    def dirty_tables(self, connection: Connection) -> list[str]:
        """Qualified names of the tables that hold rows or moved sequences."""
        if self._layout is None:
            self._layout = self._read_layout(connection)
        if not self._layout.probe:
            return []
        return [row[0] for row in connection.exec_driver_sql(self._layout.probe)]

    def written(self, connection: Connection) -> tuple[list[str], list[str]]:
        """The dirty tables, parents before children, and their sequences (to copy a failed
        test's rows, ``kept_failed``)."""
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
            dirty = self.dirty_tables(connection)
            if not dirty:
                connection.commit()
                return dirty
            assert self._layout is not None
            deletes = self._layout.deletes(dirty)
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
            f"SELECT {_sql_literal(table)} WHERE EXISTS (SELECT 1 FROM {table})"
            + "".join(
                f" OR pg_sequence_last_value({_sql_literal(sequence)}::regclass) IS NOT NULL"
                for sequence, _ in self.sequences.get(table, [])
            )
            for table in self.tables
        )

    def parents_first(self, dirty: list[str]) -> list[str]:
        """``dirty`` with each table after the tables it refers to (as given, on a cycle)."""
        chosen = set(dirty)
        parents = {table: set[str]() for table in dirty}
        for child, parent in self.references:
            if child in chosen and parent in chosen and child != parent:
                parents[child].add(parent)
        try:
            return list(graphlib.TopologicalSorter(parents).static_order())
        except graphlib.CycleError:
            return dirty

    def deletes(self, dirty: list[str]) -> str | None:
        """One round trip that empties ``dirty`` children first and resets their sequences; None
        where only TRUNCATE will do (DELETE triggers, a foreign-key cycle)."""
        if self.triggered.intersection(dirty):
            return None
        chosen = set(dirty)
        # Tables outside ``dirty`` are empty, so only foreign keys among dirty tables matter.
        parents_after = {table: set[str]() for table in dirty}
        for child, parent in self.references:
            if child in chosen and parent in chosen and child != parent:
                parents_after[parent].add(child)
        try:
            order = list(graphlib.TopologicalSorter(parents_after).static_order())
        except graphlib.CycleError:
            return None
        resets = [
            f"setval({_sql_literal(sequence)}::regclass, {start}, false)"
            for table in order
            for sequence, start in self.sequences.get(table, [])
        ]
        statements = [f"DELETE FROM {table}" for table in order]
        if resets:
            statements.append("SELECT " + ", ".join(resets))
        return "; ".join(statements)


def _sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _sqlite_clean(engine: Engine) -> list[str]:
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


@pytest.fixture(scope="session")
def _dbguard_cleaner(dbguard_engine: Engine) -> Iterator[Truncator | None]:
    """Session: the truncator on a small internal pool (its statements are not counted as the test's)."""
    internal = dbguard_engine.execution_options(**INTERNAL_OPTIONS)
    yield None if internal.dialect.name == "sqlite" else Truncator(internal)


@pytest.fixture
def _dbguard_truncate(
    request: pytest.FixtureRequest, dbguard_engine: Engine, _dbguard_cleaner: Truncator | None
) -> Iterator[None]:
    """Function: after a ``truncate`` test, empties the tables it wrote to."""
    yield
    if _dbguard_cleaner is not None and failed_tests.wants_copy(request.node):
        with dbguard_engine.execution_options(**INTERNAL_OPTIONS).connect() as connection:
            keep_view(request.node, connection, _dbguard_cleaner)
    try:
        if _dbguard_cleaner is None:
            _sqlite_clean(dbguard_engine)
        else:
            _dbguard_cleaner.clean()
    except Exception as error:  # the test's own outcome must not be lost to a cleanup failure
        request.node.warn(
            pytest.PytestWarning(f"dbguard could not truncate after {request.node.nodeid}: {error}")
        )


@pytest.fixture
def dbguard_connection(_dbguard_connections: ConnectionSource) -> Iterator[Connection]:
    """Function: a Connection inside a transaction that is rolled back after the test.

    With ``isolation="truncate"`` or ``"none"`` the connection is plain (commits are real; truncate
    empties the written tables afterwards).
    """
    item, engine = _dbguard_connections.running.now(), _dbguard_connections.engine
    connection = engine.connect()
    if isolation_of(item) != "rollback":
        yield connection
        connection.close()
        return
    transaction = connection.begin()
    try:
        yield connection
    finally:
        if failed_tests.wants_copy(item):  # before the rollback takes its rows
            keep_view(item, connection, Truncator(engine))
        try:
            if transaction.is_active:
                transaction.rollback()
        except Exception as error:
            item.warn(pytest.PytestWarning(f"dbguard could not roll back: {error}"))
        connection.close()


@pytest.fixture
def dbguard_session(
    _dbguard_connections: ConnectionSource, dbguard_connection: Connection
) -> Iterator[Session]:
    """Function: an ORM Session joined to ``dbguard_connection``'s transaction.

    ``session.commit()`` inside the test releases a SAVEPOINT instead of committing, so nothing
    survives the test; the session is closed and the outer transaction rolled back afterwards.
    """
    from sqlalchemy.orm import Session

    session = Session(bind=dbguard_connection, join_transaction_mode="create_savepoint")
    yield session
    item = _dbguard_connections.running.now()
    if isolation_of(item) == "rollback" and failed_tests.wants_copy(item):
        # Before close() rolls back the session's savepoint, with the rows it flushed.
        keep_view(item, dbguard_connection, Truncator(dbguard_connection.engine), session)
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore"
        )  # closing after a failed flush may warn; the test already failed
        session.close()


def keep_view(
    item: pytest.Item, connection: Connection, finder: Truncator, session: Session | None = None
) -> None:
    """``--dbguard-keep-failed``: copy the failed test's view, as ``connection`` sees it, into a
    kept database. A transaction a failed statement aborted is first rolled back to the
    ``session``'s savepoint; without one, the report says the rows could not be read."""
    from sqlalchemy.exc import DBAPIError

    try:
        view = kept_failed.read_view(connection, finder)
    except DBAPIError as error:
        if session is None:
            failed_tests.not_read(item, error)
            return
        try:
            session.rollback()
            view = kept_failed.read_view(connection, finder)
        except DBAPIError as again:
            failed_tests.not_read(item, again)
            return
    failed_tests.keep(item, view)


def add_truncate_fixture(items: list[pytest.Item]) -> None:
    """Give every ``truncate`` test the cleanup fixture (nothing is added to other tests)."""
    for item in items:
        # Read afresh, not kept: a later plugin's collection hook may still add markers.
        if (
            not isinstance(item, pytest.Function)
            or isolation_of(item, DbguardMarks.read(item)) != "truncate"
        ):
            continue
        if TRUNCATE_FIXTURE not in item.fixturenames:
            # First in, last out: the cleanup runs after the test's own connections are closed.
            item.fixturenames.insert(0, TRUNCATE_FIXTURE)

"""Per-test isolation fixtures: rollback (outer transaction + savepoints), truncate, or none.

``Truncator`` works without pytest: it finds which tables a test left rows in (one query) and
empties only those, so a ``truncate`` test that wrote nothing costs a single round trip.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

import pytest

from pytest_dbguard.config import settings_key
from pytest_dbguard.databases import (
    INTERNAL_OPTIONS,
    discard_dead_connections,
    engine_for,
    quote_ident,
)
from pytest_dbguard.environment import plan_key

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine
    from sqlalchemy.orm import Session

TRUNCATE_FIXTURE: Final = "_dbguard_truncate"
SKIPPED_TABLES: Final = frozenset({"alembic_version"})


def isolation_of(item: pytest.Item) -> str:
    """The test's isolation: its ``@pytest.mark.dbguard(isolation=...)``, else the run's default."""
    marker = item.get_closest_marker("dbguard")
    if marker is not None and "isolation" in marker.kwargs:
        return str(marker.kwargs["isolation"])
    settings = item.config.stash.get(settings_key, None)
    return settings.isolation if settings is not None else "rollback"


class Truncator:
    """Empties the tables a test wrote to, and resets their sequences, with the fewest statements."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._probe: str | None = None

    def _build_probe(self, connection: Connection) -> str | None:
        from sqlalchemy import text

        # Each table with the sequences it owns (serial and identity columns), looked up once.
        rows = connection.execute(
            text(
                "SELECT c.relname, c.oid::regclass::text, "
                "array_remove(array_agg(d.objid::regclass::text), NULL) "
                "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "LEFT JOIN pg_depend d ON d.refobjid = c.oid AND d.classid = 'pg_class'::regclass "
                "AND d.deptype IN ('a', 'i') AND d.objid IN (SELECT oid FROM pg_class WHERE relkind = 'S') "
                "WHERE c.relkind IN ('r', 'p') AND n.nspname = current_schema() "
                "GROUP BY c.relname, c.oid ORDER BY 1"
            )
        ).all()
        tables = [
            (qualified, sequences)
            for name, qualified, sequences in rows
            if name not in SKIPPED_TABLES
        ]
        if not tables:
            return None
        # A table is dirty when it has a row, or when one of its sequences has moved since the
        # clone (a test that inserted and deleted again). One planned-once query for all tables.
        parts = [
            f"SELECT {_sql_literal(qualified)} WHERE EXISTS (SELECT 1 FROM {qualified})"
            + "".join(
                f" OR pg_sequence_last_value({_sql_literal(sequence)}::regclass) IS NOT NULL"
                for sequence in sequences
            )
            for qualified, sequences in tables
        ]
        return " UNION ALL ".join(parts)

    def dirty_tables(self, connection: Connection) -> list[str]:
        """Qualified names of the tables that hold rows or moved sequences."""
        if self._probe is None:
            self._probe = self._build_probe(connection) or ""
        if not self._probe:
            return []
        return [row[0] for row in connection.exec_driver_sql(self._probe)]

    def clean(self) -> list[str]:
        """Empty every dirty table (``RESTART IDENTITY CASCADE``); returns what was emptied."""
        with self._engine.connect() as connection:
            # A leaked open transaction must not hang the run. LOCAL: the connection goes back to
            # dbguard_engine's pool, which the tests' own connections come from.
            connection.exec_driver_sql("SET LOCAL lock_timeout = '5s'")
            dirty = self.dirty_tables(connection)
            if dirty:
                connection.exec_driver_sql(f"TRUNCATE {', '.join(dirty)} RESTART IDENTITY CASCADE")
            connection.commit()
        return dirty


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
def dbguard_url(pytestconfig: pytest.Config) -> str:
    """Session: this worker's test database URL (sync driver, password included so it connects)."""
    from pytest_dbguard.urls import SecretURL

    return SecretURL(pytestconfig.stash[plan_key].test_url.render(hide_password=False))


@pytest.fixture(scope="session")
def dbguard_engine(dbguard_url: str) -> Iterator[Engine]:
    """Session: a SQLAlchemy Engine on this worker's test database with ``pool_pre_ping``; disposed at the end."""
    from pytest_dbguard.urls import DatabaseURL

    engine = engine_for(DatabaseURL.parse(dbguard_url), pool_pre_ping=True)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def _dbguard_connection_engine(dbguard_url: str) -> Iterator[Engine]:
    """Session: the engine behind ``dbguard_connection``. It skips ``pool_pre_ping``'s round trip
    on every test: dead pooled connections are found by a look at their socket instead."""
    from pytest_dbguard.urls import DatabaseURL

    url = DatabaseURL.parse(dbguard_url)
    engine = engine_for(url)
    if not url.is_sqlite:
        discard_dead_connections(engine)
    yield engine
    engine.dispose()


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
def dbguard_connection(
    request: pytest.FixtureRequest, _dbguard_connection_engine: Engine
) -> Iterator[Connection]:
    """Function: a Connection inside a transaction that is rolled back after the test.

    With ``isolation="truncate"`` or ``"none"`` the connection is plain (commits are real; truncate
    empties the written tables afterwards).
    """
    connection = _dbguard_connection_engine.connect()
    if isolation_of(request.node) != "rollback":
        yield connection
        connection.close()
        return
    transaction = connection.begin()
    try:
        yield connection
    finally:
        try:
            if transaction.is_active:
                transaction.rollback()
        except Exception as error:
            request.node.warn(pytest.PytestWarning(f"dbguard could not roll back: {error}"))
        connection.close()


@pytest.fixture
def dbguard_session(dbguard_connection: Connection) -> Iterator[Session]:
    """Function: an ORM Session joined to ``dbguard_connection``'s transaction.

    ``session.commit()`` inside the test releases a SAVEPOINT instead of committing, so nothing
    survives the test; the session is closed and the outer transaction rolled back afterwards.
    """
    from sqlalchemy.orm import Session

    session = Session(bind=dbguard_connection, join_transaction_mode="create_savepoint")
    yield session
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore"
        )  # closing after a failed flush may warn; the test already failed
        session.close()


def add_truncate_fixture(items: list[pytest.Item]) -> None:
    """Give every ``truncate`` test the cleanup fixture (nothing is added to other tests)."""
    for item in items:
        if not isinstance(item, pytest.Function) or isolation_of(item) != "truncate":
            continue
        if TRUNCATE_FIXTURE not in item.fixturenames:
            # First in, last out: the cleanup runs after the test's own connections are closed.
            item.fixturenames.insert(0, TRUNCATE_FIXTURE)

"""Leaks: rows that an engine other than dbguard's committed to the test database during a test.

``LeakWatcher`` works without pytest. One ``commit`` listener on the ``Engine`` class sees every
commit of every engine (an ORM ``Session.commit()``, ``engine.begin()``, an ``AsyncSession``);
it sends no query until an engine that is not dbguard's commits to the test database. Then it
asks that transaction for its id (one round trip, before the commit goes out), and after the
test one query lists the tables holding rows written by that transaction or a later one
(PostgreSQL's ``xmin``). So rows that were there before (seed rows of the schema, rows of an
earlier ``isolation="none"`` test) are not reported, and rows reported once are not reported
again after a later test.

The commit listener goes in only once an engine that is not dbguard's checks a connection out
of its pool: any connection-level listener sends every statement of every engine through
SQLAlchemy's event path, a cost that a suite using dbguard's fixtures alone need not pay.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from pytest_dbguard.compat import record_dialect
from pytest_dbguard.db.engine_listener import EngineListener, is_own
from pytest_dbguard.db.sql import OWN_TABLES, plain_name, written_probe, written_since

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

LEAK_MESSAGE: Final = (
    "{where} left rows in {tables}: an engine that is not one of dbguard's fixtures (the "
    "application's own, for example) committed them, so the rollback after the test did not "
    "remove them and the next tests see them. Bind the application's session to "
    'dbguard_connection (README: "The application\'s own session"), or mark the test '
    '@pytest.mark.dbguard(isolation="truncate") (or set ini dbguard_isolation = truncate) to '
    'empty the tables it writes to after it, or isolation="none" for a suite that deletes its '
    "own rows; dbguard_leaks = off silences this report."
)
# A test that uses none of the fixtures dbguard rolls back: nothing was rolled back after it (a
# unittest.TestCase that builds its app in setUp: Flask-AppBuilder's suite got the text above).
ROLLED_BACK_FIXTURES: Final = ("dbguard_connection", "dbguard_session", "dbguard_async_session")
LEAK_WITHOUT_FIXTURES: Final = (
    "{where} left rows in {tables}, committed by an engine that is not one of dbguard's "
    "fixtures; the test uses none of those that dbguard rolls back (dbguard_connection, "
    "dbguard_session), so nothing was rolled back after it, and the next tests see them. Give it "
    "dbguard_connection and bind the application's session to it (README: \"The application's "
    'own session"), or set ini dbguard_isolation = truncate (or mark the test or its class '
    '@pytest.mark.dbguard(isolation="truncate")) to empty the tables it writes to after it; a '
    "suite that removes its own rows (a unittest.TestCase's tearDown) sets dbguard_isolation = "
    "none, which ends this check. dbguard_leaks = off silences this report."
)
# Every later warning of the process: a suite whose every test commits on the application's
# engine got the whole text hundreds of times (dispatch: 305 warnings). It stands on its own: a
# filter may have hidden the first one.
LEAK_AGAIN: Final = (
    "{where} left rows in {tables}, committed by an engine that is not one of dbguard's "
    'fixtures (what to do: README "The application\'s own session", or '
    'isolation="truncate"; dbguard_leaks = off silences this).'
)


class LeakWatcher(EngineListener):
    """Notes the first transaction that an engine not of dbguard's committed to one database."""

    EVENT = "commit"
    RETVAL = False

    def __init__(
        self,
        is_test_database: Callable[[Connection], bool],
        outside_test: Callable[[], bool] = lambda: False,
    ) -> None:
        self.is_test_database = is_test_database  # whether a connection is on the test database
        # Whether a commit is not the test's although it runs meanwhile: a session fixture
        # seeding the database during the first test's setup, say.
        self.outside_test = outside_test
        self.watching = False
        self.first_xid: int | None = None  # the oldest such transaction since the last take()
        self._checkouts = _ForeignCheckouts(self)

    def install(self) -> None:
        """Start watching: the commit listener goes in at the first connection of an engine that
        is not dbguard's."""
        self._checkouts.install()

    def remove(self) -> None:
        """Stop watching."""
        self._checkouts.remove()
        super().remove()

    def watch_commits(self) -> None:
        """Listen to every engine's commits from now on."""
        super().install()

    def _handler(self) -> Callable[..., Any]:
        return self._on_commit

    def take(self) -> int | None:
        """The oldest foreign transaction id seen since the last call, and forget it."""
        xid, self.first_xid = self.first_xid, None
        return xid

    def _on_commit(self, connection: Connection) -> None:
        if (
            not self.watching
            or is_own(connection.dialect)
            or connection.dialect.name != "postgresql"
            or not self.is_test_database(connection)
            or self.outside_test()
        ):
            return
        # Before the commit goes out: the transaction's id, or NULL when it wrote nothing.
        try:
            cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            try:
                cursor.execute("SELECT txid_current_if_assigned()")
                row = cursor.fetchone()
            finally:
                cursor.close()
        except Exception:  # an aborted transaction commits nothing: leave its error to the app
            return
        if row is not None and row[0] is not None:
            xid = int(row[0])
            self.first_xid = xid if self.first_xid is None else min(self.first_xid, xid)


class _ForeignCheckouts(EngineListener):
    """The pools' ``checkout`` event (a pool event: no cost per statement), until the first
    connection of an engine that is not dbguard's puts the commit listener in. Checked out before
    its first statement, so that connection's first commit is seen."""

    EVENT = "checkout"
    RETVAL = False

    def __init__(self, watcher: LeakWatcher) -> None:
        self.watcher = watcher

    def _handler(self) -> Callable[..., Any]:
        return self._on_checkout

    def _on_checkout(self, dbapi_connection: Any, record: Any, proxy: Any) -> None:
        if self.watcher.installed:
            return
        dialect = record_dialect(record)
        if dialect is None or not is_own(dialect):  # not known: watch, rather than miss a leak
            self.watcher.watch_commits()


def tables_written_since(engine: Engine, xid: int) -> list[str]:
    """Tables of the worker's schemas (``sql.OWN_TABLES``) holding rows written by
    transaction ``xid`` or a later one, their names unquoted (``user``, not ``"user"``)."""
    from sqlalchemy import text

    with engine.connect() as connection:
        tables = connection.execute(text(OWN_TABLES)).scalars()
        probe = written_probe(tables, written_since(xid))
        if not probe:
            return []
        return [plain_name(row[0]) for row in connection.exec_driver_sql(probe)]

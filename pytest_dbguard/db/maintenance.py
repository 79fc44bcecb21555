"""dbguard's own maintenance connection: CREATE and DROP DATABASE, marks, advisory locks and the
janitor's queries, on the driver alone.

A run that never uses SQLAlchemy itself (a Django project) used to import it only for this
work: 0.15-0.25 s in the controller and in every xdist worker. For psycopg and psycopg2 URLs a
:class:`MaintenanceConnection` is a DBAPI connection opened the way the readiness check opens one
(:class:`~pytest_dbguard.server.connect_target.ConnectTarget`: autocommit, the application name
``MAINTENANCE_APP`` that ``terminate()`` spares), and the check's own connection, kept by
:mod:`pytest_dbguard.server.handover`, becomes the process's shared one. Other drivers keep
SQLAlchemy's engine behind the same few methods. Statements are written with SQLAlchemy's
``:name`` parameters either way; a failure is a :class:`MaintenanceQueryError` whose ``orig``
is the driver's error, so the diagnosis (``connect_diagnosis``) reads it as before.

Works without pytest.
"""

from __future__ import annotations

import contextlib
import math
import re
import sys
import threading
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final

from pytest_dbguard.exceptions import DbguardError
from pytest_dbguard.server import handover
from pytest_dbguard.server.connect_target import ConnectTarget, plain_connect_args

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from pytest_dbguard.db.urls import DatabaseURL

Params = Mapping[str, Any]
CONNECT_TIMEOUT: Final = 30.0  # seconds, unless the URL's connect_timeout says otherwise
_NAMED: Final = r"(?<![:\w]):(\w+)"  # :name, not a ::cast; compiled on first use by re


class MaintenanceQueryError(DbguardError):
    """A statement or connect on dbguard's maintenance connection failed; ``orig`` is the
    driver's own error (as on SQLAlchemy's ``DBAPIError``), the message its first line."""

    def __init__(self, orig: BaseException, password: str | None) -> None:
        from pytest_dbguard.server.connect_diagnosis import scrub

        self.orig = orig
        lines = str(orig).strip().splitlines()
        super().__init__(scrub(lines[0] if lines else type(orig).__name__, password))


def query_errors() -> tuple[type[Exception], ...]:
    """What a maintenance step or a schema build may raise for a failed statement: ours, and
    SQLAlchemy's ``DBAPIError`` once SQLAlchemy is imported (it cannot be raised before)."""
    exc = sys.modules.get("sqlalchemy.exc")
    return (MaintenanceQueryError,) if exc is None else (MaintenanceQueryError, exc.DBAPIError)


class MaintenanceConnection:
    """One autocommit connection of dbguard's own to a server's database, with the few operations
    its maintenance needs. Over a DBAPI connection (psycopg, psycopg2) or, for other drivers,
    a SQLAlchemy connection."""

    def __init__(
        self,
        url: DatabaseURL,
        dbapi: Any = None,
        sqlalchemy: Connection | None = None,
        *,
        dbapi_error: type[Exception] | None = None,
    ) -> None:
        self.url = url
        self._dbapi = dbapi
        self._sqlalchemy = sqlalchemy
        # What a failed statement raises: the driver's own Error over a DBAPI connection
        # (PEP 249), SQLAlchemy's DBAPIError over a SQLAlchemy one; both become ours.
        self._errors = (*query_errors(), *((dbapi_error,) if dbapi_error is not None else ()))

    def rows(self, statement: str, params: Params | None = None) -> list[tuple[Any, ...]]:
        """Every row ``statement`` returns (none for a statement that returns no rows)."""
        try:
            if self._sqlalchemy is not None:
                from sqlalchemy import text

                result = self._sqlalchemy.execute(text(statement), dict(params or {}))
                return [tuple(row) for row in result.all()] if result.returns_rows else []
            cursor = self._dbapi.cursor()
            try:
                if params:
                    cursor.execute(_pyformat(statement), dict(params))
                else:
                    cursor.execute(statement)
                return [tuple(row) for row in cursor.fetchall()] if cursor.description else []
            finally:
                cursor.close()
        except self._errors as error:
            raise self._error(error) from error

    def first(self, statement: str, params: Params | None = None) -> tuple[Any, ...] | None:
        """The first row, or None."""
        found = self.rows(statement, params)
        return found[0] if found else None

    def scalar(self, statement: str, params: Params | None = None) -> Any:
        """The first column of the first row (None without one)."""
        row = self.first(statement, params)
        return row[0] if row is not None else None

    def ddl(self, statement: str) -> None:
        """Run a statement that embeds quoted names and takes no parameters: a ``%`` in a
        database name is never read as a placeholder."""
        if self._sqlalchemy is None:
            self.rows(statement)
            return
        from pytest_dbguard.db.sql import run_ddl

        try:
            run_ddl(self._sqlalchemy, statement)
        except self._errors as error:
            raise self._error(error) from error

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Statements that take effect together (and ``SET LOCAL``s that end with them) on this
        autocommit connection: BEGIN, then COMMIT, or ROLLBACK when the block raises."""
        self.ddl("BEGIN")
        try:
            yield
        except BaseException:
            with contextlib.suppress(Exception):  # a broken connection has nothing to undo
                self.ddl("ROLLBACK")
            raise
        self.ddl("COMMIT")

    def looks_dead(self) -> bool:
        """Whether the server has closed this idle connection (a terminated backend, a restart,
        a cut): its socket is readable while nothing is due. No round trip."""
        if self._sqlalchemy is not None:  # its pool checks at checkout
            return self._sqlalchemy.closed or self._sqlalchemy.invalidated
        return handover.looks_dead(self._dbapi)

    def close(self) -> None:
        """Close it; a connection already broken is fine."""
        if self._sqlalchemy is not None:
            with contextlib.suppress(Exception):
                self._sqlalchemy.close()
        else:
            handover.close_quietly(self._dbapi)

    def _error(self, error: BaseException) -> MaintenanceQueryError:
        if isinstance(error, MaintenanceQueryError):
            return error
        return MaintenanceQueryError(getattr(error, "orig", None) or error, self.url.password)


def _pyformat(statement: str) -> str:
    """``:name`` parameters as psycopg's ``%(name)s``, literal ``%`` doubled."""
    return re.sub(_NAMED, r"%(\1)s", statement.replace("%", "%%"))


def connect(url: DatabaseURL, *, shared: bool = False) -> MaintenanceConnection:
    """A new maintenance connection to ``url``'s database (the driver's error wrapped in
    :class:`MaintenanceQueryError`); ``shared``: the one a check kept, when there is one."""
    target = ConnectTarget(url.sync())
    if not target.can_hand_over:
        return _over_sqlalchemy(url, shared=shared)
    kept = handover.take(target.url) if shared else None
    if kept is not None and not handover.looks_dead(kept):
        return MaintenanceConnection(url, dbapi=kept, dbapi_error=target.dbapi_error)
    if kept is not None:
        handover.close_quietly(kept)
    timeout = dict(url.query).get("connect_timeout")
    limit = float(timeout) if timeout and timeout.isdigit() else CONNECT_TIMEOUT
    try:
        connection = target.connect(math.ceil(limit), maintenance=True)
    except (target.dbapi_error, OSError) as error:
        raise MaintenanceQueryError(error, url.password) from error
    return MaintenanceConnection(url, dbapi=connection, dbapi_error=target.dbapi_error)


def _over_sqlalchemy(url: DatabaseURL, *, shared: bool) -> MaintenanceConnection:
    from sqlalchemy.exc import DBAPIError

    from pytest_dbguard.db.engines import admin_engine, shared_admin_engine

    engine = shared_admin_engine(url) if shared else admin_engine(url)
    try:
        return MaintenanceConnection(url, sqlalchemy=engine.connect())
    except DBAPIError as error:
        raise MaintenanceQueryError(error.orig or error, url.password) from error


_shared: dict[str, MaintenanceConnection] = {}
_lock = threading.Lock()


@contextlib.contextmanager
def shared(url: DatabaseURL) -> Iterator[MaintenanceConnection]:
    """This process's one maintenance connection to ``url``'s database, for every probe, CREATE
    and DROP DATABASE of the run, held until :func:`close_shared`; a dead one is replaced. A
    caller that finds it in use (another thread) gets a connection of its own for the while.

    A fresh connection per step cost an external run five connections (each a TCP and SCRAM
    handshake) where one does; its first is the one the role or readiness check kept. Other
    drivers than psycopg and psycopg2 check one out of SQLAlchemy's shared engine each time.
    """
    if plain_connect_args(url.sync()) is None:
        connection = _over_sqlalchemy(url, shared=True)
        try:
            yield connection
        finally:
            connection.close()
        return
    key = handover.key(url)
    with _lock:
        held = _shared.pop(key, None)  # popped while in use: another thread opens its own
    if held is not None and held.looks_dead():
        held.close()
        held = None
    if held is None:
        held = connect(url, shared=True)
    try:
        yield held
    finally:
        with _lock:
            if key not in _shared:
                _shared[key], held = held, None
        if held is not None:  # another thread's meanwhile became the shared one
            held.close()


def discard(url: DatabaseURL) -> None:
    """Close this process's shared connection to ``url``'s database (a server restart ended it):
    the next :func:`shared` takes the connection that proved the restarted server ready
    (:func:`~pytest_dbguard.server.readiness.wait_for_run` keeps it), or opens one."""
    key = handover.key(url)
    with _lock:
        held = _shared.pop(key, None)
    if held is not None:
        held.close()


def close_shared() -> None:
    """At the end of the run: close the shared maintenance connections and any connection a
    check kept for them that none took."""
    with _lock:
        held = list(_shared.values())
        _shared.clear()
    for connection in held:
        connection.close()
    handover.close_all()

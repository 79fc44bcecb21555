"""Engines: dbguard's own maintenance engines, the tests' engines, and the SQLite and
dead-connection fixes they need. Works without pytest."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from pytest_dbguard.db.engine_listener import INTERNAL_OPTION, mark_own
from pytest_dbguard.server.handover import MAINTENANCE_APP, looks_dead
from pytest_dbguard.server.handover import key as handover_key

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

    from pytest_dbguard.db.urls import DatabaseURL

INTERNAL_OPTIONS: Final = {INTERNAL_OPTION: True}  # guards skip statements carrying this


def admin_engine(url: DatabaseURL) -> Engine:
    """An autocommit engine for CREATE/DROP DATABASE, without a pool, tagged as dbguard's own."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    return mark_own(
        create_engine(
            url.sync().to_sqlalchemy(),
            poolclass=NullPool,
            isolation_level="AUTOCOMMIT",
            execution_options=INTERNAL_OPTIONS,
        )
    )


_shared_admins: dict[str, Engine] = {}


def shared_admin_engine(url: DatabaseURL) -> Engine:
    """This process's one maintenance engine on ``url``'s database, for drivers other than
    psycopg and psycopg2 (:mod:`pytest_dbguard.db.maintenance` serves those on the driver alone
    and uses this behind the same methods): a pool of one (overflow for a nested use),
    autocommit, a dead connection replaced at checkout. Held until ``dispose_own_engines``.
    ``connect_timeout`` in the query is not part of the key: the first caller's applies.
    """
    from sqlalchemy import create_engine

    key = handover_key(url)
    engine = _shared_admins.get(key)
    if engine is None:
        engine = mark_own(
            create_engine(
                url.sync().with_query(application_name=MAINTENANCE_APP).to_sqlalchemy(),
                pool_size=1,
                max_overflow=2,
                isolation_level="AUTOCOMMIT",
                execution_options=INTERNAL_OPTIONS,
            )
        )
        discard_dead_connections(engine)
        _shared_admins[key] = engine
    return engine


_parked: dict[str, Engine] = {}


def park_engine(url: DatabaseURL, engine: Engine) -> None:
    """Keep the engine that built the schema in the worker's own database, with its connection,
    for the tests' connection source on that URL: an engine and a connection (TCP, SCRAM and
    SQLAlchemy's first-connect queries) fewer for a single-process run."""
    previous = _parked.pop(url.sync().portable(), None)
    _parked[url.sync().portable()] = engine
    if previous is not None:
        previous.dispose()


def take_parked_engine(url: DatabaseURL) -> Engine | None:
    """The engine parked for ``url`` (now the caller's to dispose), or None."""
    return _parked.pop(url.sync().portable(), None)


def release_parked_engines() -> None:
    """Dispose parked engines nobody took: called once the first test's fixtures are set up, so
    an idle connection of dbguard's own does not sit on the test database all run (where a
    test counts the database's connections, or terminate() ends them)."""
    while _parked:
        _parked.popitem()[1].dispose()


def dispose_own_engines() -> None:
    """At the end of the run: close the shared maintenance engines and parked engines nobody
    took (the tests reached the database through the fault proxy, on another URL). The kept
    and shared driver connections are :func:`pytest_dbguard.db.maintenance.close_shared`'s."""
    while _shared_admins:
        _shared_admins.popitem()[1].dispose()
    release_parked_engines()


def engine_for(url: DatabaseURL, **kwargs: Any) -> Engine:
    """A sync engine of dbguard's own on ``url`` (its connections and commits are not the tests');
    SQLite gets the documented fix that makes SAVEPOINT work with pysqlite."""
    from sqlalchemy import create_engine

    engine = mark_own(create_engine(url.sync().to_sqlalchemy(), **kwargs))
    if url.is_sqlite:
        sqlite_savepoints(engine)
    return engine


def discard_dead_connections(engine: Engine) -> None:
    """Disconnect handling without pool_pre_ping's round trip per checkout.

    A pooled connection that the server has closed (a terminated backend, a restart, a cut) has a
    readable socket while idle: the server's last message, or end of file. At checkout such a
    connection, or one closed on our side, raises SQLAlchemy's ``DisconnectionError``, and the
    pool discards it and connects anew (SQLAlchemy's documented pessimistic-handling hook).
    """
    from sqlalchemy import event, exc

    @event.listens_for(engine, "checkout")
    def _discard_if_dead(dbapi_connection: Any, _record: object, _proxy: object) -> None:
        if looks_dead(dbapi_connection):
            raise exc.DisconnectionError("the server closed this pooled connection")


def sqlite_savepoints(engine: Engine) -> None:
    """SQLAlchemy's documented fix that lets SQLite drivers nest SAVEPOINTs in a transaction:
    the driver's own transaction handling off, BEGIN emitted by SQLAlchemy. For an AsyncEngine
    pass its ``sync_engine``."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _no_driver_transactions(dbapi_connection: Any, _record: object) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _explicit_begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN")

"""One proven connection to the server's database, kept open for the maintenance work next.

Before its first test a run used to connect to the server's own database three times: the role
check (may this role create databases?), the readiness check, then the maintenance engine that
creates the worker's database; each is a TCP and SCRAM handshake, the engine's with SQLAlchemy's
first-connect queries on top (``python benchmarks/ci_path.py --only p``). Now the check that
connects first keeps its connection here; the readiness check proves the server ready with
``SELECT 1`` on it, and it becomes the run's maintenance connection
(:func:`pytest_dbguard.db.maintenance.shared`). Such a connection is opened the way a
maintenance connection is: psycopg or psycopg2 only, its application name, autocommit.

One per URL and process, closed by :func:`close_all` at the end of the run if nobody took it.
Works without pytest.
"""

from __future__ import annotations

import contextlib
import select
import threading
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from pytest_dbguard.db.urls import DatabaseURL

# The application_name of dbguard's maintenance connections: terminate() spares them in schema
# mode, where they are on the database the tests share.
MAINTENANCE_APP: Final = "pytest-dbguard maintenance"

# Per URL: the connection, and how long opening it and its first answer took (in ms).
_kept: dict[str, tuple[Any, float]] = {}
_lock = threading.Lock()  # readiness attempts run in threads


def key(url: DatabaseURL) -> str:
    """Which connections count as one: the sync URL without the query parameters that only
    change how it connects (a timeout, the application name dbguard sets itself)."""
    return url.sync().without_query("connect_timeout", "application_name").portable()


def keep(url: DatabaseURL, connection: Any, *, opened_ms: float = 0.0) -> None:
    """Keep ``connection`` (open, idle, autocommit) for the next user of ``url``'s database;
    ``opened_ms``: how long it took to connect and answer, for a readiness check proven on it."""
    with _lock:
        previous = _kept.pop(key(url), None)
        _kept[key(url)] = (connection, opened_ms)
    if previous is not None:
        close_quietly(previous[0])


def take(url: DatabaseURL) -> Any | None:
    """The connection kept for ``url``, now the caller's; None when there is none."""
    taken = take_timed(url)
    return None if taken is None else taken[0]


def take_timed(url: DatabaseURL) -> tuple[Any, float] | None:
    """:func:`take`, with the time the connection took to connect and answer (ms)."""
    with _lock:
        return _kept.pop(key(url), None)


def close_all() -> None:
    """Close every connection nobody took (the end of the run)."""
    with _lock:
        left = list(_kept.values())
        _kept.clear()
    for connection, _ in left:
        close_quietly(connection)


def close_quietly(connection: Any) -> None:
    """Close a DBAPI connection that may already be broken."""
    with contextlib.suppress(Exception):  # already broken: nothing to release
        connection.close()


def looks_dead(dbapi_connection: Any) -> bool:
    """Whether a DBAPI connection is closed, or its idle socket has something to read (the
    server's goodbye, or end of file)."""
    if getattr(dbapi_connection, "closed", False):  # psycopg: True; psycopg2: a non-zero int
        return True
    try:
        descriptor = dbapi_connection.fileno()
    except Exception:  # a driver that cannot say, or a connection already broken
        return True
    poller = select.poll()
    poller.register(descriptor, select.POLLIN | select.POLLERR | select.POLLHUP)
    return bool(poller.poll(0))  # nothing is due on an idle connection

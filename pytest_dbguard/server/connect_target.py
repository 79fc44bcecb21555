"""How a check connects: the URL turned into the driver's own connect arguments, the driver
imported once, and the server's version read from a connection without a round trip.

For psycopg and psycopg2 URLs the arguments are built here (SQLAlchemy's dialect only passes the
URL's parts and query on as keywords), so an early check does not import SQLAlchemy: in the
xdist controller the role check (``dbguard_worker_isolation = auto``) runs before any worker is
started, and the import cost a quarter second.
Other drivers get their arguments from SQLAlchemy's dialect, which never connects for it.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from pytest_dbguard.db.urls import DatabaseURL, driver_installed
from pytest_dbguard.exceptions import ConfigError
from pytest_dbguard.server.handover import MAINTENANCE_APP

if TYPE_CHECKING:
    from sqlalchemy.engine import Dialect

DEFAULT_PORT: Final = 5432


class ConnectTarget:
    """The database one check is about: its sync URL, what to print, and how to connect to it."""

    def __init__(self, url: str | DatabaseURL) -> None:
        parsed = url if isinstance(url, DatabaseURL) else DatabaseURL.parse(url)
        self.url = sync_twin(parsed)
        self.shown = parsed.render(hide_password=True)
        self.password = parsed.password
        self.database = parsed.database
        self.is_sqlite = parsed.is_sqlite
        self.host = None if self.is_sqlite else parsed.host
        self.port = None if self.is_sqlite else (parsed.port or DEFAULT_PORT)
        if not self.is_sqlite and self.url.driver and not driver_installed(self.url.driver):
            raise ConfigError(
                f"{self.shown}: the driver {self.url.driver!r} is not installed; install it "
                "(pip install 'pytest-dbguard[postgres]') or name an installed one in the URL."
            )
        self._dbapi: Any = None  # the driver module, once imported
        self._connect: Callable[..., Any] | None = None
        self._cargs: tuple[Any, ...] = ()
        self._cparams: dict[str, Any] = {}

    @property
    def resolvable_host(self) -> str | None:
        """The host name to resolve first; None for SQLite and unix sockets."""
        if not self.host or self.host.startswith(("/", "@")):
            return None
        return self.host

    def prepare(self) -> None:
        """Import the driver and turn the URL into connect arguments, once; SQLAlchemy only for
        a URL whose arguments its dialect alone knows how to build."""
        if self._connect is not None:
            return
        plain = plain_connect_args(self.url)
        if plain is not None:
            assert self.url.driver is not None
            self._dbapi = importlib.import_module(self.url.driver)
            self._connect, self._cparams = self._dbapi.connect, plain
            return
        from sqlalchemy import create_engine
        from sqlalchemy.pool import NullPool

        engine = create_engine(self.url.to_sqlalchemy(), poolclass=NullPool)  # never connects
        cargs, cparams = engine.dialect.create_connect_args(engine.url)
        self._cargs, self._cparams = tuple(cargs), dict(cparams)
        dialect: Dialect = engine.dialect
        self._dbapi, self._connect = dialect.loaded_dbapi, dialect.connect

    def connect(self, limit: float, *, maintenance: bool = False) -> Any:
        """A new DBAPI connection, opened the way an engine opens one; ``maintenance``: opened
        the way dbguard's maintenance engine opens its own (its application name, autocommit),
        so that engine can take it over (:mod:`pytest_dbguard.server.handover`)."""
        self.prepare()
        assert self._connect is not None
        params = dict(self._cparams)
        if not self.is_sqlite:  # libpq counts whole seconds; the attempt's own timer is exact
            params["timeout" if self.url.driver == "pg8000" else "connect_timeout"] = max(
                1, math.ceil(limit)
            )
        if maintenance and self.can_hand_over:
            params["application_name"] = MAINTENANCE_APP
        connection = self._connect(*self._cargs, **params)
        if maintenance and self.can_hand_over:
            connection.autocommit = True  # psycopg and psycopg2 alike; what the engine would set
        return connection

    @property
    def can_hand_over(self) -> bool:
        """Whether a connection of this target is opened with exactly the arguments SQLAlchemy's
        dialect would use (psycopg and psycopg2), so an engine may adopt it."""
        return plain_connect_args(self.url) is not None

    @property
    def dbapi(self) -> Any:
        """The driver module (PEP 249)."""
        self.prepare()
        return self._dbapi

    @property
    def dbapi_error(self) -> type[Exception]:
        """The driver's base exception class (PEP 249 ``Error``)."""
        error: type[Exception] = self.dbapi.Error
        return error


PLAIN_DRIVERS: Final = ("psycopg", "psycopg2")


def plain_connect_args(url: DatabaseURL) -> dict[str, Any] | None:
    """The keywords SQLAlchemy's psycopg and psycopg2 dialects pass to ``connect`` for ``url``
    (its parts, then its query); None for other drivers and for several hosts in the query,
    which only the dialect splits."""
    if url.is_sqlite or url.driver not in PLAIN_DRIVERS or any(k == "host" for k, _ in url.query):
        return None
    parts = {
        "host": url.host,
        "dbname": url.database,
        "user": url.username,
        "password": url.password,
        "port": url.port,
    }
    params: dict[str, Any] = {name: value for name, value in parts.items() if value}
    params.update(url.query)
    return params or None


def sync_twin(url: DatabaseURL) -> DatabaseURL:
    """The URL the check connects with: asyncpg's ``ssl`` query parameter becomes ``sslmode``."""
    sync = url.sync()
    if url.driver == "asyncpg" and any(key == "ssl" for key, _ in url.query):
        modes = {"true": "require", "false": "disable"}
        query = tuple(
            ("sslmode", modes.get(value.lower(), value)) if key == "ssl" else (key, value)
            for key, value in url.query
        )
        sync = sync.replace(query=query)
    return sync


def server_version(connection: Any, dbapi: Any) -> str | None:
    """The version the server announced at connect time (no extra round trip)."""
    number = getattr(getattr(connection, "info", None), "server_version", None)  # psycopg 3
    if number is None:
        number = getattr(connection, "server_version", None)  # psycopg2
    if isinstance(number, int) and number > 0:
        major, rest = divmod(number, 10000)
        return f"{major}.{rest}" if major >= 10 else f"{major}.{rest // 100}.{rest % 100}"
    sqlite_version = getattr(dbapi, "sqlite_version", None)
    return str(sqlite_version) if sqlite_version else None

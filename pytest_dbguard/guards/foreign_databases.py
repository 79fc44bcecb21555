"""Test databases only: while a test runs, a connection to any other PostgreSQL database is refused.

``ForeignDatabaseGuard`` works without pytest. One ``do_connect`` listener on the ``Engine`` class
sees every new DBAPI connection of every engine, sync or behind an ``AsyncEngine``, with the
arguments the dialect will pass to the driver (psycopg and psycopg2: ``host``, ``port``,
``dbname``; asyncpg: ``host``, ``port``, ``database``; the URL's query merged in). It runs when a
pool opens a connection, never per statement, and refuses before the driver is called, so not a
byte reaches the other database. A connection string in ``connect_args`` (``conninfo``, ``dsn``)
counts under the keywords. An engine made with ``creator=`` connects without that event: its
connections are checked at their first use, by where the driver says they went (psycopg and
psycopg2), and closed before a statement runs. dbguard's own engines (maintenance, fixtures,
cleanup) are exempt: their dialects are registered by ``engine_listener.mark_own``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from pytest_dbguard.compat import record_dialect
from pytest_dbguard.db.engine_listener import EngineListener, is_own
from pytest_dbguard.db.names import is_dbguard_name
from pytest_dbguard.db.urls import NO_ENVIRONMENT_DRIVERS, DatabaseURL, server_pattern
from pytest_dbguard.exceptions import ForeignDatabaseError
from pytest_dbguard.records import Record
from pytest_dbguard.server.connect_target import DEFAULT_PORT

if TYPE_CHECKING:
    from sqlalchemy.engine import Dialect

LOCAL: Final = "local"  # loopback names and unix sockets: this machine's server on that port
_LOOPBACK: Final = frozenset({"localhost", "127.0.0.1", "::1", "ip6-localhost", "ip6-loopback"})

FOREIGN_MESSAGE: Final = (
    "{where} tried to connect to the database {database!r} on {server}, which is not one of "
    "this run's test databases ({own}); {refused}. If the application read its database URL before dbguard set the test environment "
    "(settings imported at the top of conftest.py with the `pytest_plugins` opt-in), activate "
    "dbguard with `-p pytest_dbguard` instead (on the command line, in addopts or "
    "PYTEST_PLUGINS). Point the application's variable at the test database with ini "
    "dbguard_env, e.g. DATABASE_URL={{url}}.{allow}"
)
ALLOW_BY_NAME: Final = (
    " If the test is meant to reach this database, allow it: "
    "@pytest.mark.dbguard(allow=[{database!r}]) on the test, or ini "
    "dbguard_allow_databases = {database}."
)

# Added when the database is on the embedded server that dbguard started for the run and not
# of dbguard's naming: the tests made it (a database per test). Never on an external server,
# which may hold the developer's own databases that the guard is there to keep tests out of.
OWN_SERVER_HINT: Final = (
    " It is on the PostgreSQL server dbguard started for this run, so the tests made it: if "
    "they create databases of their own (a database per test, made and dropped by the suite's "
    "helpers), allow every database on the run's server: ini dbguard_allow_databases = "
    "postgresql://{host}:{port} (the placeholders name that server, whose port is new each run)."
)

DERIVED_NAME: Final = (
    " Its name is the test database's ({own!r}) with a suffix, and holds the run's id, which is "
    "new each run: no entry naming it would admit the next run's; allow the server it is on."
)

REFUSED: Final = "dbguard refused the connection, so nothing reached that database"
# An engine with creator= connects without asking SQLAlchemy first: caught at its first use.
CLOSED: Final = (
    "dbguard closed the connection (opened by the engine's creator) before its first statement, "
    "so nothing was read or written there"
)


def _host_key(host: str | None) -> str:
    """Hosts that reach the same server compare equal: loopback names and unix sockets are local."""
    if not host or host.startswith(("/", "@")):
        return LOCAL
    lowered = host.strip("[]").lower()
    return LOCAL if lowered in _LOOPBACK or lowered.startswith("127.") else lowered


def _environ(name: str, read: bool) -> str | None:
    return os.environ.get(name) if read else None


def _port(value: Any, read_environment: bool = True) -> int:
    if value in (None, ""):
        value = _environ("PGPORT", read_environment) or ""
    text = str(value).strip()
    return int(text) if text.isdigit() else DEFAULT_PORT


class Target(Record):
    """A database on a server, as the driver will reach it; ``database`` None: any on the server."""

    __slots__ = ("database", "host", "port", "shown_host")
    host: str  # compared through _host_key
    port: int
    database: str | None
    shown_host: str  # how messages name the host; not compared

    def __init__(self, host: str, port: int, database: str | None, shown_host: str = "") -> None:
        self._set_from(locals())

    def _compared(self) -> tuple[str, int, str | None]:  # not shown_host
        return self.host, self.port, self.database

    @classmethod
    def make(
        cls, host: str | None, port: Any, database: str | None, *, read_environment: bool = True
    ) -> Target:
        """``read_environment`` False: a driver that does not read PGHOST and PGPORT (pg8000),
        whose missing host is localhost."""
        host = (
            host
            or _environ("PGHOST", read_environment)
            or (None if read_environment else "localhost")
        )
        shown = host or "the local socket"
        return cls(_host_key(host), _port(port, read_environment), database, shown)

    @classmethod
    def from_params(
        cls, cparams: Mapping[str, Any], cargs: Sequence[Any] = (), *, driver: str | None = None
    ) -> Target:
        """The target of a driver's connect arguments, with libpq's defaults for what is missing
        (not for ``driver`` pg8000, which reads none of libpq's variables).

        A connection string (``connect_args={"conninfo": ...}`` for psycopg, ``{"dsn": ...}``
        for psycopg2, or a positional one) counts, under the keywords, which win as in libpq."""
        read = driver not in NO_ENVIRONMENT_DRIVERS
        conninfo = cparams.get("conninfo") or cparams.get("dsn")
        if not conninfo and cargs and isinstance(cargs[0], str):
            conninfo = cargs[0]
        if isinstance(conninfo, str) and conninfo:
            parsed = {k: v for k, v in _conninfo_params(conninfo).items() if k not in cparams}
            cparams = {**parsed, **cparams}
        host = cparams.get("host")
        if isinstance(host, (list, tuple)):  # asyncpg with several hosts
            host = ",".join(str(part) for part in host)
        database = cparams.get("dbname") or cparams.get("database") or _environ("PGDATABASE", read)
        if not database:  # the server's default: the user's name
            user = cparams.get("user")
            database = libpq_user(user) if read else (user or login_name())
        port = cparams.get("port")
        if isinstance(port, (list, tuple)):
            port = port[0] if port else None
        return cls.make(str(host) if host else None, port, str(database), read_environment=read)

    @classmethod
    def from_url(cls, url: DatabaseURL) -> Target:
        """The target of a URL; its query's ``host``/``port`` win, as they do for the drivers."""
        query = dict(url.query)
        return cls.make(query.get("host") or url.host, query.get("port") or url.port, url.database)

    @property
    def server(self) -> str:
        return f"{self.shown_host}:{self.port}"

    def covers(self, other: Target) -> bool:
        """Whether ``other`` is this database (or, with no database named, on this server)."""
        return (
            self.host == other.host
            and self.port == other.port
            and (self.database is None or self.database == other.database)
        )


def _conninfo_params(conninfo: str) -> dict[str, Any]:
    """A libpq connection string (``key=value …`` or a ``postgresql://`` URI) as keywords, read
    by the installed driver's own parser; empty when neither psycopg nor psycopg2 is there."""
    try:
        from psycopg.conninfo import conninfo_to_dict

        return dict(conninfo_to_dict(conninfo))
    except ImportError:
        pass
    try:
        from psycopg2.extensions import parse_dsn  # type: ignore[import-untyped,unused-ignore]

        return dict(parse_dsn(conninfo))
    except ImportError:
        return {}


def target_of_connection(driver_connection: Any) -> Target | None:
    """Where an open psycopg or psycopg2 connection went (its ``info``); None for other drivers."""
    info = getattr(driver_connection, "info", None)
    dbname = getattr(info, "dbname", None)
    if not isinstance(dbname, str):
        return None
    return Target.make(getattr(info, "host", None), getattr(info, "port", None), dbname)


# NamedTuples, not frozen dataclasses: every run defines them (see the package docstring).
class AllowList(NamedTuple):
    """Databases a connection may reach: by name on any server, or by URL (a server's, or one database)."""

    names: frozenset[str] = frozenset()
    targets: tuple[Target, ...] = ()
    everything: bool = False  # the entry '*': the guard stands aside

    @classmethod
    def of(
        cls,
        entries: Iterable[str],
        *,
        source: str = "dbguard_allow_databases",
        servers: Sequence[Target] = (),
    ) -> AllowList:
        """Entries are database names, URLs, or ``*`` for any database; a URL with ``{host}``
        and ``{port}`` names each of ``servers`` (the run's own, as the guard compares them: a
        socket or an IPv6 address too). A malformed URL raises ConfigError naming ``source``."""
        names: set[str] = set()
        targets: list[Target] = []
        everything = False
        for entry in entries:
            if entry == "*":
                everything = True
            elif (pattern := server_pattern(entry, source)) is not None:
                targets.extend(
                    Target(own.host, own.port, pattern.database, own.shown_host) for own in servers
                )
            elif "://" not in entry:
                names.add(entry)
            else:
                targets.append(Target.from_url(DatabaseURL.parse(entry, source=source)))
        return cls(frozenset(names), tuple(targets), everything)

    def __or__(self, other: AllowList) -> AllowList:
        return AllowList(
            self.names | other.names,
            self.targets + other.targets,
            self.everything or other.everything,
        )

    def admits(self, target: Target) -> bool:
        return (
            self.everything
            or target.database in self.names
            or any(t.covers(target) for t in self.targets)
        )


NOTHING_ELSE: Final = AllowList()  # one shared empty list: most tests allow nothing more


class ForeignDatabaseGuard(EngineListener):
    """Refuses, at connect, every PostgreSQL connection outside the allowed databases while armed."""

    EVENT = "do_connect"
    RETVAL = False

    def __init__(
        self,
        test_databases: Iterable[Target],
        *,
        allowed: AllowList = NOTHING_ELSE,
        server_is_ours: bool = False,
    ):
        self.test_databases = tuple(test_databases)
        self.allowed = allowed  # the run's dbguard_allow_databases
        # The embedded server, started for this run: nothing of the user's lives there, so a
        # database on it that dbguard did not name was made by the tests themselves.
        self.server_is_ours = server_is_ours
        self.where: object = None  # the test running now (its str() is shown); None: not armed
        self.also: AllowList = NOTHING_ELSE  # the running test's own allow=[...]
        self._creators = CreatorConnections(self)  # connections that skip do_connect

    def arm(self, where: object, also: AllowList | None = None) -> None:
        """Check connections from now on, naming ``where`` in the error."""
        self.where, self.also = where, also or NOTHING_ELSE

    def disarm(self) -> None:
        """Stop checking (between tests)."""
        self.where, self.also = None, NOTHING_ELSE

    def check(self, target: Target, *, opened: bool = False) -> None:
        """Raise ForeignDatabaseError unless ``target`` is a test database or allowed;
        ``opened``: the connection already exists (and is closed by the caller)."""
        __tracebackhide__ = True
        if any(own.covers(target) for own in self.test_databases):
            return
        if self.allowed.admits(target) or self.also.admits(target):
            return
        if self.test_databases:
            own = self.test_databases[0]
            mine = f"this worker's is {own.database!r} on {own.server}"
        else:
            mine = "this run's test databases are SQLite files"
        # The test database's name and a suffix (jupyterhub's "<db>_upgrade_546"): the tests'
        # own, with this run's id in it, unlike another worker's database or the template.
        derived = next(
            (
                own.database
                for own in self.test_databases
                if own.database
                and is_dbguard_name(own.database)  # not the user's own, in schema mode
                and (target.database or "").startswith(f"{own.database}_")
            ),
            None,
        )
        made_by_the_tests = (
            self.server_is_ours
            and any(
                own.host == target.host and own.port == target.port for own in self.test_databases
            )
            and (derived is not None or not is_dbguard_name(target.database or ""))
        )
        raise ForeignDatabaseError(
            FOREIGN_MESSAGE.format(
                where=self.where or "the code under test",
                database=target.database,
                server=target.server,
                own=mine,
                refused=CLOSED if opened else REFUSED,
                allow=(
                    DERIVED_NAME.format(own=derived)
                    if derived is not None
                    else ALLOW_BY_NAME.format(database=target.database)
                ),
            )
            + (OWN_SERVER_HINT if made_by_the_tests else "")
        )

    def _handler(self) -> Callable[..., Any]:
        return self._on_connect

    def _on_connect(
        self, dialect: Dialect, record: object, cargs: list[Any], cparams: dict[str, Any]
    ) -> None:
        __tracebackhide__ = True
        if self.where is None or dialect.name != "postgresql" or is_own(dialect):
            return  # None: SQLAlchemy goes on to connect as usual
        self.check(Target.from_params(cparams, cargs, driver=dialect.driver))

    def install(self) -> None:
        """Start checking new connections, those of engines with a ``creator`` too."""
        super().install()
        self._creators.install()

    def remove(self) -> None:
        super().remove()
        self._creators.remove()


class CreatorConnections(EngineListener):
    """An engine made with ``creator=`` (or ``async_creator=``) opens its connections without
    ``do_connect``: every new connection is checked once opened, by where the driver says it
    went (psycopg and psycopg2), and closed and refused when foreign, before any statement.

    The pool's ``connect`` event, not an engine event: a connection-level listener would send
    every statement of every engine through SQLAlchemy's event path."""

    EVENT = "connect"
    RETVAL = False

    def __init__(self, guard: ForeignDatabaseGuard) -> None:
        self.guard = guard

    def _handler(self) -> Callable[..., Any]:
        return self._on_pool_connect

    def _on_pool_connect(self, dbapi_connection: Any, connection_record: Any) -> None:
        __tracebackhide__ = True
        if self.guard.where is None:
            return  # opened between tests
        dialect = record_dialect(connection_record)
        if dialect is None or dialect.name != "postgresql" or is_own(dialect):
            return
        driver = getattr(dbapi_connection, "driver_connection", dbapi_connection)  # async: adapted
        target = target_of_connection(driver)
        if target is None:
            return
        try:
            self.guard.check(target, opened=True)
        except ForeignDatabaseError:
            dbapi_connection.close()
            raise


def libpq_user(user: str | None) -> str:
    """The role a connection logs in as: ``user``, else libpq's defaults (``PGUSER``, then the
    OS user's name)."""
    return user or os.environ.get("PGUSER") or login_name()


def login_name() -> str:
    """The OS user's name, libpq's last default for the database. ``getpass`` (and ``termios``
    with it) is imported only here: every run that runs tests imports this module, ~1.3M
    instructions for a default that few connections reach."""
    import getpass

    return getpass.getuser()

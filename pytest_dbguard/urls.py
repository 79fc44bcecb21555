"""Database URLs without importing SQLAlchemy: parse, derive worker names, swap drivers, hide passwords.

The early environment hook runs before any conftest and must stay cheap, so this module parses
SQLAlchemy-style URLs itself (the same grammar as ``sqlalchemy.engine.make_url``) instead of
importing SQLAlchemy, which costs a few hundred milliseconds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import re
from collections.abc import Mapping
from urllib.parse import parse_qsl, quote, unquote, urlencode

from pytest_dbguard.exceptions import ConfigError

# Same shape as SQLAlchemy's URL pattern: name[+driver]://[user[:password]@][host[:port]][/database][?query]
_URL_PATTERN = re.compile(
    r"""
    ^(?P<backend>[a-z][\w]*)(?:\+(?P<driver>[\w]+))?://
    (?:(?P<username>[^:/@]*)(?::(?P<password>[^@]*))?@)?
    (?:\[(?P<ipv6>[^/?]+)\]|(?P<host>[^/?:]*))?
    (?::(?P<port>[^/?]*))?
    (?:/(?P<database>[^?]*))?
    (?:\?(?P<query>.*))?$
    """,
    re.X,
)

SYNC_DRIVERS = ("psycopg", "psycopg2")
ASYNC_DRIVERS = ("asyncpg", "psycopg")
KNOWN_DRIVERS: Mapping[str, tuple[str, ...]] = {
    "postgresql": ("psycopg", "psycopg2", "asyncpg", "psycopg_async", "psycopg2cffi", "pg8000"),
    "sqlite": ("pysqlite", "aiosqlite"),
}
# The module each driver name needs, to pick one that is installed.
_DRIVER_MODULES: Mapping[str, str] = {
    "psycopg": "psycopg",
    "psycopg_async": "psycopg",
    "psycopg2": "psycopg2",
    "asyncpg": "asyncpg",
    "pysqlite": "sqlite3",
    "aiosqlite": "aiosqlite",
    "pg8000": "pg8000",
    "psycopg2cffi": "psycopg2cffi",
}
MAX_IDENTIFIER = 63  # PostgreSQL truncates longer names silently; we never let it.


def driver_installed(driver: str) -> bool:
    """Whether the module behind a SQLAlchemy driver name can be imported."""
    return importlib.util.find_spec(_DRIVER_MODULES.get(driver, driver)) is not None


@dataclasses.dataclass(frozen=True)
class DatabaseURL:
    """A parsed SQLAlchemy URL; immutable, with helpers for the variants dbguard needs."""

    backend: str
    driver: str | None = None
    username: str | None = None
    password: str | None = None
    host: str | None = None
    port: int | None = None
    database: str | None = None
    query: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, text: str, *, source: str = "URL") -> DatabaseURL:
        """Parse ``text``; a malformed URL or an unknown driver raises ConfigError naming ``source``."""
        authority = re.split(r"[/?]", text.strip().partition("://")[2], maxsplit=1)[0]
        if authority.count("@") > 1:
            # Parsed as is, the password's tail would become the host and show up in messages.
            raise ConfigError(
                f"{source}: {hide_password_in(text)!r} has more than one '@' before the host: a "
                "user name or password that contains '@' (or ':' '/' '?' '#' '%') must be "
                "URL-encoded, '@' as %40, e.g. 'postgresql://user:p%40ss@host:5432/db' "
                "(urllib.parse.quote(password, safe='') does it)."
            )
        match = _URL_PATTERN.match(text.strip())
        if match is None:
            raise ConfigError(
                f"{source}: {hide_password_in(text)!r} is not a database URL. Expected "
                "'postgresql+psycopg://user:password@host:5432/dbname' or 'sqlite:///path.db'."
            )
        parts = match.groupdict()
        backend = parts["backend"]
        if backend == "postgres":
            backend = "postgresql"
        if backend not in KNOWN_DRIVERS:
            raise ConfigError(
                f"{source}: {hide_password_in(text)!r} names the database {backend!r}; "
                f"pytest-dbguard supports {', '.join(sorted(KNOWN_DRIVERS))}."
            )
        driver = parts["driver"]
        if driver is not None and driver not in KNOWN_DRIVERS[backend]:
            raise ConfigError(
                f"{source}: {hide_password_in(text)!r} names the unknown driver {driver!r} for "
                f"{backend}; use one of {', '.join(KNOWN_DRIVERS[backend])} "
                f"(e.g. '{backend}+{KNOWN_DRIVERS[backend][0]}://...')."
            )
        port_text = parts["port"]
        port: int | None = None
        if port_text:
            if not port_text.isdigit() or not 0 < int(port_text) < 65536:
                raise ConfigError(
                    f"{source}: {hide_password_in(text)!r} has the port {port_text!r}; "
                    "a port is a number from 1 to 65535."
                )
            port = int(port_text)
        host = parts["ipv6"] or parts["host"] or None
        return cls(
            backend=backend,
            driver=driver,
            username=unquote(parts["username"]) if parts["username"] else None,
            password=unquote(parts["password"]) if parts["password"] is not None else None,
            host=unquote(host) if host else None,
            port=port,
            database=unquote(parts["database"]) if parts["database"] else None,
            query=tuple(parse_qsl(parts["query"] or "", keep_blank_values=True)),
        )

    @property
    def is_sqlite(self) -> bool:
        """Whether this names a SQLite database."""
        return self.backend == "sqlite"

    def render(self, *, hide_password: bool = True) -> str:
        """The URL as text; the password shows as ``***`` unless asked for."""
        scheme = self.backend + (f"+{self.driver}" if self.driver else "")
        auth = ""
        if self.username is not None:
            auth = quote(self.username, safe="")
            if self.password is not None:
                auth += ":" + ("***" if hide_password else quote(self.password, safe=""))
            auth += "@"
        host = self.host or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{self.port}" if self.port else ""
        database = ""
        if self.is_sqlite and self.database is not None:
            database = f"/{self.database}"  # sqlite:///relative or sqlite:////absolute
        elif self.database is not None:  # '%', '?', '#', '/' and spaces must not end the name
            database = "/" + quote(self.database, safe="")
        query = f"?{urlencode(self.query)}" if self.query else ""
        return f"{scheme}://{auth}{host}{port}{database}{query}"

    def __str__(self) -> str:
        return self.render(hide_password=True)

    def __repr__(self) -> str:  # tracebacks, -l locals and reprs of objects holding one
        return f"DatabaseURL({self.render(hide_password=True)!r})"

    def with_database(self, database: str) -> DatabaseURL:
        """The same server, another database."""
        return dataclasses.replace(self, database=database)

    def with_driver(self, driver: str | None) -> DatabaseURL:
        """The same database through another driver."""
        return dataclasses.replace(self, driver=driver)

    def with_query(self, **params: str) -> DatabaseURL:
        """The URL with query parameters added or replaced."""
        merged = dict(self.query)
        merged.update(params)
        return dataclasses.replace(self, query=tuple(merged.items()))

    def libpq(self) -> DatabaseURL:
        """This database as a libpq URL (``postgres://user:pass@host:port/db``): the form
        dj-database-url and django-environ read, which reject SQLAlchemy's ``+driver``."""
        return (
            dataclasses.replace(self, backend="postgres", driver=None)
            if not self.is_sqlite
            else self
        )

    def sync(self) -> DatabaseURL:
        """This database through a synchronous driver that is installed."""
        if self.is_sqlite:
            return self.with_driver(None)
        if self.driver in SYNC_DRIVERS or self.driver in ("pg8000", "psycopg2cffi"):
            return self
        if self.driver == "psycopg_async":
            return self.with_driver("psycopg")
        return self.with_driver(_first_installed(SYNC_DRIVERS) or "psycopg")

    def asynchronous(self) -> DatabaseURL:
        """This database through an asynchronous driver that is installed."""
        if self.is_sqlite:
            return self.with_driver("aiosqlite")
        if self.driver in ("asyncpg", "psycopg", "psycopg_async"):
            return self
        return self.with_driver(_first_installed(ASYNC_DRIVERS) or "asyncpg")

    def resolved(self) -> DatabaseURL:
        """The URL with an explicit driver: a bare ``postgresql://`` gets one that is installed."""
        if self.driver is not None or self.is_sqlite:
            return self
        return self.with_driver(_first_installed(SYNC_DRIVERS) or "psycopg")


def _first_installed(drivers: tuple[str, ...]) -> str | None:
    return next((name for name in drivers if driver_installed(name)), None)


class SecretURL(str):
    """A URL string that connects with its password but shows ``***`` in reprs (tracebacks, -l locals)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return repr(hide_password_in(str.__str__(self)))


def hide_password_in(text: str) -> str:
    """Mask the password of a URL-looking string that may not even parse."""
    # Up to the last '@' before the path: a raw '@' in the password must not leave its tail visible.
    return re.sub(r"(://[^:/@]*:)[^/?]*@", r"\1***@", text)


def database_name(base: str, run: str, worker: str, *, suffix: str = "") -> str:
    """``<base>_dbg_<run>_<worker>``, shortening ``base`` so the name fits PostgreSQL's 63 bytes.

    A shortened base ends with a hash of the whole one, so two long names that differ only in
    their tails still give two databases (whole characters only: UTF-8 is never cut in half).
    """
    tail = f"_dbg_{run}_{worker}{suffix}"
    room = MAX_IDENTIFIER - len(tail.encode())
    if len(base.encode()) <= room:
        return f"{base}{tail}"
    digest = "_" + hashlib.sha1(base.encode()).hexdigest()[:6]
    trimmed = base.encode()[: room - len(digest)].decode(errors="ignore")
    return f"{trimmed}{digest}{tail}"


def is_dbguard_name(name: str) -> bool:
    """Whether a database name has the shape dbguard gives its own databases."""
    return re.search(r"_dbg_[0-9a-z]+_[\w]+$", name) is not None

"""Database URLs without importing SQLAlchemy: parse, derive worker names, swap drivers, hide passwords.

The early environment hook runs before any conftest and must stay cheap, so this module parses
SQLAlchemy-style URLs itself (the same grammar as ``sqlalchemy.engine.make_url``) instead of
importing SQLAlchemy, which costs a few hundred milliseconds.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final
from urllib.parse import parse_qsl, quote, unquote, urlencode

from pytest_dbguard.compat import sqlalchemy_decodes_database
from pytest_dbguard.config_errors import ConfigError
from pytest_dbguard.records import Record

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

SYNC_DRIVERS = ("psycopg", "psycopg2")
ASYNC_DRIVERS = ("asyncpg", "psycopg")
# Drivers that take nothing from libpq's variables (PGHOST, PGPORT, PGDATABASE, PGUSER): pg8000,
# pure Python, connects to localhost:5432 whatever PGPORT says (psycopg, psycopg2 and asyncpg read
# them).
NO_ENVIRONMENT_DRIVERS: Final = ("pg8000",)
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
_NO_QUESTION_MARK = (
    "The database name {database!r} contains '?', which a SQLAlchemy 2.0 URL cannot carry (its "
    "URLs end the database name at '?' and do not decode %3F; SQLAlchemy 2.1 does). Upgrade to "
    "SQLAlchemy 2.1 (pip install 'sqlalchemy>=2.1'), or name a database without '?' in "
    "--dbguard-url / DBGUARD_URL / ini dbguard_url."
)


def driver_installed(driver: str) -> bool:
    """Whether the module behind a SQLAlchemy driver name can be imported."""
    return importlib.util.find_spec(_DRIVER_MODULES.get(driver, driver)) is not None


class DatabaseURL(Record):
    """A parsed SQLAlchemy URL; immutable, with helpers for the variants dbguard needs.

    A :class:`~pytest_dbguard.records.Record`, not a frozen dataclass: every run imports this
    module, and a frozen dataclass compiles its generated methods from source at import (about
    5M instructions, ``benchmarks/ci_path.py``, c). Its own ``__repr__`` hides the password.
    """

    __slots__ = ("backend", "database", "driver", "host", "password", "port", "query", "username")
    backend: str
    driver: str | None
    username: str | None
    password: str | None
    host: str | None
    port: int | None
    database: str | None
    query: tuple[tuple[str, str], ...]

    def __init__(
        self,
        backend: str,
        driver: str | None = None,
        username: str | None = None,
        password: str | None = None,
        host: str | None = None,
        port: int | None = None,
        database: str | None = None,
        query: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self._set_from(locals())

    @classmethod
    def parse(cls, text: str, *, source: str = "URL") -> DatabaseURL:
        """Parse ``text``; a malformed URL or an unknown driver raises ConfigError naming ``source``."""
        if text.strip().partition("://")[2].count("@") > 1:
            # Parsed as is, the password's tail would become the host, a port or the database
            # (a raw '/' in it ends the host part) and show up in messages.
            raise ConfigError(
                f"{source}: {hide_password_of(text)!r} has more than one '@': a "
                "user name or password that contains '@' (or ':' '/' '?' '#' '%') must be "
                "URL-encoded, '@' as %40, e.g. 'postgresql://user:p%40ss@host:5432/db' "
                "(urllib.parse.quote(password, safe='') does it)."
            )
        parts = split_url(text.strip())
        if parts is None:
            raise ConfigError(
                f"{source}: {hide_password_of(text)!r} is not a database URL. Expected "
                "'postgresql+psycopg://user:password@host:5432/dbname' or 'sqlite:///path.db'."
            )
        backend = parts["backend"]
        assert backend is not None  # split_url names one whenever it splits
        if backend == "postgres":
            backend = "postgresql"
        if backend not in KNOWN_DRIVERS:
            raise ConfigError(
                f"{source}: {hide_password_of(text)!r} names the database {backend!r}; "
                f"pytest-dbguard supports {', '.join(sorted(KNOWN_DRIVERS))}."
            )
        driver = parts["driver"]
        if driver is not None and driver not in KNOWN_DRIVERS[backend]:
            raise ConfigError(
                f"{source}: {hide_password_of(text)!r} names the unknown driver {driver!r} for "
                f"{backend}; use one of {', '.join(KNOWN_DRIVERS[backend])} "
                f"(e.g. '{backend}+{KNOWN_DRIVERS[backend][0]}://...')."
            )
        port_text = parts["port"]
        port: int | None = None
        if port_text:
            if not port_text.isdigit() or not 0 < int(port_text) < 65536:
                raise ConfigError(
                    f"{source}: {hide_password_of(text)!r} has the port {port_text!r}; "
                    "a port is a number from 1 to 65535."
                )
            port = int(port_text)
        host = parts["ipv6"] or parts["host"] or None
        if backend == "postgresql" and host is None and _holds_user_info(parts["database"]):
            # One '/' too many: what was meant as user:password@host became the database name,
            # which a server's "does not exist" would show.
            raise ConfigError(
                f"{source}: {hide_password_of(text)!r} has no host, and its database name holds "
                "a user, a password and a host; write them right after '://', e.g. "
                "'postgresql://user:password@host:5432/db'."
            )
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
        """The URL as text that the installed SQLAlchemy reads back as this URL; the password
        shows as ``***`` unless asked for.

        SQLAlchemy 2.1 decodes a percent-encoded database name; 2.0 takes it as written and
        cannot carry a ``?`` in it at all, so for 2.0 the name is written raw, and the connectable
        text of a name with ``?`` is a ConfigError (dbguard's own engines take ``to_sqlalchemy``).
        """
        plain_name = self.is_sqlite or quote(self.database or "", safe="") == (self.database or "")
        # Only a name that encoding would change needs the installed SQLAlchemy's reading, and
        # asking for it reads package metadata (milliseconds at every run's start).
        encoded = plain_name or sqlalchemy_decodes_database()
        if not encoded and not hide_password and "?" in (self.database or ""):
            raise ConfigError(_NO_QUESTION_MARK.format(database=self.database))
        return self._text(hide_password=hide_password, encode_database=encoded)

    def portable(self) -> str:
        """The URL as RFC 3986 text, password included, that ``parse`` reads back exactly: how
        dbguard hands a URL to its own workers, whatever SQLAlchemy is installed."""
        return self._text(hide_password=False, encode_database=True)

    def _text(self, *, hide_password: bool, encode_database: bool) -> str:
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
        elif self.database is not None and encode_database:
            database = "/" + quote(self.database, safe="")  # '%', '?', '#', '/', spaces kept whole
        elif self.database is not None:
            database = "/" + self.database
        pairs = [
            (key, "***" if hide_password and key.lower() in QUERY_PASSWORD_KEYS else value)
            for key, value in self.query
        ]
        query = f"?{urlencode(pairs, safe='*')}" if pairs else ""
        return f"{scheme}://{auth}{host}{port}{database}{query}"

    def __str__(self) -> str:
        return self.render(hide_password=True)

    def to_sqlalchemy(self) -> URL:
        """This URL as SQLAlchemy's own URL object: no text to parse back, whatever the name holds."""
        from sqlalchemy.engine import URL

        return URL.create(
            self.backend + (f"+{self.driver}" if self.driver else ""),
            username=self.username,
            password=self.password,
            host=self.host,
            port=self.port,
            database=self.database,
            query=dict(self.query),
        )

    def __repr__(self) -> str:  # tracebacks, -l locals and reprs of objects holding one
        return f"DatabaseURL({self.render(hide_password=True)!r})"

    def passwords(self) -> tuple[str, ...]:
        """Every secret the URL carries: its password, and a ``password`` or ``sslpassword`` in
        its query string (libpq reads both), for output to mask."""
        given = [value for key, value in self.query if key.lower() in QUERY_PASSWORD_KEYS]
        return tuple(secret for secret in (self.password, *given) if secret)

    def with_database(self, database: str) -> DatabaseURL:
        """The same server, another database."""
        return self.replace(database=database)

    def with_driver(self, driver: str | None) -> DatabaseURL:
        """The same database through another driver."""
        return self.replace(driver=driver)

    def with_query(self, **params: str) -> DatabaseURL:
        """The URL with query parameters added or replaced."""
        merged = dict(self.query)
        merged.update(params)
        return self.replace(query=tuple(merged.items()))

    def without_query(self, *names: str) -> DatabaseURL:
        """The URL without the named query parameters."""
        return self.replace(query=tuple(p for p in self.query if p[0] not in names))

    def libpq(self) -> DatabaseURL:
        """This database as a libpq URL (``postgres://user:pass@host:port/db``): the form
        dj-database-url and django-environ read, which reject SQLAlchemy's ``+driver``."""
        return self.replace(backend="postgres", driver=None) if not self.is_sqlite else self

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


def _holds_user_info(database: str | None) -> bool:
    """``user:password@host...`` as a database name (``postgresql:///user:pw@host/db``)."""
    user_info, at, _ = (database or "").partition("@")
    return bool(at) and ":" in user_info


def split_url(text: str) -> dict[str, str | None] | None:
    """The parts of ``backend[+driver]://[username[:password]@][host or [ipv6]][:port][/database]
    [?query]``, None for a part that is absent, split as SQLAlchemy's URL pattern splits them
    (``tests/test_url_split.py`` holds that pattern and checks both agree); None when ``text``
    has not that shape, or holds a newline (``\\n``; the pattern took one inside a password).

    By hand, not by that pattern: compiling it costs 2.4M instructions in every process that
    parses a URL, the external server's path (``benchmarks/ci_path.py``, c).
    """
    scheme, found, rest = text.partition("://")
    backend, plus, driver = scheme.partition("+")
    if (
        not found
        or "\n" in text
        or not _is_word(backend)
        or backend[0] not in "abcdefghijklmnopqrstuvwxyz"
        or (plus and not _is_word(driver))
    ):
        return None
    parts: dict[str, str | None] = {"backend": backend, "driver": driver if plus else None}
    parts.update(dict.fromkeys(("username", "password", "ipv6", "host", "port", "database")))
    # [username[:password]@]: a username stops at ':', '/' or '@'; a password at the next '@'.
    stop = _first_of(rest, ":/@")
    if rest[stop : stop + 1] == "@":
        parts["username"], rest = rest[:stop], rest[stop + 1 :]
    elif rest[stop : stop + 1] == ":" and "@" in rest[stop + 1 :]:
        at = rest.index("@", stop + 1)
        parts["username"], parts["password"], rest = (
            rest[:stop],
            rest[stop + 1 : at],
            rest[at + 1 :],
        )
    # [ipv6] up to the last ']' (before any '/' or '?') that a port, path, query or the end
    # follows; else a host up to ':', '/' or '?'.
    if rest.startswith("["):
        close = rest.rfind("]", 0, _first_of(rest, "/?"))
        while close > 1 and rest[close + 1 : close + 2] not in ("", ":", "/", "?"):
            close = rest.rfind("]", 0, close)
        if close > 1:
            parts["ipv6"], rest = rest[1:close], rest[close + 1 :]
    if parts["ipv6"] is None:
        end = _first_of(rest, ":/?")
        parts["host"], rest = rest[:end], rest[end:]
    if rest.startswith(":"):
        end = _first_of(rest, "/?")
        parts["port"], rest = rest[1:end], rest[end:]
    if rest.startswith("/"):
        end = _first_of(rest, "?")
        parts["database"], rest = rest[1:end], rest[end:]
    parts["query"] = rest[1:] if rest else None  # what is left starts with '?'
    return parts


def _is_word(text: str) -> bool:
    """``\\w+`` as ``re`` reads it in a str: one or more letters, digits or '_' (Unicode)."""
    return bool(text) and all(char.isalnum() or char == "_" for char in text)


def _first_of(text: str, chars: str) -> int:
    """The index of the first of ``chars`` in ``text``; its length when none is there."""
    return min((index for index in map(text.find, chars) if index >= 0), default=len(text))


def _first_installed(drivers: tuple[str, ...]) -> str | None:
    return next((name for name in drivers if driver_installed(name)), None)


class SecretURL(str):
    """A URL string that connects with its password but shows ``***`` in reprs (tracebacks, -l
    locals), and keeps the DatabaseURL it was made from, so it is never parsed back."""

    __slots__ = ("url",)
    url: DatabaseURL

    def __new__(cls, url: DatabaseURL) -> SecretURL:
        made = super().__new__(cls, url.render(hide_password=False))
        made.url = url
        return made

    def __repr__(self) -> str:
        return repr(hide_password_of(str.__str__(self)))


def url_of(text: str, *, source: str = "URL") -> DatabaseURL:
    """The DatabaseURL behind a URL string: the one a SecretURL carries, else ``text`` parsed (a
    ``dbguard_url`` fixture overridden with a plain string still reaches every engine)."""
    return text.url if isinstance(text, SecretURL) else DatabaseURL.parse(text, source=source)


def hide_password_in(text: str) -> str:
    """Mask the password of each ``scheme://user:password@`` in a text (a driver's message)."""
    # Up to the last '@' of all: a raw '@', '/' or '?' in the password must not leave its tail
    # visible. Where an '@' comes later (a query value) this masks more than the password.
    return re.sub(r"(://[^:/@]*:).*@", r"\1***@", text, flags=re.DOTALL)


# As text: re compiles it on first use, not in every run's import.
_QUERY_PASSWORD: Final = r"([?&](?:ssl)?password=)[^&#]*"
QUERY_PASSWORD_KEYS: Final = ("password", "sslpassword")


def hide_password_of(url_text: str) -> str:
    """Mask the password of a string given as a URL (also one in its query string)."""
    return re.sub(_QUERY_PASSWORD, r"\1***", _hide_user_info_password(url_text), flags=re.I)


def _hide_user_info_password(url_text: str) -> str:
    """Mask the password of a string given as a URL, however malformed: what lies between the
    first ':' after its scheme's ``://`` and its last '@'; without a scheme before a ``://``
    (``user:pw@host/db``, ``postgresql:user:pw@host``, ``u:p://w@h``), between its first ':' and
    that '@', the user name hidden too."""
    at = url_text.rfind("@")
    if at < 0:
        return url_text
    scheme, found, _ = url_text[:at].partition("://")
    if found and _is_word(scheme.replace("+", "_")):
        colon = url_text.find(":", len(scheme) + 3, at)  # none: a user name and no password
    else:  # the '://' (if any) is in the password or the query
        colon = url_text.find(":", 0, at)
    if colon < 0:
        return url_text  # a user name and no password
    return f"{url_text[: colon + 1]}***{url_text[at:]}"


# An allow entry may name the run's own server, whose port an embedded server picks anew each
# run: ``postgresql://{host}:{port}`` (every database there) or ``.../name`` (one).
SERVER_PLACEHOLDERS: Final = ("{host}", "{port}")
NOT_A_SERVER_PATTERN: Final = (
    "{source}: {entry!r} {problem}; an allowed URL names the run's own server with both {{host}} "
    "and {{port}} and nothing else in braces, e.g. postgresql://{{host}}:{{port}} for every "
    "database there or postgresql://{{host}}:{{port}}/name for one."
)


NAME_WITH_BRACES: Final = (
    "{source}: {entry!r} is a database name with a placeholder, which is not filled in: a name "
    "is taken as written. A database the tests make with a name of their own (the test database's "
    "plus a suffix) is allowed with the run's own server, postgresql://{{host}}:{{port}} (every "
    "database there)."
)


def server_pattern(entry: str, source: str) -> DatabaseURL | None:
    """An allow entry that names the run's own server (``{host}`` and ``{port}``), parsed with a
    sample server to check it and read its database; None for an entry without braces.
    ConfigError naming ``source`` (the password hidden) for any other use of braces, in a name
    too (``{db}_archive``)."""
    if "://" not in entry:  # a name: only a placeholder-like part ({db}) is a mistake
        if re.search(r"\{[a-z_]+\}", entry):
            raise ConfigError(NAME_WITH_BRACES.format(source=source, entry=entry))
        return None
    if "{" not in entry and "}" not in entry:
        return None
    missing = [placeholder for placeholder in SERVER_PLACEHOLDERS if placeholder not in entry]
    rest = entry.replace("{host}", "").replace("{port}", "")
    if missing:
        problem = f"lacks {missing[0]}"
    elif "{" in rest or "}" in rest:
        problem = "has braces other than {host} and {port}"
    else:
        try:
            return DatabaseURL.parse(entry.replace("{host}", "localhost").replace("{port}", "5432"))
        except ConfigError:
            problem = "is not a database URL"
    shown = hide_password_of(entry)
    raise ConfigError(NOT_A_SERVER_PATTERN.format(source=source, entry=shown, problem=problem))

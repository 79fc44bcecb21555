"""Every error and warning pytest-dbguard raises, so callers can catch them by type."""

from __future__ import annotations

from collections.abc import Iterator

from pytest_dbguard.compat import PytestWarning  # pytest's, without importing pytest

# Defined apart, for the settings path every command imports (see that module).
from pytest_dbguard.config_errors import ConfigError as ConfigError
from pytest_dbguard.config_errors import DbguardError as DbguardError


class ServerError(DbguardError):
    """The embedded PostgreSQL server could not be found, initialised or started."""


class ReadinessError(DbguardError):
    """The database never answered a real query within the deadline."""


class DatabaseSetupError(DbguardError):
    """A test database or its template could not be created, cloned or dropped."""


class SchemaError(DbguardError):
    """The schema source (metadata or alembic) could not be loaded or applied."""


class SchemaDriftError(SchemaError):
    """The migrated schema differs from ``dbguard_metadata`` (``dbguard_check_schema = error``)."""


class EventLoopMismatchError(DbguardError):
    """An async dbguard fixture was used from an event loop other than the one that made it."""


class FaultError(DbguardError):
    """A fault could not be injected or undone, or the target did not recover."""


class GuardError(DbguardError):
    """A guard (naive datetimes, hidden modules, query counts) was misused."""


class NaiveDatetimeError(GuardError):
    """A naive datetime was bound as a statement parameter (``dbguard_naive_datetime = error``)."""


class ForeignDatabaseError(GuardError):
    """A test connected to a database that is not one of the run's test databases."""


class LeakError(GuardError):
    """A rollback test left committed rows behind (``dbguard_leaks = error``)."""


class GuardWarning(PytestWarning):
    """Base of the warnings dbguard's guards attach to a test."""


class NaiveDatetimeWarning(GuardWarning):
    """A naive datetime was bound as a statement parameter (``dbguard_naive_datetime = warn``)."""


class LeakWarning(GuardWarning):
    """A rollback test left committed rows behind (``dbguard_leaks = warn``)."""


class SchemaDriftWarning(PytestWarning):
    """The migrated schema differs from ``dbguard_metadata`` (``dbguard_check_schema = warn``)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: the run stops and cleans up as it does for Ctrl-C."""


def first_line(error: BaseException, password: str | None = None) -> str:
    """The first line of ``error``'s text (empty when it has none), with ``password`` shown as
    ``***``: what a one-line message quotes of a driver's or a migration's error."""
    line = (str(error).strip().splitlines() or [""])[0]
    return masked(line, password)


def brief(error: BaseException, password: str | None = None) -> str:
    """``Type: first line`` of ``error``, password hidden: how a one-line message names the
    driver's or the migration's error it reports."""
    return f"{type(error).__name__}: {first_line(error, password)}"


def sqlstate(error: BaseException | None) -> str | None:
    """The SQLSTATE of a driver's error (psycopg's and asyncpg's ``sqlstate``, psycopg2's
    ``pgcode``), also under SQLAlchemy's wrapper (``orig``); None for any other error."""
    for candidate in (getattr(error, "orig", None), error):
        code = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if code:
            return str(code)
    return None


def masked(text: str, password: str | None) -> str:
    """``text`` with ``password`` shown as ``***``, as typed and as a URL carries it (encoded:
    ``p%40ss`` for ``p@ss``)."""
    if not password:
        return text
    from urllib.parse import quote

    for form in (password, quote(password, safe="")):
        text = text.replace(form, "***")
    return text


def chain(error: BaseException) -> Iterator[BaseException]:
    """``error``, then what it was raised from or while handling (``__cause__``, else
    ``__context__``), and so on, each once: where a driver's or asyncio's own error hides
    under the one that reached dbguard."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__

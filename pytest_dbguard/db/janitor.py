"""The sweep that drops the marked databases (and, through ``schema_janitor``, worker schemas)
that runs left behind, and the checked drop every removal goes through.

Only a database whose comment carries dbguard's mark (``marks``) and whose name has dbguard's
shape is ever dropped; anything else on the server is left alone.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final, NamedTuple

from pytest_dbguard.db.marks import (
    MARK_PREFIX,
    ONE_SQL,
    MarkedDatabase,
    Swept,
    in_use,
    parse_mark,
    server_of,
    sweep_each,
)
from pytest_dbguard.db.names import is_dbguard_name
from pytest_dbguard.db.schema_janitor import sweep_schemas
from pytest_dbguard.db.urls import DatabaseURL
from pytest_dbguard.exceptions import ConfigError, DatabaseSetupError

if TYPE_CHECKING:
    from pytest_dbguard.db.maintenance import MaintenanceConnection


MAINTENANCE_DATABASES: Final = ("postgres", "template1")
_LIST_SQL: Final = (
    "SELECT datname, datistemplate, shobj_description(oid, 'pg_database') FROM pg_database "
    "ORDER BY datname"
)
_REFUSED: Final = (
    "Refusing to drop {name!r} on {server}: {reason}. The janitor drops only databases that "
    "pytest-dbguard created (a '<name>_dbg_<run>_<worker>' name and a '" + MARK_PREFIX.strip() + " "
    "{{...}}' comment); drop anything else yourself if you mean it."
)
KEPT_YOUNG: Final = (
    "a failed test's data (--dbguard-keep-failed), younger than --older-than; "
    "--older-than 0 drops it"
)
_UNREACHABLE: Final = (
    "Could not reach {server} to look for dbguard's databases: failed step: {stage} "
    "({error}). Check the URL, or run 'dbguard wait' first to see the full diagnosis."
)


def list_marked(
    url: str | DatabaseURL, *, connection: MaintenanceConnection | None = None
) -> list[MarkedDatabase]:
    """Every database on the URL's server that dbguard created (mark and name shape both match);
    on ``connection`` when given, else on one to a maintenance database."""
    with _maintenance(url, connection) as connected:
        rows = connected.rows(_LIST_SQL)
    return [
        MarkedDatabase(name, mark, bool(is_template))
        for name, is_template, comment in rows
        if (mark := parse_mark(comment)) is not None and is_dbguard_name(name)
    ]


def drop_marked(url: str | DatabaseURL, name: str) -> MarkedDatabase:
    """Drop ``name`` from the URL's server, ``WITH (FORCE)``; DatabaseSetupError if not ours."""
    with _maintenance(url) as connection:
        return drop_checked(connection, _parse(url), name)


def drop_run(
    url: str | DatabaseURL, run: str, *, connection: MaintenanceConnection | None = None
) -> list[str]:
    """Drop every marked database of run ``run`` (its templates, and workers that did not clean up),
    except a failed test's kept data and those whose creator, another process, still runs; on ``connection`` when given (one
    that is not on a database of the run), else on one to a maintenance database."""
    parsed = _parse(url)
    ours = [
        found
        for found in list_marked(parsed, connection=connection)
        if found.mark.run == run
        and found.mark.failed_test is None  # --dbguard-keep-failed: left for the user
        # Another run still going that drew the same id keeps its own (our workers have exited).
        and not (found.mark.pid != os.getpid() and found.mark.owner_alive())
    ]
    if not ours:
        return []
    with _maintenance(parsed, connection) as connected:
        return [drop_checked(connected, parsed, found.name).name for found in ours]


class SweepReport(NamedTuple):
    """What a sweep did (``swept``), and the marked databases it left for being younger than
    ``--older-than`` (``younger``: a running CI job's, a kept template of ``--dbguard-reuse``),
    oldest first; a failed test's kept data is in ``swept`` as ``kept`` instead."""

    swept: list[Swept]
    younger: list[MarkedDatabase]


def sweep(url: str | DatabaseURL, *, older_than: float, dry_run: bool) -> SweepReport:
    """Drop (``dry_run``: only list) the marked databases at least ``older_than`` seconds old,
    and the marked worker schemas in the URL's database, keeping those a run still going uses."""
    parsed = _parse(url)
    swept, younger = _sweep_databases(parsed, older_than=older_than, dry_run=dry_run)
    schemas = sweep_schemas(parsed, older_than=older_than, dry_run=dry_run)
    return SweepReport(swept + schemas, younger)


def _sweep_databases(
    parsed: DatabaseURL, *, older_than: float, dry_run: bool
) -> tuple[list[Swept], list[MarkedDatabase]]:
    marked = [found for found in list_marked(parsed) if found.name != parsed.database]
    leftovers = [found for found in marked if found.age >= older_than]
    young = sorted((found for found in marked if found.age < older_than), key=lambda f: -f.age)
    # A failed test's kept data is listed even while too young to drop: the user looks for it.
    young_kept = [Swept(found, "kept", KEPT_YOUNG) for found in young if found.mark.failed_test]
    younger = [found for found in young if not found.mark.failed_test]
    if not leftovers:
        return young_kept, younger
    with _maintenance(parsed) as connection:
        swept = sweep_each(
            leftovers,
            parsed,
            dry_run=dry_run,
            in_use=lambda found: in_use(connection, found.name),
            drop=lambda found: drop_checked(connection, parsed, found.name),
        )
    return young_kept + swept, younger


def _parse(url: str | DatabaseURL) -> DatabaseURL:
    parsed = url if isinstance(url, DatabaseURL) else DatabaseURL.parse(url)
    if parsed.is_sqlite:
        raise ConfigError(
            f"{parsed}: the janitor cleans PostgreSQL servers; dbguard's SQLite files live in "
            "pytest's temporary folder and go with it."
        )
    return parsed


@contextlib.contextmanager
def _maintenance(
    url: str | DatabaseURL, connection: MaintenanceConnection | None = None
) -> Iterator[MaintenanceConnection]:
    """An autocommit connection to the server's maintenance database, never the URL's own; the
    caller's ``connection`` instead when it has one (a run's shared maintenance connection)."""
    if connection is not None:
        yield connection
        return
    from pytest_dbguard.db import maintenance
    from pytest_dbguard.server.connect_diagnosis import DATABASE_MISSING, classify_error

    parsed = _parse(url)
    for index, database in enumerate(MAINTENANCE_DATABASES):
        try:
            connection = maintenance.connect(parsed.with_database(database))
        except maintenance.MaintenanceQueryError as error:
            failure = classify_error(error, password=parsed.password)
            if failure.stage == DATABASE_MISSING and index + 1 < len(MAINTENANCE_DATABASES):
                continue  # no 'postgres' database on this server: template1 always exists
            raise DatabaseSetupError(
                _UNREACHABLE.format(
                    server=server_of(parsed), stage=failure.stage, error=failure.error
                )
            ) from None
        try:
            yield connection
        finally:
            connection.close()
        return


def drop_checked(connection: MaintenanceConnection, url: DatabaseURL, name: str) -> MarkedDatabase:
    """Re-read the mark of ``name`` on this connection and drop it only if it is dbguard's."""
    from pytest_dbguard.db.maintenance import MaintenanceQueryError
    from pytest_dbguard.db.sql import quote_ident
    from pytest_dbguard.server.connect_diagnosis import classify_error

    row = connection.first(ONE_SQL, {"name": name})
    server = server_of(url)
    if row is None:
        raise DatabaseSetupError(
            _REFUSED.format(name=name, server=server, reason="it does not exist")
        )
    is_template, comment = row
    mark = parse_mark(comment)
    if mark is None:
        reason = "it does not carry dbguard's mark"
    elif not is_dbguard_name(name):
        reason = "its name does not have dbguard's shape"
    elif name == url.database:
        reason = "it is the database the URL names, which dbguard never writes to"
    else:
        reason = ""
    if reason or mark is None:
        raise DatabaseSetupError(_REFUSED.format(name=name, server=server, reason=reason))
    try:
        if is_template:  # a template cannot be dropped until it is an ordinary database again
            connection.ddl(f"ALTER DATABASE {quote_ident(name)} IS_TEMPLATE false")
        connection.ddl(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")
    except MaintenanceQueryError as error:
        detail = classify_error(error, connected=True, password=url.password).error
        raise DatabaseSetupError(f"Could not drop {name!r} on {server}: {detail}") from None
    return MarkedDatabase(name, mark, bool(is_template))

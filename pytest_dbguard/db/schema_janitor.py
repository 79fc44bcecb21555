"""The janitor's sweep of schema mode: worker schemas ``dbg_<run>_<worker>`` left in the named database.

A role without CREATEDB gets one schema per worker in the database the URL names; a run killed
before its teardown leaves them there. The rules are the database sweep's: only a schema that
carries dbguard's mark and has its name shape is dropped, and never one whose run is still going
(its creator process alive, or a session holding locks on its tables).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

from pytest_dbguard.db.marks import (
    MarkedDatabase,
    Swept,
    creator_running,
    parse_mark,
    sweep_each,
)
from pytest_dbguard.db.names import is_dbguard_schema
from pytest_dbguard.db.urls import DatabaseURL
from pytest_dbguard.exceptions import DatabaseSetupError

if TYPE_CHECKING:
    from pytest_dbguard.db.maintenance import MaintenanceConnection

_LIST_SQL: Final = (
    "SELECT nspname, obj_description(oid, 'pg_namespace') FROM pg_namespace ORDER BY nspname"
)
_ONE_SQL: Final = (
    "SELECT oid, obj_description(oid, 'pg_namespace') FROM pg_namespace WHERE nspname = :name"
)
_LOCKERS_SQL: Final = (  # sessions inside a transaction that touched the schema's tables
    "SELECT count(DISTINCT l.pid) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
    "WHERE c.relnamespace = :oid AND l.pid <> pg_backend_pid()"
)


def list_marked_schemas(url: DatabaseURL) -> list[MarkedDatabase]:
    """The worker schemas dbguard made in the URL's database (mark and name shape both match)."""
    with _named_database(url) as connection:
        return [] if connection is None else _marked(connection, url)


def _marked(connection: MaintenanceConnection, url: DatabaseURL) -> list[MarkedDatabase]:
    return [
        MarkedDatabase(name, mark, in_database=url.database)
        for name, comment in connection.rows(_LIST_SQL)
        if (mark := parse_mark(comment)) is not None and is_dbguard_schema(name)
    ]


def sweep_schemas(url: DatabaseURL, *, older_than: float, dry_run: bool) -> list[Swept]:
    """Drop (``dry_run``: only list) marked worker schemas at least ``older_than`` seconds old
    whose run is over."""
    with _named_database(url) as connection:
        if connection is None:
            return []
        leftovers = [found for found in _marked(connection, url) if found.age >= older_than]
        return sweep_each(
            leftovers,
            url,
            dry_run=dry_run,
            in_use=lambda found: schema_in_use(connection, found.name),
            drop=lambda found: drop_schema_checked(connection, url, found.name),
        )


def drop_run_schemas(url: DatabaseURL, run: str) -> list[str]:
    """At the end of a schema-mode run: drop run ``run``'s worker schemas that its workers left
    (a worker killed before its teardown), except those another live process created. On the
    run's own maintenance connection."""
    with _named_database(url, shared=True) as connection:
        if connection is None:
            return []
        ours = [
            found.name
            for found in _marked(connection, url)
            if found.mark.run == run
            and not (found.mark.pid != os.getpid() and found.mark.owner_alive())
        ]
        for name in ours:
            drop_schema_checked(connection, url, name)
    return ours


def schema_in_use(connection: MaintenanceConnection, name: str) -> str | None:
    """Why worker schema ``name`` belongs to a run still going, else None."""
    row = connection.first(_ONE_SQL, {"name": name})
    if row is None:
        return None
    if (reason := creator_running(parse_mark(row[1]))) is not None:
        return reason
    lockers = connection.scalar(_LOCKERS_SQL, {"oid": row[0]})
    return f"{lockers} session(s) are using its tables" if lockers else None


def drop_schema_checked(connection: MaintenanceConnection, url: DatabaseURL, name: str) -> None:
    """Re-read the mark of schema ``name`` and drop it (CASCADE) only if it is dbguard's."""
    from pytest_dbguard.db.sql import quote_ident

    with connection.transaction():
        row = connection.first(_ONE_SQL, {"name": name})
        if row is None or parse_mark(row[1]) is None or not is_dbguard_schema(name):
            raise DatabaseSetupError(
                f"Refusing to drop schema {name!r} in {url.database!r}: it is gone, or it is not "
                "one that pytest-dbguard created (a 'dbg_<run>_<worker>' name and dbguard's mark)."
            )
        # A session that holds its tables makes the drop wait a moment, then fail: never hang.
        connection.ddl("SET LOCAL lock_timeout = '5s'")
        connection.ddl(f"DROP SCHEMA {quote_ident(name)} CASCADE")


@contextlib.contextmanager
def _named_database(
    url: DatabaseURL, *, shared: bool = False
) -> Iterator[MaintenanceConnection | None]:
    """A maintenance connection to the URL's own database (where schema mode puts its schemas),
    ``shared``: the run's one; None when the URL names none, or it does not exist (then it
    holds no schemas either)."""
    from pytest_dbguard.db import maintenance
    from pytest_dbguard.db.marks import server_of
    from pytest_dbguard.server.connect_diagnosis import DATABASE_MISSING, classify_error

    if not url.database:
        yield None
        return
    with contextlib.ExitStack() as stack:
        try:
            connection: MaintenanceConnection | None = stack.enter_context(
                maintenance.shared(url) if shared else contextlib.closing(maintenance.connect(url))
            )
        except maintenance.MaintenanceQueryError as error:
            failure = classify_error(error, password=url.password)
            if failure.stage != DATABASE_MISSING:
                raise DatabaseSetupError(
                    f"Could not reach {url.database!r} on {server_of(url)} to look for dbguard's "
                    f"worker schemas: failed step: {failure.stage} ({failure.error})."
                ) from None
            connection = None
        yield connection

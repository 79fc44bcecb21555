"""The mark dbguard puts on every database it creates, and the sweep that drops leftovers.

(Worker schemas of schema mode are swept by ``schema_janitor``, with the same rules.)

Only a database whose comment carries this mark (and whose name has dbguard's shape) is ever
dropped; anything else on the server is left alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Final

from pytest_dbguard.exceptions import ConfigError, DatabaseSetupError, DbguardError
from pytest_dbguard.urls import DatabaseURL, is_dbguard_name

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

MARK_PREFIX: Final = "pytest-dbguard "


@dataclasses.dataclass(frozen=True)
class Mark:
    """Who created a test database: run id, worker, creation time, process and host."""

    run: str
    worker: str
    created: float
    pid: int
    host: str
    complete: bool | None = None  # templates only: False while the schema is built, then True

    def owner_alive(self) -> bool:
        """Whether the process that made the mark still runs; False when it ran on another host,
        or when its pid now belongs to a process started after the mark was made."""
        from pytest_dbguard.machine import process_alive, process_started_at

        if self.host != socket.gethostname() or not process_alive(self.pid):
            return False
        started = process_started_at(self.pid)
        return (
            started is None or started <= self.created + 1.0
        )  # /proc's boot time is whole seconds


def make_mark(run: str, worker: str, *, complete: bool | None = None) -> str:
    """The ``COMMENT ON DATABASE`` text for a database this process creates now; a template's
    mark also says whether its schema is ``complete`` (a killed build leaves ``false``)."""
    payload: dict[str, object] = {
        "run": run,
        "worker": worker,
        "created": round(time.time(), 3),
        "pid": os.getpid(),
        "host": socket.gethostname(),
    }
    if complete is not None:
        payload["complete"] = complete
    return MARK_PREFIX + json.dumps(payload, separators=(",", ":"))


def parse_mark(comment: str | None) -> Mark | None:
    """The mark in a database comment, or None when the comment is not dbguard's."""
    if not comment or not comment.startswith(MARK_PREFIX):
        return None
    try:
        data = json.loads(comment[len(MARK_PREFIX) :])
        return Mark(
            run=str(data["run"]),
            worker=str(data["worker"]),
            created=float(data["created"]),
            pid=int(data["pid"]),
            host=str(data["host"]),
            complete=bool(data["complete"]) if "complete" in data else None,
        )
    except (ValueError, KeyError, TypeError):
        return None


@dataclasses.dataclass(frozen=True)
class MarkedDatabase:
    """A database on the server that carries dbguard's mark and has dbguard's name shape."""

    name: str
    mark: Mark
    is_template: bool = False
    in_database: str | None = None  # set for a schema-mode worker schema: the database holding it

    @property
    def age(self) -> float:
        """Seconds since the run that created it did so."""
        return max(0.0, time.time() - self.mark.created)


@dataclasses.dataclass(frozen=True)
class Swept:
    """What a sweep did with one leftover: ``dropped``, ``would drop`` (dry run), ``kept`` (a run
    still going uses it) or ``failed``; ``detail`` says why for the last two."""

    database: MarkedDatabase
    action: str
    detail: str | None = None


MAINTENANCE_DATABASES: Final = ("postgres", "template1")
_LIST_SQL: Final = (
    "SELECT datname, datistemplate, shobj_description(oid, 'pg_database') FROM pg_database "
    "ORDER BY datname"
)
_ONE_SQL: Final = (
    "SELECT datistemplate, shobj_description(oid, 'pg_database') FROM pg_database "
    "WHERE datname = :name"
)
_REFUSED: Final = (
    "Refusing to drop {name!r} on {server}: {reason}. The janitor drops only databases that "
    "pytest-dbguard created (a '<name>_dbg_<run>_<worker>' name and a '" + MARK_PREFIX.strip() + " "
    "{{...}}' comment); drop anything else yourself if you mean it."
)
_UNREACHABLE: Final = (
    "Could not reach {server} to look for dbguard's databases: failed step: {stage} "
    "({error}). Check the URL, or run 'dbguard wait' first to see the full diagnosis."
)


def list_marked(url: str | DatabaseURL) -> list[MarkedDatabase]:
    """Every database on the URL's server that dbguard created (mark and name shape both match)."""
    from sqlalchemy import text

    with _maintenance(url) as connection:
        rows = connection.execute(text(_LIST_SQL)).all()
    return [
        MarkedDatabase(name, mark, bool(is_template))
        for name, is_template, comment in rows
        if (mark := parse_mark(comment)) is not None and is_dbguard_name(name)
    ]


def drop_marked(url: str | DatabaseURL, name: str) -> MarkedDatabase:
    """Drop ``name`` from the URL's server, ``WITH (FORCE)``; DatabaseSetupError if not ours."""
    with _maintenance(url) as connection:
        return drop_checked(connection, _parse(url), name)


def drop_run(url: str | DatabaseURL, run: str) -> list[str]:
    """Drop every marked database of run ``run`` (its templates, and workers that did not clean up),
    except those whose creator, another process, still runs."""
    parsed = _parse(url)
    ours = [
        found
        for found in list_marked(parsed)
        if found.mark.run == run
        # Another run still going that drew the same id keeps its own (our workers have exited).
        and not (found.mark.pid != os.getpid() and found.mark.owner_alive())
    ]
    if not ours:
        return []
    with _maintenance(parsed) as connection:
        return [drop_checked(connection, parsed, found.name).name for found in ours]


def sweep(url: str | DatabaseURL, *, older_than: float, dry_run: bool) -> list[Swept]:
    """Drop (``dry_run``: only list) the marked databases at least ``older_than`` seconds old,
    and the marked worker schemas in the URL's database, keeping those a run still going uses."""
    from pytest_dbguard.schema_janitor import sweep_schemas

    parsed = _parse(url)
    swept = _sweep_databases(parsed, older_than=older_than, dry_run=dry_run)
    return swept + sweep_schemas(parsed, older_than=older_than, dry_run=dry_run)


def _sweep_databases(parsed: DatabaseURL, *, older_than: float, dry_run: bool) -> list[Swept]:

    leftovers = [
        found
        for found in list_marked(parsed)
        if found.age >= older_than and found.name != parsed.database
    ]
    if not leftovers:
        return []
    with _maintenance(parsed) as connection:
        return sweep_each(
            leftovers,
            parsed,
            dry_run=dry_run,
            in_use=lambda found: in_use(connection, found.name),
            drop=lambda found: drop_checked(connection, parsed, found.name),
        )


def sweep_each(
    leftovers: list[MarkedDatabase],
    url: DatabaseURL,
    *,
    dry_run: bool,
    in_use: Callable[[MarkedDatabase], str | None],
    drop: Callable[[MarkedDatabase], object],
) -> list[Swept]:
    """What a sweep does with each leftover (database or worker schema): keep one a live run
    uses, drop the rest (a dry run only lists them); an error marks that one ``failed``."""
    from sqlalchemy.exc import DBAPIError

    results: list[Swept] = []
    for found in leftovers:
        try:
            reason = in_use(found)
            if reason is None and not dry_run:
                drop(found)
        except (DbguardError, DBAPIError) as error:
            detail = str(error) if isinstance(error, DbguardError) else brief(error, url)
            results.append(Swept(found, "failed", detail))
        else:
            action = "kept" if reason else "would drop" if dry_run else "dropped"
            results.append(Swept(found, action, reason and f"in use: {reason}"))
    return results


def brief(error: Exception, url: DatabaseURL) -> str:
    """A driver error in one line, password hidden."""
    from pytest_dbguard.connect_diagnosis import classify_error

    return classify_error(error, connected=True, password=url.password).error


def _parse(url: str | DatabaseURL) -> DatabaseURL:
    parsed = url if isinstance(url, DatabaseURL) else DatabaseURL.parse(url)
    if parsed.is_sqlite:
        raise ConfigError(
            f"{parsed}: the janitor cleans PostgreSQL servers; dbguard's SQLite files live in "
            "pytest's temporary folder and go with it."
        )
    return parsed


def server_of(url: DatabaseURL) -> str:
    """The URL without its database, password hidden: what the janitor reports it cleaned."""
    return dataclasses.replace(url, database=None).render(hide_password=True)


@contextlib.contextmanager
def _maintenance(url: str | DatabaseURL) -> Iterator[Connection]:
    """An autocommit connection to the server's maintenance database, never the URL's own."""
    from sqlalchemy import create_engine
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.pool import NullPool

    from pytest_dbguard.connect_diagnosis import DATABASE_MISSING, classify_error
    from pytest_dbguard.engine_listener import mark_own
    from pytest_dbguard.engines import INTERNAL_OPTIONS

    parsed = _parse(url)
    for index, database in enumerate(MAINTENANCE_DATABASES):
        engine = mark_own(
            create_engine(
                parsed.sync().with_database(database).to_sqlalchemy(),
                poolclass=NullPool,
                isolation_level="AUTOCOMMIT",
                execution_options=INTERNAL_OPTIONS,
            )
        )
        try:
            try:
                connection = engine.connect()
            except DBAPIError as error:
                failure = classify_error(error, password=parsed.password)
                if failure.stage == DATABASE_MISSING and index + 1 < len(MAINTENANCE_DATABASES):
                    continue  # no 'postgres' database on this server: template1 always exists
                raise DatabaseSetupError(
                    _UNREACHABLE.format(
                        server=server_of(parsed), stage=failure.stage, error=failure.error
                    )
                ) from None
            with connection:
                yield connection
            return
        finally:
            engine.dispose()


def creator_running(mark: Mark | None) -> str | None:
    """Why the process that made ``mark`` counts as a run still going, or None."""
    if mark is not None and mark.owner_alive():
        return f"its creator, process {mark.pid} on {mark.host}, is still running"
    return None


def in_use(connection: Connection, name: str) -> str | None:
    """Why ``name`` belongs to a run still going (its creator alive, or sessions on it), else None."""
    from sqlalchemy import text

    row = connection.execute(text(_ONE_SQL), {"name": name}).first()
    if (reason := creator_running(parse_mark(row[1]) if row is not None else None)) is not None:
        return reason
    sessions = connection.execute(
        text(  # clients only: autovacuum workers and walsenders do not make a database in use
            "SELECT count(*) FROM pg_stat_activity WHERE datname = :name"
            " AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
        ),
        {"name": name},
    ).scalar_one()
    return f"{sessions} session(s) are connected to it" if sessions else None


def drop_checked(connection: Connection, url: DatabaseURL, name: str) -> MarkedDatabase:
    """Re-read the mark of ``name`` on this connection and drop it only if it is dbguard's."""
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    from pytest_dbguard.connect_diagnosis import classify_error
    from pytest_dbguard.databases import quote_ident, run_ddl

    row = connection.execute(text(_ONE_SQL), {"name": name}).first()
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
            run_ddl(connection, f"ALTER DATABASE {quote_ident(name)} IS_TEMPLATE false")
        run_ddl(connection, f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")
    except DBAPIError as error:
        detail = classify_error(error, connected=True, password=url.password).error
        raise DatabaseSetupError(f"Could not drop {name!r} on {server}: {detail}") from None
    return MarkedDatabase(name, mark, bool(is_template))

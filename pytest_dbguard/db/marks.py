"""The mark dbguard puts on every database (and worker schema) it creates, and the rules that
decide whether a marked one still belongs to a run that is going.

Only a database whose comment carries this mark (and whose name has dbguard's shape) is ever
dropped; anything else on the server is left alone. ``janitor`` and ``schema_janitor`` sweep with
these rules; ``databases`` marks what it creates.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, NamedTuple

from pytest_dbguard.db.urls import DatabaseURL
from pytest_dbguard.exceptions import DbguardError

if TYPE_CHECKING:
    from pytest_dbguard.db.maintenance import MaintenanceConnection

MARK_PREFIX: Final = "pytest-dbguard "


# NamedTuples, not frozen dataclasses: every run defines them (see the package docstring).
class Mark(NamedTuple):
    """Who created a test database: run id, worker, creation time, process and host."""

    run: str
    worker: str
    created: float
    pid: int
    host: str
    complete: bool | None = None  # templates only: False while the schema is built, then True
    # --dbguard-keep-failed: the failed test whose data the database keeps. The run's own sweep
    # leaves such a database; ``dbguard janitor`` drops it like any other once it is old enough.
    failed_test: str | None = None

    def owner_alive(self) -> bool:
        """Whether the process that made the mark still runs; False when it ran on another host,
        or when its pid now belongs to a process started after the mark was made."""
        from pytest_dbguard.server.processes import process_alive, process_started_at

        if self.host != socket.gethostname() or not process_alive(self.pid):
            return False
        started = process_started_at(self.pid)
        return (
            started is None or started <= self.created + 1.0
        )  # /proc's boot time is whole seconds


def make_mark(
    run: str, worker: str, *, complete: bool | None = None, failed_test: str | None = None
) -> str:
    """The ``COMMENT ON DATABASE`` text for a database this process creates now; a template's
    mark also says whether its schema is ``complete`` (a killed build leaves ``false``), a kept
    failed test's database names the test."""
    payload: dict[str, object] = {
        "run": run,
        "worker": worker,
        "created": round(time.time(), 3),
        "pid": os.getpid(),
        "host": socket.gethostname(),
    }
    if complete is not None:
        payload["complete"] = complete
    if failed_test is not None:
        payload["failed_test"] = failed_test
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
            failed_test=str(data["failed_test"]) if "failed_test" in data else None,
        )
    except (ValueError, KeyError, TypeError):
        return None


class MarkedDatabase(NamedTuple):
    """A database on the server that carries dbguard's mark and has dbguard's name shape."""

    name: str
    mark: Mark
    is_template: bool = False
    in_database: str | None = None  # set for a schema-mode worker schema: the database holding it

    @property
    def age(self) -> float:
        """Seconds since the run that created it did so."""
        return max(0.0, time.time() - self.mark.created)


class Swept(NamedTuple):
    """What a sweep did with one leftover: ``dropped``, ``would drop`` (dry run), ``kept`` (a run
    still going uses it) or ``failed``; ``detail`` says why for the last two."""

    database: MarkedDatabase
    action: str
    detail: str | None = None


ONE_SQL: Final = (
    "SELECT datistemplate, shobj_description(oid, 'pg_database') FROM pg_database "
    "WHERE datname = :name"
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
    from pytest_dbguard.db.maintenance import query_errors

    results: list[Swept] = []
    caught: tuple[type[Exception], ...] = (DbguardError, *query_errors())
    for found in leftovers:
        try:
            reason = in_use(found)
            if reason is None and not dry_run:
                drop(found)
        except caught as error:
            detail = brief(error, url) if isinstance(error, query_errors()) else str(error)
            results.append(Swept(found, "failed", detail))
        else:
            action = "kept" if reason else "would drop" if dry_run else "dropped"
            results.append(Swept(found, action, reason and f"in use: {reason}"))
    return results


def brief(error: Exception, url: DatabaseURL) -> str:
    """A driver error in one line, password hidden."""
    from pytest_dbguard.server.connect_diagnosis import classify_error

    return classify_error(error, connected=True, password=url.password).error


def server_of(url: DatabaseURL) -> str:
    """The URL without its database, password hidden: what the janitor reports it cleaned."""
    return url.replace(database=None).render(hide_password=True)


def creator_running(mark: Mark | None) -> str | None:
    """Why the process that made ``mark`` counts as a run still going, or None."""
    if mark is not None and mark.owner_alive():
        return f"its creator, process {mark.pid} on {mark.host}, is still running"
    return None


def in_use(connection: MaintenanceConnection, name: str) -> str | None:
    """Why ``name`` belongs to a run still going (its creator alive, or sessions on it), else None."""
    row = connection.first(ONE_SQL, {"name": name})
    if (reason := creator_running(parse_mark(row[1]) if row is not None else None)) is not None:
        return reason
    sessions = connection.scalar(
        # clients only: autovacuum workers and walsenders do not make a database in use
        "SELECT count(*) FROM pg_stat_activity WHERE datname = :name"
        " AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
        {"name": name},
    )
    return f"{sessions} session(s) are connected to it" if sessions else None

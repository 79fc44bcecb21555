"""Create, clone and drop test databases (PostgreSQL) and files (SQLite); only marked ones are dropped.

Works without pytest: each worker clones its database from a template that holds the schema,
built once per run by whichever worker gets there first (a PostgreSQL advisory lock, or a file
lock for SQLite, makes the others wait and then clone). The engines it uses are in ``engines``.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import shutil
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Final, NamedTuple

from pytest_dbguard.db import maintenance
from pytest_dbguard.db.engines import INTERNAL_OPTIONS, engine_for, park_engine
from pytest_dbguard.db.maintenance import MaintenanceConnection, query_errors
from pytest_dbguard.db.marks import Mark, in_use, make_mark, parse_mark
from pytest_dbguard.db.sql import quote_ident, quote_literal
from pytest_dbguard.db.urls import DatabaseURL
from pytest_dbguard.exceptions import DatabaseSetupError, masked, sqlstate

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

SchemaBuild = Callable[["Connection"], None]


class SelfConnectingBuild:
    """A schema build that opens its own connections (Django's ``migrate``): dbguard opens none
    for it, so a run whose project does not use SQLAlchemy never imports it.

    ``create_options``: what ``CREATE DATABASE <name>`` of the database it builds in takes
    after the name (Django's ``TEST`` settings: `` TEMPLATE "template_postgis" ENCODING 'UTF8'``);
    the databases cloned from it inherit them."""

    def __init__(
        self, build: Callable[[], None], create_options: str = "", options_origin: str = ""
    ) -> None:
        self.build = build
        self.create_options = create_options
        self.options_origin = options_origin  # where they come from, for an error that names them

    def __call__(self, _connection: Connection) -> None:
        self.build()


class CommitsItself:
    """A schema build that manages its own transactions (an Alembic upgrade: env.py's
    ``begin_transaction``, a migration's ``autocommit_block()`` for ``CREATE INDEX CONCURRENTLY``
    or its own ``commit()``): it gets a connection outside any transaction, as from
    ``alembic upgrade head``, and what it leaves uncommitted is committed after it."""

    def __init__(self, build: SchemaBuild) -> None:
        self.build = build

    def __call__(self, connection: Connection) -> None:
        self.build(connection)


def _create_for_build(
    connection: MaintenanceConnection, server_url: DatabaseURL, name: str, build: SchemaBuild
) -> None:
    """``CREATE DATABASE`` of a database that ``build`` fills, with the build's options; when
    the server refuses those, the error says where they came from."""
    if not isinstance(build, SelfConnectingBuild) or not build.create_options:
        connection.ddl(f"CREATE DATABASE {quote_ident(name)}")
        return
    try:
        connection.ddl(f"CREATE DATABASE {quote_ident(name)}{build.create_options}")
    except query_errors() as error:
        raise DatabaseSetupError(
            f"{describe(error, server_url, name)}. dbguard created it with"
            f"{build.create_options}, as {build.options_origin} asks: that server must have "
            "such a database and encoding (an embedded cluster has only template0 and "
            "template1; give --dbguard-url a server that has it)."
        ) from error


INSUFFICIENT_PRIVILEGE: Final = "42501"
NO_CREATEDB: Final = (
    "The role {user!r} may not create databases. Grant it (ALTER ROLE ... CREATEDB), or let "
    "dbguard use one schema per worker in the named database: --dbguard-worker-isolation schema "
    "(or auto, the default; ini dbguard_worker_isolation)."
)
SAME_ID: Final = (
    "The {what} {name!r} already exists {where} and another run is using it ({reason}): two runs "
    "drew the same run id. Run again; a new id is drawn each time."
)


# NamedTuples, not frozen dataclasses: every run defines them (see the package docstring).
class Provisioned(NamedTuple):
    """What a worker got: its database (or schema) and how long the template and the clone took."""

    mode: str  # "database", "schema" or "sqlite"
    database: str
    url: DatabaseURL
    template_ms: float
    clone_ms: float
    schema: str | None = None
    template_built: bool = True  # False: a complete template was already there (reused)
    template: str | None = None  # the database it was cloned from (None: built in place)


def _lock_key(name: str) -> int:
    return zlib.crc32(("pytest-dbguard:" + name).encode()) - 2**31


@contextlib.contextmanager
def _advisory_lock(connection: MaintenanceConnection, name: str) -> Iterator[None]:
    connection.rows("SELECT pg_advisory_lock(:key)", {"key": _lock_key(name)})
    try:
        yield
    finally:
        connection.rows("SELECT pg_advisory_unlock(:key)", {"key": _lock_key(name)})


def _exists(connection: MaintenanceConnection, name: str) -> bool:
    return connection.first("SELECT 1 FROM pg_database WHERE datname = :n", {"n": name}) is not None


def _mark(
    connection: MaintenanceConnection,
    name: str,
    run: str,
    worker: str,
    *,
    complete: bool | None = None,
    failed_test: str | None = None,
) -> None:
    comment = quote_literal(make_mark(run, worker, complete=complete, failed_test=failed_test))
    connection.ddl(f"COMMENT ON DATABASE {quote_ident(name)} IS {comment}")


def _template_mark(connection: MaintenanceConnection, name: str) -> tuple[bool, Mark | None]:
    """Whether ``name`` exists, and its mark; an error when another role owns it.

    Any role with CREATEDB may create a database under a template's name (``pg_database`` is
    readable by all; reuse and ``DBGUARD_RUN`` names are predictable) and, as its owner, mark it
    complete: cloned, its triggers would run as this run's role (a superuser's: programs on the
    server's machine)."""
    row = connection.first(
        "SELECT shobj_description(oid, 'pg_database'), pg_get_userbyid(datdba), current_user "
        "FROM pg_database WHERE datname = :n",
        {"n": name},
    )
    if row is None:
        return False, None
    comment, owner, connected_as = row
    if owner != connected_as:
        raise DatabaseSetupError(
            f"The template database {name!r} already exists and belongs to role {owner!r}, not "
            f"to {connected_as!r} that this run connects as: it is not cloned (dbguard clones "
            "only what its own role built). Drop it as a superuser if nobody should have made "
            "it, or give this run a name of its own (another database in the URL, or DBGUARD_RUN)."
        )
    return True, parse_mark(comment)


def _ensure_template(
    connection: MaintenanceConnection,
    server_url: DatabaseURL,
    template: str,
    build: SchemaBuild,
    run: str,
) -> bool:
    """Build the template unless a complete one exists (call under the template's lock); whether
    it was built.

    The mark says ``complete`` only once the schema is in: a template whose build failed is
    dropped at once, and one whose build was killed (its mark still incomplete) is rebuilt, so
    no worker ever clones a half-built schema.
    """
    from pytest_dbguard.db.janitor import drop_checked

    exists, mark = _template_mark(connection, template)
    if exists and mark is not None and mark.complete:
        return False
    if exists:  # incomplete: its builder was killed (or an older version made it): rebuild
        drop_checked(connection, server_url, template)
    _create_for_build(connection, server_url, template, build)
    _mark(connection, template, run, "tpl", complete=False)
    try:
        build_in(server_url.with_database(template), build)
    except BaseException:
        with contextlib.suppress(Exception):  # best effort: the error itself matters more
            drop_checked(connection, server_url, template)
        raise
    _mark(connection, template, run, "tpl", complete=True)
    return True


def ensure_template(
    server_url: DatabaseURL, template: str, build: SchemaBuild, *, run: str
) -> bool:
    """Build ``template`` under its lock unless a complete one exists (the xdist controller's
    early build, before its workers clone it); whether it was built."""
    try:
        with maintenance.shared(server_url) as connection, _advisory_lock(connection, template):
            return _ensure_template(connection, server_url, template, build, run)
    except query_errors() as error:
        raise DatabaseSetupError(describe(error, server_url, template)) from error


def provision_database(
    server_url: DatabaseURL,
    database: str,
    template: str | None,
    build: SchemaBuild | None,
    *,
    run: str,
    worker: str,
    template_run: str | None = None,
    failed_test: str | None = None,
    keep_build_engine: bool = False,
) -> Provisioned:
    """Create ``database`` on the server, cloned from ``template`` (built first if nobody has yet),
    or with no template, built in place; ``failed_test``: it keeps that test's data;
    ``keep_build_engine``: an in-place build's engine is parked for the tests' connections."""
    template_ms = 0.0
    built = True
    try:
        with maintenance.shared(server_url) as connection:
            if build is not None and template is not None:
                started = time.perf_counter()
                with _advisory_lock(connection, template):
                    built = _ensure_template(
                        connection, server_url, template, build, template_run or run
                    )
                template_ms = (time.perf_counter() - started) * 1000
            started = time.perf_counter()
            if _exists(connection, database):  # left by a crashed run that drew the same id
                _drop_leftover(server_url, database, connection)
            if build is not None and template is None:  # built in place
                _create_for_build(connection, server_url, database, build)
            else:
                clone = (
                    f" TEMPLATE {quote_ident(template)}"
                    if build is not None and template is not None
                    else ""
                )
                connection.ddl(f"CREATE DATABASE {quote_ident(database)}{clone}")
            _mark(connection, database, run, worker, failed_test=failed_test)
            clone_ms = (time.perf_counter() - started) * 1000
        if build is not None and template is None:
            started = time.perf_counter()
            build_in(server_url.with_database(database), build, park=keep_build_engine)
            template_ms = (time.perf_counter() - started) * 1000
    except query_errors() as error:
        raise DatabaseSetupError(describe(error, server_url, database)) from error
    return Provisioned(
        "database",
        database,
        server_url.with_database(database),
        template_ms,
        clone_ms,
        template_built=built,
        template=template if build is not None else None,
    )


def _drop_leftover(
    server_url: DatabaseURL, database: str, connection: MaintenanceConnection
) -> None:
    """Drop a same-named leftover, unless a run that is still going uses it (ids are random, so
    that is two runs drawing one id; never take a live run's database from under it)."""
    reason = in_use(connection, database)
    if reason is not None:
        where = f"on {server_url.host}:{server_url.port}"
        raise DatabaseSetupError(
            SAME_ID.format(what="test database", name=database, where=where, reason=reason)
        )
    drop_database(server_url, database, connection=connection)


def build_in(url: DatabaseURL, build: SchemaBuild, *, park: bool = False) -> None:
    """Build the schema in ``url``'s database; ``park``: the database is the worker's own, and
    the engine that built it stays for the tests (``engines.park_engine``). A template's engine
    is disposed: no connection may stay on a database that is about to be cloned."""
    with _BUILD_FREEZE:
        if isinstance(build, SelfConnectingBuild):
            build.build()
            return
        engine = engine_for(url)  # the tests may get it: dbguard's own marks go on the connection
        try:
            if isinstance(build, CommitsItself):
                with engine.connect() as connection:
                    build(connection.execution_options(**INTERNAL_OPTIONS))
                    connection.commit()
            else:
                with engine.begin() as connection:
                    build(connection.execution_options(**INTERNAL_OPTIONS))
        except BaseException:
            engine.dispose()
            raise
    if park:
        park_engine(url, engine)
    else:
        engine.dispose()


class _OlderObjectsFrozen:
    """While a schema builds, the cyclic garbage collector skips the objects that existed before
    (``gc.freeze``): the modules, the settings, the project's models, tens of thousands of them.

    A migration run allocates enough to trigger full collections, and each one rescanned all of
    them: about 25 ms of a Django project's start (benchmarks/django_setup.py, 1). Nothing is
    lost: whatever among the older objects became garbage meanwhile is collected after the build
    (``gc.unfreeze``). Builds may overlap (the early template thread), so only the first freezes
    and the last unfreezes; a process that froze objects itself or turned the collector off is
    left as it is."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._builds = 0
        self._froze = False

    def __enter__(self) -> None:
        with self._lock:
            if self._builds == 0 and gc.isenabled() and gc.get_freeze_count() <= _frozen_before():
                gc.freeze()
                self._froze = True
            self._builds += 1

    def __exit__(self, *_exc: object) -> None:
        with self._lock:
            self._builds -= 1
            if self._builds == 0 and self._froze:
                gc.unfreeze()
                self._froze = False


_BUILD_FREEZE = _OlderObjectsFrozen()


def _frozen_before() -> int:
    """What gc's permanent generation held when the package was first imported (by pytest's
    plugin loading, before any conftest); Python 3.12 fills it at start. Read from the package
    that Python imported before this module, not imported again (no cycle)."""
    return int(getattr(sys.modules["pytest_dbguard"], "_FROZEN_AT_IMPORT", 0))


def drop_database(
    server_url: DatabaseURL, name: str, *, connection: MaintenanceConnection | None = None
) -> bool:
    """Drop ``name`` if it is dbguard's (mark and name shape); False when it is not, or is gone."""
    from pytest_dbguard.db.janitor import drop_checked

    if connection is None:
        with maintenance.shared(server_url) as own:
            return drop_database(server_url, name, connection=own)
    try:
        drop_checked(connection, server_url, name)
    except DatabaseSetupError:
        return False
    return True


def describe(error: Exception, url: DatabaseURL, database: str) -> str:
    detail = (
        str(getattr(error, "orig", error)).strip().splitlines()[0]
        if str(error)
        else type(error).__name__
    )
    detail = masked(detail, url.password)
    message = (
        f"Could not set up the test database {database!r} on {url.host}:{url.port} "
        f"(connected as {url.username!r} to {url.database!r}): {detail}"
    )
    if sqlstate(getattr(error, "orig", None)) == INSUFFICIENT_PRIVILEGE:
        message += ". " + NO_CREATEDB.format(user=url.username)
    return message


# SQLite: one file per worker, copied from a template file built once under a file lock.


def provision_sqlite(
    test_url: DatabaseURL, template: Path, build: SchemaBuild | None
) -> Provisioned:
    """Create the worker's SQLite file, copied from the template file (built once per run)."""
    target = Path(test_url.database or "")
    target.parent.mkdir(mode=0o700, exist_ok=True)  # in our private folder (run_plan)
    started = time.perf_counter()
    if build is not None:
        with open(template.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not template.exists():
                # A build that failed in another worker may have committed part of its work.
                staging = template.with_suffix(".building")
                staging.unlink(missing_ok=True)
                try:
                    build_in(test_url.replace(database=str(staging)), build)
                except BaseException:
                    staging.unlink(missing_ok=True)
                    raise
                staging.rename(template)
    template_ms = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    if build is not None:
        shutil.copyfile(template, target)
    else:
        target.touch()
    clone_ms = (time.perf_counter() - started) * 1000
    return Provisioned("sqlite", str(target), test_url, template_ms, clone_ms)

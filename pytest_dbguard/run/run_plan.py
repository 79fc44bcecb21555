"""The run plan: which server, database (or schema, or SQLite file) and run id this process uses.

Decided before anything connects, from the resolved settings and, in an xdist worker, the
controller's decisions it inherits through ``ORIGIN_VAR``; the server may come up later, the
names are fixed now.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from pytest_dbguard.db.names import database_name, schema_name
from pytest_dbguard.db.urls import DatabaseURL
from pytest_dbguard.records import Record
from pytest_dbguard.run.config import Settings

SINGLE_PROCESS: Final = "main"  # the worker name of a run without xdist
ORIGIN_VAR: Final = "_DBGUARD_ORIGIN"  # the controller's decisions, inherited by xdist workers
EMBEDDED_BASE: Final = "postgres"
SQLITE_BASE: Final = "test"


class RunPlan(Record):
    """Where this process's test database is, decided before anything connects."""

    __slots__ = (
        "async_url",
        "database",
        "embedded",
        "inspection",
        "owns_server",
        "pipeline_key",
        "run",
        "schema",
        "server_url",
        "sqlite_dir",
        "test_url",
        "worker",
    )
    run: str
    worker: str
    owns_server: bool  # the single process or the xdist controller: starts and stops the server
    embedded: bool
    server_url: DatabaseURL | None  # maintenance URL of the server (password kept); None for SQLite
    test_url: DatabaseURL  # this worker's database, sync driver (through the proxy when on)
    async_url: DatabaseURL
    database: str
    sqlite_dir: Path | None
    schema: str | None  # schema-per-worker mode: the worker's schema in the named database
    # Set for commands that only show something (--help, --collect-only, ...): the flag's name.
    # Nothing is started, connected or created; the URLs are what a real run would use.
    inspection: str | None
    # DBGUARD_RUN as a pipeline set it before pytest: the key its shards share templates under.
    # ``run`` stays this invocation's own, so the shards' databases never collide.
    pipeline_key: str | None

    def __init__(
        self,
        *,
        run: str,
        worker: str,
        owns_server: bool,
        embedded: bool,
        server_url: DatabaseURL | None,
        test_url: DatabaseURL,
        async_url: DatabaseURL,
        database: str,
        sqlite_dir: Path | None,
        schema: str | None = None,
        inspection: str | None = None,
        pipeline_key: str | None = None,
    ) -> None:
        self._set_from(locals())

    @property
    def is_sqlite(self) -> bool:
        return self.server_url is None

    @property
    def pipeline_run(self) -> str | None:
        """The pipeline's key as a name part, or None when no pipeline set one."""
        return name_part(self.pipeline_key) if self.pipeline_key else None

    @property
    def template_run(self) -> str:
        """The run id in the names and marks of this run's templates."""
        return self.pipeline_run or self.run

    @property
    def exported_run(self) -> str:
        """DBGUARD_RUN for the tests: the pipeline's own value when it set one."""
        return self.pipeline_key or self.run


PIPELINE_RUN_VAR: Final = "DBGUARD_RUN"
# As text: re compiles it on first use, not in every run's import.
_RUN_ID: Final = r"^[0-9a-z]{1,12}$"


def pipeline_key(environ: Mapping[str, str]) -> str | None:
    """The run key a CI pipeline set in DBGUARD_RUN before pytest started. None when unset, or
    when it is the value a dbguard run exported (a pytest started inside a test inherits it)."""
    value = environ.get(PIPELINE_RUN_VAR, "").strip()
    return value if value and not environ.get(ORIGIN_VAR) else None


def name_part(key: str) -> str:
    """A pipeline key as it stands in names: itself when it is 1-12 lowercase letters and digits,
    else a hash of it."""
    return key if re.match(_RUN_ID, key) else hashlib.sha1(key.encode()).hexdigest()[:8]


def pipeline_run(environ: Mapping[str, str]) -> str | None:
    """The pipeline's run key from ``environ``, as a name part (see ``pipeline_key``)."""
    key = pipeline_key(environ)
    return name_part(key) if key else None


def inherited_origin() -> dict[str, Any] | None:
    """The controller's decisions when this process is one of its xdist workers, else None.

    A nested pytest run started from inside a test inherits the variables too, so a worker is
    recognised by being the direct child of the process that wrote them.
    """
    text = os.environ.get(ORIGIN_VAR)
    if not text or not os.environ.get("PYTEST_XDIST_WORKER"):
        return None
    try:
        origin: dict[str, Any] = json.loads(text)
    except ValueError:
        return None
    return origin if origin.get("pid") == os.getppid() else None


def decide(
    settings: Settings, origin: Mapping[str, Any] | None, *, inspection: str | None = None
) -> RunPlan:
    """This process's plan: a fresh run (``origin`` None), or an xdist worker's share of its controller's.

    ``inspection`` (a command that only shows something) decides without looking for binaries or
    asking the server anything.
    """
    worker = (
        os.environ.get("PYTEST_XDIST_WORKER", SINGLE_PROCESS)
        if origin is not None
        else SINGLE_PROCESS
    )
    # 32 random bits: a clash is a one-in-billions event, and provisioning refuses it anyway.
    run = (
        origin["run"] if origin is not None else os.urandom(4).hex()
    )  # secrets.token_hex, without importing hmac
    common: dict[str, Any] = {
        "run": run,
        "pipeline_key": origin.get("pipeline_key") if origin else pipeline_key(os.environ),
        "worker": worker,
        "owns_server": origin is None,
        "inspection": inspection,
    }
    embedded = False
    server_url: DatabaseURL | None = settings.url
    if origin is not None and origin.get("server_url"):
        server_url = DatabaseURL.parse(origin["server_url"])
        embedded = bool(origin.get("embedded"))
    elif origin is not None:
        server_url = None
    elif settings.url is None and not settings.sqlite_requested:
        if inspection is None:  # --collect-only and the like start nothing: no need to look
            from pytest_dbguard.server.machine import require_bindir

            require_bindir(settings.pg_bindir, settings.source_of("pg_bindir"))
        embedded = True
        # Port 0 until the cluster has started; a command that only shows something starts
        # none, and {port} shows 0 then: a number, as settings parse it, that reaches no server.
        server_url = DatabaseURL(
            "postgresql", None, "postgres", None, "127.0.0.1", 0, EMBEDDED_BASE
        )
    if server_url is None or server_url.is_sqlite:
        return _sqlite_plan(settings, common, origin)
    if settings.driver is not None:
        server_url = server_url.with_driver(settings.driver)
    server_url = server_url.resolved()
    base = server_url.database or EMBEDDED_BASE
    common.update(embedded=embedded, server_url=server_url, sqlite_dir=None)
    if _schema_mode(settings, server_url, embedded, origin, probe=inspection is None):
        from pytest_dbguard.db.worker_schemas import schema_url

        schema = schema_name(run, worker)
        test_url = schema_url(server_url, schema)
        # asyncpg cannot take search_path from the URL; psycopg's async driver can.
        async_url = test_url.with_driver("psycopg")
        return RunPlan(
            **common, test_url=test_url.sync(), async_url=async_url, database=base, schema=schema
        )
    database = database_name(base, run, worker)
    test_url = server_url.with_database(database)
    return RunPlan(
        **common, test_url=test_url.sync(), async_url=test_url.asynchronous(), database=database
    )


def _schema_mode(
    settings: Settings,
    server_url: DatabaseURL,
    embedded: bool,
    origin: Mapping[str, Any] | None,
    *,
    probe: bool = True,
) -> bool:
    """One schema per worker when asked, or (auto) when the role may not create databases."""
    if origin is not None:
        return bool(origin.get("schema_mode"))
    if settings.worker_isolation != "auto" or embedded or not probe:
        return settings.worker_isolation == "schema"
    from pytest_dbguard.db.worker_schemas import CAN_CREATE_DATABASES
    from pytest_dbguard.server.readiness import first_row, refused_for_good

    started = time.monotonic()
    try:  # a server that is not up yet is waited for later; assume it lets us create databases
        # One plain connection: SQLAlchemy's import would delay every xdist worker's start.
        row = first_row(server_url, CAN_CREATE_DATABASES, timeout=2.0)
    except Exception as error:
        # A wrong password or a missing database stops the run here, before xdist starts
        # workers that would each fail on it.
        final = refused_for_good(server_url, error, time.monotonic() - started)
        if final is not None:
            from pytest_dbguard.server.connect_diagnosis import from_setting

            raise from_setting(final, settings.source_of("url")) from None
        return False
    return not (row and row[0])


def _sqlite_plan(
    settings: Settings,
    common: dict[str, Any],
    origin: Mapping[str, Any] | None,
) -> RunPlan:
    run, worker = common["run"], common["worker"]
    named = settings.url.database if settings.url is not None and settings.url.is_sqlite else None
    base = Path(named).stem if named else SQLITE_BASE
    if origin and origin.get("sqlite_dir"):
        folder = Path(origin["sqlite_dir"])
    else:
        from pytest_dbguard.server.machine import shared_root

        # Our private folder in the shared temp folder: the run's own folder inside it is made
        # when the first database file is, and nobody else can plant anything there.
        folder = shared_root(Path(tempfile.gettempdir())) / f"{run}-sqlite"
    database = database_name(base, run, worker)
    url = DatabaseURL("sqlite", None, database=str(folder / f"{database}.db"))
    return RunPlan(
        **common,
        embedded=False,
        server_url=None,
        test_url=url.sync(),
        async_url=url.asynchronous(),
        database=database,
        sqlite_dir=folder,
    )


def with_server(plan: RunPlan, server_url: DatabaseURL) -> RunPlan:
    """The plan once the embedded server's address is known (the plan's driver kept)."""
    if plan.server_url is not None and plan.server_url.driver:
        server_url = server_url.with_driver(plan.server_url.driver)
    test_url = server_url.with_database(plan.database)
    return plan.replace(
        server_url=server_url, test_url=test_url.sync(), async_url=test_url.asynchronous()
    )


def with_test_url(plan: RunPlan, url: DatabaseURL) -> RunPlan:
    """The plan with this worker's database reached through ``url`` (the proxy's), async
    through the driver the plan chose (a worker schema's: psycopg, which takes search_path
    from the URL, where asyncpg does not)."""
    return plan.replace(test_url=url, async_url=url.with_driver(plan.async_url.driver))

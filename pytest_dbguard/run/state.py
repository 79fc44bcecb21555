"""The one object a dbguard run keeps on ``config.stash``: its settings, its plan, what this
process started (the embedded cluster, the fault proxy), where its session stands, and what it
must put back. Present only while dbguard is active in the run; ``run_of`` says whether it is.

Concerns keep their own per-run caches (the guards' state, the redaction secrets) private to their
module, as pytest's plugins do; everything two modules share lives here.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Final

import pytest

from pytest_dbguard.run.config import Settings
from pytest_dbguard.run.run_plan import RunPlan

if TYPE_CHECKING:
    from typing import Protocol

    from sqlalchemy import MetaData

    from pytest_dbguard.db.databases import Provisioned, SchemaBuild
    from pytest_dbguard.db.urls import DatabaseURL
    from pytest_dbguard.faults.proxy import FaultProxy
    from pytest_dbguard.guards.statement_timing import StatementTimer
    from pytest_dbguard.server.cluster import EmbeddedCluster

    class SchemaHook(Protocol):  # only a type: defining a Protocol costs every run at import
        """A schema source other than metadata and alembic (Django's ``migrate``): its
        fingerprint, and the build of a template at ``url``."""

        def fingerprint(self) -> str: ...

        def builder(self, url: DatabaseURL) -> SchemaBuild: ...

        def interrupt(self, server_url: DatabaseURL) -> None: ...


# Plain classes, not dataclasses: a dataclass compiles its generated methods from source at
# import, which every run pays (see the package docstring). Class attributes are the defaults;
# each instance sets its own when it changes one (the lists are made per instance).
class SessionState:
    """What this process did at session start, for the header, the fixtures and the cleanup."""

    metadata: MetaData | None = None
    alembic_ini: Path | None = None  # resolved and checked once, at configure
    server_version: str = ""
    ready_attempts: int = 0
    ready_ms: float = 0.0
    answered: bool = False  # the server answered a query: cleanup may connect
    server_start_ms: float = 0.0
    provisioned: Provisioned | None = None
    started: bool = False  # ensure_started ran (it runs once)
    started_at: float = 0.0  # time.time() at session start: a kept template marked later is new
    template: str = ""  # with --dbguard-reuse: built, reused or rebuilt (reuse_run), for the header
    kept_on_server: str = ""  # the template --dbguard-reuse keeps on an external server, named
    schema_hook: SchemaHook | None = None  # set by pytest_dbguard.django when Django runs
    # The xdist controller's early build of the template (run.early_template), while it runs.
    template_build: threading.Thread | None = None
    early_build: tuple[str, float, bool] | None = None  # its template, ms, built (not found)
    # --dbguard-keep-failed in a run that built its schema in place: the template that the first
    # failed test's copy built and the later ones clone (name, run id), named once.
    failed_template: tuple[str, str] | None = None

    def __init__(self, *, runs_tests: bool, schema_source: str) -> None:
        self.runs_tests = runs_tests
        self.schema_source = schema_source
        # Lines after the summary line: ``notes`` change what runs or what a flag does (shown
        # under -q too), ``details`` only describe (the fault proxy's port).
        self.notes: list[str] = []
        self.details: list[str] = []


class DbguardRun:
    """One run of dbguard in this process (the xdist controller and each worker have their own)."""

    cluster: EmbeddedCluster | None = None  # started or adopted here: this process stops it
    adopted: bool = False  # the cluster was kept by an earlier run (--dbguard-reuse)
    proxy: FaultProxy | None = None  # in front of the server, when the fault proxy is on
    # Set at configure by a run that runs tests; None for --collect-only, --help and the like.
    session: SessionState | None = None
    stopped: bool = False
    # In an xdist worker: a handle on the controller's embedded cluster (restart() needs one).
    worker_cluster: EmbeddedCluster | None = None
    worker_cluster_known: bool = False
    # --dbguard-report: times each test's statements (SQLAlchemy's, and Django's through its
    # execute wrapper); None without the option, so nothing is timed.
    statement_timer: StatementTimer | None = None

    def __init__(self, *, settings: Settings, plan: RunPlan) -> None:
        self.settings = settings
        self.plan = plan
        self.saved_environ: dict[str, str | None] = {}
        # --dbguard-keep-failed: the databases kept for failed tests, as their reports tell (in
        # the xdist controller: every worker's); a kept embedded cluster outlives the run for them.
        self.kept_failed: list[str] = []


run_key: Final = pytest.StashKey[DbguardRun]()


def run_of(config: pytest.Config) -> DbguardRun | None:
    """This process's dbguard run; None when dbguard is not active (or not set up yet)."""
    return config.stash.get(run_key, None)


def the_run(config: pytest.Config) -> DbguardRun:
    """This process's dbguard run, for code that only runs while dbguard is active."""
    return config.stash[run_key]

"""``dbguard check-schema [URL]``: migrate a database of its own and compare it with the models.

Run from the project folder: it reads the ini file pytest would find there (``dbguard_metadata``,
``dbguard_alembic_ini``, ``dbguard_env``, ``pythonpath``; ``DBGUARD_METADATA``,
``DBGUARD_ALEMBIC_INI`` and ``DBGUARD_PG_BINDIR`` take the ini's place as in a run), creates a marked database
``<name>_dbg_<run>_check`` on the server (the URL argument, ``DBGUARD_URL``, ini ``dbguard_url``,
else a throwaway embedded cluster), runs ``alembic upgrade head`` in it the way a run builds its
template, compares it with the metadata (``schema_drift``), and drops it again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import shlex
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

from pytest_dbguard.db import schema_drift
from pytest_dbguard.db.names import database_name
from pytest_dbguard.db.urls import DatabaseURL
from pytest_dbguard.exceptions import ConfigError, SchemaError
from pytest_dbguard.run import setting_values
from pytest_dbguard.run.options import OPTIONS_BY_NAME

WORKER: Final = "check"  # the last part of the database's name and of its mark
NO_INI: Final = (
    "no pytest ini file found in {folder} or above (pytest.ini, pyproject.toml with "
    "[tool.pytest.ini_options], tox.ini, setup.cfg): run dbguard check-schema from the project "
    "folder, or name the file with -c."
)
ENVIRONMENT_KEYS: Final = (
    "dbguard_metadata",
    "dbguard_alembic_ini",
    "dbguard_pg_bindir",
    "dbguard_driver",
)
# How a run's build failure ends; this command runs no test.
_RUN_STOPPED: Final = "; no test ran."
MISSING: Final = (
    "{ini} does not set {keys} (nor does a DBGUARD_* variable). dbguard check-schema compares the schema `alembic upgrade head` "
    "builds (ini dbguard_alembic_ini) with the models (ini dbguard_metadata); set both, e.g.\n"
    "    dbguard_alembic_ini = alembic.ini\n    dbguard_metadata = app.models:Base\n"
    "It is for SQLAlchemy projects migrated by Alembic; a Django project checks its models "
    "against its migrations with `python manage.py makemigrations --check --dry-run`."
)
NOT_POSTGRES: Final = (
    "{source} names SQLite; dbguard check-schema migrates a PostgreSQL database. Pass a "
    "postgresql URL, or none for a throwaway embedded server."
)
NO_DRIFT: Final = (
    "no schema drift: the database `alembic upgrade head` builds ({alembic_ini}) matches "
    "dbguard_metadata ({metadata}), {tables} table{s} compared"
)


@dataclasses.dataclass(frozen=True)
class Project:
    """What the check needs from the project's pytest ini file."""

    rootdir: Path
    inipath: Path
    metadata: str
    alembic_ini: str
    env_lines: tuple[str, ...]
    pythonpath: tuple[str, ...]
    url: str | None
    pg_bindir: str | None
    driver: str | None
    from_environment: frozenset[str] = frozenset()  # keys a DBGUARD_* variable set, as in a run

    def source(self, key: str) -> str:
        """How errors name a setting: ``ini dbguard_metadata in pytest.ini``, or
        ``environment variable DBGUARD_METADATA``."""
        if key in self.from_environment:
            return f"environment variable {_variable(key)}"
        return f"ini {key} in {self.inipath.name}"


def read_project(folder: Path, *, rootdir: str | None, inifile: str | None) -> Project:
    """The settings of the ini file pytest would find from ``folder``; ConfigError when a key the
    check needs is missing or malformed."""
    from pytest_dbguard.compat import pytest_ini

    root, inipath, entries = pytest_ini(folder, rootdir=rootdir, inifile=inifile)
    if inipath is None:
        raise ConfigError(NO_INI.format(folder=folder))
    # DBGUARD_METADATA and the others take the ini's place, as in a run (DBGUARD_URL: server_url).
    from_environment = set()
    for key in ENVIRONMENT_KEYS:
        value = os.environ.get(_variable(key), "")
        if value != "":  # as a run: a blank value is a value, which the parse below refuses
            entries = {**entries, key: value}
            from_environment.add(key)
    missing = [key for key in ("dbguard_metadata", "dbguard_alembic_ini") if not entries.get(key)]
    if missing:
        raise ConfigError(MISSING.format(ini=inipath, keys=" and ".join(missing)))
    project = Project(
        root,
        inipath,
        str(entries["dbguard_metadata"]),
        str(entries["dbguard_alembic_ini"]),
        _lines(entries.get("dbguard_env")),
        _words(entries.get("pythonpath")),
        str(entries["dbguard_url"]) if entries.get("dbguard_url") else None,
        str(entries["dbguard_pg_bindir"]) if entries.get("dbguard_pg_bindir") else None,
        None,
        frozenset(from_environment),
    )
    for key, value in (("metadata", project.metadata), ("alembic_ini", project.alembic_ini)):
        setting_values.parse(key, value, project.source(f"dbguard_{key}"))
    if entries.get("dbguard_driver"):  # as a run: the driver the tests' URLs take
        driver = setting_values.parse(
            "driver", str(entries["dbguard_driver"]), project.source("dbguard_driver")
        )
        project = dataclasses.replace(project, driver=driver)
    return project


def _variable(key: str) -> str:
    """The environment variable of an ini key, as the setting declares it (``DBGUARD_METADATA``)."""
    return OPTIONS_BY_NAME[key.removeprefix("dbguard_")].env_var


def _lines(value: Any) -> tuple[str, ...]:
    if isinstance(value, list):
        return tuple(str(line) for line in value)
    return tuple(line.strip() for line in str(value or "").splitlines() if line.strip())


def _words(value: Any) -> tuple[str, ...]:
    return tuple(value) if isinstance(value, list) else tuple(shlex.split(str(value or "")))


def server_url(argument: str | None, project: Project) -> tuple[DatabaseURL | None, str]:
    """The server to migrate on, as pytest would pick it (URL argument, then ``DBGUARD_URL``,
    then ini ``dbguard_url``), and its source; None: the embedded default."""
    text, source = setting_values.command_url(
        argument, lambda: (project.url, project.source("dbguard_url"))
    )
    if not text:
        return None, "the embedded default"
    if text.strip().lower() == setting_values.SQLITE_KEYWORD:
        raise ConfigError(NOT_POSTGRES.format(source=source))
    url = DatabaseURL.parse(text, source=source)
    if url.is_sqlite:
        raise ConfigError(NOT_POSTGRES.format(source=source))
    return url.resolved(), source


@contextlib.contextmanager
def running_server(
    url: DatabaseURL | None,
    project: Project,
    run: str,
    timeout: float,
    progress: Callable[[str], None],
) -> Iterator[DatabaseURL]:
    """``url`` once it answers a query, or a throwaway embedded cluster, stopped afterwards."""
    from pytest_dbguard.exceptions import ServerError
    from pytest_dbguard.server import cluster_start as server
    from pytest_dbguard.server import machine, readiness

    if url is not None:
        readiness.wait_until_ready(url, timeout=timeout, progress=progress)
        yield url
        return
    bindir = machine.require_bindir(project.pg_bindir, project.source("dbguard_pg_bindir"))
    cluster, _ = server.prepare_cluster(run, reuse_for=None, bindir=bindir)
    try:

        def waiting(line: str) -> None:
            if died := cluster.exited_early():
                raise ServerError(died)
            progress(line)

        embedded = cluster.url().resolved()
        readiness.wait_until_ready(embedded, timeout=timeout, progress=waiting)
        progress(f"started an embedded PostgreSQL on {embedded.host}:{embedded.port}")
        yield embedded
    finally:
        cluster.stop()


def check(
    project: Project, ini: Path, url: DatabaseURL, run: str, progress: Callable[[str], None]
) -> schema_drift.Drift:
    """Migrate a new marked database on ``url``'s server with alembic.ini ``ini`` (checked by
    ``schema.alembic_path``), compare it with the metadata, drop it."""
    from pytest_dbguard.db import databases, schema
    from pytest_dbguard.run import environment
    from pytest_dbguard.run.run_plan import RunPlan

    for entry in reversed(project.pythonpath):  # as pytest's: relative to the ini file's folder
        path = str((project.inipath.parent / entry).resolve())
        if path not in sys.path:
            sys.path.insert(0, path)
    metadata = schema.load_metadata(
        project.metadata, project.source("dbguard_metadata"), project.rootdir
    )
    schema_drift.require_tables(metadata, project.source("dbguard_metadata"), project.metadata)
    name = database_name(url.database or "postgres", run, WORKER)
    target = url.with_database(name)
    source = f"alembic {project.alembic_ini}"
    build = schema.builder(None, ini, target, source, own_process=True)
    # While alembic runs, DBGUARD_URL and the dbguard_env lines name this database, as they name
    # the template in a run: an env.py that reads DATABASE_URL migrates it, not the app's.
    plan = RunPlan(
        run=run,
        worker=WORKER,
        owns_server=True,
        embedded=False,
        server_url=url,
        test_url=target.sync(),
        async_url=target.asynchronous(),
        database=name,
        sqlite_dir=None,
    )
    assignments = environment.parse_env_lines(project.env_lines, project.source("dbguard_env"))
    try:
        # env.py runs again for the comparison: the same variables name the same database.
        with schema.environ_override(environment.variables(plan, assignments)):
            try:
                databases.provision_database(url, name, None, build, run=run, worker=WORKER)
            except SchemaError as error:
                raise SchemaError(str(error).replace(_RUN_STOPPED, ".")) from error
            progress(f"migrated {name} on {url.host}:{url.port} with alembic upgrade head")
            differences = schema_drift.check_database(target, metadata, ini)
        return schema_drift.Drift(
            project.alembic_ini, project.metadata, tuple(differences), len(metadata.tables)
        )
    finally:
        if databases.drop_database(url, name):
            progress(f"dropped {name}")


def run(
    argument: str | None,
    *,
    folder: Path,
    rootdir: str | None,
    inifile: str | None,
    timeout: float,
    progress: Callable[[str], None],
) -> tuple[bool, str]:
    """The whole command: whether the schemas match, and the report to print."""
    from pytest_dbguard.db import schema
    from pytest_dbguard.run.environment import require_sqlalchemy_2

    require_sqlalchemy_2()  # before a server starts: its schema code is SQLAlchemy 2's
    project = read_project(folder, rootdir=rootdir, inifile=inifile)
    # The ini's mistakes too: a server started for nothing would only delay them.
    ini = schema.alembic_path(
        project.alembic_ini, project.source("dbguard_alembic_ini"), project.rootdir
    )
    url, _ = server_url(argument, project)
    run_id = secrets.token_hex(4)
    with running_server(url, project, run_id, timeout, progress) as server:
        if project.driver is not None:
            server = server.with_driver(project.driver)
        drift = check(project, ini, server, run_id, progress)
    if drift.differences:
        return False, f"{drift.report()}\n{schema_drift.FIX}"
    return True, NO_DRIFT.format(
        alembic_ini=project.alembic_ini,
        metadata=project.metadata,
        tables=drift.tables,
        s="" if drift.tables == 1 else "s",
    )

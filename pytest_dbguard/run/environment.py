"""The early environment: export this process's test database before any conftest is imported.

Runs in ``pytest_load_initial_conftests`` (``-p`` activation) or, for conftest opt-in, as soon as
the plugin is configured. Resolves the settings, has ``run_plan`` decide the run id, worker and
database, starts the embedded server in the process that owns it, binds the fault proxy when a
test wants it, and exports ``DBGUARD_*`` and the ``dbguard_env`` lines.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import string
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import pytest

from pytest_dbguard.compat import sqlalchemy_version, sqlalchemy_version_text
from pytest_dbguard.config_errors import ConfigError
from pytest_dbguard.run import config as dbguard_config
from pytest_dbguard.run import options, run_plan, setting_values
from pytest_dbguard.run.run_plan import ORIGIN_VAR, RunPlan
from pytest_dbguard.run.state import DbguardRun, run_key, run_of, the_run

if TYPE_CHECKING:
    from pytest_dbguard.server.cluster import EmbeddedCluster

EXPORTED: Final = (
    "DBGUARD_WORKER",
    "DBGUARD_RUN",
    "DBGUARD_URL",
    "DBGUARD_ASYNC_URL",
    "DBGUARD_DB",
)
PLACEHOLDERS: Final = (
    "worker",
    "run",
    "url",
    "async_url",
    "pg_url",
    "db",
    "host",
    "port",
    "user",
    "password",
)
GUARD_HINT: Final = (
    "{module} was imported before pytest-dbguard set the test environment ({variables}), so it "
    "has already read the values it would use outside tests (a table prefix, a database URL). "
    "This happens when the plugin is enabled with `pytest_plugins` in a conftest that imports "
    "{module} at the top. Fix: enable it on the command line instead: `pytest -p pytest_dbguard` "
    "(or addopts = -p pytest_dbguard in the ini file, or PYTEST_PLUGINS=pytest_dbguard), or move "
    "the import of {module} into the fixtures and tests that use it."
)
OLD_SQLALCHEMY: Final = (
    "pytest-dbguard needs SQLAlchemy 2.0 or newer (its fixtures, guards and schema builds use "
    "SQLAlchemy 2's API), and SQLAlchemy {version} is installed. Upgrade it: pip install "
    "'SQLAlchemy>=2.0'. A project whose code or pins need SQLAlchemy 1.x (1.x-style "
    "select([...]), Flask-SQLAlchemy 2.x) can use dbguard once it moves to SQLAlchemy 2."
)
DJANGO_SETTINGS_TOO_EARLY: Final = (
    "Django's settings module {module} was loaded before pytest-dbguard set the test environment "
    "({variables}): dbguard is enabled with `pytest_plugins` in a conftest, and pytest-django "
    "loads the settings before any conftest, so they read the environment without the values of "
    "dbguard_env. Fix: enable it on the command line instead: `pytest -p pytest_dbguard` (or "
    "addopts = -p pytest_dbguard in the ini file, or PYTEST_PLUGINS=pytest_dbguard)."
)

# pytest-django's variable for the settings module (``django.settings_module`` reads it too;
# here because every run imports this module and none of those).
DJANGO_SETTINGS_ENV: Final = "DJANGO_SETTINGS_MODULE"
FAULTS_FIXTURE: Final = "dbguard_faults"
SCAN_LIMIT: Final = 2000  # test files read when looking for dbguard_faults


def command_line(config: pytest.Config) -> tuple[argparse.Namespace, list[str]]:
    """dbguard's own flags, read from the whole command line (ini addopts, PYTEST_ADDOPTS, args).

    At registration pytest has not parsed our flags yet (they did not exist when it parsed), so
    they are read here with a parser of our own that knows only them.
    """
    args = [
        *config.getini("addopts"),
        *shlex.split(os.environ.get("PYTEST_ADDOPTS", "")),
        *config.invocation_params.args,
    ]
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for option in options.OPTIONS:
        if option.cli:
            if option.bare is not None:
                parser.add_argument(
                    option.flag, nargs="?", const=option.bare, default=None, dest=option.dest
                )
                continue
            action = "store_true" if option.flag_kind == "switch" else "store"
            parser.add_argument(option.flag, action=action, default=None, dest=option.dest)
    namespace, rest = parser.parse_known_args(args)
    return namespace, rest


def prepare(
    config: pytest.Config, namespace: Any, args: Sequence[str], *, late: bool = False
) -> None:
    """Resolve settings, decide the run plan, export the environment, start the embedded server."""
    if run_of(config) is not None:
        return
    origin = run_plan.inherited_origin()
    environ = dict(os.environ)
    if origin is not None and origin.get("environ_url") is not None:
        environ["DBGUARD_URL"] = origin[
            "environ_url"
        ]  # the controller rewrote it; use the original
    elif origin is not None:
        environ.pop("DBGUARD_URL", None)
    settings = dbguard_config.resolve(config, namespace, environ)
    assignments = parse_env_lines(settings.env_lines, settings.source_of("env"))
    if not late:
        check_guarded_modules(settings.guard_modules, assignments)
    inspection = inspection_flag(config, namespace)
    if origin is None and inspection is None:
        require_sqlalchemy_2()  # before the run's first connection (the role check)
    plan = run_plan.decide(settings, origin, inspection=inspection)
    if plan.owns_server and plan.inspection is None:
        dbguard_config.check_split_path_flags(
            config,
            [*shlex.split(os.environ.get("PYTEST_ADDOPTS", "")), *config.invocation_params.args],
        )
        if settings.report is not None:
            from pytest_dbguard.run import report_file

            # Only the process that writes it (xdist workers send their part): before anything.
            report_file.check_path(settings.report, settings.source_of("report"))
    run = config.stash[run_key] = DbguardRun(settings=settings, plan=plan)
    if plan.inspection is not None:
        # An IDE refreshing its test tree, or --help: nothing started, connected or created,
        # and nothing for SIGTERM to clean up.
        export(run, assignments, origin_environ_url=environ.get("DBGUARD_URL") or None)
        return
    from pytest_dbguard.run import termination

    termination.install(config)  # from here on SIGTERM cleans up like Ctrl-C
    if plan.owns_server and plan.embedded:
        from pytest_dbguard.server import cluster_start as server
        from pytest_dbguard.server import machine

        cluster, adopted = server.prepare_cluster(
            plan.run,
            reuse_for=config.rootpath if settings.reuse else None,
            bindir=machine.require_bindir(settings.pg_bindir, settings.source_of("pg_bindir")),
        )
        run.cluster, run.adopted = cluster, adopted
        run.plan = run_plan.with_server(plan, cluster.url())
    if run.plan.server_url is not None and _wants_proxy(settings, config, args):
        _bind_proxy(run)
    export(run, assignments, origin_environ_url=environ.get("DBGUARD_URL") or None)
    if late:
        check_guarded_modules(settings.guard_modules, assignments)
        from pytest_dbguard.run import early_imports

        if run.plan.owns_server:  # said once, by the xdist controller
            early_imports.warn(config, [name for name, _ in assignments])


# pytest's own destinations of the commands that only show something; --setup-only is not one
# (it runs the fixtures), --setup-plan is (it only lists them).
INSPECTION_FLAGS: Final = {
    "help": "--help",
    "version": "--version",
    "markers": "--markers",
    "showfixtures": "--fixtures",
    "show_fixtures_per_test": "--fixtures-per-test",
    "collectonly": "--collect-only",
    "setupplan": "--setup-plan",
}


# The commands that collect nothing: no fixture modules, no event loop plugin registered.
NOT_COLLECTING: Final = ("--help", "--version", "--markers")


def inspection_flag(config: pytest.Config, namespace: Any) -> str | None:
    """The command-line flag that makes this run only show something, or None for a real run.

    ``namespace`` is pytest's early one (``-p`` activation) or dbguard's own (conftest opt-in,
    which knows only dbguard's flags: then pytest's early parse, when it exists, answers).
    """
    namespaces = [namespace, getattr(config, "known_args_namespace", None)]
    for dest, flag in INSPECTION_FLAGS.items():
        if any(getattr(space, dest, None) for space in namespaces if space is not None):
            return flag
    return None


def _wants_proxy(
    settings: dbguard_config.Settings, config: pytest.Config, args: Sequence[str]
) -> bool:
    """The fault proxy is on with --dbguard-proxy, or when a test file mentions dbguard_faults.

    The URL must point at the proxy before any conftest imports the application, which is before
    collection can tell which fixtures tests request; a plain-text scan of the test files answers
    early and cheaply, so runs without fault tests never pay for the extra hop.
    """
    if settings.proxy != "auto":
        return settings.proxy == "on"
    paths = [Path(arg.split("::")[0]) for arg in args if not arg.startswith("-")]
    paths = [path for path in paths if path.exists()] or [config.rootpath]
    seen = 0
    for path in paths:
        files = [path] if path.is_file() else path.rglob("*.py")
        for file in files:
            if seen >= SCAN_LIMIT:
                return False
            if any(
                part.startswith(".") or part in ("node_modules", "site-packages")
                for part in file.parts
            ):
                continue
            seen += 1
            try:
                if FAULTS_FIXTURE in file.read_text(errors="ignore"):
                    return True
            except OSError:
                continue
    return False


def _bind_proxy(run: DbguardRun) -> None:
    """Bind (but do not start) the worker's fault proxy and route the test URL through it; none
    for a URL that reaches the server by its socket (the faults that need it say why)."""
    from pytest_dbguard.faults.proxy import (
        NOT_PROXIED,
        FaultProxy,
        not_proxied,
        through,
        upstream_of,
    )

    plan = run.plan
    assert plan.server_url is not None
    if (reason := not_proxied(plan.server_url)) is not None:
        if run.settings.proxy == "on":
            source = run.settings.source_of("proxy")
            raise ConfigError(f"{source} = on: {NOT_PROXIED.format(reason=reason)}")
        return
    run.proxy = FaultProxy(*upstream_of(plan.server_url))
    port = run.proxy.bind()
    run.plan = run_plan.with_test_url(plan, through(plan.test_url, port))


def values_for(plan: RunPlan) -> dict[str, str]:
    """The placeholder values of ``dbguard_env`` for this process."""
    url = plan.test_url
    return {
        "worker": plan.worker,
        "run": plan.run,
        "url": url.render(hide_password=False),
        "async_url": plan.async_url.render(hide_password=False),
        "pg_url": url.libpq().render(hide_password=False),
        "db": plan.database,
        "host": url.host or "",
        "port": "" if url.port is None else str(url.port),  # 0 where no server starts
        "user": url.username or "",
        "password": url.password or "",
    }


def parse_env_lines(lines: Sequence[str], source: str = "ini dbguard_env") -> list[tuple[str, str]]:
    """``NAME=VALUE`` lines of ``dbguard_env``; ConfigError on a line without ``=`` or a bad
    placeholder, naming ``source`` (the key and its file, as ``Settings.source_of`` words it)."""
    assignments: list[tuple[str, str]] = []
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        name = name.strip()
        if not sep or not name or not name.replace("_", "").isalnum():
            raise ConfigError(
                f"{source}: {line!r} is not a NAME=VALUE line; write e.g. "
                "'DB_TABLE_PREFIX=test_{worker}', 'DATABASE_URL={url}' (SQLAlchemy) or "
                "'DATABASE_URL={pg_url}' (Django, dj-database-url, django-environ)."
            )
        try:
            fields = [
                field for _, field, _, _ in string.Formatter().parse(value) if field is not None
            ]
        except ValueError as error:
            raise ConfigError(
                f"{source}: {line!r}: {error}; write a literal brace as '{{{{' or '}}}}'."
            ) from None
        for field in fields:
            if field not in PLACEHOLDERS:
                raise ConfigError(
                    f"{source}: {line!r} uses the unknown placeholder {{{field}}}; "
                    f"valid placeholders: {', '.join('{' + p + '}' for p in PLACEHOLDERS)}."
                )
        assignments.append((name, value))
    return assignments


def variables(plan: RunPlan, assignments: Sequence[tuple[str, str]]) -> dict[str, str]:
    """``DBGUARD_*`` and the rendered ``dbguard_env`` lines for ``plan``'s database."""
    values = values_for(plan)
    rendered = {
        "DBGUARD_WORKER": plan.worker,
        "DBGUARD_RUN": plan.exported_run,
        "DBGUARD_URL": values["url"],
        "DBGUARD_ASYNC_URL": values["async_url"],
        "DBGUARD_DB": plan.database,
    }
    for name, template in assignments:
        rendered[name] = template.format(**values)
    return rendered


def require_sqlalchemy_2() -> None:
    """ConfigError when the installed SQLAlchemy is older than 2.0: before, the first test that
    armed a guard failed on a missing name and the later ones ran without it."""
    installed = sqlalchemy_version()
    if installed is not None and installed < (2, 0):
        raise ConfigError(OLD_SQLALCHEMY.format(version=sqlalchemy_version_text()))


def export(
    run: DbguardRun,
    assignments: Sequence[tuple[str, str]],
    *,
    origin_environ_url: str | None,
) -> None:
    """Put ``DBGUARD_*`` and the ``dbguard_env`` values into ``os.environ``; saved for restoring at the end."""
    plan, cluster = run.plan, run.cluster
    exported = variables(plan, assignments)
    if plan.owns_server:
        exported[ORIGIN_VAR] = json.dumps(
            {
                "pid": os.getpid(),
                "run": plan.run,
                "pipeline_key": plan.pipeline_key,
                "server_url": plan.server_url.portable() if plan.server_url else None,
                "embedded": plan.embedded,
                "sqlite_dir": str(plan.sqlite_dir) if plan.sqlite_dir else None,
                "environ_url": origin_environ_url,
                "schema_mode": plan.schema is not None,
                "embedded_root": str(cluster.root) if cluster else None,
                "bindir": str(cluster.bindir) if cluster else None,
            }
        )
    for name, value in exported.items():
        run.saved_environ.setdefault(name, os.environ.get(name))
        os.environ[name] = value


def configure_inspection(config: pytest.Config) -> None:
    """A command that only shows something (``--collect-only``, ``--fixtures``...) imports the
    tests, which import the models from where ``dbguard_metadata`` says they live: make that
    importable as a real run would, without importing the metadata or anything else."""
    metadata = the_run(config).settings.metadata
    if metadata:
        setting_values.find_from_rootdir(metadata.partition(":")[0], config.rootpath)


def leave(config: pytest.Config) -> None:
    """At the end of the run: ``os.environ`` and SIGTERM's handler given back as they were before
    it (matters for in-process nested runs)."""
    run = run_of(config)
    if run is not None:
        for name, value in run.saved_environ.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    if "pytest_dbguard.run.termination" in sys.modules:  # installed by a run that runs tests
        from pytest_dbguard.run import termination

        termination.restore(config)


def check_guarded_modules(modules: Sequence[str], assignments: Sequence[tuple[str, str]]) -> None:
    """Stop the run when a guarded module was imported before the environment was set; Django's
    settings module is one whenever dbguard_env has lines (they are there for the settings)."""
    variables = ", ".join([*EXPORTED, *(name for name, _ in assignments)])
    for module in modules:
        if module in sys.modules:
            raise ConfigError(GUARD_HINT.format(module=module, variables=variables))
    settings_module = os.environ.get(DJANGO_SETTINGS_ENV)
    if assignments and settings_module and settings_module in sys.modules:
        raise ConfigError(
            DJANGO_SETTINGS_TOO_EARLY.format(module=settings_module, variables=variables)
        )


def embedded_cluster(run: DbguardRun) -> EmbeddedCluster | None:
    """The embedded server: the owner's own, or in an xdist worker one rebuilt from the origin."""
    plan = run.plan
    if not plan.embedded or plan.server_url is None:
        return None
    if run.cluster is not None:
        return run.cluster
    if not run.worker_cluster_known:  # kept: it holds the process it may restart
        from pytest_dbguard.server.cluster import EmbeddedCluster

        origin = json.loads(os.environ.get(ORIGIN_VAR) or "{}")
        root, bindir, port = origin.get("embedded_root"), origin.get("bindir"), plan.server_url.port
        password = plan.server_url.password or ""
        run.worker_cluster = (
            EmbeddedCluster(
                Path(bindir), Path(root), port or 5432, keep=run.settings.reuse, password=password
            )
            if root and bindir
            else None
        )
        run.worker_cluster_known = True
    return run.worker_cluster

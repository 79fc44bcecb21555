"""Whether Django runs in this pytest run, and the wiring when it does.

Django runs when pytest-django is active and has settings (``DJANGO_SETTINGS_MODULE``, which
pytest-django also sets from ``--ds`` and the ini key). Then dbguard builds the schema with
Django's ``migrate``, overrides ``django_db_setup`` and watches Django's connections. Otherwise
nothing here imports Django.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Final

import pytest

from pytest_dbguard.db.urls import DatabaseURL
from pytest_dbguard.django import settings_module
from pytest_dbguard.exceptions import ConfigError
from pytest_dbguard.run.config import ini_source
from pytest_dbguard.run.state import DbguardRun, run_of, the_run

INI_DATABASES: Final = "dbguard_django_databases"
DEFAULT_ALIASES: Final = ("default",)
FIXTURES_PLUGIN: Final = "pytest_dbguard.django.fixtures"
NEEDS_POSTGRES: Final = (
    "Django support needs a PostgreSQL server: this run uses SQLite ({source}). Drop "
    "--dbguard-url sqlite (the embedded PostgreSQL is the default) or give a PostgreSQL URL."
)
URL_HINT: Final = (
    "ini dbguard_env gives {names} a SQLAlchemy URL ({{url}}: 'postgresql+psycopg://...'); "
    "settings that read it as a database URL take {{pg_url}} ({first}={{pg_url}}: "
    "'postgres://user:password@host:port/name')."
)
NEEDS_DATABASES: Final = (
    "Django support gives each worker a database of its own, cloned from a migrated template, "
    "but {source} = 'schema' asks for one schema per worker in a shared database. Remove it: "
    "the default (auto) gives a database per worker to a role that may create databases."
)
ROLE_CANNOT_CREATE: Final = (
    "Django support gives each worker a database of its own, cloned from a migrated template, "
    "but the role {user!r} may not create databases on {server} (dbguard_worker_isolation auto "
    "would fall back to one schema per worker, which Django support cannot serve). Give the "
    "role that right (ALTER ROLE {quoted} CREATEDB, as a superuser) or connect as one that has "
    "it; or leave the URL out and dbguard starts a PostgreSQL of its own."
)
NO_SETTINGS: Final = (
    "ini {ini} is set, but this run has no Django settings for dbguard to serve: run pytest-django "
    "(installed, or -p django when plugin autoload is off) with "
    "DJANGO_SETTINGS_MODULE set (the environment, --ds, or the ini key DJANGO_SETTINGS_MODULE), "
    "or call django.conf.settings.configure() in your conftest's pytest_configure; or remove "
    "{ini} if this project does not use Django."
)
UNKNOWN_ALIAS: Final = (
    "{source} names the database alias {alias!r}, which settings.DATABASES of {settings} does "
    "not define (it has: {known}). List aliases of DATABASES, e.g. '{ini} = default'."
)
TWO_SOURCES: Final = (
    "This run uses Django (pytest-django with {settings}), whose schema dbguard builds with "
    "Django's migrate, and {source} is set too. Remove {source}: a Django project's schema comes "
    "from its migrations."
)

# pytest-django's flags for its own test database, which dbguard replaces (flag, option dest).
PYTEST_DJANGO_DB_FLAGS: Final = (("--reuse-db", "reuse_db"), ("--create-db", "create_db"))
OTHER_BACKEND: Final = (
    "dbguard: DATABASES[{alias!r}] in {settings} uses {engine}; dbguard serves PostgreSQL, so "
    "the tests run on {postgres}{dropped}. What the settings or models chose for that backend "
    "stays chosen (a setting computed from it, a model that reads connection.vendor at import): "
    "give the settings the PostgreSQL backend with a dbguard_env line (their variable, or "
    "DATABASE_URL={{pg_url}})"
)
IGNORED_FLAGS: Final = (
    "dbguard: pytest-django's {flags}{given} {have} no effect: dbguard serves Django's test databases "
    "(--dbguard-reuse keeps the migrated template between runs, --dbguard-rebuild rebuilds it)"
)


def django_active(config: pytest.Config) -> bool:
    """pytest-django is active and Django has settings (a settings module, or a conftest's
    ``settings.configure()``); never imports Django itself."""
    from pytest_dbguard.django import compat

    if not compat.pytest_django_active(config):
        return False
    if os.environ.get(settings_module.SETTINGS_ENV):
        return "django" in sys.modules  # pytest-django imported it while loading the settings
    if "django.conf" not in sys.modules:
        return False  # nobody touched Django's settings: Django is not in use
    from django.conf import settings

    return bool(settings.configured)


def startup_failure(
    early_config: pytest.Config, error: BaseException, settings_env: str | None
) -> ConfigError | None:
    """pytest-django's failure to load the settings or set Django up, explained: a SQLAlchemy URL
    given to Django through dbguard_env, a settings module that fails to load; None for others.
    ``settings_env`` is ``DJANGO_SETTINGS_MODULE`` as it was before pytest-django ran."""
    namespace = early_config.known_args_namespace
    if getattr(namespace, "help", False) or getattr(namespace, "version", False):
        return None  # pytest shows the help anyway, with a warning about the conftests
    source = settings_module.source_of_module(getattr(namespace, "ds", None), settings_env)
    run = run_of(early_config)
    env_lines = run.settings.env_lines if run is not None else ()
    explained = settings_module.sqlalchemy_url_failure(error, env_lines)
    if explained is None:
        explained = settings_module.explain(error, source, _hint(run))
    return explained


def _hint(run: DbguardRun | None) -> str:
    """What dbguard gave the settings that they may have failed on: SQLite, or a SQLAlchemy
    URL through dbguard_env (settings that parse DATABASE_URL themselves refuse both)."""
    if run is None:
        return ""
    if run.plan.server_url is None:
        return NEEDS_POSTGRES.format(source=run.settings.source_of("url"))
    names = settings_module.sqlalchemy_url_names(run.settings.env_lines)
    if not names:
        return ""
    return URL_HINT.format(names=", ".join(names), first=names[0])


def aliases_of(config: pytest.Config) -> tuple[str, ...]:
    """The aliases of ini ``dbguard_django_databases`` (default ``default``)."""
    listed = tuple(config.getini(INI_DATABASES) or ())
    return listed or DEFAULT_ALIASES


def worker_url(config: pytest.Config) -> DatabaseURL:
    """This worker's test database (through the fault proxy when it is on)."""
    return the_run(config).plan.test_url


def register(config: pytest.Config) -> None:
    """When Django runs: the schema hook for the lifecycle, the fixtures, the Django guards."""
    run = run_of(config)
    if run is None:
        return
    if not django_active(config):
        if config.getini(INI_DATABASES) and run.plan.inspection is None:
            raise ConfigError(NO_SETTINGS.format(ini=INI_DATABASES))
        return
    plan, settings = run.plan, run.settings
    if plan.inspection is not None:
        _register_plugins(config)
        return
    if plan.server_url is None:
        raise ConfigError(NEEDS_POSTGRES.format(source=settings.source_of("url")))
    if plan.schema is not None and settings.worker_isolation == "schema":
        raise ConfigError(NEEDS_DATABASES.format(source=settings.source_of("worker_isolation")))
    if plan.schema is not None:
        raise ConfigError(_role_cannot_create(plan.server_url))
    module = settings_module.settings_label()
    for name in ("metadata", "alembic_ini"):
        if getattr(settings, name):
            raise ConfigError(TWO_SOURCES.format(settings=module, source=settings.source_of(name)))
    aliases = aliases_of(config)
    from django.conf import settings as django_settings

    for alias in aliases:
        if alias not in django_settings.DATABASES:
            known = ", ".join(sorted(django_settings.DATABASES)) or "none"
            raise ConfigError(
                UNKNOWN_ALIAS.format(
                    source=ini_source(config, INI_DATABASES)
                    if config.getini(INI_DATABASES)
                    else f"the default of ini {INI_DATABASES} (unset)",
                    ini=INI_DATABASES,
                    alias=alias,
                    settings=module,
                    known=known,
                )
            )
    from pytest_dbguard.django.migrate import DjangoSchema

    hook = DjangoSchema(config, aliases)
    state = run.session
    assert state is not None, "register runs after lifecycle.configure"
    state.schema_hook = hook
    state.schema_source = hook.source
    if plan.owns_server:  # said once, by the xdist controller
        state.notes.extend(_other_backends(aliases, module))
    ignored = [flag for flag, dest in PYTEST_DJANGO_DB_FLAGS if getattr(config.option, dest, False)]
    if ignored and plan.owns_server:  # said once, by the xdist controller
        have = "has" if len(ignored) == 1 else "have"
        given = _given_in(config, ignored)
        state.notes.append(
            IGNORED_FLAGS.format(flags=" and ".join(ignored), given=given, have=have)
        )
    _register_plugins(config)


def _given_in(config: pytest.Config, flags: Sequence[str]) -> str:
    """Where flags that the command line did not give come from (the ini file's addopts,
    PYTEST_ADDOPTS), so the note says where to remove them; empty for the command line."""
    import shlex

    places = []
    if any(flag in config.getini("addopts") for flag in flags):
        places.append(f"addopts in {config.inipath.name}" if config.inipath else "addopts")
    if any(flag in shlex.split(os.environ.get("PYTEST_ADDOPTS", "")) for flag in flags):
        places.append("PYTEST_ADDOPTS")
    return f" (from {' and '.join(places)})" if places else ""


def _other_backends(aliases: Sequence[str], module: str) -> list[str]:
    """A header note per served alias whose settings name another backend than PostgreSQL."""
    from django.conf import settings as django_settings

    from pytest_dbguard.django.targets import POSTGRES_ENGINE, is_postgresql

    notes = []
    for alias in aliases:
        entry = django_settings.DATABASES[alias]
        if is_postgresql(entry):
            continue
        options = sorted(entry.get("OPTIONS") or {})
        dropped = f", without its OPTIONS ({', '.join(options)})" if options else ""
        notes.append(
            OTHER_BACKEND.format(
                alias=alias,
                settings=module,
                engine=entry.get("ENGINE") or "no ENGINE",
                postgres=POSTGRES_ENGINE,
                dropped=dropped,
            )
        )
    return notes


def _register_plugins(config: pytest.Config) -> None:
    import importlib

    from pytest_dbguard.django import naive_warnings, statements

    manager = config.pluginmanager
    if manager.get_plugin(FIXTURES_PLUGIN) is None:
        manager.register(importlib.import_module(FIXTURES_PLUGIN), FIXTURES_PLUGIN)
    if manager.get_plugin(statements.PLUGIN_NAME) is None:
        manager.register(statements.DjangoStatements(config), statements.PLUGIN_NAME)
    settings = the_run(config).settings
    if settings.naive_datetime != "off":
        naive_warnings.register(config)
    if settings.keep_failed:
        from pytest_dbguard.django import kept_failed

        kept_failed.register(config, aliases_of(config))


def _role_cannot_create(server: DatabaseURL) -> str:
    """ROLE_CANNOT_CREATE for the role and server the URL reaches, with libpq's defaults."""
    from pytest_dbguard.db.sql import quote_ident
    from pytest_dbguard.guards.foreign_databases import Target, libpq_user

    user = libpq_user(server.username)
    where = Target.from_url(server).server
    return ROLE_CANNOT_CREATE.format(user=user, quoted=quote_ident(user), server=where)

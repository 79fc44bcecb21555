"""The Django schema source: a template built by Django's own ``migrate``, and its fingerprint.

dbguard's lifecycle builds the template once per run (under its advisory lock, in whichever
worker gets there first) and clones it per worker; this module only says how to build it and
when a kept one (``--dbguard-reuse``) is stale: the fingerprint covers every installed app's
migration files and models, the Django version, the settings module and the aliases.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import sys
import threading
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import pytest

from pytest_dbguard.db.databases import SelfConnectingBuild
from pytest_dbguard.django import compat, later_tables, targets
from pytest_dbguard.django.settings_module import settings_label
from pytest_dbguard.exceptions import ConfigError, SchemaError, brief
from pytest_dbguard.run.state import the_run

if TYPE_CHECKING:
    from pytest_dbguard.db.urls import DatabaseURL

CONNECT_FAILED: Final = (
    "Django could not connect to the template {database!r} that dbguard made (database alias "
    "{alias!r}, settings {settings}): {error}. dbguard sets the alias's NAME, USER, PASSWORD, "
    "HOST and PORT and keeps the rest of it: check its OPTIONS. No test ran."
)
COLLATION_REFUSED: Final = (
    "DATABASES[{alias!r}]['TEST']['COLLATION'] is set in {settings}, but PostgreSQL takes no "
    "collation when it creates a database (Django refuses it too). Remove it; a database named "
    "by TEST['TEMPLATE'] carries its own collation to the tests."
)
TEST_SETTINGS_DIFFER: Final = (
    "DATABASES aliases {aliases} in {settings} set TEST[{key!r}] differently ({values}), but "
    "dbguard serves them one database per worker. Give them the same value, or serve one of "
    "them (ini dbguard_django_databases)."
)
INTERRUPTED: Final = "the run ended before its tests started: the build of {database!r} stopped"
MIGRATE_FAILED: Final = (
    "Django's migrate (database alias {alias!r}, settings {settings}) failed while dbguard built "
    "the template {database!r}: {error}. Fix that migration (or the models it imports); "
    "no test ran. dbguard migrates once per run into a template that every worker clones."
)


class DjangoSchema:
    """The template of a Django project: ``migrate`` for every alias dbguard serves."""

    def __init__(self, config: pytest.Config, aliases: Sequence[str]) -> None:
        self.config = config
        self.aliases = tuple(aliases)
        self.settings_module = settings_label()
        self._backends: list[int] = []  # the server processes of a build going on
        self._stopping = False
        self.migrated_here = False  # this process ran migrate (and its signals' handlers)
        self.create_options, self.options_origin = _create_options(
            self.aliases, self.settings_module
        )
        self.migrated = _first_of_each_database(self.aliases)

    @property
    def _unmigrated(self) -> tuple[tuple[str, ...], str]:
        """The aliases whose tables come from the models without migrations, and why: as
        Django's own test setup, TEST['MIGRATE'] = False (or pytest-django's --nomigrations, for
        every alias); or test settings' MIGRATION_MODULES mapping every app to None (the
        DisableMigrations idiom, which --nomigrations sets too). Not kept: the header may ask
        before the apps are ready (settings.configure() in a conftest's pytest_configure), the
        fingerprint and the build ask once they are."""
        everywhere = bool(getattr(self.config.option, "nomigrations", False))
        by_settings = not everywhere and _settings_turn_migrations_off()
        aliases = tuple(
            alias
            for alias in self.aliases
            if everywhere or by_settings or _test_setting(alias, "MIGRATE") is False
        )
        if everywhere:
            return aliases, "--nomigrations"
        if by_settings:
            return aliases, f"MIGRATION_MODULES in {self.settings_module}"
        return aliases, "TEST['MIGRATE'] = False"

    @property
    def unmigrated(self) -> tuple[str, ...]:
        return self._unmigrated[0]

    @property
    def source(self) -> str:
        """How the header names this schema source."""
        if not self.unmigrated:
            return f"django migrate ({self.settings_module})"
        which = "" if self.unmigrated == self.aliases else f" for {', '.join(self.unmigrated)}"
        return (
            f"django migrate ({self.settings_module}), tables from the models without "
            f"migrations{which} ({self._unmigrated[1]})"
        )

    def fingerprint(self) -> str:
        """A short hash of what the migrated schema depends on: a changed migration, model file,
        Django version or alias list gives another kept template."""
        import django
        from django.apps import apps

        digest = hashlib.sha1(
            f"{django.get_version()}|{self.settings_module}|{','.join(self.aliases)}|"
            f"{','.join(self.migrated)}|{','.join(self.unmigrated)}|{self.create_options}".encode()
        )
        for app in sorted(apps.get_app_configs(), key=lambda app: app.label):
            digest.update(f"\0app:{app.label}".encode())
            for path in _schema_files(app.label, app.models_module):
                digest.update(f"\0{path.name}\0".encode())
                digest.update(path.read_bytes())
        return digest.hexdigest()[:6]

    def builder(self, url: DatabaseURL) -> SelfConnectingBuild:
        """The build of the template at ``url``: ``migrate`` (and ``createcachetable``) per alias.

        Django migrates through its own connection, closed again before anyone clones the
        template (one built in place stays open for the tests); dbguard opens none for it (no
        SQLAlchemy in a Django run).
        """

        # Built in place, in this worker's own database, on the thread the tests run on: the
        # connections that migrated it serve the first test (see ``targets.pointed``).
        stay = url.database == the_run(self.config).plan.database

        def build() -> None:
            from django.core.management import call_command
            from django.db import connections

            here = stay and threading.current_thread() is threading.main_thread()
            # Mirrors too (TEST['MIRROR']: a read replica), as Django's test setup points them:
            # code that runs in a migration or a post_migrate handler may read through one.
            served = (*self.aliases, *targets.mirrors_of(self.aliases))
            with compat.unblocked(self.config), targets.pointed(served, url, stay=here):
                for alias in self.migrated:
                    try:  # apart from migrate: a refused connection is not a broken migration
                        with connections[alias].cursor() as cursor:
                            cursor.execute("SELECT pg_backend_pid()")
                            self._backends.append(cursor.fetchone()[0])
                    except Exception as error:
                        raise SchemaError(
                            self._failure(alias, url, error, CONNECT_FAILED)
                        ) from error
                    try:
                        if self._stopping:
                            raise SchemaError(INTERRUPTED.format(database=url.database))
                        with _migrations_off(alias in self.unmigrated):
                            # run_syncdb, as Django's test setup: apps without migrations
                            # (a test app's models) get their tables too.
                            call_command(
                                "migrate",
                                database=alias,
                                interactive=False,
                                verbosity=0,
                                run_syncdb=True,
                            )
                        call_command("createcachetable", database=alias, verbosity=0)
                    except Exception as error:
                        if self._stopping:
                            raise SchemaError(INTERRUPTED.format(database=url.database)) from None
                        failure = SchemaError(self._failure(alias, url, error))
                        failure.cause_line = f"alias {alias!r}: {self._cause(url, error)}"
                        raise failure from error
                    finally:
                        self._backends.clear()
            self.migrated_here = True

        return SelfConnectingBuild(build, self.create_options, self.options_origin)

    def create_tables_of_later_models(self) -> None:
        """In a test process that did not migrate: ``later_tables.create`` for each alias."""
        if self.migrated_here:
            return
        for alias in self.migrated:
            later_tables.create(alias, everything=alias in self.unmigrated)

    def send_migrate_signals(self) -> None:
        """``pre_migrate`` and ``post_migrate`` for each alias, as a ``migrate`` with nothing to
        apply sends them, in a test process that did not migrate (an xdist worker that cloned
        the template another built, a reused template). pytest-django migrates in every worker,
        so a project's handlers that write files or fill a cache ran in each: weblate's writes
        the git identity its tests commit with. What they write to the database is rolled back:
        the clone already holds what they wrote when the template was migrated, and a handler
        that creates rows without looking would make them twice."""
        if self.migrated_here:
            return
        from django.apps import apps
        from django.core.management.sql import emit_post_migrate_signal, emit_pre_migrate_signal
        from django.db import transaction

        for alias in self.migrated:
            with transaction.atomic(using=alias):
                emit_pre_migrate_signal(0, False, alias, stdout=sys.stdout, apps=apps, plan=[])
                emit_post_migrate_signal(0, False, alias, stdout=sys.stdout, apps=apps, plan=[])
                transaction.set_rollback(True, using=alias)

    def interrupt(self, server_url: DatabaseURL) -> None:
        """Stop a build going on in another thread (the run is over before its tests): its
        connection is ended, so ``migrate`` fails at its next statement instead of running to
        the end; the template's own failure path drops the half-built template."""
        from pytest_dbguard.db import maintenance

        self._stopping = True
        with contextlib.suppress(Exception), maintenance.shared(server_url) as connection:
            for pid in list(self._backends):
                connection.rows("SELECT pg_terminate_backend(:pid)", {"pid": pid})

    def _failure(
        self, alias: str, url: DatabaseURL, error: Exception, message: str = MIGRATE_FAILED
    ) -> str:
        return message.format(
            alias=alias,
            settings=self.settings_module,
            database=url.database,
            error=self._cause(url, error),
        )

    @staticmethod
    def _cause(url: DatabaseURL, error: Exception) -> str:
        """``Type: first line in migration app.name (at file:line)``, without the password."""
        cause = getattr(error, "__cause__", None) or error  # Django wraps the driver's error
        return brief(cause, url.password) + _migration_frame(error)


def _first_of_each_database(aliases: Sequence[str]) -> tuple[str, ...]:
    """The aliases that ``migrate`` runs for: the first of those whose settings name one test
    database (Django's ``test_db_signature``: host, port, engine, test name). Django's test setup
    migrates that database once and makes the others its mirrors, so a post_migrate handler runs
    once for them, not once per alias (twice into one database: a row made twice). Read before
    dbguard points the aliases at the worker's database."""
    from django.conf import settings
    from django.db import DEFAULT_DB_ALIAS

    firsts: dict[tuple[str, ...], str] = {}
    # ``default`` first, as Django's test setup takes it: data migrations use the default alias.
    for alias in sorted(aliases, key=lambda alias: alias != DEFAULT_DB_ALIAS):
        entry = settings.DATABASES[alias]
        test_name = _test_setting(alias, "NAME") or f"test_{entry.get('NAME') or ''}"
        signature = tuple(str(entry.get(key) or "") for key in ("HOST", "PORT", "ENGINE"))
        firsts.setdefault((*signature, test_name), alias)
    return tuple(alias for alias in aliases if alias in firsts.values())


def _test_setting(alias: str, key: str) -> Any:
    """``settings.DATABASES[alias]['TEST'][key]``, None when not set."""
    from django.conf import settings

    return (settings.DATABASES[alias].get("TEST") or {}).get(key)


def _create_options(aliases: Sequence[str], settings_module: str) -> tuple[str, str]:
    """What ``CREATE DATABASE`` of the template takes from the aliases' ``TEST`` settings, as
    Django's PostgreSQL backend does: ``CHARSET`` as its encoding, ``TEMPLATE`` as the database
    it is copied from (one with PostGIS or other extensions installed, say); and which settings
    those are, for an error about them."""
    from pytest_dbguard.db.sql import quote_ident, quote_literal

    chosen: dict[str, str] = {}
    origins: list[str] = []
    for key in ("TEMPLATE", "CHARSET"):
        values = {alias: _test_setting(alias, key) for alias in aliases}
        given = {alias: str(value) for alias, value in values.items() if value}
        if len(set(given.values())) > 1:
            raise ConfigError(
                TEST_SETTINGS_DIFFER.format(
                    aliases=", ".join(given),
                    settings=settings_module,
                    key=key,
                    values=", ".join(f"{alias}: {value!r}" for alias, value in given.items()),
                )
            )
        if given:
            alias, chosen[key] = next(iter(given.items()))
            origins.append(f"DATABASES[{alias!r}]['TEST'][{key!r}]")
    for alias in aliases:
        if _test_setting(alias, "COLLATION") is not None:
            raise ConfigError(COLLATION_REFUSED.format(alias=alias, settings=settings_module))
    options = ""
    if "TEMPLATE" in chosen:
        options += f" TEMPLATE {quote_ident(chosen['TEMPLATE'])}"
    if "CHARSET" in chosen:
        options += f" ENCODING {quote_literal(chosen['CHARSET'])}"
    return options, f"{' and '.join(origins)} in {settings_module}"


@contextlib.contextmanager
def _migrations_off(off: bool) -> Iterator[None]:
    """Every app without its migrations for a while, the way Django's test setup does it for
    ``TEST['MIGRATE'] = False``: ``migrate --run-syncdb`` then makes the tables from the models."""
    if not off:
        yield
        return
    from django.apps import apps
    from django.conf import settings

    saved = settings.MIGRATION_MODULES
    settings.MIGRATION_MODULES = {app.label: None for app in apps.get_app_configs()}
    try:
        yield
    finally:
        settings.MIGRATION_MODULES = saved


def _settings_turn_migrations_off() -> bool:
    """Whether the settings' ``MIGRATION_MODULES`` map every installed app to None: ``migrate``
    then makes every table from the models and runs no migration."""
    from django.apps import apps
    from django.db.migrations.loader import MigrationLoader

    labels = [app.label for app in apps.get_app_configs()] if apps.ready else []
    return bool(labels) and all(
        MigrationLoader.migrations_module(label) == (None, True) for label in labels
    )


def _schema_files(label: str, models_module: object) -> list[Path]:
    """The app's model files and migration files, sorted."""
    from django.db.migrations.loader import MigrationLoader

    files: set[Path] = set()
    models_file = getattr(models_module, "__file__", None)
    if models_file:
        path = Path(models_file)
        files.update(path.parent.glob("*.py") if path.name == "__init__.py" else [path])
    module_name, _explicit = MigrationLoader.migrations_module(label)
    if module_name:
        try:
            spec = importlib.util.find_spec(module_name)
        except (ImportError, ValueError):  # the app has no migrations package
            spec = None
        for folder in (spec.submodule_search_locations or []) if spec is not None else []:
            files.update(Path(folder).rglob("*.py"))
    return sorted(files)


def _migration_frame(error: BaseException) -> str:
    """`` in migration app.name (at file:line)``: the migration being applied when ``error``
    was raised (Django's executor holds it in a local), and its own line when it has one."""
    named = ""
    traceback_ = error.__traceback__
    while traceback_ is not None:
        migration: Any = traceback_.tb_frame.f_locals.get("migration")
        label, name = getattr(migration, "app_label", None), getattr(migration, "name", None)
        if label and name:
            named = f" in migration {label}.{name}"
        traceback_ = traceback_.tb_next
    django_folder = os.path.dirname(os.path.abspath(_django_file()))
    frames = [
        frame
        for frame in traceback.extract_tb(error.__traceback__)
        if f"{os.sep}migrations{os.sep}" in frame.filename
        and not frame.filename.startswith(django_folder)
    ]
    where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return named + where


def _django_file() -> str:
    import django

    return str(django.__file__)

"""Tables of models registered after the template was built: those that test modules declare.

pytest-django migrates in each process after collection, so ``migrate --run-syncdb`` makes the
tables of every model of an app without migrations, those declared in test modules too (taiga's
``tests`` app). dbguard's template may be older than that collection: the xdist controller builds
it before anything is collected, and a kept template may come from such a build. A test process
that cloned it creates what its clone lacks, as run_syncdb would, with their content types and
permissions.
"""

from __future__ import annotations

import importlib
from typing import Any


def create(alias: str, *, everything: bool) -> None:
    """Create the missing tables of the apps without migrations (every app: ``everything``,
    for ``TEST['MIGRATE'] = False`` or ``--nomigrations``) on ``alias``'s database."""
    from django.apps import apps
    from django.db import connections, router

    connection = connections[alias]
    unmigrated = [
        app
        for app in apps.get_app_configs()
        if app.models_module is not None and (everything or not has_migrations(app.label))
    ]
    if not unmigrated:
        return
    tables = set(connection.introspection.table_names())
    convert = connection.introspection.identifier_converter

    def installed(model: Any) -> bool:
        opts = model._meta
        return convert(opts.db_table) in tables or bool(
            opts.auto_created and convert(opts.auto_created._meta.db_table) in tables
        )

    missing = {
        app: [
            model
            for model in router.get_migratable_models(app, alias, include_auto_created=False)
            if model._meta.can_migrate(connection) and not installed(model)
        ]
        for app in unmigrated
    }
    if not any(missing.values()):
        return
    with connection.schema_editor() as editor:
        for models in missing.values():
            for model in models:
                editor.create_model(model)
    _add_content_types_and_permissions([app for app, models in missing.items() if models], alias)


def _add_content_types_and_permissions(app_configs: list[Any], alias: str) -> None:
    """What migrate's post_migrate handlers of contenttypes and auth write for those apps (both
    look before they create). dbguard's own post_migrate in such a process is rolled back: the
    clone holds the rest from the template's migrate."""
    from django.apps import apps

    if apps.is_installed("django.contrib.contenttypes"):
        from django.contrib.contenttypes.management import create_contenttypes

        for app in app_configs:
            create_contenttypes(app, verbosity=0, interactive=False, using=alias, apps=apps)
    if apps.is_installed("django.contrib.auth"):
        from django.contrib.auth.management import create_permissions

        for app in app_configs:
            create_permissions(app, verbosity=0, interactive=False, using=alias, apps=apps)


def has_migrations(label: str) -> bool:
    """Whether ``migrate`` counts the app as migrated, as Django's ``MigrationLoader`` decides
    (without loading the migrations): its migrations module imports and is a regular package,
    not a folder without ``__init__.py``."""
    from django.db.migrations.loader import MigrationLoader

    module_name, _explicit = MigrationLoader.migrations_module(label)
    if module_name is None:
        return False
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return False
    path = getattr(module, "__path__", None)
    if getattr(module, "__file__", None) is None and not isinstance(path, list):
        return False  # a namespace package
    return path is not None

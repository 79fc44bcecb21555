"""The private attributes of pytest-django and Django that dbguard touches, and nothing else.

Checked against pytest-django 4.5 to 4.14 and Django 4.2 to 5.2. Each helper degrades to a
safe default when the attribute is gone: a new release costs a feature some precision, never a
crash (the serialized copy has no fallback: Django reads it where it writes it).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from typing import Final

import pytest

# pytest-django's fixture that runs a database test's Django test case: its setup is
# ``_pre_setup`` (the atomic blocks), its teardown ``_post_teardown`` (the rollback or flush).
# Named so in pytest-django 4.5 to 4.14 (``pytest_django.fixtures._django_db_helper``).
DB_HELPER: Final = "_django_db_helper"


def pytest_django_active(config: pytest.Config) -> bool:
    """Whether pytest-django's plugin is registered in this run (``-p pytest_django`` or its
    entry point); its module is looked up, never imported."""
    module = sys.modules.get("pytest_django.plugin")
    return module is not None and config.pluginmanager.is_registered(module)


@contextlib.contextmanager
def unblocked(config: pytest.Config) -> Iterator[None]:
    """Database access allowed, outside any fixture (the template is built at collection's end).

    pytest-django keeps its blocker on ``config.stash[blocking_manager_key]`` (4.6+); the public
    ``django_db_blocker`` fixture is the same object but does not exist outside fixtures.
    """
    from pytest_django import plugin

    key = getattr(plugin, "blocking_manager_key", None)
    blocker = config.stash.get(key, None) if key is not None else None
    if blocker is None:
        yield
        return
    with blocker.unblock():
        yield


def requested_aliases(items: Sequence[pytest.Item]) -> tuple[set[str], set[str]]:
    """The aliases the tests ask for (``django_db(databases=...)``, a ``TestCase``'s
    ``databases``, ``default`` for the rest), and those some test rolls back by serialization
    (``serialized_rollback=True``), as pytest-django reads them for its own setup (4.9+), or,
    where it has no such reader (4.5 to 4.8 set every alias up), as that reader does."""
    try:
        from pytest_django.fixtures import _get_databases_for_setup
    except ImportError:
        return _read_requested(items)
    requested, serialized = _get_databases_for_setup(items)
    return set(requested), set(serialized)


# django_db(transaction, reset_sequences, databases, serialized_rollback, available_apps)
_MARKER_POSITIONS: Final = {"databases": 2, "serialized_rollback": 3}
_DATABASE_FIXTURES: Final = ("db", "transactional_db", "live_server")


def _read_requested(items: Sequence[pytest.Item]) -> tuple[set[str], set[str]]:
    """pytest-django 4.9's ``_get_databases_for_setup``, for the releases without it: a test
    that asks for an alias dbguard does not serve must be found whatever the release."""
    from django.db import DEFAULT_DB_ALIAS, connections
    from django.test import TransactionTestCase

    requested: set[str] = set()
    serialized: set[str] = set()
    for item in items:
        cls, fixtures = getattr(item, "cls", None), getattr(item, "fixturenames", ())
        if cls is not None and issubclass(cls, TransactionTestCase):
            databases, rollback = cls.databases, getattr(cls, "serialized_rollback", False)
        elif (marker := item.get_closest_marker("django_db")) is not None:
            databases = _marker_value(marker, "databases", None)
            rollback = bool(_marker_value(marker, "serialized_rollback", False))
        elif any(name in fixtures for name in _DATABASE_FIXTURES):
            databases, rollback = None, "django_db_serialized_rollback" in fixtures
        else:
            continue
        if databases is None:
            aliases = {DEFAULT_DB_ALIAS}
        elif databases == "__all__":
            aliases = set(connections)
        else:
            aliases = set(databases)
        requested |= aliases
        if rollback:
            serialized |= aliases
    return requested, serialized


def _marker_value(marker: pytest.Mark, name: str, default: object) -> object:
    position = _MARKER_POSITIONS[name]
    if name in marker.kwargs:
        return marker.kwargs[name]
    return marker.args[position] if len(marker.args) > position else default


def keep_serialized_copy(alias: str) -> None:
    """Keep the alias's database serialized for ``serialized_rollback`` tests: what Django's
    ``create_test_db(serialize=True)`` stores on the connection (``_test_serialized_contents``,
    which ``TransactionTestCase`` reads back)."""
    from django.db import connections

    connection = connections[alias]
    connection._test_serialized_contents = connection.creation.serialize_db_to_string()


def settings_import_failure(error: BaseException) -> BaseException | None:
    """The error a settings module raised, when ``error`` is pytest-django's report of it.

    pytest-django (4.5 to 4.14) re-raises a failed settings import as a new ``ImportError``
    ``from None``, its message ending with a note about its project scan ("pytest-django found /
    could not find / did not search ..."); the original stays on ``__context__``. Django 6.2
    wraps the ``ImportError`` of a missing module in ``ImproperlyConfigured`` first.
    """
    if type(error) is not ImportError or "pytest-django" not in str(error):
        return None
    original = error.__context__
    if original is None:
        return None
    cause = original.__cause__
    if isinstance(cause, ImportError) and not isinstance(original, ImportError):
        return cause
    return original

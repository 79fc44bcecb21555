"""Point ``settings.DATABASES`` aliases at a dbguard database, the way Django's own test setup does.

Django's ``create_test_db`` changes ``settings.DATABASES[alias]`` and the connection's
``settings_dict`` in place and closes the connection; this does the same with the whole
connection (name, host, port, user, password), so every later connection of the alias, in any
thread (``live_server``), reaches the dbguard database.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from typing import Any, Final

from pytest_dbguard.db.urls import DatabaseURL

POSTGRES_ENGINE: Final = "django.db.backends.postgresql"
POSTGRES_WORDS: Final = ("postgresql", "postgis", "psycopg")


def _fields(url: DatabaseURL) -> dict[str, str]:
    return {
        "NAME": url.database or "",
        "USER": url.username or "",
        "PASSWORD": url.password or "",
        "HOST": url.host or "",
        "PORT": str(url.port) if url.port else "",
    }


def _replace(alias: str, entry: dict[str, Any]) -> None:
    """Make ``entry`` the alias's settings, in place, and drop the alias's open connection."""
    from django.conf import settings
    from django.db import connections

    current = settings.DATABASES[alias]
    engine_changed = current.get("ENGINE") != entry.get("ENGINE")
    wrapper = connections[alias]
    wrapper.close()
    if wrapper.settings_dict is not current:  # a copy (override_settings): keep both in step
        wrapper.settings_dict.clear()
        wrapper.settings_dict.update(copy.deepcopy(entry))
    current.clear()
    current.update(entry)
    if engine_changed:  # the wrapper belongs to the old backend: the next access makes a new one
        del connections[alias]


def _with_defaults(alias: str) -> dict[str, Any]:
    """The alias's ``settings.DATABASES`` entry once Django has filled in its defaults
    (``OPTIONS``, ``TIME_ZONE``, ``TEST``...), which it does in place when a connection is first
    asked for: a copy taken before, put back, would take them from the connection too (the xdist
    controller's early build, in a project where nothing had connected: ``KeyError: 'OPTIONS'``)."""
    from django.conf import settings
    from django.db import connections

    connections[alias]  # the lookup is what fills the defaults in
    entry: dict[str, Any] = settings.DATABASES[alias]
    return entry


def is_postgresql(entry: dict[str, Any]) -> bool:
    """Whether a ``DATABASES`` entry's ENGINE is a PostgreSQL backend: Django's, PostGIS, or a
    project's own backend built on them (its ``vendor`` says so)."""
    engine = str(entry.get("ENGINE", ""))
    if any(word in engine for word in POSTGRES_WORDS):
        return True
    from django.db.utils import load_backend

    try:
        return bool(load_backend(engine).DatabaseWrapper.vendor == "postgresql")
    except Exception:  # not importable: not one that could serve dbguard's database
        return False


def point(aliases: Sequence[str], url: DatabaseURL) -> None:
    """Every alias in ``aliases`` now connects to ``url`` (a PostgreSQL database dbguard made).
    An alias that already does keeps its open connection, as Django's own test setup keeps the
    one that migrated the test database. An alias of another backend (a project that defaults
    to SQLite) gets Django's PostgreSQL backend, without the other backend's OPTIONS."""
    from django.db import connections

    for alias in aliases:
        current = _with_defaults(alias)
        entry = copy.deepcopy(current)
        if not is_postgresql(entry):
            entry["ENGINE"] = POSTGRES_ENGINE  # dbguard serves PostgreSQL, whatever the default
            entry["OPTIONS"] = {}  # SQLite's init_command makes PostgreSQL refuse to connect
        entry.update(_fields(url))
        entry.setdefault("TEST", {})["NAME"] = url.database
        if entry == current and connections[alias].settings_dict == entry:
            continue
        _replace(alias, entry)


def mirrors_of(aliases: Sequence[str]) -> tuple[str, ...]:
    """The other aliases whose ``TEST['MIRROR']`` names one of ``aliases`` (a read replica in
    the settings): Django's test setup points them at that alias's test database, and so does
    dbguard's."""
    from django.conf import settings

    return tuple(
        alias
        for alias, entry in settings.DATABASES.items()
        if alias not in aliases and (entry.get("TEST") or {}).get("MIRROR") in aliases
    )


@contextlib.contextmanager
def pointed(aliases: Sequence[str], url: DatabaseURL, *, stay: bool = False) -> Iterator[None]:
    """``point`` for a while (the template's build); the settings as they were afterwards, and no
    connection left open on ``url`` (a template with a connection cannot be cloned).

    ``stay``: ``url`` is the worker's own database (a single process builds its schema in
    place), so after a build that worked the aliases stay on it with their connections open
    for the first test, which would otherwise connect (TCP, authentication) all over again."""
    saved = {alias: copy.deepcopy(_with_defaults(alias)) for alias in aliases}
    point(aliases, url)
    try:
        yield
    except BaseException:
        stay = False
        raise
    finally:
        if not stay:
            for alias, entry in saved.items():
                _replace(alias, entry)


def close_all() -> None:
    """Close every Django connection of this thread (before dbguard drops the databases)."""
    from django.db import connections

    connections.close_all()

"""pytest-django's ``django_db_setup`` overridden: the worker's dbguard database instead of a
``test_<name>`` database per worker; ``dbguard_queries`` extended to Django's statements.

Registered by ``activation`` once every plugin is loaded, so this definition comes after
pytest-django's own (and a project's conftest, which comes later still, may override it and
request this one, as it would pytest-django's).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from pytest_dbguard.django import compat, statements, targets
from pytest_dbguard.django.activation import aliases_of, worker_url
from pytest_dbguard.guards.query_counter import QueryCounter


@pytest.fixture(scope="session")
def django_db_setup(
    request: pytest.FixtureRequest,
    django_test_environment: None,
    django_db_blocker: Any,
    django_db_modify_db_settings: None,
) -> Iterator[None]:
    """Session: points every alias of ini ``dbguard_django_databases`` at this worker's database
    (cloned from the template dbguard migrated once for the run); yields nothing. Teardown closes
    the connections; dbguard drops the database at the end of the run."""
    aliases = aliases_of(request.config)
    serialized = compat.serialized_aliases(request.session.items)
    with django_db_blocker.unblock():
        targets.point(aliases, worker_url(request.config))
        for alias in sorted(serialized & set(aliases)):
            compat.keep_serialized_copy(alias)
    yield
    with django_db_blocker.unblock():
        targets.close_all()


@pytest.fixture
def dbguard_queries(
    request: pytest.FixtureRequest, dbguard_queries: QueryCounter
) -> Iterator[QueryCounter]:
    """Function: dbguard's ``dbguard_queries``, also counting the statements of every Django
    connection; teardown stops counting them."""
    feed = statements.of(request.config)
    if feed is None:
        yield dbguard_queries
        return
    feed.counters.append(dbguard_queries)
    try:
        yield dbguard_queries
    finally:
        feed.counters.remove(dbguard_queries)

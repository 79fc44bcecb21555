"""pytest-django's ``django_db_setup`` overridden: the worker's dbguard database instead of a
``test_<name>`` database per worker; ``dbguard_queries`` extended to Django's statements.

Registered by ``activation`` once every plugin is loaded, so this definition comes after
pytest-django's own (and a project's conftest, which comes later still, may override it and
request this one, as it would pytest-django's).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final

import pytest

from pytest_dbguard.django import compat, statements, targets
from pytest_dbguard.django.activation import INI_DATABASES, aliases_of, worker_url
from pytest_dbguard.django.migrate import DjangoSchema
from pytest_dbguard.guards.query_counter import QueryCounter
from pytest_dbguard.run import worker_failures
from pytest_dbguard.run.state import the_run

# The aliases the tests ask for and those they roll back by serialization, read once for the
# check below and for django_db_setup (one pass over every test's marks, not two).
_requested_key: Final = pytest.StashKey[tuple[set[str], set[str]]]()
UNSERVED: Final = (
    "Tests ask for the database alias(es) {names} (django_db(databases=...) or a TestCase's "
    "databases), which dbguard does not serve: Django would use the database that "
    "DATABASES[{first!r}] in {settings} names ({where}), not a test database, and "
    "pytest-django would flush it after each transactional test. Serve it too (ini {ini} = "
    "{served} {first}: it shares the worker's database), or make it a mirror "
    "(TEST['MIRROR'] = '{primary}')."
)


@pytest.fixture(scope="session")
def django_db_setup(
    request: pytest.FixtureRequest,
    django_test_environment: None,
    django_db_blocker: Any,
    django_db_modify_db_settings: None,
) -> Iterator[None]:
    """Session: points every alias of ini ``dbguard_django_databases`` at this worker's database
    (cloned from the template dbguard migrated once for the run), and sends the migrate signals
    there unless this process migrated; yields nothing. Teardown closes the connections; dbguard
    drops the database at the end of the run."""
    aliases = aliases_of(request.config)
    requested = request.config.stash.get(_requested_key, None)  # read at collection's end
    serialized = (requested or compat.requested_aliases(request.session.items))[1]
    state = the_run(request.config).session
    with django_db_blocker.unblock():
        targets.point(aliases + targets.mirrors_of(aliases), worker_url(request.config))
        if state is not None and isinstance(state.schema_hook, DjangoSchema):
            state.schema_hook.create_tables_of_later_models()  # as migrate's run_syncdb
            state.schema_hook.send_migrate_signals()  # before the copy, as after Django's migrate
        for alias in sorted(serialized & set(aliases)):
            compat.keep_serialized_copy(alias)
    yield
    with django_db_blocker.unblock():
        targets.close_all()


# Last: after pytest-django's own, which orders the tests; before the run's database is built.
@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Stop the run when a test asks for a database alias that dbguard does not serve: Django
    would connect it to the database its settings name, not a test database, and pytest-django
    would flush that database after each transactional test."""
    if the_run(config).plan.inspection is not None:
        return  # --collect-only and the like connect nowhere
    aliases = aliases_of(config)
    served = set(aliases) | set(targets.mirrors_of(aliases))
    requested = config.stash[_requested_key] = compat.requested_aliases(items)
    unserved = sorted(requested[0] - served)
    if unserved:
        worker_failures.fail_session(config, _unserved_message(unserved, aliases))


def _unserved_message(unserved: list[str], aliases: tuple[str, ...]) -> str:
    from django.conf import settings

    from pytest_dbguard.django.settings_module import settings_label

    first = unserved[0]
    entry = settings.DATABASES.get(first, {})
    where = f"{entry.get('NAME') or '?'} on {entry.get('HOST') or 'localhost'}"
    return UNSERVED.format(
        names=", ".join(repr(alias) for alias in unserved),
        first=first,
        where=where,
        settings=settings_label(),
        served=" ".join(aliases),
        ini=INI_DATABASES,
        primary=aliases[0],
    )


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

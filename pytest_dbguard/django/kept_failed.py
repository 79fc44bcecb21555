"""``--dbguard-keep-failed`` for pytest-django's tests: a failed ``django_db`` test's view of the
database, read before pytest-django rolls it back (or, ``transaction=True``, flushes it).

pytest-django wraps each database test in a Django test case: ``_pre_setup`` when its helper
fixture is set up (an atomic block per database, or nothing for a transactional test),
``_post_teardown`` when it is torn down (the rollback, or the flush). dbguard's own fixtures,
which keep a SQLAlchemy test's rows, are not in such a test. So this plugin adds a finalizer to
that helper fixture right after its setup: pytest runs a fixture's finalizers last-in first-out,
so it runs after the test and after every fixture set up later, and before ``_post_teardown``.
A method of a Django ``TestCase`` class runs its whole case inside unittest (pytest-django's
helper does nothing for it): there a unittest cleanup added before ``setUp`` reads the rows, the
last thing before Django's own ``_post_teardown``.

The rows are read through the raw DB-API connection of each alias dbguard serves (Django's
wrappers would count the reads as the test's statements), and copied without SQLAlchemy.
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator, Sequence
from typing import Any, Final

import pytest

from pytest_dbguard.django import compat
from pytest_dbguard.run import failed_tests

PLUGIN_NAME: Final = "dbguard-django-kept-failed"
# What Django's migrate writes for itself: the kept database has its own record of it.
SKIPPED_TABLES: Final = ("django_migrations",)
UNITTEST_CASE: Final = (
    "its failure was known only after unittest had rolled its data back or before it began (in "
    "setUpClass, Django's own set-up or tear-down, or an unexpected success)"
)


class DjangoKeptFailed:
    """Hooks of a Django run with ``--dbguard-keep-failed`` (registered only then: every
    fixture's setup passes through them): a failed ``django_db`` test kept, and a failed Django
    ``TestCase`` method (kept by a unittest cleanup, or its report saying why it could not be)."""

    def __init__(self, aliases: Sequence[str]) -> None:
        self.aliases = tuple(aliases)

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(
        self, fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
    ) -> Generator[None, object, object]:
        result = yield
        if fixturedef.argname == compat.DB_HELPER and not _unittest_case(request.node):
            item, aliases = request.node, self.aliases
            fixturedef.addfinalizer(lambda: keep_before_rollback(item, aliases))
        return result

    # A Django TestCase runs its transaction (or, TransactionTestCase, its flush) inside
    # unittest, around setUp, the test, tearDown and the cleanups: a cleanup added now, before
    # setUp, is the last one, and still sees the test's rows.
    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_call(self, item: pytest.Item) -> None:
        case = getattr(item, "instance", None)
        if case is not None and _unittest_case(item, database=True):
            case.addCleanup(_keep_failed_case, item, case, self.aliases)

    def pytest_runtest_teardown(self, item: pytest.Item) -> None:
        if _unittest_case(item, database=True) and failed_tests.wants_copy(item):
            failed_tests.not_kept(item, UNITTEST_CASE)


def _unittest_case(node: Any, *, database: bool = False) -> bool:
    """A method of a Django ``TestCase`` class: unittest runs its transaction, which is rolled
    back before any fixture's teardown (pytest-django's helper does nothing for it). With
    ``database``: only the classes that use the database (``TransactionTestCase`` and below)."""
    from django.test import SimpleTestCase, TransactionTestCase

    cls = getattr(node, "cls", None)
    base = TransactionTestCase if database else SimpleTestCase
    return isinstance(cls, type) and issubclass(cls, base)


def _keep_failed_case(item: pytest.Item, case: object, aliases: Sequence[str]) -> None:
    """A TestCase's cleanup: when setUp, the test or tearDown failed, its view kept (before the
    call's report, which would say so later)."""
    from pytest_dbguard.compat import unittest_case_failed

    if unittest_case_failed(item, case) or failed_tests.failed_so_far(item):  # or a subtest
        failed_tests.mark_failed(item)
        keep_before_rollback(item, aliases)


def keep_before_rollback(item: pytest.Item, aliases: Sequence[str]) -> None:
    """Keep the failed test's view, if it failed and keeping is possible (nothing otherwise)."""
    if not failed_tests.wants_copy(item):
        return
    from pytest_dbguard.db import kept_failed

    try:
        views = [
            kept_failed.read_schema_view(_rows_of(raw), skipped=SKIPPED_TABLES)
            for raw in _raw_connections(aliases)
        ]
    except Exception as error:  # a failed statement aborted the test's transaction, say
        failed_tests.not_read(item, error)
        return
    failed_tests.keep(item, kept_failed.merged(views))


def _raw_connections(aliases: Sequence[str]) -> list[Any]:
    """The DB-API connection of the first alias (opened if the test closed it) and of every
    other alias with one open: all point at the worker's database, and a row one of them wrote
    in the test's transaction only it sees."""
    from django.db import connections

    raws: list[Any] = []
    for number, alias in enumerate(aliases):
        wrapper = connections[alias]
        if wrapper.connection is None:
            if number:
                continue
            wrapper.ensure_connection()
        if all(raw is not wrapper.connection for raw in raws):
            raws.append(wrapper.connection)
    return raws


def _rows_of(raw: Any) -> Any:
    """A ``kept_failed.Rows`` on a DB-API connection: no parameters, so a ``%`` stays itself."""

    def rows(statement: str) -> list[Any]:
        with contextlib.closing(raw.cursor()) as cursor:
            cursor.execute(statement)
            return list(cursor.fetchall()) if cursor.description else []

    return rows


def register(config: pytest.Config, aliases: Sequence[str]) -> None:
    """Register the hook (``activation``, in a Django run with ``--dbguard-keep-failed``), for
    the aliases dbguard serves."""
    if config.pluginmanager.get_plugin(PLUGIN_NAME) is None:
        config.pluginmanager.register(DjangoKeptFailed(aliases), PLUGIN_NAME)

"""Django's statements seen by dbguard's guards: one ``execute_wrapper`` on every alias, per test.

Django's ORM does not go through SQLAlchemy, so the engine listeners of the naive-datetime guard
and of ``dbguard_queries`` never see its statements. This wrapper does, on every connection of
``settings.DATABASES`` in the test's thread, from the test's setup to its teardown: it counts
each statement for the ``dbguard_queries`` counters in use, times it for the run report
(``--dbguard-report``), and reports naive datetimes bound as parameters while ``USE_TZ = True``
(the ORM makes its own values aware, with Django's warning; what arrives naive here comes from
raw SQL, ``RawSQL`` or ``extra()``). With
``dbguard_naive_datetime = error``, Django's own naive-datetime warning fails the test too.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Generator, Iterator
from typing import TYPE_CHECKING, Any, Final

import pytest

from pytest_dbguard.django.naive_warnings import DJANGO_NAIVE
from pytest_dbguard.guards.naive_datetimes import NaiveDatetimeGuard, naive_values
from pytest_dbguard.guards.query_counter import QueryCounter
from pytest_dbguard.run.state import the_run

if TYPE_CHECKING:
    from pytest_dbguard.guards.statement_timing import StatementTimer

PLUGIN_NAME: Final = "dbguard-django-statements"


class DjangoStatements:
    """pytest hooks that wrap every Django connection's statements during each test."""

    def __init__(self, config: pytest.Config) -> None:
        mode = the_run(config).settings.naive_datetime
        self.naive = NaiveDatetimeGuard(mode) if mode != "off" else None
        self.timer: StatementTimer | None = None  # --dbguard-report's, from each test's setup
        self.counters: list[QueryCounter] = []
        self.wrapped: list[Any] = []  # the Django connections the wrapper is on

    def __call__(
        self, execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any
    ) -> Any:
        __tracebackhide__ = True
        for counter in self.counters:
            counter.record(sql)
        if self.naive is not None and params:
            if many and not isinstance(params, (list, tuple)):
                params = list(params)  # an iterator: read it once here, and pass the list on
            self._scan(sql, params if many else (params,), context)
        timer = self.timer
        if timer is None:
            return execute(sql, params, many, context)
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            timer.record(sql, (time.perf_counter() - started) * 1000)

    def _scan(self, sql: str, parameter_sets: Any, context: Any) -> None:
        __tracebackhide__ = True
        from django.conf import settings

        if not settings.USE_TZ:
            return  # naive datetimes are what Django itself binds then
        found = naive_values(parameter_sets)
        if found and self.naive is not None:
            alias = getattr(context.get("connection"), "alias", "?")
            names = [f"{name!r} (raw SQL on Django connection {alias!r})" for name in found]
            self.naive.report(sql, names)

    def _wrap(self) -> None:
        from django.db import connections

        for alias in connections:
            connection = connections[alias]
            if self not in connection.execute_wrappers:
                connection.execute_wrappers.append(self)
                self.wrapped.append(connection)

    def _unwrap(self) -> None:
        for connection in self.wrapped:
            with contextlib.suppress(ValueError):
                connection.execute_wrappers.remove(self)
        self.wrapped.clear()

    @contextlib.contextmanager
    def _refusing_naive_fields(self) -> Iterator[None]:
        """With ``dbguard_naive_datetime = error``: Django's "DateTimeField X received a naive
        datetime" warning becomes dbguard's NaiveDatetimeError, raised where the ORM got it."""
        guard = self.naive
        if guard is None or guard.mode != "error":
            yield
            return
        with warnings.catch_warnings():
            warnings.filterwarnings("always", message=DJANGO_NAIVE.pattern, category=RuntimeWarning)
            shown = warnings.showwarning

            def show(message: Any, category: Any, *args: Any, **kwargs: Any) -> None:
                __tracebackhide__ = True
                found = DJANGO_NAIVE.search(str(message))
                if found is None:
                    return shown(message, category, *args, **kwargs)
                guard.report("the Django ORM", [f"{found['field']!r} (a Django DateTimeField)"])

            warnings.showwarning = show
            yield

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Generator[None, None, None]:
        self.timer = the_run(item.config).statement_timer
        if self.naive is not None:
            self.naive.where = item.nodeid
        self._wrap()
        with self._refusing_naive_fields():
            return (yield)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, None, None]:
        self._wrap()  # django_db_setup may have made new connection objects meanwhile
        with self._refusing_naive_fields():
            return (yield)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> Generator[None, None, None]:
        try:
            return (yield)
        finally:
            self._unwrap()
            if self.naive is not None:
                self.naive.where = "no test (between tests)"
                self.naive.reports.clear()


def of(config: pytest.Config) -> DjangoStatements | None:
    """The run's ``DjangoStatements`` plugin, when Django runs."""
    plugin = config.pluginmanager.get_plugin(PLUGIN_NAME)
    return plugin if isinstance(plugin, DjangoStatements) else None

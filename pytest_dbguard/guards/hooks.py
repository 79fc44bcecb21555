"""Guards: naive datetimes bound as parameters, modules hidden from a test, statement counts,
test databases only, and rows left behind.

The guards themselves are classes that work without pytest, each in its own module
(``naive_datetimes.NaiveDatetimeGuard``, ``hidden_modules.HiddenModules``,
``query_counter.QueryCounter``, the run's ``connection_guards``); this module only wires them
into pytest: ``run.phases``' one wrapper per test phase calls ``before_setup``, ``around_call``
and ``after_teardown`` here (every hook implementation is a cost each test pays), and
``configure`` / ``unconfigure``. SQLAlchemy is imported when a guard is installed, never at
import time. Only a run that runs tests imports it; the ``dbguard_queries`` fixture lives in
``guards.fixtures``, which every run registers.
"""

from __future__ import annotations

import collections
import dataclasses
import importlib.util
import os
import sys
import warnings
from collections.abc import Generator
from typing import Any, Final

import pytest

from pytest_dbguard.db.isolation import marks_of
from pytest_dbguard.guards.connection_guards import close_guards, guards_of
from pytest_dbguard.guards.hidden_modules import HiddenModules
from pytest_dbguard.guards.lazy_node_id import LazyNodeId
from pytest_dbguard.guards.naive_datetimes import NaiveDatetimeGuard
from pytest_dbguard.run.state import run_of

SWALLOWED_MESSAGE: Final = (
    "dbguard_naive_datetime = error: {count} statement(s) with a naive datetime were aborted, "
    "and the code under test caught the error:\n{reports}"
)
UNKNOWN_MODULE_MESSAGE: Final = (
    "{where}: @pytest.mark.dbguard_without({name!r}) names a module that is not installed, so "
    "hiding it proves nothing; check the spelling (importlib.util.find_spec({name!r}) is None)."
)
UTCNOW_MARK: Final = "utcnow()"


@dataclasses.dataclass
class _GuardState:
    """Per-run state of the guards, kept in ``config.stash``."""

    naive_mode: str
    naive: NaiveDatetimeGuard | None = None
    utcnow: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)


_state_key: Final = pytest.StashKey[_GuardState]()
_hidden_key: Final = pytest.StashKey[HiddenModules]()


def _state(config: pytest.Config) -> _GuardState:
    state = config.stash.get(_state_key, None)
    if state is None:
        run = run_of(config)
        mode = run.settings.naive_datetime if run is not None else "warn"
        state = config.stash[_state_key] = _GuardState(naive_mode=mode)
    return state


def _watch_naive(state: _GuardState, item: pytest.Item) -> NaiveDatetimeGuard | None:
    """The run's naive datetime guard, installed once SQLAlchemy has been imported by anyone."""
    if state.naive is None and state.naive_mode != "off" and "sqlalchemy.engine" in sys.modules:
        state.naive = NaiveDatetimeGuard(state.naive_mode)
        state.naive.install()
    if state.naive is not None:
        state.naive.where = LazyNodeId(item)
        state.naive.watch_models()  # the ORM may have been imported since
    return state.naive


def _hidden_modules(item: pytest.Item) -> HiddenModules | None:
    """The modules the test's ``dbguard_without`` markers hide; fails the test on a bad marker."""
    __tracebackhide__ = True
    names: list[str] = []
    for marker in marks_of(item).without:
        from pytest_dbguard.run.markers import dbguard_without

        try:
            names += dbguard_without(*marker.args, **marker.kwargs)
        except (pytest.UsageError, TypeError) as error:
            problem = str(error)
        else:
            continue
        pytest.fail(f"{item.nodeid}: {problem}", pytrace=False)
    if not names:
        return None
    for name in names:
        try:
            missing = name not in sys.modules and importlib.util.find_spec(name) is None
        except (ImportError, ValueError):
            missing = True
        if missing:
            pytest.fail(UNKNOWN_MODULE_MESSAGE.format(where=item.nodeid, name=name), pytrace=False)
    return HiddenModules(names, where=item.nodeid)


def before_setup(item: pytest.Item) -> None:
    """Arm the guards for the test: connection guards, the naive guard, hidden modules."""
    __tracebackhide__ = True
    guards = guards_of(item.config)
    if guards is not None:
        guards.arm(item)
    state = _state(item.config)
    guard = _watch_naive(state, item)
    if guard is not None:
        guard.reports.clear()
    hidden = _hidden_modules(item)
    if hidden is not None:
        # Entered here and left after teardown, so fixtures run with the modules hidden too.
        item.stash[_hidden_key] = hidden.__enter__()


def around_call(item: pytest.Item) -> Generator[None, None, None]:
    """The test's call: fails it where ``dbguard_naive_datetime = error`` refused a statement
    whose error the code under test caught."""
    state = _state(item.config)
    guard = _watch_naive(state, item)  # the test's fixtures may have imported SQLAlchemy
    result = yield
    if guard is not None and guard.mode == "error" and guard.reports:
        __tracebackhide__ = True
        reports = "\n".join(f"  {report}" for report in guard.reports)
        pytest.fail(
            SWALLOWED_MESSAGE.format(count=len(guard.reports), reports=reports), pytrace=False
        )
    return result


def after_teardown(item: pytest.Item, *, may_raise: bool) -> None:
    """Modules shown again, the naive guard between tests, the connection guards disarmed and
    the rows the test left behind reported (raised, with dbguard_leaks = error, if allowed)."""
    __tracebackhide__ = True
    hidden = item.stash.get(_hidden_key, None)
    if hidden is not None:
        del item.stash[_hidden_key]
        hidden.__exit__(None, None, None)
    state = _state(item.config)
    if state.naive is not None:
        state.naive.where = "no test (between tests)"
    guards = guards_of(item.config)
    if guards is not None and (xid := guards.disarm(item)) is not None:
        guards.report_leaks(item, xid, may_raise=may_raise)


class _UtcnowSummary:
    """Counts ``datetime.utcnow()`` DeprecationWarnings per test file; one line in the summary."""

    def __init__(self, counts: collections.Counter[str]) -> None:
        self.counts = counts

    def pytest_warning_recorded(
        self, warning_message: warnings.WarningMessage, nodeid: str
    ) -> None:
        if issubclass(warning_message.category, DeprecationWarning) and UTCNOW_MARK in str(
            warning_message.message
        ):
            where = nodeid.split("::", 1)[0] or os.path.relpath(warning_message.filename)
            self.counts[where] += 1

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        total = sum(self.counts.values())
        if total:
            files = ", ".join(f"{name}: {count}" for name, count in self.counts.most_common())
            terminalreporter.write_line(
                f"dbguard: {total} datetime.utcnow() deprecation warnings ({files})"
            )


def configure(config: pytest.Config) -> None:
    """At the start of a run that runs tests: the ``utcnow()`` summary, unless the guard is off."""
    state = _state(config)
    if state.naive_mode != "off":
        config.pluginmanager.register(_UtcnowSummary(state.utcnow), "dbguard-utcnow")


def unconfigure(config: pytest.Config) -> None:
    """At the end: the naive guard's listeners removed, the connection guards closed."""
    state = config.stash.get(_state_key, None)
    if state is not None and state.naive is not None:
        state.naive.remove()
    close_guards(config)

"""Guards: naive datetimes bound as parameters, modules hidden from a test, statement counts,
test databases only, and rows left behind.

The guards themselves are classes that work without pytest, each in its own module
(``naive_datetimes.NaiveDatetimeGuard``, ``hidden_modules.HiddenModules``,
``query_counter.QueryCounter``, the run's ``connection_guards``); this module only wires them
into pytest: ``run.phases``' wrappers of each test's setup and teardown call ``before_setup``,
``after_setup`` and ``after_teardown`` here, and of its call, with ``dbguard_naive_datetime =
error`` only, ``around_call`` (every hook implementation is a cost each test pays), on
the run's :class:`TestGuards`. SQLAlchemy is imported when a guard is installed, never at
import time. Only a run that runs tests imports it; the ``dbguard_queries`` fixture lives in
``guards.fixtures``, which every run registers.
"""

from __future__ import annotations

import collections
import importlib.util
import os
import sys
import warnings
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import pytest

from pytest_dbguard.guards.connection_guards import close_guards, guards_of
from pytest_dbguard.guards.hidden_modules import HiddenModules
from pytest_dbguard.guards.lazy_node_id import LazyNodeId
from pytest_dbguard.guards.naive_datetimes import NaiveDatetimeGuard
from pytest_dbguard.guards.naive_origins import installed_package
from pytest_dbguard.run.state import run_of

if TYPE_CHECKING:
    from pytest_dbguard.db.isolation import DbguardMarks
    from pytest_dbguard.guards.connection_guards import ConnectionGuards

SWALLOWED_MESSAGE: Final = (
    "dbguard_naive_datetime = error: {count} statement(s) with a naive datetime were aborted, "
    "and the code under test caught the error:\n{reports}"
)
UNKNOWN_MODULE_MESSAGE: Final = (
    "{where}: @pytest.mark.dbguard_without({name!r}) names a module that is not installed, so "
    "hiding it proves nothing; check the spelling (importlib.util.find_spec({name!r}) is None)."
)
UTCNOW_MARK: Final = "utcnow()"


_hidden_key: Final = pytest.StashKey[HiddenModules]()


def _hidden_modules(item: pytest.Item, without: tuple[pytest.Mark, ...]) -> HiddenModules | None:
    """The modules the test's ``dbguard_without`` markers hide; fails the test on a bad marker."""
    __tracebackhide__ = True
    names: list[str] = []
    for marker in without:
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


class TestGuards:
    """The guards of one run around each of its tests, made when the run configures.

    One object that holds the run's guards, rather than functions that look them up in
    ``config.stash`` in every phase of every test: each lookup is three Python calls, and a test
    went through about a dozen (``benchmarks/ci_path.py --only i``).
    """

    __test__ = False  # not a test class, whatever its name says

    def __init__(self, config: pytest.Config) -> None:
        run = run_of(config)
        self.config = config
        self.naive_mode = run.settings.naive_datetime if run is not None else "warn"
        self.naive: NaiveDatetimeGuard | None = None
        self.utcnow: collections.Counter[str] = collections.Counter()
        # The connection guards install on the first test (guards_of); None: dbguard inactive.
        self._connection_guards: ConnectionGuards | None = None
        self._connection_guards_known = False
        if self.naive_mode != "off":
            config.pluginmanager.register(
                _UtcnowSummary(self.utcnow, config.rootpath), "dbguard-utcnow"
            )

    def _watch_naive(self, item: pytest.Item) -> NaiveDatetimeGuard | None:
        """The run's naive datetime guard, installed once SQLAlchemy has been imported by anyone."""
        naive = self.naive
        if naive is None and self.naive_mode != "off" and "sqlalchemy.engine" in sys.modules:
            naive = NaiveDatetimeGuard(self.naive_mode)
            try:
                naive.install()
            except BaseException:
                naive.remove()  # what it installed before failing: no second guard next time
                raise
            self.naive = naive  # only once installed: a failed install fails again, not silently
        if naive is not None:
            naive.where = LazyNodeId(item)
            naive.watch_models()  # the ORM may have been imported since
        return naive

    def _guards(self) -> ConnectionGuards | None:
        if not self._connection_guards_known:
            self._connection_guards = guards_of(self.config)
            self._connection_guards_known = True
        return self._connection_guards

    def before_setup(self, item: pytest.Item, marks: DbguardMarks) -> None:
        """Arm the guards for the test: connection guards, the naive guard, hidden modules."""
        __tracebackhide__ = True
        guards = self._guards()
        if guards is not None:
            guards.arm(item, marks)
        guard = self._watch_naive(item)
        if guard is not None:
            guard.reports.clear()
        if marks.without:
            hidden = _hidden_modules(item, marks.without)
            if hidden is not None:
                # Entered here and left after teardown, so fixtures run with the modules hidden too.
                item.stash[_hidden_key] = hidden.__enter__()

    def after_setup(self, item: pytest.Item) -> None:
        """The test's fixtures may have imported SQLAlchemy (or its ORM): the naive guard from
        its call on."""
        guard = self.naive
        if guard is None or not guard.assignments.installed:
            self._watch_naive(item)

    def around_call(self, item: pytest.Item) -> Generator[None, None, None]:
        """With ``dbguard_naive_datetime = error``, the test's call: fails it where the guard
        refused a statement whose error the code under test caught."""
        guard = self.naive
        result = yield
        if guard is not None and guard.mode == "error" and guard.reports:
            __tracebackhide__ = True
            reports = "\n".join(f"  {report}" for report in guard.reports)
            pytest.fail(
                SWALLOWED_MESSAGE.format(count=len(guard.reports), reports=reports), pytrace=False
            )
        return result

    def after_teardown(self, item: pytest.Item, marks: DbguardMarks, *, may_raise: bool) -> None:
        """Modules shown again, the naive guard between tests, the connection guards disarmed and
        the rows the test left behind reported (raised, with dbguard_leaks = error, if allowed)."""
        __tracebackhide__ = True
        if marks.without:
            hidden = item.stash.get(_hidden_key, None)
            if hidden is not None:
                del item.stash[_hidden_key]
                hidden.__exit__(None, None, None)
        if self.naive is not None:
            self.naive.where = "no test (between tests)"
        guards = self._guards()
        if guards is not None and (xid := guards.disarm(item)) is not None:
            guards.report_leaks(item, xid, may_raise=may_raise)

    def close(self) -> None:
        """At the end: the naive guard's listeners removed, the connection guards closed."""
        if self.naive is not None:
            self.naive.remove()
        close_guards(self.config)


class _UtcnowSummary:
    """Counts ``datetime.utcnow()`` DeprecationWarnings per test file, with the installed package
    that called it when the call is outside the project's folder (a test file cannot fix those);
    one line in the summary."""

    def __init__(self, counts: collections.Counter[str], rootdir: Path) -> None:
        self.counts = counts
        self.rootdir = str(rootdir)

    def pytest_warning_recorded(
        self, warning_message: warnings.WarningMessage, nodeid: str
    ) -> None:
        if issubclass(warning_message.category, DeprecationWarning) and UTCNOW_MARK in str(
            warning_message.message
        ):
            where = nodeid.split("::", 1)[0] or os.path.relpath(warning_message.filename)
            package = _installed_package(warning_message.filename, self.rootdir)
            self.counts[where if package is None else f"{where}, called in {package}"] += 1

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        total = sum(self.counts.values())
        if total:
            files = ", ".join(f"{name}: {count}" for name, count in self.counts.most_common())
            terminalreporter.write_line(
                f"dbguard: {total} datetime.utcnow() deprecation warnings ({files})"
            )


def _installed_package(filename: str, rootdir: str) -> str | None:
    """The top-level package of a file under ``site-packages`` or ``dist-packages`` outside the
    project's ``rootdir``, else None."""
    if os.path.abspath(filename).startswith(os.path.join(rootdir, "")):
        return None
    return installed_package(filename)

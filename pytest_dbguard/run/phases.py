"""One wrapper per test phase for all that dbguard does around a test.

Registered by ``plugin.py`` only in a run that runs tests, never for ``--help``,
``--collect-only`` or another command that only shows something: those do not import the
guards, the engines or the lifecycle at all (``benchmarks/ci_path.py``, part 4). One wrapper per
phase rather than one per concern: every hook implementation is a cost that each test pays.
The wrappers are methods of one object per run that holds what they use, so a test costs no
lookups in ``config.stash`` (three Python calls each).
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Final

import pytest

from pytest_dbguard.db.engines import release_parked_engines
from pytest_dbguard.db.isolation import marks_of, running_test
from pytest_dbguard.guards.hooks import TestGuards
from pytest_dbguard.run import redaction

PHASES_PLUGIN: Final = "dbguard-test-phases"
CALL_CHECK_PLUGIN: Final = "dbguard-call-check"


class TestPhases:
    """The run's per-test hooks: the running test recorded, the guards armed and disarmed, the
    reports' passwords hidden."""

    __test__ = False  # not a test class, whatever its name says

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.running = running_test(config)
        self.guards = TestGuards(config)
        if self.guards.naive_mode == "error":  # the only reason to wrap each test's call
            config.pluginmanager.register(_CallCheck(self.guards), CALL_CHECK_PLUGIN)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Generator[None, None, None]:
        __tracebackhide__ = True
        running = self.running
        running.item = item
        running.marks = marks = marks_of(item)
        self.guards.before_setup(item, marks)
        try:
            result = yield
        finally:
            release_parked_engines()  # the schema build's engine, if the first test did not take it
        self.guards.after_setup(item)
        return result

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> Generator[None, None, None]:
        __tracebackhide__ = True
        marks = marks_of(item)  # read at collection, kept on the item
        try:
            result = yield
        except BaseException:
            # never hide the teardown's own error
            self.guards.after_teardown(item, marks, may_raise=False)
            raise
        self.guards.after_teardown(item, marks, may_raise=True)
        return result

    # On the report's way out, before the terminal, junitxml and xdist's worker read it (their
    # logreport hooks are plain ones). Not a makereport wrapper: a wrapper costs each phase of
    # each test pluggy's generator machinery, a plain hook one call.
    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        redaction.scrub_report(self.config, report)

    def pytest_unconfigure(self) -> None:
        self.guards.close()


class _CallCheck:
    """``dbguard_naive_datetime = error``: each test's call wrapped, to fail a test whose code
    caught the error of a statement the guard refused (other runs pay no wrapper for it)."""

    def __init__(self, guards: TestGuards) -> None:
        self.guards = guards

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, None, None]:
        __tracebackhide__ = True
        return (yield from self.guards.around_call(item))


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(TestPhases(config), PHASES_PLUGIN)

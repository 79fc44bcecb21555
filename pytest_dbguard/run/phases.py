"""One wrapper per test phase for all that dbguard does around a test.

Registered by ``plugin.py`` only in a run that runs tests, never for ``--help``,
``--collect-only`` or another command that only shows something: those do not import the
guards, the engines or the lifecycle at all (``benchmarks/ci_path.py``, part 4). One wrapper per
phase rather than one per concern: every hook implementation is a cost that each test pays.
"""

from __future__ import annotations

from collections.abc import Generator

import pytest

from pytest_dbguard.db.engines import release_parked_engines
from pytest_dbguard.db.isolation import running_test
from pytest_dbguard.guards import hooks as guard_hooks
from pytest_dbguard.run import redaction


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    __tracebackhide__ = True
    running_test(item.config).item = item
    guard_hooks.before_setup(item)
    try:
        return (yield)
    finally:
        release_parked_engines()  # the schema build's engine, if the first test did not take it


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    __tracebackhide__ = True
    return (yield from guard_hooks.around_call(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    __tracebackhide__ = True
    try:
        result = yield
    except BaseException:
        guard_hooks.after_teardown(item, may_raise=False)  # never hide the teardown's own error
        raise
    guard_hooks.after_teardown(item, may_raise=True)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    redaction.scrub_report(item.config, report)
    return report


def pytest_configure(config: pytest.Config) -> None:
    guard_hooks.configure(config)


def pytest_unconfigure(config: pytest.Config) -> None:
    guard_hooks.unconfigure(config)

"""Async support: registers the event-loop policy, the async fixtures and the loop diagnosis.

Importing this module imports neither pytest-asyncio nor asyncio nor SQLAlchemy. ``register``
looks for pytest-asyncio among the run's plugins at configure time and only then builds the
async fixtures and the hooks; without it the fixture names still exist and fail with the remedy.

Async dbguard fixtures always live on the session's event loop (``loop_scope="session"``): an
engine is bound to the loop its connections were made on. Where the user set neither
``asyncio_default_fixture_loop_scope`` nor ``asyncio_default_test_loop_scope``, dbguard makes
both ``session`` for the run, so tests (and a module-level application ``AsyncEngine``) share
that loop too. A test or fixture on a narrower loop that uses a dbguard async fixture fails at
setup with the fix, before any connection is made on the wrong loop.

The parts: :mod:`~pytest_dbguard.aio.loop_policy` (the default loop scopes, per pytest-asyncio
version), :mod:`~pytest_dbguard.aio.loop_mismatch` (the diagnosis) and
:mod:`~pytest_dbguard.aio.async_fixtures` (the fixtures); this module wires them into pytest.
"""

from __future__ import annotations

import sys
from collections.abc import Generator
from typing import Final

import pytest

from pytest_dbguard.aio.async_fixtures import (
    FIXTURES_PLUGIN,
    OLD_ASYNCIO_KEY,
    async_fixtures,
    missing_fixtures,
)
from pytest_dbguard.aio.loop_policy import (
    FIXTURE_LOOP_SCOPE,
    TEST_LOOP_SCOPE,
    LoopPolicy,
    apply_loop_policy,
    ini_registered,
    mark_session_loop,
)
from pytest_dbguard.exceptions import EventLoopMismatchError

ASYNCIO_PLUGIN_MODULE: Final = "pytest_asyncio.plugin"  # its entry point registers it as "asyncio"
HOOKS_PLUGIN: Final = "dbguard-asyncio"

policy_key: Final = pytest.StashKey[LoopPolicy]()


def asyncio_plugin_active(config: pytest.Config) -> bool:
    """Whether pytest-asyncio's plugin module is registered in this run, under any name."""
    module = sys.modules.get(ASYNCIO_PLUGIN_MODULE)
    return module is not None and config.pluginmanager.is_registered(module)


def register(config: pytest.Config) -> None:
    """Register the async fixtures, and the pytest-asyncio hooks when pytest-asyncio is active.

    Called from dbguard's ``tryfirst`` ``pytest_configure``, so the loop policy is in place
    before pytest-asyncio's own ``pytest_configure`` reads its settings.
    """
    if config.pluginmanager.has_plugin(FIXTURES_PLUGIN):
        return
    if not asyncio_plugin_active(config):
        config.pluginmanager.register(missing_fixtures(), FIXTURES_PLUGIN)
        return
    if not ini_registered(config, FIXTURE_LOOP_SCOPE):
        # pytest-asyncio before 0.24 (a project's pin): its fixtures take no loop_scope, and its
        # loops are left as they are. The async fixtures fail with the remedy when used.
        import pytest_asyncio

        config.stash[OLD_ASYNCIO_KEY] = str(getattr(pytest_asyncio, "__version__", "an older one"))
        config.pluginmanager.register(missing_fixtures(), FIXTURES_PLUGIN)
        return
    policy = apply_loop_policy(config)
    config.stash[policy_key] = policy
    config.pluginmanager.register(AsyncioHooks(policy), HOOKS_PLUGIN)
    config.pluginmanager.register(async_fixtures(), FIXTURES_PLUGIN)


def header_lines(config: pytest.Config) -> list[str]:
    """One line on the event-loop scopes, when pytest-asyncio is active: always when dbguard set
    them or could not, with ``-v`` when the project's own are kept."""
    policy = config.stash.get(policy_key, None)
    if policy is None:
        return []
    if policy.applied:
        tests = "tests (by a mark on unscoped async tests)" if policy.marks_tests else "tests"
        unset = f"{FIXTURE_LOOP_SCOPE} and {TEST_LOOP_SCOPE} unset: set them to keep your own"
        return [f"dbguard: asyncio loop scope session for fixtures and {tests} ({unset})"]
    if not policy.explicit:  # pytest ignored the seeded values (its internals changed)
        return [
            f"dbguard: could not set the asyncio loop scopes; set {FIXTURE_LOOP_SCOPE} and "
            f"{TEST_LOOP_SCOPE} = session in the ini file"
        ]
    if config.get_verbosity() < 1:
        # The project's own choice, kept: news only to whoever asks (-v). A test that uses
        # dbguard's async fixtures on another loop gets its own explanation when it fails.
        return []
    chosen = ", ".join(f"{name}={config.getini(name)} ({where})" for name, where in policy.explicit)
    return [
        f"dbguard: asyncio loop scopes as configured ({chosen}); dbguard async fixtures are on "
        "the session loop, so tests and fixtures using them need loop_scope='session'"
    ]


class AsyncioHooks:
    """Hooks registered only when pytest-asyncio is active: test marks (< 0.26), loop diagnosis."""

    def __init__(self, policy: LoopPolicy) -> None:
        from pytest_dbguard.aio import loop_mismatch  # only where pytest-asyncio runs

        self.policy = policy
        self.diagnosis = loop_mismatch
        # The async tests run so far: a session-loop test that gets a connection made on an
        # earlier test's loop names that test (``loop_mismatch.explained``).
        self.async_tests_run: list[pytest.Item] = []

    @pytest.hookimpl(tryfirst=True)
    def pytest_pycollect_makeitem(
        self, collector: pytest.Module | pytest.Class, name: str, obj: object
    ) -> None:
        """Give unscoped async tests the session loop where pytest-asyncio has no default for it."""
        if self.policy.marks_tests:
            mark_session_loop(collector, name, obj)

    # Not a wrapper: other plugins' setup wrappers (logging, capture) must have started, so
    # their teardown finds what it expects. tryfirst: before pytest sets up any fixture.
    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        __tracebackhide__ = True
        if self.diagnosis.is_async_test(item):
            self.async_tests_run.append(item)
        problems = self.diagnosis.narrower_loop_problems(item, self.policy)
        if problems:
            raise EventLoopMismatchError("\n".join(problems))

    @pytest.hookimpl(wrapper=True, tryfirst=True, specname="pytest_runtest_setup")
    def explain_setup(self, item: pytest.Item) -> Generator[None, None, None]:
        __tracebackhide__ = True
        return (yield from self.diagnosis.explained(item, self.policy, self.async_tests_run))

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, None, None]:
        __tracebackhide__ = True
        return (yield from self.diagnosis.explained(item, self.policy, self.async_tests_run))

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> Generator[None, None, None]:
        __tracebackhide__ = True
        return (yield from self.diagnosis.explained(item, self.policy, self.async_tests_run))

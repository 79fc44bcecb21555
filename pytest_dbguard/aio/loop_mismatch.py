"""The event-loop diagnosis: a dbguard async fixture used from a loop other than the session's.

An engine is bound to the loop its connections were made on, and dbguard's async fixtures live on
the session loop. A test or fixture on a narrower loop that uses one is found at setup, before
any connection is made on the wrong loop; a raw "attached to a different loop" raised later is
turned into an :class:`~pytest_dbguard.exceptions.EventLoopMismatchError` that says how to fix it.
"""

from __future__ import annotations

import inspect
from collections.abc import Generator, Sequence
from typing import Any, Final

import pytest

from pytest_dbguard.aio.async_fixtures import ASYNC_FIXTURES
from pytest_dbguard.aio.loop_policy import (
    FIXTURE_LOOP_SCOPE,
    LOOP_SCOPE,
    TEST_LOOP_SCOPE,
    LoopPolicy,
    asyncio_mode,
)
from pytest_dbguard.compat import asyncio_fixture_marks, fixture_definitions
from pytest_dbguard.exceptions import EventLoopMismatchError, chain

# What asyncio says when a connection is used from a loop other than the one it was made on.
LOOP_ERROR_TEXTS: Final = (
    "attached to a different loop",
    "is bound to a different event loop",
    "Event loop is closed",
)

NARROWER_TEST: Final = (
    "{nodeid} uses {fixtures}, made on the session-scoped event loop, but the test runs on "
    "a {scope}-scoped loop ({source}). A database connection made on one event loop cannot be "
    'used from another. Fix: mark the test @pytest.mark.asyncio(loop_scope="session"), or '
    "{setting}."
)
NARROWER_FIXTURE: Final = (
    "{nodeid}: the fixture {fixture!r} uses {fixtures}, made on the session-scoped event "
    "loop, but {fixture!r} runs on a {scope}-scoped loop ({source}). A database connection made "
    "on one event loop cannot be used from another. Fix: declare it "
    '@pytest_asyncio.fixture(loop_scope="session"), or set '
    "asyncio_default_fixture_loop_scope = session in the ini file."
)
OTHER_LOOP: Final = (
    "{nodeid}: a database connection was used on an event loop other than the one it was made "
    "on ({error}). An engine keeps pooled connections across tests, so the tests that use it "
    "must share one loop, but this test runs on {scope} loop ({source}). Fix: run the tests on "
    '@pytest.mark.asyncio(loop_scope="session"), or {setting}; or give each test its own engine.'
)

# The test that hit it runs on the session loop: the connection came from a test before it.
LEFT_BY_EARLIER: Final = (
    "{nodeid}: a database connection was used on an event loop other than the one it was made "
    "on ({error}). This test runs on the session-scoped loop ({source}); the connection was "
    "made earlier and left in an engine's pool by {culprits}, on a loop that is gone now. "
    'Fix: run {them} on the session loop too (@pytest.mark.asyncio(loop_scope="session")), or '
    "give each test its own engine."
)
LEFT_BY_UNKNOWN: Final = (
    "{nodeid}: a database connection was used on an event loop other than the one it was made "
    "on ({error}). This test runs on the session-scoped loop ({source}); the connection was "
    "made earlier on another loop and left in an engine's pool: by a synchronous test or "
    "fixture that ran its own loop (asyncio.run()), or by code at import. Fix: make such "
    "connections on the session loop, or dispose of the engine (await engine.dispose()) "
    "before that loop ends."
)
CULPRITS_NAMED: Final = 3


def is_async_test(item: pytest.Item) -> bool:
    from pytest_asyncio.plugin import PytestAsyncioFunction

    return isinstance(item, PytestAsyncioFunction)


def _scope_of_test(item: pytest.Item, policy: LoopPolicy) -> tuple[str, str]:
    """The loop scope an async test runs on, and where that came from."""
    marker = item.get_closest_marker("asyncio")
    for key in ("loop_scope", "scope"):
        value = marker.kwargs.get(key) if marker is not None else None
        if value:
            return str(value), f'@pytest.mark.asyncio({key}="{value}")'
    if not policy.has_test_scope_ini:
        return "function", "pytest-asyncio's default"
    scope = str(item.config.getini(TEST_LOOP_SCOPE))
    where = policy.source_of(TEST_LOOP_SCOPE)
    return scope, f"{TEST_LOOP_SCOPE} = {scope} in {where}" if where else "pytest-asyncio's default"


def _scope_of_fixture(
    fixturedef: Any, config: pytest.Config, policy: LoopPolicy
) -> tuple[str, str] | None:
    """The loop an async fixture runs on and its source; None if pytest-asyncio leaves it alone."""
    func = fixturedef.func
    original = inspect.unwrap(func)
    if not (inspect.iscoroutinefunction(original) or inspect.isasyncgenfunction(original)):
        return None
    marked, own = asyncio_fixture_marks(func)
    if not marked and asyncio_mode(config) != "auto":
        return None
    if own:
        return str(own), f'loop_scope="{own}"'
    default = config.getini(FIXTURE_LOOP_SCOPE)
    if default and default != "fixture-scope":
        where = policy.source_of(FIXTURE_LOOP_SCOPE) or "dbguard's policy"
        return str(default), f"{FIXTURE_LOOP_SCOPE} = {default} in {where}"
    return str(fixturedef.scope), "its fixture scope"


ANYIO_TEST: Final = (
    "{nodeid} runs on anyio's event loop (pytest.mark.anyio), and the engine behind {fixtures} "
    "lives on pytest-asyncio's session loop: an engine's connections belong to the loop they "
    "were made on, so it would fail with 'attached to a different loop' (or, with a "
    "module-scoped anyio_backend, with pytest's ScopeMismatch). Run the test with "
    "@pytest.mark.asyncio(loop_scope='session') instead, and take pytest.mark.anyio off it (a "
    "module's pytestmark too: anyio runs the test while the mark applies); anyio's own API works "
    "on asyncio's loop. Or make your engine in an anyio fixture from DBGUARD_ASYNC_URL, this "
    "worker's test database (its per-test isolation is then yours)."
)


def narrower_loop_problems(item: pytest.Item, policy: LoopPolicy) -> list[str]:
    """One message for the test and each fixture in it that uses a dbguard async fixture from a
    loop narrower than the session's."""
    definitions = fixture_definitions(item)
    closure = set(getattr(item, "fixturenames", ()))
    if definitions is None or closure.isdisjoint(ASYNC_FIXTURES):
        return []
    reached: dict[str, frozenset[str]] = {}

    def reaches(name: str, path: frozenset[str] = frozenset()) -> frozenset[str]:
        """The dbguard async fixtures that fixture ``name`` depends on, directly or not."""
        if name in ASYNC_FIXTURES:
            return frozenset({name})
        if name in reached or name in path or name not in definitions:
            return reached.get(name, frozenset())
        args = definitions[name].argnames
        reached[name] = frozenset().union(*(reaches(arg, path | {name}) for arg in args))
        return reached[name]

    # anyio's plugin runs a marked coroutine test, and gives it anyio_backend, on its own loop.
    if item.get_closest_marker("anyio") is not None and "anyio_backend" in closure:
        fixtures = " and ".join(sorted(closure.intersection(ASYNC_FIXTURES)))
        return [ANYIO_TEST.format(nodeid=item.nodeid, fixtures=fixtures)]
    problems: list[str] = []
    if is_async_test(item):
        scope, source = _scope_of_test(item, policy)
        if scope != LOOP_SCOPE:  # whatever the test gets may hold a connection of the session loop
            fixtures = " and ".join(sorted(closure.intersection(ASYNC_FIXTURES)))
            problems.append(
                NARROWER_TEST.format(
                    nodeid=item.nodeid,
                    fixtures=fixtures,
                    scope=scope,
                    source=source,
                    setting=policy.test_setting,
                )
            )
    for name, fixturedef in definitions.items():
        if name in ASYNC_FIXTURES or name not in closure or not (used := reaches(name)):
            continue
        found = _scope_of_fixture(fixturedef, item.config, policy)
        if found is not None and found[0] != LOOP_SCOPE:
            problems.append(
                NARROWER_FIXTURE.format(
                    nodeid=item.nodeid,
                    fixture=name,
                    fixtures=" and ".join(sorted(used)),
                    scope=found[0],
                    source=found[1],
                )
            )
    return problems


def _uses_async_fixtures(item: pytest.Item) -> bool:
    return not set(getattr(item, "fixturenames", ())).isdisjoint(ASYNC_FIXTURES)


def loop_error(error: BaseException) -> str | None:
    """The first line of a loop-mismatch RuntimeError in ``error``'s chain, else None."""
    for current in chain(error):
        if isinstance(current, RuntimeError) and any(t in str(current) for t in LOOP_ERROR_TEXTS):
            return str(current).splitlines()[0]
    return None


def explained(
    item: pytest.Item, policy: LoopPolicy, earlier: Sequence[pytest.Item]
) -> Generator[None, None, None]:
    """A raw "attached to a different loop" becomes an EventLoopMismatchError with the fix.

    The body of a hook wrapper: ``return (yield from explained(item, policy, earlier))``, where
    ``earlier`` holds the async tests run so far in this process, oldest first.
    """
    __tracebackhide__ = True
    try:
        return (yield)
    except Exception as error:
        detail = loop_error(error)
        is_async = detail is not None and is_async_test(item)
        if detail is None or not (is_async or _uses_async_fixtures(item)):
            raise
        if is_async:
            scope, source = _scope_of_test(item, policy)
            if scope == LOOP_SCOPE:  # not this test's loop: whoever made the connection is to blame
                raise EventLoopMismatchError(
                    _left_by_earlier(item, policy, earlier, detail, source)
                ) from error
            scope = f"a {scope}-scoped"
        else:
            scope, source = "another", "a synchronous test that runs its own loop"
        message = OTHER_LOOP.format(
            nodeid=item.nodeid,
            error=detail,
            scope=scope,
            source=source,
            setting=policy.test_setting,
        )
        raise EventLoopMismatchError(message) from error


def _left_by_earlier(
    item: pytest.Item,
    policy: LoopPolicy,
    earlier: Sequence[pytest.Item],
    detail: str,
    source: str,
) -> str:
    """The message for a session-loop test that got a connection made on an earlier test's
    loop: the latest async tests that ran on another loop, with where their scope came from."""
    culprits: list[str] = []
    for test in reversed(earlier):
        if test is item:
            continue
        scope, where = _scope_of_test(test, policy)
        if scope != LOOP_SCOPE:
            culprits.append(f"{test.nodeid} (a {scope}-scoped loop: {where})")
            if len(culprits) == CULPRITS_NAMED:
                break
    if not culprits:
        return LEFT_BY_UNKNOWN.format(nodeid=item.nodeid, error=detail, source=source)
    return LEFT_BY_EARLIER.format(
        nodeid=item.nodeid,
        error=detail,
        source=source,
        culprits=" and, before it, ".join(culprits),
        them="that test" if len(culprits) == 1 else "those tests",
    )

"""Async support: the event-loop policy, the async fixtures, and the event-loop diagnosis.

Importing this module imports neither pytest-asyncio nor asyncio nor SQLAlchemy. ``register``
looks for pytest-asyncio among the run's plugins at configure time and only then builds the
async fixtures and the hooks; without it the fixture names still exist and fail with the remedy.

Async dbguard fixtures always live on the session's event loop (``loop_scope="session"``): an
engine is bound to the loop its connections were made on. Where the user set neither
``asyncio_default_fixture_loop_scope`` nor ``asyncio_default_test_loop_scope``, dbguard makes
both ``session`` for the run, so tests (and a module-level application ``AsyncEngine``) share
that loop too. A test or fixture on a narrower loop that uses a dbguard async fixture fails at
setup with the fix, before any connection is made on the wrong loop.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import sys
import types
import warnings
from collections.abc import AsyncIterator, Generator
from typing import TYPE_CHECKING, Any, Final, NoReturn

import pytest

from pytest_dbguard.config import ini_keys
from pytest_dbguard.databases import sqlite_savepoints
from pytest_dbguard.environment import plan_key
from pytest_dbguard.exceptions import EventLoopMismatchError
from pytest_dbguard.isolation import isolation_of

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

    from pytest_dbguard.urls import DatabaseURL

ASYNCIO_PLUGIN_MODULE: Final = "pytest_asyncio.plugin"  # its entry point registers it as "asyncio"
FIXTURE_LOOP_SCOPE: Final = "asyncio_default_fixture_loop_scope"
TEST_LOOP_SCOPE: Final = "asyncio_default_test_loop_scope"  # pytest-asyncio 0.26 and later
LOOP_SCOPE: Final = "session"
ASYNC_FIXTURES: Final = ("dbguard_async_engine", "dbguard_async_session")
HOOKS_PLUGIN: Final = "dbguard-asyncio"
FIXTURES_PLUGIN: Final = "dbguard-asyncio-fixtures"
# What asyncio says when a connection is used from a loop other than the one it was made on.
LOOP_ERROR_TEXTS: Final = (
    "attached to a different loop",
    "is bound to a different event loop",
    "Event loop is closed",
)

NOT_INSTALLED: Final = (
    "{fixture} needs pytest-asyncio, which is not installed. Install the async extra: "
    "pip install 'pytest-dbguard[async]' (pytest-asyncio, SQLAlchemy[asyncio], asyncpg, "
    "aiosqlite)."
)
NOT_ACTIVE: Final = (
    "{fixture} needs the pytest-asyncio plugin, which is installed but not active in this run "
    "(PYTEST_DISABLE_PLUGIN_AUTOLOAD is set, or -p no:asyncio). Enable it with `-p asyncio`; "
    "pip install 'pytest-dbguard[async]' installs the versions dbguard supports."
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
TEST_SETTING: Final = "set asyncio_default_test_loop_scope = session in the ini file"
TEST_SETTING_024: Final = (
    "with pytest-asyncio 0.26 or later, set asyncio_default_test_loop_scope = session in the ini "
    "file (this version has no run-wide setting for tests)"
)


@dataclasses.dataclass(frozen=True)
class LoopPolicy:
    """The run's default event-loop scopes and who chose them, for the header and diagnosis."""

    applied: bool  # dbguard made the default loop scopes "session"
    has_test_scope_ini: bool  # this pytest-asyncio knows asyncio_default_test_loop_scope
    explicit: tuple[tuple[str, str], ...]  # (ini name, where the user set it)

    @property
    def marks_tests(self) -> bool:
        """Whether dbguard gives unscoped async tests the session loop by a mark (< 0.26)."""
        return self.applied and not self.has_test_scope_ini

    @property
    def test_setting(self) -> str:
        """The run-wide fix for tests on a narrower loop, in this pytest-asyncio's terms."""
        return TEST_SETTING if self.has_test_scope_ini else TEST_SETTING_024

    def source_of(self, name: str) -> str | None:
        """Where the user set ini ``name``, or None."""
        return dict(self.explicit).get(name)


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
        config.pluginmanager.register(_missing_fixtures(), FIXTURES_PLUGIN)
        return
    policy = apply_loop_policy(config)
    config.stash[policy_key] = policy
    config.pluginmanager.register(AsyncioHooks(policy), HOOKS_PLUGIN)
    config.pluginmanager.register(_async_fixtures(), FIXTURES_PLUGIN)


def header_lines(config: pytest.Config) -> list[str]:
    """One line on the event-loop scopes, when pytest-asyncio is active."""
    policy = config.stash.get(policy_key, None)
    if policy is None:
        return []
    if policy.applied:
        tests = "tests (by a mark on unscoped async tests)" if policy.marks_tests else "tests"
        unset = f"{FIXTURE_LOOP_SCOPE} and {TEST_LOOP_SCOPE} unset"
        return [f"dbguard: asyncio loop scope session for fixtures and {tests} ({unset})"]
    if not policy.explicit:  # pytest ignored the seeded values (its internals changed)
        return [
            f"dbguard: could not set the asyncio loop scopes; set {FIXTURE_LOOP_SCOPE} and "
            f"{TEST_LOOP_SCOPE} = session in the ini file"
        ]
    chosen = ", ".join(f"{name}={config.getini(name)} ({where})" for name, where in policy.explicit)
    return [
        f"dbguard: asyncio loop scopes as configured ({chosen}); dbguard async fixtures are on "
        "the session loop, so tests and fixtures using them need loop_scope='session'"
    ]


# The policy


def apply_loop_policy(config: pytest.Config) -> LoopPolicy:
    """Make the default loop scopes ``session`` unless the user set one of them."""
    has_test_scope_ini = _ini_registered(config, TEST_LOOP_SCOPE)
    names = (FIXTURE_LOOP_SCOPE, TEST_LOOP_SCOPE) if has_test_scope_ini else (FIXTURE_LOOP_SCOPE,)
    explicit = tuple(
        (name, where) for name in names if (where := _where_set(config, name)) is not None
    )
    applied = not explicit and all(_seed_ini(config, name, LOOP_SCOPE) for name in names)
    return LoopPolicy(applied=applied, has_test_scope_ini=has_test_scope_ini, explicit=explicit)


def _ini_registered(config: pytest.Config, name: str) -> bool:
    try:
        config.getini(name)
    except ValueError:  # pytest's answer for a key no plugin declared
        return False
    return True


def _where_set(config: pytest.Config, name: str) -> str | None:
    """Where the user set ini ``name``: ``-o`` (command line, addopts, PYTEST_ADDOPTS) or a file."""
    for entry in reversed(getattr(config.option, "override_ini", None) or ()):
        key, sep, _ = str(entry).partition("=")
        if sep and key.strip() == name:
            return "-o"
    if name in ini_keys(config):  # pytest 9 keeps -o values here too; those matched above
        return config.inipath.name if config.inipath else "the ini file"
    return None


def _seed_ini(config: pytest.Config, name: str, value: str) -> bool:
    """Give ini ``name`` a value for this run, as ``-o name=value`` would; False if ignored.

    pytest 8 and 9 keep ``-o`` values in different private places, read while the command line
    is parsed, long before plugins configure. Both answer ``getini`` from one cache, filled on
    first read and not dropped once configure has started: a value put there is what every
    later reader gets, pytest-asyncio's ``pytest_configure`` included (dbguard's runs first).
    """
    cache = getattr(config, "_inicache", None)
    if not isinstance(cache, dict):
        return False
    cache[name] = value
    return bool(config.getini(name) == value)


def _asyncio_mode(config: pytest.Config) -> str:
    return str(config.getoption("asyncio_mode", None) or config.getini("asyncio_mode"))


# The diagnosis


def _is_async_test(item: pytest.Item) -> bool:
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
    marked = getattr(func, "_force_asyncio_fixture", False)  # set by @pytest_asyncio.fixture
    if not marked and _asyncio_mode(config) != "auto":
        return None
    own = getattr(func, "_loop_scope", None)
    if own:
        return str(own), f'loop_scope="{own}"'
    default = config.getini(FIXTURE_LOOP_SCOPE)
    if default and default != "fixture-scope":
        where = policy.source_of(FIXTURE_LOOP_SCOPE) or "dbguard's policy"
        return str(default), f"{FIXTURE_LOOP_SCOPE} = {default} in {where}"
    return str(fixturedef.scope), "its fixture scope"


def narrower_loop_problems(item: pytest.Item, policy: LoopPolicy) -> list[str]:
    """One message for the test and each fixture in it that uses a dbguard async fixture from a
    loop narrower than the session's."""
    fixtureinfo = getattr(item, "_fixtureinfo", None)
    closure = set(getattr(item, "fixturenames", ()))
    if fixtureinfo is None or closure.isdisjoint(ASYNC_FIXTURES):
        return []
    definitions = {name: defs[-1] for name, defs in fixtureinfo.name2fixturedefs.items() if defs}
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

    problems: list[str] = []
    if _is_async_test(item):
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
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, RuntimeError) and any(t in str(current) for t in LOOP_ERROR_TEXTS):
            return str(current).splitlines()[0]
        current = current.__cause__ or current.__context__
    return None


class AsyncioHooks:
    """Hooks registered only when pytest-asyncio is active: test marks (< 0.26), loop diagnosis."""

    def __init__(self, policy: LoopPolicy) -> None:
        self.policy = policy

    @pytest.hookimpl(tryfirst=True)
    def pytest_pycollect_makeitem(
        self, collector: pytest.Module | pytest.Class, name: str, obj: object
    ) -> None:
        """Give unscoped async tests the session loop where pytest-asyncio has no default for it.

        pytest-asyncio reads the mark while the test is parametrized, right after this hook.
        """
        if not self.policy.marks_tests or not inspect.iscoroutinefunction(obj):
            return
        if not isinstance(collector, (pytest.Module, pytest.Class)):
            return
        if not collector.funcnamefilter(name):
            return
        stored = getattr(obj, "pytestmark", [])
        own = list(stored) if isinstance(stored, list) else [stored]
        marks = [mark for mark in own if getattr(mark, "name", None) == "asyncio"]
        marks += collector.iter_markers("asyncio")
        if marks and any(key in marks[0].kwargs for key in ("loop_scope", "scope")):
            return  # the user chose this test's loop
        if not marks and _asyncio_mode(collector.config) != "auto":
            return  # strict mode: not an asyncio test
        # First in the list: the closest mark, ahead of a bare @pytest.mark.asyncio.
        obj.pytestmark = [pytest.mark.asyncio(loop_scope=LOOP_SCOPE).mark, *own]  # type: ignore[attr-defined]

    # Not a wrapper: other plugins' setup wrappers (logging, capture) must have started, so
    # their teardown finds what it expects. tryfirst: before pytest sets up any fixture.
    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        __tracebackhide__ = True
        problems = narrower_loop_problems(item, self.policy)
        if problems:
            raise EventLoopMismatchError("\n".join(problems))

    @pytest.hookimpl(wrapper=True, tryfirst=True, specname="pytest_runtest_setup")
    def explain_setup(self, item: pytest.Item) -> Generator[None, None, None]:
        __tracebackhide__ = True
        return (yield from self._explained(item))

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, None, None]:
        __tracebackhide__ = True
        return (yield from self._explained(item))

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> Generator[None, None, None]:
        __tracebackhide__ = True
        return (yield from self._explained(item))

    def _explained(self, item: pytest.Item) -> Generator[None, None, None]:
        """A raw "attached to a different loop" becomes an EventLoopMismatchError with the fix."""
        __tracebackhide__ = True
        try:
            return (yield)
        except Exception as error:
            detail = loop_error(error)
            is_async = detail is not None and _is_async_test(item)
            if detail is None or not (is_async or _uses_async_fixtures(item)):
                raise
            if is_async:
                scope, source = _scope_of_test(item, self.policy)
                scope = f"a {scope}-scoped"
            else:
                scope, source = "another", "a synchronous test that runs its own loop"
            message = OTHER_LOOP.format(
                nodeid=item.nodeid,
                error=detail,
                scope=scope,
                source=source,
                setting=self.policy.test_setting,
            )
            raise EventLoopMismatchError(message) from error


# The fixtures: plain functions here, made pytest-asyncio fixtures only when it is active.


def async_engine_for(url: DatabaseURL, **kwargs: Any) -> AsyncEngine:
    """An AsyncEngine on ``url`` through its async driver; SQLite (aiosqlite) gets SAVEPOINTs."""
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url.asynchronous().render(hide_password=False), **kwargs)
    if url.is_sqlite:
        sqlite_savepoints(engine.sync_engine)
    return engine


async def _dbguard_async_engine(request: pytest.FixtureRequest) -> AsyncIterator[AsyncEngine]:
    """Session, loop scope session: an AsyncEngine on this worker's test database.

    The URL is DBGUARD_ASYNC_URL's; ``pool_pre_ping`` is on. Created on the session's event
    loop and disposed on it, before that loop closes.
    """
    engine = async_engine_for(request.config.stash[plan_key].async_url, pool_pre_ping=True)
    yield engine
    try:
        await engine.dispose()
    except Exception as error:  # e.g. a connection some test made on another loop
        request.node.warn(
            pytest.PytestWarning(f"dbguard could not dispose {engine.url!r}: {error}")
        )


async def _dbguard_async_session(
    request: pytest.FixtureRequest, dbguard_async_engine: AsyncEngine
) -> AsyncIterator[AsyncSession]:
    """Function, loop scope session: an AsyncSession in a transaction rolled back after the test.

    ``await session.commit()`` inside the test releases a SAVEPOINT, so nothing survives the
    test. ``expire_on_commit=False``, as async applications configure it, so attributes stay
    readable after a commit. With ``@pytest.mark.dbguard(isolation="truncate")`` or ``"none"``
    commits are real. Afterwards the session is closed, the transaction rolled back and the
    connection returned to the pool.
    """
    from sqlalchemy.ext.asyncio import AsyncSession

    connection = await dbguard_async_engine.connect()
    transaction = await connection.begin() if isolation_of(request.node) == "rollback" else None
    session = AsyncSession(
        bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False
    )
    try:
        yield session
    finally:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # closing after a failed flush may warn
                await session.close()
            if transaction is not None and transaction.is_active:
                await transaction.rollback()
        except Exception as error:  # the test's own outcome must not be lost to a cleanup error
            request.node.warn(pytest.PytestWarning(f"dbguard could not roll back: {error}"))
        finally:
            await connection.close()


def _async_fixtures() -> types.ModuleType:
    """The async fixtures, made pytest-asyncio fixtures on the session loop, as a plugin module.

    A module rather than a class: pytest 9 deprecates session fixtures that are methods.
    """
    import pytest_asyncio

    module = types.ModuleType(FIXTURES_PLUGIN, "pytest-dbguard's async fixtures.")
    module.dbguard_async_engine = pytest_asyncio.fixture(  # type: ignore[attr-defined]
        _dbguard_async_engine, name="dbguard_async_engine", scope="session", loop_scope=LOOP_SCOPE
    )
    module.dbguard_async_session = pytest_asyncio.fixture(  # type: ignore[attr-defined]
        _dbguard_async_session, name="dbguard_async_session", loop_scope=LOOP_SCOPE
    )
    return module


def _missing(request: pytest.FixtureRequest) -> NoReturn:
    """Stands in for an async fixture while pytest-asyncio is missing: fails with the remedy."""
    __tracebackhide__ = True
    installed = importlib.util.find_spec("pytest_asyncio") is not None
    message = NOT_ACTIVE if installed else NOT_INSTALLED
    pytest.fail(message.format(fixture=request.fixturename), pytrace=False)


def _missing_fixtures() -> types.ModuleType:
    module = types.ModuleType(FIXTURES_PLUGIN, "pytest-dbguard's async fixtures, unavailable.")
    module.dbguard_async_engine = pytest.fixture(  # type: ignore[attr-defined]
        _missing, name="dbguard_async_engine", scope="session"
    )
    module.dbguard_async_session = pytest.fixture(  # type: ignore[attr-defined]
        _missing, name="dbguard_async_session"
    )
    return module

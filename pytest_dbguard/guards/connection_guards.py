"""The connection guards of a run: test databases only, and leaks after rollback tests.

The guards themselves work without pytest (``foreign_databases.ForeignDatabaseGuard``,
``leaks.LeakWatcher``); here they are put together for a run. ``guards.hooks`` arms them for the
setup, call and teardown of each test and disarms them between tests, so dbguard's own session
work is never checked.

Both listen to SQLAlchemy's engines. In a run whose project does not import SQLAlchemy (a Django
project) there is nothing to guard, and installing them would import it (0.15-0.25 s in every
process): they go in when SQLAlchemy is first imported, whenever that is (:class:`OnImport`).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final

import pytest

from pytest_dbguard.compat import wider_fixture_running
from pytest_dbguard.db.isolation import DbguardMarks, isolation_of
from pytest_dbguard.exceptions import LeakError, LeakWarning
from pytest_dbguard.guards.foreign_databases import (
    NOTHING_ELSE,
    AllowList,
    ForeignDatabaseGuard,
    Target,
)
from pytest_dbguard.guards.lazy_node_id import LazyNodeId
from pytest_dbguard.guards.leaks import (
    LEAK_AGAIN,
    LEAK_MESSAGE,
    LEAK_WITHOUT_FIXTURES,
    ROLLED_BACK_FIXTURES,
    LeakWatcher,
    tables_written_since,
)
from pytest_dbguard.run.state import run_of

if TYPE_CHECKING:
    from sqlalchemy.engine import URL, Connection, Engine

    from pytest_dbguard.run.run_plan import RunPlan

CHECK_FAILED: Final = "dbguard could not look for rows {where} left behind: {error}"

# What the leak check found for a test: the tables it left rows in ([]: none), for the run report.
_left_key: Final = pytest.StashKey[list[str]]()


def tables_left(item: pytest.Item) -> list[str] | None:
    """The tables the leak check found rows of ``item`` in, [] when it found none, None when it
    did not look (not a rollback test, ``dbguard_leaks = off``, SQLite, or the check failed)."""
    return item.stash.get(_left_key, None)


class ConnectionGuards:
    """The run's two connection guards and what they need, in ``config.stash``.

    A plain class, not a dataclass: nothing compiled at import, which every run pays."""

    def __init__(
        self,
        plan: RunPlan,
        foreign: ForeignDatabaseGuard,
        leaks: LeakWatcher | None,  # None: dbguard_leaks = off, or SQLite (no xmin to go by)
        leak_mode: str,
        isolation: str = "rollback",  # the run's default, for tests whose markers name none
    ) -> None:
        self.plan = plan
        self.foreign = foreign
        self.leaks = leaks
        self.leak_mode = leak_mode
        self.isolation = isolation
        self._test_database: dict[URL, bool] = {}
        self._check_engine: Engine | None = None
        self._pending: OnImport | None = None  # waiting for SQLAlchemy's import to install
        self._leak_explained = False  # a LeakWarning with the whole text was given

    def install(self) -> None:
        """Start both guards (SQLAlchemy is imported by now)."""
        self.foreign.install()
        if self.leaks is not None:
            self.leaks.install()

    def on_test_database(self, connection: Connection) -> bool:
        """Whether ``connection``'s engine is on this worker's test database (asked once per URL)."""
        url = connection.engine.url
        known = self._test_database.get(url)
        if known is None:
            _, params = connection.dialect.create_connect_args(url)
            target = Target.from_params(params, driver=connection.dialect.driver)
            known = any(own.covers(target) for own in self.foreign.test_databases)
            self._test_database[url] = known
        return known

    def arm(self, item: pytest.Item, marks: DbguardMarks) -> None:
        # marks.allow: a test's own allow= adds to its class's and module's
        also = (
            AllowList.of(
                marks.allow,
                source="@pytest.mark.dbguard(allow=...)",
                servers=self.foreign.test_databases,
            )
            if marks.allow
            else NOTHING_ELSE
        )
        self.foreign.arm(LazyNodeId(item), also)
        if self.leaks is not None:
            self.leaks.take()
            self.leaks.watching = isolation_of(item, marks, default=self.isolation) == "rollback"

    def disarm(self, item: pytest.Item) -> int | None:
        """Stop both guards; the oldest transaction that leaked during the test, if any."""
        self.foreign.disarm()
        if self.leaks is None:
            return None
        if self.leaks.watching:
            item.stash[_left_key] = []  # looked: none, unless report_leaks finds some
        self.leaks.watching = False
        return self.leaks.take()

    def report_leaks(self, item: pytest.Item, xid: int, *, may_raise: bool) -> None:
        """Warn about (or, with dbguard_leaks = error, raise on) the tables the test left rows in."""
        __tracebackhide__ = True
        from pytest_dbguard.db.engines import INTERNAL_OPTIONS, engine_for

        try:
            if self._check_engine is None:
                from sqlalchemy.pool import NullPool

                self._check_engine = engine_for(
                    self.plan.test_url, poolclass=NullPool, execution_options=INTERNAL_OPTIONS
                )
            tables = tables_written_since(self._check_engine, xid)
        except Exception as error:  # the test's own outcome must not be lost to this check
            if _left_key in item.stash:
                del item.stash[_left_key]  # not known
            item.warn(pytest.PytestWarning(CHECK_FAILED.format(where=item.nodeid, error=error)))
            return
        item.stash[_left_key] = tables
        if not tables:
            return
        rolled_back = any(name in ROLLED_BACK_FIXTURES for name in _fixture_names(item))
        explained = LEAK_MESSAGE if rolled_back else LEAK_WITHOUT_FIXTURES
        message = explained.format(where=item.nodeid, tables=", ".join(tables))
        if self.leak_mode == "error" and may_raise:
            raise LeakError(message)
        if self._leak_explained:
            message = LEAK_AGAIN.format(where=item.nodeid, tables=", ".join(tables))
        self._leak_explained = True
        item.warn(LeakWarning(message))

    def close(self) -> None:
        if self._pending is not None:
            self._pending.remove()
        self.foreign.remove()
        if self.leaks is not None:
            self.leaks.remove()
        if self._check_engine is not None:
            self._check_engine.dispose()


_guards_key: Final = pytest.StashKey[ConnectionGuards | None]()


def guards_of(config: pytest.Config) -> ConnectionGuards | None:
    """The run's connection guards, installed on the first test; None where dbguard is inactive."""
    if _guards_key in config.stash:
        return config.stash[_guards_key]
    run = run_of(config)
    guards: ConnectionGuards | None = None
    if run is not None:
        plan, settings = run.plan, run.settings
        own: list[Target] = []
        if plan.server_url is not None:
            own.append(Target.from_url(plan.server_url.with_database(plan.database)))
            own.append(Target.from_url(plan.test_url))  # through the fault proxy, when on
        allowed = AllowList.of(settings.allow_databases, servers=own)
        foreign = ForeignDatabaseGuard(own, allowed=allowed, server_is_ours=plan.embedded)
        guards = ConnectionGuards(plan, foreign, None, settings.leaks, settings.isolation)
        if settings.leaks != "off" and plan.server_url is not None:
            # Rows that a session (or module, class) fixture commits are not the test's,
            # even when that fixture is set up or torn down during the test.
            guards.leaks = LeakWatcher(guards.on_test_database, wider_fixture_running)
        if "sqlalchemy" in sys.modules:
            guards.install()
        else:
            guards._pending = OnImport("sqlalchemy", guards.install)
            guards._pending.add()
    config.stash[_guards_key] = guards
    return guards


def close_guards(config: pytest.Config) -> None:
    """Remove the run's connection guards, if the first test installed them."""
    guards = config.stash.get(_guards_key, None)
    if guards is not None:
        guards.close()


class OnImport(importlib.abc.MetaPathFinder):
    """Calls ``then`` right after the package ``name`` is first imported, once.

    A finder first on ``sys.meta_path`` that answers for ``name`` alone: it finds the package's
    spec through the finders after it and wraps its loader, whose ``exec_module`` runs the
    package and then ``then``; the module's own loader is put back afterwards. Cheaper than a
    check before each test, and no test is missed: SQLAlchemy imported by a fixture or in the
    middle of a test body is guarded from that moment on, as when the guards went in at the
    first test.
    """

    def __init__(self, name: str, then: Callable[[], None]) -> None:
        self.name = name
        self.then = then

    def add(self) -> None:
        """Start watching for the import."""
        if self not in sys.meta_path:
            sys.meta_path.insert(0, self)

    def remove(self) -> None:
        """Stop watching."""
        if self in sys.meta_path:
            sys.meta_path.remove(self)

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: types.ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        """The package's own spec with its loader wrapped; None for every other module."""
        if fullname != self.name:
            return None
        self.remove()  # once; and the finders below must not find this one again
        spec: importlib.machinery.ModuleSpec | None = None
        for finder in sys.meta_path:
            find: Callable[..., importlib.machinery.ModuleSpec | None] | None = getattr(
                finder, "find_spec", None
            )
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _ThenLoader(spec.loader, self.then)
        return spec


class _ThenLoader(importlib.abc.Loader):
    """Runs a module with its own loader, then a callback; the module keeps its own loader."""

    def __init__(self, loader: importlib.abc.Loader, then: Callable[[], None]) -> None:
        self.loader = loader
        self.then = then

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        module.__loader__ = self.loader
        self.loader.exec_module(module)
        self.then()


def _fixture_names(item: pytest.Item) -> list[str]:
    """The fixtures the test uses (none for an item that is not a function, a doctest's)."""
    return list(getattr(item, "fixturenames", ()))

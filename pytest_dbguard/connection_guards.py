"""pytest wiring of the connection guards: test databases only.

The guard itself works without pytest (``foreign_databases.ForeignDatabaseGuard``); here it is
armed for the setup, call and teardown of each test and disarmed between tests, so dbguard's own
session work is never checked.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Generator
from typing import TYPE_CHECKING, Final

import pytest

from pytest_dbguard.config import settings_key
from pytest_dbguard.environment import plan_key
from pytest_dbguard.foreign_databases import AllowList, ForeignDatabaseGuard, Target

if TYPE_CHECKING:
    from pytest_dbguard.run_plan import RunPlan


def allow_of(item: pytest.Item) -> tuple[str, ...]:
    """The databases the test's ``@pytest.mark.dbguard(allow=...)`` markers name (all of them:
    a module's, a class's and the test's own add up)."""
    allowed: list[str] = []
    for marker in item.iter_markers("dbguard"):
        allowed += marker.kwargs.get("allow", ())
    return tuple(allowed)


@dataclasses.dataclass
class _ConnectionGuards:
    """The run's connection guard and what it needs, in ``config.stash``."""

    plan: RunPlan
    foreign: ForeignDatabaseGuard

    def arm(self, item: pytest.Item) -> None:
        self.foreign.arm(item.nodeid, AllowList.of(allow_of(item)))

    def disarm(self) -> None:
        self.foreign.disarm()

    def close(self) -> None:
        self.foreign.remove()


_guards_key: Final = pytest.StashKey[_ConnectionGuards | None]()


def _guards(config: pytest.Config) -> _ConnectionGuards | None:
    """The run's connection guards, installed on the first test; None where dbguard is inactive."""
    if _guards_key in config.stash:
        return config.stash[_guards_key]
    plan = config.stash.get(plan_key, None)
    settings = config.stash.get(settings_key, None)
    guards: _ConnectionGuards | None = None
    if plan is not None and settings is not None:
        own: list[Target] = []
        if plan.server_url is not None:
            own.append(Target.from_url(plan.server_url.with_database(plan.database)))
            own.append(Target.from_url(plan.test_url))  # through the fault proxy, when on
        foreign = ForeignDatabaseGuard(own, allowed=AllowList.of(settings.allow_databases))
        foreign.install()
        guards = _ConnectionGuards(plan, foreign)
    config.stash[_guards_key] = guards
    return guards


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    guards = _guards(item.config)
    if guards is not None:
        guards.arm(item)
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    guards = _guards(item.config)
    try:
        return (yield)
    finally:
        if guards is not None:
            guards.disarm()


def pytest_unconfigure(config: pytest.Config) -> None:
    guards = config.stash.get(_guards_key, None)
    if guards is not None:
        guards.close()

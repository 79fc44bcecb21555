"""The run's default event-loop scopes, adapted to the pytest-asyncio version in use.

Where the user set neither ``asyncio_default_fixture_loop_scope`` nor
``asyncio_default_test_loop_scope``, dbguard makes both ``session`` for the run. pytest-asyncio
before 0.26 has no ini key for tests, so there unscoped async tests get the session loop by a
mark instead. Importing this module imports neither pytest-asyncio nor asyncio.
"""

from __future__ import annotations

import inspect
from typing import Final, NamedTuple

import pytest

from pytest_dbguard.compat import ini_keys, override_ini, seed_ini_cache

FIXTURE_LOOP_SCOPE: Final = "asyncio_default_fixture_loop_scope"
TEST_LOOP_SCOPE: Final = "asyncio_default_test_loop_scope"  # pytest-asyncio 0.26 and later
LOOP_SCOPE: Final = "session"
TEST_SETTING: Final = "set asyncio_default_test_loop_scope = session in the ini file"
TEST_SETTING_024: Final = (
    "with pytest-asyncio 0.26 or later, set asyncio_default_test_loop_scope = session in the ini "
    "file (this version has no run-wide setting for tests)"
)


# NamedTuples, not frozen dataclasses: every run defines them (see the package docstring).
class LoopPolicy(NamedTuple):
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


def apply_loop_policy(config: pytest.Config) -> LoopPolicy:
    """Make the default loop scopes ``session`` unless the user set one of them."""
    has_test_scope_ini = ini_registered(config, TEST_LOOP_SCOPE)
    names = (FIXTURE_LOOP_SCOPE, TEST_LOOP_SCOPE) if has_test_scope_ini else (FIXTURE_LOOP_SCOPE,)
    explicit = tuple(
        (name, where) for name in names if (where := _where_set(config, name)) is not None
    )
    applied = not explicit and all(_seed_ini(config, name, LOOP_SCOPE) for name in names)
    return LoopPolicy(applied=applied, has_test_scope_ini=has_test_scope_ini, explicit=explicit)


def ini_registered(config: pytest.Config, name: str) -> bool:
    try:
        config.getini(name)
    except ValueError:  # pytest's answer for a key no plugin declared
        return False
    return True


def _where_set(config: pytest.Config, name: str) -> str | None:
    """Where the user set ini ``name``: ``-o`` (command line, addopts, PYTEST_ADDOPTS) or a file."""
    if name in override_ini(config):
        return "-o"
    if name in ini_keys(config):
        return config.inipath.name if config.inipath else "the ini file"
    return None


def _seed_ini(config: pytest.Config, name: str, value: str) -> bool:
    """Give ini ``name`` a value for this run, as ``-o name=value`` would; False if ignored.

    pytest 8 and 9 keep ``-o`` values in different private places, read while the command line
    is parsed, long before plugins configure. Both answer ``getini`` from one cache, filled on
    first read and not dropped once configure has started: a value put there is what every
    later reader gets, pytest-asyncio's ``pytest_configure`` included (dbguard's runs first).
    """
    return seed_ini_cache(config, name, value)


def asyncio_mode(config: pytest.Config) -> str:
    """pytest-asyncio's mode for this run: ``strict`` or ``auto``."""
    return str(config.getoption("asyncio_mode", None) or config.getini("asyncio_mode"))


def mark_session_loop(collector: pytest.Module | pytest.Class, name: str, obj: object) -> None:
    """Mark the async test ``obj`` for the session loop, unless the user chose its loop.

    For pytest-asyncio before 0.26, which reads the mark while the test is parametrized, right
    after ``pytest_pycollect_makeitem``.
    """
    if not inspect.iscoroutinefunction(obj):
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
    if not marks and asyncio_mode(collector.config) != "auto":
        return  # strict mode: not an asyncio test
    # First in the list: the closest mark, ahead of a bare @pytest.mark.asyncio.
    obj.pytestmark = [pytest.mark.asyncio(loop_scope=LOOP_SCOPE).mark, *own]  # type: ignore[attr-defined]

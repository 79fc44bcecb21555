"""Shared fixtures of the plugin's own test suite: a real PostgreSQL server and sealed pytester runs."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.pgserver import TestServer, running_server

pytest_plugins = ["pytester"]

# Inner runs must see only what each test gives them: no variables from the outer run.
_LEAKY_PREFIXES = (
    "DBGUARD_",
    "_DBGUARD_",
    "PYTEST_XDIST_",
    "PYTEST_ADDOPTS",
    "PYTEST_PLUGINS",
    "DB_TABLE_PREFIX",
)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[TestServer]:
    """Session: a real password-protected PostgreSQL server; stopped and removed at the end."""
    with running_server() as server:
        yield server


@pytest.fixture(autouse=True)
def _sealed_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts without dbguard or xdist variables, and inner runs load no plugins by themselves."""
    for name in list(os.environ):
        if name.startswith(_LEAKY_PREFIXES):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")


def run_dbguard(
    pytester: pytest.Pytester, *args: str, plugins: tuple[str, ...] = ()
) -> pytest.RunResult:
    """Run pytest in a subprocess with dbguard activated by ``-p`` and the named extra plugins."""
    extra: list[str] = []
    for name in plugins:
        extra += ["-p", name]
    return pytester.runpytest_subprocess("-p", "pytest_dbguard", *extra, *args, timeout=300)

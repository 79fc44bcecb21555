"""The core fixtures: this worker's test database URL and the engines on it.

``dbguard_url`` carries the run's DatabaseURL, so the engines never parse it back; a project that
overrides ``dbguard_url`` with a plain string redirects every engine, sync and async.

``dbguard_url`` and the source of ``dbguard_connection`` are made for each run (``run_fixtures``)
and know it without asking for ``request``: pytest 9 resolves ``request`` anew for every test
and every fixture in its chain that names it, cached session fixtures included, each time with a
new fixture definition and a signature computed (benchmarks/ci_path.py, parts p and i).
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

import pytest

from pytest_dbguard.db.engines import engine_for
from pytest_dbguard.db.isolation import ConnectionSource, connection_source, running_test
from pytest_dbguard.run.state import the_run

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

RUN_FIXTURES_PLUGIN: Final = "dbguard-run-fixtures"


def run_fixtures(config: pytest.Config) -> types.ModuleType:
    """``dbguard_url`` and ``_dbguard_connections`` for this run, as a plugin module (a module,
    not a class: pytest 9 deprecates session fixtures that are methods)."""
    from pytest_dbguard.db.urls import SecretURL

    run, running = the_run(config), running_test(config)

    def dbguard_url() -> str:
        """Session: this worker's test database URL (sync driver, password included so it connects)."""
        return SecretURL(run.plan.test_url)

    def _dbguard_connections(dbguard_url: str) -> Iterator[ConnectionSource]:
        """Session: the engine behind ``dbguard_connection``, and the record of the running test."""
        yield from connection_source(dbguard_url, running)

    module = types.ModuleType(RUN_FIXTURES_PLUGIN, "pytest-dbguard's fixtures made for this run.")
    module.dbguard_url = pytest.fixture(dbguard_url, scope="session")  # type: ignore[attr-defined]
    module._dbguard_connections = pytest.fixture(  # type: ignore[attr-defined]
        _dbguard_connections, scope="session"
    )
    return module


@pytest.fixture(scope="session")
def dbguard_engine(dbguard_url: str) -> Iterator[Engine]:
    """Session: a SQLAlchemy Engine on this worker's test database with ``pool_pre_ping``; disposed at the end."""
    from pytest_dbguard.db.urls import url_of

    engine = engine_for(url_of(dbguard_url, source="dbguard_url"), pool_pre_ping=True)
    yield engine
    engine.dispose()

"""The core fixtures: this worker's test database URL and the engines on it.

``dbguard_url`` carries the run's DatabaseURL, so the engines never parse it back; a project that
overrides ``dbguard_url`` with a plain string redirects every engine, sync and async.

``dbguard_url``, ``dbguard_connection`` and ``dbguard_session`` are made for each run
(``run_fixtures``) and know it without asking for ``request``: pytest 9 resolves ``request`` anew
for every test and every fixture in its chain that names it, cached session fixtures included,
each time with a new fixture definition and a signature computed (benchmarks/ci_path.py, parts p
and i). For the same reason the tests' engine is not a session fixture of its own: the chain of
a ``dbguard_session`` test is as short as the hand-written recipe's.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

import pytest

from pytest_dbguard.db.isolation import (
    ConnectionSources,
    connection_for_test,
    running_test,
    session_for_test,
)
from pytest_dbguard.run.state import the_run

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine
    from sqlalchemy.orm import Session

RUN_FIXTURES_PLUGIN: Final = "dbguard-run-fixtures"


def run_fixtures(config: pytest.Config) -> types.ModuleType:
    """``dbguard_url``, ``dbguard_connection`` and ``dbguard_session`` for this run, as a plugin
    module (a module, not a class: pytest 9 deprecates session fixtures that are methods), with
    the hook that closes their engines before the run's database is dropped."""
    from pytest_dbguard.db.urls import SecretURL

    run = the_run(config)
    sources = ConnectionSources(
        running_test(config),
        isolation=run.settings.isolation,
        keep_failed=run.settings.keep_failed,
    )

    def dbguard_url() -> str:
        """Session: this worker's test database URL (sync driver, password included so it connects)."""
        return SecretURL(run.plan.test_url)

    def dbguard_connection(dbguard_url: str) -> Iterator[Connection]:
        """Function: a Connection inside a transaction that is rolled back after the test.

        With ``isolation="truncate"`` or ``"none"`` the connection is plain (commits are real;
        truncate empties the written tables afterwards).
        """
        yield from connection_for_test(sources.for_url(dbguard_url))

    def dbguard_session(dbguard_url: str) -> Iterator[Session]:
        """Function: an ORM Session joined to ``dbguard_connection``'s transaction (the test's
        one connection, whether or not the test also asks for ``dbguard_connection``).

        ``session.commit()`` inside the test releases a SAVEPOINT instead of committing, so
        nothing survives the test; the session is closed and the outer transaction rolled back
        afterwards.
        """
        yield from session_for_test(sources.for_url(dbguard_url))

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish() -> None:
        sources.dispose()  # before lifecycle's own sessionfinish drops the database

    module = types.ModuleType(RUN_FIXTURES_PLUGIN, "pytest-dbguard's fixtures made for this run.")
    module.dbguard_url = pytest.fixture(dbguard_url, scope="session")  # type: ignore[attr-defined]
    module.dbguard_connection = pytest.fixture(dbguard_connection)  # type: ignore[attr-defined]
    module.dbguard_session = pytest.fixture(dbguard_session)  # type: ignore[attr-defined]
    module.pytest_sessionfinish = pytest_sessionfinish  # type: ignore[attr-defined]
    return module


@pytest.fixture(scope="session")
def dbguard_engine(dbguard_url: str) -> Iterator[Engine]:
    """Session: a SQLAlchemy Engine on this worker's test database with ``pool_pre_ping``; disposed at the end."""
    from pytest_dbguard.db.engines import engine_for
    from pytest_dbguard.db.urls import url_of

    engine = engine_for(url_of(dbguard_url, source="dbguard_url"), pool_pre_ping=True)
    yield engine
    engine.dispose()

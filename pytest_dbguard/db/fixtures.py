"""The core fixtures: this worker's test database URL and the engines on it.

``dbguard_url`` carries the run's DatabaseURL, so the engines never parse it back; a project that
overrides ``dbguard_url`` with a plain string redirects every engine, sync and async.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from pytest_dbguard.db.engines import engine_for
from pytest_dbguard.run.state import the_run

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine


@pytest.fixture(scope="session")
def dbguard_url(request: pytest.FixtureRequest) -> str:
    """Session: this worker's test database URL (sync driver, password included so it connects)."""
    from pytest_dbguard.db.urls import SecretURL

    return SecretURL(the_run(request.config).plan.test_url)


@pytest.fixture(scope="session")
def dbguard_engine(dbguard_url: str) -> Iterator[Engine]:
    """Session: a SQLAlchemy Engine on this worker's test database with ``pool_pre_ping``; disposed at the end."""
    from pytest_dbguard.db.urls import url_of

    engine = engine_for(url_of(dbguard_url, source="dbguard_url"), pool_pre_ping=True)
    yield engine
    engine.dispose()

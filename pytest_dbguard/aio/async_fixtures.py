"""The async fixtures, ``dbguard_async_engine`` and ``dbguard_async_session``, on the session loop.

Plain async functions here; :func:`async_fixtures` makes them pytest-asyncio fixtures on the
session's event loop only once pytest-asyncio is known to be active, and :func:`missing_fixtures`
stands in for them otherwise, failing with the remedy. Importing this module imports neither
pytest-asyncio nor asyncio nor SQLAlchemy.
"""

from __future__ import annotations

import importlib.util
import types
import warnings
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Final, NoReturn

import pytest

from pytest_dbguard.aio.loop_policy import LOOP_SCOPE
from pytest_dbguard.db.isolation import isolation_of
from pytest_dbguard.db.urls import DatabaseURL, url_of
from pytest_dbguard.run import failed_tests
from pytest_dbguard.run.state import the_run

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

ASYNC_FIXTURES: Final = ("dbguard_async_engine", "dbguard_async_session")
FIXTURES_PLUGIN: Final = "dbguard-asyncio-fixtures"

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
TOO_OLD: Final = (
    "{fixture} needs pytest-asyncio 0.24 or newer (its fixtures' loop_scope), and {version} is "
    "installed: pip install 'pytest-asyncio>=0.24'. dbguard's sync fixtures work without it."
)


def async_engine_for(url: DatabaseURL, **kwargs: Any) -> AsyncEngine:
    """An AsyncEngine of dbguard's own on ``url`` through its async driver; SQLite (aiosqlite)
    gets SAVEPOINTs."""
    from sqlalchemy.ext.asyncio import create_async_engine

    from pytest_dbguard.db.engine_listener import mark_own
    from pytest_dbguard.db.engines import sqlite_savepoints

    engine = create_async_engine(url.asynchronous().to_sqlalchemy(), **kwargs)
    mark_own(engine.sync_engine)
    if url.is_sqlite:
        sqlite_savepoints(engine.sync_engine)
    return engine


async def _dbguard_async_engine(
    request: pytest.FixtureRequest, dbguard_url: str
) -> AsyncIterator[AsyncEngine]:
    """Session, loop scope session: an AsyncEngine on the database of ``dbguard_url``.

    The URL is DBGUARD_ASYNC_URL's, or, where a project overrides ``dbguard_url``, that one
    through an async driver; ``pool_pre_ping`` is on. Created on the session's event loop and
    disposed on it, before that loop closes.
    """
    plan = the_run(request.config).plan
    url = url_of(dbguard_url, source="dbguard_url")
    engine = async_engine_for(
        plan.async_url if url == plan.test_url else url.asynchronous(), pool_pre_ping=True
    )
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
        if transaction is not None and failed_tests.wants_copy(request.node):
            await _keep_view(request.node, connection, session)
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


async def _keep_view(item: pytest.Item, connection: AsyncConnection, session: AsyncSession) -> None:
    """``--dbguard-keep-failed``: ``isolation.keep_view`` on the session loop, before the rollback."""
    from sqlalchemy.exc import DBAPIError

    from pytest_dbguard.db import kept_failed
    from pytest_dbguard.db.truncation import Truncator

    finder = Truncator(connection.sync_engine)
    try:
        view = await connection.run_sync(kept_failed.read_view, finder)
    except DBAPIError:
        try:  # a failed statement aborted the transaction: back to the session's savepoint
            await session.rollback()
            view = await connection.run_sync(kept_failed.read_view, finder)
        except DBAPIError as error:
            failed_tests.not_read(item, error)
            return
    failed_tests.keep(item, view)


def async_fixtures() -> types.ModuleType:
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
    """Stands in for an async fixture while pytest-asyncio is missing, inactive or older than
    0.24: fails with the remedy."""
    __tracebackhide__ = True
    if importlib.util.find_spec("pytest_asyncio") is None:
        message = NOT_INSTALLED
    elif old_version := request.config.stash.get(OLD_ASYNCIO_KEY, None):
        message = TOO_OLD.replace("{version}", old_version)
    else:
        message = NOT_ACTIVE
    pytest.fail(message.format(fixture=request.fixturename), pytrace=False)


# The version of an active pytest-asyncio older than 0.24, when the run has one.
OLD_ASYNCIO_KEY: Final = pytest.StashKey[str]()


def missing_fixtures() -> types.ModuleType:
    """Stand-ins for the async fixtures while pytest-asyncio is missing, as a plugin module."""
    module = types.ModuleType(FIXTURES_PLUGIN, "pytest-dbguard's async fixtures, unavailable.")
    module.dbguard_async_engine = pytest.fixture(  # type: ignore[attr-defined]
        _missing, name="dbguard_async_engine", scope="session"
    )
    module.dbguard_async_session = pytest.fixture(  # type: ignore[attr-defined]
        _missing, name="dbguard_async_session"
    )
    return module

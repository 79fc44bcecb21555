"""Clients that call the app in-process: on dbguard's rolled-back session, or on the app's own engine."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest_asyncio
from app.db import get_session
from app.main import app, lifespan
from sqlalchemy.ext.asyncio import AsyncSession


def client_of(transport: httpx.ASGITransport) -> httpx.AsyncClient:
    """An HTTP client that sends every request to the app in this process."""
    return httpx.AsyncClient(transport=transport, base_url="http://test")


@pytest_asyncio.fixture
async def client(dbguard_async_session: AsyncSession) -> AsyncIterator[httpx.AsyncClient]:
    """Function: an HTTP client on the app whose ``get_session`` yields ``dbguard_async_session``.

    The app's commits become savepoints of dbguard's outer transaction, rolled back after the test.
    """

    async def test_session() -> AsyncSession:
        return dbguard_async_session

    app.dependency_overrides[get_session] = test_session
    async with client_of(httpx.ASGITransport(app=app)) as client:
        yield client
    app.dependency_overrides.clear()


@pytest_asyncio.fixture
async def app_client() -> AsyncIterator[httpx.AsyncClient]:
    """Function: an HTTP client on the app as deployed: its own engine, lifespan run around it.

    Startup waits for the database; shutdown disposes the engine, so each test starts with an
    empty pool. Commits are real: tests that write need ``@pytest.mark.dbguard(isolation="truncate")``.
    """
    async with lifespan(app), client_of(httpx.ASGITransport(app=app)) as client:
        yield client

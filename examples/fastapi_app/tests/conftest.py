"""Requests go through the app in-process; every request's session is dbguard's rolled-back one."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest_asyncio
from app.db import get_session
from app.main import app
from sqlalchemy.ext.asyncio import AsyncSession


@pytest_asyncio.fixture
async def client(dbguard_async_session: AsyncSession) -> AsyncIterator[httpx.AsyncClient]:
    """Function: an HTTP client on the app whose ``get_session`` yields ``dbguard_async_session``.

    The app's commits become savepoints of dbguard's outer transaction, rolled back after the test.
    """

    async def test_session() -> AsyncSession:
        return dbguard_async_session

    app.dependency_overrides[get_session] = test_session
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client
    app.dependency_overrides.clear()

"""The app under real database faults: a restart, dropped connections, a slow cold start.

These tests run on the app's own engine (``app_client``), not on dbguard's rolled-back session:
the faults act on the connections the app pools, and its commits are real, so the tables they
wrote to are emptied afterwards (``isolation="truncate"``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from app.db import engine, get_session, make_engine
from app.main import app, wait_for_database
from app.request_id import HEADER
from app.settings import settings
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pytest_dbguard import Faults

pytestmark = pytest.mark.dbguard(isolation="truncate")
COLD_START = 5.0  # seconds the database refuses connections, as while it starts


async def test_terminated_connections_are_replaced(
    app_client: httpx.AsyncClient, dbguard_faults: Faults
) -> None:
    assert (await app_client.post("/items", json={"name": "before"})).status_code == 201
    assert dbguard_faults.terminate() >= 1  # the pooled connection's backend is gone
    response = await app_client.get("/items")  # pool_pre_ping finds it dead and reconnects
    assert response.status_code == 200
    assert [item["name"] for item in response.json()] == ["before"]


@pytest.fixture
async def app_without_pre_ping() -> AsyncIterator[httpx.AsyncClient]:
    """Function: the app on an engine made as many apps make theirs, without ``pool_pre_ping``."""
    bare = make_engine(settings.database_url, pre_ping=False)
    sessions = async_sessionmaker(bare, expire_on_commit=False)

    async def bare_session() -> AsyncIterator[AsyncSession]:
        async with sessions() as session:
            yield session

    app.dependency_overrides[get_session] = bare_session
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client
    app.dependency_overrides.clear()
    await bare.dispose()


async def test_without_pre_ping_a_request_fails_after_terminate(
    app_without_pre_ping: httpx.AsyncClient, dbguard_faults: Faults
) -> None:
    # The bug these faults catch: the pool hands out a connection whose server side is gone.
    assert (await app_without_pre_ping.get("/items")).status_code == 200
    dbguard_faults.terminate()
    failed = await app_without_pre_ping.get("/items")
    assert failed.status_code == 503, "without pool_pre_ping the stale connection is used"
    # SQLAlchemy invalidated the pool on that disconnect, so only the first request was lost.
    assert (await app_without_pre_ping.get("/items")).status_code == 200


async def test_the_app_recovers_from_a_restart(
    app_client: httpx.AsyncClient, dbguard_faults: Faults
) -> None:
    assert (await app_client.get("/items")).status_code == 200
    dbguard_faults.restart()  # returns once the server answers again
    assert (await app_client.post("/items", json={"name": "after"})).status_code == 201


async def test_cold_start_is_503_with_retry_after_then_recovers(
    app_client: httpx.AsyncClient, dbguard_faults: Faults
) -> None:
    assert (await app_client.get("/items")).status_code == 200  # the pool holds a connection
    assert dbguard_faults.terminate() >= 1  # the database goes down, and that connection with it
    dbguard_faults.refuse(COLD_START)  # ... and refuses new ones while it starts again
    # A second instance of the app starting now waits for the database instead of crashing.
    startup = asyncio.create_task(wait_for_database())

    response = await app_client.get("/items", headers={HEADER: "cold-1"})
    assert response.status_code == 503
    assert response.headers["Retry-After"] == str(settings.retry_after)
    assert response.headers[HEADER] == "cold-1"
    assert response.json()["request_id"] == "cold-1"
    made_up = await app_client.post("/items", json={"name": "lost"})
    assert made_up.status_code == 503
    assert made_up.json()["request_id"] == made_up.headers[HEADER]
    assert (await app_client.get("/health")).status_code == 200  # alive: do not restart the app
    assert not startup.done()

    await dbguard_faults.assert_recovers_async(engine, within=COLD_START + 5)
    assert (await app_client.post("/items", json={"name": "kept"})).status_code == 201
    assert [item["name"] for item in (await app_client.get("/items")).json()] == ["kept"]
    ready = await asyncio.wait_for(startup, timeout=5)
    assert ready.attempts > 1  # it retried through the window


async def test_deep_health_is_503_while_the_database_refuses(
    app_client: httpx.AsyncClient, dbguard_faults: Faults
) -> None:
    assert (await app_client.get("/health/deep")).status_code == 200
    dbguard_faults.refuse(COLD_START)  # ended by the fixture's teardown: this test does not wait
    response = await app_client.get("/health/deep")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == str(settings.retry_after)
    body = response.json()
    assert body["status"] == "error"
    assert body["stage"] == "TCP connect"
    assert body["error"]
    password = engine.url.password
    assert not password or password not in response.text

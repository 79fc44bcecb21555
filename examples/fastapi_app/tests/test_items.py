"""The items API, each test on an empty database."""

from __future__ import annotations

import httpx
import pytest
from app.models import Item
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession


async def test_create_item(client: httpx.AsyncClient) -> None:
    response = await client.post("/items", json={"name": "first"})
    assert response.status_code == 201
    body = response.json()
    assert body["name"] == "first"
    assert isinstance(body["id"], int)


async def test_list_starts_empty(client: httpx.AsyncClient) -> None:
    response = await client.get("/items")
    assert response.status_code == 200
    assert response.json() == []


@pytest.mark.parametrize("names", [["a"], ["a", "b", "c"]])
async def test_list_returns_what_was_created(client: httpx.AsyncClient, names: list[str]) -> None:
    for name in names:
        await client.post("/items", json={"name": name})
    response = await client.get("/items")
    assert [item["name"] for item in response.json()] == names


async def test_committed_rows_are_visible_to_the_test(
    client: httpx.AsyncClient, dbguard_async_session: AsyncSession
) -> None:
    await client.post("/items", json={"name": "seen"})
    count = await dbguard_async_session.scalar(select(func.count()).select_from(Item))
    assert count == 1

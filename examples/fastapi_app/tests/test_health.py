"""Health checks and request ids, with the database up."""

from __future__ import annotations

import httpx
import pytest
from app.main import app
from app.request_id import HEADER


async def test_health_needs_no_database(app_client: httpx.AsyncClient) -> None:
    response = await app_client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_deep_health_reports_the_server(app_client: httpx.AsyncClient) -> None:
    response = await app_client.get("/health/deep")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["latency_ms"] >= 0
    assert body["server_version"]


async def test_request_id_is_echoed(app_client: httpx.AsyncClient) -> None:
    response = await app_client.get("/health", headers={HEADER: "trace-42"})
    assert response.headers[HEADER] == "trace-42"


@pytest.mark.parametrize("given", [None, "", "two words", "x" * 129], ids=repr)
async def test_request_id_is_made_up_when_missing_or_unusable(
    app_client: httpx.AsyncClient, given: str | None
) -> None:
    headers = {} if given is None else {HEADER: given}
    first = await app_client.get("/health", headers=headers)
    second = await app_client.get("/health", headers=headers)
    assert len(first.headers[HEADER]) == 32
    assert first.headers[HEADER] != second.headers[HEADER]


async def test_a_bug_is_a_500_with_the_request_id() -> None:
    # Too long for the column: a DataError, which no retry fixes, so not a 503. The error is
    # answered rather than raised into the test, as a server would, and nothing is written.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as raw:
        response = await raw.post("/items", json={"name": "x" * 101}, headers={HEADER: "bug-1"})
    assert response.status_code == 500
    assert response.headers[HEADER] == "bug-1"
    assert response.json() == {"detail": "internal server error", "request_id": "bug-1"}
    assert "Retry-After" not in response.headers

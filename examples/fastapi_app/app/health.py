"""Health checks: ``/health`` for liveness (no database), ``/health/deep`` for the database."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.settings import settings
from pytest_dbguard import probe

router = APIRouter()
PROBE_TIMEOUT = 2.0  # seconds: a deep check that hangs longer is a failed one


@router.get("/health")
async def health() -> dict[str, str]:
    """Liveness: the process answers. A database outage must not get a live app restarted."""
    return {"status": "ok"}


@router.get("/health/deep", response_model=None)
async def deep_health() -> dict[str, Any] | JSONResponse:
    """Readiness: one new connection and ``SELECT 1``; 503 with the failed stage when it fails.

    The probe opens its own connection (not one from the pool) and reports the error without
    the password; it blocks, so it runs in a thread.
    """
    result = await asyncio.to_thread(probe, settings.database_url, timeout=PROBE_TIMEOUT)
    body = {key: value for key, value in result.as_dict().items() if value is not None}
    if result.status == "ok":
        return body
    headers = {"Retry-After": str(settings.retry_after)}
    return JSONResponse(body, status_code=503, headers=headers)

"""Database outages become 503 with ``Retry-After``; every error body names the request id."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from sqlalchemy import exc
from starlette.requests import Request

from app.request_id import HEADER, request_id_of
from app.settings import settings

logger = logging.getLogger(__name__)

# What the handler is registered for; is_unavailable() picks the outages out of these. The async
# drivers' connect errors (refused, reset, unreachable, timed out) reach the app as plain OSError
# and TimeoutError, not as SQLAlchemy's DBAPIError.
HANDLED = (exc.DBAPIError, exc.TimeoutError, OSError, asyncio.TimeoutError)
_NETWORK = (ConnectionError, TimeoutError, asyncio.TimeoutError, socket.gaierror)
_UNREACHABLE = {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN, errno.EHOSTDOWN}


def is_unavailable(error: BaseException) -> bool:
    """Whether ``error`` means the database cannot be reached now (a retry may work), not a bug."""
    if isinstance(error, exc.DBAPIError):
        # A disconnect SQLAlchemy recognised, or the PEP 249 classes for connection trouble;
        # IntegrityError, DataError, ProgrammingError are bugs: 500.
        return error.connection_invalidated or isinstance(
            error, (exc.OperationalError, exc.InterfaceError)
        )
    if isinstance(error, (exc.TimeoutError, *_NETWORK)):  # the pool's timeout, or the network's
        return True
    return isinstance(error, OSError) and error.errno in _UNREACHABLE


async def database_unavailable(request: Request, error: Exception) -> JSONResponse:
    """503 with ``Retry-After`` for a database outage; anything else goes on to the 500 handler."""
    if not is_unavailable(error):
        raise error
    request_id = request_id_of(request)
    # The driver's message goes to the log only: it names hosts and users, clients get the id.
    logger.warning("request %s: database unavailable: %r", request_id, error)
    return JSONResponse(
        {"detail": "database unavailable, retry later", "request_id": request_id},
        status_code=503,
        headers={"Retry-After": str(settings.retry_after)},
    )


async def internal_error(request: Request, error: Exception) -> JSONResponse:
    """500 with the request id, in the body and in ``X-Request-ID`` (this runs outside the
    middleware, so the header is set here)."""
    request_id = request_id_of(request)
    return JSONResponse(
        {"detail": "internal server error", "request_id": request_id},
        status_code=500,
        headers={HEADER: request_id},
    )


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``."""
    for error_class in HANDLED:
        app.add_exception_handler(error_class, database_unavailable)
    app.add_exception_handler(Exception, internal_error)

"""Every response carries ``X-Request-ID``: the caller's own, or one made up for the request."""

from __future__ import annotations

import re
import uuid

from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = "X-Request-ID"
# What we echo: up to 128 visible ASCII characters (a UUID, a trace id); anything else is replaced.
_ACCEPTED = re.compile(r"[\x21-\x7e]{1,128}")


def request_id_of(request: Request) -> str:
    """The id the middleware gave ``request``."""
    return str(getattr(request.state, "request_id", "unknown"))


class RequestIDMiddleware:
    """Pure ASGI middleware: picks the request's id and adds it to the response headers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = Headers(scope=scope).get(HEADER, "")
        request_id = given if _ACCEPTED.fullmatch(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[HEADER] = request_id
            await send(message)

        await self.app(scope, receive, send_with_id)

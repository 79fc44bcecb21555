"""The HTTP API: create and list items, health checks; startup waits for the database."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app import errors, health
from app.db import engine, get_session
from app.models import Item
from app.request_id import RequestIDMiddleware
from app.settings import settings
from pytest_dbguard import Readiness, await_ready

logger = logging.getLogger(__name__)


async def wait_for_database() -> Readiness:
    """Retry a real ``SELECT 1`` until it works: a database still starting is not an error.

    Gives up after ``settings.startup_timeout`` with NotReady, which names the failed step
    (name resolution, TCP connect, authentication, ...) and never the password.
    """
    ready = await await_ready(
        settings.database_url, timeout=settings.startup_timeout, progress=logger.warning
    )
    logger.info("database ready after %d attempt(s), %.0f ms", ready.attempts, ready.elapsed_ms)
    return ready


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Startup waits for the database; shutdown closes the pool."""
    await wait_for_database()
    yield
    await engine.dispose()


app = FastAPI(title="items", lifespan=lifespan)
app.add_middleware(RequestIDMiddleware)
errors.install(app)
app.include_router(health.router)
Session = Annotated[AsyncSession, Depends(get_session)]


class ItemIn(BaseModel):
    """Body of POST /items."""

    name: str


class ItemOut(BaseModel):
    """An item as the API returns it."""

    id: int
    name: str


@app.post("/items", status_code=201)
async def create_item(payload: ItemIn, session: Session) -> ItemOut:
    """Store an item and return it with its id."""
    item = Item(name=payload.name)
    session.add(item)
    await session.commit()
    return ItemOut(id=item.id, name=item.name)


@app.get("/items")
async def list_items(session: Session) -> list[ItemOut]:
    """Every item, oldest first."""
    rows = await session.scalars(select(Item).order_by(Item.id))
    return [ItemOut(id=item.id, name=item.name) for item in rows]

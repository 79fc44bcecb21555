"""The HTTP API: create and list items."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, FastAPI
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import get_session
from app.models import Item

app = FastAPI(title="items")
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

"""The application's engine, made at import from settings, and the ``get_session`` dependency."""

from __future__ import annotations

from collections.abc import AsyncIterator

from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from app.settings import settings


def make_engine(url: str, *, pre_ping: bool = True) -> AsyncEngine:
    """The engine the app runs on.

    ``pool_pre_ping`` tests each pooled connection before a request uses it and replaces a dead
    one: after a database restart or failover, without it the first request on every pooled
    connection fails (tests/test_recovery.py shows both).
    """
    return create_async_engine(url, pool_pre_ping=pre_ping)


engine = make_engine(settings.database_url)
SessionFactory = async_sessionmaker(engine, expire_on_commit=False)


async def get_session() -> AsyncIterator[AsyncSession]:
    """FastAPI dependency: one session per request."""
    async with SessionFactory() as session:
        yield session

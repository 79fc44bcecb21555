"""The service: store files and log every operation to the write-ahead log table."""

from __future__ import annotations

from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from storage import settings
from storage.models import StoredFile, WalEntry

engine = create_engine(settings.database_url, pool_pre_ping=True)
SessionLocal = sessionmaker(engine)


def store(session: Session, path: str, size: int) -> StoredFile:
    """Record a file and its WAL entry; commits."""
    stored = StoredFile(path=path, size=size)
    session.add(stored)
    session.flush()
    session.add(WalEntry(file_id=stored.id, operation="store"))
    session.commit()
    return stored


def total_size(session: Session) -> int:
    """Bytes stored so far."""
    return int(session.scalar(select(func.coalesce(func.sum(StoredFile.size), 0))) or 0)


def wal_length(session: Session) -> int:
    """Number of WAL entries."""
    return int(session.scalar(select(func.count()).select_from(WalEntry)) or 0)

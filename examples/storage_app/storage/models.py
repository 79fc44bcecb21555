"""Models whose table names are computed from settings when the module is imported."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import DateTime, ForeignKey, Index, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from storage import settings


class Base(DeclarativeBase):
    pass


class StoredFile(Base):
    __tablename__ = f"{settings.table_prefix}_files"
    # An explicitly named index is not prefixed: two workers sharing one database collide on it.
    __table_args__ = (Index("ix_files_path", "path", unique=True),)

    id: Mapped[int] = mapped_column(primary_key=True)
    path: Mapped[str] = mapped_column(String(400))
    size: Mapped[int]
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=lambda: datetime.now(timezone.utc))


class WalEntry(Base):
    __tablename__ = f"{settings.table_prefix}_wal"

    id: Mapped[int] = mapped_column(primary_key=True)
    file_id: Mapped[int] = mapped_column(ForeignKey(StoredFile.id))
    operation: Mapped[str] = mapped_column(String(20))

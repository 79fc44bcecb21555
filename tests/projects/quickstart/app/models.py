import os

from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

table_prefix = os.environ.get("DB_TABLE_PREFIX", "storage_elem_01")


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]

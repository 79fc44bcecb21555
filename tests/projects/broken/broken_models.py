"""A schema whose build fails in PostgreSQL: the server default calls a function that does not exist."""

from sqlalchemy import Column, Integer, text
from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    pass


class Broken(Base):
    __tablename__ = "broken"
    id = Column(Integer, primary_key=True)
    n = Column(Integer, server_default=text("no_such_function()"))

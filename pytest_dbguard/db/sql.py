"""SQL text that embeds names: quoting identifiers and literals, and running such statements so
that a ``%`` in a name is never read as a placeholder."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection


def quote_ident(name: str) -> str:
    """A PostgreSQL identifier, always double-quoted."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    """A PostgreSQL string literal (for COMMENT, which takes no bound parameters)."""
    return "'" + text.replace("'", "''") + "'"


def run_ddl(connection: Connection, statement: str) -> None:
    """Run a statement that embeds identifiers, with no parameters: the driver then does not
    read a ``%`` in a database name as a placeholder (SQLAlchemy's ``no_parameters`` option)."""
    connection.exec_driver_sql(statement, execution_options={"no_parameters": True})

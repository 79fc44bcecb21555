"""SQL text that embeds names: quoting identifiers and literals, and running such statements so
that a ``%`` in a name is never read as a placeholder."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Final

from pytest_dbguard.db.names import SCHEMA_START

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection


def quote_ident(name: str) -> str:
    """A PostgreSQL identifier, always double-quoted."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    """A PostgreSQL string literal (for COMMENT, which takes no bound parameters)."""
    return "'" + text.replace("'", "''") + "'"


def name_parts(qualified: str) -> list[str]:
    """``["audit", "user"]`` of ``audit."user"``: a name as ``regclass::text`` writes it (quoted
    where SQL needs it, qualified where the search path does), split and unquoted for messages
    and the run report."""
    parts: list[str] = []
    part, quoted, i = "", False, 0
    while i < len(qualified):
        char = qualified[i]
        if char == '"' and quoted and qualified[i + 1 : i + 2] == '"':
            part, i = part + '"', i + 2
            continue
        if char == '"':
            quoted = not quoted
        elif char == "." and not quoted:
            parts.append(part)
            part = ""
        else:
            part += char
        i += 1
    parts.append(part)
    return parts


def plain_name(qualified: str) -> str:
    """``audit.user`` of ``audit."user"`` (see :func:`name_parts`)."""
    return ".".join(name_parts(qualified))


# Joined to pg_class ``c`` as ``n``: the schemas whose tables a worker's tests write. With a
# database per worker, every schema in it (a project's tables may live outside public, as
# indico's users.users), even when no schema of the search path exists (current_schema() is then
# NULL); with a schema per worker (dbg_<run>_<worker> first on the search path), that schema
# alone: the others in the shared database are other workers' or nobody's. Never an extension's
# own tables (PostGIS's tiger, TimescaleDB's catalog): not the tests' to empty or report. Regexes,
# not LIKE: no % for a driver to read as a placeholder.
IN_OWN_SCHEMAS: Final = (
    "JOIN pg_namespace n ON n.oid = c.relnamespace "
    "AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_' "
    f"AND (n.nspname = current_schema() OR coalesce(current_schema(), '') !~ '{SCHEMA_START}') "
    "AND NOT EXISTS (SELECT FROM pg_depend e WHERE e.classid = 'pg_class'::regclass "
    "AND e.objid = c.oid AND e.deptype = 'e') "
)

# The worker's tables, schema-qualified where the search path needs it; a partitioned table once,
# by its parent: its DELETE and its probe reach the partitions' rows, and a copy of both would
# hold every row twice.
OWN_TABLES: Final = (
    f"SELECT c.oid::regclass::text FROM pg_class c {IN_OWN_SCHEMAS}"
    "WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition ORDER BY 1"
)

_XID_SPACE: Final = 2**32  # xmin holds a 32-bit xid; txid_current() adds the epoch


def written_since(xid: int) -> str:
    """A row condition: written by transaction ``xid`` (``txid_current()``'s, epoch and all)
    or a later one, by the row's ``xmin``. age() counts back from one point for the whole
    statement, so it survives the 32-bit wraparound of xmin; frozen rows have the largest age."""
    return f"age(xmin) <= age({quote_literal(str(xid % _XID_SPACE))}::xid)"


def written_probe(
    tables: Iterable[str], since: str, also: Callable[[str], str] | None = None
) -> str:
    """One query naming each of ``tables`` that holds a row matching ``since`` (a row condition,
    :func:`written_since`), or for which ``also(table)`` (`` OR …``) holds; empty for no table."""
    return " UNION ALL ".join(
        f"SELECT {quote_literal(table)} WHERE EXISTS (SELECT 1 FROM {table} WHERE {since})"
        + (also(table) if also is not None else "")
        for table in tables
    )


def run_ddl(connection: Connection, statement: str) -> None:
    """Run a statement that embeds identifiers, with no parameters: the driver then does not
    read a ``%`` in a database name as a placeholder (SQLAlchemy's ``no_parameters`` option)."""
    connection.exec_driver_sql(statement, execution_options={"no_parameters": True})

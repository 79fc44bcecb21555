"""The names dbguard gives what it creates, in one place: ``<base>_dbg_<run>_<worker>`` for
databases (templates: worker ``tpl<fingerprint>``; a failed test's kept data:
``<base>_dbg_<run>_<worker>_failed_<n>``), ``dbg_<run>_<worker>`` for schema-mode worker schemas.
The janitor drops only what has one of these shapes and dbguard's mark."""

from __future__ import annotations

import hashlib
import re
from typing import Final

MAX_IDENTIFIER: Final = 63  # PostgreSQL truncates longer names silently; we never let it.
SEPARATOR: Final = "_dbg_"
# Patterns as text: re compiles them on first use, not in every run's import.
_DATABASE_SHAPE: Final = r"_dbg_[0-9a-z]+_[\w]+$"
_SCHEMA_SHAPE: Final = r"^dbg_[0-9a-z]+_\w+$"
# The start of a worker schema's name as a PostgreSQL regex (``db.sql.IN_OWN_SCHEMAS``).
SCHEMA_START: Final = "^dbg_[0-9a-z]+_"


def database_name(base: str, run: str, worker: str, *, suffix: str = "") -> str:
    """``<base>_dbg_<run>_<worker>``, shortening ``base`` so the name fits PostgreSQL's 63 bytes.

    A shortened base ends with a hash of the whole one, so two long names that differ only in
    their tails still give two databases (whole characters only: UTF-8 is never cut in half).
    """
    tail = f"{SEPARATOR}{run}_{worker}{suffix}"
    room = MAX_IDENTIFIER - len(tail.encode())
    if len(base.encode()) <= room:
        return f"{base}{tail}"
    digest = "_" + hashlib.sha1(base.encode()).hexdigest()[:6]
    trimmed = base.encode()[: room - len(digest)].decode(errors="ignore")
    return f"{trimmed}{digest}{tail}"


def kept_failed_name(worker_database: str, number: int) -> str:
    """``<worker database>_failed_<number>``: where ``--dbguard-keep-failed`` keeps a failed
    test's data. Still dbguard's shape (the janitor finds it); a long worker name gives up the
    tail of its base, never the run, worker or number."""
    base, separator, tail = worker_database.partition(SEPARATOR)
    if not separator:
        raise ValueError(f"{worker_database!r} is not a dbguard database name")
    run, _, worker = tail.partition("_")
    return database_name(base, run, worker, suffix=f"_failed_{number}")


def is_dbguard_name(name: str) -> bool:
    """Whether a database name has the shape dbguard gives its own databases."""
    return re.search(_DATABASE_SHAPE, name) is not None


def schema_name(run: str, worker: str) -> str:
    """``dbg_<run>_<worker>``: a worker's schema when the role may not create databases."""
    return f"dbg_{run}_{worker}"


def is_dbguard_schema(name: str) -> bool:
    """Whether a schema name has the shape dbguard gives worker schemas."""
    return re.match(_SCHEMA_SHAPE, name) is not None


def base_of(name: str) -> str:
    """The base a dbguard database name was made from (untrimmed names only)."""
    return name.split(SEPARATOR)[0]


def template_name(base: str, run: str, fingerprint: str) -> str:
    """A run's own template for the schema with ``fingerprint``."""
    return database_name(base, run, "tpl" + fingerprint)

"""The schema templates that ``--dbguard-reuse`` keeps between runs: their names, state, rebuild.

Works without pytest. A kept template is named ``<base>_dbg_<fingerprint>_tpl`` and marked with
the run id ``reuse``; its mark says ``complete`` once its schema is in (see ``databases``).
"""

from __future__ import annotations

from typing import Final

from pytest_dbguard.db.janitor import drop_marked, list_marked
from pytest_dbguard.db.marks import Mark, MarkedDatabase
from pytest_dbguard.db.names import database_name
from pytest_dbguard.db.urls import DatabaseURL

REUSE_RUN: Final = "reuse"  # the run id in a kept template's mark
TEMPLATE_WORKER: Final = "tpl"


def template_name(base: str, fingerprint: str) -> str:
    """The kept template of the schema with ``fingerprint`` for databases named after ``base``."""
    return database_name(base, fingerprint, TEMPLATE_WORKER)


def _kept(server_url: DatabaseURL, base: str) -> list[MarkedDatabase]:
    """The kept templates for ``base`` on the server: marked as kept, and named as ours."""
    found = []
    for database in list_marked(server_url):
        mark, name = database.mark, database.name
        if mark.run != REUSE_RUN or mark.worker != TEMPLATE_WORKER:
            continue
        fingerprint = name.rsplit("_", 2)[-2] if name.count("_") >= 2 else ""
        if fingerprint and template_name(base, fingerprint) == name:
            found.append(database)
    return found


def complete_mark(server_url: DatabaseURL, name: str) -> Mark | None:
    """The mark of the kept template ``name`` when it exists with its schema complete (a run
    may clone it), else None."""
    return next(
        (
            database.mark
            for database in list_marked(server_url)
            if database.name == name
            and database.mark.run == REUSE_RUN
            and bool(database.mark.complete)
        ),
        None,
    )


def drop_kept(server_url: DatabaseURL, base: str) -> list[str]:
    """Drop every kept template for ``base`` (``--dbguard-rebuild``); the names dropped.

    Only databases carrying dbguard's kept-template mark and name; the next clone builds anew.
    """
    return [drop_marked(server_url, database.name).name for database in _kept(server_url, base)]

"""Why a run failed while pytest imported the conftests or configured the run: a conftest that
connected to this run's test database, which dbguard creates only after collection (the embedded
server is not even proven ready by then). Imported only when a conftest failed."""

from __future__ import annotations

from typing import Final

import pytest

from pytest_dbguard.exceptions import chain
from pytest_dbguard.run.state import run_of

CONNECTED_AT_IMPORT: Final = (
    "{where} connected to the test database while pytest {when}: {needle}. dbguard creates "
    "that database once collection is done (its name is already in DBGUARD_URL and dbguard_env)"
    "{server}, so it is not there yet. Connect, migrate or seed in a fixture instead: a "
    "session-scoped autouse fixture runs before the first test, and what it commits stays for "
    "every test.{schema}"
)
# A conftest's pytest_configure that builds the schema (create_all, drop_all at unconfigure).
LET_DBGUARD_BUILD: Final = (
    " To build the schema, let dbguard do it (ini dbguard_metadata = package.module:Base, or "
    "dbguard_alembic_ini) and skip the conftest's own create_all and drop_all when DBGUARD_URL is "
    "set: dbguard builds it once per run and clones it for every xdist worker."
)
EMBEDDED_NOT_YET: Final = (
    ", and waits for the embedded server it starts meanwhile only then (this connection was "
    "refused)"
)


def connected_at_import(config: pytest.Config, error: BaseException) -> str | None:
    """The explanation of a conftest that failed because it connected to this run's test
    database, which is created after collection; None for any other failure."""
    path = getattr(error, "path", None)  # pytest's ConftestImportFailure
    where = f"The conftest {path}" if path else "Code imported with the conftests"
    return _connected_too_early(config, error, where, "imported it", "")


def connected_while_configuring(config: pytest.Config, error: BaseException) -> str | None:
    """The same for a ``pytest_configure`` hook (a conftest's, typically building the schema):
    pytest reports its failure as an INTERNALERROR, without a word on the cause."""
    where = "A pytest_configure hook (a conftest's or a plugin's)"
    return _connected_too_early(config, error, where, "configured the run", LET_DBGUARD_BUILD)


def _connected_too_early(
    config: pytest.Config, error: BaseException, where: str, when: str, schema: str
) -> str | None:
    run = run_of(config)
    if run is None or run.plan.server_url is None:
        return None
    missing = f'database "{run.plan.database}" does not exist'
    # The embedded server is not proven ready before collection ends: libpq says "refused".
    refused = f"port {run.plan.server_url.port} failed: Connection refused"
    for current in chain(error):
        text = str(current)
        needle = next((n for n in (missing, refused) if n in text), None)
        if needle is not None and (needle == missing or run.plan.embedded):
            server = EMBEDDED_NOT_YET if needle == refused else ""
            return CONNECTED_AT_IMPORT.format(
                where=where, when=when, needle=needle, server=server, schema=schema
            )
    return None

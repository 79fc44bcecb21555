"""A schema build that fails names what was being built: the worker's schema in the named
database (schema mode, a role without CREATEDB), the template, or the worker's own database.

The broken models record where their build ran (``current_database()``, ``current_schema()``)
before it fails, so each test checks the message against the server's own answer.
"""

from __future__ import annotations

import re

import pytest

from tests.helpers import WORKERS, copy_project, run_dbguard
from tests.pgserver import LIMITED_USER, TestServer

# The build writes one line per attempt: "<database> <schema>", then fails on the default.
RECORD_WHERE = """
from sqlalchemy import event

import broken_models


@event.listens_for(broken_models.Base.metadata, "before_create")
def _record_where(target, connection, **kw):
    database, schema = connection.exec_driver_sql(
        "SELECT current_database(), current_schema()"
    ).one()
    with open("built_in.txt", "a") as out:
        out.write(f"{database} {schema}\\n")
"""
FAILED = re.compile(
    r"Building the schema \(metadata broken_models:Base\) in (?P<target>.+?) failed: "
    r"UndefinedFunction: function no_such_function\(\) does not exist"
)


def _failed_build(
    pytester: pytest.Pytester, url: str, workers: tuple[str, ...]
) -> tuple[set[str], list[tuple[str, str]]]:
    """Run the broken project; the targets its failure messages name, and where it built."""
    copy_project(pytester, "broken")
    pytester.makeconftest(RECORD_WHERE)
    pytester.makepyfile(test_never="def test_never(dbguard_session):\n    pass\n")
    pytester.makeini("[pytest]\ndbguard_metadata = broken_models:Base\n")
    result = run_dbguard(pytester, "--dbguard-url", url, *workers)
    assert result.ret != 0
    result.assert_outcomes()
    output = result.stdout.str() + result.stderr.str()
    targets = {found["target"] for found in FAILED.finditer(output)}
    assert targets, output
    built = [
        (database, schema)
        for database, schema in (
            line.split(" ", 1)
            for line in (pytester.path / "built_in.txt").read_text().split("\n")
            if line
        )
    ]
    return targets, built


@pytest.mark.parametrize("workers", WORKERS)
def test_schema_mode_names_the_worker_schema_and_its_database(
    pytester: pytest.Pytester, pg_server: TestServer, workers: tuple[str, ...]
) -> None:
    """No template exists in schema mode: the message names the schema it was building and
    the database that holds it (before, a template database that was never created)."""
    url = pg_server.url(database="app_limited", user=LIMITED_USER)
    targets, built = _failed_build(pytester, url, workers)
    assert built and all(database == "app_limited" for database, _ in built), built
    schemas = {schema for _, schema in built}
    assert all(re.fullmatch(r"dbg_[0-9a-f]+_(main|gw[01])", schema) for schema in schemas)
    # Under xdist each worker fails in its own schema; the run may print one or both.
    expected = {f"the worker schema {schema!r} of the database 'app_limited'" for schema in schemas}
    assert targets <= expected, (targets, expected)
    assert all("_tpl" not in target for target in targets)


@pytest.mark.parametrize("workers", WORKERS)
def test_database_mode_names_the_database_it_built_in(
    pytester: pytest.Pytester, pg_server: TestServer, workers: tuple[str, ...]
) -> None:
    """A role that may create databases: a single run builds in its own database, an xdist
    run in the template its workers clone; the message names that database, which existed."""
    targets, built = _failed_build(pytester, pg_server.url(), workers)
    databases = {database for database, _ in built}
    assert all(schema == "public" for _, schema in built), built
    assert targets <= {repr(database) for database in databases}, (targets, databases)
    [target] = targets
    if workers:
        assert re.fullmatch(r"'postgres_dbg_[0-9a-f]+_tpl[0-9a-f]+'", target), target
    else:
        assert re.fullmatch(r"'postgres_dbg_[0-9a-f]+_main'", target), target

"""dbguard's one summary line: right after the collection line, serially and under xdist; under
``-q`` only when something is worth knowing."""

from __future__ import annotations

import pytest

from tests.helpers import run_dbguard
from tests.pgserver import TestServer

MODES = [
    pytest.param((), "collected 1 item", id="serial"),
    pytest.param(("-n", "2"), "2 workers [1 item]", id="n2", marks=pytest.mark.needs_xdist),
]


def _line_after(lines: list[str], marker: str) -> str:
    after = lines[lines.index(marker) + 1 :]
    return next(line for line in after if line.strip())


@pytest.mark.parametrize(("mode", "collected"), MODES)
def test_the_line_follows_the_collection_line(
    pytester: pytest.Pytester, mode: tuple[str, ...], collected: str
) -> None:
    pytester.makepyfile("def test_x(dbguard_url): pass")
    result = run_dbguard(pytester, *mode, inprocess=True)
    result.assert_outcomes(passed=1)
    assert _line_after(result.stdout.lines, collected).startswith(
        "dbguard: embedded PostgreSQL 15"
    ), result.stdout.str()
    assert sum(line.startswith("dbguard: embedded") for line in result.stdout.lines) == 1


@pytest.mark.parametrize(("mode", "collected"), MODES)
def test_quiet_hides_an_ordinary_line_and_shows_a_noteworthy_one(
    pytester: pytest.Pytester, pg_server: TestServer, mode: tuple[str, ...], collected: str
) -> None:
    pytester.makepyfile("def test_x(dbguard_url): pass")
    quiet = run_dbguard(pytester, "-q", "--dbguard-url", pg_server.url(), *mode, inprocess=True)
    quiet.assert_outcomes(passed=1)
    assert not any(line.startswith("dbguard:") for line in quiet.stdout.lines), quiet.stdout.str()
    # Worker schemas instead of databases is worth knowing even under -q.
    schemas = run_dbguard(
        pytester,
        "-q",
        "--dbguard-url",
        pg_server.url(),
        "--dbguard-worker-isolation",
        "schema",
        "--dbguard-proxy",
        "on",
        *mode,
        inprocess=True,
    )
    schemas.assert_outcomes(passed=1)
    schemas.stdout.fnmatch_lines(["dbguard: postgresql+psycopg://postgres:***@*schemas dbg_*"])
    schemas.stdout.no_fnmatch_line("dbguard: fault proxy on *")  # a detail, for -v and plain runs


def test_the_line_says_how_long_this_process_built_the_schema(pytester: pytest.Pytester) -> None:
    """A build of many seconds (a long migrate) is a pause before the first test that the line
    explains; a run without a schema source builds nothing and says nothing of it."""
    pytester.makepyfile(
        models="""
            from sqlalchemy import Column, Integer, MetaData, Table

            metadata = MetaData()
            Table("things", metadata, Column("id", Integer, primary_key=True))
        """,
        test_it="def test_x(dbguard_url): pass",
    )
    built = run_dbguard(pytester, "-o", "dbguard_metadata=models:metadata", inprocess=True)
    built.assert_outcomes(passed=1)
    built.stdout.fnmatch_lines(["dbguard: *metadata models:metadata; schema built in *.* s; *"])
    for where in ([], ["--dbguard-url", "sqlite"]):  # a database, or a file, made empty
        plain = run_dbguard(pytester, *where, inprocess=True)
        plain.assert_outcomes(passed=1)
        plain.stdout.no_fnmatch_line("*schema built in*")

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
        *mode,
        inprocess=True,
    )
    schemas.assert_outcomes(passed=1)
    schemas.stdout.fnmatch_lines(["dbguard: postgresql+psycopg://postgres:***@*schemas dbg_*"])

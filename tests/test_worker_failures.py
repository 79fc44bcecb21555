"""A worker whose setup fails ends an xdist run at once, with the real cause printed once."""

from __future__ import annotations

import pytest

from tests.helpers import run_dbguard
from tests.pgserver import LIMITED_PASSWORD, LIMITED_USER, SUPERUSER_PASSWORD, TestServer

pytestmark = pytest.mark.needs_xdist

# Every test records that it ran: none may run when the schema could not be built.
TESTS = """
    import os, pathlib
    import pytest

    @pytest.mark.parametrize("n", range(4))
    def test_uses_the_schema(dbguard_connection, n):
        pathlib.Path(f"ran-{os.environ['DBGUARD_WORKER']}-{n}").touch()
"""
DUPLICATE_INDEX = """
    from sqlalchemy import Column, Index, Integer, MetaData, Table

    metadata = MetaData()
    first = Table("first", metadata, Column("id", Integer, primary_key=True), Column("x", Integer))
    second = Table("second", metadata, Column("id", Integer, primary_key=True), Column("x", Integer))
    Index("ix_same_name", first.c.x)
    Index("ix_same_name", second.c.x)
"""
BAD_DEFAULT = """
    from sqlalchemy import Column, Integer, MetaData, Table, text

    metadata = MetaData()
    things = Table(
        "things", metadata,
        Column("id", Integer, primary_key=True),
        Column("count", Integer, server_default=text("'many'")),
    )
"""


def _assert_one_clear_error(result: pytest.RunResult, cause: str) -> None:
    output = result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.USAGE_ERROR, output
    assert "INTERNALERROR" not in output
    assert output.count(cause) == 1, output
    assert SUPERUSER_PASSWORD not in output and LIMITED_PASSWORD not in output


@pytest.mark.parametrize(
    "models, cause",
    [
        pytest.param(DUPLICATE_INDEX, 'relation "ix_same_name" already exists', id="dup-index"),
        pytest.param(
            BAD_DEFAULT, 'invalid input syntax for type integer: "many"', id="bad-default"
        ),
    ],
)
@pytest.mark.parametrize("backend", ["embedded", "external"])
def test_failed_schema_build_ends_the_run_with_its_cause(
    pytester: pytest.Pytester, pg_server: TestServer, models: str, cause: str, backend: str
) -> None:
    pytester.makepyfile(models=models, test_schema=TESTS)
    pytester.makeini("[pytest]\ndbguard_metadata = models:metadata\n")
    url = ["--dbguard-url", pg_server.url()] if backend == "external" else []
    before = set(pg_server.databases())
    result = run_dbguard(pytester, "-n", "2", *url, inprocess=True)
    _assert_one_clear_error(result, cause)
    result.stderr.fnmatch_lines(
        ["*Building the schema (metadata models:metadata) in *dbguard_metadata*"]
    )
    # No worker ran a test against a half-built template, and the template is gone.
    assert not list(pytester.path.glob("ran-*"))
    assert set(pg_server.databases()) == before


def test_role_without_createdb_and_database_isolation(
    pytester: pytest.Pytester, pg_server: TestServer
) -> None:
    pytester.makepyfile(test_schema=TESTS)
    url = pg_server.url(database="app_limited", user=LIMITED_USER)
    result = run_dbguard(
        pytester,
        *("-n", "2", "--dbguard-url", url, "--dbguard-worker-isolation", "database"),
        inprocess=True,
    )
    _assert_one_clear_error(result, "may not create databases")
    result.stderr.fnmatch_lines(
        ["*--dbguard-worker-isolation = 'database'*'limited'*CREATEDB*worker-isolation schema*"]
    )
    assert not list(pytester.path.glob("ran-*"))


def test_bad_marker_argument_names_the_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_marked="""
        import pytest

        @pytest.mark.parametrize("n", range(4))
        def test_fine(dbguard_connection, n):
            pass

        @pytest.mark.dbguard(isolation="rolback")
        def test_typo(dbguard_connection):
            pass
        """
    )
    result = run_dbguard(pytester, "-n", "2", inprocess=True)
    _assert_one_clear_error(result, "isolation='rolback'")
    result.stderr.fnmatch_lines(["*test_marked.py::test_typo*isolation='rolback'*rollback*"])


def test_missing_base_database(pytester: pytest.Pytester, pg_server: TestServer) -> None:
    pytester.makepyfile(test_schema=TESTS)
    url = pg_server.url(database="no_such_database")
    result = run_dbguard(pytester, "-n", "2", "--dbguard-url", url, inprocess=True)
    _assert_one_clear_error(result, 'database "no_such_database" does not exist')


@pytest.mark.parametrize(
    "spec, cause",
    [
        pytest.param(
            "models:Bsae",
            "module 'models' has no attribute 'Bsae' (did you mean 'Base'?)",
            id="attr",
        ),
        pytest.param("modles:Base", "importing 'modles' failed", id="module"),
    ],
)
def test_bad_metadata_under_xdist(
    pytester: pytest.Pytester, pg_server: TestServer, spec: str, cause: str
) -> None:
    """The controller imports the models once xdist has started the workers: a bad path still
    ends the run with its cause printed once, and nothing is left on the server."""
    pytester.makepyfile(
        models="from sqlalchemy.orm import DeclarativeBase\n\nclass Base(DeclarativeBase):\n    pass\n",
        test_schema=TESTS,
    )
    pytester.makeini(f"[pytest]\ndbguard_metadata = {spec}\n")
    before = set(pg_server.databases())
    result = run_dbguard(pytester, "-n", "2", "--dbguard-url", pg_server.url(), inprocess=True)
    _assert_one_clear_error(result, cause)
    result.stderr.fnmatch_lines([f"*ini dbguard_metadata in tox.ini = {spec!r}: *"])
    assert not list(pytester.path.glob("ran-*"))
    assert set(pg_server.databases()) == before

"""Django under xdist starts sooner: the controller checks the server without SQLAlchemy."""

from __future__ import annotations

import subprocess
import sys

from tests.pgserver import TestServer

CHECK_WITHOUT_SQLALCHEMY = """
import sys

from pytest_dbguard.server.readiness import probe, wait_until_ready

ready = wait_until_ready(sys.argv[1], timeout=10)
assert ready.server_version, ready
assert probe(sys.argv[1]).status == "ok"
print("sqlalchemy imported:", "sqlalchemy" in sys.modules)
"""


def test_the_readiness_check_of_a_psycopg_url_does_not_import_sqlalchemy(
    pg_server: TestServer,
) -> None:
    """The xdist controller runs this check before it starts any worker: SQLAlchemy's import
    (a quarter second) is not needed to open one psycopg connection."""
    for url in (pg_server.url(), pg_server.url().replace("+psycopg", "+psycopg2")):
        done = subprocess.run(
            [sys.executable, "-c", CHECK_WITHOUT_SQLALCHEMY, url],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "sqlalchemy imported: False"

"""Under pytest-xdist every worker gets its own database; concurrent runs on one server never collide."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import run_dbguard
from tests.pgserver import SUPERUSER_PASSWORD, TestServer

XDIST = ("xdist.plugin",)

MODELS = """
    from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

    class Base(DeclarativeBase):
        pass

    class Visit(Base):
        __tablename__ = "visits"
        id: Mapped[int] = mapped_column(primary_key=True)
        worker: Mapped[str]
"""

# Each test commits for real (truncate isolation is not used, so rows accumulate per database):
# if two workers shared a database, a worker would see the other's rows.
WORKER_TESTS = """
    import os
    import time
    import pytest
    from sqlalchemy import create_engine, text

    ENGINE = create_engine(os.environ["DBGUARD_URL"])

    @pytest.mark.parametrize("n", range(12))
    @pytest.mark.dbguard(isolation="none")
    def test_only_my_rows(n):
        worker = os.environ["DBGUARD_WORKER"]
        assert worker == os.environ.get("PYTEST_XDIST_WORKER", "main")
        assert os.environ["DBGUARD_DB"].endswith("_" + worker)
        with ENGINE.begin() as conn:
            conn.execute(text("INSERT INTO visits (worker) VALUES (:w)"), {"w": worker})
            time.sleep(0.05)
            others = conn.execute(text("SELECT count(*) FROM visits WHERE worker <> :w"), {"w": worker}).scalar()
        assert others == 0
"""


def _project(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(models=MODELS, test_workers=WORKER_TESTS)
    pytester.makeini("[pytest]\ndbguard_metadata = models:Base\n")


@pytest.mark.parametrize("backend", ["embedded", "sqlite", "external"])
def test_each_worker_has_its_own_database(
    pytester: pytest.Pytester, pg_server: TestServer, backend: str
) -> None:
    _project(pytester)
    args = {
        "embedded": [],
        "sqlite": ["--dbguard-url", "sqlite"],
        "external": ["--dbguard-url", pg_server.url()],
    }
    before = set(pg_server.databases())
    result = run_dbguard(pytester, "-n", "2", *args[backend], plugins=XDIST)
    result.assert_outcomes(passed=12)
    result.stdout.fnmatch_lines(["dbguard: *databases *_dbg_*_<worker>, one per xdist worker*"])
    assert set(pg_server.databases()) == before  # nothing left behind on the external server


def test_two_concurrent_runs_on_one_server(
    pytester: pytest.Pytester, pg_server: TestServer
) -> None:
    _project(pytester)
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "pytest_dbguard",
        "-p",
        "xdist.plugin",
        "-n",
        "2",
        "--dbguard-url",
        pg_server.url(),
        "-q",
    ]
    runs = [
        subprocess.Popen(
            command, cwd=pytester.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    for run, output in zip(runs, outputs, strict=False):
        assert run.returncode == 0, output
        assert "12 passed" in output
        assert SUPERUSER_PASSWORD not in output
    assert not [name for name in pg_server.databases() if "_dbg_" in name]

"""Under pytest-xdist every worker gets its own database; concurrent runs on one server never collide."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import plugin_args, run_dbguard
from tests.pgserver import SUPERUSER_PASSWORD, TestServer

pytestmark = pytest.mark.needs_xdist


MODELS = """
    from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

    class Base(DeclarativeBase):
        pass

    class Visit(Base):
        __tablename__ = "visits"
        id: Mapped[int] = mapped_column(primary_key=True)
        worker: Mapped[str]
"""

# Each test commits for real (isolation "none", so rows accumulate per database), tagged with
# the tox env (if any) and the worker: if two workers, or two runs, shared a database, a test
# would see the other's rows. Each test also notes its run id and database in seen-<tag>.txt.
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
        tag = os.environ.get("TOX_ENV_NAME", "none") + "-" + worker
        with ENGINE.begin() as conn:
            conn.execute(text("INSERT INTO visits (worker) VALUES (:w)"), {"w": tag})
            time.sleep(0.05)
            others = conn.execute(text("SELECT count(*) FROM visits WHERE worker <> :w"), {"w": tag}).scalar()
        assert others == 0
        with open(f"seen-{tag}.txt", "a") as seen:
            seen.write(os.environ["DBGUARD_RUN"] + " " + os.environ["DBGUARD_DB"] + "\\n")
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
    result = run_dbguard(pytester, "-n", "2", *args[backend], inprocess=True)
    result.assert_outcomes(passed=12)
    result.stdout.fnmatch_lines(["dbguard: *databases *_dbg_*_<worker>, one per xdist worker*"])
    assert set(pg_server.databases()) == before  # nothing left behind on the external server


def test_two_concurrent_tox_envs_on_one_server(
    pytester: pytest.Pytester, pg_server: TestServer
) -> None:
    """Two runs at once, as two tox envs would start them, each -n 2 against one external server.

    Each gets its own run id and databases, sees only its own rows, and leaves nothing behind.
    """
    _project(pytester)
    args = ["-n", "2", "--dbguard-url", pg_server.url(), "-q"]
    command = [sys.executable, "-m", "pytest", "-p", "pytest_dbguard", *plugin_args(*args), *args]
    envs = ("py311", "py312")
    runs = [
        subprocess.Popen(
            command,
            cwd=pytester.path,
            env={**os.environ, "TOX_ENV_NAME": env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for env in envs
    ]
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    for run, output in zip(runs, outputs, strict=True):
        assert run.returncode == 0, output
        assert "12 passed" in output
        assert SUPERUSER_PASSWORD not in output
    left = [name for name in pg_server.databases() if "_dbg_" in name]  # other tests' too
    run_ids: dict[str, set[str]] = {}
    databases: dict[str, set[str]] = {}
    for env in envs:
        lines = [
            line.split()
            for seen in pytester.path.glob(f"seen-{env}-gw*.txt")
            for line in seen.read_text().splitlines()
        ]
        assert len(lines) == 12  # every test of this run noted what it saw
        run_ids[env] = {run_id for run_id, _ in lines}
        databases[env] = {database for _, database in lines}
        assert len(run_ids[env]) == 1  # one run id shared by both workers of a run
        assert len(databases[env]) == 2  # a database per worker
        assert all(f"_dbg_{next(iter(run_ids[env]))}_" in name for name in databases[env])
    assert run_ids["py311"].isdisjoint(run_ids["py312"])
    assert databases["py311"].isdisjoint(databases["py312"])
    ours = run_ids["py311"] | run_ids["py312"]
    assert not [name for name in left if name.split("_dbg_")[1].split("_")[0] in ours]


def test_workers_start_while_the_controller_waits_for_the_server(
    pytester: pytest.Pytester,
) -> None:
    """The controller proves the server ready once xdist has started the workers, so they import
    and collect while a late server comes up (an embedded cluster's start, a CI service's)."""
    from tests.pgserver import delayed_server

    pytester.makeconftest(
        """
        import os, pathlib, time

        worker = os.environ.get("PYTEST_XDIST_WORKER")
        if worker:
            pathlib.Path(f"imported-{worker}").write_text(repr(time.monotonic()))
        """
    )
    pytester.makepyfile(
        test_late="""
        import pytest

        @pytest.mark.parametrize("n", range(4))
        def test_answers(dbguard_connection, n):
            assert dbguard_connection.exec_driver_sql("select 1").scalar() == 1
        """
    )

    # The server starts only once both workers have imported the conftest (at the latest after
    # 60 s, when the run would have to wait for it first): no fixed delay that a loaded machine's
    # slow worker start could outlast.
    def both_imported() -> bool:
        return len(list(pytester.path.glob("imported-gw*"))) == 2

    with delayed_server(60.0, when=both_imported) as delayed:
        url = delayed.server.url()
        result = run_dbguard(pytester, "-n", "2", "--dbguard-url", url, "--dbguard-wait", "90")
        assert delayed.error is None
    result.assert_outcomes(passed=4)
    assert delayed.by_condition, result.stdout.str()
    assert delayed.launched_at is not None
    imported = sorted(float(path.read_text()) for path in pytester.path.glob("imported-gw*"))
    assert len(imported) == 2, result.stdout.str()
    # time.monotonic is the system's clock on Linux: comparable across processes.
    assert imported[-1] < delayed.launched_at, (imported, delayed.launched_at)


def test_the_controller_imports_the_models_once_the_workers_are_started(
    pytester: pytest.Pytester, pg_server: TestServer
) -> None:
    """The controller runs no test: it imports the models (to name the template in its header
    and check them) only after xdist has started the workers, which import them themselves, so
    they start that much sooner. A single run imports them before its conftests' hooks run."""
    pytester.makepyfile(models=MODELS)
    pytester.makeini("[pytest]\ndbguard_metadata = models:Base\n")
    pytester.makeconftest(
        """
        import os, pathlib, sys

        def pytest_sessionstart(session):  # xdist's controller starts its workers here
            who = os.environ.get("PYTEST_XDIST_WORKER", "main")
            pathlib.Path(f"models-at-start-{who}").write_text(str("models" in sys.modules))
        """
    )
    pytester.makepyfile(
        test_visits="""
        import pytest
        from models import Visit

        @pytest.mark.parametrize("n", range(4))
        def test_visit(dbguard_session, n):
            dbguard_session.add(Visit(worker="w"))
            dbguard_session.flush()
        """
    )
    url = ["--dbguard-url", pg_server.url()]
    run_dbguard(pytester, "-n", "2", *url).assert_outcomes(passed=4)
    assert pytester.path.joinpath("models-at-start-main").read_text() == "False"
    for worker in ("gw0", "gw1"):
        assert pytester.path.joinpath(f"models-at-start-{worker}").read_text() == "True"
    pytester.path.joinpath("models-at-start-main").unlink()
    run_dbguard(pytester, *url).assert_outcomes(passed=4)
    assert pytester.path.joinpath("models-at-start-main").read_text() == "True"

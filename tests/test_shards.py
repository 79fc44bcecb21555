"""Suites split across machines: shards of one CI pipeline (DBGUARD_RUN set before pytest) share
one template on one server, built once under its lock, each shard and worker with a database of
its own; xdist workers started with --tx popen find their run too."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import plugin_args, run_dbguard
from tests.pgserver import SUPERUSER_PASSWORD, TestServer

# The template's build takes a second (an after_create hook), so the two shards overlap in it.
MODELS = """
from sqlalchemy import DDL, Column, Integer, MetaData, String, Table, event

metadata = MetaData()
notes = Table("notes", metadata, Column("id", Integer, primary_key=True), Column("body", String))
event.listen(notes, "after_create", DDL("SELECT pg_sleep(1)"))
"""
TESTS = """
import os
import pytest
from sqlalchemy import text

@pytest.mark.parametrize("n", range(3))
def test_writes(dbguard_connection, n):
    dbguard_connection.execute(text("INSERT INTO notes (body) VALUES (:b)"), {"b": str(n)})
    assert dbguard_connection.execute(text("SELECT count(*) FROM notes")).scalar() == 1
    assert os.environ["DBGUARD_RUN"] == "pipeline 42/7"
    # A clone keeps its template's catalog: one build means one oid for the table everywhere.
    oid = dbguard_connection.execute(text("SELECT 'notes'::regclass::oid")).scalar()
    folder = os.environ["OID_DIR"]
    with open(os.path.join(folder, os.environ["DBGUARD_DB"]), "w") as out:
        out.write(str(oid))
"""


def _shard(folder: Path, url: str, *args: str) -> subprocess.Popen[str]:
    environ = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DBGUARD_", "_DBGUARD_", "PYTEST_XDIST_", "PYTEST_ADDOPTS"))
    }
    environ.update(
        DBGUARD_RUN="pipeline 42/7",
        PYTEST_DISABLE_PLUGIN_AUTOLOAD="1",
        OID_DIR=str(folder.parent / "oids"),
    )
    command = [sys.executable, "-m", "pytest", "-p", "pytest_dbguard", "-p", "no:cacheprovider"]
    return subprocess.Popen(
        [*command, *plugin_args(*args), "--dbguard-url", url, *args],
        cwd=folder,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.needs_xdist
def test_two_shards_of_one_pipeline_share_one_template(
    tmp_path: Path, pg_server: TestServer
) -> None:
    shards = []
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "models.py").write_text(MODELS)
        (folder / "test_notes.py").write_text(TESTS)
        (folder / "pytest.ini").write_text("[pytest]\ndbguard_metadata = models:metadata\n")
        shards.append(folder)
    (tmp_path / "oids").mkdir()
    before = set(pg_server.databases())
    runs = [
        _shard(shards[0], pg_server.url()),  # one process
        _shard(shards[1], pg_server.url(), "-d", "--tx", "2*popen"),
    ]
    outputs = [run.communicate(timeout=240)[0] for run in runs]
    for run, output in zip(runs, outputs, strict=True):
        assert run.returncode == 0, output
        assert "3 passed" in output, output
        assert SUPERUSER_PASSWORD not in output
    oids = {path.name: path.read_text() for path in (tmp_path / "oids").iterdir()}
    assert len(oids) == 3, oids  # the serial shard's database and the two workers'
    assert len(set(oids.values())) == 1, oids  # all cloned from one build
    left = set(pg_server.databases()) - before
    # Every shard's and worker's database is gone; the one shared template stays for the
    # pipeline's other shards, for `dbguard janitor` to drop.
    assert len(left) == 1, left
    (template,) = left
    assert "_dbg_" in template and "_tpl" in template
    janitor = subprocess.run(
        [sys.executable, "-m", "pytest_dbguard", "janitor", pg_server.url(), "--older-than", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert janitor.returncode == 0, janitor.stderr
    assert template in janitor.stdout
    assert set(pg_server.databases()) == before


def test_a_pytest_started_inside_a_run_does_not_join_it(pytester: pytest.Pytester) -> None:
    """DBGUARD_RUN exported by a run is not a pipeline key: a nested run keeps its own."""
    from pytest_dbguard.run.run_plan import ORIGIN_VAR, pipeline_run

    assert pipeline_run({"DBGUARD_RUN": "ab12", ORIGIN_VAR: "{}"}) is None
    assert pipeline_run({"DBGUARD_RUN": "ab12"}) == "ab12"
    hashed = pipeline_run({"DBGUARD_RUN": "pipeline 42/7"})
    assert hashed is not None and len(hashed) == 8 and hashed.isalnum()
    assert pipeline_run({}) is None


REMOTE_TESTS = """
import os
import pytest

@pytest.mark.parametrize("n", range(4))
def test_reports_its_run(dbguard_connection, n):
    database = dbguard_connection.exec_driver_sql("SELECT current_database()").scalar()
    print("JOINED", os.environ["DBGUARD_RUN"], os.environ["DBGUARD_WORKER"], database)
"""


def _socket_worker(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    """execnet's socket server in a process that is not the controller's child and has none of
    its environment, as on another machine; returns it and its ``--tx`` spec."""
    import execnet

    script = Path(execnet.__file__).parent / "script" / "socketserver.py"
    folder.mkdir()
    log = folder / "server.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-u", str(script), "127.0.0.1:0"],
            cwd=folder,
            # Nothing of the controller's; the one setting is the machine's own, as the inner
            # runs here load their plugins with -p only.
            env={
                "PATH": os.environ["PATH"],
                "HOME": str(folder),
                "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
            },
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    for _ in range(600):  # "... Entering Accept loop ('127.0.0.1', PORT)", within a minute
        line = next((x for x in log.read_text().splitlines() if "Accept loop" in x), None)
        if line is not None or server.poll() is not None:
            break
        time.sleep(0.1)
    assert line is not None, log.read_text()
    port = line.rstrip(")").rpartition(" ")[2]
    return server, f"socket=127.0.0.1:{port}"


@pytest.mark.needs_xdist
def test_workers_without_the_controllers_environment_join_its_run(
    pytester: pytest.Pytester,
    tmp_path: Path,
    pg_server: TestServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``--tx socket=`` (like ``ssh=``): workers that inherit nothing still find their run."""
    monkeypatch.setenv("DBGUARD_URL", pg_server.url())  # the controller's environment only
    pytester.makepyfile(test_remote=REMOTE_TESTS)
    pytester.makeini("[pytest]\n")
    servers = [_socket_worker(tmp_path / f"host{n}") for n in (1, 2)]
    try:
        result = run_dbguard(
            pytester,
            *(arg for _, spec in servers for arg in ("--tx", spec)),
            "--dist",
            "load",
            "--rsyncdir",
            str(pytester.path),
            "-W",
            "ignore::DeprecationWarning",  # xdist 3.x deprecates --rsyncdir
            "-rA",
            str(pytester.path),
        )
    finally:
        for server, _ in servers:
            server.kill()
            server.wait()
    result.assert_outcomes(passed=4)
    joined = [line.split()[1:] for line in result.outlines if line.startswith("JOINED")]
    assert len(joined) == 4, result.outlines
    runs = {run for run, _, _ in joined}
    assert len(runs) == 1, joined  # one run, the controller's, not one per worker
    assert {worker for _, worker, _ in joined} == {"gw0", "gw1"}, joined
    for run, worker, database in joined:
        assert database.endswith(f"_dbg_{run}_{worker}"), joined
    assert SUPERUSER_PASSWORD not in result.stdout.str()

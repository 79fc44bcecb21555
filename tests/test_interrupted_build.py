"""A --dbguard-reuse run killed while it builds the template leaves nothing a later run trusts."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_dbguard.server import cluster as server
from pytest_dbguard.server import machine
from tests.helpers import default_sigint, run_dbguard

# The schema build sleeps (inside its transaction, after creating the table) when SLOW_BUILD is
# set, and says when it started: the test kills the run right then.
MODELS = """
    import os, pathlib, time
    from sqlalchemy import Column, Integer, MetaData, Table, event

    metadata = MetaData()
    things = Table("things", metadata, Column("id", Integer, primary_key=True))

    @event.listens_for(things, "after_create")
    def _slow(target, connection, **kw):
        if os.environ.get("SLOW_BUILD"):
            pathlib.Path("building").touch()
            time.sleep(120)
"""
TESTS = """
    from sqlalchemy import text

    def test_the_schema_is_there(dbguard_connection):
        assert dbguard_connection.execute(text("SELECT count(*) FROM things")).scalar() == 0
"""


def _reuse_folder(pytester: pytest.Pytester) -> Path:
    key = hashlib.sha1(str(pytester.path).encode()).hexdigest()[:10]
    return machine.storage_root() / f"reuse-{key}"


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGINT], ids=["sigkill", "sigint"])
def test_reuse_run_killed_during_the_build_is_rebuilt(
    pytester: pytest.Pytester, signum: signal.Signals
) -> None:
    pytester.makepyfile(models=MODELS, test_schema=TESTS)
    pytester.makeini("[pytest]\ndbguard_metadata = models:metadata\n")
    command = [sys.executable, "-m", "pytest", "-p", "pytest_dbguard", "--dbguard-reuse"]
    run = subprocess.Popen(
        command,
        cwd=pytester.path,
        env={**os.environ, "SLOW_BUILD": "1"},
        preexec_fn=default_sigint,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not (pytester.path / "building").exists():
            assert run.poll() is None and time.monotonic() < deadline, "the build never started"
            time.sleep(0.05)
        run.send_signal(signum)
        run.wait(60)
        assert _reuse_folder(pytester).is_dir()  # the kept cluster, with what the build left

        again = run_dbguard(pytester, "--dbguard-reuse", "-v", inprocess=True)
        again.assert_outcomes(passed=1)
        assert ", cluster reused" in again.stdout.str()  # the same kept server, not a fresh one
        assert "template built" in again.stdout.str()  # the killed build is not trusted
    finally:
        if run.poll() is None:
            run.kill()
            run.wait(30)
        folder = _reuse_folder(pytester)
        if folder.is_dir():  # stop this test's kept cluster (and no other)
            bindir = machine.find_bindir() or Path()
            server.EmbeddedCluster(bindir=bindir, root=folder, port=0).stop()

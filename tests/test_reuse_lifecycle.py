"""The --dbguard-reuse lifecycle: the header says started/reused and built/reused, `dbguard stop`
stops the kept cluster, --dbguard-rebuild rebuilds the kept templates."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_dbguard.server import kept_clusters, machine, processes
from tests.helpers import dbguard_cli, run_dbguard

# The seed row comes from a file an after_create hook reads: the schema fingerprint (the
# tables' DDL and the listeners' code) does not see it change, so only a rebuild picks up a
# new one.
MODELS = """
    import pathlib

    from sqlalchemy import Column, Integer, MetaData, String, Table, event

    metadata = MetaData()
    things = Table(
        "things", metadata, Column("id", Integer, primary_key=True), Column("name", String)
    )

    def seed(target, connection, **kw):
        name = pathlib.Path(__file__).with_name("seed.txt").read_text()
        connection.exec_driver_sql("INSERT INTO things (name) VALUES (%(name)s)", {{"name": name}})

    event.listen(things, "after_create", seed)
"""
TESTS = """
    from sqlalchemy import text

    def test_seed(dbguard_connection):
        names = dbguard_connection.execute(text("SELECT name FROM things")).scalars().all()
        assert names == ["{seed}"]
"""
STARTED = "cluster started (kept for the next run: dbguard stop)"


def _project(pytester: pytest.Pytester, seed: str, ini: str = "") -> None:
    pytester.makepyfile(models=MODELS.format(), test_seed=TESTS.format(seed=seed))
    (pytester.path / "seed.txt").write_text(seed)
    pytester.makeini(f"[pytest]\ndbguard_metadata = models:metadata\n{ini}")


def _folder(rootdir: Path) -> Path:
    return machine.storage_root() / f"reuse-{kept_clusters.reuse_key(rootdir)}"


def _postgres_pid(folder: Path) -> int:
    return int((folder / "data" / "postmaster.pid").read_text().splitlines()[0])


@pytest.fixture
def kept(pytester: pytest.Pytester) -> Iterator[Path]:
    """Function: this project's kept-cluster folder; teardown stops that cluster (and no other)."""
    folder = _folder(pytester.path)
    yield folder
    if folder.is_dir():
        dbguard_cli("stop", cwd=pytester.path)


def test_header_says_started_then_reused_and_stop_ends_it(
    pytester: pytest.Pytester, kept: Path
) -> None:
    _project(pytester, "one")
    first = run_dbguard(pytester, "--dbguard-reuse", inprocess=True)
    first.assert_outcomes(passed=1)
    first.stdout.fnmatch_lines([f"dbguard: embedded PostgreSQL*, {STARTED};*template built;*"])
    pid = _postgres_pid(kept)

    second = run_dbguard(pytester, "--dbguard-reuse", inprocess=True)
    second.assert_outcomes(passed=1)
    second.stdout.fnmatch_lines(
        ["dbguard: embedded PostgreSQL*, cluster reused;*template reused;*"]
    )
    assert _postgres_pid(kept) == pid

    # From the folder above the project: not its rootdir, so nothing stops, and the output
    # names the project's cluster and how to stop it.
    above = dbguard_cli("stop", cwd=pytester.path.parent)
    assert above.returncode == 0, above.stderr
    assert "nothing to stop" in above.stdout
    assert "kept for other projects: " in above.stdout
    assert f"the kept PostgreSQL cluster for {pytester.path} on 127.0.0.1:" in above.stdout
    assert "dbguard stop --rootdir DIR" in above.stdout
    assert processes.process_alive(pid)

    # From a subfolder, as pytest would: the rootdir is the ini file's folder.
    (pytester.path / "sub").mkdir()
    stopped = dbguard_cli("stop", cwd=pytester.path / "sub")
    assert stopped.returncode == 0, stopped.stderr
    assert f"stopped the kept PostgreSQL cluster for {pytester.path}" in stopped.stdout
    assert not processes.process_alive(pid)
    assert not kept.exists()
    port = re.search(r"on 127\.0\.0\.1:(\d+)", stopped.stdout)
    assert port is not None, stopped.stdout
    assert not machine.claim_file(machine.storage_root(), int(port.group(1))).exists()

    third = run_dbguard(pytester, "--dbguard-reuse", inprocess=True)
    third.assert_outcomes(passed=1)
    third.stdout.fnmatch_lines([f"dbguard: embedded PostgreSQL*, {STARTED};*template built;*"])
    assert _postgres_pid(kept) != pid


# A function the schema's after_create DDL creates: its body comes from the environment.
DDL_MODELS = """
import os
from sqlalchemy import DDL, Column, Integer, MetaData, Table, event

metadata = MetaData()
Table("things", metadata, Column("id", Integer, primary_key=True))
event.listen(
    metadata,
    "after_create",
    DDL(
        "CREATE FUNCTION schema_version() RETURNS int LANGUAGE sql AS "
        f"'SELECT {os.environ['SCHEMA_VERSION']}'"
    ),
)
"""
DDL_TESTS = """
import os
from sqlalchemy import text

def test_version(dbguard_connection):
    version = dbguard_connection.execute(text("SELECT schema_version()")).scalar()
    assert version == int(os.environ["SCHEMA_VERSION"])
"""


def test_a_kept_cluster_is_no_child_python_warns_about_at_exit(
    pytester: pytest.Pytester, kept: Path
) -> None:
    """The kept server outlives pytest on purpose: ``-X dev`` (or ``-W error``) showed
    ``ResourceWarning: subprocess N is still running`` at the end of every reusing run."""
    _project(pytester, "one")
    for _ in ("started", "reused"):
        result = pytester.run(
            sys.executable, "-X", "dev", "-m", "pytest", "-p", "pytest_dbguard",
            "-p", "no:cacheprovider", "--dbguard-reuse", "-W", "error",
        )  # fmt: skip
        result.assert_outcomes(passed=1)
        assert "still running" not in result.stderr.str(), result.stderr.str()


def test_a_changed_ddl_listener_rebuilds_the_kept_template(
    pytester: pytest.Pytester, kept: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DDL that create_all runs through before_create/after_create listeners (extensions,
    functions, as the README suggests) is part of the template: a changed one is rebuilt, not
    reused stale (polar's trial)."""
    pytester.makepyfile(models=DDL_MODELS, test_version=DDL_TESTS)
    pytester.makeini("[pytest]\ndbguard_metadata = models:metadata\n")
    monkeypatch.setenv("SCHEMA_VERSION", "1")
    first = run_dbguard(pytester, "--dbguard-reuse")
    first.assert_outcomes(passed=1)
    monkeypatch.setenv("SCHEMA_VERSION", "1")
    same = run_dbguard(pytester, "--dbguard-reuse")
    same.assert_outcomes(passed=1)
    same.stdout.fnmatch_lines(["dbguard: *cluster reused;*template reused;*"])
    monkeypatch.setenv("SCHEMA_VERSION", "2")
    changed = run_dbguard(pytester, "--dbguard-reuse")
    changed.assert_outcomes(passed=1)
    changed.stdout.fnmatch_lines(["dbguard: *cluster reused;*template built;*"])


def test_rebuild_drops_the_kept_template_given_on_the_cli_in_the_env_or_in_the_ini(
    pytester: pytest.Pytester, kept: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One kept cluster for the three ways of asking: each rebuild run must show a seed that
    only a rebuild can bring in (the stale run below proves reuse alone keeps the old one)."""
    _project(pytester, "one")
    run_dbguard(pytester, "--dbguard-reuse", inprocess=True).assert_outcomes(passed=1)
    # A change the fingerprint cannot see: the kept template still has the old seed.
    _project(pytester, "two")
    stale = run_dbguard(pytester, "--dbguard-reuse", inprocess=True)
    stale.assert_outcomes(failed=1)
    stale.stdout.fnmatch_lines(["*template reused*", "*AssertionError: assert *'one'* == *'two'*"])
    for how, seed in (("cli", "two"), ("ini", "three"), ("env", "four")):
        if how == "ini":
            _project(pytester, seed, ini="dbguard_rebuild = true\n")
        else:
            _project(pytester, seed)
        if how == "env":
            monkeypatch.setenv("DBGUARD_REBUILD", "1")
        flag = ("--dbguard-rebuild",) if how == "cli" else ()
        rebuilt = run_dbguard(pytester, "--dbguard-reuse", *flag, inprocess=True)
        rebuilt.assert_outcomes(passed=1)  # the new seed: the template was rebuilt
        rebuilt.stdout.fnmatch_lines(["*cluster reused;*template rebuilt (--dbguard-rebuild);*"])
        monkeypatch.delenv("DBGUARD_REBUILD", raising=False)
        _project(pytester, seed)
        # The rebuilt template is kept in turn.
        again = run_dbguard(pytester, "--dbguard-reuse", inprocess=True)
        again.assert_outcomes(passed=1)
        again.stdout.fnmatch_lines(["*template reused*"])


@pytest.mark.needs_xdist
def test_rebuild_under_xdist(pytester: pytest.Pytester, kept: Path) -> None:
    _project(pytester, "one")
    pytester.makepyfile(test_more=TESTS.format(seed="one").replace("test_seed", "test_more"))
    first = run_dbguard(pytester, "--dbguard-reuse", "-n", "2", inprocess=True)
    first.assert_outcomes(passed=2)
    first.stdout.fnmatch_lines([f"*{STARTED};*template built by the first worker*"])
    second = run_dbguard(pytester, "--dbguard-reuse", "-n", "2", inprocess=True)
    second.assert_outcomes(passed=2)
    second.stdout.fnmatch_lines(["*cluster reused;*template reused*"])
    _project(pytester, "two")
    pytester.makepyfile(test_more=TESTS.format(seed="two").replace("test_seed", "test_more"))
    rebuilt = run_dbguard(
        pytester,
        "--dbguard-reuse",
        "--dbguard-rebuild",
        "-n",
        "2",
        inprocess=True,
    )
    rebuilt.assert_outcomes(passed=2)
    rebuilt.stdout.fnmatch_lines(["*cluster reused;*template rebuilt (--dbguard-rebuild)*"])


def test_rebuild_without_reuse_says_it_has_no_effect(pytester: pytest.Pytester) -> None:
    _project(pytester, "one", ini="dbguard_rebuild = true\n")
    result = run_dbguard(pytester, inprocess=True)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "dbguard: ini dbguard_rebuild in tox.ini has no effect without --dbguard-reuse "
            "(ini dbguard_reuse): nothing is kept, every run builds its template anew"
        ]
    )
    assert not _folder(pytester.path).exists()


WAITS = """
    import time
    from pathlib import Path

    def test_waits(dbguard_connection):
        Path("running.txt").write_text("")
        deadline = time.monotonic() + 120
        while not Path("go.txt").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
"""


def _reuse_run(pytester: pytest.Pytester, *args: str) -> subprocess.Popen[str]:
    """A ``--dbguard-reuse`` run in the background, its output kept."""
    command = [sys.executable, "-m", "pytest", "-p", "pytest_dbguard", "--dbguard-reuse", "-q"]
    run: subprocess.Popen[str] = pytester.popen(
        [*command, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    return run


def _wait_running(pytester: pytest.Pytester, run: subprocess.Popen[str]) -> None:
    """Until the run's test has written running.txt (within two minutes)."""
    for _ in range(1200):
        if (pytester.path / "running.txt").exists() or run.poll() is not None:
            break
        time.sleep(0.1)
    assert (pytester.path / "running.txt").exists(), run.communicate()[0]


def test_stop_leaves_a_cluster_that_a_run_is_using(pytester: pytest.Pytester, kept: Path) -> None:
    """`dbguard stop` (or `--all`, from another project) never pulls the server from under a run."""
    pytester.makepyfile(test_waits=WAITS)
    pytester.makeini("[pytest]\n")
    run = _reuse_run(pytester)
    try:
        _wait_running(pytester, run)
        pid = _postgres_pid(kept)
        refused = dbguard_cli("stop", cwd=pytester.path)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "a pytest run is using it now" in refused.stderr
        assert processes.process_alive(pid) and kept.is_dir()
    finally:
        (pytester.path / "go.txt").write_text("")
        output = run.communicate(timeout=120)[0]
    assert run.returncode == 0, output
    assert "1 passed" in output
    stopped = dbguard_cli("stop", cwd=pytester.path)  # the run has ended: now it stops
    assert stopped.returncode == 0, stopped.stderr
    assert not processes.process_alive(pid) and not kept.exists()


RESTARTS = """
    import time
    from pathlib import Path

    def test_restarts(dbguard_faults, dbguard_engine):
        Path("running.txt").write_text("")
        deadline = time.monotonic() + 120
        while not Path("go.txt").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        dbguard_faults.restart()
        dbguard_faults.assert_recovers(dbguard_engine)
"""


def test_a_second_run_waits_for_a_kept_cluster_that_another_run_restarts(
    pytester: pytest.Pytester, kept: Path
) -> None:
    """While one run has its kept cluster down (``dbguard_faults.restart()``), a second run of
    the project waits and adopts it once it is back; it removed the folder from under the first
    run and started a cluster of its own (a security audit's finding)."""
    pytester.makepyfile(
        test_restarts=RESTARTS, test_second="def test_second(dbguard_connection): pass"
    )
    pytester.makeini("[pytest]\n")
    first = _reuse_run(pytester, "test_restarts.py")
    second = None
    try:
        _wait_running(pytester, first)
        pid = _postgres_pid(kept)
        os.kill(pid, signal.SIGQUIT)  # the first run's cluster is down, as halfway a restart
        processes.wait_gone(pid, None, timeout=15)
        second = _reuse_run(pytester, "test_second.py")
        time.sleep(2)  # the second run has found the cluster down by now
        assert second.poll() is None and kept.is_dir()
    finally:
        (pytester.path / "go.txt").write_text("")
        first_output = first.communicate(timeout=120)[0]
        second_output = second.communicate(timeout=120)[0] if second is not None else ""
    assert first.returncode == 0, first_output
    assert second is not None and second.returncode == 0, second_output
    assert "cluster reused" in second_output, second_output
    assert kept.is_dir()


def test_stop_with_nothing_kept_says_so(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\n")
    result = dbguard_cli("stop", cwd=pytester.path)
    assert result.returncode == 0, result.stderr
    assert f"nothing to stop: no cluster kept by --dbguard-reuse for {pytester.path}" in (
        result.stdout
    )
    # Where a user of an external server looks for what reuse kept there.
    assert "is a database there: dbguard janitor --older-than 0 URL drops it" in result.stdout
    script = Path(sys.executable).with_name("dbguard")
    assert subprocess.run([script, "stop"], cwd=pytester.path, capture_output=True).returncode == 0


def test_stop_all_stops_every_kept_cluster_of_the_user() -> None:
    """Two projects' kept clusters, both stopped by one `dbguard stop --all`.

    Run in a private mount namespace with a fresh /dev/shm (and temp folder), so the user's
    storage folders there hold only these two: `--all` cannot reach the clusters that other tests
    of this suite keep meanwhile, and any interpreter works (no switch to another user).
    """
    if os.geteuid() != 0:
        pytest.fail("this test mounts a private /dev/shm (unshare -m): run the suite as root")
    base = Path(tempfile.mkdtemp(prefix="dbguard-stop-all-"))
    os.chmod(base, 0o755)  # the server's user (postgres, as we are root) passes through
    projects = [base / "alpha", base / "beta"]
    for project in projects:
        project.mkdir()
        (project / "pytest.ini").write_text("[pytest]\n")
        (project / "test_one.py").write_text("def test_one(dbguard_url):\n    assert dbguard_url\n")
    (base / "tmp").mkdir()
    python = shlex.quote(sys.executable)
    run = f"{python} -m pytest -p pytest_dbguard -p no:cacheprovider --dbguard-reuse -q"
    stop = f"{python} -m pytest_dbguard stop --all"
    kept = (
        f"ls -d /dev/shm/pytest-dbguard-0/reuse-* {base}/tmp/pytest-dbguard-0/reuse-* 2>/dev/null"
    )
    script = "; ".join(
        [
            "set -e",
            "mount -t tmpfs -o size=1g tmpfs /dev/shm",
            f"export TMPDIR={base}/tmp",
            f"trap '{stop} >/dev/null 2>&1' EXIT",  # nothing outlives the namespace
            "set +e",
            *(f"(cd {project} && {run}); echo @@run=$?" for project in projects),
            f"echo @@kept=$({kept} | wc -l)",
            f"cd {base} && {stop}; echo @@stop=$?",
            f"echo @@kept=$({kept} | wc -l)",
            f"{stop}; echo @@again=$?",
        ]
    )
    try:
        done = subprocess.run(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        )
    finally:
        shutil.rmtree(base, ignore_errors=True)
    output = done.stdout + done.stderr
    marks = [line for line in done.stdout.splitlines() if line.startswith("@@")]
    assert marks == [
        "@@run=0",
        "@@run=0",
        "@@kept=2",
        "@@stop=0",
        "@@kept=0",
        "@@again=0",
    ], output
    for project in projects:
        assert f"stopped the kept PostgreSQL cluster for {project}" in done.stdout, output
    assert len([line for line in done.stdout.splitlines() if line.startswith("stopped")]) == 2
    assert "nothing to stop: no cluster kept by --dbguard-reuse of this user" in done.stdout


def test_start_locks_of_gone_clusters_are_swept(tmp_path: Path) -> None:
    """Each project that reuses leaves a start lock beside its cluster; a run's sweep removes
    those whose cluster is gone, a minute old and held by nobody (a suite that reuses in many
    projects left one each in /dev/shm)."""
    import fcntl

    from pytest_dbguard.server.cluster_start import START_LOCK, _sweep_start_locks

    def lock(key: str, age: float) -> Path:
        path = tmp_path / f".reuse-{key}{START_LOCK}"
        path.touch()
        os.utime(path, (time.time() - age, time.time() - age))
        return path

    gone, kept, young, held = (
        lock(key, age) for key, age in [("a", 120), ("b", 120), ("c", 5), ("d", 120)]
    )
    (tmp_path / "reuse-b").mkdir()  # its cluster is still there
    holder = os.open(held, os.O_RDWR)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)  # a run is starting that project's cluster
        _sweep_start_locks(tmp_path)
    finally:
        os.close(holder)
    assert not gone.exists()
    assert kept.exists() and young.exists() and held.exists()
